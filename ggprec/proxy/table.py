"""The error table: each tensor's error at each candidate type, measured on the weights as the file holds
them (see the package doc)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import ggml_types
from ..errors import GgprecError
from ..ggml_types import GgmlType
from ..gguf_info import ModelInfo, TensorInfo
from ..progress import Progress

if TYPE_CHECKING:
    import numpy as np

# Rows measured per tensor (per expert slice of a 3-D tensor): the relative error of a few hundred rows
# of thousands of weights is a mean over about a million squared errors, enough to rank types and
# groups (see docs/notes/proxy.md for the effect on the figures); every row of smaller tensors is read.
MAX_ROWS = 512
# Elements per chunk a worker reads, dequantizes and quantizes at once: 2 MiB of f32 per buffer. Fixed (not
# derived from the thread count), so that the sums, added chunk by chunk, are the same on every machine.
CHUNK_ELEMENTS = 1 << 19

# Types ggml_quantize_chunk writes (ggml/src/ggml.c of the vendored llama.cpp).
QUANTIZABLE_TO = frozenset({
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m", "iq4_nl", "iq4_xs", "tq1_0", "tq2_0",
    "mxfp4", "nvfp4", "q1_0", "q2_0",
})


class ColumnWeights(Protocol):
    """An importance matrix as the proxy reads it (ggprec.imatrix_file.Imatrix satisfies it)."""

    def column_weights(self, name: str) -> np.ndarray | None:
        """Per input column of weight `name`, the mean squared activation: [n_mat, n_in] (n_mat: expert
        slices, 1 for a 2-D weight); None (or KeyError) where there is no entry."""
        ...


@dataclass(frozen=True)
class TensorError:
    """One tensor at one candidate type."""

    error: float  # weighted squared error / weighted energy of the file's rows
    written: str  # the type llama.cpp writes for the candidate (its fallback when the block does not divide)
    rows: int  # rows measured
    total_rows: int  # rows of the tensor (all expert slices)
    weighted: bool  # weighted by the importance matrix (else uniformly)

    @property
    def sampled(self) -> bool:
        return self.rows < self.total_rows


@dataclass
class ErrorTable:
    """tensor -> candidate -> TensorError, for one model file and one weighting."""

    model: str
    candidates: list[str]
    errors: dict[str, dict[str, TensorError]]
    weighting: str  # "uniform", "imatrix", or "imatrix-weighted only" (the quantizer did without it)
    max_rows: int | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def error(self, tensor: str, candidate: str) -> float | None:
        entry = self.errors.get(tensor, {}).get(ggml_types.lookup(candidate).name)
        return None if entry is None else entry.error

    def group_error(self, tensors: Iterable[str], candidate: str) -> float | None:
        """Sum of the tensors' errors (None when one of them was not measured at `candidate`)."""
        total = 0.0
        for name in tensors:
            e = self.error(name, candidate)
            if e is None:
                return None
            total += e
        return total

    @property
    def sampled_tensors(self) -> int:
        return sum(any(e.sampled for e in row.values()) for row in self.errors.values())

    def describe(self) -> str:
        """One line: what was measured, how, and whether rows were sampled."""
        n = len(self.errors)
        s = self.sampled_tensors
        sampling = (f"{s} of {n} tensors sampled: {self.max_rows} evenly spaced rows each (per expert slice)"
                    if s else "every row read")
        return (f"{n} tensors x {len(self.candidates)} types, {self.weighting} column weights, {sampling}, "
                f"{self.seconds:.1f} s")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "candidates": list(self.candidates), "weighting": self.weighting,
                "max_rows": self.max_rows, "seconds": self.seconds, "notes": list(self.notes),
                "errors": {t: {c: asdict(e) for c, e in row.items()} for t, row in self.errors.items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ErrorTable:
        return cls(doc["model"], list(doc["candidates"]),
                   {t: {c: TensorError(**e) for c, e in row.items()} for t, row in doc["errors"].items()},
                   doc["weighting"], doc.get("max_rows"), doc.get("seconds", 0.0), list(doc.get("notes", [])))


# --- ggml ----------------------------------------------------------------------------------------------


def _to_float(gtype: GgmlType) -> Any:
    """ggml's to_float for a type (None for f32: the bytes are the floats)."""
    from ..ggml_lib import TO_FLOAT, base

    if gtype.name == "f32":
        return None
    traits = base().ggml_get_type_traits(gtype.type_id).contents
    if not traits.to_float:
        raise GgprecError(f"ggml has no dequantization for type {gtype.name}")
    return TO_FLOAT(traits.to_float)


def candidate_type(name: str | GgmlType) -> GgmlType:
    t = name if isinstance(name, GgmlType) else ggml_types.lookup(name)
    if t.name not in QUANTIZABLE_TO:
        raise GgprecError(f"ggml cannot quantize to {t.name} (one of: {', '.join(sorted(QUANTIZABLE_TO))})")
    return t


def requires_imatrix(t: GgmlType) -> bool:
    """Whether ggml's quantizer needs an importance matrix for this type (it asserts without one)."""
    from ..ggml_lib import base

    return bool(base().ggml_quantize_requires_imatrix(t.type_id))


def _dequantize(fn: Any, gtype: GgmlType, raw: np.ndarray, n_rows: int, n_per_row: int) -> np.ndarray:
    """raw bytes [n_rows, row bytes] of `gtype` -> float32 [n_rows, n_per_row]."""
    import ctypes

    import numpy as np

    if fn is None:
        return np.ascontiguousarray(raw).view(np.float32).reshape(n_rows, n_per_row)
    raw = np.ascontiguousarray(raw)
    out = np.empty((n_rows, n_per_row), dtype=np.float32)
    fn(raw.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n_rows * n_per_row)
    return out


def _quantize(t: GgmlType, x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """float32 [n_rows, n_per_row] -> the bytes ggml_quantize_chunk writes, [n_rows, row bytes]."""
    import numpy as np

    from ..ggml_lib import base

    n_rows, n_per_row = x.shape
    out = np.empty((n_rows, t.row_bytes(n_per_row)), dtype=np.uint8)
    imx = None if weights is None else weights.ctypes.data
    base().ggml_quantize_chunk(t.type_id, x.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, imx)
    return out


def quantize_rows(t: str | GgmlType, x: np.ndarray, weights: np.ndarray | None = None) -> bytes:
    """The bytes llama.cpp's quantizer writes for float32 rows `x` [n_rows, n_per_row] at type `t` (one
    expert slice: `weights` [n_per_row] its importance-matrix columns). Public for tests and tools."""
    import numpy as np

    gt = candidate_type(t)
    _init(gt, weights is not None)
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    return _quantize(gt, np.ascontiguousarray(x, dtype=np.float32), w).tobytes()


def _init(t: GgmlType, has_weights: bool) -> None:
    from ..ggml_lib import base

    if requires_imatrix(t) and not has_weights:
        raise GgprecError(f"{t.name} needs an importance matrix (ggml refuses to quantize to it without one)")
    base().ggml_quantize_init(t.type_id)


# --- the measurement -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    candidate: str  # as asked
    written: GgmlType  # what llama.cpp writes


def _shape(t: TensorInfo) -> tuple[int, int, int]:
    """(n_per_row, rows per slice, slices): a 3-D expert tensor has one slice per expert."""
    n_per_row = t.shape[0]
    rows = t.shape[1] if len(t.shape) > 1 else 1
    slices = 1
    for d in t.shape[2:]:
        slices *= d
    return n_per_row, rows, slices


def sample_rows(rows: int, max_rows: int | None) -> np.ndarray:
    """Row indices measured of a slice of `rows` rows: all, or `max_rows` evenly spaced (deterministic)."""
    import numpy as np

    if max_rows is None or rows <= max_rows:
        return np.arange(rows, dtype=np.int64)
    return np.unique(np.linspace(0, rows - 1, max_rows).round().astype(np.int64))


def _column_weights(imatrix: ColumnWeights | None, t: TensorInfo, slices: int) -> np.ndarray | None:
    import numpy as np

    if imatrix is None:
        return None
    try:
        w = imatrix.column_weights(t.name)
    except KeyError:  # ggprec.imatrix_file.Imatrix: no entry (llama.cpp then quantizes without one)
        return None
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 1:
        w = w.reshape(1, -1)
    if w.shape != (slices, t.shape[0]):
        raise GgprecError(f"importance matrix entry {t.name} is {w.shape[0]} x {w.shape[1]}, the weight needs "
                          f"{slices} x {t.shape[0]} (expert slices x input columns)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise GgprecError(f"importance matrix entry {t.name} holds NaN, inf or negative values")
    return np.ascontiguousarray(w)


def _chunks(t: TensorInfo, max_rows: int | None) -> tuple[list[tuple[int, np.ndarray]], int]:
    """(slice, row indices within the slice) per chunk of at most CHUNK_ELEMENTS, and rows measured."""
    n_per_row, rows, slices = _shape(t)
    per_chunk = max(1, CHUNK_ELEMENTS // n_per_row)
    idx = sample_rows(rows, max_rows)
    out = [(s, idx[i:i + per_chunk]) for s in range(slices) for i in range(0, len(idx), per_chunk)]
    return out, len(idx) * slices


def _measure_chunk(raw_rows: np.ndarray, t: TensorInfo, src_fn: Any, targets: Sequence[_Target],
                   fns: Mapping[str, Any], w: np.ndarray | None,
                   quantize_with: bool = True) -> tuple[float, dict[str, float]]:
    """(weighted energy, weighted squared error per written type) of one chunk of the file's rows; the
    quantizer gets the weights too unless `quantize_with` is off (then only the types that need them)."""
    import numpy as np

    n = raw_rows.shape[0]
    x = _dequantize(src_fn, t.type, raw_rows, n, t.shape[0])
    col = np.ones(t.shape[0], dtype=np.float64) if w is None else w.astype(np.float64)
    energy = float((x * x).sum(axis=0, dtype=np.float64) @ col)
    errs: dict[str, float] = {}
    for tg in targets:
        name = tg.written.name
        if name in errs or name == t.type.name:
            continue
        q = _quantize(tg.written, x, w if quantize_with or requires_imatrix(tg.written) else None)
        d = x - _dequantize(fns[name], tg.written, q, n, t.shape[0])
        errs[name] = float((d * d).sum(axis=0, dtype=np.float64) @ col)
    return energy, errs


def _targets(t: TensorInfo, candidates: Sequence[GgmlType]) -> list[_Target]:
    from ..plan import fallback, quantizable

    if not quantizable(t.name, t.shape):
        return [_Target(c.name, t.type) for c in candidates]  # llama.cpp keeps the type: nothing changes
    return [_Target(c.name, fallback(c, t.shape[0])[0]) for c in candidates]


def written_type(t: TensorInfo, candidate: GgmlType) -> GgmlType:
    """The type llama.cpp writes for `t` asked for `candidate` (its fallback; t's own type where it never
    quantizes t)."""
    return _targets(t, [candidate])[0].written


def _file_rows(info: ModelInfo, t: TensorInfo) -> np.ndarray:
    """The tensor's rows as a read-only [rows, row bytes] view of the memory-mapped file."""
    import numpy as np

    path = info.shards[t.shard] if info.shards else info.path
    row_bytes = t.type.row_bytes(t.shape[0])
    n_rows = t.n_elements // t.shape[0]
    return np.memmap(path, dtype=np.uint8, mode="r", offset=t.offset, shape=(n_rows, row_bytes))


@dataclass
class _Job:
    """One tensor being measured: its targets, and the sums its chunks add up to."""

    t: TensorInfo
    targets: list[_Target]
    pending: list[_Target]  # targets that change the type (the others cost exactly 0)
    weighted: bool
    rows: int  # rows measured
    chunks: list[Any]  # zero-argument callables, one per chunk: (energy, {written type: error})
    energy: float = 0.0
    errs: dict[str, float] = field(default_factory=dict)
    left: int = 0

    def add(self, energy: float, errs: Mapping[str, float]) -> None:
        self.energy += energy
        for k, v in errs.items():
            self.errs[k] = self.errs.get(k, 0.0) + v
        self.left -= 1

    def result(self) -> dict[str, TensorError]:
        _, rows, slices = _shape(self.t)
        out = {}
        for tg in self.targets:
            # The own type: llama.cpp copies the tensor as it is, exactly nothing lost.
            same = tg.written == self.t.type or self.energy <= 0
            err = 0.0 if same else self.errs[tg.written.name] / self.energy
            out[tg.candidate] = TensorError(err, tg.written.name, self.rows if self.pending else 0, rows * slices,
                                            self.weighted)
        return out


def _job(info: ModelInfo, t: TensorInfo, candidates: Sequence[GgmlType], imatrix: ColumnWeights | None,
         max_rows: int | None, quantize_with: bool = True) -> _Job:
    """The tensor's measurement cut into chunks of rows (read lazily from the mapped file by each chunk)."""
    _, rows, slices = _shape(t)
    targets = _targets(t, candidates)
    w_all = _column_weights(imatrix, t, slices)
    pending = [tg for tg in targets if tg.written != t.type]
    for tg in pending:
        _init(tg.written, w_all is not None)
    parts, measured = _chunks(t, max_rows)
    job = _Job(t, targets, pending, w_all is not None, measured, [])
    if not pending:
        return job
    src_fn = _to_float(t.type)
    fns = {tg.written.name: _to_float(tg.written) for tg in pending}
    view = _file_rows(info, t)

    def work(s: int, idx: np.ndarray) -> tuple[float, dict[str, float]]:
        raw = view[s * rows + idx]  # fancy indexing copies just these rows out of the mapping
        return _measure_chunk(raw, t, src_fn, pending, fns, None if w_all is None else w_all[s], quantize_with)

    job.chunks = [lambda s=s, idx=idx: work(s, idx) for s, idx in parts]
    job.left = len(job.chunks)
    return job


def _measure(info: ModelInfo, tensors: Sequence[TensorInfo], candidates: Callable[[TensorInfo], list[GgmlType]],
             imatrix: ColumnWeights | None, max_rows: int | None, threads: int,
             progress: Progress | None = None, quantize_with: bool = True) -> dict[str, dict[str, TensorError]]:
    """Every tensor at its candidates, chunks from consecutive tensors in flight together on the pool (at most
    two per thread: bounded memory); the sums are added in chunk order, so the figures do not depend on the
    thread count."""
    from collections import deque

    from .. import interrupts

    out: dict[str, dict[str, TensorError]] = {}
    in_flight: deque[tuple[_Job, Future[tuple[float, dict[str, float]]]]] = deque()

    def settle_one() -> None:
        job, fut = in_flight.popleft()
        job.add(*fut.result())
        if job.left == 0:
            out[job.t.name] = job.result()
        interrupts.check()

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ggprec-proxy") as pool:
        try:
            for i, t in enumerate(tensors):
                if progress:
                    progress(t.name, i, len(tensors))
                job = _job(info, t, candidates(t), imatrix, max_rows, quantize_with)
                if not job.chunks:
                    out[t.name] = job.result()
                for chunk in job.chunks:
                    in_flight.append((job, pool.submit(chunk)))
                    while len(in_flight) >= 2 * threads:
                        settle_one()
            while in_flight:
                settle_one()
        except BaseException:
            for _, fut in in_flight:
                fut.cancel()
            raise
    if progress:
        progress("done", len(tensors), len(tensors))
    return {t.name: out[t.name] for t in tensors}


def _find(info: ModelInfo, tensor: TensorInfo | str) -> TensorInfo:
    if isinstance(tensor, TensorInfo):
        return tensor
    t = info.tensor(tensor)
    if t is None:
        from ..errors import safe_text

        raise GgprecError(f"{info.path}: no tensor named '{safe_text(tensor, 120)}'")
    return t


def tensor_error(path: str | os.PathLike[str], info: ModelInfo | None, tensor: TensorInfo | str,
                 candidate: str | GgmlType, imatrix: ColumnWeights | None = None,
                 max_rows: int | None = MAX_ROWS, threads: int | None = None) -> float:
    """The proxy error of asking llama.cpp for `candidate` on `tensor` of the model file `path` (see the
    module doc): 0.0 for the tensor's own type (and for a tensor llama.cpp never quantizes)."""
    from ..gguf_info import read_gguf

    info = info if info is not None else read_gguf(path)
    t = _find(info, tensor)
    c = candidate_type(candidate)
    if c == t.type:
        return 0.0  # the quantizer copies a tensor already of the target type: nothing is lost
    _, _, slices = _shape(t)
    if requires_imatrix(c) and _column_weights(imatrix, t, slices) is None:
        raise GgprecError(f"{c.name} needs an importance matrix (none for {t.name})")
    return _measure(info, [t], lambda _: [c], imatrix, max_rows, threads or os.cpu_count() or 1)[t.name][c.name].error


def proxy_tensors(info: ModelInfo) -> list[TensorInfo]:
    """The tensors the proxy measures by default: those llama.cpp's quantizer may change, of a known role."""
    from ..recommend import quantizable

    return [t for t in info.tensors if quantizable(t)]


def error_table(path: str | os.PathLike[str], info: ModelInfo | None, candidates: Sequence[str | GgmlType],
                imatrix: ColumnWeights | None = None, threads: int | None = None, progress: Progress | None = None,
                max_rows: int | None = MAX_ROWS, tensors: Sequence[str] | None = None,
                quantize_with_imatrix: bool = True) -> ErrorTable:
    """Every quantizable tensor (or `tensors`) x every candidate, in one streaming pass over the file.
    A candidate that needs an importance matrix is left out (with a note) for tensors that have none.
    `quantize_with_imatrix` off: the importance matrix weighs the error only, and the quantizer works
    without it (as llama.cpp quantizes without --imatrix; the types that need one still get it)."""
    from ..gguf_info import read_gguf

    t0 = time.perf_counter()
    info = info if info is not None else read_gguf(path)
    cands = list(dict.fromkeys(candidate_type(c) for c in candidates))
    if not cands:
        raise GgprecError("no candidate types to measure")
    todo = proxy_tensors(info) if tensors is None else [_find(info, n) for n in tensors]
    skipped: dict[str, int] = {}

    def usable(t: TensorInfo) -> list[GgmlType]:
        """The candidates measurable on t: a type that needs an importance matrix only where t has weights."""
        _, _, slices = _shape(t)
        has_w = _column_weights(imatrix, t, slices) is not None
        out = []
        for c in cands:
            written = written_type(t, c)
            if written != t.type and requires_imatrix(written) and not has_w:
                skipped[c.name] = skipped.get(c.name, 0) + 1
            else:
                out.append(c)
        return out

    errors = _measure(info, todo, usable, imatrix, max_rows, threads or os.cpu_count() or 1, progress,
                      quantize_with_imatrix)
    notes = [f"{c}: not measured on {k} tensors without importance-matrix data (ggml needs it)"
             for c, k in skipped.items()]
    weighting = "uniform" if imatrix is None else "imatrix" if quantize_with_imatrix else "imatrix-weighted only"
    table = ErrorTable(str(path), [c.name for c in cands], errors, weighting, max_rows, time.perf_counter() - t0, notes)
    return table



def load_imatrix(path: str | os.PathLike[str], info: ModelInfo) -> ColumnWeights:
    """An importance matrix file through ggprec.imatrix_file (checked against the model where that module
    offers a check); one line when this build lacks the module."""
    try:
        from .. import imatrix_file  # type: ignore[attr-defined]
    except ImportError:
        raise GgprecError("importance matrices need ggprec.imatrix_file, which this build of ggprec lacks") from None
    imx = imatrix_file.read_imatrix(path)
    check = getattr(imatrix_file, "check_imatrix", None)
    if check is not None:
        check(imx, info)
    if not callable(getattr(imx, "column_weights", None)):
        raise GgprecError(f"{path}: this importance matrix offers no column weights")
    return imx  # type: ignore[no-any-return]

