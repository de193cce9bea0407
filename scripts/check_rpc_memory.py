"""Predicted beside allocated, per device buffer, for a model split over loopback RPC servers and the CPU.

Starts N `ggprec rpc-server`s on free 127.0.0.1 ports (killed at the end), runs the model once per
(-ngl, -ts, flash attention) configuration through `ggprec.runner.run_benchmark` (a few tokens: the
point is the allocation), and prints every buffer with ggprec.memory's prediction and the relative error.

    python scripts/check_rpc_memory.py [MODEL] [--servers 2] [--config 20:1,1:off ...]

MODEL defaults to the demo model (SmolLM2-135M). A config is NGL:SPLIT:FA (FA on/off).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = ["20:1,1:off", "25:3,1:off", "12:1,2:off", "20:1,1:on", "99:1,1:off"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(n: int) -> tuple[list[subprocess.Popen[bytes]], tuple[str, ...]]:
    from ggprec import rpc
    from ggprec.errors import GgprecError

    procs, endpoints = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "ggprec", "rpc-server", "--port", str(port), "-t", "1"],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        endpoints.append(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    for endpoint in endpoints:
        while True:
            try:
                rpc.probe(endpoint, timeout=2)
                break
            except GgprecError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return procs, tuple(endpoints)


def main() -> None:
    from ggprec.demo_model import demo_model_path
    from ggprec.runner import run_benchmark
    from ggprec.settings import RuntimeSettings
    from ggprec.units import MIB

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--config", nargs="*", default=DEFAULT_CONFIGS)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    model = args.model or str(demo_model_path())
    procs, endpoints = start_servers(args.servers)
    worst_rpc = 0.0
    try:
        for config in args.config:
            ngl, split, fa = config.split(":")
            settings = RuntimeSettings(n_ctx=args.ctx, n_threads=1, n_gpu_layers=int(ngl), rpc_servers=endpoints,
                                       tensor_split=tuple(float(x) for x in split.split(",")), flash_attn=fa == "on")
            r = run_benchmark(model, settings, pp=8, tg=2, reps=1)
            print(f"\n{Path(model).name}  -ngl {ngl}  -ts {split}  -fa {fa}")
            predicted = r.predicted or {}
            for key in sorted(set(r.allocation.buffers) | set(predicted)):
                got, want = r.allocation.buffers.get(key), predicted.get(key)
                err = (want - got) / got if got and want is not None else None
                if err is not None and "[127.0.0.1:" in key:
                    worst_rpc = max(worst_rpc, abs(err))
                print(f"  {key:38s} {'-' if got is None else f'{got / MIB:9.2f}':>9} MiB  predicted "
                      f"{'-' if want is None else f'{want / MIB:9.2f}':>9} MiB  "
                      f"{'' if err is None else f'{err:+.2%}'}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(f"\nlargest error over the RPC buffers: {worst_rpc:.2%}")


if __name__ == "__main__":
    main()
