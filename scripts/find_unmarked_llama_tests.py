"""List every test that loads llama.cpp without the `llama` marker.

tests/conftest.py errors a test of the pure-Python tier (`-m "not llama"`) that imports llama_cpp, but only
the first one a run meets: after it, llama_cpp is imported. This runs the tier again and again, deselecting
each offender found, until a run is clean, and prints them all: add their names to LLAMA_TESTS (or their
module to LLAMA_MODULES) in tests/conftest.py.

    python scripts/find_unmarked_llama_tests.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFENDER = re.compile(r"^ERROR (tests/\S+)", re.M)
MAX_RUNS = 50


def main() -> int:
    found: list[str] = []
    for _ in range(MAX_RUNS):
        deselect = [arg for node in found for arg in ("--deselect", node)]
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not llama", "-x",
                              *deselect], cwd=ROOT, capture_output=True, text=True, check=False)
        m = OFFENDER.search(run.stdout)
        if m is None:
            break
        found.append(m.group(1))
        print(m.group(1), flush=True)
    print(f"{len(found)} unmarked test(s)" if found else "every test that loads llama.cpp is marked")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
