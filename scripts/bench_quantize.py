"""`ggprec quantize` against llama.cpp's own `llama-quantize` binary, as whole processes, same job.

The job (issue 19): a synthetic llama-3.2-1b-shaped f16 model (`ggprec synth --preset llama-3.2-1b`, real
data, not sparse; written once into --workdir) quantized under a one-type profile (default q8_0) with
--threads threads:
  llama-quantize: llama-quantize --pure SOURCE OUT TYPE THREADS
  ggprec:         ggprec quantize SOURCE --profile P -o OUT -t THREADS [--force]
in two cases: into a new file (OUT absent) and over an existing one (OUT left by the previous run; ggprec
needs --force, llama-quantize overwrites). Both write the same bytes (checked: same size, same tensor types).
Each rep runs the four back to back, llama-quantize first in even reps and ggprec first in odd ones; before
each run the page cache's dirty pages are written back (os.sync, untimed) so no run pays for the previous
one's writeback, and the machine settles for --settle seconds (default 5). Why settling: on a VM whose
balloon reports free pages to the host (virtio-balloon free page reporting, as on the 2-core machines
here), memory freed in the last ~4 s is still backed and cheap to touch, while older free memory costs a
host fault per page: writing 1.3 GB into a new file took 0.2 s of system time right after deleting a
file that size and 2.9 s without (dd, measured). A run that starts just after the previous output was
deleted gets the cheap pages; one that starts after a long sync does not, a difference of up to 3.5 s of
system time on a ~5 s job that has nothing to do with either program. After settling, every run starts
with all free memory reported. Each rep's times are printed as it ends; the report gives each side's median
wall time, its CPU time (user, system) and the median of the per-rep ratios ggprec / llama-quantize (target
<= 1.05). The load average is printed: the machine may be shared, so compare ratios from one run only.

The llama.cpp binary comes from scripts/build_llama_tools.sh (built once, a yardstick only).

    python scripts/bench_quantize.py [--source F16.gguf] [--profile q8_0] [--threads 2] [--reps 9] [--settle 5]
                                     [--tools DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llama_tools import ROOT, tools_dir  # scripts/: the yardsticks' folder


def child_env(workdir: Path) -> dict[str, str]:
    """Bytecode cached in a private folder (warmed by the untimed first runs), as an installed package has
    its .pyc files; PYTHONDONTWRITEBYTECODE would make every process compile ggprec's modules from source."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    env["PYTHONPATH"] = str(ROOT)  # this checkout's ggprec
    return env


def timed(cmd: list[str], env: dict[str, str], log: Path, settle: float) -> tuple[float, float, float]:
    """(wall seconds, user seconds, system seconds) of one process run to completion; output to log."""
    os.sync()  # untimed: no run pays for writing back the previous run's output
    time.sleep(settle)  # untimed: memory freed before the run (a deleted output) reported to the host
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{log.read_text(errors='replace')[-2000:]}")
    return wall, usage.ru_utime, usage.ru_stime


def same_output(a: Path, b: Path) -> None:
    from ggprec.gguf_info import read_gguf

    ta = {t.name: (t.type.name, t.n_bytes) for t in read_gguf(a).tensors}
    tb = {t.name: (t.type.name, t.n_bytes) for t in read_gguf(b).tensors}
    if ta != tb or a.stat().st_size != b.stat().st_size:
        raise SystemExit(f"the two sides wrote different models ({a.stat().st_size} vs {b.stat().st_size} bytes): "
                         "use a one-type profile")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", help="An f16/f32 GGUF (default: a synthetic llama-3.2-1b f16 in --workdir).")
    ap.add_argument("--profile", default="q8_0", help="A one-type profile (its default type is llama-quantize's).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="Where the source and outputs go.")
    ap.add_argument("--tools", help="Folder of llama-quantize (default: scripts/build_llama_tools.sh's).")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="Seconds to wait before each run, after writing back dirty pages (see above).")
    a = ap.parse_args()
    from ggprec.profile import load_profile

    qtype = load_profile(a.profile).default
    work = Path(a.workdir)
    source = Path(a.source) if a.source else work / "ggprec-bench-llama-3.2-1b-f16.gguf"
    if not source.is_file():
        subprocess.run([sys.executable, "-m", "ggprec", "synth", str(source), "--preset", "llama-3.2-1b",
                        "--type", "f16"], check=True, env=child_env(work), cwd=ROOT)
    binary = tools_dir(a.tools) / "llama-quantize"
    with tempfile.TemporaryDirectory(prefix="ggprec-bench-quantize-", dir=work) as tmp:
        d = Path(tmp)
        env = child_env(d)
        out = {"llama-quantize": d / "lq.gguf", "ggprec": d / "gg.gguf"}
        cmds = {
            "llama-quantize": [str(binary), "--pure", str(source), str(out["llama-quantize"]), qtype,
                               str(a.threads)],
            "ggprec": [sys.executable, "-m", "ggprec", "quantize", str(source), "--profile", a.profile, "-o",
                       str(out["ggprec"]), "-t", str(a.threads)],
        }

        def run(side: str, case: str) -> tuple[float, float, float]:
            if case == "new":
                out[side].unlink(missing_ok=True)
            cmd = cmds[side] + (["--force"] if side == "ggprec" and case == "over" else [])
            return timed(cmd, env, d / f"{side}.log", a.settle)

        for side in cmds:  # untimed: page cache, bytecode
            run(side, "new")
        same_output(out["llama-quantize"], out["ggprec"])
        times: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        load = [os.getloadavg()[0]]
        for i in range(a.reps):
            sides = ("llama-quantize", "ggprec") if i % 2 == 0 else ("ggprec", "llama-quantize")
            for case in ("new", "over"):
                for side in sides:
                    times.setdefault((side, case), []).append(run(side, case))
            load.append(os.getloadavg()[0])
            print(f"rep {i + 1}: " + "  ".join(f"{case} {side} {times[(side, case)][-1][0]:.2f} s "
                                              f"(sys {times[(side, case)][-1][2]:.2f})"
                                              for case in ("new", "over") for side in sides), flush=True)
    print(f"{source.name} ({source.stat().st_size / 2**30:.2f} GiB) -> {qtype}, {a.threads} threads, {a.reps} reps, "
          f"whole processes, {a.settle:g} s settle before each; 1-min load average {min(load):.2f}-{max(load):.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'case':5} {'side':15} {'median s':>9} {'min-max s':>13} {'user s':>7} {'sys s':>6}")
    for case in ("new", "over"):
        for side in cmds:
            t = times[(side, case)]
            wall = [x[0] for x in t]
            print(f"{case:5} {side:15} {statistics.median(wall):9.3f} {min(wall):6.2f}-{max(wall):<6.2f} "
                  f"{statistics.median(x[1] for x in t):7.2f} {statistics.median(x[2] for x in t):6.2f}")
    for case in ("new", "over"):
        ratios = [g[0] / q[0] for g, q in zip(times[("ggprec", case)], times[("llama-quantize", case)], strict=True)]
        print(f"{case}: ggprec / llama-quantize paired median {statistics.median(ratios):.3f} "
              f"(reps {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.05)")


if __name__ == "__main__":
    main()
