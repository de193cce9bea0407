"""Which device holds each layer when llama.cpp splits a model over several devices (`-ngl`, `-ts`).

llama.cpp's rule (src/llama-model.cpp, load_tensors, vendored in llama-cpp-python 0.3.36), for n_layer
repeating layers plus the output layer (index n_layer):
- the last n_gpu_layers of those n_layer + 1 layers are offloaded: layer il is offloaded when
  il >= n_layer + 1 - n_gpu_layers (so -ngl 1 offloads the output layer only); with no device at all
  nothing is; the input layer (token_embd) always stays on the CPU;
- the split proportions (tensor_split, or each device's free memory when it is absent or all zero) are
  summed cumulatively and normalised in float32: split points s_0 <= ... <= s_{n-1} = 1;
- an offloaded layer il goes to the first device i with s_i > (il - i_gpu_start) / n_offloaded
  (std::upper_bound), both sides float32.
Pure functions of those numbers: nothing here loads llama.cpp.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import GgprecError

CPU = "CPU"


@dataclass(frozen=True)
class OffloadDevice:
    """A device llama.cpp offloads to: its registry name (RPC0, CUDA0), its buffer name (what the load
    log and Allocation keys say: RPC0[127.0.0.1:50052], CUDA0) and its free memory in bytes."""

    name: str
    buffer: str
    free: int


SPLIT_MODES = ("layer", "none")


def select_main(devices: Sequence[OffloadDevice], split_mode: str, main_gpu: int) -> list[OffloadDevice]:
    """llama.cpp's -sm none: only device `main_gpu` of the list (a negative index: none); -sm layer: all."""
    if split_mode not in SPLIT_MODES:
        raise GgprecError(f"split mode {split_mode!r}: ggprec models {' and '.join(SPLIT_MODES)} "
                          "(row and tensor parallelism are not predicted)")
    if split_mode == "layer":
        return list(devices)
    if main_gpu < 0:
        return []
    if main_gpu >= len(devices):
        raise GgprecError(f"main GPU {main_gpu}: there are {len(devices)} devices to offload to "
                          f"({', '.join(d.name for d in devices) or 'none'})")
    return [devices[main_gpu]]


def split_points(shares: Sequence[float]) -> list[float]:
    """Cumulative, normalised split points, rounded through float32 as llama.cpp computes them."""
    import numpy as np

    acc = np.float32(0.0)
    sums = []
    for share in shares:
        acc = np.float32(acc + np.float32(share))
        sums.append(acc)
    if not acc > 0:
        raise GgprecError("tensor split: the proportions sum to 0")
    return [float(np.float32(s / acc)) for s in sums]


def offloaded_layers(n_layer: int, n_gpu_layers: int) -> range:
    """The layers llama.cpp offloads for `n_gpu_layers` when it has a device to offload to: the last
    n_gpu_layers of the n_layer + 1 (index n_layer is the output layer), i.e. i_gpu_start..n_layer.
    -ngl 1 offloads the output layer only, -ngl n_layer every block but block 0, -ngl n_layer + 1 (or
    ALL_LAYERS, or any negative count: llama.cpp reads those as all) everything. The one rule behind
    tensor_overrides.gpu_layers (one GPU) and assign_layers (several devices)."""
    ngl = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    return range(max(n_layer + 1 - ngl, 0), n_layer + 1)


def assign_layers(n_layer: int, n_gpu_layers: int, devices: Sequence[str],
                  shares: Sequence[float]) -> list[str]:
    """The device of each layer 0..n_layer (the last entry is the output layer): a name from `devices`
    or CPU. shares: one proportion per device (tensor_split, or free memory)."""
    import numpy as np

    if len(shares) != len(devices):
        raise GgprecError(f"tensor split: {len(shares)} proportions for {len(devices)} devices")
    layers = offloaded_layers(n_layer, n_gpu_layers)
    start, offloaded = layers.start, len(layers) if devices else 0
    points = split_points(shares) if offloaded else []
    out = []
    for il in range(n_layer + 1):
        if il < start or il - start >= offloaded:
            out.append(CPU)
            continue
        x = float(np.float32(np.float32(il - start) / np.float32(offloaded)))
        out.append(devices[min(bisect.bisect_right(points, x), len(devices) - 1)])
    return out


def shares_for(devices: Sequence[OffloadDevice], tensor_split: Sequence[float]) -> list[float]:
    """tensor_split padded with zeros to one entry per device, or free memory when it is all zero."""
    if len(tensor_split) > len(devices):
        raise GgprecError(f"tensor split has {len(tensor_split)} proportions but there are {len(devices)} devices "
                          f"to offload to ({', '.join(d.buffer for d in devices) or 'none'})")
    shares = list(tensor_split) + [0.0] * (len(devices) - len(tensor_split))
    if not any(shares):
        shares = [float(d.free) for d in devices]
    return shares


def layer_devices(n_layer: int, n_gpu_layers: int, devices: Sequence[OffloadDevice],
                  tensor_split: Sequence[float] = ()) -> list[str]:
    """assign_layers over OffloadDevices, by buffer name (the keys predictions and allocations share)."""
    if not devices:
        return [CPU] * (n_layer + 1)
    return assign_layers(n_layer, n_gpu_layers, [d.buffer for d in devices], shares_for(devices, tensor_split))
