"""Loading models in llama-cpp-python with ggprec's RuntimeSettings, and reading llama.cpp's own log.

Everything goes through llama-cpp-python's raw C bindings (`llama_cpp.llama_*`), not the high-level
`Llama` class: that keeps the parameters we set exactly the ones llama.cpp sees (load mode, `no_alloc`,
flash attention, KV types), and keeps Python out of the way of measurements.

llama.cpp reports what it allocates only through its log; `capture_log()` installs a callback with
`llama_log_set` that collects the lines in this process (no subprocess, no stderr scraping).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import interrupts, tensor_overrides
from .errors import GgprecError, safe_text
from .gguf_info import ModelInfo, read_gguf
from .settings import ALL_LAYERS, RuntimeSettings

if TYPE_CHECKING:
    import numpy as np

# enum ggml_log_level of the vendored ggml (checked against the levels its messages arrive with).
LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CONT = 1, 2, 3, 4, 5


@dataclass
class LogCapture:
    """llama.cpp's log lines, in order, with their level; continuation fragments are joined."""

    lines: list[tuple[int, str]] = field(default_factory=list)
    _partial: str = ""
    _partial_level: int = LOG_INFO

    def _feed(self, level: int, text: str) -> None:
        if level != LOG_CONT:
            self._partial_level = level
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.lines.append((self._partial_level, line))

    def flush(self) -> None:
        if self._partial:
            self.lines.append((self._partial_level, self._partial))
            self._partial = ""

    @property
    def text(self) -> list[str]:
        return [line for _, line in self.lines]

    def errors(self) -> list[str]:
        """Error lines without llama.cpp's `function_name: ` prefixes, first one first."""
        out = []
        for level, line in self.lines:
            if level == LOG_ERROR and line.strip():
                line = re.sub(r"^(\w+: )+", "", line.strip())
                out.append(line.removeprefix("error loading model: "))
        return out


# llama_log_set is process-global: one installed callback feeds the innermost active capture.
_stack: list[LogCapture] = []
_lock = threading.Lock()
_callback: Any = None  # the ctypes function object must stay referenced while installed


@interrupts.callback
def _on_log(level: int, text: bytes, user: ctypes.c_void_p) -> None:
    """llama.cpp's log callback: lines go to the innermost capture; outside a capture they are dropped
    (ggprec runs llama.cpp quietly; what matters reaches the user as a GgprecError)."""
    if _stack:
        _stack[-1]._feed(level, text.decode("utf-8", "replace"))


def _install() -> None:
    """Install ggprec's log callback once, replacing the printing one llama-cpp-python installs."""
    global _callback
    import llama_cpp

    if _callback is not None:
        return
    _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def _llama() -> Any:
    """The llama_cpp bindings with ggprec's log callback installed (so nothing prints behind our back)."""
    import llama_cpp

    with _lock:
        _install()
    return llama_cpp


@contextlib.contextmanager
def capture_log(into: LogCapture | None = None) -> Iterator[LogCapture]:
    """Collect llama.cpp's log lines while the block runs (the innermost capture gets them). Pass
    `into` to keep adding to an earlier capture, e.g. one that spans a load and the runs after it."""
    cap = into if into is not None else LogCapture()
    with _lock:
        _stack.append(cap)
        _install()
    try:
        yield cap
    finally:
        cap.flush()
        with _lock:
            _stack.remove(cap)


