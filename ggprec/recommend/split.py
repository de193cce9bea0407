"""A recommendation split over several devices: the devices in llama.cpp's order (the RPC servers' devices,
then the local GPU), and what the chosen plan puts on each (device_plan, from memory.predict over those
devices), for the output and the JSON document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..device_plan import HOST, layer_ranges, plan_devices
from ..devices import GPU
from ..layer_split import OffloadDevice
from .search import BUDGET_HOST


def split_devices(devices: Sequence[Any], vram: int) -> list[OffloadDevice]:
    """The OffloadDevices of a split: every RPC server's (recommend_devices.DeviceBudget), then this host's
    GPU when VRAM is given (llama.cpp's default order); none without RPC servers (one machine)."""
    if not devices:
        return []
    return [d.device for d in devices] + ([OffloadDevice(GPU, GPU, vram)] if vram else [])


def describe_split(rec: Any, info: Any, devices: Sequence[Any], offload: Sequence[OffloadDevice],
                   budgets: Mapping[str, int], speed: Any, walk: Any) -> None:
    """Fill rec.devices (each device: budget and its source, predicted bytes, layers) and rec.device_plan, and
    say where the expected speed's figures come from for every device taking part."""
    from ..ggml_types import lookup

    types = {n: lookup(t) for n, t in rec.tensor_types.items()}
    plan = plan_devices(info, rec.settings, types, devices=offload)
    rec.device_plan = plan
    by_buffer = {d.device.buffer: d for d in devices}
    shares = {s.device: s for s in plan.shares}
    rows = []
    for d in offload:
        given = by_buffer.get(d.buffer)
        share = shares[d.buffer]
        row = given.to_dict() if given is not None else {
            "name": d.name, "device": d.buffer, "endpoint": None, "budget_bytes": budgets.get(d.buffer),
            "probed": False, "source": "--vram", "reports_free_bytes": None, "gbps": None}
        rows.append(row | {"predicted_bytes": share.total, "layers": layer_ranges(share.layers, plan.n_layer)})
        if given is None or not given.probed:
            share.free = None  # declared (or --vram): nothing was reported
    host = shares[HOST]
    rows.append({"name": "CPU", "device": HOST, "endpoint": None, "budget_bytes": budgets.get(BUDGET_HOST),
                 "probed": False, "source": "--ram", "reports_free_bytes": None, "gbps": None,
                 # resident RAM (search.totals): mapped pages of offloaded tensors are dropped after the load
                 "predicted_bytes": rec.host_total, "layers": layer_ranges(host.layers, plan.n_layer)})
    rec.devices = rows
    reading = [dev for dev, _ in walk.reads(walk.choice(rec.row.steps), info).items()]
    rec.speed_source = speed.describe_split(reading)


def split_text(rec: Any) -> str:
    """Where the layers go, in words; an RPC server left empty at an assumed speed is named, with the flag
    that tells recommend its real one (the assumption, this host's rate, decides the split)."""
    s = rec.settings
    if not s.n_gpu_layers:
        text = (f"no offload: this host alone is expected faster than splitting over {len(rec.devices) - 1} "
                "devices (each RPC hop costs; see the front for the splits)")
    else:
        ts = ",".join(f"{x:g}" for x in s.tensor_split) if s.tensor_split else "-"
        parts = [f"{d['name']} {d['layers']}" for d in rec.devices if d["layers"] != "-"]
        text = f"split -ngl {s.n_gpu_layers} -ts {ts} over {len(rec.devices)} devices: " + "; ".join(parts)
    idle = [d for d in rec.devices if d["layers"] == "-" and d.get("endpoint") and d.get("gbps") is None]
    if idle:
        text += (f"; {', '.join(d['name'] for d in idle)} left empty at an assumed speed (this host's): give "
                 f"--rpc-bandwidth {idle[0]['endpoint']}=GB/s if it reads faster")
    return text
