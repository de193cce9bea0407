"""The AMX probe's child process (see ggprec.probes): run as `python -m ggprec.amx_probe WORKDIR`."""

from __future__ import annotations

import sys
from pathlib import Path


def _probe(workdir: Path) -> None:
    """Child process: quantize a tiny model to q8_0 with llama.cpp and run one batch with extra buffers on."""
    from .gguf_info import read_gguf
    from .llama_backend import load_model
    from .plan import resolve_plan
    from .profile import Profile
    from .quantize import quantize
    from .runner import Decoder
    from .settings import RuntimeSettings
    from .synth import PRESETS, write_synth

    src = write_synth(workdir / "probe-f16.gguf", PRESETS["tiny"], dtype="f16")
    plan = resolve_plan(read_gguf(src), Profile(name="probe", description="", rules=(), default="q8_0"))
    out = quantize(src, plan, workdir / "probe-q8_0.gguf", threads=1)
    with load_model(out, RuntimeSettings(n_ctx=128, n_threads=1), extra_buffers=True) as lm:
        dec = Decoder(lm)
        dec.decode(list(range(1, 33)), 0)
        dec.close()


if __name__ == "__main__":
    _probe(Path(sys.argv[1]))
