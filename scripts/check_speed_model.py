"""Predicted vs measured speed: ggprec.speed's expected tg and pp tok/s beside what llama.cpp measures,
for every shipped profile on SmolLM2-135M and on a synthetic llama-3.2-1b (f16, ~2.5 GB, written to a
temporary directory and deleted after, with each profile's build).

Run `ggprec calibrate -t N` first, at the thread count checked here (a calibration is per thread count;
without one the model falls back to a labelled assumption). Targets: measured / expected within 15% for
tg and within 25% for pp, on every row. Nothing is asserted: timing depends on the machine's load, printed
beside every row. Measured is the median of the repetitions (as `ggprec run` reports); the best one is
printed too, since on a shared machine other processes only ever slow a run down.

    python scripts/check_speed_model.py -t 2           # both models, every profile (~10 min on 2 cores)
    python scripts/check_speed_model.py -t 2 --quick   # SmolLM2 only, fewer tokens
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ggprec.calibrate import load_average, speed_model_for
from ggprec.demo_model import demo_model_path
from ggprec.gguf_info import read_gguf
from ggprec.llama_backend import default_threads
from ggprec.plan import resolve_plan
from ggprec.profile import shipped_profiles
from ggprec.quantize import build_variant, quantize
from ggprec.runner import run_benchmark
from ggprec.synth import shape_for, write_synth

TG_TARGET, PP_TARGET = 0.15, 0.25


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
        settings = profile.runtime.with_overrides(n_threads=args.threads)
        try:
            r = run_benchmark(path, settings, pp=args.pp, tg=args.tg, reps=args.reps, speed_model=speed)
        finally:
            if build_dir is not None:
                path.unlink()
        row = {"model": name, "profile": profile.name, "file_mib": file_mib,
               "threads": r.settings.n_threads, "load": load_average().split()[0],
               "tg_expected": r.expected_tg_tps, "tg_measured": r.tg_tps.median, "tg_best": r.tg_tps.max,
               "tg_ratio": r.tg_tps.median / r.expected_tg_tps if r.expected_tg_tps else None,
               "pp_expected": r.expected_pp_tps, "pp_measured": r.pp_tps.median if r.pp_tps else None,
               "pp_best": r.pp_tps.max if r.pp_tps else None,
               "pp_ratio": (r.pp_tps.median / r.expected_pp_tps) if r.expected_pp_tps and r.pp_tps else None}
        print(_line(row), flush=True)
        rows.append(row)
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _within(ratio: float | None, target: float) -> str:
    return "-" if ratio is None else "yes" if abs(ratio - 1) <= target else "NO"


HEADER = (f"{'model':<14} {'profile':<17} {'tg exp':>8} {'tg meas':>8} {'best':>8} {'meas/exp':>8} "
          f"{'pp exp':>8} {'pp meas':>8} {'best':>8} {'meas/exp':>8}  tg<=15% pp<=25%  load")


def _line(r: dict) -> str:
    return (f"{r['model']:<14} {r['profile']:<17} {_fmt(r['tg_expected'], '8.1f')} {_fmt(r['tg_measured'], '8.1f')} "
            f"{_fmt(r['tg_best'], '8.1f')} {_fmt(r['tg_ratio'], '8.2f')} {_fmt(r['pp_expected'], '8.1f')} "
            f"{_fmt(r['pp_measured'], '8.1f')} {_fmt(r['pp_best'], '8.1f')} {_fmt(r['pp_ratio'], '8.2f')}  "
            f"{_within(r['tg_ratio'], TG_TARGET):>7} {_within(r['pp_ratio'], PP_TARGET):>7}  {r['load']}")


def markdown(rows: list[dict]) -> str:
    """The rows as the README's table."""
    out = ["| model | profile | tg expected | tg measured | meas/exp | pp expected | pp measured | meas/exp | load |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["model"], r["profile"], _fmt(r["tg_expected"], ".1f"), _fmt(r["tg_measured"], ".1f"),
                 _fmt(r["tg_ratio"], ".2f"), _fmt(r["pp_expected"], ".0f"), _fmt(r["pp_measured"], ".0f"),
                 _fmt(r["pp_ratio"], ".2f"), r["load"]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _summary(rows: list[dict], key: str, target: float) -> str:
    ratios = [r[key] for r in rows if r[key] is not None]
    within = sum(abs(x - 1) <= target for x in ratios)
    span = f", measured/expected {min(ratios):.2f}-{max(ratios):.2f}" if ratios else ""
    return f"{key[:2]} within {target:.0%}: {within} of {len(rows)} rows{span}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, fewer tokens")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tg", type=int, default=None, help="generated tokens per rep (default 64, --quick 32)")
    ap.add_argument("--pp", type=int, default=None, help="prompt tokens per rep (default 128, --quick 64)")
    ap.add_argument("-t", "--threads", type=int,
                    help="llama.cpp threads, and the calibration measured at that count (default: `ggprec run`'s)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args()
    args.tg = args.tg or (32 if args.quick else 64)
    args.pp = args.pp or (64 if args.quick else 128)
    args.threads = args.threads or default_threads()

    speed = speed_model_for(n_threads=args.threads)
    print(f"speed model: {speed.describe()}")
    if speed.n_threads is not None and speed.n_threads != args.threads:
        print(f"WARNING: no calibration at {args.threads} threads; this one ran {speed.n_threads} "
              f"(run `ggprec calibrate -t {args.threads}` first)")
    print(f"threads {args.threads}, pp {args.pp}, tg {args.tg}, measured = median of {args.reps} reps; "
          f"load average before: {load_average()}")
    print(HEADER)
    rows = check_model("SmolLM2-135M", demo_model_path(), speed, args, None)
    if not args.quick:
        with tempfile.TemporaryDirectory(prefix="ggprec-check-speed-") as d:
            src = write_synth(Path(d) / "llama-3.2-1b-f16.gguf", shape_for("llama-3.2-1b"), "f16")
            rows += check_model("llama-3.2-1b", src, speed, args, Path(d))
    print(f"load average after: {load_average()}")
    print(_summary(rows, "tg_ratio", TG_TARGET))
    print(_summary(rows, "pp_ratio", PP_TARGET))
    print("\n" + markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"speed_model": speed.to_dict(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
