#!/usr/bin/env python3
"""How fast and how faithful is `ggprec sensitivity --proxy`?

1. Speed: a synthetic llama-3.2-1b-shaped model, f16, real random weights on disk (not sparse: 2.5 GB,
   1.24 B parameters), and `ggprec sensitivity MODEL --proxy` on it as a whole process (Python start
   included), wall and CPU time, peak RSS (the mapped file's pages count): at q4_0 alone and at all of
   recommend's candidate types, with the default sampling (--max-rows 512) and, with --full, reading
   every row (--max-rows 0). Goal: under 5 minutes on 2 cores, including an
   importance-matrix pass (collected by `ggprec imatrix`, another module; not timed here).
2. Faithfulness on SmolLM2-135M (its F32 copy, the reference the README's sensitivity figures use):
   the measured per-group sensitivity (`ggprec sensitivity --groups role-layer --chunks 2`, 29 passes at
   q4_0, plus q8_0 per role), and the proxy of the same groups. Spearman rank correlation of
   - the raw proxy (summed relative error of a group's tensors; one constant for all roles, so the
     ranking of the prior-scaled figures too) with the measured KLD at q4_0;
   - the proxy fitted on the 8 `--groups role` passes at q4_0 (one constant per role; the 29 role x band
     groups it then ranks are not among the passes it was fitted on);
   and the fitted proxy's predicted / measured KLD per group, at q4_0 and, with the same fit, at q8_0.
   Passes already in the history (same model file, text, context, windows) are reused (`reuse=True`).

Usage: python scripts/bench_proxy.py [--workdir DIR] [--skip-synth] [--skip-smollm2] [--full] [--db PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this tree's ggprec, also in the `python -m ggprec` children (cwd below)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (average ranks for ties)."""
    import numpy as np

    def ranks(x: list[float]) -> np.ndarray:
        x_arr = np.asarray(x, dtype=float)
        order = x_arr.argsort()
        r = np.empty(len(x_arr))
        r[order] = np.arange(len(x_arr), dtype=float)
        for v in np.unique(x_arr):
            idx = x_arr == v
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def timed(cmd: list[str]) -> tuple[float, float, float, str]:
    """Wall s, CPU s (user + sys), peak RSS MiB of the child, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, after.ru_maxrss / 1024, out


def bench_synth(workdir: Path, full: bool, db: str) -> None:
    from ggprec.synth import PRESETS, write_synth

    path = workdir / "llama-3.2-1b-f16.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        write_synth(path, PRESETS["llama-3.2-1b"], dtype="f16")
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    # Read once so that every timed run finds the file in the page cache, as a model just collected from.
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    from ggprec.recommend.loss import CANDIDATE_TYPES

    also = [a for t in CANDIDATE_TYPES if t not in ("f16", "q4_0") for a in ("--also", t)]
    every = ["--max-rows", "0"]
    runs = [("q4_0, default sampling (--max-rows 512)", []),
            (f"recommend's {len(also) // 2 + 1} candidate types, default sampling", also)]
    if full:
        runs += [("q4_0, every row (--max-rows 0)", every), (f"{len(also) // 2 + 1} types, every row", also + every)]
    for label, extra in runs:
        cmd = [sys.executable, "-m", "ggprec", "sensitivity", str(path), "--proxy", "--json", "--db", db, *extra]
        wall, cpu, rss, out = timed(cmd)
        doc = json.loads(out)
        print(f"llama-3.2-1b f16, {label}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB; "
              f"proxy {doc['seconds_proxy']:.1f} s ({doc['proxy']}); {len(doc['groups'])} groups")


def bench_smollm2(db: str, threads: int) -> None:
    import numpy as np

    from ggprec.demo_model import demo_model_path
    from ggprec.gguf_info import read_gguf
    from ggprec.profile import load_profile
    from ggprec.proxy import FitPass, ProxyFit, error_table
    from ggprec.quantize import build_variant
    from ggprec.sensitivity import measure_sensitivity, sensitivity_groups

    ref = build_variant(demo_model_path(quiet=True), load_profile("f32"), threads=threads)
    info = read_gguf(ref)
    t0 = time.perf_counter()
    measured = measure_sensitivity(ref, grouping="role-layer", chunks=2, threads=threads, also=("q8_0",),
                                   also_grouping="role", reuse=True, db=db, heatmap=None)
    roles = measure_sensitivity(ref, grouping="role", chunks=2, threads=threads, reuse=True, db=db, heatmap=None)
    print(f"SmolLM2 F32: measured sensitivity ({len(measured.groups)} role x band groups at q4_0, q8_0 per role) "
          f"and {len(roles.groups)} role passes at q4_0: {time.perf_counter() - t0:.0f} s (passes reused from the "
          "history where stored)")

    groups = sensitivity_groups(info, "role-layer")
    t0 = time.perf_counter()
    table = error_table(ref, info, ["q4_0", "q8_0"], threads=threads)
    print(f"proxy: {table.describe()} ({time.perf_counter() - t0:.1f} s)")
    names = {g.key: [t.name for t in g.tensors] for g in groups}
    meas = {g.key: g.kld for g in measured.groups}
    keys = sorted(meas)
    raw = [table.group_error(names[k], "q4_0") for k in keys]
    print(f"Spearman, raw proxy (uniform weights) vs measured KLD at q4_0, {len(keys)} groups: "
          f"{spearman(raw, [meas[k] for k in keys]):.3f}")

    passes = [FitPass(f"{g.key} at q4_0", dict.fromkeys(g.tensors, "q4_0"), g.kld) for g in roles.groups]
    fit = ProxyFit.fit(table, info, passes)
    pred = {k: fit.group_kld(table, info, names[k], "q4_0") for k in keys}
    rho = spearman([pred[k] for k in keys], [meas[k] for k in keys])
    ratios = np.array([meas[k] / pred[k] for k in keys])
    print(f"Spearman, proxy fitted on the {fit.n_passes} role passes vs measured KLD at q4_0: {rho:.3f}; "
          f"measured / predicted per group: median {np.median(ratios):.2f}, range {ratios.min():.2f}-"
          f"{ratios.max():.2f}, within 1.5x on {int(((ratios > 1 / 1.5) & (ratios < 1.5)).sum())} of {len(keys)}")
    for k in sorted(keys, key=lambda k: -meas[k])[:6]:
        print(f"  {k:<18} measured {meas[k]:.4f}  predicted {pred[k]:.4f}")
    # The same fit at q8_0, per role (measured with --also q8_0 --also-groups role).
    q8 = [(g.key, g.kld_at["q8_0"], fit.group_kld(table, info, g.tensors, "q8_0")) for g in measured.also_groups
          if "q8_0" in g.kld_at]
    if q8:
        r8 = np.array([m / p for _, m, p in q8 if p])
        print(f"q8_0 per role with the q4_0 fit: measured / predicted median {np.median(r8):.2f}, range "
              f"{r8.min():.2f}-{r8.max():.2f}; Spearman {spearman([p for *_, p in q8], [m for _, m, _ in q8]):.3f}")
        for key, m, p in q8:
            print(f"  {key:<18} measured {m:.5f}  predicted {p:.5f}")
    whole = sum(pred.values())
    print(f"sum of the fitted proxy over all groups at q4_0: {whole:.4f} "
          f"(an all-q4_0 model; the groups' measured KLDs sum to {sum(meas.values()):.4f})")
    if not all(math.isfinite(p) for p in pred.values()):
        raise SystemExit("non-finite prediction")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ggprec-bench-proxy"))
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--full", action="store_true", help="also time the proxy reading every row")
    ap.add_argument("--db", help="history database (default: WORKDIR/history.db)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    db = args.db or str(args.workdir / "history.db")
    print(f"machine: {os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f} at start")
    if not args.skip_synth:
        bench_synth(args.workdir, args.full, db)
    if not args.skip_smollm2:
        bench_smollm2(db, args.threads)


if __name__ == "__main__":
    main()
