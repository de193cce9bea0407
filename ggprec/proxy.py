"""A per-tensor error proxy measured on the weights as they are in the file, and its map to expected KLD.

For one tensor and one candidate type: read the tensor's rows from the GGUF file, dequantize them with
ggml's own `to_float` for the file's type (what llama.cpp's quantizer does before it requantizes),
quantize them to the candidate with `ggml_quantize_chunk` (the very function llama_model_quantize
calls: same bytes, with the importance matrix's column weights when there are some), dequantize
again, and take the squared error weighted per input column by the importance matrix (uniformly
without one), relative to the weighted energy of the file's rows:

    error = sum_rows sum_cols w[col] (x - q(x))^2 / sum_rows sum_cols w[col] x^2

With w the mean squared activation of each input column, the numerator is the expected squared error
of the matmul's output and the denominator its expected energy: a noise-to-signal ratio of the layer.
The type a tensor already has costs exactly 0.0: llama.cpp's quantizer copies a tensor whose target
type is its own type byte for byte (`quantize = cur_type != new_type` in src/llama-quant.cpp), so that
is no measurement but the fact, and tensor_error short-circuits it. Requantizing (q4_k -> q5_0)
costs what it costs: the reference is the file's own values, not an f16 original the file never had.

No inference, no file written: the proxy streams through the file in row chunks (bounded memory
whatever the tensor's size) on a thread pool (ctypes releases the GIL in the ggml calls and numpy in
its reductions). Large tensors are sampled: at most `max_rows` rows per tensor (per expert slice for
3-D expert tensors), taken evenly spaced (deterministic; every head and every expert is covered); each
TensorError says how many rows it measured.

Public API (stable; recommend's loss model consumes it):

- `ColumnWeights` (Protocol): any object with `column_weights(name) -> ndarray[n_mat, n_in] | None`
  (`ggprec.imatrix_file.Imatrix` is one): per weight, the mean squared activation of each input column,
  one row per expert slice (n_mat = 1 for a 2-D weight); None or KeyError for a weight it has no entry
  for (then that tensor is measured and quantized without one, as llama.cpp does). `load_imatrix(path,
  info)` reads a file through ggprec.imatrix_file (one line when that module is absent).
- `tensor_error(path, info, tensor, candidate, imatrix=None, max_rows=MAX_ROWS) -> float`: the error
  of asking llama.cpp for `candidate` on `tensor` (a TensorInfo or its name). A candidate whose block
  does not divide the rows is measured at the type llama.cpp falls back to (`plan.fallback`); a tensor
  llama.cpp never quantizes costs 0.0 (it keeps its type).
- `error_table(path, info, candidates, imatrix=None, threads=None, progress=None, max_rows=MAX_ROWS,
  tensors=None) -> ErrorTable`: every quantizable tensor (or `tensors`) x every candidate in one
  streaming pass (each chunk of rows is read and dequantized once for all candidates).
  `ErrorTable.errors[tensor][candidate] -> TensorError(error, written, rows, total_rows, weighted)`;
  `.error(tensor, candidate) -> float | None` (None: not measured, e.g. an IQ type without an imatrix);
  `.group_error(tensors, candidate)`; `.to_dict()`, `ErrorTable.from_dict(d)`.
- `ProxyFit`: the proxy mapped to expected KLD, `KLD(assignment) = sum over tensors of c[role] x
  error(tensor, type) + floor[role] / n_role` (the floor: where a float tensor becomes a quantized type,
  llama.cpp also quantizes that matmul's activations to 8 bits, which no weight error shows), with
  constants per role (the tied head is a role of its own) and a global scale for roles without a pass
  of their own, fitted by least squares on the log scale on N real
  evaluation passes (`ProxyFit.fit(table, info, passes: list[FitPass])`), or scaled to the priors when
  the model cannot run here (`ProxyFit.from_prior(table, info, type)`). `.source`: `proxy: fitted on N
  passes` or `prior: <source>`; `.tensor_kld(table, info, tensor, type)`, `.group_kld(table, info,
  tensors, type)`, `.predict(table, info, {tensor: type})`; `.to_dict()`/`from_dict`; stored in the
  history as kind `proxy-fit` (`store_fit(fit, model, probe_type, max_rows, imatrix_path, db)`,
  `find_fit(model, weighting, imatrix_path, db)`).
- `model_fit(model, info, table, probe_type, imatrix_path=None, db=None) -> (ProxyFit, history id | None)`:
  the newest stored fit of this model and weighting, else the prior spread by the proxy.
- `run_fit_passes(model, info, types=("q4_0", "q8_0"), ...) -> list[FitPass]`: the evaluation passes a fit
  needs (each role alone at each type: llama.cpp quantizes, ggprec.evaluate measures KLD against the model);
  `stored_passes(model, db)`: passes `ggprec sensitivity` already stored for this model (against itself).
- `proxy_sensitivity(model, ...) -> ProxySensitivity`: `ggprec sensitivity --proxy`, every group's
  expected KLD from one streaming pass, with its source.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import ggml_types
from .errors import GgprecError
from .ggml_types import GgmlType
from .gguf_info import ModelInfo, TensorInfo
from .progress import Progress

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
    from .ggml_lib import TO_FLOAT, base

    if gtype.name == "f32":
        return None
    traits = base().ggml_get_type_traits(gtype.type_id).contents
    if not traits.to_float:
        raise GgprecError(f"ggml has no dequantization for type {gtype.name}")
    return TO_FLOAT(traits.to_float)


def _candidate(name: str | GgmlType) -> GgmlType:
    t = name if isinstance(name, GgmlType) else ggml_types.lookup(name)
    if t.name not in QUANTIZABLE_TO:
        raise GgprecError(f"ggml cannot quantize to {t.name} (one of: {', '.join(sorted(QUANTIZABLE_TO))})")
    return t


def requires_imatrix(t: GgmlType) -> bool:
    """Whether ggml's quantizer needs an importance matrix for this type (it asserts without one)."""
    from .ggml_lib import base

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

    from .ggml_lib import base

    n_rows, n_per_row = x.shape
    out = np.empty((n_rows, t.row_bytes(n_per_row)), dtype=np.uint8)
    imx = None if weights is None else weights.ctypes.data
    base().ggml_quantize_chunk(t.type_id, x.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, imx)
    return out