def default_threads() -> int:
    """llama-cpp-python's default: half the logical CPUs, at least one."""
    return max((os.cpu_count() or 2) // 2, 1)


def kv_type_id(name: str) -> int:
    """ggml type id of a KV-cache type name; an unknown or unsupported name is a GgprecError."""
    from .ggml_types import kv_cache_type

    return kv_cache_type(name).type_id


def check_settings(settings: RuntimeSettings) -> None:
    """Reject settings llama.cpp would refuse, before loading anything."""
    kv_type_id(settings.cache_type_k)
    kv_type_id(settings.cache_type_v)
    from .ggml_types import lookup

    if settings.flash_attn is False and lookup(settings.cache_type_v).quantized:
        raise GgprecError(f"a quantized V cache ({lookup(settings.cache_type_v).name}) needs flash attention; "
                          "turn flash attention on or use an f16 V cache")
    for name in ("n_ctx", "n_batch", "n_ubatch"):
        if getattr(settings, name) < 1:
            raise GgprecError(f"{name} must be at least 1 (got {getattr(settings, name)})")
    if settings.n_threads is not None and settings.n_threads < 1:
        raise GgprecError(f"n_threads must be at least 1 (got {settings.n_threads})")


def clamp_gpu_layers(settings: RuntimeSettings, n_layer: int,
                     has_devices: bool | None = None) -> tuple[RuntimeSettings, list[str]]:
    """llama.cpp offloads at most n_layer + 1 layers (the +1 is the output layer); more is clamped
    with a notice. With no device to offload to (has_devices False; None: no local GPU, see
    local_gpu_available) every layer stays on the CPU."""
    notices: list[str] = []
    if settings.n_gpu_layers > n_layer + 1:
        notices.append(f"-ngl {settings.n_gpu_layers} is more than the model's {n_layer} layers + output; "
                       f"clamped to {n_layer + 1}")
        settings = settings.with_overrides(n_gpu_layers=n_layer + 1)
    if has_devices is None:
        has_devices = local_gpu_available()
    if settings.n_gpu_layers != 0 and not has_devices:
        notices.append("no device to offload to (no GPU, no RPC server): every layer runs on the CPU (-ngl 0)")
        settings = settings.with_overrides(n_gpu_layers=0)
    return settings, notices


def local_gpu_available() -> bool:
    """Whether llama.cpp's registry has a local GPU to offload to. Not llama_supports_gpu_offload(),
    which is also true on a CPU-only build with the RPC backend, where -ngl without --rpc offloads nothing."""
    from . import ggml_lib

    _llama()
    return any(t in ("GPU", "IGPU") and not n.startswith("RPC") for n, t, _ in ggml_lib.devices())


def local_gpus() -> list[tuple[str, int]]:
    """(buffer name, free bytes) of this host's GPUs, in llama.cpp's default order (integrated ones
    only without a discrete one): what follows the RPC devices in a split."""
    from . import ggml_lib

    _llama()
    registry = [(n, t, d) for n, t, d in ggml_lib.devices() if not n.startswith("RPC")]
    picked = [d for _, t, d in registry if t == "GPU"] or [d for _, t, d in registry if t == "IGPU"]
    return [(ggml_lib.buffer_name(dev), ggml_lib.free_memory(dev)) for dev in picked]


def _explicit_devices(settings: RuntimeSettings) -> bool:
    """Whether the load names its devices itself rather than leaving llama.cpp's default: with RPC
    servers, --device, -ts, -sm none, or RPC devices registered earlier in this process (which
    llama.cpp's default would otherwise pick up for every later load)."""
    from . import rpc

    return bool(settings.rpc_servers or settings.devices or settings.tensor_split or settings.split_mode != "layer"
                or rpc.registered())


def offload_devices(settings: RuntimeSettings) -> tuple[list[Any], list[Any]]:
    """(OffloadDevice list, device pointers) llama.cpp will offload to under `settings`, in order:
    the named devices (--device; "none": none), else every RPC server's devices then the local GPUs
    (integrated ones only without a discrete GPU), as llama.cpp's default. RPC servers are registered
    here (probe them first: llama.cpp aborts on one it cannot reach)."""
    from . import ggml_lib, rpc
    from .layer_split import OffloadDevice, select_main

    if settings.rpc_servers:
        rpc.add_servers(settings.rpc_servers)
    lib = ggml_lib.ggml()
    registry = ggml_lib.devices()
    if settings.devices:
        if settings.devices == ("none",):
            return [], []
        by_name = {n: d for n, _, d in registry}
        by_buffer = {ggml_lib.buffer_name(d): d for n, t, d in registry if t != "CPU"}
        picked = []
        for name in settings.devices:
            dev = by_name.get(name) or by_buffer.get(name)
            if dev is None or lib.ggml_backend_dev_type(dev) == ggml_lib.DEVICE_TYPE_CPU:
                offer = [n for n, t, _ in registry if t != "CPU"]
                raise GgprecError(f"invalid device {safe_text(name, 80)!r}; devices to offload to: "
                                  + (", ".join(offer) or "none (no GPU, no RPC server given)"))
            picked.append(dev)
    else:
        rpc_devs = rpc.add_servers(settings.rpc_servers) if settings.rpc_servers else []
        gpus = [d for n, t, d in registry if t == "GPU" and not n.startswith("RPC")]
        igpus = [d for n, t, d in registry if t == "IGPU"]
        picked = rpc_devs + (gpus or igpus)
    out = [OffloadDevice(lib.ggml_backend_dev_name(dev).decode(), ggml_lib.buffer_name(dev), ggml_lib.free_memory(dev))
           for dev in picked]
    # -sm none: llama.cpp keeps the main GPU only; the reduced list, split by layer, is the same load.
    kept = select_main(out, settings.split_mode, settings.main_gpu)
    return kept, [picked[out.index(d)] for d in kept]


@dataclass
class LoadedModel:
    """A llama.cpp model and context, freed by close() (or by using it as a context manager)."""

    path: Path
    settings: RuntimeSettings  # as applied (n_threads filled in, n_gpu_layers clamped)
    model: Any
    ctx: Any
    n_layer: int
    n_vocab: int
    load_s: float
    log: LogCapture
    notices: list[str]
    info: ModelInfo  # the header read before loading, kept so nothing reads it again
    no_alloc: bool = False
    # layer_split.OffloadDevice in llama.cpp's order when the load named its devices (RPC, --device, -ts,
    # -sm), else None (llama.cpp's default choice: the single-GPU rule of memory.predict applies)
    devices: list[Any] | None = None
    n_seq: int = 1  # sequences the context holds at once (decode_sequences)
    _batch: Any = None  # a llama_batch of n_batch tokens, made on the first decode

    def close(self) -> None:
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode_logits(self, tokens: Sequence[int], outputs: range) -> np.ndarray:
        """Decode `tokens` as one sequence from position 0 on an empty KV cache and return the logits
        (float32, one row of n_vocab per position) of the positions in `outputs` only (a copy; see
        decode_rows for the same without copying)."""
        import numpy as np

        rows = np.empty((len(outputs), self.n_vocab), dtype=np.float32)

        def keep(first: int, logits: np.ndarray) -> None:
            rows[first:first + len(logits)] = logits

        self.decode_rows(tokens, outputs, keep)
        return rows

    def decode_rows(self, tokens: Sequence[int], outputs: range,
                    consume: Callable[[int, np.ndarray], None]) -> None:
        """Decode `tokens` as one sequence from position 0 on an empty KV cache, and hand the logits of the
        positions in `outputs` to `consume(first, rows)` as they come (see decode_sequences)."""
        self.decode_sequences([tokens], outputs, lambda _seq, first, rows: consume(first, rows))

    def decode_sequences(self, seqs: Sequence[Sequence[int]], outputs: range,
                         consume: Callable[[int, int, np.ndarray], None]) -> None:
        """Decode each of `seqs` as its own sequence from position 0 on an empty KV cache, all in the same
        llama_decode calls (at most n_seq of them; llama-perplexity's way: one call of 4 x 512 tokens
        costs less than four calls of 512), and hand the logits of the positions in `outputs` of sequence
        s to `consume(s, first, rows)` as they come: `rows` (float32, n_vocab columns) are the logits of
        positions outputs.start + first ..., a view of llama.cpp's own buffer, valid only during the call
        (no copy of the 50 MB a window of a 49k vocabulary gives). The batch asks llama.cpp for exactly
        those rows, so the output layer runs for no other position. Each call takes n_batch / len(seqs)
        positions of every sequence; a signal under interrupts.guard() is raised between calls (and stops
        a call in flight on a context loaded with abortable=True)."""
        import numpy as np

        llama_cpp = _llama()
        if not 1 <= len(seqs) <= self.n_seq:
            raise ValueError(f"{len(seqs)} sequences for a context of {self.n_seq}")
        longest = max(len(t) for t in seqs)
        if outputs.step != 1 or (len(outputs) and (outputs.start < 0 or outputs.stop > min(len(t) for t in seqs))):
            raise ValueError(f"outputs {outputs} must be a contiguous range inside the tokens of every sequence")
        n_batch = self.settings.n_batch
        if self._batch is None:
            self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        batch = self._batch
        per = n_batch // len(seqs)
        for start in range(0, longest, per):
            k, wanted = 0, []
            for seq, tokens in enumerate(seqs):
                chunk = tokens[start:start + per]
                # Outputs are the positions lo .. hi-1 of this chunk (a contiguous range clipped to it).
                lo = min(max(outputs.start - start, 0), len(chunk))
                hi = max(min(outputs.stop - start, len(chunk)), lo)
                wanted.append((seq, start + lo - outputs.start, hi - lo))
                for i, tok in enumerate(chunk):
                    batch.token[k] = tok
                    batch.pos[k] = start + i
                    batch.n_seq_id[k] = 1
                    batch.seq_id[k][0] = seq
                    batch.logits[k] = lo <= i < hi
                    k += 1
            batch.n_tokens = k
            rc = llama_cpp.llama_decode(self.ctx, batch)
            interrupts.check()  # an abort (rc 2) is a signal: raised here
            if rc != 0:
                raise GgprecError(f"{self.path}: llama.cpp could not decode {k} tokens (code {rc})")
            n_out = sum(n for _, _, n in wanted)
            if n_out:
                out = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.ctx), shape=(n_out, self.n_vocab))
                row = 0
                for seq, first, n in wanted:
                    if n:
                        consume(seq, first, out[row:row + n])
                    row += n


    def decode_all(self, tokens: Sequence[int]) -> None:
        """Decode `tokens` as one sequence from position 0 on an empty KV cache, asking llama.cpp for the
        output of every position (so it never trims the last layer to the output rows, as it does when
        only some are asked) without copying the logits out: for graph callbacks (importance matrix)."""
        llama_cpp = _llama()
        n_batch = self.settings.n_batch
        if self._batch is None:
            self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        batch = self._batch
        for start in range(0, len(tokens), n_batch):
            chunk = tokens[start:start + n_batch]
            batch.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            rc = llama_cpp.llama_decode(self.ctx, batch)
            if rc != 0:
                raise GgprecError(f"{self.path}: llama.cpp could not decode {len(chunk)} tokens (code {rc})")
            interrupts.check()


