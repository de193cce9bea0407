"""Splits that fit given devices, for real shapes (sparse synthetic files: header only, no disk), with the
commands that run them. No server is needed: the devices are described (as `rpc.planned_devices` would
find them) instead of probed.

    python scripts/fit_split_examples.py [--type q4_k] [--ctx 8192]

1. Llama-3-70B: one 32 GiB RPC host, then a local 24 GiB GPU (llama.cpp's default order: RPC devices
   first), 64 GiB of RAM on the client.
2. Qwen3-30B-A3B: two RPC hosts with 12 GiB each, 16 GiB of RAM on the client.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from rich.console import Console

    from ggprec.device_plan import render
    from ggprec.ggml_types import weight_type
    from ggprec.gguf_info import read_gguf
    from ggprec.layer_split import OffloadDevice
    from ggprec.recommend_devices import fit_split, resolve_budgets
    from ggprec.settings import RuntimeSettings
    from ggprec.synth import PRESETS, write_synth
    from ggprec.units import GIB

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="q4_k", help="Weight type of every matrix (default q4_k).")
    ap.add_argument("--ctx", type=int, default=8192)
    args = ap.parse_args()
    wtype = weight_type(args.type)
    cases = [
        ("llama-3-70b", [OffloadDevice("RPC0", "RPC0[hostA:50052]", 64 * GIB),
                         OffloadDevice("CUDA0", "CUDA0", 24 * GIB)],
         {"hostA:50052": 32, "CUDA0": 24, "host": 64}, ("hostA:50052",)),
        ("qwen3-30b-a3b", [OffloadDevice("RPC0", "RPC0[hostA:50052]", 64 * GIB),
                           OffloadDevice("RPC1", "RPC0[hostB:50052]", 64 * GIB)],
         {"hostA:50052": 12, "hostB:50052": 12, "host": 16}, ("hostA:50052", "hostB:50052")),
    ]
    console = Console(width=200)
    with tempfile.TemporaryDirectory() as tmp:
        for preset, devices, given, servers in cases:
            info = read_gguf(write_synth(Path(tmp) / f"{preset}.gguf", PRESETS[preset], sparse=True))
            types = {t.name: wtype for t in info.tensors if len(t.shape) >= 2}
            budgets = resolve_budgets(devices, given, None)
            settings = RuntimeSettings(n_ctx=args.ctx, flash_attn=True, rpc_servers=servers)
            fit = fit_split(info, settings, devices, budgets, types)
            console.print(f"\n{preset}, every matrix {wtype.name}, context {args.ctx}, flash attention; budgets "
                          + ", ".join(f"{k} {v:g} GiB" for k, v in given.items()), highlight=False)
            render(fit.plan, console, f"{preset}-{wtype.name}.gguf", budgets)


if __name__ == "__main__":
    main()
