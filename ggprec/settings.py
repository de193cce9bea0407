"""Runtime settings of a llama.cpp context: what a profile's `runtime:` and `kv_cache:` sections hold
and what `ggprec run` passes to llama-cpp-python. One dataclass shared by profile, plan, memory,
runner and recommend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

ALL_LAYERS = -1  # n_gpu_layers value meaning "every layer", as llama.cpp's -ngl 999
# Fields that name this run's devices (hosts, GPUs): given on the command line, never part of a profile.
DEVICE_FIELDS = ("rpc_servers", "tensor_split", "devices", "split_mode", "main_gpu")


@dataclass(frozen=True)
class RuntimeSettings:
    n_gpu_layers: int = 0
    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool | None = None  # None: on exactly when the V cache is quantized (llama.cpp needs it)
    n_threads: int | None = None  # None: llama-cpp-python's default
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    # Per-tensor placement, llama.cpp's `-ot PATTERN=DEVICE` in order (first match wins; the pattern is
    # searched in the tensor name, std::regex_search) and `--n-cpu-moe N` (routed experts of blocks
    # 0..N-1 on the CPU; ALL_LAYERS = `--cpu-moe`, every block). See ggprec.tensor_overrides.
    override_tensor: tuple[tuple[str, str], ...] = ()
    n_cpu_moe: int = 0  # ALL_LAYERS (-1) = --cpu-moe
    # Devices (llama.cpp's --rpc, -ts, --device; see ggprec.rpc and ggprec.layer_split): RPC servers as
    # HOST:PORT whose devices join the load; the share of offloaded layers per device (empty: by free
    # memory); the devices to offload to, by name, in order (empty: every RPC device, then local GPUs;
    # ("none",): no offload).
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    devices: tuple[str, ...] = ()
    split_mode: str = "layer"  # llama.cpp's -sm: "layer" (split over the devices) or "none" (main_gpu only)
    main_gpu: int = 0  # -mg: with split_mode "none", the index of the one device used (among the above)

    @property
    def flash_attn_effective(self) -> bool:
        if self.flash_attn is not None:
            return self.flash_attn
        return self.cache_type_v not in ("f16", "f32", "bf16")

    def with_overrides(self, **changes: Any) -> RuntimeSettings:
        """A copy with the given fields replaced; None values leave a field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped: override_tensor as a list of [pattern, device] pairs (what a stored copy reads back as)."""
        d = asdict(self)
        d["override_tensor"] = [list(pair) for pair in self.override_tensor]
        for name in ("rpc_servers", "tensor_split", "devices"):  # tuples -> JSON lists
            d[name] = list(d[name])
        return d
