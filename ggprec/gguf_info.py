"""Read a GGUF model's header into a ModelInfo: metadata, hyper-parameters, every tensor, every shard.

Why not `gguf.GGUFReader`: it builds a numpy view for every element of every metadata array, which
takes seconds on a 128k-token vocabulary. `inspect` needs only the sizes of those arrays, so this
reader walks the header once over an mmap (`gguf_layout.Cursor`), keeps scalars and small arrays, and
records large arrays by element type and count.

The reader validates before it trusts: every length and count is checked against the bytes left
before use, strings, names and array nesting have limits, every metadata value the hyper-parameters
use is type-checked (an integer, not a float, bool, string or NaN; per-layer lists of the right
length), layer numbers and block_count are bounded, so no number from the file makes it allocate or
loop in proportion. Any exception that still escapes the parser becomes a CorruptGGUFError
("corrupt GGUF header at offset N"), and names quoted from the file go through `errors.safe_text`.

Split models (`name-00001-of-00003.gguf`, written by llama.cpp's gguf-split or quantizer): the first
shard holds the metadata and `split.count`/`split.no`/`split.tensors.count`, later shards hold the split
keys and their tensors. Any shard's path reads them all, found by llama.cpp's own naming
(`llama_split_path`/`llama_split_prefix`), and gives one ModelInfo.
"""

from __future__ import annotations

import math
import mmap
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ggml_types
from .errors import CorruptGGUFError, GgprecError, safe_text
from .ggml_types import GgmlType
from .gguf_layout import (
    DEFAULT_ALIGNMENT,
    KEEP_ARRAY_MAX,
    MAGIC,
    MAX_DIMS,
    MAX_NAME,
    VERSIONS,
    ArraySummary,
    Cursor,
    align,
)
from .roles import ROLE_ORDER, classify

__all__ = ["KEEP_ARRAY_MAX", "ArraySummary", "HParams", "ModelInfo", "TensorInfo", "read_gguf", "split_path",
           "split_prefix"]

MAX_LAYERS = KEEP_ARRAY_MAX  # block_count accepted (llama.cpp itself loads at most 512 layers)
MAX_LAYER_DIGITS = 6  # digits of N in a tensor name `blk.N.*`, checked before int()
U32_MAX = 2**32 - 1  # bound of the counts and lengths the hyper-parameters read
SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS = "split.count", "split.no", "split.tensors.count"
_BLOCK_NUMBER = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    role: str
    layer: int | None
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    type: GgmlType
    offset: int  # absolute offset of the tensor's data in its shard's file
    n_bytes: int
    shard: int = 0  # index into ModelInfo.shards of the file holding the data (0 for a single file)

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

    @property
    def expert_share(self) -> float:
        """The share of a layer's routed experts one token reads on average: expert_used / expert_count
        (1 for a dense model, or where the counts are missing)."""
        return self.n_expert_used / self.n_expert if self.n_expert > 0 and self.n_expert_used > 0 else 1.0


@dataclass
class ModelInfo:
    path: Path
    file_size: int
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    # Every file of the model, first shard first; [path] for a single file. `path`, `version`,
    # `alignment`, `data_offset` and `metadata` are the first shard's, `file_size` is the sum.
    shards: list[Path] = field(default_factory=list)
    hparams: HParams = field(init=False)

    def __post_init__(self) -> None:
        if not self.shards:
            self.shards = [self.path]
        arch = self.metadata.get("general.architecture", "unknown")
        if not isinstance(arch, str):
            raise GgprecError(f"metadata general.architecture is {_describe(arch)}, expected a string")
        self.hparams = _hparams(arch, self.metadata, self.tensors)
        self._by_name = {t.name: t for t in self.tensors}

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None

    @property
    def is_split(self) -> bool:
        return len(self.shards) > 1

    def shard_tensors(self) -> list[list[TensorInfo]]:
        """The tensors of each shard file in file order: llama.cpp maps each file on its own, so a
        host range (CPU_Mapped) is per shard."""
        out: list[list[TensorInfo]] = [[] for _ in self.shards]
        for t in sorted(self.tensors, key=lambda t: (t.shard, t.offset)):
            out[t.shard].append(t)
        return out

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


