"""What llama.cpp actually allocates for a model and context, per buffer, as its own log reports it.

llama.cpp logs one line per buffer when it loads a model and creates a context:

    load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
    llama_context:        CPU  output buffer size =     0.19 MiB
    llama_kv_cache:        CPU KV buffer size =    11.25 MiB
    sched_reserve:        CPU compute buffer size =    98.25 MiB

They become `Allocation.buffers` keys `model:CPU_Mapped`, `output:CPU`, `kv:CPU`, `compute:CPU` (and
`model:CUDA0`, `compute:CUDA_Host`... on a GPU build). Sizes are logged in MiB with two decimals, so
a logged buffer is known to about +-5 KiB.

With `no_alloc` (llama.cpp's "only load metadata and simulate memory allocations", which needs load
mode NONE instead of mmap) the weights are not read, the compute buffer is reported as usual, but the
model and KV buffers are logged as 0.00 MiB. Their sizes then come from what llama.cpp computed:
`llama_model_size()` (exact bytes of all weights) and the KV cache's own `size = ... MiB` line. When
such a buffer sits on a single device the total is that device's; split over several devices (partial
GPU offload) only the total is known, under the key `model:total` / `kv:total`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from .devices import Buffers
from .llama_backend import LogCapture, load_model
from .settings import RuntimeSettings
from .units import MIB

KINDS = {"model": "model", "KV": "kv", "compute": "compute", "output": "output"}
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size\s*=\s*([0-9.]+) MiB")
_KV_TOTAL = re.compile(r"^llama_kv_cache\w*: size =\s*([0-9.]+) MiB")


@dataclass
class Allocation(Buffers):
    """Bytes per buffer, keyed `kind:device` (kind: model, kv, compute, output)."""

    no_alloc: bool = False  # simulated by llama.cpp (weights not loaded)
    notes: list[str] = field(default_factory=list)

    @property
    def host_total(self) -> int:
        """Bytes in host memory; under no_alloc with weights on several buffers, `model:total` counts as host."""
        return super().host_total + self.buffers.get("model:total", 0)

    def to_dict(self) -> dict[str, Any]:
        return {"buffers": dict(self.buffers), "total": self.total, "no_alloc": self.no_alloc, "notes": self.notes}


def parse_buffers(lines: list[str]) -> dict[str, int]:
    """Sum the logged buffer sizes per `kind:device` key (an iSWA model logs two KV buffers)."""
    out: dict[str, int] = {}
    for line in lines:
        m = _BUFFER.search(line)
        if m:
            key = f"{KINDS[m.group(2)]}:{m.group(1)}"
            out[key] = out.get(key, 0) + round(float(m.group(3)) * MIB)
    return out


def parse_kv_total(lines: list[str]) -> int:
    return sum(round(float(m.group(1)) * MIB) for line in lines if (m := _KV_TOTAL.match(line.strip())))


def _fill_simulated(buffers: dict[str, int], kind: str, total: int, notes: list[str]) -> None:
    """Replace a kind's zero-sized simulated buffers by the known total (see the module doc)."""
    keys = [k for k in buffers if k.startswith(kind + ":")]
    if not keys or total <= 0 or any(buffers[k] for k in keys):
        return
    if len(keys) == 1:
        buffers[keys[0]] = total
    else:
        for k in keys:
            del buffers[k]
        buffers[f"{kind}:total"] = total
        notes.append(f"{kind} buffers span {len(keys)} devices under no_alloc; only their total is known")


def allocation_from_log(log: LogCapture, model_bytes: int | None = None, no_alloc: bool = False) -> Allocation:
    lines = log.text
    buffers = parse_buffers(lines)
    notes: list[str] = []
    if no_alloc:
        if model_bytes is not None:
            _fill_simulated(buffers, "model", model_bytes, notes)
        _fill_simulated(buffers, "kv", parse_kv_total(lines), notes)
    return Allocation(buffers=buffers, no_alloc=no_alloc, notes=notes)


def measure_allocation(path: str | os.PathLike[str], settings: RuntimeSettings, no_alloc: bool = False,
                       extra_buffers: bool | None = None) -> Allocation:
    """Load `path` with `settings`, create a context, and return what llama.cpp allocated (or, with
    `no_alloc`, would allocate) per buffer. Nothing is evaluated. extra_buffers: as `load_model`'s (None:
    this machine's rule; False: llama.cpp's --no-repack)."""
    from .llama_bindings import load
    llama_cpp = load()

    with load_model(path, settings, no_alloc=no_alloc, extra_buffers=extra_buffers) as lm:
        model_bytes = llama_cpp.llama_model_size(lm.model)
        return allocation_from_log(lm.log, model_bytes=model_bytes, no_alloc=no_alloc)