@interrupts.callback
def _abort_requested(data: ctypes.c_void_p) -> bool:
    """llama.cpp's abort callback (asked between graph nodes): stop a decode when a signal arrived."""
    return interrupts.requested()


_ABORT: Any = None  # the ctypes function object, made on first use and kept referenced

def _model_params(settings: RuntimeSettings, no_alloc: bool, extra_buffers: bool, vocab_only: bool = False,
                  devices: list[Any] | None = None) -> Any:
    """devices: pointers of the devices to offload to (None: llama.cpp's default choice)."""
    llama_cpp = _llama()

    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = -1 if settings.n_gpu_layers == ALL_LAYERS else settings.n_gpu_layers
    _attach_devices(mp, settings, devices)
    mp.use_extra_bufts = extra_buffers  # off = llama.cpp's --no-repack (see cpu_buffers)
    attach_overrides(mp, settings)  # -ot / --n-cpu-moe; the array lives on mp
    mp.vocab_only = vocab_only
    if no_alloc:
        # llama.cpp simulates allocations only without mmap (load mode NONE).
        mp.no_alloc = True
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    global _LOAD_PROGRESS
    if _LOAD_PROGRESS is None:
        _LOAD_PROGRESS = llama_cpp.llama_progress_callback(_keep_loading)
    mp.progress_callback = _LOAD_PROGRESS
    return mp


