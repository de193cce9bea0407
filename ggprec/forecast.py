"""What a plan will allocate and how fast it will decode on a target machine, without running it.

The machine is a parameter: its GPU and host bandwidths (given, or this machine's calibration, or a labelled
assumption: `speed.load_speed_model`) and its CPU's extra buffer rules (`cpu_buffers`: which weights llama.cpp
repacks there; default this host's). Memory per buffer is `memory.predict`'s, grouped per device; speed is
`speed.SpeedModel.expected` at the depth `ggprec run` measures (llama-bench's tg after a short prompt) or at
`depth` tokens already in the cache (llama-bench's `-d`). Every figure says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cpu_buffers import HostBuffers
from .memory import MemoryPrediction, predict
from .plan import Plan
from .settings import RuntimeSettings
from .speed import SpeedEstimate, SpeedModel, decode_cells
from .units import size_text


@dataclass(frozen=True)
class Forecast:
    plan: Plan
    settings: RuntimeSettings
    memory: MemoryPrediction
    speed: SpeedEstimate
    depth: int  # tokens in the KV cache before the decodes tg is expected for
    kv_cells: int  # KV cells read per decoded token, on average
    host_rules: str  # the extra CPU buffer rules the memory prediction used

    def device_totals(self) -> dict[str, int]:
        """Device -> bytes, host buffers (CPU, CPU_Mapped, CPU_REPACK, AMX, *_Host) together as "host"."""
        return {"host": self.memory.host_total} | self.memory.device_totals()

    def to_dict(self) -> dict[str, Any]:
        return {"plan_hash": self.plan.plan_hash(), "profile": self.plan.profile.name,
                "settings": self.settings.to_dict(), "memory": self.memory.to_dict(),
                "device_totals": self.device_totals(), "host_rules": self.host_rules,
                "depth": self.depth, "kv_cells": self.kv_cells, "expected": self.speed.to_dict()}


def forecast(plan: Plan, settings: RuntimeSettings, speed_model: SpeedModel, host: HostBuffers,
             depth: int = 0, tg: int = 128) -> Forecast:
    """Buffers and expected tok/s of `plan` (its source's header + planned types) under `settings` on the
    machine `speed_model` and `host` describe; tg expected over `tg` decodes after `depth` cached tokens."""
    from .gguf_info import read_gguf

    info = read_gguf(plan.source)
    types = plan.tensor_types()
    cells = decode_cells(depth, tg)
    return Forecast(plan, settings, predict(info, settings, types, host=host),
                    speed_model.expected(info, settings, types, kv_cells=cells), depth, cells, host.describe())


def render(fc: Forecast, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"predicted buffers ({fc.host_rules})")
    for col in ("buffer", "size", "how"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for key, n in sorted(fc.memory.buffers.items()):
        table.add_row(key, size_text(n), fc.memory.explain.get(key, ""))
    console.print(table)
    console.print("per device: " + ", ".join(f"{d} {size_text(n)}" for d, n in fc.device_totals().items()),
                  highlight=False)
    pp = f"{fc.speed.pp_tps:,.0f} tok/s" if fc.speed.pp_tps else "not predicted (no calibration of that device)"
    where = f"after a {fc.depth}-token context" if fc.depth else "after a short prompt"
    console.print(f"expected tg {fc.speed.tg_tps:,.1f} tok/s {where} ({fc.kv_cells} KV cells read per token), "
                  f"pp {pp}; source: {fc.speed.source}", highlight=False)
