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
from ggprec.profile import load_profile
from ggprec.recommend import (
    GIB,
    MIB,
    PRIOR_KLD_AT_Q8,
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

HOST_GBPS = 20.0  # given, so tests do not time a numpy copy


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


def test_knapsack_with_a_loss_target_stops_at_the_fewest_bytes_reaching_it() -> None:
    a = [_opt("q4_0", 100, 1.0), _opt("q8_0", 200, 0.1)]
    b = [_opt("q4_0", 100, 0.5), _opt("q8_0", 200, 0.45)]
    sol = solve([a, b], budget=None, loss_target=0.7)
    assert sol is not None and sol.choice == [1, 0] and sol.bytes == 300


def test_options_offer_only_types_whose_blocks_divide_the_rows_and_no_upcast(demo_model: Path) -> None:
    info = read_gguf(demo_model)  # SmolLM2: rows of 576 (not a multiple of 256), source q4_1 / q8_0
    groups = make_groups(info)
    losses = prior_loss_model(info, groups)
    q = next(g for g in groups if g.key.startswith("attn_q@"))
    names = {o.type.name for o in options_for(q, losses)}
    assert not names & {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k"}  # 576 % 256 != 0: llama.cpp would fall back
    assert "q4_1" in names and "f16" not in names and "q8_0" not in names  # q4_1 source: no upcast


def test_priors_make_attn_v_and_ffn_down_costlier_than_attn_q_and_total_the_q8_figure(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    losses = prior_loss_model(info, groups)
    by = {g.key: g for g in groups}

    def per_param(key: str) -> float:
        return losses.group_loss(by[key], 4.5) / by[key].n_params

    assert per_param("attn_v@0-0") == pytest.approx(2 * per_param("attn_q@0-0"))
    assert per_param("ffn_down@1-1") == pytest.approx(2 * per_param("ffn_up@1-1"))
    assert sum(losses.group_loss(g, 8.5) for g in groups) == pytest.approx(PRIOR_KLD_AT_Q8)


def test_measured_sensitivity_replaces_the_prior_of_the_groups_it_covers(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    groups = make_groups(info, n_bands=2)
    q0 = next(g for g in groups if g.key == "attn_q@0-0")
    record = {"probe_type": "q4_0", "groups": [{"tensors": [t.name for t in q0.tensors], "kld": 0.5}]}
    losses = sensitivity_loss_model(info, groups, record)
    assert losses.group_loss(q0, lookup("q4_0").bits_per_weight) == pytest.approx(0.5)
    assert losses.group_loss(q0, 8.5) == pytest.approx(0.5 / 2 ** (1.5 * 4))
    assert losses.source.startswith("sensitivity")


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


# --- the search, on sparse synthetic shapes ------------------------------------------------------------


def test_8b_with_24_gib_at_ctx_8192_keeps_f16_weights_fully_on_the_gpu(sparse_8b_session: Path) -> None:
    rec = recommend(read_gguf(sparse_8b_session), 24, ram_gb=64, ctx=8192, host_gbps=HOST_GBPS)
    assert rec.settings.n_gpu_layers == 33  # 32 layers + the output head
    assert set(rec.tensor_types.values()) == {"f16"}
    assert rec.settings.cache_type_k == "f16" and rec.settings.n_ctx == 8192
    assert rec.gpu_total <= 24 * GIB - 512 * MIB


def test_70b_with_24_gib_gives_partial_offload_within_budget(sparse_70b_session: Path) -> None:
    rec = recommend(read_gguf(sparse_70b_session), 24, ram_gb=200, ctx=8192, host_gbps=HOST_GBPS)
    assert 0 < rec.settings.n_gpu_layers < 80
    assert rec.gpu_total <= 24 * GIB - 512 * MIB
    assert rec.buffers["model:CUDA0"] > 10 * GIB  # the GPU is used, not left empty
    assert "layers on the GPU, the rest on the host" in rec.reasons[0]


def test_8b_with_4_gib_and_8_gib_ram_quantizes_and_explains_the_trade(sparse_8b_session: Path) -> None:
    rec = recommend(read_gguf(sparse_8b_session), 4, ram_gb=8, ctx=8192, host_gbps=HOST_GBPS)
    assert rec.settings.cache_type_k != "f16" or set(rec.tensor_types.values()) != {"f16"}
    assert rec.gpu_total <= 4 * GIB - 512 * MIB and rec.host_total <= 8 * GIB - 512 * MIB
    text = " ".join(rec.reasons)
    assert "KV cache" in text and "largest expected losses" in text


def test_speed_goal_puts_the_whole_8b_on_a_4_gib_gpu_with_fewer_bits(sparse_8b_session: Path) -> None:
    rec = recommend(read_gguf(sparse_8b_session), 4, ram_gb=64, ctx=8192, goal="speed", host_gbps=HOST_GBPS)
    assert rec.settings.n_gpu_layers == 33
    assert all(lookup(t).bits_per_weight < 8 for t in rec.tensor_types.values())
    assert rec.gpu_total <= 4 * GIB - 512 * MIB


def test_nothing_fits_says_the_smallest_budget_that_would(sparse_8b_session: Path) -> None:
    with pytest.raises(NoFitError, match=r"the smallest plan needs \d+\.\d+ GiB VRAM and \d+\.\d+ GiB RAM"):
        recommend(read_gguf(sparse_8b_session), 0.5, ram_gb=1, ctx=8192, host_gbps=HOST_GBPS)


def test_written_profile_resolves_to_the_recommended_types(sparse_8b_session: Path, tmp_path: Path) -> None:
    info = read_gguf(sparse_8b_session)
    rec = recommend(info, 6, ram_gb=8, ctx=4096, host_gbps=HOST_GBPS)
    out = tmp_path / "plan.yaml"
    from ggprec.profile import profile_to_yaml

    out.write_text(profile_to_yaml(to_profile(rec)))
    plan = resolve_plan(info, load_profile(str(out)))
    assert {n: t.name for n, t in plan.tensor_types().items() if n in rec.tensor_types} == rec.tensor_types
    assert plan.runtime == rec.settings


def test_cli_prints_json_writes_the_profile_and_exits_2_when_nothing_fits(sparse_8b_session: Path,
                                                                         tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "p.yaml"
    ok = runner.invoke(main, ["recommend", str(sparse_8b_session), "--vram", "24", "--ram", "64", "--ctx", "8192",
                              "--host-bandwidth", "20", "--json", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["settings"]["n_gpu_layers"] == 33 and doc["predicted"]["gpu_total"] <= 24 * GIB
    assert load_profile(str(out)).runtime.n_gpu_layers == 33
    bad = runner.invoke(main, ["recommend", str(sparse_8b_session), "--vram", "0.5", "--ram", "1",
                               "--host-bandwidth", "20"])
    assert bad.exit_code == 2 and "smallest plan needs" in bad.output
