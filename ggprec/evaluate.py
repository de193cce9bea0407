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
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GgprecError
from .progress import Progress
from .settings import RuntimeSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from .gguf_info import ModelInfo
    from .llama_backend import LoadedModel

LOGP_LEVELS = 65535  # uint16 codes per position's log-probability range
CACHE_FORMAT = 2  # bump when the cache layout or the way log-probs are computed changes
EVAL_SCHEMA = 1  # version of the `eval --json` document
MIN_CTX = 16  # below this a window scores too few tokens for a standard error
EVAL_BATCH = 2048  # tokens per llama_decode call, llama-perplexity's default n_batch: 4 windows of 512 at once
LOGITS_BUDGET = 512 * 2**20  # bytes of logits one call may return (4 x 255 rows x 49152 x 4 = 196 MiB)

# progress(stage, done, total) while evaluating: stage is "reference" or "candidate", counted in windows.


# --- maths on numpy arrays ---------------------------------------------------------------------------


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


# --- result ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    kld_mean: float
    kld_median: float
    kld_p99: float
    kld_max: float
    kld_mean_se: float
    top1: float  # fraction of scored positions where both models' most probable token is the same
    top1_se: float
    ppl: float  # candidate
    ppl_se: float
    ppl_ref: float
    ppl_ref_se: float
    ppl_ratio: float  # ppl / ppl_ref
    ppl_ratio_se: float
    n_tokens: int  # scored positions
    n_chunks: int  # windows of n_ctx tokens
    # Filled by evaluate(): where the figures came from.
    candidate: str = ""
    reference: str = ""
    n_ctx: int = 0
    text_sha256: str = ""
    reference_cached: bool = False  # True when the reference's log-probs came from the disk cache
    schema: int = EVAL_SCHEMA  # a field, so EvalResult(**to_dict()) rebuilds a stored result

    def to_dict(self) -> dict[str, Any]:
        """The `eval --json` document (docs/json.md)."""
        return asdict(self)


# --- text and windows --------------------------------------------------------------------------------


