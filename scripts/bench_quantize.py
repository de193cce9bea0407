"""Overhead of `ggprec quantize` over the bare llama.cpp call on the same plan.

Each measurement runs in a fresh process (so peak RSS is that run's alone):
  ggprec: read the header, resolve the plan, llama_model_quantize, re-read and check every tensor type,
          rename into place (ggprec.quantize.quantize);
  bare:   llama_model_quantize with the same parameters (ftype, per-tensor overrides), nothing else.
Prints the median wall time and peak RSS of each and the ratios (target: time ratio <= 1.05), and the
ratio of the fastest runs (the least disturbed ones on a shared machine).

    python scripts/bench_quantize.py [--source F32.gguf] [--profile mixed] [--threads 2] [--reps 5]

Without --source it uses SmolLM2-135M dequantized to f32 (built once by build_variant).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(mode: str, source: str, profile: str, out: str, threads: int) -> None:
    import ctypes

    import llama_cpp

    from ggprec.gguf_info import read_gguf
    from ggprec.plan import resolve_plan
    from ggprec.profile import load_profile
    from ggprec.quantize import _QuantizeCall, quantize

    prof = load_profile(profile)
    if mode == "bare":
        call = _QuantizeCall(resolve_plan(read_gguf(source), prof), threads)  # parameters only, untimed
        t0 = time.perf_counter()
        rc = llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(call.params))
        elapsed = time.perf_counter() - t0
        assert rc == 0
    else:
        t0 = time.perf_counter()
        quantize(source, resolve_plan(read_gguf(source), prof), out, threads=threads, force=True)
        elapsed = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "peak_mib": peak_kib / 1024}))


def measure(mode: str, source: str, profile: str, out: str, threads: int) -> dict[str, float]:
    Path(out).unlink(missing_ok=True)  # neither run pays for deleting the previous output
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--source", source, "--profile", profile,
                           "--out", out, "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source")
    ap.add_argument("--profile", default="mixed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", choices=["ggprec", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.source, args.profile, args.out, args.threads)
        return
    if args.source is None:
        from ggprec.demo_model import demo_model_path
        from ggprec.profile import load_profile
        from ggprec.quantize import build_variant

        args.source = str(build_variant(demo_model_path(quiet=True), load_profile("f32"), threads=args.threads))
    results: dict[str, list[dict[str, float]]] = {"ggprec": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="ggprec-bench-", dir=Path(args.source).parent) as d:
        out = str(Path(d) / "out.gguf")
        measure("bare", args.source, args.profile, out, args.threads)  # warm the page cache
        for i in range(args.reps):
            order = ("ggprec", "bare") if i % 2 == 0 else ("bare", "ggprec")  # alternate against drift
            for mode in order:
                results[mode].append(measure(mode, args.source, args.profile, out, args.threads))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_mib")} for m, rs in results.items()}
    spread = {m: (min(r["seconds"] for r in rs), max(r["seconds"] for r in rs)) for m, rs in results.items()}
    print(f"source {args.source}\nprofile {args.profile}, threads {args.threads}, {args.reps} runs each (median)")
    print(f"{'':8} {'wall s':>8} {'min-max s':>13} {'peak RSS MiB':>13}")
    for m in ("bare", "ggprec"):
        lo, hi = spread[m]
        print(f"{m:8} {med[m]['seconds']:8.2f} {lo:6.2f}-{hi:<6.2f} {med[m]['peak_mib']:13.1f}")
    print(f"ratio    {med['ggprec']['seconds'] / med['bare']['seconds']:8.3f} {'':13} "
          f"{med['ggprec']['peak_mib'] / med['bare']['peak_mib']:13.3f}   (target time ratio <= 1.05)")
    # On a shared machine the fastest run is the least disturbed one: its ratio is printed too.
    print(f"ratio of the fastest runs {spread['ggprec'][0] / spread['bare'][0]:.3f}")


if __name__ == "__main__":
    main()
