"""Write a Plan as a GGUF with llama.cpp's own quantizer (`llama_model_quantize` via llama-cpp-python).

How the plan reaches llama.cpp: every quantizable tensor gets an exact, anchored `tt_overrides` pattern
(`^blk\\.3\\.attn_q\\.weight$`; llama.cpp searches patterns unanchored, first match wins), token_embd and
output.weight go through `token_embedding_type` / `output_tensor_type`. llama.cpp consults the
overrides only when the base ftype is a quantized type, so a plan whose weights are not all one type
gets a quantized base ftype and an override for every tensor; a plan of one type uses that type's
ftype. A split output head (a separate `output.weight` for a tied model) needs a tensor llama.cpp's
quantizer cannot add, so ggprec first writes an intermediate GGUF with a copy of token_embd as
`output.weight` (the source's header and data copied byte for byte, one tensor info added) and
quantizes that.

Split models (`name-00001-of-00003.gguf`): llama.cpp's quantizer loads every shard when given the first
(llama_model_loader), so ggprec passes the first shard whichever shard the user named, and writes one
file; `keep_split` asks llama.cpp to write one output shard per source shard instead. A split head of a
split model is written as a split model too: the first shard rewritten with the extra tensor, the
others linked, so no shard but the first is copied.

The written file is re-read and every tensor's type compared with the plan before it is renamed
into place.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import struct
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import ggml_types, interrupts
from .errors import GgprecError, safe_text
from .fileio import atomic_output, check_output, temporary_directory
from .gguf_info import SPLIT_TENSORS, ModelInfo, read_gguf, split_path
from .gguf_layout import (
    PREAMBLE_SIZE,
    SCALAR_FORMATS,
    encode_tensor_info,
    find_scalar_kv,
    ggml_n_dims,
    padding,
    string_size,
)
from .hashing import model_sha256
from .plan import OUTPUT, TOKEN_EMBD, Plan, metadata_end, quantizable, resolve_plan, with_added_metadata
from .profile import Profile
from .progress import Progress
from .tensor_overrides import anchored

if TYPE_CHECKING:
    from .imatrix_file import Imatrix
    from .llama_backend import LogCapture

# progress(stage, done, total) while quantizing: stage is the tensor llama.cpp is writing.

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


class RequantizeWarning(UserWarning):
    """The source is already quantized: the result's quality is bounded by the source's."""


def base_ftype(plan: Plan) -> int:
    """The llama_ftype to quantize with: the single type of the plan's weights, else the quantized type
    holding most bytes (llama.cpp ignores per-tensor overrides under a non-quantized base)."""
    by_type: Counter[str] = Counter()
    for t in plan.tensors:
        if quantizable(t.name, t.shape) and t.name not in (TOKEN_EMBD, OUTPUT):
            by_type[t.type.name] += t.n_bytes
    if not by_type:
        by_type.update(t.type.name for t in plan.tensors if quantizable(t.name, t.shape))
    if len(by_type) == 1:
        only = ggml_types.lookup(next(iter(by_type)))
        if only.ftype is not None:
            return only.ftype
    quantized = [(n, name) for name, n in by_type.items() if ggml_types.lookup(name).quantized]
    if not quantized:
        return ggml_types.lookup("q8_0").ftype or 7  # only to enable the overrides; each tensor is named
    ftype = ggml_types.lookup(max(quantized)[1]).ftype
    if ftype is None:
        raise GgprecError(f"no llama.cpp file type for {max(quantized)[1]}")
    return ftype


# The metadata llama-quantize adds when it is given an imatrix (tools/quantize/quantize.cpp, as kv
# overrides: strings cut to 127 bytes, counts written as u32).
IMATRIX_FILE_KEY = "quantize.imatrix.file"
IMATRIX_DATASET_KEY = "quantize.imatrix.dataset"
IMATRIX_ENTRIES_KEY = "quantize.imatrix.entries_count"
IMATRIX_CHUNKS_KEY = "quantize.imatrix.chunks_count"
_KV_STR_MAX = 127


def imatrix_metadata(imx: Imatrix, path: str | os.PathLike[str] | None) -> dict[str, str | int]:
    """The `quantize.imatrix.*` pairs llama-quantize writes for this imatrix: the file as named (when
    there is one), the first dataset, the entry count, the chunk count (when known)."""
    out: dict[str, str | int] = {}
    if path is not None:
        out[IMATRIX_FILE_KEY] = _kv_str(str(path))
    if imx.datasets:
        out[IMATRIX_DATASET_KEY] = _kv_str(imx.datasets[0])
    out[IMATRIX_ENTRIES_KEY] = len(imx.entries)
    if imx.chunk_count > 0:
        out[IMATRIX_CHUNKS_KEY] = imx.chunk_count
    return out


def _kv_str(s: str) -> str:
    """A string as a llama_model_kv_override holds it: at most 127 bytes (cut on a character boundary)."""
    return s.encode()[:_KV_STR_MAX].decode("utf-8", "ignore")


def _pair_bytes(key: str, value: str | int) -> int:
    """Bytes of one GGUF key-value pair: the key, the value type, a u32 or a string."""
    value_bytes = 4 if isinstance(value, int) else 8 + len(value.encode())
    return 8 + len(key.encode()) + 4 + value_bytes


def check_imatrix_for_plan(plan: Plan, info: ModelInfo, imx: Imatrix | None) -> None:
    """One-line refusals before the quantizer starts: a type that needs an imatrix without one (or
    without an entry for that tensor), and an imatrix that does not belong to the model."""
    from .imatrix_file import check_imatrix

    if imx is not None:
        extra = tuple((t.name, t.shape) for t in plan.tensors if t.split)
        check_imatrix(imx, info, extra)
    ftype = base_ftype(plan)
    for t in plan.tensors:
        if not quantizable(t.name, t.shape):
            continue
        if imx is None and ggml_types.needs_imatrix(t.type, ftype, t.name):
            # llama.cpp refuses these even where the tensor keeps its type
            raise GgprecError(f"{t.type.name} needs an importance matrix (llama.cpp refuses to write "
                              f"{t.name} in it without one): collect one with `ggprec imatrix`")
        if t.type == t.source_type or (imx is not None and t.name in imx.entries):
            continue
        if t.type.name in ggml_types.NEEDS_DATA_PER_TENSOR:  # ggml would abort the quantizer
            why = ("no matrix product reads it, so no imatrix has data for it" if t.name == TOKEN_EMBD
                   else "the importance matrix has no entry for it" if imx is not None else "there is no imatrix")
            raise GgprecError(f"{t.name} cannot be written in {t.type.name}: ggml quantizes it only with "
                              f"importance data for that tensor, and {why}; give it another type")
        if imx is not None and ggml_types.needs_imatrix(t.type, ftype, t.name):
            raise GgprecError(f"the importance matrix has no entry for {t.name}, which {t.type.name} needs")


class QuantizeCall:
    """The ctypes parameter block for one llama_model_quantize call; keeps its buffers alive."""

    def __init__(self, plan: Plan, threads: int | None, imatrix: Imatrix | None = None,
                 imatrix_path: str | os.PathLike[str] | None = None) -> None:
        from .llama_bindings import load
        llama_cpp = load()

        p = llama_cpp.llama_model_quantize_default_params()
        p.nthread = threads or 0
        p.ftype = base_ftype(plan)
        p.allow_requantize = plan.requantize
        p.pure = True  # never llama.cpp's own mixes: every type comes from the plan
        types = plan.tensor_types()
        self.type_ids = {t.type_id for t in types.values() if t.quantized}
        if TOKEN_EMBD in types and quantizable(TOKEN_EMBD, self._shape(plan, TOKEN_EMBD)):
            p.token_embedding_type = types[TOKEN_EMBD].type_id
        if OUTPUT in types and quantizable(OUTPUT, self._shape(plan, OUTPUT)):
            p.output_tensor_type = types[OUTPUT].type_id
        # A tensor of the base type needs no pattern: llama.cpp gives it that type (the plan already holds
        # any fallback). Fewer patterns, fewer regex searches: none at all for a one-type plan.
        base = ggml_types.BY_FTYPE[p.ftype].type_id
        named = [t for t in plan.tensors if quantizable(t.name, t.shape) and t.name not in (TOKEN_EMBD, OUTPUT)
                 and t.type.type_id != base]
        self.patterns = [anchored(t.name).encode() for t in named]
        arr = (llama_cpp.llama_model_tensor_override * (len(named) + 1))()
        for i, (t, pat) in enumerate(zip(named, self.patterns, strict=True)):
            arr[i].pattern = pat
            arr[i].type = t.type.type_id
        arr[len(named)].pattern = None  # NULL-terminated
        self.overrides = arr
        p.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        self.params = p
        if imatrix is not None:
            self._attach_imatrix(imatrix, imatrix_path)

    def _attach_imatrix(self, imx: Imatrix, path: str | os.PathLike[str] | None) -> None:
        """params.imatrix: a NULL-name-terminated array of {name, data, size}, the data each weight's
        mean squared activations (what llama-quantize hands over), and the `quantize.imatrix.*` keys as
        kv overrides. The arrays live on self: the forked child quantizes from this same memory."""
        import numpy as np

        from .llama_bindings import load

        llama_cpp = load()
        p = self.params
        names = sorted(imx.entries)
        self.imatrix_names = [n.encode() for n in names]
        self.imatrix_data = [np.ascontiguousarray(imx.entries[n].mean(), dtype=np.float32) for n in names]
        arr = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
        for i, (name, data) in enumerate(zip(self.imatrix_names, self.imatrix_data, strict=True)):
            arr[i].name = name
            arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = data.size
        arr[len(names)].name = None  # the terminator
        self.imatrix_array = arr
        p.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        pairs = imatrix_metadata(imx, path)
        kvs = (llama_cpp.llama_model_kv_override * (len(pairs) + 1))()
        for i, (key, value) in enumerate(pairs.items()):
            kvs[i].key = key.encode()
            if isinstance(value, int):
                kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                kvs[i].value.val_i64 = value
            else:
                kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                kvs[i].value.val_str = value.encode()
        kvs[len(pairs)].key = b""  # the terminator: an empty key
        self.kv_overrides = kvs
        p.kv_overrides = ctypes.cast(kvs, ctypes.POINTER(llama_cpp.llama_model_kv_override))

    def keep_split(self) -> None:
        """Write one output shard per source shard (llama.cpp names them `OUT-0000k-of-0000N.gguf`)."""
        self.params.keep_split = True

    @staticmethod
    def _shape(plan: Plan, name: str) -> tuple[int, ...]:
        return next(t.shape for t in plan.tensors if t.name == name)

    def run(self, source: Path, out: Path, progress: Progress | None) -> None:
        """llama_model_quantize(source -> out) in a forked child process.

        llama.cpp's quantizer has no way to be cancelled, and a Python exception raised in its log
        callback is only printed ("Exception ignored"), so the call runs in a child that the parent kills
        when it is interrupted (SIGINT/SIGTERM under interrupts.guard(), or KeyboardInterrupt). fork, not
        spawn: the child starts in milliseconds with llama_cpp already imported and the parameter block
        already built. The child reports progress lines and the result over a pipe."""
        from .llama_bindings import load
        load()  # imported before the fork, so the child has it

        self._init_tables()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 70
            try:
                os.close(read_fd)
                self._child(source, out, write_fd, progress is not None)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        try:
            rc, error = _follow_child(read_fd, progress)
        except BaseException:
            os.kill(pid, signal.SIGKILL)  # nothing in the quantizer's state is worth waiting for
            os.waitpid(pid, 0)
            raise
        finally:
            os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            raise GgprecError(f"llama.cpp's quantizer was killed by {signal.Signals(os.WTERMSIG(status)).name} "
                              f"while writing {out}")
        if rc is None:
            raise GgprecError(f"llama.cpp's quantizer exited with code {os.waitstatus_to_exitcode(status)} "
                              f"before finishing {out}")
        if rc != 0:
            raise GgprecError(f"llama.cpp could not quantize {source}: {error or f'code {rc}'}")

    def _init_tables(self) -> None:
        """Build ggml's IQ lookup grids here, before the fork. ggml builds them on first use with OpenMP;
        OpenMP in a forked child whose parent already ran OpenMP threads (any llama.cpp inference, e.g.
        collecting an importance matrix) deadlocks in libgomp. Built once per process, a no-op after."""
        from .ggml_lib import base

        for type_id in sorted(self.type_ids):
            base().ggml_quantize_init(type_id)

    def _child(self, source: Path, out: Path, write_fd: int, with_progress: bool) -> None:
        from .llama_bindings import load
        llama_cpp = load()

        from .llama_backend import LogCapture, capture_log

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides: it kills this process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent()

        def send(message: list[Any]) -> None:
            os.write(write_fd, json.dumps(message).encode() + b"\n")

        log = _progress_log(lambda name, done, total: send(["progress", name, done, total])) if with_progress \
            else LogCapture()
        with capture_log(log):
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(self.params))
        errors = log.errors()
        send(["result", rc, safe_text(errors[-1], 300) if errors else None])  # llama.cpp's line may quote a name


def _follow_child(read_fd: int, progress: Progress | None) -> tuple[int | None, str | None]:
    """Read the child's messages until it closes the pipe; returns (llama_model_quantize's return code,
    its last error line), (None, None) when the child ended without reporting. Polls so that a signal
    noted without being raised is still seen within a fraction of a second."""
    import select

    rc: int | None = None
    error: str | None = None
    buf = b""
    while True:
        interrupts.check()
        ready, _, _ = select.select([read_fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return rc, error
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if message[0] == "progress" and progress is not None:
                progress(message[1], message[2], message[3])
            elif message[0] == "result":
                rc, error = message[1], message[2]


def _die_with_parent() -> None:
    """Ask Linux to kill this (child) process if the parent dies first, e.g. by SIGKILL, so no quantizer
    goes on writing a file nobody will clean up. Elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _progress_log(report: Callable[[str, int, int], None]) -> LogCapture:
    """A LogCapture that also reports each `[ n/ N] tensor` line llama.cpp's quantizer logs as
    (tensor name, n, N)."""
    from .llama_backend import LogCapture

    class _Lines(LogCapture):
        def _feed(self, level: int, text: str) -> None:
            n = len(self.lines)
            super()._feed(level, text)
            for _, line in self.lines[n:]:
                m = _TENSOR_LINE.match(line)
                if m:
                    report(m.group(3), int(m.group(1)), int(m.group(2)))

    return _Lines()


