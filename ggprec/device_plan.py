"""What each device must hold when a model is split over several devices (RPC servers, GPUs and this
host), predicted before anything loads, and the commands that run that split with llama.cpp's own tools.

The devices come from probing the RPC servers (`rpc.planned_devices`: pure Python, nothing of llama.cpp
connects), the layers from llama.cpp's split rule (`layer_split`), the bytes from `memory.predict` with
those devices: weights per device (-ot on top), each layer's KV rows on its device, one compute buffer
per device (the logits on the output layer's device). A CPU server reports its host's whole RAM as
free, whatever else runs there: the `free` column is what the server says, not a budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ggml_types import GgmlType
from .gguf_info import ModelInfo
from .layer_split import CPU, OffloadDevice, layer_devices
from .settings import ALL_LAYERS, RuntimeSettings
from .units import MIB

HOST = "this host"


@dataclass
class DeviceShare:
    """One device's part: layers (the output layer as n_layer), bytes by kind, free memory it reports."""

    device: str  # buffer name (RPC0[127.0.0.1:50052], CUDA0) or HOST
    name: str  # registry name (RPC0, CUDA0) or CPU
    layers: list[int] = field(default_factory=list)
    model: int = 0
    kv: int = 0
    compute: int = 0
    other: int = 0  # output buffer (host)
    free: int | None = None

    @property
    def total(self) -> int:
        return self.model + self.kv + self.compute + self.other

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "name": self.name, "layers": self.layers, "model": self.model, "kv": self.kv,
                "compute": self.compute, "other": self.other, "total": self.total, "free": self.free}


@dataclass
class DevicePlan:
    settings: RuntimeSettings
    n_layer: int
    shares: list[DeviceShare]
    buffers: dict[str, int]  # memory.predict's keys
    explain: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "n_layer": self.n_layer,
                "devices": [s.to_dict() for s in self.shares], "buffers": dict(self.buffers)}


def plan_devices(info: ModelInfo, settings: RuntimeSettings, tensor_types: Mapping[str, GgmlType] | None = None,
                 local_gpus: Sequence[tuple[str, int]] = (), devices: Sequence[OffloadDevice] | None = None,
                 mmap: bool = True) -> DevicePlan:
    """Each device's share of `info` under `settings` (its rpc_servers are probed unless `devices` is
    given). local_gpus: (name, free bytes) of this host's GPUs, offloaded to after the RPC devices."""
    from .memory import predict
    from .rpc import wire as rpc

    if devices is None:
        devices = rpc.planned_devices(settings.rpc_servers, settings.devices, local_gpus,
                                      split_mode=settings.split_mode, main_gpu=settings.main_gpu)
    n_layer = info.hparams.n_layer
    ngl = settings.n_gpu_layers
    if devices and (ngl == ALL_LAYERS or ngl > n_layer + 1):
        settings = settings.with_overrides(n_gpu_layers=n_layer + 1)
    elif not devices:
        settings = settings.with_overrides(n_gpu_layers=0)
    pred = predict(info, settings, tensor_types, mmap=mmap, devices=devices)
    layers = layer_devices(n_layer, settings.n_gpu_layers, devices, settings.tensor_split)
    shares = {d.buffer: DeviceShare(d.buffer, d.name, free=d.free) for d in devices}
    host = DeviceShare(HOST, CPU)
    for il, dev in enumerate(layers):
        (shares.get(dev) or host).layers.append(il)
    for key, n in pred.buffers.items():
        kind, dev = key.split(":", 1)
        share = shares.get(dev) or host
        setattr(share, kind if kind in ("model", "kv", "compute") else "other",
                getattr(share, kind if kind in ("model", "kv", "compute") else "other") + n)
    return DevicePlan(settings, n_layer, [*shares.values(), host], dict(pred.buffers), dict(pred.explain))


def layer_ranges(layers: Sequence[int], n_layer: int) -> str:
    """0-10, 30=output"""
    parts: list[str] = []
    blocks = [il for il in layers if il < n_layer]
    start = prev = None
    for il in [*blocks, None]:
        if il is not None and prev is not None and il == prev + 1:
            prev = il
            continue
        if start is not None:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = il
    if n_layer in layers:
        parts.append("output")
    return ", ".join(parts) or "-"


def server_lines(endpoints: Sequence[str]) -> list[str]:
    """One line per RPC host: the server to start there."""
    lines = []
    for endpoint in endpoints:
        host, port = endpoint.split(":")
        lines.append(f"on {host}: ggprec rpc-server --host {host} --port {port}   "
                     f"(or llama.cpp's: ggml-rpc-server -H {host} -p {port})")
    return lines


def commands(plan: DevicePlan, model: str) -> list[str]:
    """One line per RPC host (its server) and the client's llama.cpp line for this split."""
    s = plan.settings
    lines = server_lines(s.rpc_servers)
    flags = [f"-m {model}", f"-ngl {s.n_gpu_layers}", f"-c {s.n_ctx}"]
    if s.rpc_servers:
        flags.append(f"--rpc {','.join(s.rpc_servers)}")
    if s.devices:
        flags.append(f"--device {','.join(s.devices)}")
    if s.tensor_split:
        flags.append(f"-ts {','.join(f'{x:g}' for x in s.tensor_split)}")
    if s.split_mode != "layer":
        flags.append(f"-sm {s.split_mode} -mg {s.main_gpu}")
    if s.cache_type_k != "f16" or s.cache_type_v != "f16":
        flags.append(f"-ctk {s.cache_type_k} -ctv {s.cache_type_v}")
    if s.flash_attn_effective:
        flags.append("-fa on")
    for pattern, device in s.override_tensor:
        flags.append(f"-ot '{pattern}={device}'")
    lines.append("client: llama-server " + " ".join(flags))
    return lines


def render(plan: DevicePlan, console: Any, model: str, budgets: Mapping[str, int] | None = None,
           sources: Mapping[str, str] | None = None, with_commands: bool = True) -> None:
    """The table of device shares (with each device's budget when given, and where it comes from: `sources`
    by device) and the command lines."""
    from rich.markup import escape
    from rich.table import Table

    s = plan.settings
    table = Table(title=f"memory per device: -ngl {s.n_gpu_layers}"
                        + (f", -ts {','.join(f'{x:g}' for x in s.tensor_split)}" if s.tensor_split else "")
                        + f", context {s.n_ctx}")
    headers = ["device", "layers", "weights MiB", "KV MiB", "compute MiB", "total MiB", "reports free MiB"]
    for header in headers + (["budget MiB"] if budgets else []) + (["budget from"] if sources else []):
        table.add_column(header, justify="left" if header in ("device", "layers") else "right")
    for share in plan.shares:
        budget = budgets.get(share.device) if budgets else None
        label = share.device if share.device in (HOST, share.name) else f"{share.name} {share.device}"
        table.add_row(escape(label),
                      layer_ranges(share.layers, plan.n_layer), f"{share.model / MIB:,.2f}", f"{share.kv / MIB:,.2f}",
                      f"{share.compute / MIB:,.2f}", f"{share.total / MIB:,.2f}",
                      "-" if share.free is None else f"{share.free / MIB:,.0f}",
                      *([] if not budgets else ["-" if budget is None else f"{budget / MIB:,.0f}"]),
                      *([] if not sources else [escape(sources.get(share.device, ""))]))
    console.print(table)
    console.print("a CPU server reports its whole RAM as free: budget its host yourself", highlight=False)
    if not with_commands:
        return
    for line in commands(plan, model):
        console.print(escape(line), highlight=False, soft_wrap=True)
