"""Loading a model and its context with ggprec's RuntimeSettings: the one RuntimeSettings -> llama.cpp mapping
(model and context parameters), and the decoding a loaded model offers."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import interrupts
from ..errors import GgprecError
from ..gguf_info import ModelInfo, read_gguf
from ..settings import ALL_LAYERS, RuntimeSettings
from .log import LogCapture, capture_log, failure_reason, llama
from .offload import attach_devices, attach_overrides, clamp_gpu_layers, explicit_devices, offload_devices
from .vocab import vocab_size

if TYPE_CHECKING:
    import numpy as np


def default_threads() -> int:
    """llama-cpp-python's default: half the logical CPUs, at least one."""
    return max((os.cpu_count() or 2) // 2, 1)


def kv_type_id(name: str) -> int:
    """ggml type id of a KV-cache type name; an unknown or unsupported name is a GgprecError."""
    from ..ggml_types import kv_cache_type

    return kv_cache_type(name).type_id


def check_settings(settings: RuntimeSettings) -> None:
    """Reject settings llama.cpp would refuse, before loading anything."""
    kv_type_id(settings.cache_type_k)
    kv_type_id(settings.cache_type_v)
    from ..ggml_types import lookup

    if settings.flash_attn is False and lookup(settings.cache_type_v).quantized:
        raise GgprecError(f"a quantized V cache ({lookup(settings.cache_type_v).name}) needs flash attention; "
                          "turn flash attention on or use an f16 V cache")
    for name in ("n_ctx", "n_batch", "n_ubatch"):
        if getattr(settings, name) < 1:
            raise GgprecError(f"{name} must be at least 1 (got {getattr(settings, name)})")
    if settings.n_threads is not None and settings.n_threads < 1:
        raise GgprecError(f"n_threads must be at least 1 (got {settings.n_threads})")


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
        from ..llama_bindings import load
        llama_cpp = load()

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

        llama_cpp = llama()
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
        llama_cpp = llama()
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

def model_params(settings: RuntimeSettings, no_alloc: bool, extra_buffers: bool, vocab_only: bool = False,
                  devices: list[Any] | None = None) -> Any:
    """devices: pointers of the devices to offload to (None: llama.cpp's default choice)."""
    llama_cpp = llama()

    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = -1 if settings.n_gpu_layers == ALL_LAYERS else settings.n_gpu_layers
    attach_devices(mp, settings, devices)
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
    llama_cpp = llama()

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

    llama_cpp = llama()
    p = Path(path)
    if not p.is_file():
        raise GgprecError(f"{p}: no such file")
    check_settings(settings)
    if info is None or Path(info.path) != p:
        info = read_gguf(p)  # also rejects non-GGUF files with a clear message
    explicit = explicit_devices(settings)
    devices, pointers = offload_devices(settings) if explicit else ([], None)
    if settings.tensor_split and explicit:
        from ..layer_split import shares_for

        shares_for(devices, settings.tensor_split)  # more proportions than devices: one line
    settings, notices = clamp_gpu_layers(settings, info.hparams.n_layer, bool(devices) if explicit else None)
    settings = settings.with_overrides(n_threads=settings.n_threads or default_threads())
    if extra_buffers is None:
        from ..probes import machine_buffers

        host = machine_buffers()
        extra_buffers = host.use_extra
        if host.note:
            notices.append(host.note)
    llama_cpp.llama_backend_init()
    with capture_log(log) as log:
        t0 = time.perf_counter()
        # llama.cpp loads a split model from its first shard only (and finds the others itself).
        model = llama_cpp.llama_model_load_from_file(str(info.path).encode(),
                                                     model_params(settings, no_alloc, extra_buffers,
                                                                   devices=pointers))
        if not model:
            interrupts.check()  # the load stopped because of a signal
            raise GgprecError(f"{p}: llama.cpp cannot load it: {failure_reason(log)}")
        ctx = llama_cpp.llama_init_from_model(model, context_params(settings, n_seq, abortable, cb_eval))
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise GgprecError(f"{p}: llama.cpp cannot create a context: {failure_reason(log)}")
        load_s = time.perf_counter() - t0
    loaded = LoadedModel(p, settings, model, ctx, llama_cpp.llama_model_n_layer(model), vocab_size(model), load_s,
                         log, notices, info, no_alloc, devices if explicit else None, n_seq)
    try:
        interrupts.check()
    except BaseException:
        loaded.close()
        raise
    return loaded


@contextlib.contextmanager
def load_vocab(path: str | os.PathLike[str]) -> Iterator[Any]:
    """A model with its vocabulary only (no weights, no context: a fraction of a second even for large
    models), for tokenize/vocab_size/bos_token; freed when the block ends."""
    llama_cpp = llama()
    p = Path(path)
    if not p.is_file():
        raise GgprecError(f"{p}: no such file")
    with capture_log() as log:
        model = llama_cpp.llama_model_load_from_file(str(p).encode(),
                                                     model_params(RuntimeSettings(), False, False, vocab_only=True))
    if not model:
        interrupts.check()
        raise GgprecError(f"{p}: llama.cpp cannot load its vocabulary: {failure_reason(log)}")
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)
