"""Time `recommend` on sparse synthetic Llama-3 shapes (goal: an 8B answers in <= 1 s).

Usage: python scripts/bench_recommend.py [--reps 3]
Writes the sparse files (no disk used) to a temporary directory, runs recommend for a few budgets and
prints the median wall time per call and its ratio to the 1 s goal.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ggprec.gguf_info import read_gguf
from ggprec.recommend import recommend
from ggprec.synth import PRESETS, write_synth

CASES = (  # preset, vram GiB, ram GiB, ctx, goal
    ("llama-3-8b", 24, 64, 8192, "quality"),
    ("llama-3-8b", 4, 8, 8192, "quality"),
    ("llama-3-8b", 4, 64, 8192, "speed"),
    ("llama-3-70b", 24, 200, 8192, "quality"),
)
GOAL_S = {"llama-3-8b": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {p: write_synth(Path(tmp) / f"{p}.gguf", PRESETS[p], sparse=True) for p in {c[0] for c in CASES}}
        print(f"{'model':12} {'vram':>5} {'ram':>5} {'ctx':>6} {'goal':8} {'median s':>9} {'goal s':>7} "
              f"{'ratio':>6}  plan")
        for preset, vram, ram, ctx, goal in CASES:
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                info = read_gguf(paths[preset])  # reading the header is part of answering
                rec = recommend(info, vram, ram_gb=ram, ctx=ctx, goal=goal, host_gbps=20.0)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            limit = GOAL_S.get(preset)
            ratio = f"{med / limit:6.2f}" if limit else "     -"
            s = rec.settings
            print(f"{preset:12} {vram:5} {ram:5} {ctx:6} {goal:8} {med:9.3f} {limit or '-':>7} {ratio}  "
                  f"ngl {s.n_gpu_layers}, kv {s.cache_type_k}, KLD {rec.expected_kld:.4f}, "
                  f"GPU {rec.gpu_total / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
