"""A memory-bandwidth model of token generation speed.

Generating one token reads every weight once (except token_embd, of which one row is looked up) plus the
KV cache, so decode speed is bandwidth-bound: seconds per token ~ bytes read on each device / that device's
bandwidth, summed over devices (layers run one after another). The host bandwidth is measured with a numpy
copy; a GPU's cannot be measured without one, so it is given (`--bandwidth`) or an assumption that is printed.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

# Assumed when no GPU bandwidth is given: a mid-range discrete GPU (GB/s); always reported as assumed.
ASSUMED_GPU_GBPS = 500.0


@dataclass(frozen=True)
class Bandwidth:
    host_gbps: float
    gpu_gbps: float
    host_source: str  # "measured (numpy copy)" or "given"
    gpu_source: str  # "given" or "assumed"


@functools.lru_cache(maxsize=1)
def measure_host_gbps(n_bytes: int = 64 * 2**20, reps: int = 5) -> float:
    """Host memory bandwidth in GB/s from the best of a few numpy copies (a copy reads and writes each byte)."""
    import numpy as np

    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best / 1e9


def bandwidth(host_gbps: float | None = None, gpu_gbps: float | None = None) -> Bandwidth:
    host = host_gbps if host_gbps is not None else measure_host_gbps()
    return Bandwidth(host_gbps=host, gpu_gbps=gpu_gbps if gpu_gbps is not None else ASSUMED_GPU_GBPS,
                     host_source="given" if host_gbps is not None else "measured (numpy copy)",
                     gpu_source="given" if gpu_gbps is not None else "assumed")


def tg_tokens_per_second(gpu_bytes: int, host_bytes: int, bw: Bandwidth) -> float:
    """Expected decode tok/s when each token reads gpu_bytes from VRAM and host_bytes from RAM."""
    seconds = gpu_bytes / (bw.gpu_gbps * 1e9) + host_bytes / (bw.host_gbps * 1e9)
    return 1.0 / seconds if seconds > 0 else float("inf")