def write_split_head(info: ModelInfo, target: Path) -> Path:
    """Copy the model `info` to `target` with one more tensor, `output.weight`, a copy of token_embd;
    return the path to quantize from.

    The metadata is copied byte for byte (re-encoding a 49k-token vocabulary through gguf-py takes
    seconds) and the tensor data is streamed with copy_file_range; only the tensor infos are new. A split
    model stays split: its first shard is rewritten (the new tensor added to it, split.tensors.count
    raised by one in place) as `target`'s stem + `-00001-of-0000N.gguf`, the other shards are linked
    beside it under the names llama.cpp looks for."""
    embd = info.tensor(TOKEN_EMBD)
    if embd is None:
        raise GgprecError(f"{info.path}: no {TOKEN_EMBD} to split an output head from")
    kv_end = metadata_end(info)
    align = info.alignment
    entries = [(t.name, t) for t in info.tensors if t.shard == 0] + [(OUTPUT, embd)]
    infos, offset = bytearray(), 0
    for name, t in entries:
        infos += encode_tensor_info(name, t.shape[:ggml_n_dims(t.shape)], t.type.type_id, offset)
        offset += t.n_bytes + padding(t.n_bytes, align)
    with open(info.path, "rb") as fin:
        header = bytearray(fin.read(kv_end))
    header[8:PREAMBLE_SIZE] = struct.pack("<QQ", len(entries), struct.unpack_from("<Q", header, 16)[0])
    first = target
    if info.is_split:
        n = len(info.shards)
        prefix = target.with_suffix("")
        first = split_path(prefix, 0, n)
        found = find_scalar_kv(header, PREAMBLE_SIZE, kv_end, SPLIT_TENSORS)
        if found is None:
            raise GgprecError(f"{info.path}: split model without {SPLIT_TENSORS}")
        type_at = found[0] + string_size(SPLIT_TENSORS)
        fmt = SCALAR_FORMATS[struct.unpack_from("<I", header, type_at)[0]]
        fmt.pack_into(header, type_at + 4, fmt.unpack_from(header, type_at + 4)[0] + 1)
        for k in range(1, n):
            split_path(prefix, k, n).symlink_to(info.shards[k].resolve())
    sources = [open(p, "rb") for p in info.shards]  # noqa: SIM115 - closed below
    try:
        with open(first, "wb") as fout:
            fout.write(header)
            fout.write(infos)
            fout.write(b"\0" * padding(fout.tell(), align))
            for _, t in entries:
                _copy_range(sources[t.shard], fout, t.offset, t.n_bytes)
                fout.write(b"\0" * padding(t.n_bytes, align))
    finally:
        for f in sources:
            f.close()
    return first


