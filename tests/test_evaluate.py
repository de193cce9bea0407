"""`ggprec eval`: llama-perplexity's KL-divergence method.

The maths is checked on hand-made logits with exact expected values; the method end to end on the tiny
synthetic model (a model against itself, the reference cache, bad input) and on the real SmolLM2 (q4_0
clearly worse than q8_0 against its f32 reference).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggprec import evaluate as ev
from ggprec.cli import main
from ggprec.errors import GgprecError
from ggprec.settings import RuntimeSettings
from ggprec.synth import shape_for, write_synth

TWO_THREADS = RuntimeSettings(n_threads=2)
TINY_CTX = 32  # tiny-model windows: 15 scored positions each


@pytest.fixture(autouse=True)
def reference_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty reference-logits cache of its own."""
    cache = tmp_path / "reference-logits"
    monkeypatch.setattr(ev.reference, "reference_cache_dir", lambda: cache)
    return cache


# --- maths on hand-made logits ---------------------------------------------------------------------------


def test_identical_logits_give_kld_exactly_zero_and_full_top1():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], dtype=np.float32)
    p = ev.log_softmax(logits)
    kld = ev.kl_divergence(p, ev.log_softmax(logits.copy()))
    assert kld.tolist() == [0.0, 0.0]
    r = ev.summarize(kld, np.argmax(p, -1) == np.argmax(p, -1), -p[:, 0], -p[:, 0], n_chunks=1)
    assert (r.kld_mean, r.kld_max, r.top1, r.top1_se, r.ppl_ratio, r.ppl_ratio_se) == (0.0, 0.0, 1.0, 0.0, 1.0, 0.0)


def test_kld_of_a_two_token_example_matches_the_hand_computation():
    # reference p = (1/4, 3/4), candidate q = (1/2, 1/2):
    # KL(p || q) = 1/4 ln(1/4 / 1/2) + 3/4 ln(3/4 / 1/2) = 3/4 ln 3 - ln 2
    p = ev.log_softmax(np.array([[0.0, math.log(3.0)]]))
    q = ev.log_softmax(np.array([[7.0, 7.0]]))
    assert ev.kl_divergence(p, q)[0] == pytest.approx(0.75 * math.log(3.0) - math.log(2.0), abs=1e-15)


def test_log_softmax_is_stable_for_huge_logits():
    p = ev.log_softmax(np.array([[1e4, 1e4 + math.log(3.0)]]))
    assert np.exp(p[0]).tolist() == pytest.approx([0.25, 0.75], abs=1e-12)


def test_summary_figures_and_standard_errors_on_hand_data():
    kld = np.array([0.0, 0.2, 0.4, 0.6])
    agree = np.array([True, True, False, True])
    nll_ref = np.array([1.0, 2.0, 3.0, 4.0])
    nll_cand = nll_ref + 0.1  # worse by the same amount at every position
    r = ev.summarize(kld, agree, nll_cand, nll_ref, n_chunks=2)
    assert r.kld_mean == pytest.approx(0.3, abs=1e-15)
    assert r.kld_median == pytest.approx(0.3, abs=1e-15)
    assert r.kld_max == 0.6
    assert r.kld_mean_se == pytest.approx(math.sqrt(0.2 / 3) / 2, abs=1e-15)
    assert (r.top1, r.top1_se) == (0.75, pytest.approx(math.sqrt(0.75 * 0.25 / 4), abs=1e-15))
    assert r.ppl_ref == pytest.approx(math.exp(2.5), rel=1e-15)
    assert r.ppl_ref_se == pytest.approx(math.exp(2.5) * math.sqrt(5 / 3) / 2, rel=1e-14)  # delta method
    assert r.ppl == pytest.approx(math.exp(2.6), rel=1e-15)
    # The ratio's error comes from the paired differences, all 0.1 here: no spread, no error.
    assert r.ppl_ratio == pytest.approx(math.exp(0.1), rel=1e-15)
    assert r.ppl_ratio_se == pytest.approx(0.0, abs=1e-14)
    assert (r.n_tokens, r.n_chunks) == (4, 2)


