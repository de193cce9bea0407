"""Loss priors: the published Llama-3-8B table, the measured small models, and the size law between them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from ggprec import kv_loss, priors
from ggprec.ggml_types import lookup
from ggprec.synth import PRESETS, write_synth

N_8B = 8_030_261_248
# ggml type -> the published row standing for it (less the table's f16 floor of 0.000551).
PUBLISHED_8B = {"q8_0": 0.001355, "q6_k": 0.005452, "q5_k": 0.016595, "q5_1": 0.018045, "q5_0": 0.022239,
                "q4_k": 0.043136, "q4_1": 0.071683, "q4_0": 0.071940, "q3_k": 0.228217, "q2_k": 0.445132}
FLOOR_8B = 0.000551
K_LADDER = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0", "f16")


# --- the data file ----------------------------------------------------------------------------------------


def test_every_published_fact_names_its_source_and_has_an_error() -> None:
    for name, model in priors.facts()["published"].items():
        assert model["source"].startswith("llama.cpp "), name
        assert model["n_params"] > 1e9
        for mix, row in model["weights"].items():
            assert 0 < row["kld_se"] < row["kld"], (name, mix)


def test_every_type_row_points_at_a_published_row_of_that_type() -> None:
    anchor = priors.facts()["published"]["llama-3-8b"]
    for type_name, mix in anchor["type_rows"].items():
        assert mix in anchor["weights"]
        assert priors._mix_type(mix) == lookup(type_name).name


def test_measured_facts_say_how_where_and_what_was_excluded() -> None:
    measured = priors.facts()["measured"]
    assert set(measured) == {"smollm2-135m", "gemma3-270m"}
    for name, m in measured.items():
        assert m["method"]["command"].startswith("PYTHONPATH=. python scripts/measure_priors.py")
        assert m["method"]["date"] and m["reference"].endswith("dequantized to f32 by llama.cpp (ggprec profile f32)")
        assert set(m["weights"]) == {"q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k"}, name
        for mix, p in m["weights"].items():
            assert p["kld"] > 0 and 0 < p["kld_se"] < p["kld"], (name, mix)
            assert 2 < p["file_bpw"] < 9
            assert p["excluded"] is None or "source file's own type" in p["excluded"] \
                or "fell back to a legacy type" in p["excluded"]
        assert set(m["kv"]) == {"f16", "q8_0", "q4_0"}


# --- weights ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", sorted(PUBLISHED_8B))
def test_at_8b_the_prior_is_the_published_row_less_its_floor(type_name: str) -> None:
    p = priors.weight_prior(type_name, N_8B)
    assert p.kld == pytest.approx(PUBLISHED_8B[type_name] - FLOOR_8B, rel=1e-9)
    assert p.source.startswith("prior: llama.cpp Llama-3-8B table (row ")
    # Tolerance against the raw published figure: the floor, 0.00055 absolute.
    assert abs(p.kld - PUBLISHED_8B[type_name]) <= FLOOR_8B + 1e-12


def test_lossless_types_lose_nothing() -> None:
    for t in ("f16", "bf16", "f32"):
        assert priors.weight_prior(t, N_8B) == priors.Prior(0.0, "prior: 16-bit or wider weights lose nothing")


def test_a_type_without_a_row_is_interpolated_in_bits_between_its_ladder_neighbours() -> None:
    p = priors.weight_prior("iq4_xs", N_8B)  # 4.25 bits: between q3_k (3.44) and q4_k (4.5)
    assert "interpolated at 4.25 bits" in p.source
    assert priors.weight_prior("q4_k", N_8B).kld < p.kld < priors.weight_prior("q3_k", N_8B).kld


@pytest.mark.parametrize("n_params", [135_000_000, 1_200_000_000, N_8B, 70_000_000_000])
def test_loss_falls_with_bits_along_the_k_quant_ladder(n_params: int) -> None:
    klds = [priors.weight_prior(t, n_params).kld for t in K_LADDER]
    assert klds == sorted(klds, reverse=True) and klds[-1] == 0.0


def test_smaller_models_lose_more_at_the_same_type() -> None:
    fit = priors.size_fit()
    assert fit.b > 0
    sizes = [300_000_000, 1_000_000_000, N_8B, 70_000_000_000]
    for t in ("q8_0", "q4_k", "q4_0"):
        klds = [priors.weight_prior(t, n).kld for n in sizes]
        assert klds == sorted(klds, reverse=True), t


def test_the_fit_uses_only_unflagged_points_and_states_b() -> None:
    fit = priors.size_fit()
    measured = priors.facts()["measured"]
    assert fit.points
    for name, mix, *_ in fit.points:
        assert measured[name]["weights"][mix]["excluded"] is None
    p = priors.weight_prior("q4_k", 1_200_000_000)
    assert p.source == f"prior: llama.cpp Llama-3-8B table (row q4_k_s) scaled to 1.2B (b={fit.b:.2f})"
    assert p.kld == pytest.approx((PUBLISHED_8B["q4_k"] - FLOOR_8B) * (1.2e9 / N_8B) ** (-fit.b))


def test_a_measured_model_of_exactly_that_size_gets_its_measurement() -> None:
    smol = priors.facts()["measured"]["smollm2-135m"]
    usable = {priors._mix_type(m): p for m, p in smol["weights"].items() if p["excluded"] is None}
    assert "q8_0" in usable
    p = priors.weight_prior("q8_0", smol["n_params"])
    assert p == priors.Prior(usable["q8_0"]["kld"], f"measured: {smol['title']}, llama.cpp mix q8_0")
    assert priors.weight_prior("q8_0", smol["n_params"] + 1).source.startswith("prior: ")


# --- KV cache ---------------------------------------------------------------------------------------------


def test_kv_priors_grow_as_the_cache_loses_bits_and_do_not_depend_on_size() -> None:
    for n in (135_000_000, N_8B):
        f16, q8, q5, q4 = (priors.kv_prior(t, n) for t in ("f16", "q8_0", "q5_0", "q4_0"))
        assert f16.kld == 0.0 and 0 < q8.kld < q5.kld < q4.kld
        assert all(p.source.startswith("prior: ") for p in (f16, q8, q5, q4))
    assert priors.kv_prior("q4_0", 135_000_000) == priors.kv_prior("q4_0", N_8B)


def test_the_kv_prior_is_the_geometric_mean_of_the_measured_models() -> None:
    measured = priors.facts()["measured"].values()
    for kv in ("q8_0", "q4_0"):
        added = [m["kv"][kv]["kld"] - m["kv"]["f16"]["kld"] for m in measured]
        mean = math.exp(sum(map(math.log, added)) / len(added))
        assert priors.kv_prior(kv, N_8B).kld == pytest.approx(min(mean, 0.000980 - 0.000189) if kv == "q8_0" else mean)
    assert priors.kv_prior("q4_0", N_8B).source == \
        "prior: q4_0 KV cache, geometric mean of SmolLM2-135M-Instruct and Gemma 3 270M (no size law)"


def test_measure_kv_loss_measures_once_then_reads_the_cache(tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny.gguf"
    shutil.copy(tiny_model, model)
    from ggprec.cpu_buffers import host_buffers

    got = kv_loss.measure_kv_loss(model, chunks=1, threads=2)
    assert got is not None and set(got) == {"q8_0", "q4_0"}
    how = "1 window of 512 tokens" + ("" if host_buffers().use_extra else ", extra CPU buffer types off")
    for kv, p in got.items():
        assert math.isfinite(p.kld) and p.kld >= 0
        assert p.source == f"measured: {kv} KV cache on this model ({how})"

    def no_second_run(*args: object) -> None:
        raise AssertionError("measured twice")

    monkeypatch.setattr(kv_loss, "_run_kv_worker", no_second_run)
    assert kv_loss.measure_kv_loss(model, chunks=1, threads=2) == got


def test_measure_kv_loss_refuses_a_sparse_file_without_running_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sparse = write_synth(tmp_path / "sparse.gguf", PRESETS["llama-3.2-1b"], sparse=True)
    monkeypatch.setattr(kv_loss, "_run_kv_worker", lambda *a: pytest.fail("ran a sparse file"))
    assert kv_loss.measure_kv_loss(sparse) is None


def test_measure_kv_loss_is_none_for_a_model_llama_cpp_refuses(unknown_arch_model: Path) -> None:
    assert kv_loss.measure_kv_loss(unknown_arch_model, chunks=1, threads=2) is None


@pytest.mark.slow
def test_measure_kv_loss_on_the_real_demo_model_agrees_with_the_stored_facts(demo_model: Path) -> None:
    """The quantized demo file itself (not its f32 reference), one window: the KV cache's own share, after the
    flash-attention control, lands near what measure_priors.py measured on the f32 reference."""
    got = kv_loss.measure_kv_loss(demo_model, chunks=1, threads=2)
    assert got is not None
    stored = priors.facts()["measured"]["smollm2-135m"]["kv"]
    for kv in ("q8_0", "q4_0"):
        assert got[kv].source.startswith(f"measured: {kv} KV cache on this model (1 window of 512 tokens")
        assert stored[kv]["kld"] / 3 < got[kv].kld < stored[kv]["kld"] * 3, kv
    assert got["q8_0"].kld < got["q4_0"].kld
