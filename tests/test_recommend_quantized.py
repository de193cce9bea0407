"""ggprec recommend on an already-quantized source (issue 17): the model as it is is a row of the front at
KLD 0 and the default when it fits; a quantized tensor is only kept or made smaller; requantizing is priced
above the f16-based prior; --imatrix joins the i-quants and the llama-quantize line. Pure: sparse synthetic
GGUFs with quantized tensor types (headers only), no llama.cpp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ggprec.ggml_types import lookup
from ggprec.gguf_info import read_gguf
from ggprec.plan import resolve_plan
from ggprec.profile import Profile
from ggprec.recommend import (
    UNCHANGED,
    as_is_row,
    make_groups,
    options_for,
    prior_loss_model,
    proxy_tensor_loss,
    recommend,
    to_profile,
)
from ggprec.recommend.api import Recommendation
from ggprec.recommend.commands import llama_commands
from ggprec.recommend.loss import needs_imatrix
from ggprec.synth import PRESETS, SynthShape, write_synth

HOST_GBPS = 60.0


def q4_k_m_like(name: str) -> str:
    """A Q4_K_M-like mix (llama.cpp's use_more_bits, simplified): q6_k for the head and for attn_v/ffn_down in
    every other layer, q4_k elsewhere; so groups of a layer band mix two source types."""
    if name == "token_embd.weight":
        return "q6_k"
    layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
    if ("attn_v" in name or "ffn_down" in name) and layer % 2 == 0:
        return "q6_k"
    return "q4_k"


def write_quantized(path: Path, shape: SynthShape, type_of: Callable[[str], str]) -> Path:
    """synth's model with every 2-D weight stored as type_of(name), written sparsely (header + hole): what
    recommend reads of a model hub's quantized file."""
    return write_synth(path, shape, sparse=True, name="quantized-synth", type_of=type_of)


@pytest.fixture(scope="module")
def q4km(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3.2-1B's shape (tied head, rows of 2048) as a Q4_K_M-like file."""
    return write_quantized(tmp_path_factory.mktemp("q4km") / "llama-3.2-1b-q4_k_m.gguf", PRESETS["llama-3.2-1b"],
                           q4_k_m_like)


def _rec(path: Path, ram: float, **kw: object) -> Recommendation:
    return recommend(read_gguf(path), 0, ram_gb=ram, ctx=2048, host_gbps=HOST_GBPS, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rec_fits(q4km: Path) -> Recommendation:
    return _rec(q4km, 16)


def test_the_synthetic_source_is_quantized_with_mixed_groups(q4km: Path) -> None:
    info = read_gguf(q4km)
    assert {t.type.name for t in info.tensors if len(t.shape) == 2} == {"q6_k", "q4_k"}
    assert any(len({x.type for x in g.tensors}) == 2 for g in make_groups(info))


def test_a_quantized_tensor_is_only_ever_kept_or_made_smaller(q4km: Path) -> None:
    info = read_gguf(q4km)
    groups = make_groups(info)
    losses = prior_loss_model(info, groups)
    for g in groups:
        opts = options_for(g, losses)
        assert opts[-1].kept and opts[-1].loss == 0.0 and opts[-1].source == UNCHANGED
        for o in opts:
            for i, x in enumerate(g.tensors):
                t = o.type_of(i)
                assert t == x.type or t.bits_per_weight < x.type.bits_per_weight, (g.key, t.name, x.type.name)


def test_requantizing_costs_the_targets_prior_plus_the_sources(q4km: Path) -> None:
    info = read_gguf(q4km)
    groups = make_groups(info)
    losses = prior_loss_model(info, groups)
    x = info.tensor("blk.0.ffn_down.weight")
    assert x is not None and x.type.name == "q6_k"
    n_bytes, kld, source = losses.tensor_cost(x, lookup("q4_k"))
    share = losses.share[x.name]
    assert kld == pytest.approx(share * (losses.prior_kld("q4_k") + losses.prior_kld("q6_k")))
    assert n_bytes == lookup("q4_k").tensor_bytes(x.shape) and source.endswith("+ requantize penalty")
    assert losses.tensor_cost(x, lookup("q8_0"))[1:] == (0.0, UNCHANGED)  # wider: kept, never widened


def test_the_model_as_it_is_is_a_row_of_the_front_at_kld_exactly_0(rec_fits: Recommendation) -> None:
    i = as_is_row(rec_fits.front)
    assert i is not None
    row = rec_fits.front[i]
    assert row.as_is and row.expected_kld == 0.0 and row.loss_source == UNCHANGED and row.kv_type == "f16"
    assert i in rec_fits.shown


def test_the_default_for_a_quantized_source_that_fits_is_the_model_as_it_is(rec_fits: Recommendation,
                                                                           q4km: Path) -> None:
    info = read_gguf(q4km)
    assert rec_fits.quantized_source and rec_fits.as_is and rec_fits.expected_kld == 0.0
    assert rec_fits.tensor_types == {n: info.tensor(n).type.name for n in rec_fits.tensor_types}  # type: ignore[union-attr]
    assert rec_fits.rule.startswith("default (balanced) for an already-quantized source: the model as it is")
    assert "at least 1.5x as fast" in rec_fits.rule
    assert all(g["kept"] and g["source"] == UNCHANGED for g in rec_fits.group_types)
    assert llama_commands(rec_fits, info).quantize == ""  # nothing to quantize: run the file itself


def test_the_profile_of_the_model_as_it_is_resolves_to_its_own_types(rec_fits: Recommendation, q4km: Path) -> None:
    info = read_gguf(q4km)
    plan = resolve_plan(info, to_profile(rec_fits))
    assert all(t.type == t.source_type for t in plan.tensors)


def test_a_budget_the_model_does_not_fit_as_it_is_requantizes_and_says_so(rec_fits: Recommendation,
                                                                         q4km: Path) -> None:
    kept = rec_fits.front[as_is_row(rec_fits.front)]  # type: ignore[index]
    rec = _rec(q4km, (kept.ram_bytes + 512 * 2**20 - 64 * 2**20) / 2**30)  # 64 MiB short of the model as it is
    assert as_is_row(rec.front) is None and not rec.as_is and rec.expected_kld > 0
    assert rec.rule.startswith("default (balanced) for an already-quantized source that does not fit as it is")
    assert "does not fit this budget" in rec.reasons[1]
    assert "--allow-requantize" in llama_commands(rec, read_gguf(q4km)).quantize


def test_the_llama_quantize_line_carries_the_imatrix_when_one_is_given(rec_fits: Recommendation,
                                                                      q4km: Path) -> None:
    kept = rec_fits.front[as_is_row(rec_fits.front)]  # type: ignore[index]
    rec = _rec(q4km, (kept.ram_bytes + 512 * 2**20 - 64 * 2**20) / 2**30, imatrix="calib.imatrix")
    line = llama_commands(rec, read_gguf(q4km)).quantize
    assert rec.imatrix == "calib.imatrix" and " --imatrix calib.imatrix " in line


def test_imatrix_types_join_the_candidates_only_with_an_imatrix(q4km: Path) -> None:
    info = read_gguf(q4km)
    losses = prior_loss_model(info, make_groups(info))
    without = losses.candidate_types()
    assert "iq4_xs" not in without and not any(needs_imatrix(lookup(t)) for t in without)
    losses.imatrix = True
    assert "iq4_xs" in losses.candidate_types()


def _fitted(info, scale: float, change_floor: float):
    """ggprec.proxy's FittedProxy over a hand-made table: every tensor at every candidate type with an error
    of 0.01 x 4^(4.5 - bits per weight), mapped to KLD by one scale, with a change floor (no ggml: the table
    and the fit are plain values)."""
    from ggprec.proxy import ErrorTable, FittedProxy, ProxyFit, TensorError
    from ggprec.recommend.loss import candidate_names

    errs = {c: 0.01 * 4.0 ** (4.5 - lookup(c).bits_per_weight) for c in candidate_names(False)}
    names = [t.name for g in make_groups(info) for t in g.tensors]
    table = ErrorTable(str(info.path), list(errs), {n: {c: TensorError(e, c, 1, 1, False) for c, e in errs.items()}
                                                    for n in names}, "uniform", None)
    return FittedProxy(table, info, ProxyFit({}, scale, 3, "uniform", change_floor=change_floor))


def test_the_fitted_proxy_prices_a_tensor_and_the_priors_what_its_table_lacks(q4km: Path) -> None:
    info = read_gguf(q4km)
    losses = prior_loss_model(info, make_groups(info))
    fitted = _fitted(info, 2.0, 0.0)
    losses.with_estimator(proxy_tensor_loss(fitted, losses.priors))
    x = info.tensor("blk.0.ffn_down.weight")
    assert losses.tensor_cost(x, lookup("q4_0"))[1:] == (pytest.approx(0.02), "proxy: fitted on 3 passes")  # type: ignore[arg-type]
    fitted.table.errors[x.name].pop("q3_k")  # type: ignore[union-attr]
    assert losses.tensor_cost(x, lookup("q3_k"))[2].startswith("prior: ")  # type: ignore[arg-type]


def test_the_change_floor_is_paid_once_by_every_changed_plan_and_never_by_the_model_as_it_is(q4km: Path) -> None:
    rec = _rec(q4km, 16, goal="speed", proxy=_fitted(read_gguf(q4km), 2.0, 0.25))
    assert not rec.as_is
    row = rec.row
    assert row.expected_kld == pytest.approx(sum(g["expected_kld"] for g in rec.group_types) + rec.kv_kld + 0.25)
    assert {g["source"] for g in rec.group_types if not g["kept"]} == {"proxy: fitted on 3 passes"}
    kept = as_is_row(rec.front)
    assert kept is not None and rec.front[kept].expected_kld == 0.0
    assert any(r.startswith("change floor +0.2500: what any change to this file costs once") for r in rec.reasons)


def test_verify_passes_the_imatrix_to_the_quantizer_only_when_one_is_given(rec_fits: Recommendation, q4km: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ggprec.quantize
    from ggprec.recommend_verify import verify

    seen: list[dict[str, object]] = []

    class Built(Exception):
        pass

    def build_variant(source: str, profile: Profile, threads: int | None = None, progress: object = None) -> Path:
        seen.append({"imatrix": profile.imatrix})  # the profile carries the imatrix build_variant quantizes with
        raise Built  # stop before llama.cpp: only the call is checked here

    monkeypatch.setattr(ggprec.quantize, "build_variant", build_variant)
    kept = rec_fits.front[as_is_row(rec_fits.front)]  # type: ignore[index]
    ram = (kept.ram_bytes + 512 * 2**20 - 64 * 2**20) / 2**30
    for imatrix in ("calib.imatrix", None):
        with pytest.raises(Built):
            verify(_rec(q4km, ram, imatrix=imatrix), str(q4km))
    assert seen == [{"imatrix": str(Path("calib.imatrix").resolve())}, {"imatrix": None}]


def test_cli_refuses_a_missing_imatrix_file_in_one_line(q4km: Path) -> None:
    from click.testing import CliRunner

    from ggprec.cli import main

    r = CliRunner().invoke(main, ["recommend", str(q4km), "--vram", "0", "--ram", "16", "--imatrix", "missing.imatrix",
                                  "--priors", "--no-store", "--host-bandwidth", "60"])
    assert r.exit_code == 2 and r.output.startswith("ggprec: error: ") and r.output.count("\n") == 1


def test_cli_loss_proxy_on_a_file_without_weights_is_one_line(q4km: Path) -> None:
    from click.testing import CliRunner

    from ggprec.cli import main

    r = CliRunner().invoke(main, ["recommend", str(q4km), "--vram", "0", "--ram", "16", "--loss", "proxy",
                                  "--no-store", "--host-bandwidth", "60"])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert r.output.startswith("ggprec: error: ") and "needs the model's weights on disk" in r.output


def test_a_repacked_tensor_counts_once_so_smaller_types_fit_under_the_source(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import ggprec.cpu_buffers
    import ggprec.memory
    from ggprec.cpu_buffers import HostBuffers

    rules = HostBuffers(repack={"q4_0": 8, "q4_k": 8, "iq4_nl": 8})  # an AVX2 CPU's CPU_REPACK, on any machine
    monkeypatch.setattr(ggprec.cpu_buffers, "host_buffers", lambda: rules)
    monkeypatch.setattr(ggprec.memory, "host_buffers", lambda: rules)
    path = write_quantized(tmp_path / "smollm2-q4_1.gguf", PRESETS["smollm2-135m"],
                           lambda n: "q8_0" if n == "token_embd.weight" else "q4_1")  # q4_1: never repacked
    info = read_gguf(path)
    full = recommend(info, 0, ram_gb=16, ctx=256, host_gbps=HOST_GBPS)  # a small KV cache: weights must shrink
    kept = full.front[as_is_row(full.front)]  # type: ignore[index]
    # 8 MiB short of the file as it is. (A repacked tied head really costs its mapped table plus the repacked
    # copy, ~15 MiB here, which is why the smallest mix saves only ~14 MiB: memory.predict says so.)
    rec = recommend(info, 0, ram_gb=(kept.ram_bytes + 512 * 2**20 - 8 * 2**20) / 2**30, ctx=256,
                    host_gbps=HOST_GBPS)
    assert not rec.as_is and rec.host_total <= kept.ram_bytes - 8 * 2**20
    assert {"q4_0", "iq4_nl"} & set(rec.tensor_types.values())  # repacked types, each counted once


def test_goal_quality_keeps_the_model_as_it_is_and_goal_speed_may_requantize(q4km: Path) -> None:
    assert _rec(q4km, 16, goal="quality").as_is
    speed = _rec(q4km, 16, goal="speed")
    assert not speed.as_is and speed.rule.startswith("goal speed")  # a stated goal: its own rule
