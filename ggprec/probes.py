"""Probes that run llama.cpp to learn what this machine can do (measure stack).

The AMX probe: on a CPU that advertises AMX-INT8, quantize a tiny model to q8_0 and decode one batch with
llama.cpp's extra buffer types on, in a child process (`python -m ggprec.amx_probe`: a crash there costs
nothing; run as a process, never imported, so the loader can ask for the verdict without an import cycle).
The verdict is cached (`cpu_buffers.probe_cache()`, keyed by `cpu_buffers.probe_key()`), and
`cpu_buffers.host_buffers()` reads it without running anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from .cpu_buffers import HostBuffers, cached_amx_verdict, cpu_flags, from_flags, host_buffers, probe_cache, probe_key

PROBE_TIMEOUT_S = 120


def machine_buffers() -> HostBuffers:
    """This machine's extra-buffer rules, running the AMX probe first where AMX is advertised and no verdict is
    cached (the only case that runs anything)."""
    if from_flags(cpu_flags()).amx and cached_amx_verdict() is None:
        amx_works()
        host_buffers.cache_clear()
    return host_buffers()


def amx_works() -> bool:
    """Whether a quantized matmul through llama.cpp's AMX buffer runs here, from a cached child-process probe."""
    verdict = cached_amx_verdict()
    if verdict is not None:
        return verdict
    with tempfile.TemporaryDirectory(prefix="ggprec-amx-") as tmp:
        try:
            rc = subprocess.run([sys.executable, "-m", "ggprec.amx_probe", tmp], capture_output=True,
                                timeout=PROBE_TIMEOUT_S, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    works = rc == 0
    cache = probe_cache()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp_file.write_text(json.dumps({"key": probe_key(), "works": works, "returncode": rc}))
    os.replace(tmp_file, cache)
    return works
