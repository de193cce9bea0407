"""Which devices a load offloads to (local GPUs, RPC servers, --device, -ts), and the per-tensor buffer
overrides (-ot, --n-cpu-moe) as the ctypes arrays llama_model_params carries."""

from __future__ import annotations

import ctypes
from typing import Any

from .. import tensor_overrides
from ..errors import GgprecError, safe_text
from ..settings import RuntimeSettings
from .log import llama


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
    from .. import ggml_lib

    llama()
    return any(t in ("GPU", "IGPU") and not n.startswith("RPC") for n, t, _ in ggml_lib.devices())


def local_gpus() -> list[tuple[str, int]]:
    """(buffer name, free bytes) of this host's GPUs, in llama.cpp's default order (integrated ones
    only without a discrete one): what follows the RPC devices in a split."""
    from .. import ggml_lib

    llama()
    registry = [(n, t, d) for n, t, d in ggml_lib.devices() if not n.startswith("RPC")]
    picked = [d for _, t, d in registry if t == "GPU"] or [d for _, t, d in registry if t == "IGPU"]
    return [(ggml_lib.buffer_name(dev), ggml_lib.free_memory(dev)) for dev in picked]


def explicit_devices(settings: RuntimeSettings) -> bool:
    """Whether the load names its devices itself rather than leaving llama.cpp's default: with RPC
    servers, --device, -ts, -sm none, or RPC devices registered earlier in this process (which
    llama.cpp's default would otherwise pick up for every later load)."""
    from .. import rpc

    return bool(settings.rpc_servers or settings.devices or settings.tensor_split or settings.split_mode != "layer"
                or rpc.registered())


def offload_devices(settings: RuntimeSettings) -> tuple[list[Any], list[Any]]:
    """(OffloadDevice list, device pointers) llama.cpp will offload to under `settings`, in order:
    the named devices (--device; "none": none), else every RPC server's devices then the local GPUs
    (integrated ones only without a discrete GPU), as llama.cpp's default. RPC servers are registered
    here (probe them first: llama.cpp aborts on one it cannot reach)."""
    from .. import ggml_lib, rpc
    from ..layer_split import OffloadDevice, select_main

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


def attach_devices(mp: Any, settings: RuntimeSettings, devices: list[Any] | None) -> None:
    """llama_model_params.devices (NULL-terminated) and tensor_split; the arrays are kept on mp."""
    llama_cpp = llama()

    if devices is not None:
        arr = (ctypes.c_void_p * (len(devices) + 1))(*devices)  # zero-filled: the last entry ends it
        mp._ggprec_devices = arr
        mp.devices = ctypes.cast(arr, ctypes.c_void_p).value
    if settings.tensor_split:
        n = max(len(settings.tensor_split), int(llama_cpp.llama_max_devices()))
        split = (ctypes.c_float * n)(*settings.tensor_split)
        mp._ggprec_split = split
        mp.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))


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
    from .. import ggml_lib

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
