"""A loaded model's vocabulary: its size, BOS, and tokenizing with it."""

from __future__ import annotations

from typing import Any

from ..errors import GgprecError
from .log import llama


def vocab_size(model: Any) -> int:
    """Tokens in the vocabulary of a loaded llama_model (LoadedModel.model or load_vocab's)."""
    llama_cpp = llama()
    return int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))


def bos_token(model: Any) -> int | None:
    """The BOS token id when the model's tokenizer adds one to a text, else None."""
    llama_cpp = llama()
    vocab = llama_cpp.llama_model_get_vocab(model)
    return int(llama_cpp.llama_vocab_bos(vocab)) if llama_cpp.llama_vocab_get_add_bos(vocab) else None


def tokenize(model: Any, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
    """The token ids of `text` under the model's tokenizer (llama_tokenize)."""
    llama_cpp = llama()
    vocab = llama_cpp.llama_model_get_vocab(model)
    raw = text.encode("utf-8")
    n_max = len(raw) + 16  # one token per byte at most, plus BOS/EOS a tokenizer may add
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, add_bos, special)
    if n < 0:  # more tokens than bytes (some SentencePiece vocabularies): -n is the count needed
        n_max = -n
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, add_bos, special)
        if n < 0:
            raise GgprecError(f"llama.cpp could not tokenize the text ({len(raw)} bytes)")
    return list(buf[:n])