@dataclass
class _File:
    """One GGUF file's header as parsed, before the shards of a split model are put together."""

    path: Path
    size: int
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    end: int  # offset where the parser stopped (the end of the tensor infos)


def read_gguf(path: str | os.PathLike[str]) -> ModelInfo:
    """Parse the GGUF header of `path` (every shard of a split model); raise GgprecError with a one-line
    reason if it is not valid."""
    first = _read_file(Path(path), shard=0)
    count, no = _split_keys(first)
    files = [first] if count <= 1 else _read_shards(first, count, no)
    head = files[0]
    tensors = [t for f in files for t in f.tensors]
    expected = head.metadata.get(SPLIT_TENSORS)
    if count > 1 and expected != len(tensors):
        raise GgprecError(f"{head.path}: split model holds {len(tensors)} tensors in {count} shards, "
                          f"{SPLIT_TENSORS} says {safe_text(expected)}")
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise GgprecError(f"{files[t.shard].path}: tensor {safe_text(t.name)} appears twice")
        seen.add(t.name)
    try:
        return ModelInfo(head.path, sum(f.size for f in files), head.version, head.alignment, head.data_offset,
                         head.metadata, tensors, [f.path for f in files])
    except GgprecError as e:
        raise GgprecError(f"{head.path}: {e}") from None
    except Exception as e:  # last resort: whatever the checks above missed is still one line
        raise CorruptGGUFError(head.end, f"{type(e).__name__}: {safe_text(e)}", head.path) from None


def _read_file(p: Path, shard: int) -> _File:
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
                cur = Cursor(buf, size)
                try:
                    return _parse(p, cur, shard)
                except GgprecError:
                    raise
                except Exception as e:  # last resort: a bug or a case the checks missed, never a traceback
                    raise CorruptGGUFError(cur.pos, f"{type(e).__name__}: {safe_text(e)}") from None
    except PermissionError as e:
        raise GgprecError(f"{p}: cannot read ({e.strerror})") from None
    except CorruptGGUFError as e:
        raise e.with_path(p) from None
    except GgprecError as e:
        raise GgprecError(f"{p}: {e}") from None
    except OSError as e:
        raise GgprecError(f"{p}: cannot read ({e.strerror or e})") from None


def _parse(path: Path, cur: Cursor, shard: int) -> _File:
    size, buf = cur.size, cur.buf
    cur.need(4, "magic")
    if buf[0:4] != MAGIC:
        raise GgprecError("not a GGUF file (bad magic)")
    cur.pos = 4
    version = cur.u32("version")
    if version not in VERSIONS and int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
        raise GgprecError("big-endian GGUF file: llama.cpp on this machine reads little-endian files only")
    if version not in VERSIONS:
        raise GgprecError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # Every tensor info and key-value pair takes more than 8 bytes, which bounds honest counts.
    if n_tensors * 8 > size or n_kv * 8 > size:
        raise cur.fail(f"absurd counts ({n_tensors} tensors, {n_kv} metadata keys)")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        if key in metadata:
            raise cur.fail(f"metadata key {safe_text(key)} appears twice")
        metadata[key] = cur.value(cur.u32(f"type of {key}"), key)

    raw_tensors = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name {i}", limit=MAX_NAME)
        n_dims = cur.u32(f"dimensions of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {safe_text(name)} has {n_dims} dimensions")
        shape = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
        type_id = cur.u32(f"type of {name}")
        offset = cur.u64(f"offset of {name}")
        try:
            gtype = ggml_types.by_id(type_id)
        except ggml_types.UnknownTypeError:
            raise GgprecError(f"tensor {safe_text(name)} has unknown ggml type id {type_id}") from None
        raw_tensors.append((name, shape, gtype, offset))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or not 0 < alignment <= 1 << 30 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {_describe(alignment)} is not a power of two")
    data_offset = align(cur.pos, alignment)

    tensors = []
    for name, shape, gtype, offset in raw_tensors:
        try:
            n_bytes = gtype.tensor_bytes(shape)
        except ValueError:
            raise cur.fail(f"tensor {safe_text(name)} shape {list(shape)} does not fit {gtype.name} blocks") from None
        if offset % alignment:
            raise cur.fail(f"tensor {safe_text(name)} data offset {offset} is not a multiple of the "
                           f"alignment {alignment}")
        start = data_offset + offset
        if start + n_bytes > size:
            if start >= size:
                raise GgprecError(f"tensor {safe_text(name)} starts past the end of the file "
                                  f"(offset {start}, size {size})")
            raise GgprecError(f"truncated tensor data: {safe_text(name)} ends at byte {start + n_bytes}, "
                              f"file has {size}")
        layer_digits = _BLOCK_NUMBER.match(name)
        if layer_digits and len(layer_digits.group(1)) > MAX_LAYER_DIGITS:
            raise cur.fail(f"tensor {safe_text(name)} has a layer number of {len(layer_digits.group(1))} digits")
        role, layer = classify(name)
        tensors.append(TensorInfo(name, role, layer, shape, gtype, start, n_bytes, shard))
    return _File(path, size, version, alignment, data_offset, metadata, tensors, cur.pos)


