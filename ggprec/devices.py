"""Devices and buffers: the one classification of llama.cpp's buffer and device names.

llama.cpp names a buffer by its buffer type: `CPU`, `CPU_Mapped` (the mmap'd file), `CPU_REPACK` and `AMX`
(the CPU backend's extra weight buffers), `CUDA0`, `CUDA_Host` (pinned host memory of the CUDA backend),
`RPC0[host:port]` (a device on an RPC server). Host memory is everything the CPU backend owns plus any
backend's pinned `*_Host` buffers; every other name is a device with memory of its own. Buffers are keyed
`kind:device` (kind: model, kv, compute, output) both where they are predicted (`memory`) and where llama.cpp
reports them (`alloc`), and both share `Buffers` for their totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CPU = "CPU"
GPU = "CUDA0"  # the device ggprec's memory model predicts for offloaded tensors
GPU_HOST = "CUDA_Host"
HOST_CLASS, GPU_CLASS = "CPU", "GPU"  # device classes of the speed model


def is_host(device: str) -> bool:
    """Whether a buffer of this device lives in host RAM (CPU, CPU_Mapped, CPU_REPACK, AMX, CUDA_Host, ...)."""
    return device.startswith(("CPU", "AMX")) or device.endswith("_Host") or device == "host"


def device_class(device: str) -> str:
    """HOST_CLASS for host buffers, else GPU_CLASS (a device with memory of its own)."""
    return HOST_CLASS if is_host(device) else GPU_CLASS


def split_key(key: str) -> tuple[str, str]:
    """`kind:device` -> (kind, device)."""
    kind, _, device = key.partition(":")
    return kind, device


@dataclass
class Buffers:
    """Bytes per buffer keyed `kind:device`, with the totals every reader needs."""

    buffers: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.buffers.values())

    def by_kind(self, kind: str) -> int:
        return sum(v for k, v in self.buffers.items() if split_key(k)[0] == kind)

    def device_total(self, device: str) -> int:
        return sum(v for k, v in self.buffers.items() if split_key(k)[1] == device)

    @property
    def host_total(self) -> int:
        """Bytes in host memory: CPU buffers (mapped, repacked) and pinned host buffers of GPU backends."""
        return sum(v for k, v in self.buffers.items() if is_host(split_key(k)[1]))

    def device_totals(self) -> dict[str, int]:
        """Device -> bytes for every device with memory of its own (host buffers are `host_total`)."""
        devices = sorted({split_key(k)[1] for k in self.buffers if not is_host(split_key(k)[1])})
        return {d: self.device_total(d) for d in devices}
