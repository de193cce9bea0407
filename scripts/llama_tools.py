"""Where llama.cpp's own tools (the benchmarks' yardsticks) are: shared by bench_quantize and bench_eval."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tools_dir(arg: str | None) -> Path:
    """The folder of the llama.cpp binaries: --tools, else what build_llama_tools.sh prints (it builds them
    the first time)."""
    if arg:
        return Path(arg)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_tools.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0:
        raise SystemExit(f"scripts/build_llama_tools.sh failed:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])
