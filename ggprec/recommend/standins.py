"""The interfaces recommend codes against from other areas, in one place: the loss priors
(`ggprec.priors`) and per-tensor placement (`ggprec.tensor_overrides`); the device classes of the speed
model (`ggprec.speed`). Where the real module exists it is used; until it is merged, a thin stand-in with
the same names:
- priors: llama.cpp's published Llama-3-8B table (KLD vs FP16 when every weight is one type), without
  size dependence, log-linear in bits between its types for the types it lacks;
- placement: llama.cpp's whole-layer offload (-ngl) only."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..ggml_types import lookup
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


# --- loss priors ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prior:
    kld: float
    source: str


# llama.cpp's published Llama-3-8B table (KLD vs FP16): type -> whole-model KLD at that type.
_LLAMA3_8B = {"q8_0": 0.00136, "q6_k": 0.00545, "q5_k": 0.0108, "q4_k": 0.0313, "q4_0": 0.0719, "q2_k": 0.445}
_LLAMA3_SOURCE = "llama.cpp Llama-3-8B table"
# KV cache, measured on SmolLM2 with F16 weights (DESIGN.md).
_KV_SMOLLM2 = {"f16": 0.0, "q8_0": 0.0005, "q4_0": 0.0947}


def _stand_in_weight_prior(type_name: str, n_params: int) -> Prior:
    t = lookup(type_name)
    if t.bits_per_weight >= 16:
        return Prior(0.0, "16-bit")
    if type_name in _LLAMA3_8B:
        return Prior(_LLAMA3_8B[type_name], _LLAMA3_SOURCE)
    # K-quants and i-quants between the table's k-types, legacy types between q4_0 and q8_0, log-linear in bits.
    legacy = not (type_name.endswith("_k") or type_name.startswith("iq"))
    family = ("q4_0", "q8_0") if legacy else ("q2_k", "q4_k", "q5_k", "q6_k", "q8_0")
    pts = sorted((lookup(n).bits_per_weight, _LLAMA3_8B[n]) for n in family)
    b = t.bits_per_weight
    lo = max([p for p in pts if p[0] <= b], default=pts[0])
    hi = min([p for p in pts if p[0] >= b], default=pts[-1])
    if hi[0] == lo[0]:
        k = lo[1]
    else:
        f = (b - lo[0]) / (hi[0] - lo[0])
        k = math.exp(math.log(lo[1]) + f * (math.log(hi[1]) - math.log(lo[1])))
    return Prior(k, f"{_LLAMA3_SOURCE}, interpolated in bits")


def weight_prior(type_name: str, n_params: int) -> Prior:
    """Expected whole-model KLD if every quantizable weight were type_name."""
    real = _real("priors", "weight_prior")
    return _stand_in_weight_prior(type_name, n_params) if real is None else real(type_name, n_params)


def kv_prior(kv_type: str, n_params: int) -> Prior:
    """Expected KLD a KV cache of kv_type adds."""
    real = _real("priors", "kv_prior")
    return Prior(_KV_SMOLLM2.get(kv_type, 0.0), "SmolLM2-135M, measured") if real is None else real(kv_type, n_params)


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