# --- split models ---------------------------------------------------------------------------------


def split_path(prefix: str | os.PathLike[str], no: int, count: int) -> Path:
    """The file of shard `no` (0-based) of `count`: llama.cpp's llama_split_path."""
    return Path(f"{os.fspath(prefix)}-{no + 1:05d}-of-{count:05d}.gguf")


def split_prefix(path: str | os.PathLike[str], no: int, count: int) -> str | None:
    """The prefix of a shard's path (llama.cpp's llama_split_prefix); None if the name does not end in
    `-{no+1:05d}-of-{count:05d}.gguf`."""
    text = os.fspath(path)
    suffix = f"-{no + 1:05d}-of-{count:05d}.gguf"
    return text[: -len(suffix)] if text.endswith(suffix) and len(text) > len(suffix) else None


def _split_keys(f: _File) -> tuple[int, int]:
    """(split.count, split.no) of a file; (1, 0) for a file that is not a shard."""
    md = f.metadata
    if SPLIT_COUNT not in md:
        if SPLIT_NO in md or SPLIT_TENSORS in md:
            raise GgprecError(f"{f.path}: shard of a split model without {SPLIT_COUNT}")
        return 1, 0
    try:
        count = _int(md, SPLIT_COUNT, 1, hi=0xFFFF)
        no = _int(md, SPLIT_NO, 0, hi=0xFFFF)
        _int(md, SPLIT_TENSORS, 0, hi=2**31 - 1)
    except GgprecError as e:
        raise GgprecError(f"{f.path}: {e}") from None
    if count == 0 or no >= max(count, 1):
        raise GgprecError(f"{f.path}: {SPLIT_NO} {no} does not fit {SPLIT_COUNT} {count}")
    return count, no


def _read_shards(given: _File, count: int, no: int) -> list[_File]:
    """Every shard of the split model `given` belongs to, in order, each checked against its place."""
    prefix = split_prefix(given.path, no, count)
    if prefix is None:
        raise GgprecError(f"{given.path}: shard {no + 1} of {count} of a split model, but its name does not end in "
                          f"-{no + 1:05d}-of-{count:05d}.gguf (llama.cpp finds the other shards by that name)")
    files = []
    for i in range(count):
        p = split_path(prefix, i, count)
        if i == no:
            files.append(given)
            continue
        if not p.exists():
            raise GgprecError(f"{p}: no such file: shard {i + 1} of {count} of split model {given.path.name} "
                              "is missing")
        f = _read_file(p, shard=i)
        f_count, f_no = _split_keys(f)
        if (f_count, f_no) != (count, i):
            raise GgprecError(f"{p}: shard {i + 1} of {count} says it is shard {f_no + 1} of {f_count}")
        files.append(f)
    if given.tensors and no != 0:
        given.tensors = [TensorInfo(t.name, t.role, t.layer, t.shape, t.type, t.offset, t.n_bytes, no)
                         for t in given.tensors]
    return files


# --- hyper-parameters: every value used is checked -------------------------------------------------


