"""recommend's plan over two loopback RPC servers and this host, run for real: predicted beside allocated
per device buffer, expected beside measured tg.

    python scripts/rpc_recommend_loopback.py [MODEL] [--budgets 0.1,0.16] [--ram 0.12] [--ctx 512]

Starts two `ggprec rpc-server`s on free 127.0.0.1 ports (killed at the end), asks `ggprec recommend MODEL
--rpc S1=GIB,S2=GIB --ram GIB` for a plan (the RAM budget is set below what the model needs alone, so the
plan must split), then runs that plan with `ggprec run --rpc S1,S2 -ngl N -ts A,B` (its profile with -p
where the plan quantizes; the model itself where it keeps the model as it is) and prints, for every
buffer, recommend's prediction, run's prediction and what llama.cpp allocated, then the expected and the
measured tg. Loopback servers on one machine check function (the split, the memory per device, the hop
charge), not multi-host speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from check_rpc_memory import start_servers  # noqa: E402


def ggprec(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "ggprec", *args, "--json"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        sys.exit(f"ggprec {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main() -> None:
    from ggprec.demo_model import demo_model_path
    from ggprec.units import MIB

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--budgets", default="0.1,0.16", help="GiB each server may use (declared), in order.")
    ap.add_argument("--ram", default="0.12", help="GiB this host may use.")
    ap.add_argument("--ctx", default="512")
    ap.add_argument("--tg", default="64")
    ap.add_argument("--threads", default="1", help="Threads of the client (the servers run 1 each).")
    ap.add_argument("--db", help="History database of the runs (its calibration gives the expected speed); "
                                 "default: a temporary one (no calibration: assumed bandwidths).")
    args = ap.parse_args()
    model = args.model or str(demo_model_path())
    procs, endpoints = start_servers(2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rpc = ",".join(f"{e}={g}" for e, g in zip(endpoints, args.budgets.split(","), strict=True))
            profile = str(Path(tmp) / "plan.yaml")
            db = args.db or str(Path(tmp) / "h.db")
            rec = ggprec("recommend", model, "--vram", "0", "--rpc", rpc, "--ram", args.ram, "--margin", "4",
                         "--ctx", args.ctx, "--priors", "--no-store", "-o", profile, "--db", db)
            s = rec["settings"]
            split = ["--rpc", ",".join(s["rpc_servers"]), "-ngl", str(s["n_gpu_layers"])] if s["rpc_servers"] else []
            if s["tensor_split"]:
                split += ["-ts", ",".join(f"{x:g}" for x in s["tensor_split"])]
            kv = ["-ctk", s["cache_type_k"], "-ctv", s["cache_type_v"]]
            which = [] if rec["as_is"] else ["-p", profile]
            common = [*which, *kv, "-c", args.ctx, "--pp", "64", "--tg", args.tg, "--reps", "3", "-t", args.threads,
                      "--db", db]
            run = ggprec("run", model, *split, *common)
            local = ggprec("run", model, "-ngl", "0", *common)  # the same plan on this host alone
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(f"{Path(model).name}: recommend --rpc {rpc} --ram {args.ram} --ctx {args.ctx}")
    print(f"chosen: -ngl {s['n_gpu_layers']} -ts {s['tensor_split']} KV {s['cache_type_k']}, "
          f"{'the model as it is' if rec['as_is'] else 'quantized per the plan'}; expected KLD "
          f"{rec['expected']['kld_mean']:.4f}\n")
    for d in rec["devices"]:
        print(f"  {d['name']} {d['device']}: layers {d['layers']}, predicted {d['predicted_bytes'] / MIB:.1f} MiB "
              f"of {d['budget_bytes'] / MIB:.0f} MiB ({d['source']})")
    alloc = run["allocation"]["buffers"]
    pred = run["predicted"] or {}
    planned = rec["predicted"]["buffers"]
    print("\n| buffer | recommend predicted MiB | run predicted MiB | allocated MiB | error |")
    print("|---|---|---|---|---|")
    for key in sorted(set(alloc) | set(pred)):
        a, p, r = alloc.get(key), pred.get(key), planned.get(key)
        err = f"{100 * (p - a) / a:+.2f}%" if a and p is not None else ""
        cell = (lambda v: "" if v is None else f"{v / MIB:.2f}")  # noqa: E731
        print(f"| {key} | {cell(r)} | {cell(p)} | {cell(a)} | {err} |")
    print("\n| run | expected tg tok/s | measured tg tok/s (median of 3) | measured / expected |")
    print("|---|---|---|---|")
    for name, r in (("this host alone", local), ("split over 2 loopback servers", run)):
        tg, exp = r["tg_tps"]["median"], r["expected_tg_tps"]
        print(f"| {name} | {exp:.1f} | {tg:.1f} | {tg / exp:.2f} |")
    print(f"\nrecommend expected {rec['expected']['tg_tok_s']:.1f} tok/s for the split; expected from: "
          f"{run['expected_tg_source']}")
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average {' '.join(load)}")


if __name__ == "__main__":
    main()