def quantize_rows(t: str | GgmlType, x: np.ndarray, weights: np.ndarray | None = None) -> bytes:
    """The bytes llama.cpp's quantizer writes for float32 rows `x` [n_rows, n_per_row] at type `t` (one
    expert slice: `weights` [n_per_row] its importance-matrix columns). Public for tests and tools."""
    import numpy as np

    gt = _candidate(t)
    _init(gt, weights is not None)
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    return _quantize(gt, np.ascontiguousarray(x, dtype=np.float32), w).tobytes()


def _init(t: GgmlType, has_weights: bool) -> None:
    from .ggml_lib import base

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
    from .plan import fallback, quantizable

    if not quantizable(t.name, t.shape):
        return [_Target(c.name, t.type) for c in candidates]  # llama.cpp keeps the type: nothing changes
    return [_Target(c.name, fallback(c, t.shape[0])[0]) for c in candidates]


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

    from . import interrupts

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
        from .errors import safe_text

        raise GgprecError(f"{info.path}: no tensor named '{safe_text(tensor, 120)}'")
    return t


def tensor_error(path: str | os.PathLike[str], info: ModelInfo | None, tensor: TensorInfo | str,
                 candidate: str | GgmlType, imatrix: ColumnWeights | None = None,
                 max_rows: int | None = MAX_ROWS, threads: int | None = None) -> float:
    """The proxy error of asking llama.cpp for `candidate` on `tensor` of the model file `path` (see the
    module doc): 0.0 for the tensor's own type (and for a tensor llama.cpp never quantizes)."""
    from .gguf_info import read_gguf

    info = info if info is not None else read_gguf(path)
    t = _find(info, tensor)
    c = _candidate(candidate)
    if c == t.type:
        return 0.0  # the quantizer copies a tensor already of the target type: nothing is lost
    _, _, slices = _shape(t)
    if requires_imatrix(c) and _column_weights(imatrix, t, slices) is None:
        raise GgprecError(f"{c.name} needs an importance matrix (none for {t.name})")
    return _measure(info, [t], lambda _: [c], imatrix, max_rows, threads or os.cpu_count() or 1)[t.name][c.name].error


