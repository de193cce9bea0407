"""The reference's log-probs, cached on disk (uint16 codes on each position's grid, as llama-perplexity's
--kl-divergence-base file), so several candidates against one reference run it once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..progress import Progress
from ..settings import RuntimeSettings
from .decode import load_for_windows, score_windows
from .scoring import Scorer, reference_rows
from .windows import Windows, make_windows

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from ..gguf_info import ModelInfo

CACHE_FORMAT = 2  # bump when the cache layout or the way log-probs are computed changes


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

        from ..fileio import atomic_output

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
    from ..demo_model import cache_dir

    return cache_dir() / "reference-logits"


def _model_sha256(path: Path) -> str:
    from ..hashing import model_sha256

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

    from ..llama_backend import bos_token, tokenize

    global reference_runs
    with load_for_windows(reference, settings, n_ctx, n_seq, info) as lm, Scorer(lm.settings.n_threads or 1) as scorer:
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

        score_windows(lm, windows, score, "reference", progress)
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


def reference_settings(settings: RuntimeSettings) -> RuntimeSettings:
    """The reference runs with llama.cpp's default (f16) KV cache, so a KV-cache variant of the same
    weights is measured against the unquantized cache (flash attention: see evaluate)."""
    return RuntimeSettings(n_gpu_layers=settings.n_gpu_layers, n_batch=settings.n_batch,
                           n_ubatch=settings.n_ubatch, n_threads=settings.n_threads)