def _attach_devices(mp: Any, settings: RuntimeSettings, devices: list[Any] | None) -> None:
    """llama_model_params.devices (NULL-terminated) and tensor_split; the arrays are kept on mp."""
    llama_cpp = _llama()

    if devices is not None:
        arr = (ctypes.c_void_p * (len(devices) + 1))(*devices)  # zero-filled: the last entry ends it
        mp._ggprec_devices = arr
        mp.devices = ctypes.cast(arr, ctypes.c_void_p).value
    if settings.tensor_split:
        n = max(len(settings.tensor_split), int(llama_cpp.llama_max_devices()))
        split = (ctypes.c_float * n)(*settings.tensor_split)
        mp._ggprec_split = split
        mp.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))


@interrupts.callback
def _keep_loading(progress: float, user: ctypes.c_void_p) -> bool:
    """llama.cpp's load progress callback: returning False stops a load (a signal under guard())."""
    return not interrupts.requested()


_LOAD_PROGRESS: Any = None  # made on first use (needs llama_cpp), kept referenced while loads use it


def context_params(settings: RuntimeSettings, n_seq: int = 1, abortable: bool = False, cb_eval: Any = None) -> Any:
    """llama_context_params for the settings (threads must already be resolved). The one mapping of
    RuntimeSettings to llama.cpp's context parameters: run, alloc and evaluate all load through it.
    n_seq: sequences decoded side by side, each in its own n_ctx / n_seq cells. abortable: llama.cpp
    asks _abort_requested between graph nodes (a Python call per node: for long batches, not for timed
    token generation). cb_eval: a `ggml_backend_sched_eval_callback` ctypes function (the importance-matrix
    collector); the caller keeps it referenced while the context lives."""
    llama_cpp = _llama()

    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = settings.n_ctx
    cp.n_batch = settings.n_batch
    cp.n_ubatch = min(settings.n_ubatch, settings.n_batch)
    cp.n_threads = cp.n_threads_batch = settings.n_threads or default_threads()
    cp.type_k = kv_type_id(settings.cache_type_k)
    cp.type_v = kv_type_id(settings.cache_type_v)
    cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn_effective
                          else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    cp.no_perf = True
    if cb_eval is not None:
        cp.cb_eval = cb_eval
        cp.cb_eval_user_data = None
    cp.n_seq_max = n_seq
    if abortable:
        global _ABORT
        if _ABORT is None:
            _ABORT = llama_cpp.ggml_abort_callback(_abort_requested)
        cp.abort_callback = _ABORT
    return cp


