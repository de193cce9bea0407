"""Time `ggprec.evaluate.evaluate` on the demo model (SmolLM2-135M): q8_0 and q4_0 against the f32
reference, first with an empty reference cache (the reference runs), then with it cached. Prints wall
and CPU seconds, the figures, and the cache's size on disk.

    python scripts/bench_eval.py [--ctx 512] [--chunks 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from ggprec import evaluate as ev
from ggprec.demo_model import demo_model_path
from ggprec.profile import load_profile
from ggprec.quantize import build_variant
from ggprec.settings import RuntimeSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    src = demo_model_path(quiet=True)
    ref = build_variant(src, load_profile("f32"), threads=a.threads)
    variants = {name: build_variant(src, load_profile(name), threads=a.threads) for name in ("q8_0", "q4_0")}
    settings = RuntimeSettings(n_threads=a.threads)
    with tempfile.TemporaryDirectory(prefix="ggprec-bench-eval-") as tmp:
        ev.reference_cache_dir = lambda: Path(tmp)  # start from an empty reference cache
        for name, path in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            r = ev.evaluate(path, ref, n_ctx=a.ctx, chunks=a.chunks, settings=settings)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{name} vs f32, {r.n_chunks} x {a.ctx} ({r.n_tokens} tokens scored), reference "
                  f"{'cached' if r.reference_cached else 'run'}: {wall:.1f} s wall, {cpu:.1f} s CPU; "
                  f"KLD {r.kld_mean:.5f} ± {r.kld_mean_se:.5f} (p99 {r.kld_p99:.4f}), "
                  f"top-1 {100 * r.top1:.1f}% ± {100 * r.top1_se:.1f}, PPL {r.ppl:.3f} vs {r.ppl_ref:.3f} "
                  f"(ratio {r.ppl_ratio:.4f} ± {r.ppl_ratio_se:.4f})")
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.npz"))
        print(f"reference cache: {size / 2**20:.1f} MiB for {a.chunks} windows; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