def _copy_range(fin: BinaryIO, fout: BinaryIO, offset: int, n: int) -> None:
    fout.flush()
    while n > 0:
        try:
            done = os.copy_file_range(fin.fileno(), fout.fileno(), n, offset)
        except (AttributeError, OSError):  # not Linux, or across file systems: plain reads
            fin.seek(offset)
            fout.seek(0, os.SEEK_END)
            while n > 0:
                chunk = fin.read(min(n, 1 << 24))
                fout.write(chunk)
                n -= len(chunk)
            return
        if done == 0:
            raise GgprecError(f"{fin.name}: ends inside tensor data")
        offset += done
        n -= done
    fout.seek(0, os.SEEK_END)


def _written_types(out: Path, plan: Plan) -> dict[str, int] | None:
    """Tensor name -> type id read from the tensor infos of `out`, which start where the plan says the
    metadata ends (skipping a walk over a large vocabulary); None if they do not parse there."""
    try:
        with open(out, "rb") as f:
            head = f.read(24)
            if head[:4] != b"GGUF":
                return None
            n_tensors, _ = struct.unpack_from("<QQ", head, 8)
            f.seek(24 + plan.written_kv_bytes)
            buf = f.read(n_tensors * (8 + 256 + 4 + 8 * 4 + 4 + 8))
        types, pos = {}, 0
        for _ in range(n_tensors):
            (n,) = struct.unpack_from("<Q", buf, pos)
            if n > 256:
                return None
            name = buf[pos + 8 : pos + 8 + n].decode()
            pos += 8 + n
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            if not 1 <= n_dims <= 4:
                return None
            pos += 4 + 8 * n_dims
            types[name] = struct.unpack_from("<I", buf, pos)[0]
            pos += 12
        return types
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def verify(out: Path, plan: Plan) -> None:
    """Raise unless the file at `out` holds exactly the plan's tensors in the plan's types."""
    planned = plan.tensor_types()
    fast = _written_types(out, plan)
    if fast is not None and set(fast) == set(planned) and all(fast[n] == t.type_id for n, t in planned.items()):
        return
    written = {t.name: t.type for t in read_gguf(out).tensors}  # the full, bounds-checked reader says why
    if set(written) != set(planned):
        extra = sorted(set(written) - set(planned))
        missing = sorted(set(planned) - set(written))
        raise GgprecError(f"{out}: tensors differ from the plan (extra: {safe_text(extra[:3])}, "
                          f"missing: {safe_text(missing[:3])})")
    wrong = [f"{n} is {written[n].name}, planned {t.name}" for n, t in planned.items() if written[n] != t]
    if wrong:
        raise GgprecError(f"{out}: {len(wrong)} tensor(s) differ from the plan, e.g. {safe_text(wrong[0], 200)}")


