"""Per-tensor placement: llama.cpp's `-ot PATTERN=DEVICE`, `--cpu-moe` and `--n-cpu-moe N`.

Two halves that must agree: `placement()` (here, predict stack) says on which device llama.cpp puts each
tensor (used by `memory.predict` and the speed model), and `llama_backend.buft_overrides()` builds the array
llama.cpp reads to do it from `override_list()` (`llama_model_params.tensor_buft_overrides`).

Rules (llama.cpp's src/llama-model-loader.cpp and common/arg.cpp, vendored in llama-cpp-python 0.3.36):
- without overrides, `n_gpu_layers` decides: the last n_gpu_layers of the n_layer + 1 layers (the last
  is the output layer: output_norm and the head) on the GPU, so -ngl 1 offloads the output layer only
  and -ngl n_layer leaves block 0 on the CPU (layer_split.offloaded_layers); token_embd always in host
  memory;
- each override's pattern is searched (std::regex_search, ECMAScript syntax) in the tensor name, the
  first match wins, for every tensor (input, blocks, output);
- the list llama.cpp gets is `override_tensor` in order, then the `n_cpu_moe` patterns: `--cpu-moe`
  is `\\.ffn_(up|down|gate|gate_up)_(ch|)exps` to CPU, `--n-cpu-moe N` that pattern prefixed with
  `blk\\.i` for i in 0..N-1 (routed expert matrices only: not the router, not shared experts).

Patterns are matched here with Python's `re.search`. For the patterns people write (`exps=CPU`,
`blk\\.(1[0-9])\\.ffn_.*=CUDA0`, `\\.ffn_(up|down)_exps`) the two agree. Python-only syntax that
std::regex's ECMAScript grammar rejects or reads differently (look-behind `(?<=`, named groups
`(?P<`, inline flags `(?i)`, `\\A`, `\\Z`, comments `(?#`) is refused with a one-line error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .devices import CPU, GPU
from .errors import GgprecError
from .gguf_info import ModelInfo
from .layer_split import offloaded_layers
from .settings import ALL_LAYERS, RuntimeSettings

EXPS_PATTERN = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"  # llama.cpp's LLM_FFN_EXPS_REGEX
MAX_OVERRIDES = 4096  # llama_max_tensor_buft_overrides() of the vendored llama.cpp
_PYTHON_ONLY = re.compile(r"\(\?<[=!]|\(\?P|\(\?#|\(\?[aiLmsux-]+[:)]|\\[AZ]")


def check_pattern(pattern: str) -> str:
    """The pattern if both Python and std::regex read it the same way, else a one-line GgprecError."""
    if not pattern:
        raise GgprecError("override_tensor: empty pattern")
    if _PYTHON_ONLY.search(pattern):
        raise GgprecError(f"override_tensor: pattern {pattern!r} uses Python-only regex syntax "
                          "(llama.cpp reads ECMAScript regexes)")
    try:
        re.compile(pattern)
    except re.error as e:
        raise GgprecError(f"override_tensor: invalid pattern {pattern!r}: {e}") from None
    return pattern


def anchored(name: str) -> str:
    """An ECMAScript regex matching exactly this tensor name (names hold letters, digits, '.', '_'): what ggprec's
    quantize passes to llama.cpp per tensor and recommend prints for llama-quantize --tensor-type-file."""
    return "^" + re.sub(r"([.\\^$|?*+()\[\]{}])", r"\\\1", name) + "$"


def parse_overrides(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`-ot` values (`PATTERN=DEVICE`, several comma-separated in one value, as llama.cpp) in order."""
    out: list[tuple[str, str]] = []
    for value in values:
        for item in value.split(","):
            pattern, sep, device = item.partition("=")
            if not sep or not device or not pattern:
                raise GgprecError(f"-ot {item!r}: expected PATTERN=DEVICE, e.g. exps=CPU")
            out.append((check_pattern(pattern), device))
    return tuple(out)