def proxy_tensors(info: ModelInfo) -> list[TensorInfo]:
    """The tensors the proxy measures by default: those llama.cpp's quantizer may change, of a known role."""
    from .recommend import quantizable

    return [t for t in info.tensors if quantizable(t)]


def error_table(path: str | os.PathLike[str], info: ModelInfo | None, candidates: Sequence[str | GgmlType],
                imatrix: ColumnWeights | None = None, threads: int | None = None, progress: Progress | None = None,
                max_rows: int | None = MAX_ROWS, tensors: Sequence[str] | None = None,
                quantize_with_imatrix: bool = True) -> ErrorTable:
    """Every quantizable tensor (or `tensors`) x every candidate, in one streaming pass over the file.
    A candidate that needs an importance matrix is left out (with a note) for tensors that have none.
    `quantize_with_imatrix` off: the importance matrix weighs the error only, and the quantizer works
    without it (as llama.cpp quantizes without --imatrix; the types that need one still get it)."""
    from .gguf_info import read_gguf

    t0 = time.perf_counter()
    info = info if info is not None else read_gguf(path)
    cands = list(dict.fromkeys(_candidate(c) for c in candidates))
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
            written = _targets(t, [c])[0].written
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


# --- from the proxy to expected KLD --------------------------------------------------------------------


def fit_role(t: TensorInfo, info: ModelInfo) -> str:
    """The role a fit constant belongs to: the tensor's role, and `tied_head` for a token_embd that is also
    the output head (it acts as the head, whose damage per unit of error is far above an embedding's)."""
    return "tied_head" if t.role == "token_embd" and info.tied_output else t.role


@dataclass(frozen=True)
class FitPass:
    """One real evaluation: these tensors at these types (the rest as the file holds them) measured `kld`
    against the model."""

    label: str
    types: dict[str, str]  # tensor name -> requested type
    kld: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "types": dict(self.types), "kld": self.kld}


def role_counts(info: ModelInfo) -> dict[str, int]:
    """Proxied tensors per fit role (the activation floor of a role is spread evenly over them)."""
    out: dict[str, int] = {}
    for t in proxy_tensors(info):
        r = fit_role(t, info)
        out[r] = out.get(r, 0) + 1
    return out


def quantizes_activations(t: TensorInfo, written: str) -> bool:
    """Whether writing `t` as `written` changes how llama.cpp quantizes the matmul's input: a quantized weight
    type multiplies against activations quantized to 8 bits (ggml-cpu's vec_dot_type q8_0, q8_1 or q8_K), a
    float weight against float activations. So a float tensor becoming quantized, and a quantized one
    becoming another quantized type (measured on the SmolLM2 Q4_1 download: each role alone requantized to
    q8_0 costs KLD 0.0035-0.0039 whatever the role, far above its weight error) pay the floor."""
    return ggml_types.lookup(written).quantized and ggml_types.lookup(written) != t.type