def load_model(path: str | os.PathLike[str], settings: RuntimeSettings, no_alloc: bool = False,
               log: LogCapture | None = None, extra_buffers: bool | None = None, n_seq: int = 1,
               abortable: bool = False, info: ModelInfo | None = None, cb_eval: Any = None) -> LoadedModel:
    """Load `path` and create a context with `settings`; llama.cpp's log lines go to `log` (a new
    capture when None). A model or context llama.cpp refuses is a GgprecError with its reason; a signal
    under interrupts.guard() stops the load (llama.cpp's progress callback) and raises Interrupted.
    extra_buffers: llama.cpp's AMX/repacked weight buffers (None: on unless they crash here, see cpu_buffers).
    n_seq, abortable: see context_params (settings.n_ctx is then the cells of all n_seq sequences).
    info: the header of `path` when the caller has read it already (read here otherwise).
    cb_eval: the context's graph-evaluation callback (see context_params)."""
    import time

    llama_cpp = _llama()
    p = Path(path)
    if not p.is_file():
        raise GgprecError(f"{p}: no such file")
    check_settings(settings)
    if info is None or Path(info.path) != p:
        info = read_gguf(p)  # also rejects non-GGUF files with a clear message
    explicit = _explicit_devices(settings)
    devices, pointers = offload_devices(settings) if explicit else ([], None)
    if settings.tensor_split and explicit:
        from .layer_split import shares_for

        shares_for(devices, settings.tensor_split)  # more proportions than devices: one line
    settings, notices = clamp_gpu_layers(settings, info.hparams.n_layer, bool(devices) if explicit else None)
    settings = settings.with_overrides(n_threads=settings.n_threads or default_threads())
    if extra_buffers is None:
        from .probes import machine_buffers

        host = machine_buffers()
        extra_buffers = host.use_extra
        if host.note:
            notices.append(host.note)
    llama_cpp.llama_backend_init()
    with capture_log(log) as log:
        t0 = time.perf_counter()
        # llama.cpp loads a split model from its first shard only (and finds the others itself).
        model = llama_cpp.llama_model_load_from_file(str(info.path).encode(),
                                                     _model_params(settings, no_alloc, extra_buffers,
                                                                   devices=pointers))
        if not model:
            interrupts.check()  # the load stopped because of a signal
            raise GgprecError(f"{p}: llama.cpp cannot load it: {_reason(log)}")
        ctx = llama_cpp.llama_init_from_model(model, context_params(settings, n_seq, abortable, cb_eval))
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise GgprecError(f"{p}: llama.cpp cannot create a context: {_reason(log)}")
        load_s = time.perf_counter() - t0
    loaded = LoadedModel(p, settings, model, ctx, llama_cpp.llama_model_n_layer(model), vocab_size(model), load_s,
                         log, notices, info, no_alloc, devices if explicit else None, n_seq)
    try:
        interrupts.check()
    except BaseException:
        loaded.close()
        raise
    return loaded