def override_list(settings: RuntimeSettings) -> list[tuple[str, str]]:
    """(pattern, device) in the order llama.cpp receives them: override_tensor, then n_cpu_moe."""
    out = list(settings.override_tensor)
    if settings.n_cpu_moe == ALL_LAYERS:
        out.append((EXPS_PATTERN, CPU))
    elif settings.n_cpu_moe > 0:
        out.extend((rf"blk\.{i}{EXPS_PATTERN}", CPU) for i in range(settings.n_cpu_moe))
    elif settings.n_cpu_moe < 0:
        raise GgprecError(f"n_cpu_moe: expected a block count >= 0 (or {ALL_LAYERS} for all), got {settings.n_cpu_moe}")
    if len(out) > MAX_OVERRIDES:
        raise GgprecError(f"{len(out)} tensor overrides: llama.cpp takes at most {MAX_OVERRIDES}")
    return out


def gpu_layers(n_gpu_layers: int, n_layer: int) -> tuple[int, bool]:
    """(first block on the GPU, output layer on the GPU) as llama.cpp assigns them with one GPU:
    layer_split.offloaded_layers (the output layer is offloaded first: -ngl 1 puts only the output
    head there, -ngl n_layer every block but block 0)."""
    layers = offloaded_layers(n_layer, n_gpu_layers)
    return min(layers.start, n_layer), n_layer in layers


@dataclass(frozen=True)
class Placer:
    """Decides a tensor's device from its name and layer; built once per (model, settings)."""

    first_gpu: int
    output_on_gpu: bool
    overrides: tuple[tuple[re.Pattern[str], str], ...]
    # Several devices (ggprec.layer_split.layer_devices): the device of each layer 0..n_layer, the last
    # entry the output layer; empty: the single-GPU rule of first_gpu / output_on_gpu.
    layer_device: tuple[str, ...] = ()

    @classmethod
    def for_model(cls, n_layer: int, settings: RuntimeSettings,
                  layer_device: tuple[str, ...] | None = None) -> Placer:
        first_gpu, output_on_gpu = gpu_layers(settings.n_gpu_layers, n_layer)
        compiled = tuple((re.compile(check_pattern(p)), d) for p, d in override_list(settings))
        if layer_device:
            first_gpu = next((i for i, d in enumerate(layer_device[:-1]) if d != CPU), n_layer)
            output_on_gpu = layer_device[-1] != CPU
        return cls(first_gpu, output_on_gpu, compiled, tuple(layer_device or ()))

    def default_device(self, name: str, layer: int | None, output_copy: bool = False) -> str:
        if layer is not None:
            if self.layer_device:
                return self.layer_device[min(layer, len(self.layer_device) - 2)]
            return GPU if layer >= self.first_gpu else CPU
        if name == "token_embd.weight" and not output_copy:
            return CPU  # a row lookup: llama.cpp keeps the input layer in host memory
        if self.layer_device:
            return self.layer_device[-1]
        return GPU if self.output_on_gpu else CPU

    def override(self, name: str) -> str | None:
        """The device of the first override whose pattern is found in `name` (None: no override)."""
        for pattern, device in self.overrides:
            if pattern.search(name):
                return device
        return None

    def device(self, name: str, layer: int | None, output_copy: bool = False) -> str:
        """output_copy: the tied head, which llama.cpp creates as a second `token_embd.weight` in the
        output layer (so a pattern matching token_embd moves both)."""
        return self.override(name) or self.default_device(name, layer, output_copy)


def placement(info: ModelInfo, settings: RuntimeSettings) -> dict[str, str]:
    """Tensor name -> device ("CPU" or "CUDA0", or a device named in an override) for every tensor
    of the file. A tied output head (no output.weight) is not a file tensor: see Placer.device."""
    placer = Placer.for_model(info.hparams.n_layer, settings)
    return {t.name: placer.device(t.name, t.layer) for t in info.tensors}


def overridden(info: ModelInfo, settings: RuntimeSettings) -> dict[str, str]:
    """Tensor name -> device for the tensors an override matches: the ones llama.cpp logs as
    "buffer type overridden" when it loads the file."""
    placer = Placer.for_model(info.hparams.n_layer, settings)
    return {t.name: dev for t in info.tensors if (dev := placer.override(t.name)) is not None}