@dataclass
class ProxyFit:
    """Expected KLD = sum over tensors of scale[role] x error + floor[role] / (the role's tensor count) for each
    tensor whose activations become quantized (`quantizes_activations`), default_scale for roles without a
    pass of their own. `n_passes` real evaluations fitted it (0: scaled to the priors, `prior_source`).

    The floor is what the weight error cannot see: measured on SmolLM2 (F32), the tied head at q8_0 (its
    values already on the q8_0 grid, so a weight error of 0) costs KLD 0.0006, and every role at q8_0 costs
    2-4x what its q4_0 scale predicts from the weight error: quantized weights multiply 8-bit activations."""

    scale: dict[str, float]
    default_scale: float
    n_passes: int
    weighting: str  # the table's weighting: a fit holds only for tables of the same weighting
    passes: list[dict[str, Any]] = field(default_factory=list)  # FitPass.to_dict() + the fitted prediction
    prior_source: str | None = None
    residual: float | None = None  # rms of log(measured / fitted) over the passes
    floor: dict[str, float] = field(default_factory=dict)  # role -> KLD of quantizing all its activations

    @property
    def source(self) -> str:
        if self.n_passes == 0:
            return f"prior: {self.prior_source}"
        return f"proxy: fitted on {self.n_passes} passes"

    def role_scale(self, role: str) -> float:
        return self.scale.get(role, self.default_scale)

    def tensor_kld(self, table: ErrorTable, info: ModelInfo, tensor: str, candidate: str,
                   counts: Mapping[str, int] | None = None) -> float | None:
        entry = table.errors.get(tensor, {}).get(ggml_types.lookup(candidate).name)
        t = info.tensor(tensor)
        if entry is None or t is None:
            return None
        role = fit_role(t, info)
        kld = self.role_scale(role) * entry.error
        if self.floor.get(role) and quantizes_activations(t, entry.written):
            n = (counts if counts is not None else role_counts(info)).get(role, 1)
            kld += self.floor[role] / n
        return kld

    def group_kld(self, table: ErrorTable, info: ModelInfo, tensors: Iterable[str], candidate: str) -> float | None:
        return self.predict(table, info, dict.fromkeys(tensors, candidate))

    def predict(self, table: ErrorTable, info: ModelInfo, types: Mapping[str, str]) -> float | None:
        """Expected KLD of an assignment (tensor -> type; other tensors keep the file's type)."""
        counts = role_counts(info)
        total = 0.0
        for name, c in types.items():
            k = self.tensor_kld(table, info, name, c, counts)
            if k is None:
                return None
            total += k
        return total

    @classmethod
    def fit(cls, table: ErrorTable, info: ModelInfo, passes: Sequence[FitPass], min_share: float = 0.9) -> ProxyFit:
        """Least squares in relative terms (close to the log scale: KLDs span decades). The global constant: a
        one-constant model log KLD = log c + log S, whose least-squares c is the geometric mean of KLD / S
        over every pass (S: the pass's summed error). A role's constants take the passes whose error lies
        at least `min_share` in that role: with one such pass (or passes of one type), the geometric mean
        again; with passes at two or more types, KLD = c x S + floor x A (A: the share of the role's tensors
        whose activations the pass quantizes) by least squares on the relative residuals, kept when both
        are positive. Why per role and no finer: a role's tensors share a shape and a place in the block, so
        their error turns into output damage alike, while roles differ by orders of magnitude (a tied head
        against attn_k)."""
        counts = role_counts(info)
        points: list[tuple[FitPass, dict[str, float], dict[str, float]]] = []
        for p in passes:
            by_role: dict[str, float] = {}
            act: dict[str, float] = {}
            for name, c in p.types.items():
                t = info.tensor(name)
                entry = table.errors.get(name, {}).get(ggml_types.lookup(c).name)
                if t is None or entry is None:
                    break
                r = fit_role(t, info)
                by_role[r] = by_role.get(r, 0.0) + entry.error
                if quantizes_activations(t, entry.written):
                    act[r] = act.get(r, 0.0) + 1.0 / counts.get(r, 1)
            else:
                # A pass with no weight error can still quantize activations (the tied head at q8_0 when its
                # values already lie on the q8_0 grid): it measures the floor alone.
                if p.kld > 0 and (sum(by_role.values()) > 0 or sum(act.values()) > 0):
                    points.append((p, by_role, act))
        logs = [math.log(p.kld / sum(r.values())) for p, r, _ in points if sum(r.values()) > 0]
        if not logs:
            raise GgprecError("no evaluation pass to fit the proxy on (each needs a positive KLD and measured "
                              "errors for its tensors)")
        fit = cls({}, math.exp(sum(logs) / len(logs)), len(points), table.weighting)
        for role in sorted({r for _, by, _ in points for r in by}):
            own = [(p.kld, by[role], act.get(role, 0.0)) for p, by, act in points
                   if role in by and by[role] >= min_share * sum(by.values()) and (by[role] > 0 or len(by) == 1)]
            if any(e > 0 for _, e, _ in own):
                fit.scale[role], floor = _fit_role(own)
                if floor:
                    fit.floor[role] = floor
        res = []
        for p, by, act in points:
            pred = sum(fit.role_scale(r) * e + fit.floor.get(r, 0.0) * act.get(r, 0.0) for r, e in by.items())
            fit.passes.append({**p.to_dict(), "fitted": pred})
            res.append(math.log(p.kld / pred) if pred > 0 else 0.0)
        fit.residual = math.sqrt(sum(x * x for x in res) / len(res))
        return fit

    @classmethod
    def from_prior(cls, table: ErrorTable, info: ModelInfo, candidate: str) -> ProxyFit:
        """No evaluation possible: one constant such that every proxied tensor at `candidate` adds up to the
        prior's whole-model KLD at that type (ggprec.priors), i.e. the prior spread over the tensors by
        their proxy error."""
        from .priors import weight_prior

        c = ggml_types.lookup(candidate).name
        names = list(table.errors)
        s = table.group_error(names, c)
        n_params = sum(t.n_elements for t in proxy_tensors(info))
        prior = weight_prior(c, n_params)
        scale = prior.kld / s if s else 0.0
        text = prior.source.removeprefix("prior:").strip()
        return cls({}, scale, 0, table.weighting, prior_source=f"{text}, spread over the tensors by the proxy")

    def to_dict(self) -> dict[str, Any]:
        return {"scale": dict(self.scale), "default_scale": self.default_scale, "n_passes": self.n_passes,
                "weighting": self.weighting, "passes": list(self.passes), "prior_source": self.prior_source,
                "residual": self.residual, "floor": dict(self.floor), "source": self.source}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProxyFit:
        return cls(dict(doc["scale"]), float(doc["default_scale"]), int(doc["n_passes"]), str(doc["weighting"]),
                   list(doc.get("passes", [])), doc.get("prior_source"), doc.get("residual"),
                   dict(doc.get("floor") or {}))


