"""Windows through llama.cpp: several per llama_decode call, as llama-perplexity."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..progress import Progress
from ..settings import RuntimeSettings
from .scoring import log_softmax
from .windows import Windows

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np

    from ..gguf_info import ModelInfo
    from ..llama_backend import LoadedModel

EVAL_BATCH = 2048  # tokens per llama_decode call, llama-perplexity's default n_batch: 4 windows of 512 at once
LOGITS_BUDGET = 512 * 2**20  # bytes of logits one call may return (4 x 255 rows x 49152 x 4 = 196 MiB)


def sequences_per_decode(n_ctx: int, n_chunks: int, n_vocab: int) -> int:
    """Windows decoded side by side in one llama_decode call: as llama-perplexity, EVAL_BATCH // n_ctx
    (4 windows of 512), no more than there are windows, and no more than LOGITS_BUDGET of logits."""
    rows = n_ctx - 1 - n_ctx // 2
    return max(1, min(EVAL_BATCH // n_ctx, n_chunks, LOGITS_BUDGET // max(rows * n_vocab * 4, 1)))


def load_for_windows(path: Path, settings: RuntimeSettings, n_ctx: int, n_seq: int = 1, info: ModelInfo | None = None
          ) -> LoadedModel:
    """The model loaded for n_seq windows of n_ctx tokens at a time, through the one loader
    (llama_backend.load_model). Threads default to every logical CPU: evaluation is all prompt-style
    batches, which scale with cores (llama-cpp-python's default for batches too). A signal stops a decode
    in flight (abortable), so a batch of several windows does not delay Ctrl-C."""
    from ..llama_backend import load_model

    n_batch = min(settings.n_batch, n_ctx) * n_seq
    return load_model(path, settings.with_overrides(n_ctx=n_ctx * n_seq, n_batch=n_batch,
                                                    n_threads=settings.n_threads or os.cpu_count() or 1),
                      n_seq=n_seq, abortable=True, info=info)


def window_logp(lm: LoadedModel, windows: Windows, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (float64) at the scored positions of window i, and the actual next tokens (for
    scripts that want whole rows; evaluate scores the rows as they come, see score_windows)."""
    import numpy as np

    w = windows.window(i)
    first, n = windows.first, windows.n_ctx
    logp = log_softmax(lm.decode_logits(w, range(first, n - 1)))
    return logp, np.asarray(w[first + 1:n], dtype=np.int64)


def score_windows(lm: LoadedModel, windows: Windows, score: Callable[[slice, np.ndarray, np.ndarray], None],
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
