"""Wall time of `ggprec demo`: a first run in an empty cache (builds, reference logits, everything) and a
second run that reuses the builds, reference logits and accuracy figures (speed is measured again).

    python scripts/bench_demo.py [--keep DIR]

The demo model is linked from the normal cache (fetched once with `ggprec demo-model`), so the first run
measures ggprec's work, not the download. The load average is printed beside each time because on a
shared machine it changes the result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_demo(env: dict[str, str], out: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("ggprec")), "demo", "--out", str(out), "--json"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"ggprec demo failed: {done.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Use this directory (kept) instead of a temporary one.")
    args = parser.parse_args()

    from ggprec.demo_model import DEMO_FILENAME, demo_model_path

    model = demo_model_path(quiet=True)
    with tempfile.TemporaryDirectory(prefix="ggprec-bench-demo-") as tmp:
        root = args.keep or Path(tmp)
        (root / "cache" / "models").mkdir(parents=True, exist_ok=True)
        link = root / "cache" / "models" / DEMO_FILENAME
        if not link.exists():
            link.symlink_to(model)
        env = {**os.environ, "GGPREC_CACHE": str(root / "cache"), "GGPREC_DB": str(root / "history.db")}
        print(f"machine: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
        first = run_demo(env, root / "out")
        print(f"first run (empty cache):  {first:7.1f} s   load average after: {os.getloadavg()[0]:.2f}")
        second = run_demo(env, root / "out")
        print(f"second run (cached):      {second:7.1f} s   load average after: {os.getloadavg()[0]:.2f}")
        print(f"targets: first <= 600 s ({first / 600:.2f} of it), second <= 120 s ({second / 120:.2f} of it)")


if __name__ == "__main__":
    main()