def _fit_role(points: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """(scale, floor) of KLD = scale x S + floor x A through (KLD, S, A) points, minimising the relative
    residuals; (geometric mean of KLD / S, 0) when the points cannot separate the two or give a negative."""
    pos = [(k, s) for k, s, _ in points if s > 0]  # at least one: the caller checks
    geo = math.exp(sum(math.log(k / s) for k, s in pos) / len(pos))
    if len({round(math.log(s), 6) if s > 0 else None for _, s, _ in points}) < 2 or not any(a > 0 for *_, a in points):
        return geo, 0.0
    # Normal equations of sum ((c S + f A) / K - 1)^2.
    ss = sum((s / k) ** 2 for k, s, _ in points)
    sa = sum(s * a / k**2 for k, s, a in points)
    aa = sum((a / k) ** 2 for k, _, a in points)
    s1 = sum(s / k for k, s, _ in points)
    a1 = sum(a / k for k, _, a in points)
    det = ss * aa - sa * sa
    if det <= 0:
        return geo, 0.0
    c = (s1 * aa - a1 * sa) / det
    f = (ss * a1 - sa * s1) / det
    if c <= 0 or f < 0:
        return geo, 0.0
    return c, f


# --- evaluation passes, the history --------------------------------------------------------------------


FIT_TYPES = ("q4_0", "q8_0")  # a coarse and a fine type per role: the scale, and the activation floor


def run_fit_passes(model: str | os.PathLike[str], info: ModelInfo, types: Sequence[str] = FIT_TYPES,
                   grouping: str = "role", n_bands: int = 4, text: str | None = None, n_ctx: int = 512,
                   chunks: int | None = 4, threads: int = 2, progress: Progress | None = None) -> list[FitPass]:
    """The passes a fit takes: each group of `grouping` ("role": one per role and the tied head, 8 on
    SmolLM2) alone at each of `types` (default q4_0 and q8_0: 16 passes on SmolLM2), written by llama.cpp's
    quantizer and evaluated against the model itself (so the KLD is relative to the file, like the proxy).
    A group already at a type is skipped for it."""
    import tempfile
    import warnings

    from .evaluate import check_text, default_text
    from .quantize import RequantizeWarning
    from .sensitivity import probe_pass, sensitivity_groups

    path = Path(model)
    check_text(path, default_text() if text is None else text, n_ctx, chunks)  # before any pass
    todo = [(g, c.name) for c in dict.fromkeys(_candidate(x) for x in types)
            for g in sensitivity_groups(info, grouping, n_bands)
            if any(_targets(t, [c])[0].written != t.type for t in g.tensors)]
    passes = []
    parent = path.parent if os.access(path.parent, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="ggprec-proxyfit-", dir=parent) as tmp:
        for i, (g, c) in enumerate(todo):
            if progress:
                progress(f"fit pass {g.key} at {c}", i, len(todo))
            with warnings.catch_warnings():  # requantizing a quantized source is what is measured here
                warnings.simplefilter("ignore", RequantizeWarning)
                _, _, r = probe_pass(path, info, g, c, Path(tmp) / f"fit-{i}.gguf", text, n_ctx, chunks, threads)
            passes.append(FitPass(f"{g.key} at {c}", {t.name: c for t in g.tensors}, r.kld_mean))
    if progress:
        progress("done", len(todo), len(todo))
    return passes


def stored_passes(model: str | os.PathLike[str], db: str | os.PathLike[str] | None = None) -> list[FitPass]:
    """Passes `ggprec sensitivity` stored for this very file (sha256) against itself: every group at every
    type it measured (baseline 0, so each KLD is relative to the file, like the proxy)."""
    from .hashing import model_sha256
    from .store import Store

    path = Path(model)
    out: list[FitPass] = []
    with Store(db) as s:
        rows = s.query(kind="sensitivity", model=str(path.resolve()))
        if not rows:
            return out
        sha = model_sha256(path)
        seen: set[tuple[frozenset[str], str]] = set()
        for row in rows:  # newest first: an identical older pass is skipped
            res = row.results
            ref = row.settings.get("reference") or res.get("reference") or ""
            if row.model_sha256 != sha or res.get("baseline_kld") != 0.0 or Path(ref).resolve() != path.resolve():
                continue
            for item in [*res.get("groups", []), *(res.get("also_groups") or [])]:
                for t, k in (item.get("kld_at") or {}).items():
                    key = (frozenset(item["tensors"]), t)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(FitPass(f"{item['key']} at {t} (history #{row.id})",
                                       {n: t for n in item["tensors"]}, float(k)))
    return out


def store_fit(fit: ProxyFit, model: str | os.PathLike[str], probe_type: str, max_rows: int | None,
              imatrix_path: str | os.PathLike[str] | None = None, db: str | os.PathLike[str] | None = None) -> int:
    """Keep a fit in the history (kind proxy-fit, keyed by the model's sha256); returns the row id."""
    from .hardware import fingerprint
    from .hashing import model_sha256
    from .records import ProxyFitRecord
    from .store import Store

    imx_sha = None if imatrix_path is None else model_sha256(imatrix_path)
    doc = fit.to_dict()
    rec = ProxyFitRecord(scale=doc["scale"], default_scale=doc["default_scale"], n_passes=doc["n_passes"],
                         weighting=doc["weighting"], imatrix=None if imatrix_path is None else str(imatrix_path),
                         imatrix_sha256=imx_sha, probe_type=probe_type, residual=doc["residual"],
                         passes=doc["passes"], prior_source=doc["prior_source"], source=doc["source"],
                         max_rows=max_rows, floor=doc["floor"])
    with Store(db) as s:
        return s.record(rec, model_path=model, model_sha256=model_sha256(model),
                        settings={"weighting": fit.weighting, "imatrix_sha256": imx_sha, "probe_type": probe_type},
                        hardware=fingerprint())


def find_fit(model: str | os.PathLike[str], weighting: str = "uniform",
             imatrix_path: str | os.PathLike[str] | None = None,
             db: str | os.PathLike[str] | None = None) -> tuple[ProxyFit, int] | None:
    """The newest stored fit of this model file (sha256) for this weighting (and importance matrix), with its
    history id; None when there is none."""
    from .hashing import model_sha256
    from .store import Store

    path = Path(model)
    with Store(db) as s:
        rows = s.query(kind="proxy-fit", model=str(path.resolve()))
        if not rows:
            return None
        sha = model_sha256(path)
        imx_sha = None if imatrix_path is None else model_sha256(imatrix_path)
        for row in rows:
            rec = row.results
            if row.model_sha256 == sha and rec["weighting"] == weighting and rec["imatrix_sha256"] == imx_sha:
                return ProxyFit.from_dict(rec), row.id
    return None


def model_fit(model: str | os.PathLike[str], info: ModelInfo, table: ErrorTable, probe_type: str = "q4_0",
              imatrix_path: str | os.PathLike[str] | None = None, db: str | os.PathLike[str] | None = None,
              use_stored: bool = True) -> tuple[ProxyFit, int | None]:
    """The fit to use for this model and table: the newest stored one of the same weighting (with its
    history id), else the prior at `probe_type` spread by the proxy (id None). What recommend calls."""
    found = find_fit(model, table.weighting, imatrix_path, db) if use_stored else None
    if found is not None:
        return found
    return ProxyFit.from_prior(table, info, probe_type), None


# --- `ggprec sensitivity --proxy` ----------------------------------------------------------------------


@dataclass
class ProxyGroup:
    key: str
    role: str
    layers: list[int]
    tensors: list[str]
    n_params: int
    written: str  # the types llama.cpp writes for the probe
    error: float | None  # summed proxy error of the group's tensors at the probe type
    kld: float | None  # expected KLD increase at the probe type
    kld_at: dict[str, float | None] = field(default_factory=dict)  # at every measured type
    error_at: dict[str, float | None] = field(default_factory=dict)
    source: str = ""  # of the expected KLDs: `proxy: fitted on N passes` or `prior: ...`


@dataclass
class ProxySensitivity:
    model: str
    probe_type: str
    also: list[str]
    grouping: str
    weighting: str
    source: str  # where the expected KLDs come from: `proxy: fitted on N passes` or `prior: ...`
    groups: list[ProxyGroup]
    fit: ProxyFit
    table: ErrorTable
    seconds_proxy: float
    seconds_fit: float = 0.0
    fit_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        return [g.key for g in sorted(self.groups, key=lambda g: (-(g.kld if g.kld is not None else -1.0), g.key))]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "probe_type": self.probe_type, "also": self.also, "grouping": self.grouping,
                "weighting": self.weighting, "source": self.source, "groups": [asdict(g) for g in self.groups],
                "ranking": self.ranking(), "fit": self.fit.to_dict(), "fit_id": self.fit_id,
                "proxy": self.table.describe(), "max_rows": self.table.max_rows,
                "seconds_proxy": self.seconds_proxy, "seconds_fit": self.seconds_fit, "notes": self.notes}


