#!/usr/bin/env python3
"""How fast and how faithful is `ggprec sensitivity --proxy`?

1. Speed: a synthetic llama-3.2-1b-shaped model, f16, real random weights on disk (not sparse: 2.5 GB,
   1.24 B parameters), and `ggprec sensitivity MODEL --proxy` on it as a whole process (Python start
   included), wall and CPU time, peak RSS (the mapped file's pages count): at q4_0 alone and at all of
   recommend's candidate types, with the default sampling (--max-rows 512) and, with --full, reading
   every row (--max-rows 0). Goal: under 5 minutes on 2 cores, including an importance-matrix pass:
   where this tree has `ggprec imatrix` (another module), that pass (--imatrix-chunks, default 4 x 512
   tokens) and the proxy weighted by it are timed too.
2. Faithfulness on SmolLM2-135M (its F32 copy, the reference the README's sensitivity figures use):
   the measured per-group sensitivity (`ggprec sensitivity --groups role-layer --chunks 2`: 29 passes at
   q4_0; and `--groups role` at q4_0, q8_0, q5_0, iq4_nl: 32 passes), and the proxy of the same groups.
   Spearman rank correlation with the measured KLD, and measured / predicted per group, of
   - the raw proxy (summed relative error of a group's tensors; one constant for all roles, so the
     ranking of the prior-scaled figures too);
   - the proxy fitted on the role passes at q4_0 (one scale per role), and at q4_0 + q8_0 (the default
     `--fit`: a scale and an activation floor per role), each judged on groups it was not fitted on: the
     29 role x band groups at q4_0, and the roles at the types outside the fit.
   With --imatrix FILE (collected by `ggprec imatrix` on the F32 copy), the same with imatrix weights.
   Passes already in the history (same model file, text, context, windows) are reused (`reuse=True`).

Usage: python scripts/bench_proxy.py [--workdir DIR] [--skip-synth] [--skip-smollm2] [--full] [--db PATH]
                                    [--imatrix FILE]
"""

from __future__ import annotations

