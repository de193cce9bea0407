"""Importance-matrix files: llama.cpp's GGUF imatrix format and the legacy `.dat` format.

An importance matrix holds, per weight matrix, the sum of squared input activations per input column
(`in_sum2`) and how many activation rows went into that sum (`counts`), one pair per expert slice of a
mixture-of-experts weight (one count for a dense weight). What llama.cpp's quantizer is handed is the
mean, sum / count per slice (1.0 where a slice saw no token), exactly as `tools/quantize/quantize.cpp`
normalises it; `ImatrixEntry.mean()` computes that in float32 so ggprec hands over the same bytes.

GGUF format (llama.cpp's `tools/imatrix`, written by `write_imatrix`): `general.type = "imatrix"` (no
architecture), `imatrix.datasets` (string array), `imatrix.chunk_count`, `imatrix.chunk_size` (u32), and
per weight F32 tensors `<name>.in_sum2` (ne = [n_in, n_mat]) and `<name>.counts` (ne = [1, n_mat]).
Legacy `.dat`: i32 n_entries; per entry i32 name length, the name, i32 ncall, i32 nval and nval f32
holding mean * ncall; then optionally i32 chunk count and (i32 length, bytes) the dataset name.

This module needs numpy and gguf-py only (no llama.cpp), so the predict stack can read imatrices.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GgprecError, safe_text
from .fileio import atomic_output

if TYPE_CHECKING:
    import numpy as np

    from .gguf_info import ModelInfo

SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"
KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
_ALIGN = 32  # GGUF's default data alignment (llama.cpp writes imatrices with it)
_GGUF_F32 = 0  # ggml type id
_MAX_LEGACY_ENTRIES = 1 << 20
_MAX_NAME = 1 << 16
_MAX_VALUES = 1 << 31


@dataclass
class ImatrixEntry:
    """One weight's statistics: in_sum2[n_mat, n_in] raw sums of squares, counts[n_mat] rows summed."""

    in_sum2: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        import numpy as np

        self.in_sum2 = np.ascontiguousarray(self.in_sum2, dtype=np.float32)
        self.counts = np.ascontiguousarray(self.counts, dtype=np.float32).reshape(-1)
        if self.in_sum2.ndim == 1:
            self.in_sum2 = self.in_sum2.reshape(len(self.counts), -1)
        if self.in_sum2.ndim != 2 or self.in_sum2.shape[0] != len(self.counts):
            raise ValueError(f"in_sum2 of shape {self.in_sum2.shape} does not match {len(self.counts)} counts")

    @property
    def n_mat(self) -> int:
        return int(self.in_sum2.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.in_sum2.shape[1])

    @property
    def size(self) -> int:
        """Values handed to the quantizer: n_mat * n_in (llama.cpp checks it equals ne[0] * ne[2])."""
        return int(self.in_sum2.size)

    def column_weights(self) -> np.ndarray:
        """The mean squared activation per input column, [n_mat, n_in] float32 (1.0 for a slice no token
        reached): sum / count computed in float32, as llama-quantize does."""
        import numpy as np

        out = np.ones_like(self.in_sum2)
        seen = self.counts > 0
        out[seen] = self.in_sum2[seen] / self.counts[seen, None]
        return out

    def mean(self) -> np.ndarray:
        """column_weights() flattened, expert slice after expert slice: what the quantizer receives."""
        return self.column_weights().reshape(-1)

    def __eq__(self, other: object) -> bool:
        import numpy as np

        return (isinstance(other, ImatrixEntry) and self.in_sum2.shape == other.in_sum2.shape
                and np.array_equal(self.in_sum2, other.in_sum2) and np.array_equal(self.counts, other.counts))


