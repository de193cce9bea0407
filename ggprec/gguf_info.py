"""Read a GGUF file's header into a ModelInfo: metadata, hyper-parameters, every tensor.

Why not `gguf.GGUFReader`: it builds a numpy view for every element of every metadata array, which
takes seconds on a 128k-token vocabulary. `inspect` needs only the sizes of those arrays, so this
reader walks the header once over an mmap, keeps scalars and small arrays, and records large arrays
by element type and count. Every length it reads is checked against the file size before use, so a
corrupt or hostile file gives a GgprecError, never a huge allocation or a traceback.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ggml_types
from .errors import GgprecError
from .ggml_types import GgmlType
from .roles import ROLE_ORDER, classify

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Arrays longer than this are summarised (type, count) rather than kept; per-layer arrays
# (head counts, feed-forward lengths) are far shorter.
KEEP_ARRAY_MAX = 4096
MAX_DIMS = 4

# GGUF metadata value types: id -> (struct format, size); strings (8) and arrays (9) are special.
SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_VALUE_TYPE_NAMES = {
    0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
    7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64",
}


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array too long to keep (e.g. tokenizer.ggml.tokens): its element type and length."""

    element_type: str
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    name: str
    role: str
    layer: int | None
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    type: GgmlType
    offset: int  # absolute offset of the tensor's data in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters llama.cpp reads, with per-layer values where the model has them."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_ff: tuple[int, ...]  # per layer
    n_vocab: int
    n_ctx_train: int
    sliding_window: int | None
    n_expert: int
    n_expert_used: int
    # Mixture-of-experts and MLA (DeepSeek) hyper-parameters; 0 where the model has none.
    n_expert_shared: int = 0
    n_ff_exp: int = 0  # feed-forward length of one routed expert
    n_ff_shexp: int = 0  # feed-forward length of the shared expert(s)
    n_layer_dense_lead: int = 0  # leading blocks with a dense FFN instead of experts
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    head_dim_k_mla: int = 0  # MLA key/value head sizes as cached (attention.key_length_mla / value_length_mla)
    head_dim_v_mla: int = 0

    @property
    def n_head_kv_max(self) -> int:
        return max(self.n_head_kv, default=0)

    @property
    def n_ff_max(self) -> int:
        return max(self.n_ff, default=0)


@dataclass
class ModelInfo:
    path: Path
    file_size: int
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    hparams: HParams = field(init=False)

    def __post_init__(self) -> None:
        self.hparams = _hparams(self.arch, self.metadata, self.tensors)
        self._by_name = {t.name: t for t in self.tensors}

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return str(value) if value is not None else None

    def tensor(self, name: str) -> TensorInfo | None:
        return self._by_name.get(name)

    @property
    def tied_output(self) -> bool:
        """No output.weight: llama.cpp uses token_embd as the output head too."""
        return "output.weight" not in self._by_name and "token_embd.weight" in self._by_name

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / max(self.n_params, 1)

    def totals_by(self, key: str) -> dict[Any, tuple[int, int, int]]:
        """(tensor count, elements, bytes) grouped by 'role', 'layer' or 'type', in report order."""
        groups: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0])
        for t in self.tensors:
            k = {"role": t.role, "layer": t.layer, "type": t.type.name}[key]
            g = groups[k]
            g[0] += 1
            g[1] += t.n_elements
            g[2] += t.n_bytes
        if key == "role":
            order = {r: i for i, r in enumerate(ROLE_ORDER)}
            keys = sorted(groups, key=lambda r: order.get(r, len(order)))
        elif key == "layer":
            keys = sorted(groups, key=lambda x: (x is None, x if x is not None else 0))
        else:
            keys = sorted(groups, key=lambda n: -groups[n][2])
        return {k: (groups[k][0], groups[k][1], groups[k][2]) for k in keys}


