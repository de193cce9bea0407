"""The maths on numpy arrays: log-softmax, KL divergence, the uint16 log-prob grid, and scoring rows as
llama.cpp returns them on a few threads (small functions, so tests check exact values on hand-made logits)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import GgprecError
from .result import EvalResult

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

LOGP_LEVELS = 65535  # uint16 codes per position's log-probability range


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, stable: subtract the row max before exponentiating."""
    import numpy as np

    x = np.array(logits, dtype=np.float64)  # a copy, then in-place steps: 3x faster on 255 x 49152
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def kl_divergence(ref_logp: np.ndarray, cand_logp: np.ndarray) -> np.ndarray:
    """KL(ref || cand) per row over the full vocabulary, from log-probabilities (float64)."""
    import numpy as np

    p = np.asarray(ref_logp, dtype=np.float64)
    q = np.asarray(cand_logp, dtype=np.float64)
    return (np.exp(p) * (p - q)).sum(axis=-1)


# The hot path: the reference's and the candidate's rows, scored in blocks of BLOCK_ROWS rows, in float32,
# every step written into three scratch buffers (8 x 49152 float32 = 1.5 MiB each, so a block's dozen
# passes stay in cache and no 50 MB temporary is allocated per step), the blocks shared among the threads
# llama.cpp decodes with (numpy releases the GIL inside each pass, and llama.cpp's threads are idle while a
# window is scored; llama-perplexity scores on every core too). One window of SmolLM2 (255 x 49152) takes
# a few hundredths of a second this way against ~1 s for the float64 array maths it replaced.

BLOCK_ROWS = 8
_EXPM1_CAP = 30.0  # expm1 argument cap in the KLD sum; larger arguments are summed exactly apart (rare)


