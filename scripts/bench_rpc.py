"""Decode (tg) and prompt (pp) speed of a model run locally, over one and over two loopback RPC servers.

    python scripts/bench_rpc.py [MODEL] [--tg 64] [--pp 128] [--reps 3] [--threads 1] [--write]

Every layer and the output are offloaded (-ngl 99) to the servers, split evenly; each server and the
local run use --threads CPU threads. The servers are `ggprec rpc-server`s on free 127.0.0.1 ports,
killed at the end. On one machine this checks that the split works and what each network hop costs
per token; it says nothing of multi-host speed (no real network, and the servers share the same cores).
On a tiny synthetic model (`ggprec synth tiny.gguf --preset tiny`) the compute is negligible and the
difference to the local run is the cost of the hops.

--write stores the cost of one hop (the least-squares slope of ms/token over the RPC servers a token
passes, through the local run) as a measured fact in ggprec/data/rpc_speed.json, with the machine, its
load and the table it comes from: ggprec.speed charges it per hop (speed.rpc_hops).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from check_rpc_memory import start_servers  # noqa: E402


def main() -> None:
    from ggprec.demo_model import demo_model_path
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="Store the per-hop cost in ggprec/data/rpc_speed.json.")
    ap.add_argument("--rounds", type=int, default=2,
                    help="Run the three configurations this many times in turn; each keeps its best round "
                         "(the machine is shared: the best round is the least disturbed).")
    args = ap.parse_args()
    model = args.model or str(demo_model_path())
    procs, endpoints = start_servers(2)
    best: dict[int, tuple[int, float, float, float, float]] = {}
    try:
        for _ in range(args.rounds):
            for n in (0, 1, 2):
                settings = RuntimeSettings(n_ctx=512, n_threads=args.threads, n_gpu_layers=99 if n else 0,
                                           rpc_servers=endpoints[:n], tensor_split=(1.0,) * n)
                r = run_benchmark(model, settings, pp=args.pp, tg=args.tg, reps=args.reps)
                assert r.tg_tps is not None and r.pp_tps is not None
                row = (n, r.tg_tps.median, r.tg_tps.min, r.tg_tps.max, r.pp_tps.median)
                if n not in best or row[1] > best[n][1]:
                    best[n] = row
    finally:
        for p in procs:
            p.kill()
            p.wait()
    rows = [best[n] for n in (0, 1, 2)]
    local_ms = 1000 / rows[0][1]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"{Path(model).name}, tg {args.tg}, pp {args.pp}, {args.reps} reps, {args.threads} thread(s) per process, "
          f"best of {args.rounds} rounds\n")
    print("| devices | tg tok/s (median, min-max) | ms/token | vs local | pp tok/s |")
    print("|---|---|---|---|---|")
    for n, med, lo, hi, pp in rows:
        where = "local CPU" if n == 0 else f"{n} loopback RPC server{'s' if n > 1 else ''}"
        ms = 1000 / med
        print(f"| {where} | {med:.1f} ({lo:.1f}-{hi:.1f}) | {ms:.2f} | {'' if n == 0 else f'{ms - local_ms:+.2f} ms'} "
              f"| {pp:.1f} |")
    # One hop per server a token passes (each holds one run of layers): slope through the local run.
    extra = [(n, 1000 / med - local_ms) for n, med, *_ in rows if n]
    hop_ms = sum(n * d for n, d in extra) / sum(n * n for n, _ in extra)
    print(f"\nper hop: {hop_ms:.2f} ms/token (slope over {len(extra)} splits); load average {' '.join(load)}")
    if args.write:
        write_facts(model, args, rows, hop_ms, load)


def write_facts(model: str, args: argparse.Namespace, rows: list[tuple[int, float, float, float, float]],
                hop_ms: float, load: list[str]) -> None:
    import datetime
    import json
    import platform

    from ggprec.fileio import atomic_write_text
    from ggprec.hardware import fingerprint

    hw = fingerprint()
    facts = {
        "hop_ms": round(hop_ms, 3),
        "source": (f"scripts/bench_rpc.py --write on {Path(model).name} (tg {args.tg}, {args.reps} reps, "
                   f"{args.threads} thread(s) per process, best of {args.rounds} rounds), loopback servers on "
                   f"{hw.get('cpu') or platform.processor()} with {hw.get('cores', '?')} cores, load average "
                   f"{' '.join(load)}, {datetime.date.today().isoformat()}"),
        "note": ("loopback: no network latency and servers sharing the client's cores; a real network adds "
                 "its round-trip times per hop"),
        "runs": [{"servers": n, "tg_tps": round(med, 2), "ms_per_token": round(1000 / med, 3)}
                 for n, med, *_ in rows],
    }
    atomic_write_text(ROOT / "ggprec" / "data" / "rpc_speed.json", json.dumps(facts, indent=2) + "\n", force=True)
    print("wrote ggprec/data/rpc_speed.json")


if __name__ == "__main__":
    main()