def test_uint16_cache_grid_keeps_kld_exact_enough_and_zero_for_identical():
    rng = np.random.default_rng(0)
    p = ev.log_softmax(rng.normal(0, 3, (64, 2000)))
    q = ev.log_softmax(np.log(np.exp(p) + 1e-4 * rng.random(p.shape)))  # a slightly perturbed candidate
    codes, lo = ev.quantize_logp(p)
    assert codes.dtype == np.uint16 and lo.dtype == np.float32
    assert ev.kl_divergence_quantized(codes, lo, p).tolist() == [0.0] * 64
    exact, cached = ev.kl_divergence(p, q), ev.kl_divergence_quantized(codes, lo, q)
    assert exact.mean() > 1e-3
    assert abs(cached.mean() - exact.mean()) < 1e-3 * exact.mean()


def test_windows_score_the_second_half_and_reject_short_texts():
    w = ev.make_windows(list(range(100)), n_ctx=32, chunks=None, bos=7)
    assert (w.n_chunks, w.first, w.scored_per_window) == (3, 16, 15)
    assert w.window(1) == [7, *range(33, 64)]  # BOS written over the first token, as llama-perplexity
    with pytest.raises(GgprecError, match="text too short: 20 tokens, one window needs 32"):
        ev.make_windows(list(range(20)), n_ctx=32, chunks=None, bos=None)
    with pytest.raises(GgprecError, match="only 3 windows"):
        ev.make_windows(list(range(100)), n_ctx=32, chunks=4, bos=None)


def test_default_text_ships_with_the_package():
    text = ev.default_text()
    assert len(text.split()) > 4000


# --- the tiny synthetic model ----------------------------------------------------------------------------


def _eval_tiny(candidate: Path, reference: Path, **kw) -> ev.EvalResult:
    kw.setdefault("n_ctx", TINY_CTX)
    kw.setdefault("chunks", 3)
    return ev.evaluate(candidate, reference, settings=TWO_THREADS, **kw)


def test_a_model_against_itself_gives_kld_zero_and_full_top1(tiny_model: Path):
    r = _eval_tiny(tiny_model, tiny_model)
    assert (r.kld_mean, r.kld_max, r.top1, r.ppl_ratio) == (0.0, 0.0, 1.0, 1.0)
    assert r.ppl == r.ppl_ref and r.ppl > 1.0
    assert (r.n_chunks, r.n_tokens) == (3, 3 * 15)


def test_second_eval_reuses_the_cached_reference_with_identical_figures(tiny_model: Path, tiny_model_f32: Path,
                                                                        reference_cache: Path):
    runs = ev.reference.reference_runs
    first = _eval_tiny(tiny_model, tiny_model_f32)
    assert ev.reference.reference_runs == runs + 1 and not first.reference_cached
    assert len(list(reference_cache.glob("*.npy"))) == 1
    second = _eval_tiny(tiny_model, tiny_model_f32)
    assert ev.reference.reference_runs == runs + 1 and second.reference_cached
    assert {**first.to_dict(), "reference_cached": True} == second.to_dict()  # reproducible to the last bit
    assert first.kld_mean > 0.0  # f16 weights against f32 do differ a little


def test_other_settings_get_their_own_reference_cache_entry(tiny_model: Path, reference_cache: Path):
    _eval_tiny(tiny_model, tiny_model, chunks=2)
    _eval_tiny(tiny_model, tiny_model, chunks=3)
    assert len(list(reference_cache.glob("*.npy"))) == 2


def test_different_vocabularies_are_refused(tiny_model: Path, tmp_path: Path):
    other = write_synth(tmp_path / "vocab2000.gguf", shape_for("tiny", n_vocab=2000), dtype="f16")
    with pytest.raises(GgprecError, match="different vocabularies: .* has 2000 tokens, .* has 1024"):
        _eval_tiny(other, tiny_model)


def test_same_vocabulary_size_but_different_tokenizer_is_refused_before_any_inference(demo_model: Path,
                                                                                       tmp_path: Path):
    # SmolLM2's shape and vocabulary size, but ggprec's synthetic byte-pair tokenizer; weights left as a hole.
    other = write_synth(tmp_path / "synth-smollm2.gguf", shape_for("smollm2-135m"), dtype="f16", sparse=True)
    runs = ev.reference.reference_runs
    with pytest.raises(GgprecError, match="different tokenizers"):
        ev.evaluate(other, demo_model, settings=TWO_THREADS)
    assert ev.reference.reference_runs == runs