def quantize(source: str | os.PathLike[str], plan: Plan, out: str | os.PathLike[str], threads: int | None = None,
             force: bool = False, progress: Progress | None = None, keep_split: bool = False,
             imatrix: Imatrix | None = None, imatrix_path: str | os.PathLike[str] | None = None) -> Path:
    """Write `plan` applied to `source` (any shard of a split model) to `out` with llama.cpp's quantizer;
    return `out`. keep_split: a split model is written as one output shard per source shard, named
    `out`'s stem + `-0000k-of-0000N.gguf`; the first is returned. imatrix (or imatrix_path, read when
    imatrix is None): the importance matrix llama.cpp weighs the rounding error with; the types that
    need one are refused without it, and the file gets llama-quantize's `quantize.imatrix.*` keys."""
    src = Path(source)
    info = None
    if not _same_file(src, plan):
        info = read_gguf(src)  # every shard: a missing or inconsistent one is a one-line error here
        if {t.name for t in info.tensors} != {t.name for t in plan.tensors if not t.split}:
            raise GgprecError(f"{src}: the plan was resolved for a different model ({plan.source})")
    if threads is not None and threads < 1:
        raise GgprecError(f"threads must be at least 1 (got {threads})")
    if info is None and (plan.split_output or keep_split):
        info = read_gguf(src)
    shards = info.shards if info is not None else [src]
    if keep_split and len(shards) < 2:
        raise GgprecError(f"{src}: not a split model (keep_split writes one output shard per source shard)")
    targets = _split_targets(Path(out), len(shards)) if keep_split else [Path(out)]
    for target in targets:
        for shard in shards:
            check_output(target, force=force, source=shard)
    if plan.requantize:
        warnings.warn(f"{src.name} is already quantized: the result's quality is bounded by the source's",
                      RequantizeWarning, stacklevel=2)
    if imatrix is None and imatrix_path is not None:
        from .imatrix_file import read_imatrix

        imatrix = read_imatrix(imatrix_path)
    if info is None and (imatrix is not None or any(ggml_types.needs_imatrix(t.type) for t in plan.tensors)):
        info = read_gguf(src)
    if info is not None:
        check_imatrix_for_plan(plan, info, imatrix)
    call = QuantizeCall(plan, threads, imatrix, imatrix_path)
    if imatrix is not None:
        assert info is not None  # read above
        plan = plan_with_imatrix(plan, info, imatrix, imatrix_path)  # its metadata, for verify()
    if keep_split:
        assert info is not None  # read above
        return _quantize_keep_split(info, plan, call, targets, progress)
    with atomic_output(targets[0], force=force, source=shards[0]) as tmp:
        if plan.split_output:
            assert info is not None  # read above
            with temporary_directory(targets[0].parent, ".ggprec-split-") as d:
                call.run(write_split_head(info, d / "split-head.gguf"), tmp, progress)
        else:
            call.run(shards[0], tmp, progress)  # llama.cpp loads the other shards of a split model itself
        verify(tmp, plan)
    return targets[0]


