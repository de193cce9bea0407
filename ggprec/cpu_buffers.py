"""llama.cpp's extra CPU buffer types on this machine: which weights they take, how big, and whether they work.

On x86, llama.cpp's CPU backend moves host matmul weights of some types out of the mmap'd file into
buffers of its own with a faster layout (`src/llama-model.cpp` make_cpu_buft_list, first match wins):

- `AMX` (CPUs with AMX-INT8, ggml-cpu/amx): q4_0, q4_1, q8_0 (row length a multiple of 32), q4_k, q5_k,
  q6_k, iq4_xs (multiple of 256) and f16 (multiple of 16), when the rows number a multiple of 32. Its
  allocation is the packed size: q8_0 gains 4 bytes per block, q4_k/q5_k 4, iq4_xs 2 (amx/mmq.cpp
  get_row_size); the others are their plain size.
- `CPU_REPACK` (ggml-cpu/repack.cpp): q4_0, q4_k, iq4_nl, mxfp4 with AVX2 and q2_k with AVX-512, when the
  rows number a multiple of 8; the same bytes as in the file. Routed-expert (3-D) weights too: repack
  supports MUL_MAT_ID, AMX does not.

token_embd is a row lookup, never a matmul weight, so it stays mapped; a tied head's matmul copy follows the
rules. Measured on this project's machines (scripts/check_memory_model.py, tests/test_memory.py).

On some virtual machines AMX is advertised but its tile state is not usable: llama.cpp then crashes with a
segmentation fault in the first quantized matmul (seen on a 2-core Xeon with AMX this project's CI ran on).
A plain llama.cpp user's remedy is `--no-repack` (llama_model_params.use_extra_bufts = false). The measure
stack (`ggprec.probes`) probes once per machine and llama.cpp build, in a child process so that a crash costs
nothing, and loads with `use_extra_bufts` off where the probe crashed; this module only reads that verdict
(it runs nothing), and `memory.predict` then predicts no AMX or CPU_REPACK buffer.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .ggml_types import GgmlType

AMX, REPACK = "AMX", "CPU_REPACK"
AMX_ROWS = 32  # the AMX kernels need a multiple of 2 x TILE_N output rows
# type -> (row-length alignment, extra bytes per block) of the AMX buffer.
AMX_TYPES: dict[str, tuple[int, int]] = {
    "q4_0": (32, 0), "q4_1": (32, 0), "q8_0": (32, 4),
    "q4_k": (256, 4), "q5_k": (256, 4), "q6_k": (256, 0), "iq4_xs": (256, 2),
    "f16": (16, 0),
}
# type -> (CPU feature it needs, row-count multiple) of the x86 repacking.
REPACK_X86: dict[str, tuple[str, int]] = {
    "q4_0": ("avx2", 8), "q4_k": ("avx2", 8), "iq4_nl": ("avx2", 8), "mxfp4": ("avx2", 8),
    "q2_k": ("avx512f", 8),
}


@dataclass(frozen=True)
class HostBuffers:
    """The extra CPU buffer types llama.cpp uses for weights when ggprec loads a model here."""

    use_extra: bool = True  # False: loaded like llama.cpp's --no-repack
    amx: bool = False
    repack: dict[str, int] = field(default_factory=dict)  # type -> row-count multiple
    note: str = ""  # why extra buffers are off, for notices

    def buffer_for(self, gtype: GgmlType, shape: tuple[int, ...]) -> tuple[str, int] | None:
        """(buffer, bytes) for a host matmul weight that leaves the mapped file, or None if it stays mapped.

        shape is ggml's (row length, rows[, experts]). llama.cpp asks each extra buffer type whether it
        supports the op the weight feeds: a 2-D weight feeds MUL_MAT, a 3-D (routed expert) weight MUL_MAT_ID.
        AMX supports MUL_MAT only; CPU_REPACK both (ggml-cpu/repack.cpp supports_op), with the same rule
        on the row count."""
        if not self.use_extra or len(shape) not in (2, 3):
            return None
        k, n = shape[0], shape[1]
        amx = AMX_TYPES.get(gtype.name) if self.amx and len(shape) == 2 else None
        if amx and k % amx[0] == 0 and n % AMX_ROWS == 0:
            return AMX, n * (k // gtype.block_size) * (gtype.block_bytes + amx[1])
        mult = self.repack.get(gtype.name)
        if mult and n % mult == 0:
            return REPACK, gtype.tensor_bytes(shape)
        return None

    def describe(self) -> str:
        """One line for notices and --json: which extra buffer rules a prediction used."""
        if not self.use_extra:
            return "extra CPU buffers off (--no-repack)" + (f": {self.note}" if self.note else "")
        parts = (["AMX"] if self.amx else []) + ([f"CPU_REPACK {','.join(sorted(self.repack))}"] if self.repack else [])
        return "extra CPU buffers: " + (", ".join(parts) if parts else "none")


def cpu_flags() -> set[str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            line = next((x for x in f if x.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[-1].split())


def from_flags(flags: set[str], use_extra: bool = True, note: str = "") -> HostBuffers:
    """The buffer rules for a CPU with these /proc/cpuinfo flags (the wheel is built for the native CPU)."""
    if not use_extra:
        return HostBuffers(use_extra=False, note=note)
    repack = {t: mult for t, (feature, mult) in REPACK_X86.items() if feature in flags}
    return HostBuffers(amx="amx_int8" in flags and "avx512_vnni" in flags, repack=repack)


def rules_for(cpu_flags: str | None, no_repack: bool = False) -> HostBuffers:
    """The rules of a target machine: its comma-separated /proc/cpuinfo flags ('none': no x86 features;
    None: this machine's, probed), or no extra buffers at all (llama.cpp's --no-repack)."""
    if no_repack:
        return from_flags(set(), use_extra=False, note="--no-repack")
    if cpu_flags is None:
        return host_buffers()
    flags = {f.strip().lower() for f in cpu_flags.split(",") if f.strip()} - {"none"}
    return from_flags(flags)


@lru_cache(maxsize=1)
def host_buffers() -> HostBuffers:
    """This machine's rules, without running anything: on an AMX CPU, the verdict of the AMX probe that the
    measure stack ran and cached (`ggprec.probes`); before any probe, llama.cpp's default (AMX on)."""
    flags = cpu_flags()
    rules = from_flags(flags)
    if not rules.amx or cached_amx_verdict() is not False:
        return rules
    return from_flags(flags, use_extra=False, note=AMX_CRASH_NOTE)


AMX_CRASH_NOTE = ("llama.cpp's AMX kernels crash on this machine (probed once): weights are loaded without "
                  "repacking, as llama.cpp's --no-repack does")


def probe_key() -> str:
    """What the AMX verdict depends on: ggprec, the llama.cpp build, the host and its CPU flags."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        lcp = version("llama-cpp-python")
    except PackageNotFoundError:
        lcp = "?"
    return f"ggprec {__version__}, llama-cpp-python {lcp}, {platform.node()}, {sorted(cpu_flags())!r}"


def probe_cache() -> Path:
    from .demo_model import cache_dir

    return cache_dir() / "amx-probe.json"


def cached_amx_verdict() -> bool | None:
    """Whether llama.cpp's AMX kernels worked here when probed (None: never probed with this build)."""
    import json

    try:
        stored = json.loads(probe_cache().read_text())
        return bool(stored["works"]) if stored.get("key") == probe_key() else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None
