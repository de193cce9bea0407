"""The evaluation text, its windows of n_ctx tokens, and the checks that refuse a text or a pair of models
before any long work (only vocabularies are loaded)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GgprecError

if TYPE_CHECKING:
    from ..gguf_info import ModelInfo
    from ..llama_backend import LoadedModel

MIN_CTX = 16  # below this a window scores too few tokens for a standard error


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


# (path, size, mtime, text sha256) -> (tokens, bos): repeated evaluations (compare, sensitivity) skip the
# vocabulary load and tokenization.
_token_memo: dict[tuple[str, int, int, str], tuple[list[int], int | None]] = {}


def vocab_tokens(path: Path, text: str) -> tuple[list[int], int | None]:
    """The text's tokens and the BOS id (None when the model adds none), loading only the vocabulary."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, hashlib.sha256(text.encode("utf-8")).hexdigest())
    if key not in _token_memo:
        _token_memo[key] = load_vocab_tokens(path, text)
    return _token_memo[key]


def load_vocab_tokens(path: Path, text: str) -> tuple[list[int], int | None]:
    from ..llama_backend import bos_token, load_vocab, tokenize

    with load_vocab(path) as model:
        return tokenize(model, text), bos_token(model)


def check_text(model: Path, text: str, n_ctx: int, chunks: int | None) -> Windows:
    """Refuse, before any long work, a text that gives no windows (or fewer than asked) under `model`'s
    tokenizer (its vocabulary only is loaded). Returns the windows."""
    tokens, bos = vocab_tokens(Path(model), text)
    return make_windows(tokens, n_ctx, chunks, bos)


def check_pair(candidate: Path, reference: Path, text: str, n_ctx: int, chunks: int | None) -> Windows:
    """Refuse, before any inference, a pair that cannot be compared on this text: missing or bad files,
    different vocabularies or tokenizers, a text too short for the windows asked. Returns the windows."""
    check_vocabularies(candidate, reference)
    tokens, bos = vocab_tokens(reference, text)
    windows = make_windows(tokens, n_ctx, chunks, bos)
    check_tokens(candidate, reference, windows, *vocab_tokens(candidate, text))
    return windows


def check_vocabularies(candidate: Path, reference: Path) -> tuple[ModelInfo, ModelInfo]:
    """Refuse missing or bad files and different vocabulary sizes; returns both headers."""
    from ..gguf_info import read_gguf

    cand, ref = read_gguf(candidate), read_gguf(reference)  # one-line errors for missing / bad files
    if cand.hparams.n_vocab != ref.hparams.n_vocab:
        raise GgprecError(f"different vocabularies: {candidate} has {cand.hparams.n_vocab} tokens, "
                          f"{reference} has {ref.hparams.n_vocab}")
    return cand, ref


def check_tokens(candidate: Path, reference: Path, windows: Windows, tokens: list[int], bos: int | None) -> None:
    """Refuse a candidate whose tokenizer gives other tokens (or another BOS) than the reference's."""
    if tokens != windows.tokens or bos != windows.bos:
        raise GgprecError(f"different tokenizers: {candidate} and {reference} tokenize the text differently")


def model_tokens(lm: LoadedModel, text: str) -> tuple[list[int], int | None]:
    """The text's tokens and BOS under a loaded model's tokenizer."""
    from ..llama_backend import bos_token, tokenize

    return tokenize(lm.model, text), bos_token(lm.model)