def plan_with_imatrix(plan: Plan, info: ModelInfo, imx: Imatrix, path: str | os.PathLike[str] | None) -> Plan:
    """The plan as written with an imatrix: its `quantize.imatrix.*` keys counted in the metadata and
    the predicted file size."""
    pairs = {k: _pair_bytes(k, v) for k, v in imatrix_metadata(imx, path).items()}
    return with_added_metadata(plan, info, pairs)


def _split_targets(out: Path, n: int) -> list[Path]:
    prefix = out.with_suffix("") if out.suffix == ".gguf" else out
    return [split_path(prefix, k, n) for k in range(n)]


def _quantize_keep_split(info: ModelInfo, plan: Plan, call: QuantizeCall, targets: list[Path],
                         progress: Progress | None) -> Path:
    """llama.cpp writes the shards into a temporary directory beside the targets; they are checked as one
    model and renamed into place only when all are complete."""
    call.keep_split()
    with temporary_directory(targets[0].parent, ".ggprec-quantize-") as d:
        source = write_split_head(info, d / "split-head.gguf") if plan.split_output else info.path
        prefix = d / "out"
        call.run(source, prefix, progress)  # llama.cpp names the outputs llama_split_path(prefix, k, n)
        written = _split_targets(prefix, len(targets))
        verify(written[0], plan)
        for w, t in zip(written, targets, strict=True):
            os.replace(w, t)
    return targets[0]


