"""Where a measurement ran: CPU, cores, RAM, GPU, llama-cpp-python version and llama.cpp's system info.

Stored with every history row so results are compared only on the same hardware and build.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-...` CSV output, or None when there is no usable nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in done.stdout.splitlines() if line.strip()]


def gpus() -> list[dict[str, Any]]:
    rows = nvidia_smi("--query-gpu=name,memory.total") or []
    return [{"name": r[0], "memory_bytes": int(float(r[1])) << 20} for r in rows if len(r) >= 2]


def gpu_memory_used_bytes(pid: int | None = None) -> int | None:
    """GPU memory this process holds (nvidia-smi's per-process figure), None without an NVIDIA GPU."""
    pid = os.getpid() if pid is None else pid
    rows = nvidia_smi("--query-compute-apps=pid,used_memory")
    if rows is None:
        return None
    return sum(int(float(r[1])) << 20 for r in rows if len(r) >= 2 and r[0] == str(pid))


@functools.lru_cache(maxsize=1)
def fingerprint() -> dict[str, Any]:
    """The machine and build a measurement ran on (computed once per process)."""
    from .llama_bindings import load
    llama_cpp = load()

    from .llama_backend import local_gpus, system_info

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "gpus": gpus(),
        "gpu_offload": bool(local_gpus()),  # a local GPU: llama_supports_gpu_offload is true on any RPC build
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": system_info(),
    }