@dataclass
class Imatrix:
    """An importance matrix: weight name -> entry, and where it came from."""

    entries: dict[str, ImatrixEntry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def column_weights(self, name: str) -> np.ndarray:
        """[n_mat, n_in] mean squared activations of weight `name` (KeyError when it has no entry)."""
        return self.entries[name].column_weights()

    def content_hash(self) -> str:
        """sha256 of what a quantizer would receive (names and means, in name order): two files with
        the same data hash the same whatever their format or metadata."""
        h = hashlib.sha256()
        for name in sorted(self.entries):
            mean = self.entries[name].mean()
            h.update(name.encode() + b"\0" + struct.pack("<Q", mean.size) + mean.tobytes())
        return h.hexdigest()


# --- reading --------------------------------------------------------------------------------------------


def read_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read an imatrix in llama.cpp's GGUF format or the legacy `.dat` format; a file that is neither,
    or is truncated or inconsistent, is a one-line GgprecError."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GgprecError(f"{p}: cannot read the imatrix ({e.strerror or e})") from None
    try:
        imx = _read_gguf(p) if magic == b"GGUF" else _read_legacy(p)
    except GgprecError as e:
        raise GgprecError(f"{p}: not a usable imatrix: {e}") from None
    except (ValueError, IndexError, KeyError, struct.error, OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise GgprecError(f"{p}: not a usable imatrix: {safe_text(str(e) or type(e).__name__, 200)}") from None
    if not imx.entries:
        raise GgprecError(f"{p}: not a usable imatrix: it holds no entries")
    return imx


def _field_value(reader: Any, key: str) -> Any:
    """A scalar or a string array from a GGUFReader, None when the key is absent."""
    from gguf import GGUFValueType

    f = reader.fields.get(key)
    if f is None:
        return None
    if f.types and f.types[0] == GGUFValueType.ARRAY:
        return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
    if f.types and f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
    return f.parts[f.data[0]][0].item()


def _read_gguf(p: Path) -> Imatrix:
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(p, "r")
    kind = _field_value(reader, KEY_TYPE)
    if kind is not None and kind != "imatrix":
        raise GgprecError(f"a GGUF of general.type '{safe_text(kind, 40)}', not an imatrix")
    sums: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for t in reader.tensors:
        for suffix, into in ((SUM_SUFFIX, sums), (COUNT_SUFFIX, counts)):
            if t.name.endswith(suffix):
                if int(t.tensor_type) != _GGUF_F32:
                    raise GgprecError(f"{safe_text(t.name)} is not F32")
                into[t.name[: -len(suffix)]] = t
    if not sums and not counts:
        raise GgprecError("a GGUF without any '<weight>.in_sum2' tensor (a model, not an imatrix?)")
    entries = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise GgprecError(f"{safe_text(name)} has {'no counts' if name in sums else 'counts but no sums'}")
        s, c = sums[name], counts[name]
        n_counts = int(np.prod(c.shape))
        if n_counts < 1 or int(np.prod(s.shape)) % n_counts:
            raise GgprecError(f"{safe_text(name)}: {int(np.prod(s.shape))} sums do not split into {n_counts} slices")
        entries[name] = ImatrixEntry(np.array(s.data, dtype=np.float32).reshape(n_counts, -1),
                                     np.array(c.data, dtype=np.float32).reshape(-1))
    datasets = _field_value(reader, KEY_DATASETS) or []
    return Imatrix(entries, list(datasets) if isinstance(datasets, list) else [str(datasets)],
                   int(_field_value(reader, KEY_CHUNK_COUNT) or 0), int(_field_value(reader, KEY_CHUNK_SIZE) or 0))


class _Bytes:
    """A bounds-checked little-endian reader over a file's bytes (the legacy format has no magic)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise GgprecError(f"ends inside {what} at byte {self.pos}")
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _read_legacy(p: Path) -> Imatrix:
    import numpy as np

    b = _Bytes(p.read_bytes())
    n_entries = b.i32("the entry count")
    if not 1 <= n_entries <= _MAX_LEGACY_ENTRIES:
        raise GgprecError(f"neither GGUF nor the legacy .dat format (entry count {n_entries})")
    entries = {}
    for i in range(n_entries):
        n = b.i32(f"entry {i}'s name length")
        if not 1 <= n <= _MAX_NAME:
            raise GgprecError(f"entry {i} has a name length of {n}")
        name = b.take(n, f"entry {i}'s name").decode("utf-8")
        ncall = b.i32(f"{safe_text(name)}'s call count")
        nval = b.i32(f"{safe_text(name)}'s value count")
        if not 1 <= nval <= _MAX_VALUES or ncall < 0:
            raise GgprecError(f"{safe_text(name)}: {nval} values over {ncall} calls")
        values = np.frombuffer(b.take(4 * nval, f"{safe_text(name)}'s values"), dtype="<f4").astype(np.float32)
        # The stored values are mean * ncall: keeping them as sums with one count of ncall gives back the
        # mean llama-quantize divides out; a zero ncall means the values are the means themselves.
        entries[name] = ImatrixEntry(values.reshape(1, -1), np.array([max(ncall, 1)], dtype=np.float32))
    chunk_count, datasets = 0, []
    if b.left >= 4:  # the trailer (chunk count, dataset name) is optional
        chunk_count = b.i32("the chunk count")
        if b.left >= 4:
            n = b.i32("the dataset name's length")
            if n > 0:
                datasets.append(b.take(n, "the dataset name").decode("utf-8", "replace"))
    return Imatrix(entries, datasets, max(chunk_count, 0), 0)


# --- writing --------------------------------------------------------------------------------------------


def _gguf_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def imatrix_bytes(imx: Imatrix) -> bytes:
    """The GGUF file llama.cpp's imatrix tool would write for `imx` (entries in name order)."""
    kvs = [
        _gguf_string(KEY_TYPE) + struct.pack("<I", 8) + _gguf_string("imatrix"),
        _gguf_string(KEY_DATASETS) + struct.pack("<IIQ", 9, 8, len(imx.datasets))
        + b"".join(_gguf_string(d) for d in imx.datasets),
        _gguf_string(KEY_CHUNK_COUNT) + struct.pack("<II", 4, imx.chunk_count),
        _gguf_string(KEY_CHUNK_SIZE) + struct.pack("<II", 4, imx.chunk_size),
    ]
    infos, blobs, offset = [], [], 0
    for name in sorted(imx.entries):
        e = imx.entries[name]
        for suffix, ne, data in ((SUM_SUFFIX, (e.n_in, e.n_mat), e.in_sum2), (COUNT_SUFFIX, (1, e.n_mat), e.counts)):
            raw = data.astype("<f4").tobytes()
            infos.append(_gguf_string(name + suffix) + struct.pack("<I", 2) + struct.pack("<2Q", *ne)
                         + struct.pack("<IQ", _GGUF_F32, offset))
            blobs.append(raw + b"\0" * _pad(len(raw)))
            offset += len(raw) + _pad(len(raw))
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return head + b"\0" * _pad(len(head)) + b"".join(blobs)


def write_imatrix(imx: Imatrix, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write `imx` in llama.cpp's GGUF imatrix format (llama-quantize --imatrix reads it), atomically."""
    import numpy as np

    if not imx.entries:
        raise GgprecError("an imatrix with no entries cannot be written")
    for name, e in imx.entries.items():
        if not (np.isfinite(e.in_sum2).all() and np.isfinite(e.counts).all()):
            raise GgprecError(f"imatrix entry {safe_text(name)} holds NaN or infinite values")
    data = imatrix_bytes(imx)
    with atomic_output(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# --- checking against a model ---------------------------------------------------------------------------


def check_imatrix(imx: Imatrix, info: ModelInfo, extra: tuple[tuple[str, tuple[int, ...]], ...] = ()) -> None:
    """Refuse, in one line, an imatrix that does not belong to the model `info`: a name that is not a
    weight matrix of it, a size other than ne[0] * ne[2] (what llama.cpp's quantizer checks), a slice
    count other than 1 or ne[2], NaN/inf values or negative counts. `extra`: (name, shape) of tensors the
    quantizer will see besides the file's own (a split output head)."""
    import numpy as np

    shapes = {t.name: t.shape for t in info.tensors}
    shapes.update(dict(extra))
    where = f"the imatrix does not match {info.path.name}"
    for name, e in sorted(imx.entries.items()):
        shape = shapes.get(name)
        if shape is None or len(shape) < 2:
            raise GgprecError(f"{where}: {safe_text(name)} is not a weight matrix of the model "
                              f"({len(imx.entries)} entries; is it the imatrix of another model?)")
        want = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if e.size != want or e.n_mat not in (1, shape[2] if len(shape) > 2 else 1):
            raise GgprecError(f"{where}: {safe_text(name)} has {e.size} values in {e.n_mat} slice(s), "
                              f"the weight needs {want} (ne[0] x ne[2] of shape {list(shape)})")
        if not (np.isfinite(e.in_sum2).all() and np.isfinite(e.counts).all()):
            raise GgprecError(f"imatrix entry {safe_text(name)} holds NaN or infinite values")
        if (e.counts < 0).any() or (e.in_sum2 < 0).any():
            raise GgprecError(f"imatrix entry {safe_text(name)} holds negative sums or counts")