def test_text_too_short_for_one_window_is_refused(tiny_model: Path):
    with pytest.raises(GgprecError, match="text too short"):
        _eval_tiny(tiny_model, tiny_model, text="A few words only.", chunks=None)


def test_missing_model_is_refused(tiny_model: Path, tmp_path: Path):
    with pytest.raises(GgprecError, match="no such file"):
        _eval_tiny(tmp_path / "nope.gguf", tiny_model)


def test_cli_eval_json(tiny_model: Path, tmp_path: Path):
    text = tmp_path / "t.txt"
    text.write_text(ev.default_text()[:3000])
    res = CliRunner().invoke(main, ["eval", str(tiny_model), "--reference", str(tiny_model), "--text", str(text),
                                    "--ctx", str(TINY_CTX), "--chunks", "2", "--threads", "2", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["schema"], doc["kld_mean"], doc["top1"], doc["n_chunks"], doc["n_ctx"]) == (1, 0.0, 1.0, 2, TINY_CTX)
    documented = _documented_keys()
    assert set(doc) == documented


def _documented_keys() -> set[str]:
    """The keys of the `eval --json` table in docs/json.md."""
    doc = (Path(__file__).parents[1] / "docs" / "json.md").read_text()
    section = doc.split("## `ggprec eval --json`", 1)[1].split("\n## ", 1)[0]
    keys = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys.update(k.strip(" `") for k in line.split("|")[1].split(","))
    return keys


def test_cli_bad_input_is_one_line_and_exit_2(tiny_model: Path, tmp_path: Path):
    res = CliRunner().invoke(main, ["eval", str(tiny_model), "--reference", str(tmp_path / "missing.gguf")])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and res.output.startswith("ggprec: error: ")


# --- the real SmolLM2 ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_q4_0_is_clearly_worse_than_q8_0(demo_model: Path, demo_f32: Path):
    from ggprec.profile import load_profile
    from ggprec.quantize import build_variant

    # The variants `ggprec demo` builds (cached), against SmolLM2 dequantized to f32.
    q8 = build_variant(demo_model, load_profile("q8_0"), threads=2)
    q4 = build_variant(demo_model, load_profile("q4_0"), threads=2)
    r8 = ev.evaluate(q8, demo_f32, n_ctx=256, chunks=2, settings=TWO_THREADS)
    r4 = ev.evaluate(q4, demo_f32, n_ctx=256, chunks=2, settings=TWO_THREADS)
    assert r4.reference_cached  # the second candidate did not run the reference again
    assert r8.kld_mean > 0.0 and r4.kld_mean > 10 * r8.kld_mean
    assert r4.kld_mean - r8.kld_mean > 10 * math.hypot(r4.kld_mean_se, r8.kld_mean_se)
    assert r4.top1 < r8.top1 < 1.0
    assert r4.ppl_ratio > r8.ppl_ratio


def test_a_stored_result_rebuilds_from_its_dict():
    r = ev.summarize(np.array([0.1, 0.3]), np.array([True, False]), np.array([1.0, 2.0]), np.array([1.0, 1.5]), 1)
    assert ev.EvalResult(**json.loads(json.dumps(r.to_dict()))) == r


def test_ggprec_uses_no_private_llama_cpp_python_api():
    import re

    private = re.compile(r"llama_cpp\._(?!_)\w|from llama_cpp import _|llama_cpp\._internals|\._model\b|\._ctx\b")
    for path in (Path(__file__).parents[1] / "ggprec").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not private.search(line), f"{path.name}:{n}: {line.strip()}"


def test_windows_per_decode_follow_llama_perplexity_and_cap_the_logits():
    assert ev.sequences_per_decode(512, 8, 49152) == 4  # n_batch 2048 / n_ctx, as llama-perplexity
    assert ev.sequences_per_decode(512, 2, 49152) == 2  # no more than there are windows
    assert ev.sequences_per_decode(4096, 8, 49152) == 1
    assert ev.sequences_per_decode(512, 8, 262144) == 2  # 255 rows x 262144 x 4 bytes: two fit in 512 MiB
