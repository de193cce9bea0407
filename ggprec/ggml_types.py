"""The one table of ggml tensor types.

Every fact about a type (its id in GGUF files, block size, bytes per block, whether llama.cpp can
write weights in it or hold a KV cache in it, the llama_ftype that makes it the base of a
quantization) lives in TYPES below; everything else in ggprec reads this table.
Sizes follow ggml's `type_traits` (ggml/src/ggml.c) for the vendored llama.cpp.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .errors import GgprecError


@dataclass(frozen=True)
class GgmlType:
    name: str  # llama.cpp's lower-case spelling, the one we print
    type_id: int  # enum ggml_type, as stored in GGUF tensor infos
    block_size: int  # elements per block
    block_bytes: int  # bytes per block
    weight: bool = False  # llama.cpp's quantizer can write a weight in this type
    kv_cache: bool = False  # accepted by llama.cpp as a KV-cache type (--cache-type-k/v)
    ftype: int | None = None  # enum llama_ftype whose "mostly" type this is, when there is one

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_size

    @property
    def quantized(self) -> bool:
        return self.name not in ("f32", "f16", "bf16", "f64", "i8", "i16", "i32", "i64")

    def row_bytes(self, n_elements: int) -> int:
        """Bytes of `n_elements` consecutive elements (a row); they must fill whole blocks."""
        if n_elements % self.block_size:
            raise ValueError(f"{n_elements} elements do not fill whole {self.name} blocks of {self.block_size}")
        return n_elements // self.block_size * self.block_bytes

    def tensor_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of this type; shape is ggml order (row length first)."""
        n_rows = 1
        for dim in shape[1:]:
            n_rows *= dim
        return self.row_bytes(shape[0] if shape else 1) * n_rows


_T = GgmlType
TYPES: tuple[GgmlType, ...] = (
    _T("f32", 0, 1, 4, weight=True, kv_cache=True, ftype=0),
    _T("f16", 1, 1, 2, weight=True, kv_cache=True, ftype=1),
    _T("q4_0", 2, 32, 18, weight=True, kv_cache=True, ftype=2),
    _T("q4_1", 3, 32, 20, weight=True, kv_cache=True, ftype=3),
    _T("q5_0", 6, 32, 22, weight=True, kv_cache=True, ftype=8),
    _T("q5_1", 7, 32, 24, weight=True, kv_cache=True, ftype=9),
    _T("q8_0", 8, 32, 34, weight=True, kv_cache=True, ftype=7),
    _T("q8_1", 9, 32, 36),
    _T("q2_k", 10, 256, 84, weight=True, ftype=10),
    _T("q3_k", 11, 256, 110, weight=True, ftype=12),
    _T("q4_k", 12, 256, 144, weight=True, ftype=15),
    _T("q5_k", 13, 256, 176, weight=True, ftype=17),
    _T("q6_k", 14, 256, 210, weight=True, ftype=18),
    _T("q8_k", 15, 256, 292),
    _T("iq2_xxs", 16, 256, 66, weight=True, ftype=19),
    _T("iq2_xs", 17, 256, 74, weight=True, ftype=20),
    _T("iq3_xxs", 18, 256, 98, weight=True, ftype=23),
    _T("iq1_s", 19, 256, 50, weight=True, ftype=24),
    _T("iq4_nl", 20, 32, 18, weight=True, kv_cache=True, ftype=25),
    _T("iq3_s", 21, 256, 110, weight=True, ftype=26),
    _T("iq2_s", 22, 256, 82, weight=True, ftype=28),
    _T("iq4_xs", 23, 256, 136, weight=True, ftype=30),
    _T("i8", 24, 1, 1),
    _T("i16", 25, 1, 2),
    _T("i32", 26, 1, 4),
    _T("i64", 27, 1, 8),
    _T("f64", 28, 1, 8),
    _T("iq1_m", 29, 256, 56, weight=True, ftype=31),
    _T("bf16", 30, 1, 2, weight=True, kv_cache=True, ftype=32),
    _T("tq1_0", 34, 256, 54),
    _T("tq2_0", 35, 256, 66),
    _T("mxfp4", 39, 32, 17),
    _T("nvfp4", 40, 64, 36),
    _T("q1_0", 41, 128, 18),
    _T("q2_0", 42, 64, 18),
)