# --- vocabulary --------------------------------------------------------------------------------------


@contextlib.contextmanager
def load_vocab(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A model with its vocabulary only (no weights, no context: a fraction of a second even for large
    models), for tokenize/vocab_size/bos_token; freed when the block ends."""
    llama_cpp = _llama()
    p = Path(path)
    if not p.is_file():
        raise GgprecError(f"{p}: no such file")
    with capture_log() as log:
        model = llama_cpp.llama_model_load_from_file(str(p).encode(),
                                                     _model_params(RuntimeSettings(), False, False, vocab_only=True))
    if not model:
        interrupts.check()
        raise GgprecError(f"{p}: llama.cpp cannot load its vocabulary: {_reason(log)}")
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


def vocab_size(model: Any) -> int:
    """Tokens in the vocabulary of a loaded llama_model (LoadedModel.model or load_vocab's)."""
    llama_cpp = _llama()
    return int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))


def bos_token(model: Any) -> int | None:
    """The BOS token id when the model's tokenizer adds one to a text, else None."""
    llama_cpp = _llama()
    vocab = llama_cpp.llama_model_get_vocab(model)
    return int(llama_cpp.llama_vocab_bos(vocab)) if llama_cpp.llama_vocab_get_add_bos(vocab) else None


def tokenize(model: Any, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
    """The token ids of `text` under the model's tokenizer (llama_tokenize)."""
    llama_cpp = _llama()
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


def _reason(log: LogCapture | None) -> str:
    if log is None:
        return "no reason logged"
    log.flush()
    errs = log.errors()
    return safe_text(errs[0], 300) if errs else "no reason logged"  # llama.cpp's line may quote a file's names


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


# --- tensor buffer overrides (-ot, --n-cpu-moe): the array llama.cpp reads ------------------------

class TensorBuftOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }"""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def buft_overrides(settings: RuntimeSettings) -> ctypes.Array[TensorBuftOverride] | None:
    """The NULL-pattern-terminated override array for `settings` (None when there are no overrides).
    The array owns its pattern strings; keep it referenced until the model is loaded."""
    items = tensor_overrides.override_list(settings)
    if not items:
        return None
    from . import ggml_lib

    bufts = ggml_lib.buffer_types()  # -ot device names: each device's default buffer type
    arr = (TensorBuftOverride * (len(items) + 1))()  # zero-filled: the last entry is the terminator
    for i, (pattern, device) in enumerate(items):
        if device not in bufts:
            raise GgprecError(f"override_tensor: unknown device {device!r}; this llama.cpp build has: "
                              + ", ".join(sorted(bufts)))
        arr[i].pattern = tensor_overrides.check_pattern(pattern).encode()
        arr[i].buft = bufts[device]
    return arr


def attach_overrides(model_params: Any, settings: RuntimeSettings) -> None:
    """Fill `model_params.tensor_buft_overrides` from settings; the array is kept on the params object
    so it lives as long as they do."""
    arr = buft_overrides(settings)
    model_params._ggprec_overrides = arr  # keeps the ctypes memory alive
    model_params.tensor_buft_overrides = ctypes.cast(arr, ctypes.c_void_p).value if arr is not None else None
