"""ggprec recommend: groups, the knapsack, priors, and the search against memory.predict on sparse
synthetic 8B/70B shapes (no disk used)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.ggml_types import lookup
from ggprec.gguf_info import read_gguf
from ggprec.plan import resolve_plan
from ggprec.priors import weight_prior
from ggprec.profile import load_profile
from ggprec.recommend import (
    GIB,
    MIB,
    NoFitError,
    Option,
    layer_bands,
    make_groups,
    options_for,
    prior_loss_model,
    recommend,
    sensitivity_loss_model,
    solve,
    to_profile,
)
from ggprec.recommend.api import Recommendation
from ggprec.recommend.commands import llama_commands, llama_type_name

# Given, so tests do not time a numpy copy: a desktop's RAM and an RTX 3090-class GPU (issue 10).
HOST_GBPS, GPU_GBPS = 60.0, 936.0


def _opt(name: str, n_bytes: int, loss: float) -> Option:
    return Option(lookup(name), n_bytes, loss)


# --- pure parts ---------------------------------------------------------------------------------------


def test_layer_bands_split_layers_evenly_and_cover_them_all() -> None:
    assert layer_bands(30, 4) == [(0, 7), (8, 14), (15, 21), (22, 29)]
    assert layer_bands(2, 4) == [(0, 0), (1, 1)]


def test_groups_are_role_by_band_plus_the_tied_head(tiny_model: Path) -> None:
    groups = make_groups(read_gguf(tiny_model), n_bands=2)
    keys = sorted(g.key for g in groups)
    assert keys == sorted(["token_embd", *(f"{r}@{i}-{i}" for r in
                          ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
                          for i in (0, 1))])
    assert next(g for g in groups if g.key == "token_embd").role == "tied_head"  # tiny is tied: it is the head


def test_knapsack_upgrades_the_group_that_saves_most_loss_per_byte() -> None:
    hull = [_opt("q4_0", 100, 1.0), _opt("q8_0", 200, 0.1)]
    steps = solve([hull, [_opt("q4_0", 100, 0.5), _opt("q8_0", 200, 0.45)]], budget=300)
    assert steps is not None and steps.choice == [1, 0]  # the group that gains 0.9 per 100 bytes upgrades
    assert steps.bytes == 300 and steps.loss == pytest.approx(0.6)


def test_knapsack_takes_upgrades_by_loss_saved_per_byte_within_budget() -> None:
    a = [_opt("q4_0", 100, 1.0), _opt("q6_k", 150, 0.3), _opt("q8_0", 200, 0.2)]
    b = [_opt("q4_0", 100, 0.4), _opt("q8_0", 200, 0.0)]
    sol = solve([a, b], budget=350)
    # steps: a 0->1 saves 0.7/50, b 0->1 saves 0.4/100, a 1->2 saves 0.1/50: the first two fit in 350.
    assert sol is not None and sol.choice == [1, 1] and sol.bytes == 350
    assert sol.loss == pytest.approx(0.3)


def test_knapsack_says_none_when_even_the_smallest_options_exceed_the_budget() -> None:
    assert solve([[_opt("q4_0", 100, 1.0)], [_opt("q4_0", 100, 1.0)]], budget=199) is None


def test_options_offer_only_types_whose_blocks_divide_the_rows_and_no_upcast(demo_model: Path) -> None:
    info = read_gguf(demo_model)  # SmolLM2: rows of 576 (not a multiple of 256), source q4_1 / q8_0
    groups = make_groups(info)
    losses = prior_loss_model(info, groups)
    q = next(g for g in groups if g.key.startswith("attn_q@"))
    names = {o.type.name for o in options_for(q, losses)}
    assert not names & {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k"}  # 576 % 256 != 0: llama.cpp would fall back
    assert "q4_1" in names and "f16" not in names and "q8_0" not in names  # q4_1 source: no upcast


def test_priors_make_attn_v_and_ffn_down_costlier_and_total_the_whole_model_prior(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    losses = prior_loss_model(info, groups)
    by = {g.key: g for g in groups}
    q4 = lookup("q4_0")

    def per_param(key: str) -> float:
        return losses.type_loss(by[key], q4) / by[key].n_params

    assert per_param("attn_v@0-0") == pytest.approx(2 * per_param("attn_q@0-0"))
    assert per_param("ffn_down@1-1") == pytest.approx(2 * per_param("ffn_up@1-1"))
    n = sum(g.n_params for g in groups)
    for t in ("q8_0", "q4_k"):  # every weight at one type: the prior's whole-model figure
        assert sum(losses.type_loss(g, lookup(t)) for g in groups) == pytest.approx(weight_prior(t, n).kld)
    assert losses.source.startswith("prior: ") and losses.group_source(by["attn_q@0-0"]) == losses.source


def test_measured_sensitivity_replaces_the_prior_of_the_groups_it_covers(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    q0 = next(g for g in groups if g.key == "attn_q@0-0")
    record = {"probe_type": "q4_0", "groups": [{"tensors": [t.name for t in q0.tensors], "kld": 0.5}]}
    losses = sensitivity_loss_model(info, groups, record)
    assert losses.group_loss(q0, lookup("q4_0").bits_per_weight) == pytest.approx(0.5)
    assert losses.group_loss(q0, 8.5) == pytest.approx(0.5 / 2 ** (1.5 * 4))
    assert losses.source.startswith("measured: sensitivity") and losses.group_source(q0) == "measured"


def test_two_probe_types_fit_each_groups_own_loss_curve_through_both(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    q0 = next(g for g in groups if g.key == "attn_q@0-0")
    # 2^8 less KLD at q8_0 (8.5 bits) than at q4_0 (4.5 bits): an exponent of 2 bits^-1 instead of 1.5.
    record = {"probe_type": "q4_0", "also": ["q8_0"],
              "groups": [{"tensors": [t.name for t in q0.tensors], "kld": 0.5,
                          "kld_at": {"q4_0": 0.5, "q8_0": 0.5 / 2**8}}]}
    losses = sensitivity_loss_model(info, groups, record)
    assert losses.group_loss(q0, 4.5) == pytest.approx(0.5)
    assert losses.group_loss(q0, 8.5) == pytest.approx(0.5 / 2**8)
    assert losses.group_loss(q0, 6.5) == pytest.approx(0.5 / 2**4)
    assert losses.group_loss(q0, 16) == 0.0
    assert losses.source.endswith("(q4_0+q8_0 probes, 1 groups fitted)")


def test_a_further_probe_measured_per_role_gives_every_band_of_the_role_its_slope(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    q0, q1 = (next(g for g in groups if g.key == k) for k in ("attn_q@0-0", "attn_q@1-1"))
    names0, names1 = [t.name for t in q0.tensors], [t.name for t in q1.tensors]
    # Bands at q4_0: 0.3 + 0.2; the whole role at q8_0: 0.5 / 2^8, an exponent of 2 for both bands.
    record = {"probe_type": "q4_0", "also": ["q8_0"], "also_grouping": "role",
              "groups": [{"tensors": names0, "kld": 0.3, "kld_at": {"q4_0": 0.3}},
                         {"tensors": names1, "kld": 0.2, "kld_at": {"q4_0": 0.2}}],
              "also_groups": [{"tensors": names0 + names1, "kld": 0.5 / 2**8, "kld_at": {"q8_0": 0.5 / 2**8}}]}
    losses = sensitivity_loss_model(info, groups, record)
    assert losses.group_loss(q0, 4.5) == pytest.approx(0.3)
    assert losses.group_loss(q0, 8.5) == pytest.approx(0.3 / 2**8)
    assert losses.group_loss(q1, 8.5) == pytest.approx(0.2 / 2**8)


def test_a_measured_middle_probe_is_used_as_measured_and_interpolated_between(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    q0 = next(g for g in groups if g.key == "attn_q@0-0")
    names = [t.name for t in q0.tensors]
    # q4_0 (4.5 bits) 0.4, q5_1 (6.0 bits) 0.04, q8_0 (8.5 bits) 0.004: not one straight line in log space.
    record = {"probe_type": "q4_0", "also": ["q5_1", "q8_0"],
              "groups": [{"tensors": names, "kld": 0.4, "kld_at": {"q4_0": 0.4, "q5_1": 0.04, "q8_0": 0.004}}]}
    losses = sensitivity_loss_model(info, groups, record)
    assert losses.group_loss(q0, 6.0) == pytest.approx(0.04)
    assert losses.group_loss(q0, 5.25) == pytest.approx((0.4 * 0.04) ** 0.5)  # halfway, log-linear
    assert losses.group_loss(q0, 8.5) == pytest.approx(0.004)


def test_where_types_were_measured_only_those_are_offered_each_at_its_own_measurement(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    q0, q1 = (next(g for g in groups if g.key == k) for k in ("attn_q@0-0", "attn_q@1-1"))
    names0, names1 = [t.name for t in q0.tensors], [t.name for t in q1.tensors]
    # iq4_nl and q4_0 have the same bits (4.5): only their measurements tell them apart. Per role: q4_0
    # 0.5 (the bands' sum), iq4_nl 0.125, q5_0 0.05, q8_0 0.005; band 0 holds 0.3/0.5 of the role's damage.
    record = {"probe_type": "q4_0", "also": ["q8_0", "q5_0", "iq4_nl"], "also_grouping": "role",
              "groups": [{"tensors": names0, "kld": 0.3, "kld_at": {"q4_0": 0.3}},
                         {"tensors": names1, "kld": 0.2, "kld_at": {"q4_0": 0.2}}],
              "also_groups": [{"tensors": names0 + names1, "kld": 0.005,
                               "kld_at": {"q8_0": 0.005, "q5_0": 0.05, "iq4_nl": 0.125}}]}
    losses = sensitivity_loss_model(info, groups, record)
    assert losses.type_loss(q0, lookup("iq4_nl")) == pytest.approx(0.075)
    assert losses.type_loss(q0, lookup("q4_0")) == pytest.approx(0.3)
    assert losses.type_loss(q0, lookup("q5_0")) == pytest.approx(0.03)
    # q4_0 costs as many bytes as iq4_nl and loses more; q4_k, q5_1, q6_k lie between measured types unmeasured;
    # below 4.5 bits (q3_k, q2_k) only the fitted slope can say.
    opts = [o for o in options_for(q0, losses) if o.type.bits_per_weight >= 4.5]
    assert [o.type.name for o in opts] == ["iq4_nl", "q5_0", "q8_0", "f16"]
    assert [o.loss for o in opts] == pytest.approx([0.075, 0.03, 0.003, 0.0])
    # An excluded type (the one a dequantized reference came from) is never offered.
    assert "iq4_nl" not in [o.type.name for o in options_for(q0, losses, exclude=("iq4_nl",))]


# --- the search, on sparse synthetic shapes (issue 10's scenarios) ---------------------------------------


def _rec(path: Path, vram: float, ram: float, **kw: object) -> Recommendation:
    return recommend(read_gguf(path), vram, ram_gb=ram, ctx=kw.pop("ctx", 8192), host_gbps=HOST_GBPS,  # type: ignore[arg-type]
                     gpu_gbps=GPU_GBPS, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rec_8b_8gib(sparse_8b_session: Path) -> Recommendation:
    return _rec(sparse_8b_session, 8, 16)


@pytest.fixture(scope="module")
def rec_70b(sparse_70b_session: Path) -> Recommendation:
    return _rec(sparse_70b_session, 24, 64)


def test_8b_on_8_gib_is_fully_offloaded_at_5_to_8_bits_with_an_f16_or_q8_0_cache(rec_8b_8gib: Recommendation) -> None:
    row = rec_8b_8gib.row
    assert rec_8b_8gib.settings.n_gpu_layers == 33  # 32 layers + the output head
    assert 4.5 <= row.bits_per_weight <= 8.5 and row.kv_type in ("f16", "q8_0")
    assert row.tg_tps >= 20 and row.expected_kld <= 0.02  # tens of tok/s, KLD ~0.01
    assert rec_8b_8gib.gpu_total <= 8 * GIB - 512 * MIB and rec_8b_8gib.host_total <= 16 * GIB - 512 * MIB


def test_the_default_says_why_and_what_the_neighbouring_rows_trade(rec_8b_8gib: Recommendation) -> None:
    assert rec_8b_8gib.reasons[0].startswith("default (balanced): among plans expected at >= 3 tok/s")
    text = " ".join(rec_8b_8gib.reasons)
    assert "the faster row above:" in text and "the better row below:" in text
    assert 4 <= len(rec_8b_8gib.shown) <= 8 and rec_8b_8gib.chosen in rec_8b_8gib.shown


def test_the_front_is_pareto_fastest_first_with_the_loss_falling(rec_8b_8gib: Recommendation) -> None:
    front = rec_8b_8gib.front
    assert len(front) > 8
    assert all(a.tg_tps >= b.tg_tps and a.expected_kld > b.expected_kld for a, b in zip(front, front[1:], strict=False))


def test_8b_on_24_gib_keeps_8_bits_or_more_fully_offloaded(sparse_8b_session: Path) -> None:
    rec = _rec(sparse_8b_session, 24, 64)
    assert rec.settings.n_gpu_layers == 33 and rec.row.bits_per_weight >= 8
    assert rec.gpu_total <= 24 * GIB - 512 * MIB


def test_quality_goal_on_24_gib_keeps_every_weight_f16_on_the_gpu(sparse_8b_session: Path) -> None:
    rec = _rec(sparse_8b_session, 24, 64, goal="quality")
    assert rec.settings.n_gpu_layers == 33 and rec.settings.cache_type_k == "f16"
    assert set(rec.tensor_types.values()) == {"f16"} and rec.expected_kld == 0


def test_70b_on_24_plus_64_gib_offers_a_4_to_5_bit_partial_offload(rec_70b: Recommendation) -> None:
    assert len(rec_70b.shown) >= 3
    partial = [r for r in rec_70b.front if 4 <= r.bits_per_weight <= 5.5 and 0 < r.n_gpu_layers < 80]
    assert partial and all(r.gpu_bytes <= 24 * GIB - 512 * MIB for r in partial)
    assert 0 < rec_70b.settings.n_gpu_layers < 80 and 4 <= rec_70b.row.bits_per_weight <= 5.5
    assert rec_70b.gpu_total <= 24 * GIB - 512 * MIB and rec_70b.host_total <= 64 * GIB - 512 * MIB
    assert "layers on the GPU, the rest on the host" in rec_70b.reasons[1]


def test_speed_goal_stays_within_a_q4_k_level_loss_and_never_pairs_a_q4_0_cache_with_3_bit_weights(
        sparse_8b_session: Path) -> None:
    rec = _rec(sparse_8b_session, 8, 16, goal="speed")
    assert rec.settings.n_gpu_layers == 33
    assert not (rec.row.kv_type == "q4_0" and rec.row.bits_per_weight < 4.5)  # issue 10's "not that either"
    info = read_gguf(sparse_8b_session)
    groups = make_groups(info)
    losses = prior_loss_model(info, groups)
    q4k_level = sum(losses.type_loss(g, lookup("q4_k")) for g in groups)
    assert rec.expected_kld <= q4k_level and rec.row.tg_tps > _rec(sparse_8b_session, 8, 16).row.tg_tps


def test_min_tps_gives_the_least_loss_at_that_speed(rec_8b_8gib: Recommendation, sparse_8b_session: Path) -> None:
    rec = _rec(sparse_8b_session, 8, 16, min_tps=100)
    assert rec.row.tg_tps >= 100
    assert rec.expected_kld == min(r.expected_kld for r in rec.front if r.tg_tps >= 100)


def test_max_kld_gives_the_fastest_plan_within_that_loss(sparse_8b_session: Path) -> None:
    rec = _rec(sparse_8b_session, 8, 16, max_kld=0.01)
    assert rec.expected_kld <= 0.01
    assert rec.tg_tps == max(r.tg_tps for r in rec.front if r.expected_kld <= 0.01)


def test_a_quantized_cache_is_chosen_only_where_its_loss_buys_more_than_it_costs(rec_8b_8gib: Recommendation,
                                                                                sparse_8b_session: Path) -> None:
    roomy = _rec(sparse_8b_session, 24, 64)
    assert roomy.settings.cache_type_k == "f16"  # memory to spare: a quantized cache would only add loss
    if rec_8b_8gib.settings.cache_type_k != "f16":  # on 8 GiB it may pay for better weights: then it says so
        assert any(r.startswith(f"KV cache {rec_8b_8gib.settings.cache_type_k}: expected +")
                   for r in rec_8b_8gib.reasons)


def test_nothing_fits_says_the_smallest_budget_that_would(sparse_8b_session: Path) -> None:
    with pytest.raises(NoFitError, match=r"the smallest plan needs \d+\.\d+ [GM]iB VRAM and \d+\.\d+ [GM]iB RAM"):
        _rec(sparse_8b_session, 0.5, 1)


def test_written_profile_resolves_to_the_recommended_types(sparse_8b_session: Path, tmp_path: Path) -> None:
    info = read_gguf(sparse_8b_session)
    rec = recommend(info, 6, ram_gb=8, ctx=4096, host_gbps=HOST_GBPS, gpu_gbps=GPU_GBPS)
    out = tmp_path / "plan.yaml"
    from ggprec.profile import profile_to_yaml

    out.write_text(profile_to_yaml(to_profile(rec)))
    plan = resolve_plan(info, load_profile(str(out)))
    assert {n: t.name for n, t in plan.tensor_types().items() if n in rec.tensor_types} == rec.tensor_types
    assert plan.runtime == rec.settings


# --- llama.cpp's terms ----------------------------------------------------------------------------------


def test_llama_commands_name_every_weight_once_anchored_and_the_runtime_flags(rec_8b_8gib: Recommendation,
                                                                              sparse_8b_session: Path) -> None:
    info = read_gguf(sparse_8b_session)
    cmd = llama_commands(rec_8b_8gib, info, "/x/plan.tensor-types.txt")
    lines = dict(line.split("=") for line in cmd.tensor_type_lines)
    q0 = rec_8b_8gib.tensor_types["blk.0.attn_q.weight"]
    assert lines["^blk\\.0\\.attn_q\\.weight$"] == llama_type_name(q0)
    assert len(lines) == len(cmd.tensor_type_lines) == len(rec_8b_8gib.tensor_types)
    assert cmd.quantize.startswith("llama-quantize --tensor-type-file /x/plan.tensor-types.txt ")
    assert cmd.quantize.split()[-1] in ("Q8_0", "Q6_K")  # a quantized base type: the patterns apply
    s = rec_8b_8gib.settings
    assert f"-c 8192 -ngl 33 -ctk {s.cache_type_k} -ctv {s.cache_type_v} -fa " in cmd.server
    assert cmd.server.startswith("llama-server -m ") and cmd.cli.startswith("llama-cli -m ")


def test_llama_type_names_use_ggmls_capital_k() -> None:
    assert [llama_type_name(t) for t in ("q4_k", "q8_0", "iq4_nl", "f16")] == ["q4_K", "q8_0", "iq4_nl", "f16"]


# --- the command --------------------------------------------------------------------------------------


def test_cli_prints_every_front_row_in_json_and_writes_profile_and_tensor_type_file(sparse_8b_session: Path,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    ok = CliRunner().invoke(main, ["recommend", str(sparse_8b_session), "--vram", "24", "--ram", "64", "--ctx",
                                   "8192", "--host-bandwidth", "60", "--gpu-bandwidth", "936", "--json",
                                   "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["settings"]["n_gpu_layers"] == 33 and doc["predicted"]["gpu_total"] <= 24 * GIB
    assert len(doc["front"]) > 8 and sum(r["chosen"] for r in doc["front"]) == 1
    assert set(doc) == {"schema", "model", "goal", "budget", "settings", "front", "rule", "groups", "tensor_types",
                        "predicted", "expected", "loss_source", "method", "reasons", "plans_searched", "llama_cpp",
                        "verified", "profile", "imatrix", "quantized_source", "as_is"}  # docs/json.md, schema 1
    assert doc["schema"] == 1
    assert set(doc["front"][0]) == {"bits_per_weight", "kv_type", "n_gpu_layers", "n_cpu_moe", "gpu_bytes",
                                    "ram_bytes", "expected_kld", "tg_tps", "pp_tps", "as_is", "loss_source", "chosen",
                                    "shown", "tensor_split"}
    assert load_profile(str(out)).runtime.n_gpu_layers == 33
    ttf = tmp_path / "p.tensor-types.txt"
    assert doc["llama_cpp"]["tensor_type_file"] == str(ttf)
    assert len(ttf.read_text().split()) == len(doc["tensor_types"])


def test_cli_table_marks_the_chosen_row_and_prints_the_llama_cpp_lines(sparse_8b_session: Path) -> None:
    r = CliRunner().invoke(main, ["recommend", str(sparse_8b_session), "--vram", "8", "--ram", "16", "--ctx", "8192",
                                  "--host-bandwidth", "60", "--gpu-bandwidth", "936"])
    assert r.exit_code == 0, r.output
    assert "quality/speed front" in r.output and "->" in r.output
    assert "llama-quantize --tensor-type-file" in r.output and "llama-server -m" in r.output


def test_cli_records_the_chosen_plan_in_the_history(sparse_8b_session: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    r = CliRunner().invoke(main, ["recommend", str(sparse_8b_session), "--vram", "8", "--ram", "16", "--ctx", "8192",
                                  "--host-bandwidth", "60", "--gpu-bandwidth", "936", "--json", "--db", db])
    assert r.exit_code == 0, r.output
    chosen = json.loads(r.stdout)
    h = CliRunner().invoke(main, ["history", "--kind", "recommend", "--json", "--db", db])
    [row] = json.loads(h.stdout)["records"]
    assert (row["results"]["n_gpu_layers"], row["results"]["expected_kld"], row["results"]["tensor_types"]) == (
        chosen["settings"]["n_gpu_layers"], chosen["expected"]["kld_mean"], chosen["tensor_types"])
    assert row["model_path"] == str(sparse_8b_session.resolve())


def test_cli_exits_2_when_nothing_fits(sparse_8b_session: Path) -> None:
    bad = CliRunner().invoke(main, ["recommend", str(sparse_8b_session), "--vram", "0.5", "--ram", "1",
                                    "--host-bandwidth", "60", "--gpu-bandwidth", "936"])
    assert bad.exit_code == 2 and "smallest plan needs" in bad.output


@pytest.mark.parametrize(("args", "message"), [
    (["--vram", "nan"], "--vram must be a finite number >= 0, not nan"),
    (["--vram", "inf"], "--vram must be a finite number >= 0, not inf"),
    (["--vram", "8", "--margin", "nan"], "--margin must be a finite number >= 0, not nan"),
    (["--vram", "8", "--bands", "0"], "--bands must be at least 1, not 0"),
    (["--vram", "8", "--ram", "-1"], "--ram must be a finite number > 0, not -1.0"),
    (["--vram", "8", "--min-tps", "10", "--max-kld", "0.01"], "give --min-tps or --max-kld, not both"),
])
def test_cli_refuses_bad_numbers_in_one_line_with_exit_2(sparse_8b_session: Path, args: list[str],
                                                        message: str) -> None:
    r = CliRunner().invoke(main, ["recommend", str(sparse_8b_session), "--host-bandwidth", "60", *args])
    assert r.exit_code == 2
    assert r.output.strip() == f"ggprec: error: {message}"


def test_without_vram_every_plan_runs_on_the_host(sparse_8b_session: Path) -> None:
    rec = _rec(sparse_8b_session, 0, 16)
    assert rec.settings.n_gpu_layers == 0 and rec.gpu_total == 0
    assert all(r.n_gpu_layers == 0 and r.gpu_bytes == 0 for r in rec.front)
    assert rec.host_total <= 16 * GIB - 512 * MIB


def test_a_kv_loss_measured_on_the_model_wins_over_the_prior(sparse_8b_session: Path) -> None:
    from ggprec.priors import Prior

    costly = {k: Prior(0.5, f"measured: {k} KV cache on this model") for k in ("q8_0", "q4_0")}
    rec = _rec(sparse_8b_session, 8, 16, kv_measured=costly)
    assert rec.settings.cache_type_k == "f16"
    assert all(r.expected_kld >= 0.5 for r in rec.front if r.kv_type != "f16")


def test_a_bf16_source_keeps_bf16_as_its_16_bit_option_never_f16(tmp_path: Path) -> None:
    from ggprec.synth import PRESETS, write_synth

    info = read_gguf(write_synth(tmp_path / "tiny-bf16.gguf", PRESETS["tiny"], dtype="bf16"))
    groups = make_groups(info, n_bands=2)
    names = {o.type.name for o in options_for(groups[0], prior_loss_model(info, groups))}
    assert "bf16" in names and "f16" not in names  # f16 would clip bf16's range


def test_the_expected_speed_is_the_one_run_will_print_for_the_plan(rec_8b_8gib: Recommendation,
                                                                  sparse_8b_session: Path) -> None:
    from ggprec.speed import load_speed_model

    info = read_gguf(sparse_8b_session)
    speed = load_speed_model(host_gbps=HOST_GBPS, gpu_gbps=GPU_GBPS)
    types = {n: lookup(t) for n, t in rec_8b_8gib.tensor_types.items()}
    assert rec_8b_8gib.tg_tps == pytest.approx(speed.expected(info, rec_8b_8gib.settings, types).tg_tps, rel=0.01)


@pytest.mark.parametrize(("args", "message"), [
    (["--min-tps", "100000"], "no plan is expected at 100000 tok/s or more; the fastest that fits is"),
    (["--max-kld", "0.00000001"], "no plan is expected within KLD 1e-08; the least expected KLD that fits is"),
])
def test_a_constraint_no_plan_meets_is_one_line_with_the_nearest_figure(sparse_8b_session: Path, args: list[str],
                                                                         message: str) -> None:
    r = CliRunner().invoke(main, ["recommend", str(sparse_8b_session), "--vram", "4", "--ram", "8",
                                  "--host-bandwidth", "60", "--gpu-bandwidth", "936", *args])
    assert r.exit_code == 2 and r.output.startswith(f"ggprec: error: {message}") and r.output.count("\n") == 1


def test_each_tensor_type_line_matches_exactly_its_own_tensor(rec_8b_8gib: Recommendation,
                                                              sparse_8b_session: Path) -> None:
    import re

    info = read_gguf(sparse_8b_session)
    names = [t.name for t in info.tensors]
    for line in llama_commands(rec_8b_8gib, info, "t.txt").tensor_type_lines:
        pattern, type_name = line.rsplit("=", 1)
        hits = [n for n in names if re.search(pattern, n)]  # quantize.cpp: std::regex_search on the name
        assert len(hits) == 1 and llama_type_name(rec_8b_8gib.tensor_types[hits[0]]) == type_name
