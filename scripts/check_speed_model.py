"""Predicted vs measured speed: ggprec.speed's expected tg (and pp) tok/s beside what llama.cpp measures,
for every shipped profile on SmolLM2-135M and on a synthetic llama-3.2-1b (f16, ~2.5 GB, written to a
temporary directory and deleted after, with each profile's build).

Run `ggprec calibrate` first (without one the model falls back to a labelled assumption). The target
is measured / expected within 15% per row; nothing is asserted: timing depends on the machine's load,
printed before and after.

    python scripts/check_speed_model.py            # both models, every profile (~10 min on 2 cores)
    python scripts/check_speed_model.py --quick    # SmolLM2 only, fewer tokens
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ggprec.calibrate import speed_model_for
from ggprec.demo_model import demo_model_path
from ggprec.gguf_info import read_gguf
from ggprec.plan import resolve_plan
from ggprec.profile import shipped_profiles
from ggprec.quantize import build_variant, quantize
from ggprec.runner import run_benchmark
from ggprec.synth import shape_for, write_synth

TARGET = 0.15


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def check_model(name: str, source: Path, speed: Any, args: argparse.Namespace, build_dir: Path | None) -> list[dict]:
    """Every shipped profile of `source`: built (in build_dir and deleted after, or the variant cache),
    run, expected vs measured."""
    rows = []
    for profile in shipped_profiles():
        if build_dir is None:
            path = build_variant(source, profile)
        else:
            path = quantize(source, resolve_plan(read_gguf(source), profile), build_dir / f"{profile.name}.gguf",
                            force=True)
        file_mib = path.stat().st_size / 2**20
        settings = profile.runtime.with_overrides(n_threads=args.threads or speed.n_threads)
        try:
            r = run_benchmark(path, settings, pp=args.pp, tg=args.tg, reps=args.reps, speed_model=speed)
        finally:
            if build_dir is not None:
                path.unlink()
        row = {"model": name, "profile": profile.name, "file_mib": file_mib,
               "threads": r.settings.n_threads,
               "tg_expected": r.expected_tg_tps, "tg_measured": r.tg_tps.median,
               "tg_ratio": r.tg_tps.median / r.expected_tg_tps if r.expected_tg_tps else None,
               "pp_expected": r.expected_pp_tps, "pp_measured": r.pp_tps.median if r.pp_tps else None,
               "pp_ratio": (r.pp_tps.median / r.expected_pp_tps) if r.expected_pp_tps and r.pp_tps else None}
        print(_line(row), flush=True)
        rows.append(row)
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


HEADER = (f"{'model':<14} {'profile':<17} {'tg exp':>8} {'tg meas':>8} {'meas/exp':>8} "
          f"{'pp exp':>8} {'pp meas':>8} {'meas/exp':>8}  within 15%")


def _line(r: dict) -> str:
    ok = [abs(x - 1) <= TARGET for x in (r["tg_ratio"], r["pp_ratio"]) if x is not None]
    return (f"{r['model']:<14} {r['profile']:<17} {_fmt(r['tg_expected'], '8.1f')} {_fmt(r['tg_measured'], '8.1f')} "
            f"{_fmt(r['tg_ratio'], '8.2f')} {_fmt(r['pp_expected'], '8.1f')} {_fmt(r['pp_measured'], '8.1f')} "
            f"{_fmt(r['pp_ratio'], '8.2f')}  {'tg ' + ('yes' if ok and ok[0] else 'no')}"
            + (f", pp {'yes' if ok[1] else 'no'}" if len(ok) > 1 else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, fewer tokens")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tg", type=int, default=None, help="generated tokens per rep (default 64, --quick 32)")
    ap.add_argument("--pp", type=int, default=None, help="prompt tokens per rep (default 128, --quick 64)")
    ap.add_argument("--threads", type=int, help="default: the calibration's")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    args.tg = args.tg or (32 if args.quick else 64)
    args.pp = args.pp or (64 if args.quick else 128)

    speed = speed_model_for()
    print(f"speed model: {speed.describe()}")
    print(f"load average before: {loadavg()}")
    print(HEADER)
    rows = check_model("SmolLM2-135M", demo_model_path(), speed, args, None)
    if not args.quick:
        with tempfile.TemporaryDirectory(prefix="ggprec-check-speed-") as d:
            src = write_synth(Path(d) / "llama-3.2-1b-f16.gguf", shape_for("llama-3.2-1b"), "f16")
            rows += check_model("llama-3.2-1b", src, speed, args, Path(d))
    print(f"load average after: {loadavg()}")
    within = [r for r in rows if r["tg_ratio"] is not None and abs(r["tg_ratio"] - 1) <= TARGET]
    print(f"tg within {TARGET:.0%}: {len(within)} of {len(rows)} rows")
    if args.json:
        Path(args.json).write_text(json.dumps({"speed_model": speed.to_dict(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