def _same_file(src: Path, plan: Plan) -> bool:
    try:
        return src.resolve() == Path(plan.source).resolve() and src.stat().st_size == plan.source_file_size
    except OSError:
        return False


def variants_dir() -> Path:
    from .demo_model import cache_dir

    return cache_dir() / "variants"


def build_variant(source: str | os.PathLike[str], profile: Profile, threads: int | None = None,
                  progress: Progress | None = None) -> Path:
    """The file `profile` makes of `source`, built once and cached by source sha256 and plan (and the
    hash of the profile's importance matrix, when it has one)."""
    src = Path(source)
    info = read_gguf(src)
    plan = resolve_plan(info, profile)
    key = f"{model_sha256(src)[:16]}-{plan.weights_hash()[:16]}"
    imx = None
    if profile.imatrix is not None:
        from .imatrix_file import read_imatrix

        imx = read_imatrix(profile.imatrix)
        key += f"-{imx.content_hash()[:16]}"
    size = (plan_with_imatrix(plan, info, imx, profile.imatrix) if imx is not None else plan).predicted_file_size
    out = variants_dir() / f"{src.stem}.{profile.name}.{key}.gguf"
    # The name says what it holds; a same-plan build under another profile name is reused too.
    for candidate in [out, *sorted(variants_dir().glob(f"*.{key}.gguf"))]:
        if candidate.is_file() and candidate.stat().st_size == size:
            return candidate
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RequantizeWarning)  # a reference of a quantized source is intended
        return quantize(src, plan, out, threads=threads, force=True, progress=progress, imatrix=imx,
                        imatrix_path=profile.imatrix)