class Scorer:
    """Runs work(block) over the row blocks of a window on `threads` threads, each thread with its own three
    float32 scratch buffers of BLOCK_ROWS rows (reused across blocks and windows). Close it (or use it as a
    context manager) to stop its threads."""

    def __init__(self, threads: int = 1) -> None:
        import threading

        self.threads = max(1, threads)
        self._local = threading.local()
        self._pool: Any = None

    def scratch(self, rows: int, n_vocab: int) -> list[np.ndarray]:
        import numpy as np

        bufs = getattr(self._local, "bufs", None)
        if bufs is None or bufs[0].shape[1] != n_vocab:
            bufs = self._local.bufs = [np.empty((BLOCK_ROWS, n_vocab), np.float32) for _ in range(3)]
        return [b[:rows] for b in bufs]

    def run(self, n: int, work: Callable[[slice], None]) -> None:
        blocks = [slice(start, min(start + BLOCK_ROWS, n)) for start in range(0, n, BLOCK_ROWS)]
        if self.threads == 1 or len(blocks) == 1:
            for b in blocks:
                work(b)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ggprec-score")
        for future in [self._pool.submit(work, b) for b in blocks]:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_sum_exp(logits: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(logits))) in float32 (buf: scratch of logits' shape)."""
    import numpy as np

    top = logits.max(axis=1)
    np.subtract(logits, top[:, None], out=buf)
    np.exp(buf, out=buf)
    return top + np.log(buf.sum(axis=1))


def _grid_codes(logits: np.ndarray, lse: np.ndarray, lo: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The rows' log-probabilities (logits - lse) as codes 0..LOGP_LEVELS (float32, in `out`) on each row's
    linear grid from lo to 0; returns the grid step per row. Reference and candidate go through exactly
    these operations, so the same logits give the same codes."""
    import numpy as np

    span = np.maximum(-lo, np.float32(1e-30))  # a one-token vocabulary: lo = 0
    np.subtract(logits, (lse + lo)[:, None], out=out)
    np.multiply(out, (np.float32(LOGP_LEVELS) / span)[:, None], out=out)
    np.rint(out, out=out)
    np.maximum(out, 0, out=out)
    np.minimum(out, LOGP_LEVELS, out=out)
    return span / np.float32(LOGP_LEVELS)


def reference_rows(logits: np.ndarray, next_ids: np.ndarray, scorer: Scorer | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the cache keeps of the reference's rows of logits: uint16 codes of the log-probabilities on each
    row's grid from its minimum to 0, the grid's lower end (float32), the argmax (int32) and the NLL of the
    actual next token (float64)."""
    import numpy as np

    scorer = scorer or Scorer()
    logits = np.asarray(logits, dtype=np.float32)
    n, n_vocab = logits.shape
    codes, lo = np.empty((n, n_vocab), np.uint16), np.empty(n, np.float32)
    nll, argmax = np.empty(n, np.float64), np.empty(n, np.int32)

    def work(b: slice) -> None:
        buf = scorer.scratch(b.stop - b.start, n_vocab)[0]
        x = logits[b]
        argmax[b] = x.argmax(axis=1)
        lse = _log_sum_exp(x, buf)
        lo[b] = x.min(axis=1) - lse
        _grid_codes(x, lse, lo[b], buf)
        codes[b] = buf
        nll[b] = lse.astype(np.float64) - x[np.arange(len(x)), next_ids[b]]

    scorer.run(n, work)
    return codes, lo, argmax, nll


def candidate_rows(logits: np.ndarray, next_ids: np.ndarray, ref_codes: np.ndarray, ref_lo: np.ndarray,
                   scorer: Scorer | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KL(ref || cand) per row with the candidate's log-probabilities put on the reference's grid first and
    both renormalized (a model against itself gives exactly 0), the candidate's argmax and the NLL of the
    actual next token.

    With g the reference's grid values (lo + code * step), h the candidate's and x = h - g, the KLD of the
    renormalized grids is log(sum p_i e^x_i) - sum p_i x_i (p = softmax(g)), computed as
    log1p(sum p_i expm1(x_i - m)) with m = sum p_i x_i: no cancellation when the two agree, and every
    term bounded (arguments above _EXPM1_CAP, where e^g may underflow float32, are added apart in float64)."""
    import numpy as np

    scorer = scorer or Scorer()
    logits = np.asarray(logits, dtype=np.float32)
    n, n_vocab = logits.shape
    kld, nll, argmax = np.empty(n, np.float64), np.empty(n, np.float64), np.empty(n, np.int64)

    def work(b: slice) -> None:
        x_buf, p_buf, terms = scorer.scratch(b.stop - b.start, n_vocab)
        x, codes, lo = logits[b], ref_codes[b], ref_lo[b]
        argmax[b] = x.argmax(axis=1)
        lse = _log_sum_exp(x, x_buf)
        nll[b] = lse.astype(np.float64) - x[np.arange(len(x)), next_ids[b]]
        step = _grid_codes(x, lse, lo, x_buf)
        np.subtract(x_buf, codes, out=x_buf)
        np.multiply(x_buf, step[:, None], out=x_buf)  # x = h - g
        np.multiply(codes, step[:, None], out=p_buf, casting="unsafe")
        np.add(p_buf, lo[:, None], out=p_buf)
        np.exp(p_buf, out=p_buf)  # e^g: sums to ~1 (g are log-probabilities), so p = e^g / total
        total = p_buf.sum(axis=1)
        m = np.einsum("ij,ij->i", p_buf, x_buf) / total
        np.subtract(x_buf, m[:, None], out=x_buf)  # x - m
        big = x_buf.max() > _EXPM1_CAP
        np.minimum(x_buf, _EXPM1_CAP, out=terms)
        np.expm1(terms, out=terms)
        terms *= p_buf
        s = terms.sum(axis=1, dtype=np.float64)
        if big:  # e^(g + x - m) - e^g, the capped term taken back, in float64
            r, c = np.nonzero(x_buf > _EXPM1_CAP)
            g = lo[r].astype(np.float64) + codes[r, c] * step[r].astype(np.float64)
            u = x_buf[r, c].astype(np.float64)
            np.add.at(s, r, np.exp(g + u) - np.exp(g) - p_buf[r, c] * math.expm1(_EXPM1_CAP))
        kld[b] = np.log1p(s / total)

    scorer.run(n, work)
    return kld, argmax, nll


def quantize_logp(logp: np.ndarray, lo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint16 codes of log-probabilities on a per-row linear grid from `lo` (default: the row minimum) to 0,
    and `lo` itself (float32). Values below `lo` clip to code 0. The cache's own encoding (reference_rows)."""
    import numpy as np

    x = np.asarray(logp, dtype=np.float32)
    if lo is None:
        return reference_rows(x, np.zeros(len(x), np.int64))[:2]
    lo = np.asarray(lo, dtype=np.float32)
    buf = np.empty_like(x)
    _grid_codes(x, _log_sum_exp(x, buf), lo, buf)
    return buf.astype(np.uint16), lo


def dequantize_logp(codes: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Normalized log-probabilities (float64) back from `quantize_logp`'s codes."""
    import numpy as np

    lo64 = np.minimum(np.asarray(lo, dtype=np.float64), -1e-30)[..., None]
    return log_softmax(lo64 + np.asarray(codes, dtype=np.float64) * (-lo64 / LOGP_LEVELS))


def kl_divergence_quantized(ref_codes: np.ndarray, ref_lo: np.ndarray, cand_logp: np.ndarray) -> np.ndarray:
    """KL(ref || cand) per row, with the candidate's log-probs put on the reference's uint16 grid first,
    both renormalized (so KLD >= 0 and a model against itself gives exactly 0)."""
    import numpy as np

    cand = np.asarray(cand_logp, dtype=np.float32)
    return candidate_rows(cand, np.zeros(len(cand), np.int64), ref_codes, ref_lo)[0]


def token_nll(logp: np.ndarray, next_ids: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each row's actual next token."""
    import numpy as np

    return -np.take_along_axis(logp, np.asarray(next_ids)[:, None], axis=-1)[:, 0].astype(np.float64)


def summarize(kld: np.ndarray, agree: np.ndarray, nll_cand: np.ndarray, nll_ref: np.ndarray,
              n_chunks: int) -> EvalResult:
    """The reported figures and their standard errors from per-position values.

    mean KLD: std/sqrt(n); top-1: binomial sqrt(p(1-p)/n); PPL = exp(mean NLL) with the delta-method
    error PPL * se(mean NLL), as llama-perplexity; the PPL ratio exp(mean(nll_cand - nll_ref)) takes its
    error from the paired differences, which is much tighter than combining the two PPL errors."""
    import numpy as np

    kld = np.asarray(kld, dtype=np.float64)
    n = int(kld.size)
    if n < 2:
        raise GgprecError("need at least 2 scored tokens for standard errors")

    def mean_se(x: np.ndarray) -> tuple[float, float]:
        x = np.asarray(x, dtype=np.float64)
        return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n))

    kld_mean, kld_se = mean_se(kld)
    top1 = float(np.asarray(agree, dtype=np.float64).mean())
    nll_c, nll_c_se = mean_se(nll_cand)
    nll_r, nll_r_se = mean_se(nll_ref)
    diff, diff_se = mean_se(np.asarray(nll_cand, dtype=np.float64) - np.asarray(nll_ref, dtype=np.float64))
    ppl, ppl_ref, ratio = math.exp(nll_c), math.exp(nll_r), math.exp(diff)
    return EvalResult(
        kld_mean=kld_mean, kld_median=float(np.median(kld)), kld_p99=float(np.percentile(kld, 99)),
        kld_max=float(kld.max()), kld_mean_se=kld_se,
        top1=top1, top1_se=math.sqrt(top1 * (1.0 - top1) / n),
        ppl=ppl, ppl_se=ppl * nll_c_se, ppl_ref=ppl_ref, ppl_ref_se=ppl_ref * nll_r_se,
        ppl_ratio=ratio, ppl_ratio_se=ratio * diff_se,
        n_tokens=n, n_chunks=n_chunks,
    )