def default_text() -> str:
    """The evaluation text shipped with the package (English encyclopedic prose written for ggprec)."""
    from importlib.resources import files

    return (files("ggprec") / "data" / "eval.txt").read_text(encoding="utf-8")


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise GgprecError(f"{p}: no such text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GgprecError(f"{p}: not UTF-8 text") from None
    except OSError as e:
        raise GgprecError(f"{p}: cannot read ({e.strerror})") from None
    if not text.strip():
        raise GgprecError(f"{p}: the text is empty")
    return text


@dataclass(frozen=True)
class Windows:
    tokens: list[int]  # the whole text, tokenized without BOS
    n_ctx: int
    n_chunks: int
    bos: int | None  # written over each window's first token, as llama-perplexity does, when the model uses BOS

    @property
    def first(self) -> int:
        """Index of the first scored logit in a window: logits first .. n_ctx-2 predict tokens first+1 .. n_ctx-1."""
        return self.n_ctx // 2

    @property
    def scored_per_window(self) -> int:
        return self.n_ctx - 1 - self.first

    def window(self, i: int) -> list[int]:
        w = self.tokens[i * self.n_ctx:(i + 1) * self.n_ctx]
        if self.bos is not None:
            w = [self.bos, *w[1:]]
        return w


def make_windows(tokens: list[int], n_ctx: int, chunks: int | None, bos: int | None) -> Windows:
    if n_ctx < MIN_CTX:
        raise GgprecError(f"a window of {n_ctx} tokens is too small: windows need at least {MIN_CTX}")
    available = len(tokens) // n_ctx
    if available == 0:
        raise GgprecError(f"text too short: {len(tokens)} tokens, one window needs {n_ctx}")
    if chunks is not None and chunks < 1:
        raise GgprecError(f"{chunks} windows asked: at least 1 is needed")
    if chunks is not None and chunks > available:
        raise GgprecError(f"text gives only {available} windows of {n_ctx} tokens ({len(tokens)} tokens), "
                          f"{chunks} asked")
    return Windows(tokens=tokens, n_ctx=n_ctx, n_chunks=chunks or available, bos=bos)


# --- llama.cpp ---------------------------------------------------------------------------------------


def sequences_per_decode(n_ctx: int, n_chunks: int, n_vocab: int) -> int:
    """Windows decoded side by side in one llama_decode call: as llama-perplexity, EVAL_BATCH // n_ctx
    (4 windows of 512), no more than there are windows, and no more than LOGITS_BUDGET of logits."""
    rows = n_ctx - 1 - n_ctx // 2
    return max(1, min(EVAL_BATCH // n_ctx, n_chunks, LOGITS_BUDGET // max(rows * n_vocab * 4, 1)))


def _load(path: Path, settings: RuntimeSettings, n_ctx: int, n_seq: int = 1, info: ModelInfo | None = None
          ) -> LoadedModel:
    """The model loaded for n_seq windows of n_ctx tokens at a time, through the one loader
    (llama_backend.load_model). Threads default to every logical CPU: evaluation is all prompt-style
    batches, which scale with cores (llama-cpp-python's default for batches too). A signal stops a decode
    in flight (abortable), so a batch of several windows does not delay Ctrl-C."""
    from .llama_backend import load_model

    n_batch = min(settings.n_batch, n_ctx) * n_seq
    return load_model(path, settings.with_overrides(n_ctx=n_ctx * n_seq, n_batch=n_batch,
                                                    n_threads=settings.n_threads or os.cpu_count() or 1),
                      n_seq=n_seq, abortable=True, info=info)


def _window_logp(lm: LoadedModel, windows: Windows, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (float64) at the scored positions of window i, and the actual next tokens (for
    scripts that want whole rows; evaluate scores the rows as they come, see _score_windows)."""
    import numpy as np

    w = windows.window(i)
    first, n = windows.first, windows.n_ctx
    logp = log_softmax(lm.decode_logits(w, range(first, n - 1)))
    return logp, np.asarray(w[first + 1:n], dtype=np.int64)


def _score_windows(lm: LoadedModel, windows: Windows, score: Callable[[slice, np.ndarray, np.ndarray], None],
                   stage: str, progress: Progress | None) -> None:
    """Decode every window (lm.n_seq at a time) and call score(rows, logits, next_ids) on the scored
    positions' logits as llama.cpp returns them: `rows` places them among all windows' scored positions
    (window order), the logits are a view of llama.cpp's buffer (no copy), next_ids the actual next tokens."""
    import numpy as np

    first, n, per = windows.first, windows.n_ctx, windows.scored_per_window
    for group in range(0, windows.n_chunks, lm.n_seq):
        index = range(group, min(group + lm.n_seq, windows.n_chunks))
        ws = [windows.window(i) for i in index]
        nxt = [np.asarray(w[first + 1:n], dtype=np.int64) for w in ws]

        def consume(seq: int, row: int, logits: np.ndarray, index: range = index,
                    nxt: list[np.ndarray] = nxt) -> None:
            at = index[seq] * per + row
            score(slice(at, at + len(logits)), logits, nxt[seq][row:row + len(logits)])

        lm.decode_sequences(ws, range(first, n - 1), consume)
        if progress:
            progress(stage, index[-1] + 1, windows.n_chunks)


# --- reference cache ---------------------------------------------------------------------------------


@dataclass
class ReferenceLogits:
    """What the candidate needs from the reference, per scored position (rows in window order)."""

    tokens: np.ndarray  # int32, the text's tokens as the reference tokenized it (no BOS)
    codes: np.ndarray  # uint16 [n, n_vocab], log-probabilities on the row's grid (quantize_logp)
    lo: np.ndarray  # float32 [n], the grid's lower end
    argmax: np.ndarray  # int32 [n], computed before quantization
    nll: np.ndarray  # float64 [n], NLL of the actual next token, before quantization
    bos: int  # -1 when the model uses no BOS

    def save(self, path: Path) -> None:
        import numpy as np

        from .fileio import atomic_output

        path.parent.mkdir(parents=True, exist_ok=True)
        # The arrays as .npy records one after another (_FIELDS order): read back with plain reads, where an
        # .npz (a zip) checks a CRC over the 200 MB of codes of 8 windows on every load.
        with atomic_output(path, force=True) as tmp, open(tmp, "wb") as f:
            for name in _FIELDS:
                np.save(f, np.int64(self.bos) if name == "bos" else getattr(self, name), allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> ReferenceLogits | None:
        import numpy as np

        try:
            with open(path, "rb") as f:
                arrays = {name: np.load(f, allow_pickle=False) for name in _FIELDS}
                if f.read(1):
                    return None
        except (OSError, ValueError, EOFError):
            return None  # missing or damaged: recompute
        return cls(**{**arrays, "bos": int(arrays["bos"])})


_FIELDS = ("tokens", "codes", "lo", "argmax", "nll", "bos")  # ReferenceLogits' records in its cache file


def reference_cache_dir() -> Path:
    from .demo_model import cache_dir

    return cache_dir() / "reference-logits"


def _model_sha256(path: Path) -> str:
    from .hashing import model_sha256

    return model_sha256(path)


def reference_cache_path(reference: Path, text: str, n_ctx: int, chunks: int | None,
                         settings: RuntimeSettings, n_seq: int = 1) -> Path:
    """Cache file for one reference, text and set of settings that change its logits (chunks None: all the
    windows the text gives, which the text hash and n_ctx determine)."""
    key = {
        "format": CACHE_FORMAT, "model_sha256": _model_sha256(reference),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "n_ctx": n_ctx, "chunks": chunks,
        "first": n_ctx // 2, "n_batch": min(settings.n_batch, n_ctx),
        "n_ubatch": min(settings.n_ubatch, settings.n_batch, n_ctx), "n_gpu_layers": settings.n_gpu_layers,
        "cache_type_k": settings.cache_type_k, "cache_type_v": settings.cache_type_v,
        "flash_attn": settings.flash_attn_effective, "n_seq": n_seq,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return reference_cache_dir() / f"{digest}.npy"


# Counts runs of a reference model (not cache hits): tests use it to check the cache is used.
reference_runs = 0


def compute_reference(reference: Path, text: str, n_ctx: int, chunks: int | None, settings: RuntimeSettings,
                      progress: Progress | None = None, n_seq: int = 1,
                      before: Callable[[Windows], None] | None = None, info: ModelInfo | None = None
                      ) -> ReferenceLogits:
    """Run the reference over the text's windows and keep what the KLD, top-1 and PPL need. `before` is
    called with the windows once the text is tokenized, before any decoding (a check that may refuse)."""
    import numpy as np

    from .llama_backend import bos_token, tokenize

    global reference_runs
    with _load(reference, settings, n_ctx, n_seq, info) as lm, Scorer(lm.settings.n_threads or 1) as scorer:
        tokens = tokenize(lm.model, text)
        windows = make_windows(tokens, n_ctx, chunks, bos_token(lm.model))
        if before is not None:
            before(windows)
        reference_runs += 1
        n = windows.n_chunks * windows.scored_per_window
        ref = ReferenceLogits(tokens=np.asarray(tokens, dtype=np.int32),
                              codes=np.empty((n, lm.n_vocab), np.uint16), lo=np.empty(n, np.float32),
                              argmax=np.empty(n, np.int32), nll=np.empty(n, np.float64),
                              bos=-1 if windows.bos is None else windows.bos)

        def score(rows: slice, logits: np.ndarray, next_ids: np.ndarray) -> None:
            ref.codes[rows], ref.lo[rows], ref.argmax[rows], ref.nll[rows] = reference_rows(logits, next_ids, scorer)

        _score_windows(lm, windows, score, "reference", progress)
    return ref


def reference_logits(reference: Path, text: str, n_ctx: int, chunks: int | None, settings: RuntimeSettings,
                     progress: Progress | None = None, n_seq: int = 1,
                     before: Callable[[Windows], None] | None = None, info: ModelInfo | None = None
                     ) -> tuple[ReferenceLogits, bool]:
    """The reference's log-probs from the disk cache, computing and storing them on a miss (n_seq windows
    decoded at a time; `before` as in compute_reference, on a miss only). Returns (logits, came_from_cache)."""
    path = reference_cache_path(reference, text, n_ctx, chunks, settings, n_seq)
    cached = ReferenceLogits.load(path) if path.is_file() else None
    if cached is not None:
        return cached, True
    ref = compute_reference(reference, text, n_ctx, chunks, settings, progress, n_seq, before, info)
    ref.save(path)
    return ref, False


def _reference_settings(settings: RuntimeSettings) -> RuntimeSettings:
    """The reference runs with llama.cpp's default (f16) KV cache, so a KV-cache variant of the same
    weights is measured against the unquantized cache (flash attention: see evaluate)."""
    return RuntimeSettings(n_gpu_layers=settings.n_gpu_layers, n_batch=settings.n_batch,
                           n_ubatch=settings.n_ubatch, n_threads=settings.n_threads)


# (path, size, mtime, text sha256) -> (tokens, bos): repeated evaluations (compare, sensitivity) skip the
# vocabulary load and tokenization.
_token_memo: dict[tuple[str, int, int, str], tuple[list[int], int | None]] = {}


def _vocab_tokens(path: Path, text: str) -> tuple[list[int], int | None]:
    """The text's tokens and the BOS id (None when the model adds none), loading only the vocabulary."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, hashlib.sha256(text.encode("utf-8")).hexdigest())
    if key not in _token_memo:
        _token_memo[key] = _load_vocab_tokens(path, text)
    return _token_memo[key]


def _load_vocab_tokens(path: Path, text: str) -> tuple[list[int], int | None]:
    from .llama_backend import bos_token, load_vocab, tokenize

    with load_vocab(path) as model:
        return tokenize(model, text), bos_token(model)


def check_text(model: Path, text: str, n_ctx: int, chunks: int | None) -> Windows:
    """Refuse, before any long work, a text that gives no windows (or fewer than asked) under `model`'s
    tokenizer (its vocabulary only is loaded). Returns the windows."""
    tokens, bos = _vocab_tokens(Path(model), text)
    return make_windows(tokens, n_ctx, chunks, bos)


def check_pair(candidate: Path, reference: Path, text: str, n_ctx: int, chunks: int | None) -> Windows:
    """Refuse, before any inference, a pair that cannot be compared on this text: missing or bad files,
    different vocabularies or tokenizers, a text too short for the windows asked. Returns the windows."""
    _check_vocabularies(candidate, reference)
    tokens, bos = _vocab_tokens(reference, text)
    windows = make_windows(tokens, n_ctx, chunks, bos)
    _check_tokens(candidate, reference, windows, *_vocab_tokens(candidate, text))
    return windows


def _check_vocabularies(candidate: Path, reference: Path) -> tuple[ModelInfo, ModelInfo]:
    """Refuse missing or bad files and different vocabulary sizes; returns both headers."""
    from .gguf_info import read_gguf

    cand, ref = read_gguf(candidate), read_gguf(reference)  # one-line errors for missing / bad files
    if cand.hparams.n_vocab != ref.hparams.n_vocab:
        raise GgprecError(f"different vocabularies: {candidate} has {cand.hparams.n_vocab} tokens, "
                          f"{reference} has {ref.hparams.n_vocab}")
    return cand, ref


def _check_tokens(candidate: Path, reference: Path, windows: Windows, tokens: list[int], bos: int | None) -> None:
    """Refuse a candidate whose tokenizer gives other tokens (or another BOS) than the reference's."""
    if tokens != windows.tokens or bos != windows.bos:
        raise GgprecError(f"different tokenizers: {candidate} and {reference} tokenize the text differently")


def _model_tokens(lm: LoadedModel, text: str) -> tuple[list[int], int | None]:
    """The text's tokens and BOS under a loaded model's tokenizer."""
    from .llama_backend import bos_token, tokenize

    return tokenize(lm.model, text), bos_token(lm.model)


# --- evaluate ----------------------------------------------------------------------------------------


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
        from . import rpc

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

    from .llama_backend import check_settings

    candidate, reference = Path(candidate), Path(reference)
    text = default_text() if text is None else text
    settings = (settings or RuntimeSettings()).with_overrides(n_ctx=n_ctx)
    check_settings(settings)  # e.g. 0 threads: refused before any file is read
    ref_settings = _reference_settings(settings)
    if settings.flash_attn is None:
        # Flash attention left to ggprec: on for both (llama-perplexity's default, auto, is on for a CPU; 20-30%
        # faster windows here). Set by the caller: the reference keeps the f16 cache's default, off, as the
        # KV-loss measurement of ggprec.priors expects (it subtracts flash attention's own share).
        settings = settings.with_overrides(flash_attn=True)
        ref_settings = ref_settings.with_overrides(flash_attn=True)
    cand_info, ref_info = _check_vocabularies(candidate, reference)
    # chunks None (all the text's windows): not capped by their number, so the cache key needs no tokenizing
    n_seq = sequences_per_decode(n_ctx, chunks or EVAL_BATCH, ref_info.hparams.n_vocab)

    def check_candidate(windows: Windows) -> None:  # a cold run: before the reference runs
        _check_tokens(candidate, reference, windows, *_vocab_tokens(candidate, text))

    ref, cached = reference_logits(reference, text, n_ctx, chunks, ref_settings, progress, n_seq,
                                   check_candidate, ref_info)
    windows = make_windows(ref.tokens.tolist(), n_ctx, chunks, None if ref.bos < 0 else ref.bos)
    n = windows.n_chunks * windows.scored_per_window
    kld, agree, nll = np.empty(n, np.float64), np.empty(n, bool), np.empty(n, np.float64)

    with _load(candidate, settings, n_ctx, n_seq, cand_info) as lm, Scorer(lm.settings.n_threads or 1) as scorer:
        def score(rows: slice, logits: np.ndarray, next_ids: np.ndarray) -> None:
            kld[rows], argmax, nll[rows] = candidate_rows(logits, next_ids, ref.codes[rows], ref.lo[rows], scorer)
            agree[rows] = argmax == ref.argmax[rows]

        if cached:  # the candidate's own tokenizer, now loaded, must give the reference's tokens
            _check_tokens(candidate, reference, windows, *_model_tokens(lm, text))
        _score_windows(lm, windows, score, "candidate", progress)
    result = summarize(kld, agree, nll, ref.nll, windows.n_chunks)
    from dataclasses import replace

    return replace(result, candidate=str(candidate), reference=str(reference), n_ctx=n_ctx,
                   text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), reference_cached=cached)
