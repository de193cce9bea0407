"""Time `recommend` (front included) on sparse synthetic shapes: goals <= 1 s on an 8B, <= 3 s on a 70B (and on
the Qwen3-30B-A3B mixture of experts).

Usage: python scripts/bench_recommend.py [--reps 3] [--fronts]
Writes the sparse files (no disk used) to a temporary directory, runs recommend for issue 10's scenarios
(bandwidths given: host 60 GB/s, GPU 936 GB/s) and prints the median wall time per call (reading the header
included), its ratio to the goal, the size of the front and the chosen row. No asserts: the ratios are the
result. Timings depend on the machine's load; the load average is printed with them. --fronts: then each
scenario's front as the README shows it (recommend.render.front_markdown), its reasons and llama.cpp lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from ggprec.gguf_info import read_gguf
from ggprec.recommend import recommend
from ggprec.recommend.commands import llama_commands
from ggprec.recommend.render import front_markdown
from ggprec.synth import PRESETS, write_synth

CASES = (  # preset, vram GiB, ram GiB, ctx, goal
    ("llama-3-8b", 8, 16, 8192, "balanced"),
    ("llama-3-8b", 8, 16, 8192, "speed"),
    ("llama-3-8b", 24, 64, 8192, "balanced"),
    ("llama-3-70b", 24, 64, 8192, "balanced"),
    ("qwen3-30b-a3b", 24, 64, 32768, "balanced"),  # a mixture of experts: x n_cpu_moe placements
    ("qwen3-30b-a3b", 8, 32, 32768, "balanced"),
)
GOAL_S = {"llama-3-8b": 1.0, "llama-3-70b": 3.0, "qwen3-30b-a3b": 3.0}
HOST_GBPS, GPU_GBPS = 60.0, 936.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fronts", action="store_true", help="also print each scenario's front, reasons and commands")
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {p: write_synth(Path(tmp) / f"{p}.gguf", PRESETS[p], dtype="bf16", sparse=True)
                 for p in {c[0] for c in CASES}}
        print(f"{'model':13} {'vram':>5} {'ram':>5} {'ctx':>6} {'goal':8} {'median s':>9} {'goal s':>7} "
              f"{'ratio':>6} {'front':>6}  chosen")
        fronts = []
        for preset, vram, ram, ctx, goal in CASES:
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                info = read_gguf(paths[preset])  # reading the header is part of answering
                rec = recommend(info, vram, ram_gb=ram, ctx=ctx, goal=goal, host_gbps=HOST_GBPS, gpu_gbps=GPU_GBPS)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            limit = GOAL_S[preset]
            r = rec.row
            print(f"{preset:13} {vram:5} {ram:5} {ctx:6} {goal:8} {med:9.3f} {limit:7.1f} {med / limit:6.2f} "
                  f"{len(rec.front):6}  {r.bits_per_weight:.2f} bits/weight, KV {r.kv_type}, ngl {r.n_gpu_layers}, "
                  f"{f'n_cpu_moe {r.n_cpu_moe}, ' if r.n_cpu_moe else ''}KLD {r.expected_kld:.4f}, "
                  f"{r.tg_tps:.1f} tok/s")
            fronts.append((f"{preset}.gguf --vram {vram} --ram {ram} --ctx {ctx} --goal {goal}", rec, info))
        for title, rec, info in fronts if args.fronts else ():
            cmd = llama_commands(rec, info)
            print(f"\n`ggprec recommend {title} --host-bandwidth {HOST_GBPS:g} --gpu-bandwidth {GPU_GBPS:g}`\n")
            print(front_markdown(rec, info.hparams.n_layer))
            print("", *(f"- {reason}" for reason in rec.reasons), "", "```", cmd.quantize or "(nothing to quantize)",
                  cmd.server, "```", sep="\n")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
