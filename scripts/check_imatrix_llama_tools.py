"""Cross-check ggprec's importance matrices against llama.cpp's own tools (llama-imatrix, llama-quantize
built from the vendored llama.cpp of the pinned llama-cpp-python; see FACTS: plain CMake, four targets).

On the synthetic tiny (dense) and tiny-moe models, f32:
1. `llama-imatrix` and `ggprec imatrix` over the same text and chunks: the same entries, identical counts,
   and the largest relative difference of the sums (llama-imatrix runs with flash attention on; ggprec
   with it off, so layers after the first attention differ by float rounding).
2. `llama-quantize --pure --imatrix OURS IQ3_S` and `ggprec quantize --imatrix OURS` (profile: iq3_s):
   the two files compared byte for byte.
3. The same with the legacy `.dat` llama-imatrix writes (`--output-format dat`), read by both quantizers.

    python scripts/check_imatrix_llama_tools.py [--tools DIR] [--chunks 3] [--ctx 64]
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ggprec.imatrix_file import read_imatrix
from ggprec.synth import PRESETS, write_synth

TOOLS = Path.home() / ".cache/ggprec/llama-tools/0.3.36/bin"
TEXT = Path(__file__).parents[1] / "ggprec" / "data" / "calibration.txt"


def run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tools", type=Path, default=TOOLS)
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=64)
    a = ap.parse_args()
    ggprec = [sys.executable, "-m", "ggprec"]
    with tempfile.TemporaryDirectory(prefix="ggprec-imatrix-check-") as tmp:
        d = Path(tmp)
        (d / "iq3s.yaml").write_text("name: iq3s\ndefault: iq3_s\n")
        for preset in ("tiny", "tiny-moe"):
            model = write_synth(d / f"{preset}.gguf", PRESETS[preset], dtype="f32")
            ref, ours = d / f"{preset}.llama.imatrix.gguf", d / f"{preset}.ggprec.imatrix.gguf"
            run([str(a.tools / "llama-imatrix"), "-m", str(model), "-f", str(TEXT), "-c", str(a.ctx), "--chunks",
                 str(a.chunks), "--no-ppl", "-t", "2", "-o", str(ref)])
            run([*ggprec, "imatrix", str(model), "-o", str(ours), "-c", str(a.ctx), "--chunks", str(a.chunks),
                 "-t", "2"])
            x, y = read_imatrix(ref), read_imatrix(ours)
            same_counts = sorted(x.entries) == sorted(y.entries) and all(
                np.array_equal(x.entries[n].counts, y.entries[n].counts) for n in x.entries)
            worst = max(float(np.max(np.abs(x.entries[n].in_sum2 - y.entries[n].in_sum2)
                                     / np.abs(x.entries[n].in_sum2))) for n in x.entries)
            print(f"{preset}: {len(x.entries)} entries from llama-imatrix, {len(y.entries)} from ggprec; "
                  f"names and counts {'identical' if same_counts else 'DIFFER'}; sums within {worst:.2e} relative")
            lq, gq = d / f"{preset}.llama-quantize.gguf", d / f"{preset}.ggprec-quantize.gguf"
            run([str(a.tools / "llama-quantize"), "--pure", "--imatrix", str(ours), str(model), str(lq), "IQ3_S", "2"])
            run([*ggprec, "quantize", str(model), "-p", str(d / "iq3s.yaml"), "-o", str(gq), "--imatrix", str(ours),
                 "-t", "2"])
            print(f"{preset}: llama-quantize and ggprec quantize with the ggprec imatrix: files "
                  f"{'byte-identical' if filecmp.cmp(lq, gq, shallow=False) else 'DIFFER'}")
            # The legacy format: llama-imatrix writes a .dat, both quantizers read it.
            dat = d / f"{preset}.imatrix.dat"
            run([str(a.tools / "llama-imatrix"), "-m", str(model), "-f", str(TEXT), "-c", str(a.ctx), "--chunks",
                 str(a.chunks), "--no-ppl", "-t", "2", "-o", str(dat), "--output-format", "dat"])
            run([str(a.tools / "llama-quantize"), "--pure", "--imatrix", str(dat), str(model), str(lq), "IQ3_S", "2"])
            run([*ggprec, "quantize", str(model), "-p", str(d / "iq3s.yaml"), "-o", str(gq), "--imatrix", str(dat),
                 "-t", "2", "--force"])
            print(f"{preset}: llama-quantize and ggprec quantize with llama-imatrix's legacy .dat: files "
                  f"{'byte-identical' if filecmp.cmp(lq, gq, shallow=False) else 'DIFFER'}")


if __name__ == "__main__":
    main()
