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
    import numpy as np

    from .llama_backend import LoadedModel

LOGP_LEVELS = 65535  # uint16 codes per position's log-probability range
CACHE_FORMAT = 1  # bump when the cache layout or the way log-probs are computed changes
EVAL_SCHEMA = 1  # version of the `eval --json` document
MIN_CTX = 16  # below this a window scores too few tokens for a standard error

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


def quantize_logp(logp: np.ndarray, lo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint16 codes of log-probabilities on a per-row linear grid from `lo` (default: the row minimum) to 0,
    and `lo` itself (float32). Values below `lo` clip to code 0."""
    import numpy as np

    x = np.asarray(logp, dtype=np.float64)
    if lo is None:
        lo = x.min(axis=-1).astype(np.float32)
    lo64 = np.minimum(np.asarray(lo, dtype=np.float64), -1e-30)[..., None]  # a one-token vocabulary: lo = 0
    codes = np.rint((x - lo64) / (-lo64 / LOGP_LEVELS))
    return np.clip(codes, 0, LOGP_LEVELS).astype(np.uint16), np.asarray(lo, dtype=np.float32)


def dequantize_logp(codes: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Normalized log-probabilities (float64) back from `quantize_logp`'s codes."""
    import numpy as np

    lo64 = np.minimum(np.asarray(lo, dtype=np.float64), -1e-30)[..., None]
    return log_softmax(lo64 + np.asarray(codes, dtype=np.float64) * (-lo64 / LOGP_LEVELS))


def kl_divergence_quantized(ref_codes: np.ndarray, ref_lo: np.ndarray, cand_logp: np.ndarray) -> np.ndarray:
    """KL(ref || cand) per row, with the candidate's log-probs put on the reference's uint16 grid first,
    both renormalized (so KLD >= 0 and a model against itself gives exactly 0)."""
    cand_codes, _ = quantize_logp(cand_logp, ref_lo)
    return kl_divergence(dequantize_logp(ref_codes, ref_lo), dequantize_logp(cand_codes, ref_lo))


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


def _load(path: Path, settings: RuntimeSettings, n_ctx: int) -> LoadedModel:
    """The model loaded for windows of n_ctx tokens, through the one loader (llama_backend.load_model).
    Threads default to every logical CPU: evaluation is all prompt-style batches, which scale with cores
    (llama-cpp-python's default for batches too)."""
    from .llama_backend import load_model

    return load_model(path, settings.with_overrides(n_ctx=n_ctx, n_batch=min(settings.n_batch, n_ctx),
                                                    n_threads=settings.n_threads or os.cpu_count() or 1))


def _window_logp(lm: LoadedModel, windows: Windows, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (float64) at the scored positions of window i, and the actual next tokens. Only
    the scored positions' logits are asked of llama.cpp (each window starts from an empty KV cache)."""
    import numpy as np

    w = windows.window(i)
    first, n = windows.first, windows.n_ctx
    logp = log_softmax(lm.decode_logits(w, range(first, n - 1)))
    return logp, np.asarray(w[first + 1:n], dtype=np.int64)


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
        with atomic_output(path, force=True) as tmp, open(tmp, "wb") as f:
            np.savez(f, tokens=self.tokens, codes=self.codes, lo=self.lo, argmax=self.argmax, nll=self.nll,
                     bos=np.int64(self.bos))

    @classmethod
    def load(cls, path: Path) -> ReferenceLogits | None:
        import numpy as np

        try:
            with np.load(path) as z:
                return cls(tokens=z["tokens"], codes=z["codes"], lo=z["lo"], argmax=z["argmax"], nll=z["nll"],
                           bos=int(z["bos"]))
        except (OSError, KeyError, ValueError):
            return None  # missing or damaged: recompute


def reference_cache_dir() -> Path:
    from .demo_model import cache_dir

    return cache_dir() / "reference-logits"


def _model_sha256(path: Path) -> str:
    from .hashing import model_sha256

    return model_sha256(path)


def reference_cache_path(reference: Path, text: str, n_ctx: int, chunks: int | None,
                         settings: RuntimeSettings) -> Path:
    """Cache file for one reference, text and set of settings that change its logits (chunks None: all the
    windows the text gives, which the text hash and n_ctx determine)."""
    key = {
        "format": CACHE_FORMAT, "model_sha256": _model_sha256(reference),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "n_ctx": n_ctx, "chunks": chunks,
        "first": n_ctx // 2, "n_batch": min(settings.n_batch, n_ctx),
        "n_ubatch": min(settings.n_ubatch, settings.n_batch, n_ctx), "n_gpu_layers": settings.n_gpu_layers,
        "cache_type_k": settings.cache_type_k, "cache_type_v": settings.cache_type_v,
        "flash_attn": settings.flash_attn_effective,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return reference_cache_dir() / f"{digest}.npz"


# Counts runs of a reference model (not cache hits): tests use it to check the cache is used.
reference_runs = 0


def compute_reference(reference: Path, text: str, n_ctx: int, chunks: int | None, settings: RuntimeSettings,
                      progress: Progress | None = None) -> ReferenceLogits:
    """Run the reference over the text's windows and keep what the KLD, top-1 and PPL need."""
    import numpy as np

    from .llama_backend import bos_token, tokenize

    global reference_runs
    with _load(reference, settings, n_ctx) as lm:
        tokens = tokenize(lm.model, text)
        windows = make_windows(tokens, n_ctx, chunks, bos_token(lm.model))
        reference_runs += 1
        codes, los, argmax, nll = [], [], [], []
        for i in range(windows.n_chunks):
            logp, nxt = _window_logp(lm, windows, i)
            c, lo = quantize_logp(logp)
            codes.append(c)
            los.append(lo)
            argmax.append(np.argmax(logp, axis=-1).astype(np.int32))
            nll.append(token_nll(logp, nxt))
            if progress:
                progress("reference", i + 1, windows.n_chunks)
    return ReferenceLogits(tokens=np.asarray(tokens, dtype=np.int32), codes=np.concatenate(codes),
                           lo=np.concatenate(los), argmax=np.concatenate(argmax), nll=np.concatenate(nll),
                           bos=-1 if windows.bos is None else windows.bos)


def reference_logits(reference: Path, text: str, n_ctx: int, chunks: int | None, settings: RuntimeSettings,
                     progress: Progress | None = None) -> tuple[ReferenceLogits, bool]:
    """The reference's log-probs from the disk cache, computing and storing them on a miss.
    Returns (logits, came_from_cache)."""
    path = reference_cache_path(reference, text, n_ctx, chunks, settings)
    cached = ReferenceLogits.load(path) if path.is_file() else None
    if cached is not None:
        return cached, True
    ref = compute_reference(reference, text, n_ctx, chunks, settings, progress)
    ref.save(path)
    return ref, False


def _reference_settings(settings: RuntimeSettings) -> RuntimeSettings:
    """The reference runs with llama.cpp's default (f16) KV cache, so a KV-cache variant of the same
    weights is measured against the unquantized cache."""
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
    from .gguf_info import read_gguf

    cand, ref = read_gguf(candidate), read_gguf(reference)  # one-line errors for missing / bad files
    if cand.hparams.n_vocab != ref.hparams.n_vocab:
        raise GgprecError(f"different vocabularies: {candidate} has {cand.hparams.n_vocab} tokens, "
                          f"{reference} has {ref.hparams.n_vocab}")
    ref_tokens, bos = _vocab_tokens(reference, text)
    windows = make_windows(ref_tokens, n_ctx, chunks, bos)
    cand_tokens, cand_bos = _vocab_tokens(candidate, text) if candidate != reference else (ref_tokens, bos)
    if cand_tokens != ref_tokens or cand_bos != bos:
        raise GgprecError(f"different tokenizers: {candidate} and {reference} tokenize the text differently")
    return windows


# --- evaluate ----------------------------------------------------------------------------------------


def evaluate(candidate: str | Path, reference: str | Path, text: str | None = None, n_ctx: int = 512,
             chunks: int | None = None, settings: RuntimeSettings | None = None,
             progress: Progress | None = None) -> EvalResult:
    """KLD, top-1 agreement and perplexity of `candidate` against `reference` over `text` (default: the
    shipped text), in windows of n_ctx tokens; `chunks` windows (default: as many as the text gives).

    `settings` apply to the candidate (KV-cache types, threads, GPU layers); the reference runs with the
    same threads/batch/GPU layers but the default f16 KV cache. Candidate and reference may be the same
    file. The reference's log-probs are cached on disk, so only the first call per reference runs it.
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
    windows = check_pair(candidate, reference, text, n_ctx, chunks)
    ref, cached = reference_logits(reference, text, n_ctx, chunks, _reference_settings(settings), progress)
    if not np.array_equal(np.asarray(windows.tokens, dtype=np.int32), ref.tokens):
        raise GgprecError(f"{reference}: the cached reference tokens differ from its tokenizer's; "
                          f"delete {reference_cache_dir()}")

    with _load(candidate, settings, n_ctx) as lm:
        per = windows.scored_per_window
        klds, agree, nll = [], [], []
        for i in range(windows.n_chunks):
            logp, nxt = _window_logp(lm, windows, i)
            rows = slice(i * per, (i + 1) * per)
            klds.append(kl_divergence_quantized(ref.codes[rows], ref.lo[rows], logp))
            agree.append(np.argmax(logp, axis=-1) == ref.argmax[rows])
            nll.append(token_nll(logp, nxt))
            if progress:
                progress("candidate", i + 1, windows.n_chunks)
    result = summarize(np.concatenate(klds), np.concatenate(agree), np.concatenate(nll), ref.nll, windows.n_chunks)
    from dataclasses import replace

    return replace(result, candidate=str(candidate), reference=str(reference), n_ctx=n_ctx,
                   text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), reference_cached=cached)