import argparse
import json
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
    """Wall s, CPU s (user + sys), peak RSS MiB (the largest of every child so far: getrusage keeps one
    maximum for all children, so the proxy runs come before the importance-matrix pass), and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, after.ru_maxrss / 1024, out


def bench_synth(workdir: Path, full: bool, db: str, imatrix_chunks: int) -> None:
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
        _proxy_run(path, db, label, extra)
    has_imatrix = subprocess.run([sys.executable, "-m", "ggprec", "imatrix", "--help"], cwd=REPO,
                                 capture_output=True).returncode == 0
    if has_imatrix and imatrix_chunks:
        imx = workdir / "llama-3.2-1b-f16.imatrix.gguf"
        wall, cpu, rss, _ = timed([sys.executable, "-m", "ggprec", "imatrix", str(path), "-o", str(imx), "--force",
                                   "--chunks", str(imatrix_chunks)])
        print(f"importance matrix ({imatrix_chunks} chunks of 512 tokens of the shipped calibration text): "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB")
        for label, extra in [("q4_0, imatrix weights, default sampling", ["--imatrix", str(imx)]),
                             (f"{len(also) // 2 + 1} types, imatrix weights, default sampling",
                              also + ["--imatrix", str(imx)])]:
            _proxy_run(path, db, label, extra, rss=False)
    elif imatrix_chunks:
        print("no `ggprec imatrix` in this tree (ggprec.imatrix comes from another branch): proxy timed alone")


def _proxy_run(path: Path, db: str, label: str, extra: list[str], rss: bool = True) -> None:
    cmd = [sys.executable, "-m", "ggprec", "sensitivity", str(path), "--proxy", "--json", "--db", db, *extra]
    wall, cpu, peak, out = timed(cmd)
    doc = json.loads(out)
    memory = f", peak RSS {peak:.0f} MiB" if rss else ""
    print(f"llama-3.2-1b f16, {label}: {wall:.1f} s wall, {cpu:.1f} s CPU{memory}; "
          f"proxy {doc['seconds_proxy']:.1f} s ({doc['proxy']}); {len(doc['groups'])} groups")


def _report(label: str, rows: list[tuple[str, float, float]]) -> None:
    """rows: (group, measured, predicted)."""
    import numpy as np

    r = np.array([m / p for _, m, p in rows if p > 0])
    within = int(((r > 1 / 1.5) & (r < 1.5)).sum())
    print(f"  {label}: {len(rows)} groups, Spearman {spearman([p for *_, p in rows], [m for _, m, _ in rows]):.3f}; "
          f"measured / predicted median {np.median(r):.2f}, range {r.min():.2f}-{r.max():.2f}, within 1.5x on "
          f"{within} of {len(r)}")


def bench_smollm2(db: str, threads: int, imatrix_path: str | None) -> None:
    from ggprec.demo_model import demo_model_path
    from ggprec.gguf_info import read_gguf
    from ggprec.profile import load_profile
    from ggprec.proxy import FitPass, ProxyFit, error_table, load_imatrix
    from ggprec.quantize import build_variant
    from ggprec.sensitivity import measure_sensitivity, sensitivity_groups

    ref = build_variant(demo_model_path(quiet=True), load_profile("f32"), threads=threads)
    info = read_gguf(ref)
    t0 = time.perf_counter()
    measured = measure_sensitivity(ref, grouping="role-layer", chunks=2, threads=threads, also=("q8_0",),
                                   also_grouping="role", reuse=True, db=db, heatmap=None)
    roles = measure_sensitivity(ref, grouping="role", chunks=2, threads=threads, also=HELD_OUT_TYPES, reuse=True,
                                db=db, heatmap=None)
    print(f"SmolLM2 F32 ({ref.name}), measured: {len(measured.groups)} role x band groups at q4_0; 8 roles at "
          f"q4_0, q8_0, {', '.join(HELD_OUT_TYPES[1:])}; {time.perf_counter() - t0:.0f} s (passes already in the "
          "history reused)")
    names = {g.key: [t.name for t in g.tensors] for g in sensitivity_groups(info, "role-layer")}
    names.update({g.key: [t.name for t in g.tensors] for g in sensitivity_groups(info, "role")})
    imx = load_imatrix(imatrix_path, info) if imatrix_path else None
    # The measured passes quantized without an importance matrix: the fair comparison weighs the proxy's
    # error by it but quantizes without it; with it, the proxy predicts an imatrix quantization.
    weightings = [("uniform", None, True)] + ([("imatrix weights, quantized without", imx, False),
                                               ("imatrix weights and quantization", imx, True)] if imx else [])
    for weighting, imatrix, quantize_with in weightings:
        t0 = time.perf_counter()
        table = error_table(ref, info, ["q4_0", *HELD_OUT_TYPES], imatrix, threads=threads,
                            quantize_with_imatrix=quantize_with)
        print(f"proxy, {weighting} weights: {table.describe()} ({time.perf_counter() - t0:.1f} s)")
        band = [(g.key, g.kld) for g in measured.groups]
        raw = [table.group_error(names[k], "q4_0") or 0.0 for k, _ in band]
        print(f"  raw proxy (summed error, no fit) vs measured at q4_0, {len(band)} role x band groups: Spearman "
              f"{spearman(raw, [m for _, m in band]):.3f}")
        role_passes = {t: [FitPass(f"{g.key} at {t}", dict.fromkeys(g.tensors, t), g.kld_at[t]) for g in roles.groups
                           if t in g.kld_at] for t in ("q4_0", *HELD_OUT_TYPES)}
        for fit_types in (("q4_0",), ("q4_0", "q8_0")):
            fit = ProxyFit.fit(table, info, [p for t in fit_types for p in role_passes[t]])
            print(f"  fit on the role passes at {' + '.join(fit_types)} ({fit.source}; floor on "
                  f"{len(fit.floor)} roles):")
            _report("role x band at q4_0 (held out)",
                    [(k, m, fit.group_kld(table, info, names[k], "q4_0")) for k, m in band])
            for t in HELD_OUT_TYPES:
                rows = [(g.key, g.kld_at[t], fit.group_kld(table, info, names[g.key], t)) for g in roles.groups
                        if t in g.kld_at]
                _report(f"roles at {t}" + (" (fitted)" if t in fit_types else " (held out)"), rows)
        top = sorted(band, key=lambda km: -km[1])[:5]
        print("  largest groups at q4_0 (measured, predicted by the last fit): "
              + "; ".join(f"{k} {m:.4f} / {fit.group_kld(table, info, names[k], 'q4_0'):.4f}" for k, m in top))


HELD_OUT_TYPES = ("q8_0", "q5_0", "iq4_nl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ggprec-bench-proxy"))
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--full", action="store_true", help="also time the proxy reading every row")
    ap.add_argument("--db", help="history database (default: WORKDIR/history.db)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--imatrix-chunks", type=int, default=4,
                    help="chunks of the importance-matrix pass on the synthetic model (0: none)")
    ap.add_argument("--imatrix", help="also weigh the SmolLM2 proxy by this importance matrix (of the F32 copy)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    db = args.db or str(args.workdir / "history.db")
    print(f"machine: {os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f} at start")
    if not args.skip_synth:
        bench_synth(args.workdir, args.full, db, args.imatrix_chunks)
    if not args.skip_smollm2:
        bench_smollm2(db, args.threads, args.imatrix)


if __name__ == "__main__":
    main()