class Cursor:
    """Bounds-checked little-endian reads over the mapped header."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GgprecError(f"truncated header: {what} runs past the end of the file")

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        # Hot loop for vocabularies and merges (400k strings on Llama 3): no decoding, one length read
        # per element with a precompiled Struct, no per-element bounds check. A length that jumps past
        # the end makes the next read fail or the final check below; `count` itself was
        # bounded by the file size before this loop, so the loop cannot run away.
        buf, pos, unpack = self.buf, self.pos, _U64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):  # OverflowError: a garbage length beyond any offset
            pos = self.size + 1
        if pos > self.size:
            raise GgprecError(f"truncated header: {what} runs past the end of the file")
        self.pos = pos

    def value(self, vtype: int, what: str) -> Any:
        if vtype in SCALARS:
            fmt, n = SCALARS[vtype]
            return self.unpack(fmt, n, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.u32(f"{what} element type")
            count = self.u64(f"{what} element count")
            return self.array(etype, count, what)
        raise GgprecError(f"corrupt header: {what} has unknown value type {vtype}")

    def array(self, etype: int, count: int, what: str) -> Any:
        if etype in SCALARS:
            fmt, n = SCALARS[etype]
            self.need(count * n, what)
            if count > KEEP_ARRAY_MAX:
                self.pos += count * n
                return ArraySummary(_VALUE_TYPE_NAMES[etype], count)
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
            self.pos += count * n
            return values
        if etype == _STRING:
            # Each string needs at least its 8-byte length: reject absurd counts before looping.
            self.need(count * 8, what)
            if count > KEEP_ARRAY_MAX:
                self.skip_strings(count, what)
                return ArraySummary("string", count)
            return [self.string(what) for _ in range(count)]
        if etype == _ARRAY:
            self.need(count * 12, what)
            return [self.value(_ARRAY, what) for _ in range(count)]
        raise GgprecError(f"corrupt header: {what} has unknown element type {etype}")


def read_gguf(path: str | os.PathLike[str]) -> ModelInfo:
    """Parse the GGUF header of `path`; raise GgprecError with a one-line reason if it is not valid."""
    p = Path(path)
    if not p.exists():
        raise GgprecError(f"{p}: no such file")
    if p.is_dir():
        raise GgprecError(f"{p}: is a directory, not a GGUF file")
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise GgprecError(f"{p}: empty file, not a GGUF model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(p, buf, size)
    except PermissionError as e:
        raise GgprecError(f"{p}: cannot read ({e.strerror})") from None
    except GgprecError as e:
        raise GgprecError(f"{p}: {e}") from None


def _parse(path: Path, buf: mmap.mmap, size: int) -> ModelInfo:
    cur = Cursor(buf, size)
    cur.need(4, "magic")
    if buf[0:4] != GGUF_MAGIC:
        raise GgprecError("not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS and int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
        raise GgprecError("big-endian GGUF file: llama.cpp on this machine reads little-endian files only")
    if version not in SUPPORTED_VERSIONS:
        raise GgprecError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # Every tensor info and key-value pair takes more than 8 bytes, which bounds honest counts.
    if n_tensors * 8 > size or n_kv * 8 > size:
        raise GgprecError(f"corrupt header: absurd counts ({n_tensors} tensors, {n_kv} metadata keys)")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        vtype = cur.u32(f"type of {key}")
        metadata[key] = cur.value(vtype, key)

    raw_tensors = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name {i}")
        n_dims = cur.u32(f"dimensions of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GgprecError(f"corrupt header: tensor {name} has {n_dims} dimensions")
        shape = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
        type_id = cur.u32(f"type of {name}")
        offset = cur.u64(f"offset of {name}")
        try:
            gtype = ggml_types.by_id(type_id)
        except ggml_types.UnknownTypeError:
            raise GgprecError(f"tensor {name} has unknown ggml type id {type_id}") from None
        raw_tensors.append((name, shape, gtype, offset))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GgprecError(f"corrupt header: general.alignment {alignment!r} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment

    tensors = []
    for name, shape, gtype, offset in raw_tensors:
        try:
            n_bytes = gtype.tensor_bytes(shape)
        except ValueError:
            raise GgprecError(
                f"corrupt header: tensor {name} shape {list(shape)} does not fit {gtype.name} blocks"
            ) from None
        start = data_offset + offset
        if start + n_bytes > size:
            if start >= size:
                raise GgprecError(f"tensor {name} starts past the end of the file (offset {start}, size {size})")
            raise GgprecError(f"truncated tensor data: {name} ends at byte {start + n_bytes}, file has {size}")
        role, layer = classify(name)
        tensors.append(TensorInfo(name, role, layer, shape, gtype, start, n_bytes))
    return ModelInfo(path, size, version, alignment, data_offset, metadata, tensors)


def _per_layer(value: Any, n_layer: int, default: int) -> tuple[int, ...]:
    if isinstance(value, list):
        return tuple(int(v) for v in value[:n_layer])
    v = default if value is None else int(value)
    return (v,) * n_layer


def _hparams(arch: str, md: dict[str, Any], tensors: list[TensorInfo]) -> HParams:
    def get(key: str, default: Any = None) -> Any:
        return md.get(f"{arch}.{key}", default)

    n_layer = int(get("block_count", 0))
    n_embd = int(get("embedding_length", 0))
    n_head_list = _per_layer(get("attention.head_count"), n_layer, 0)
    n_head = max(n_head_list, default=0)
    n_head_kv = _per_layer(get("attention.head_count_kv"), n_layer, n_head)
    head_dim = n_embd // n_head if n_head else 0
    tokens = md.get("tokenizer.ggml.tokens")
    n_vocab = int(get("vocab_size", len(tokens) if tokens is not None else 0))
    if not n_vocab:
        embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
        n_vocab = embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0
    window = get("attention.sliding_window")
    return HParams(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=int(get("attention.key_length", head_dim)),
        head_dim_v=int(get("attention.value_length", head_dim)),
        n_ff=_per_layer(get("feed_forward_length"), n_layer, 0),
        n_vocab=n_vocab,
        n_ctx_train=int(get("context_length", 0)),
        sliding_window=int(window) if window else None,
        n_expert=int(get("expert_count", 0)),
        n_expert_used=int(get("expert_used_count", 0)),
        n_expert_shared=int(get("expert_shared_count", 0)),
        n_ff_exp=int(get("expert_feed_forward_length", 0)),
        n_ff_shexp=int(get("expert_shared_feed_forward_length", 0)),
        n_layer_dense_lead=int(get("leading_dense_block_count", 0)),
        q_lora_rank=int(get("attention.q_lora_rank", 0)),
        kv_lora_rank=int(get("attention.kv_lora_rank", 0)),
        head_dim_k_mla=int(get("attention.key_length_mla", 0)),
        head_dim_v_mla=int(get("attention.value_length_mla", 0)),
    )
