"""The GGUF byte layout in one place: magic, versions, the metadata value types, the sizes and encodings
of key/value pairs and tensor infos, alignment, and a bounds-checked cursor that walks a header.

The format (ggml's docs/gguf.md, all little-endian):

    magic "GGUF" | version u32 | tensor count u64 | key/value count u64      (PREAMBLE_SIZE bytes)
    key/value pairs: key (string) | value type u32 | value
    tensor infos:    name (string) | n_dims u32 | n_dims x u64 | ggml type u32 | offset u64
    padding to `general.alignment` (default 32), then the tensor data, each tensor at an aligned offset

A string is a u64 byte length and the bytes; an array is an element type u32, a count u64 and the
elements. The reader (`gguf_info`), the plan's file-size prediction and the split-head writer
(`quantize`) all use this module, so the layout is written down once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .errors import CorruptGGUFError, safe_text

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
PREAMBLE_SIZE = 24  # magic, version, tensor count, key/value count
MAX_DIMS = 4  # GGML_MAX_DIMS

# Limits of what the reader accepts. Each bounds what one number from the file can make it allocate
# or loop over; real models stay far below them (a 128k-token vocabulary's longest token is ~100 bytes).
MAX_STRING = 1 << 20  # bytes of one metadata key or string value
MAX_NAME = 1 << 16  # bytes of one tensor name (ggml itself allows 64)
MAX_ARRAY_DEPTH = 3  # arrays inside arrays: gguf-py writes at most 2 levels
KEEP_ARRAY_MAX = 4096  # longer arrays are summarised (type, count), not kept; per-layer arrays are shorter
# Strings (and arrays) in one array: each is stepped over in a Python loop, so their count bounds the
# reader's time. The largest vocabularies and merge lists hold ~280k entries.
MAX_STRING_ARRAY = 1 << 20


class ValueType(IntEnum):
    """GGUF metadata value types (gguf-py's GGUFValueType)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12

    @property
    def label(self) -> str:
        return self.name.lower()


# Fixed-size value types: id -> struct format (one element, little-endian).
SCALAR_FORMATS: dict[int, struct.Struct] = {
    t: struct.Struct("<" + code)
    for t, code in ((ValueType.UINT8, "B"), (ValueType.INT8, "b"), (ValueType.UINT16, "H"),
                    (ValueType.INT16, "h"), (ValueType.UINT32, "I"), (ValueType.INT32, "i"),
                    (ValueType.FLOAT32, "f"), (ValueType.BOOL, "?"), (ValueType.UINT64, "Q"),
                    (ValueType.INT64, "q"), (ValueType.FLOAT64, "d"))
}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def type_label(vtype: int) -> str:
    """'uint32', 'string', ... for a value type id; 'type N' for an unknown one."""
    try:
        return ValueType(vtype).label
    except ValueError:
        return f"type {vtype}"


def align(n: int, alignment: int) -> int:
    """`n` rounded up to a multiple of `alignment`."""
    return -(-n // alignment) * alignment


def padding(n: int, alignment: int) -> int:
    """Zero bytes that follow `n` bytes to reach the next multiple of `alignment`."""
    return -n % alignment


def string_size(text: str | bytes) -> int:
    return 8 + len(text.encode() if isinstance(text, str) else text)


def encode_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _U64.pack(len(raw)) + raw


def scalar_kv_size(key: str, vtype: int) -> int:
    """Bytes of a key/value pair holding one fixed-size value."""
    return string_size(key) + 4 + SCALAR_FORMATS[vtype].size


def encode_scalar_kv(key: str, vtype: int, value: int | float | bool) -> bytes:
    return encode_string(key) + _U32.pack(vtype) + SCALAR_FORMATS[vtype].pack(value)


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """Dimensions ggml counts (trailing 1s dropped, at least 1): what llama.cpp writes for a tensor."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return max(n, 1)


def tensor_info_size(name: str, n_dims: int) -> int:
    """Bytes of one tensor info: name, dimension count, dimensions, type, offset."""
    return string_size(name) + 4 + 8 * n_dims + 4 + 8


def encode_tensor_info(name: str, dims: tuple[int, ...], type_id: int, offset: int) -> bytes:
    """One tensor info; `offset` is relative to the start of the data region."""
    return (encode_string(name) + _U32.pack(len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", type_id, offset))


def encode_preamble(version: int, n_tensors: int, n_kv: int) -> bytes:
    return MAGIC + struct.pack("<IQQ", version, n_tensors, n_kv)


def header_size(kv_bytes: int, tensor_info_bytes: int, alignment: int) -> int:
    """Offset of the data region: preamble, key/value pairs and tensor infos, padded to the alignment."""
    return align(PREAMBLE_SIZE + kv_bytes + tensor_info_bytes, alignment)


def find_scalar_kv(buf: Any, start: int, end: int, key: str) -> tuple[int, int] | None:
    """(offset, size) of the pair `key` holding a fixed-size value, found by its encoded key within
    [start, end) without walking the pairs before it; None if absent. Raises LookupError when the bytes
    are ambiguous (found twice, e.g. a vocabulary entry spelled like the key) or not a scalar."""
    needle = encode_string(key)
    at = buf.find(needle, start, end)
    if at < 0:
        return None
    if buf.find(needle, at + 1, end) >= 0:
        raise LookupError(key)
    (vtype,) = _U32.unpack_from(buf, at + len(needle))
    if vtype not in SCALAR_FORMATS:
        raise LookupError(key)
    return at, len(needle) + 4 + SCALAR_FORMATS[vtype].size


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array too long to keep (e.g. tokenizer.ggml.tokens): its element type and length."""

    element_type: str
    count: int

    def __len__(self) -> int:
        return self.count


class Cursor:
    """Bounds-checked little-endian reads over a mapped header. Every length and count is checked
    against the bytes left before anything is allocated or looped over; every failure is a
    CorruptGGUFError naming the offset and (escaped) the field."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def fail(self, reason: str) -> CorruptGGUFError:
        return CorruptGGUFError(self.pos, reason)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{safe_text(what)} runs past the end of the file")

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        value = fmt.unpack_from(self.buf, self.pos)[0]
        self.pos += fmt.size
        return value

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)

    def u64(self, what: str) -> int:
        return self.unpack(_U64, what)

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        n = self.u64(f"{what} length")
        self.need(n, what)
        if n > limit:
            raise self.fail(f"{safe_text(what)} is {n:,} bytes long (at most {limit:,} accepted)")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        # Hot loop for vocabularies and merges (400k strings on Llama 3): no decoding, one length read
        # per element with a precompiled Struct, no per-element bounds check. A length that jumps past
        # the end makes the next read fail or the final check below; `count` itself was bounded by the
        # bytes left before this loop, so the loop cannot run away.
        buf, pos, unpack = self.buf, self.pos, _U64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError, ValueError):  # a garbage length beyond any offset
            pos = self.size + 1
        if pos > self.size:
            raise self.fail(f"{safe_text(what)} runs past the end of the file")
        self.pos = pos

    def loop_limit(self, count: int, what: str) -> None:
        if count > MAX_STRING_ARRAY:
            raise self.fail(f"{safe_text(what)} has {count:,} elements (at most {MAX_STRING_ARRAY:,} accepted)")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        fmt = SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            return self.unpack(fmt, what)
        if vtype == ValueType.STRING:
            return self.string(what)
        if vtype == ValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"{safe_text(what)} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")
            etype = self.u32(f"{what} element type")
            count = self.u64(f"{what} element count")
            return self.array(etype, count, what, depth + 1)
        raise self.fail(f"{safe_text(what)} has unknown value type {vtype}")

    def array(self, etype: int, count: int, what: str, depth: int = 1) -> Any:
        fmt = SCALAR_FORMATS.get(etype)
        if fmt is not None:
            n = count * fmt.size
            self.need(n, what)
            if count > KEEP_ARRAY_MAX:
                self.pos += n
                return ArraySummary(type_label(etype), count)
            values = list(struct.unpack_from(f"<{count}{fmt.format[1]}", self.buf, self.pos))
            self.pos += n
            return values
        if etype == ValueType.STRING:
            # Each string needs at least its 8-byte length: reject absurd counts before looping.
            self.need(count * 8, what)
            self.loop_limit(count, what)
            if count > KEEP_ARRAY_MAX:
                self.skip_strings(count, what)
                return ArraySummary("string", count)
            return [self.string(what) for _ in range(count)]
        if etype == ValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"{safe_text(what)} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")
            self.need(count * 12, what)  # each inner array: element type u32 + count u64
            self.loop_limit(count, what)
            if count > KEEP_ARRAY_MAX:
                for _ in range(count):
                    self.value(ValueType.ARRAY, what, depth)
                return ArraySummary("array", count)
            return [self.value(ValueType.ARRAY, what, depth) for _ in range(count)]
        raise self.fail(f"{safe_text(what)} has unknown element type {etype}")
