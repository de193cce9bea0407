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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tensor_overrides
from .cpu_buffers import host_buffers
from .errors import GgprecError, safe_text
from .gguf_info import ModelInfo, read_gguf
from .settings import ALL_LAYERS, RuntimeSettings

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


def _install() -> None:
    """Install ggprec's callback once. Outside a capture it hands lines to llama-cpp-python's own
    callback, which prints them only when verbose; ggprec runs llama.cpp quietly (as verbose=False)."""
    global _callback
    import llama_cpp
    from llama_cpp import _logger

    if _callback is not None:
        return

    @llama_cpp.llama_log_callback
    def _cb(level: int, text: bytes, user: ctypes.c_void_p) -> None:
        if _stack:
            _stack[-1]._feed(level, text.decode("utf-8", "replace"))
        else:
            _logger.llama_log_callback(level, text, user)

    _logger.set_verbose(False)
    _callback = _cb
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


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
                          "use -fa on or an f16 V cache")
    for name in ("n_ctx", "n_batch", "n_ubatch"):
        if getattr(settings, name) < 1:
            raise GgprecError(f"{name} must be at least 1 (got {getattr(settings, name)})")
    if settings.n_threads is not None and settings.n_threads < 1:
        raise GgprecError(f"n_threads must be at least 1 (got {settings.n_threads})")


def clamp_gpu_layers(settings: RuntimeSettings, n_layer: int) -> tuple[RuntimeSettings, list[str]]:
    """llama.cpp offloads at most n_layer + 1 layers (the +1 is the output layer); more is clamped
    with a notice. On a build without GPU offload every layer stays on the CPU."""
    import llama_cpp

    notices: list[str] = []
    if settings.n_gpu_layers > n_layer + 1:
        notices.append(f"-ngl {settings.n_gpu_layers} is more than the model's {n_layer} layers + output; "
                       f"clamped to {n_layer + 1}")
        settings = settings.with_overrides(n_gpu_layers=n_layer + 1)
    if settings.n_gpu_layers != 0 and not llama_cpp.llama_supports_gpu_offload():
        notices.append("this llama-cpp-python build has no GPU offload: every layer runs on the CPU (-ngl 0)")
        settings = settings.with_overrides(n_gpu_layers=0)
    return settings, notices


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

    def close(self) -> None:
        import llama_cpp

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


def _model_params(settings: RuntimeSettings, no_alloc: bool, extra_buffers: bool) -> Any:
    import llama_cpp

    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = -1 if settings.n_gpu_layers == ALL_LAYERS else settings.n_gpu_layers
    mp.use_extra_bufts = extra_buffers  # off = llama.cpp's --no-repack (see cpu_buffers)
    tensor_overrides.attach(mp, settings)  # -ot / --n-cpu-moe; the array lives on mp
    if no_alloc:
        # llama.cpp simulates allocations only without mmap (load mode NONE).
        mp.no_alloc = True
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return mp


def context_params(settings: RuntimeSettings) -> Any:
    """llama_context_params for the settings (threads must already be resolved)."""
    import llama_cpp

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
    return cp


def load_model(path: str | os.PathLike[str], settings: RuntimeSettings, no_alloc: bool = False,
               log: LogCapture | None = None, extra_buffers: bool | None = None) -> LoadedModel:
    """Load `path` and create a context with `settings`; llama.cpp's log lines go to `log` (a new
    capture when None). A model or context llama.cpp refuses is a GgprecError with its reason.
    extra_buffers: llama.cpp's AMX/repacked weight buffers (None: on unless they crash here, see cpu_buffers)."""
    import time

    import llama_cpp

    p = Path(path)
    if not p.is_file():
        raise GgprecError(f"{p}: no such file")
    check_settings(settings)
    info = read_gguf(p)  # also rejects non-GGUF files with a clear message
    settings, notices = clamp_gpu_layers(settings, info.hparams.n_layer)
    settings = settings.with_overrides(n_threads=settings.n_threads or default_threads())
    if extra_buffers is None:
        host = host_buffers()
        extra_buffers = host.use_extra
        if host.note:
            notices.append(host.note)
    llama_cpp.llama_backend_init()
    with capture_log(log) as log:
        t0 = time.perf_counter()
        # llama.cpp loads a split model from its first shard only (and finds the others itself).
        model = llama_cpp.llama_model_load_from_file(str(info.path).encode(),
                                                     _model_params(settings, no_alloc, extra_buffers))
        if not model:
            raise GgprecError(f"{p}: llama.cpp cannot load it: {_reason(log)}")
        ctx = llama_cpp.llama_init_from_model(model, context_params(settings))
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise GgprecError(f"{p}: llama.cpp cannot create a context: {_reason(log)}")
        load_s = time.perf_counter() - t0
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    return LoadedModel(p, settings, model, ctx, llama_cpp.llama_model_n_layer(model), n_vocab, load_s, log,
                       notices, info, no_alloc)


def _reason(log: LogCapture | None) -> str:
    if log is None:
        return "no reason logged"
    log.flush()
    errs = log.errors()
    return safe_text(errs[0], 300) if errs else "no reason logged"  # llama.cpp's line may quote a file's names


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