# Spellings users bring from mixed-precision configs of other frameworks.
ALIASES: dict[str, str] = {
    "fp32": "f32",
    "float32": "f32",
    "fp16": "f16",
    "float16": "f16",
    "half": "f16",
    "bfloat16": "bf16",
    "int8": "q8_0",
    "int4": "q4_0",
}

BY_NAME: dict[str, GgmlType] = {t.name: t for t in TYPES}
BY_ID: dict[int, GgmlType] = {t.type_id: t for t in TYPES}
BY_FTYPE: dict[int, GgmlType] = {t.ftype: t for t in TYPES if t.ftype is not None}


class UnknownTypeError(GgprecError, ValueError):
    """A type name or id that is not in the table; the message suggests the nearest name. It is bad
    input, so the CLI shows it as one line and exits 2 without any caller converting it."""


def lookup(name: str) -> GgmlType:
    """Resolve a user's type name: llama.cpp spelling in any case, or an alias like fp16/int8."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in BY_NAME:
        return BY_NAME[key]
    near = _nearest(key)
    hint = f" (did you mean '{near}'?)" if near else ""
    raise UnknownTypeError(f"unknown ggml type '{name}'{hint}")


def _nearest(key: str) -> str | None:
    """The closest known name; on a near tie, one users can use (weight or KV-cache type, alias):
    'q8_O' is as close to q8_k as to q8_0, and means q8_0."""
    usable = {t.name for t in TYPES if t.weight or t.kv_cache} | set(ALIASES)
    best, best_score = None, 0.6  # difflib.get_close_matches' default cutoff
    for name in sorted([*BY_NAME, *ALIASES]):
        score = difflib.SequenceMatcher(None, key, name).ratio() + (0.05 if name in usable else 0.0)
        if score > best_score:
            best, best_score = name, score
    return best


def by_id(type_id: int) -> GgmlType:
    try:
        return BY_ID[type_id]
    except KeyError:
        raise UnknownTypeError(f"unknown ggml type id {type_id}") from None


def weight_type(name: str) -> GgmlType:
    t = lookup(name)
    if not t.weight:
        writable = ", ".join(x.name for x in TYPES if x.weight)
        raise UnknownTypeError(f"'{t.name}' is not a weight type ggprec can write (one of: {writable})")
    return t


def kv_cache_type(name: str) -> GgmlType:
    t = lookup(name)
    if not t.kv_cache:
        accepted = ", ".join(x.name for x in TYPES if x.kv_cache)
        raise UnknownTypeError(f"'{t.name}' is not a KV-cache type llama.cpp accepts (one of: {accepted})")
    return t


# llama_ftype of llama.cpp's Q2_K_S mix: the one file type under which q2_k tensors need an imatrix.
FTYPE_Q2_K_S = 21
# Types llama.cpp's quantizer refuses to write without an importance matrix (src/llama-quant.cpp,
# tensor_requires_imatrix): the result would be garbage.
_NEEDS_IMATRIX = frozenset({"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs"})
# Types ggml itself cannot quantize a tensor to without importance data for that very tensor
# (ggml_quantize_requires_imatrix: it aborts), whatever llama.cpp's rules above exempt.
NEEDS_DATA_PER_TENSOR = frozenset({"iq1_s", "iq2_xxs", "iq2_xs"})


def needs_imatrix(t: GgmlType | str, ftype: int | None = None, tensor: str | None = None) -> bool:
    """Whether llama.cpp refuses to quantize a tensor to `t` without an importance matrix: the IQ1/IQ2
    types and IQ3_XXS always, q2_k only inside a Q2_K_S file (`ftype`; ggprec never writes that mix,
    its q2_k tensors go out under the Q2_K file type). token_embd and output.weight never need one
    (`tensor`: the tensor's name, when known)."""
    if tensor in ("token_embd.weight", "output.weight"):
        return False
    gt = lookup(t) if isinstance(t, str) else t
    return gt.name in _NEEDS_IMATRIX or (gt.name == "q2_k" and ftype == FTYPE_Q2_K_S)
