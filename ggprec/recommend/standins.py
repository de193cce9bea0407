"""Where each tensor lives, as recommend asks it: per-tensor placement (`ggprec.tensor_overrides`, with
-ot and --n-cpu-moe) where that module exists, else a stand-in with the same name for llama.cpp's
whole-layer offload (-ngl) only; and the device classes of the speed model (`ggprec.speed`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

from ..gguf_info import ModelInfo
from ..settings import ALL_LAYERS, RuntimeSettings

GPU_DEVICE = "CUDA0"
HOST_DEVICE = "CPU"


@cache
def _real(module: str, name: str) -> Callable[..., Any] | None:
    """The other area's function when its module is there (looked up once: a failed import is not cached by
    Python and would search the path on every call)."""
    try:
        return getattr(importlib.import_module(f"ggprec.{module}"), name)
    except (ImportError, AttributeError):
        return None


def is_gpu(device: str) -> bool:
    """GPU memory; CPU, AMX and mapped buffers and pinned host memory (CUDA_Host) count as RAM."""
    from ..speed import GPU, device_class

    return device_class(device) == GPU


# --- placement ------------------------------------------------------------------------------------------


def placement(info: ModelInfo, settings: RuntimeSettings) -> dict[str, str]:
    """Tensor name -> device llama.cpp loads it to."""
    real = _real("tensor_overrides", "placement")
    return _layer_placement(info, settings) if real is None else real(info, settings)


def _layer_placement(info: ModelInfo, settings: RuntimeSettings) -> dict[str, str]:
    """The last n_gpu_layers blocks on the GPU, the output head when n_gpu_layers > n_layer, token_embd (a
    row lookup) always on the host, also when it doubles as a tied head."""
    n_layer = info.hparams.n_layer
    ngl = n_layer + 1 if settings.n_gpu_layers == ALL_LAYERS else settings.n_gpu_layers
    out = {}
    for t in info.tensors:
        gpu = t.layer >= n_layer - ngl if t.layer is not None else (t.role == "output" and ngl > n_layer)
        out[t.name] = GPU_DEVICE if gpu else HOST_DEVICE
    return out
