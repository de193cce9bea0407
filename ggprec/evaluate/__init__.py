"""Accuracy of a candidate model against a reference: llama-perplexity's KL-divergence method in Python.

The text is tokenized with the reference, cut into windows of n_ctx tokens, and each window is evaluated
from an empty KV cache. As in llama-perplexity only the second half of a window is scored, so every
scored token has at least n_ctx/2 tokens of context. For each scored position we compute KL(ref || cand),
whether both models pick the same top token, and the NLL of the actual next token under each model.

The reference's log-probabilities are cached on disk (see `ReferenceLogits`), so evaluating several
candidates against one reference runs the reference once. As in llama-perplexity's --kl-divergence-base
file, each position's log-probabilities are stored as uint16 codes on a linear grid from that position's
minimum to 0 (2 bytes a token instead of 4; about 6e-4 nats a step on SmolLM2). The candidate's
log-probabilities are put on the same grid before the KLD is computed, so a model compared with itself
gives exactly 0, and values that agree to within a step cancel instead of adding rounding noise. The
error against float64 full-precision KLD is measured by scripts/eval_cache_error.py (README).

The maths lives in small functions over numpy arrays (`log_softmax`, `kl_divergence`,
`kl_divergence_quantized`, `summarize`) so tests can check exact values on hand-made logits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..progress import Progress
from ..settings import RuntimeSettings
from .decode import EVAL_BATCH, LOGITS_BUDGET, load_for_windows, score_windows, sequences_per_decode, window_logp
from .reference import (
    CACHE_FORMAT,
    ReferenceLogits,
    compute_reference,
    reference_cache_dir,
    reference_cache_path,
    reference_logits,
    reference_settings,
)
from .result import EVAL_SCHEMA, EvalResult
from .scoring import (
    LOGP_LEVELS,
    Scorer,
    candidate_rows,
    dequantize_logp,
    kl_divergence,
    kl_divergence_quantized,
    log_softmax,
    quantize_logp,
    reference_rows,
    summarize,
    token_nll,
)
from .windows import (
    MIN_CTX,
    Windows,
    check_pair,
    check_text,
    check_tokens,
    check_vocabularies,
    default_text,
    make_windows,
    model_tokens,
    read_text,
    vocab_tokens,
)

__all__ = ["CACHE_FORMAT", "EVAL_BATCH", "EVAL_SCHEMA", "LOGITS_BUDGET", "LOGP_LEVELS", "MIN_CTX", "EvalResult",
           "ReferenceLogits", "Scorer", "Windows", "candidate_rows", "check_pair", "check_text", "compute_reference",
           "default_text", "dequantize_logp", "evaluate", "kl_divergence", "kl_divergence_quantized",
           "load_for_windows", "log_softmax", "make_windows", "model_tokens", "quantize_logp", "read_text",
           "reference_cache_dir", "reference_cache_path", "reference_logits", "reference_rows", "score_windows",
           "sequences_per_decode", "summarize", "token_nll", "window_logp"]


def evaluate(candidate: str | Path, reference: str | Path, text: str | None = None, n_ctx: int = 512,
             chunks: int | None = None, settings: RuntimeSettings | None = None,
             progress: Progress | None = None) -> EvalResult:
    """KLD, top-1 agreement and perplexity of `candidate` against `reference` over `text` (default: the
    shipped text), in windows of n_ctx tokens; `chunks` windows (default: as many as the text gives).

    `settings` apply to the candidate (KV-cache types, threads, GPU layers); the reference runs with the
    same threads/batch/GPU layers but the default f16 KV cache; flash attention, unless the settings say,
    is on for both (as llama-perplexity); windows are decoded sequences_per_decode() at a time. Candidate and
    reference may be the same file. The reference's log-probs are cached on disk, so only the first call per
    reference runs it.
    With RPC servers in `settings` (the candidate's devices; the reference runs locally) every server is
    probed first and the evaluation runs in a child process (llama.cpp aborts on a dying peer)."""
    if settings is not None and settings.rpc_servers:
        from .. import rpc

        rpc.require_rpc()
        rpc.probe_all(settings.rpc_servers)
        forward = (lambda message: progress(*message)) if progress is not None else None
        return rpc.isolated(_evaluate_here, candidate, reference, text, n_ctx, chunks, settings,
                            servers=settings.rpc_servers, progress=forward)
    return _evaluate_here(candidate, reference, text, n_ctx, chunks, settings, progress)


def _evaluate_here(candidate: str | Path, reference: str | Path, text: str | None, n_ctx: int, chunks: int | None,
                   settings: RuntimeSettings | None, progress: Progress | None = None,
                   report: Any = None) -> EvalResult:
    """evaluate() in this process; `report` (isolated()'s, in a child) carries the progress to the parent."""
    import numpy as np

    if report is not None:
        progress = lambda stage, done, total: report((stage, done, total))  # noqa: E731

    from ..llama_backend import check_settings

    candidate, reference = Path(candidate), Path(reference)
    text = default_text() if text is None else text
    settings = (settings or RuntimeSettings()).with_overrides(n_ctx=n_ctx)
    check_settings(settings)  # e.g. 0 threads: refused before any file is read
    ref_settings = reference_settings(settings)
    if settings.flash_attn is None:
        # Flash attention left to ggprec: on for both (llama-perplexity's default, auto, is on for a CPU; 20-30%
        # faster windows here). Set by the caller: the reference keeps the f16 cache's default, off, as the
        # KV-loss measurement of ggprec.priors expects (it subtracts flash attention's own share).
        settings = settings.with_overrides(flash_attn=True)
        ref_settings = ref_settings.with_overrides(flash_attn=True)
    cand_info, ref_info = check_vocabularies(candidate, reference)
    # chunks None (all the text's windows): not capped by their number, so the cache key needs no tokenizing
    n_seq = sequences_per_decode(n_ctx, chunks or EVAL_BATCH, ref_info.hparams.n_vocab)

    def check_candidate(windows: Windows) -> None:  # a cold run: before the reference runs
        check_tokens(candidate, reference, windows, *vocab_tokens(candidate, text))

    ref, cached = reference_logits(reference, text, n_ctx, chunks, ref_settings, progress, n_seq,
                                   check_candidate, ref_info)
    windows = make_windows(ref.tokens.tolist(), n_ctx, chunks, None if ref.bos < 0 else ref.bos)
    n = windows.n_chunks * windows.scored_per_window
    kld, agree, nll = np.empty(n, np.float64), np.empty(n, bool), np.empty(n, np.float64)

    with (load_for_windows(candidate, settings, n_ctx, n_seq, cand_info) as lm,
          Scorer(lm.settings.n_threads or 1) as scorer):
        def score(rows: slice, logits: np.ndarray, next_ids: np.ndarray) -> None:
            kld[rows], argmax, nll[rows] = candidate_rows(logits, next_ids, ref.codes[rows], ref.lo[rows], scorer)
            agree[rows] = argmax == ref.argmax[rows]

        if cached:  # the candidate's own tokenizer, now loaded, must give the reference's tokens
            check_tokens(candidate, reference, windows, *model_tokens(lm, text))
        score_windows(lm, windows, score, "candidate", progress)
    result = summarize(kld, agree, nll, ref.nll, windows.n_chunks)
    from dataclasses import replace

    return replace(result, candidate=str(candidate), reference=str(reference), n_ctx=n_ctx,
                   text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), reference_cached=cached)