def _describe(value: Any) -> str:
    """A metadata value in a message: its kind and a short, escaped rendering."""
    if isinstance(value, bool):
        return f"bool {value}"
    if isinstance(value, int):
        return f"integer {value}" if abs(value) < 10**30 else "an integer of 30+ digits"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string '{safe_text(value, 40)}'"
    if isinstance(value, ArraySummary):
        return f"array of {value.count:,} {value.element_type}"
    if isinstance(value, list):
        return f"array of {len(value):,}"
    return type(value).__name__


def _int(md: dict[str, Any], key: str, default: int, hi: int = U32_MAX) -> int:
    """The integer at `key` (or `default`), in 0..hi; a float (NaN, inf), bool, string or list is an error."""
    value = md.get(key)
    if value is None:
        return default
    if type(value) is not int:
        hint = " (NaN or inf)" if isinstance(value, float) and not math.isfinite(value) else ""
        raise GgprecError(f"metadata {safe_text(key)} is {_describe(value)}{hint}, expected an integer")
    if not 0 <= value <= hi:
        raise GgprecError(f"metadata {safe_text(key)} is {_describe(value)}, expected 0 to {hi:,}")
    return value


def _per_layer(md: dict[str, Any], key: str, n_layer: int, default: int) -> tuple[int, ...]:
    """A per-layer value: one integer for every layer, or a list of exactly n_layer integers (llama.cpp
    refuses another length)."""
    value = md.get(key)
    if isinstance(value, (list, ArraySummary)):
        if len(value) != n_layer or isinstance(value, ArraySummary):
            raise GgprecError(f"metadata {safe_text(key)} is {_describe(value)}, expected {n_layer} "
                              "values (one per layer)")
        return tuple(_int({key: v}, key, 0) for v in value)
    return (_int(md, key, default),) * n_layer


def _vocab_count(md: dict[str, Any]) -> int:
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is None:
        return 0
    if isinstance(tokens, ArraySummary) and tokens.element_type == "string" or \
            isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return len(tokens)
    raise GgprecError(f"metadata tokenizer.ggml.tokens is {_describe(tokens)}, expected a list of strings")


def _hparams(arch: str, md: dict[str, Any], tensors: list[TensorInfo]) -> HParams:
    def get(key: str, default: int = 0) -> int:
        return _int(md, f"{arch}.{key}", default)

    block_key = f"{arch}.block_count"
    n_layer = _int(md, block_key, 0, hi=MAX_LAYERS)
    last = max((t.layer for t in tensors if t.layer is not None), default=None)
    if last is not None and block_key in md and last >= n_layer:
        name = next(t.name for t in tensors if t.layer == last)
        raise GgprecError(f"tensor {safe_text(name)} is in layer {last}, but {safe_text(block_key)} is {n_layer}")
    n_embd = get("embedding_length")
    n_head_list = _per_layer(md, f"{arch}.attention.head_count", n_layer, 0)
    n_head = max(n_head_list, default=0)
    n_head_kv = _per_layer(md, f"{arch}.attention.head_count_kv", n_layer, n_head)
    head_dim = n_embd // n_head if n_head else 0
    n_vocab = get("vocab_size", _vocab_count(md))
    if not n_vocab:
        embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
        n_vocab = embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0
    window = get("attention.sliding_window")
    return HParams(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=get("attention.key_length", head_dim),
        head_dim_v=get("attention.value_length", head_dim),
        n_ff=_per_layer(md, f"{arch}.feed_forward_length", n_layer, 0),
        n_vocab=n_vocab,
        n_ctx_train=get("context_length"),
        sliding_window=window or None,
        n_expert=get("expert_count"),
        n_expert_used=get("expert_used_count"),
        n_expert_shared=get("expert_shared_count"),
        n_ff_exp=get("expert_feed_forward_length"),
        n_ff_shexp=get("expert_shared_feed_forward_length"),
        n_layer_dense_lead=get("leading_dense_block_count"),
        q_lora_rank=get("attention.q_lora_rank"),
        kv_lora_rank=get("attention.kv_lora_rank"),
        head_dim_k_mla=get("attention.key_length_mla"),
        head_dim_v_mla=get("attention.value_length_mla"),
    )