def load_imatrix(path: str | os.PathLike[str], info: ModelInfo) -> ColumnWeights:
    """An importance matrix file through ggprec.imatrix_file (checked against the model where that module
    offers a check); one line when this build lacks the module."""
    try:
        from . import imatrix_file  # type: ignore[attr-defined]
    except ImportError:
        raise GgprecError("importance matrices need ggprec.imatrix_file, which this build of ggprec lacks") from None
    imx = imatrix_file.read_imatrix(path)
    check = getattr(imatrix_file, "check_imatrix", None)
    if check is not None:
        check(imx, info)
    if not callable(getattr(imx, "column_weights", None)):
        raise GgprecError(f"{path}: this importance matrix offers no column weights")
    return imx  # type: ignore[no-any-return]


def proxy_sensitivity(model: str | os.PathLike[str], probe_type: str = "q4_0", also: Sequence[str] = (),
                      grouping: str = "role-layer", n_bands: int = 4,
                      imatrix_path: str | os.PathLike[str] | None = None,
                      fit: bool = False, threads: int | None = None, max_rows: int | None = MAX_ROWS,
                      text: str | None = None, n_ctx: int = 512, chunks: int | None = 4, use_stored: bool = True,
                      progress: Progress | None = None, db: str | os.PathLike[str] | None = None) -> ProxySensitivity:
    """Every group's expected KLD at the probe (and `also`) types from one streaming pass of the proxy.
    Expected KLD: `fit` runs the evaluation passes now (run_fit_passes, one per role) and stores the fit;
    otherwise the newest stored fit of this model and weighting; otherwise the prior spread by the proxy."""
    from .gguf_info import read_gguf
    from .sensitivity import sensitivity_groups

    path = Path(model)
    info = read_gguf(path)
    probe = _candidate(probe_type).name
    extra = [c for c in dict.fromkeys(_candidate(a).name for a in also) if c != probe]
    groups = sensitivity_groups(info, grouping, n_bands)
    imatrix = None if imatrix_path is None else load_imatrix(imatrix_path, info)
    names = list(dict.fromkeys(t.name for g in groups for t in g.tensors))
    table = error_table(path, info, [probe, *extra], imatrix, threads, progress, max_rows, tensors=names)
    notes = list(table.notes)
    t0 = time.perf_counter()
    fit_id = None
    if fit:
        types = list(dict.fromkeys([probe, *FIT_TYPES[1:]]))
        passes = run_fit_passes(path, info, types, "role", n_bands, text, n_ctx, chunks, threads or 2, progress)
        if use_stored:
            passes += stored_passes(path, db)
        the_fit = ProxyFit.fit(table, info, passes)
        fit_id = store_fit(the_fit, path, probe, max_rows, imatrix_path, db)
    else:
        the_fit, fit_id = model_fit(path, info, table, probe, imatrix_path, db, use_stored)
        if fit_id is None:
            notes.append("no fit stored for this model and weighting: the prior spread by the proxy "
                         "(a fit, two evaluation passes per role, is kept once it is run)")
    seconds_fit = time.perf_counter() - t0
    rows = []
    for g in groups:
        tn = [t.name for t in g.tensors]
        written = sorted({table.errors[n][probe].written for n in tn if probe in table.errors[n]})
        kld_at = {c: the_fit.group_kld(table, info, tn, c) for c in [probe, *extra]}
        error_at = {c: table.group_error(tn, c) for c in [probe, *extra]}
        rows.append(ProxyGroup(g.key, g.role, list(g.layers), tn, g.n_params, "/".join(written), error_at[probe],
                               kld_at[probe], kld_at, error_at, the_fit.source))
    return ProxySensitivity(str(path), probe, extra, grouping, table.weighting, the_fit.source, rows, the_fit, table,
                            table.seconds, seconds_fit, fit_id, notes)


