#!/usr/bin/env python3
"""How fast is `ggprec inspect`? Whole processes, Python start included, timed like a user sees them.

1. `ggprec inspect SmolLM2` (rich summary, and `--json`): median wall time of several runs.
   Target: <= 0.3 s.
2. gguf-py's `gguf.GGUFReader` reading the same file and the same facts (architecture, layer count,
   tensor list), also as a whole process: `python -c "import gguf; gguf.GGUFReader(path) ..."`. That is
   the fair comparison: both sides pay Python start and their imports, both print the same facts.
   The in-process times (parse only, imports excluded) are printed too. Target ratio: >= 15x.
3. `ggprec inspect` of a synthetic Llama-3-8B shape (128,256-token vocabulary, 280,147 merges; a sparse
   file, so it costs ~6 MB of disk). Target: <= 0.5 s.

Wall times on a shared machine are noisy; the CPU time (user + sys) of the same runs is printed beside
them. Usage: python scripts/bench_inspect.py [--model PATH] [--runs N] [--ref-runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GGUF_PY_SCRIPT = """
import sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
arch = r.fields["general.architecture"].contents()
print(arch, r.fields[arch + ".block_count"].contents(), len(r.tensors))
for t in r.tensors:
    print(t.name, list(t.shape), t.tensor_type.name, int(t.n_bytes))
"""


def timed_process(cmd: list[str], runs: int) -> tuple[float, float, float]:
    """Median wall, fastest wall and median CPU seconds of `runs` executions after one warm-up (page
    cache, pyc files)."""
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def timed_call(fn, runs: int) -> float:  # noqa: ANN001 - any zero-argument callable
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the demo model, fetched if needed)")
    parser.add_argument("--runs", type=int, default=9, help="runs per ggprec measurement (median)")
    parser.add_argument("--ref-runs", type=int, default=3, help="runs per gguf.GGUFReader measurement (slow)")
    args = parser.parse_args()

    from ggprec.demo_model import demo_model_path
    from ggprec.gguf_info import read_gguf
    from ggprec.synth import PRESETS, write_synth

    model = args.model or demo_model_path(quiet=True)
    exe = shutil.which("ggprec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if exe is None:
        print("the ggprec command is not installed (pip install -e .)", file=sys.stderr)
        return 2
    info = read_gguf(model)
    print(f"model: {model} ({info.file_size / 2**20:.1f} MiB, {len(info.tensors)} tensors, "
          f"vocabulary {info.hparams.n_vocab:,})")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print()

    text_wall, text_min, text_cpu = timed_process([exe, "inspect", str(model)], args.runs)
    json_wall, json_min, json_cpu = timed_process([exe, "inspect", "--json", str(model)], args.runs)
    ref_wall, ref_min, ref_cpu = timed_process([sys.executable, "-c", GGUF_PY_SCRIPT, str(model)], args.ref_runs)

    import gguf

    ours_in = timed_call(lambda: read_gguf(model), args.runs)
    ref_in = timed_call(lambda: gguf.GGUFReader(model), args.ref_runs)

    print("whole process, Python start included (median wall s / fastest wall s / median CPU s):")
    print(f"  ggprec inspect MODEL          {text_wall:6.3f} / {text_min:6.3f} / {text_cpu:6.3f}   "
          f"target <= 0.3 s: {verdict(text_wall <= 0.3)}")
    print(f"  ggprec inspect --json MODEL   {json_wall:6.3f} / {json_min:6.3f} / {json_cpu:6.3f}")
    print(f"  gguf.GGUFReader (python -c)   {ref_wall:6.3f} / {ref_min:6.3f} / {ref_cpu:6.3f}")
    ratio = ref_wall / text_wall
    print(f"  ratio GGUFReader / inspect    {ratio:6.1f}x wall, {ref_cpu / text_cpu:.1f}x CPU   "
          f"target >= 15x: {verdict(ratio >= 15)}")
    print("in process, imports excluded (median s):")
    print(f"  ggprec.gguf_info.read_gguf    {ours_in:6.4f}")
    print(f"  gguf.GGUFReader(path)         {ref_in:6.4f}   ratio {ref_in / ours_in:.0f}x")
    print()

    with tempfile.TemporaryDirectory(prefix="ggprec-bench-") as tmp:
        big = write_synth(Path(tmp) / "llama-3-8b-sparse.gguf", PRESETS["llama-3-8b"], sparse=True)
        big_info = read_gguf(big)
        merges = len(big_info.metadata["tokenizer.ggml.merges"])
        big_wall, big_min, big_cpu = timed_process([exe, "inspect", str(big)], args.runs)
        big_json_wall, big_json_min, _ = timed_process([exe, "inspect", "--json", str(big)], args.runs)
        big_in = timed_call(lambda: read_gguf(big), args.runs)
    print(f"synthetic llama-3-8b (sparse; vocabulary {big_info.hparams.n_vocab:,}, {merges:,} merges, "
          f"header {big_info.data_offset / 2**20:.1f} MiB):")
    print(f"  ggprec inspect MODEL          {big_wall:6.3f} / {big_min:6.3f} / {big_cpu:6.3f}   "
          f"target <= 0.5 s: {verdict(big_wall <= 0.5)}")
    print(f"  ggprec inspect --json MODEL   {big_json_wall:6.3f} / {big_json_min:6.3f}")
    print(f"  read_gguf in process          {big_in:6.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
