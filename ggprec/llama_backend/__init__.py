"""Loading models in llama-cpp-python with ggprec's RuntimeSettings, and reading llama.cpp's own log.

Everything goes through llama-cpp-python's raw C bindings (`llama_cpp.llama_*`), not the high-level
`Llama` class: that keeps the parameters we set exactly the ones llama.cpp sees (load mode, `no_alloc`,
flash attention, KV types), and keeps Python out of the way of measurements.

llama.cpp reports what it allocates only through its log; `capture_log()` installs a callback with
`llama_log_set` that collects the lines in this process (no subprocess, no stderr scraping).
"""

from __future__ import annotations

from .loading import (
    LoadedModel,
    check_settings,
    context_params,
    default_threads,
    kv_type_id,
    load_model,
    load_vocab,
    model_params,
)
from .log import (
    LOG_CONT,
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_WARN,
    LogCapture,
    capture_log,
    failure_reason,
    llama,
    system_info,
)
from .offload import (
    TensorBuftOverride,
    attach_devices,
    attach_overrides,
    buft_overrides,
    clamp_gpu_layers,
    explicit_devices,
    local_gpu_available,
    local_gpus,
    offload_devices,
)
from .vocab import bos_token, tokenize, vocab_size

__all__ = ["LOG_CONT", "LOG_DEBUG", "LOG_ERROR", "LOG_INFO", "LOG_WARN", "LoadedModel", "LogCapture",
           "TensorBuftOverride", "attach_devices", "attach_overrides", "bos_token", "buft_overrides", "capture_log",
           "check_settings", "clamp_gpu_layers", "context_params", "default_threads", "explicit_devices",
           "failure_reason", "kv_type_id", "llama", "load_model", "load_vocab", "local_gpu_available", "local_gpus",
           "model_params", "offload_devices", "system_info", "tokenize", "vocab_size"]