def render(res: ProxySensitivity, console: Any) -> None:
    """The groups ranked by expected KLD, each figure with its source."""
    from rich.table import Table

    order = res.ranking()
    by_key = {g.key: g for g in res.groups}
    t = Table(title=f"sensitivity by proxy: one group at {res.probe_type} ({res.grouping}), {res.weighting} weights")
    for name in ("rank", "group", "written", f"error at {res.probe_type}", f"KLD + at {res.probe_type}",
                 *(f"KLD + at {a}" for a in res.also)):
        t.add_column(name, justify="left" if name in ("group", "written") else "right")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for i, key in enumerate(order, 1):
        g = by_key[key]
        t.add_row(str(i), g.key, g.written, fmt(g.error, ".3e"), fmt(g.kld, ".3e"),
                  *(fmt(g.kld_at.get(a), ".3e") for a in res.also))
    t.caption = f"expected KLD: {res.source}"
    console.print(t)
    console.print(f"proxy: {res.table.describe()}", highlight=False)
    fit = res.fit
    if fit.n_passes:
        where = f" (history #{res.fit_id})" if res.fit_id is not None else ""
        console.print(f"fit{where}: {fit.source}, rms log error {fit.residual:.2f}; scale per role: "
                      + ", ".join(f"{r} {c:.3g}" for r, c in sorted(fit.scale.items()))
                      + f"; other roles {fit.default_scale:.3g}", highlight=False)
    for n in res.notes:
        console.print(f"- {n}", highlight=False)
