"""`ggprec eval` against llama.cpp's own `llama-perplexity --kl-divergence`, as whole processes, same job.

The job (issue 19): the demo model (SmolLM2-135M) built at f32 (the reference) and at q4_0 (the candidate),
the shipped text, --chunks windows of --ctx tokens, --threads threads. Four commands:
  lp_ref:  llama-perplexity -m REF  -f TEXT -c CTX --chunks N -t T --kl-divergence-base BASE
  lp_cand: llama-perplexity -m CAND -f TEXT -c CTX --chunks N -t T --kl-divergence-base BASE --kl-divergence
  cold:    ggprec eval CAND --reference REF --ctx CTX --chunks N -t T --json (reference logits not cached)
  warm:    the same again (reference logits cached)
cold is held against lp_ref + lp_cand (both run the reference and the candidate), warm against lp_cand.
Each rep runs the four back to back, llama.cpp's pair first in even reps and ggprec's first in odd ones;
the report gives each command's median and the median of the per-rep ratios (target <= 1.05), with the
mean KLD and top-1 of both tools (target: the same KLD to 1%). ggprec's model-hash cache is warm (as after
any earlier ggprec command on these files); its reference-logits cache and history are in a temporary
folder. Two untimed runs first warm the page cache and the bytecode cache. The load average is printed: the
machine may be shared, so compare ratios from one run only.

The llama.cpp binaries come from scripts/build_llama_tools.sh (built once, a yardstick only).

    python scripts/bench_eval.py [--ctx 512] [--chunks 8] [--threads 2] [--reps 3] [--tools DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llama_tools import ROOT, tools_dir  # scripts/: the yardsticks' folder

from ggprec import evaluate as ev
from ggprec.demo_model import cache_dir, demo_model_path
from ggprec.profile import load_profile
from ggprec.quantize import build_variant


def child_env(workdir: Path) -> dict[str, str]:
    """ggprec's environment: its caches in workdir (the model-hash cache copied in), bytecode cached in a
    private folder as an installed package has its .pyc files (PYTHONDONTWRITEBYTECODE would make every
    process compile ggprec's modules from source)."""
    cache = workdir / "cache"
    cache.mkdir()
    hashes = cache_dir() / "sha256-cache.json"
    if hashes.is_file():
        shutil.copy(hashes, cache / hashes.name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    env["GGPREC_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(ROOT)  # this checkout's ggprec
    return env


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one process run to completion; its output goes to log."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{log.read_text(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def llama_figures(log: Path) -> tuple[float, float]:
    """(mean KLD, top-1 agreement) from llama-perplexity's --kl-divergence report."""
    text = log.read_text(errors="replace")
    kld = re.search(r"Mean\s+KLD:\s+([-\d.]+)", text)
    top = re.search(r"Same top p:\s+([\d.]+)", text)
    if not kld or not top:
        raise SystemExit(f"no KLD in llama-perplexity's output ({log})")
    return float(kld.group(1)), float(top.group(1)) / 100


def ggprec_figures(log: Path) -> tuple[float, float, bool]:
    text = log.read_text(errors="replace")
    doc = json.loads(text[text.index("{"):])
    return doc["kld_mean"], doc["top1"], doc["reference_cached"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--candidate", default="q4_0", help="Profile of the candidate build.")
    ap.add_argument("--tools", help="Folder of llama-perplexity (default: scripts/build_llama_tools.sh's).")
    a = ap.parse_args()
    perplexity = tools_dir(a.tools) / "llama-perplexity"
    src = demo_model_path(quiet=True)
    ref = build_variant(src, load_profile("f32"), threads=a.threads)
    cand = build_variant(src, load_profile(a.candidate), threads=a.threads)
    with tempfile.TemporaryDirectory(prefix="ggprec-bench-eval-") as tmp:
        d = Path(tmp)
        env = child_env(d)
        text = d / "text.txt"
        text.write_text(ev.default_text(), encoding="utf-8")
        common = ["-f", str(text), "-c", str(a.ctx), "--chunks", str(a.chunks), "-t", str(a.threads)]
        base = d / "base.kld"
        gg = [sys.executable, "-m", "ggprec", "eval", str(cand), "--reference", str(ref), "--ctx", str(a.ctx),
              "--chunks", str(a.chunks), "-t", str(a.threads), "--json", "--db", str(d / "history.db")]
        cmds = {
            "lp_ref": [str(perplexity), "-m", str(ref), *common, "--kl-divergence-base", str(base)],
            "lp_cand": [str(perplexity), "-m", str(cand), *common, "--kl-divergence-base", str(base),
                        "--kl-divergence"],
            "cold": gg, "warm": gg,
        }
        ref_cache = Path(env["GGPREC_CACHE"]) / "reference-logits"

        def run(name: str) -> tuple[float, float]:
            if name == "cold":
                shutil.rmtree(ref_cache, ignore_errors=True)
            return timed(cmds[name], env, d / f"{name}.log")

        for name in cmds:  # untimed: page cache, bytecode, the base file lp_cand reads
            run(name)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        load = [os.getloadavg()[0]]
        for i in range(a.reps):
            order = ("lp_ref", "lp_cand", "cold", "warm") if i % 2 == 0 else ("cold", "warm", "lp_ref", "lp_cand")
            for name in order:
                times[name].append(run(name))
            load.append(os.getloadavg()[0])
        lp_kld, lp_top1 = llama_figures(d / "lp_cand.log")
        gg_kld, gg_top1, cached = ggprec_figures(d / "warm.log")
        assert cached and not ggprec_figures(d / "cold.log")[2]
    wall = {k: [t[0] for t in v] for k, v in times.items()}
    cpu = {k: [t[1] for t in v] for k, v in times.items()}
    cold = [c / (r + k) for c, r, k in zip(wall["cold"], wall["lp_ref"], wall["lp_cand"], strict=True)]
    warm = [w / k for w, k in zip(wall["warm"], wall["lp_cand"], strict=True)]
    print(f"SmolLM2-135M {a.candidate} vs f32, {a.chunks} windows of {a.ctx}, {a.threads} threads, {a.reps} reps, "
          f"whole processes; 1-min load average {min(load):.2f}-{max(load):.2f} on {os.cpu_count()} CPUs")
    print(f"{'':8} {'median s':>9} {'min-max s':>13} {'CPU s':>7}")
    for name in cmds:
        print(f"{name:8} {statistics.median(wall[name]):9.2f} {min(wall[name]):6.2f}-{max(wall[name]):<6.2f} "
              f"{statistics.median(cpu[name]):7.2f}")
    print(f"cold: ggprec / (lp_ref + lp_cand) paired median {statistics.median(cold):.3f} "
          f"(reps {min(cold):.3f}-{max(cold):.3f}; target <= 1.05)")
    print(f"warm: ggprec / lp_cand paired median {statistics.median(warm):.3f} "
          f"(reps {min(warm):.3f}-{max(warm):.3f}; target <= 1.05)")
    print(f"mean KLD: ggprec {gg_kld:.5f}, llama-perplexity {lp_kld:.5f} (ratio {gg_kld / lp_kld:.4f}; target "
          f"within 1%); top-1: ggprec {100 * gg_top1:.2f}%, llama-perplexity {100 * lp_top1:.2f}%")


if __name__ == "__main__":
    main()
