"""Every figure the README quotes, re-taken in one run on one machine, into one file.

Each section runs the commands the README names for it (whole processes, as a user runs them), and the
output file (default docs/FIGURES.md) keeps, for each: the command, its exit status, wall time, the load
average before and after, and everything it printed. The file opens with the machine (CPU, flags that
change llama.cpp's kernels, cores, RAM, GPU), the llama-cpp-python build, the commit and the date, so
every README number can be traced to a run on a named machine.

    python scripts/readme_figures.py                 # the default sections (about 25-35 min on 2 cores)
    python scripts/readme_figures.py --list          # sections, their commands and rough cost
    python scripts/readme_figures.py --only memory,speed --out /tmp/figures.md
    python scripts/readme_figures.py --all           # also the long ones (sensitivity, frontier, fuzzing)
    python scripts/readme_figures.py --update recommend-speed   # re-take sections in place (same machine only)

Timings depend on the load: run it on an otherwise idle machine (each section prints its load average).
A section that fails is recorded with its exit status and the run goes on; the script exits 1 if any did.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Section:
    name: str
    readme: str  # the README section whose figures it gives
    commands: tuple[tuple[str, ...], ...]
    minutes: float  # rough cost on an idle 2-core machine
    long: bool = False  # only with --all


def ggprec(*args: str) -> tuple[str, ...]:
    return (PY, "-m", "ggprec", *args)


def script(name: str, *args: str) -> tuple[str, ...]:
    return (PY, f"scripts/{name}", *args)


OSS_CONTEXTS = ",".join(str(n) for n in [*range(512, 16385, 512), 32768])  # every mask width gpt-oss shows
SMOL_CONTEXTS = ",".join(str(n) for n in range(256, 4097, 256))
LLAMA2_7B = ("llama-3-8b", "--set", "n_layer=4", "--set", "n_ff=11008")  # Llama 2 7B's widths (n_ff 2.69 n_embd)
SECTIONS = (
    Section("inspect", "`ggprec inspect` speed", (script("bench_inspect.py"),), 1),
    Section("memory", "Memory model", (script("check_memory_model.py"),
                                       script("sweep_compute.py", "gpt-oss-20b", "--ctx", OSS_CONTEXTS),
                                       script("sweep_compute.py", "gpt-oss-20b", "--ubatch", "256"),
                                       script("sweep_compute.py", "gpt-oss-20b", "--set", "n_embd=2048",
                                              "--set", "n_ff_exp=2048", "--set", "n_layer=4", "--ctx", OSS_CONTEXTS),
                                       script("sweep_compute.py", "smollm2-135m", "--ctx", SMOL_CONTEXTS),
                                       script("sweep_compute.py", *LLAMA2_7B, "--ctx", OSS_CONTEXTS),
                                       script("sweep_compute.py", *LLAMA2_7B, "--no-fa", "--kv", "f16", "--ctx",
                                              OSS_CONTEXTS),
                                       script("sweep_compute.py", "llama-3.2-1b", "--set", "n_layer=4", "--set",
                                              "n_ff=4096", "--ctx", SMOL_CONTEXTS),
                                       script("sweep_compute.py", "deepseek-v2-lite"),
                                       script("sweep_compute.py", "deepseek-v2-lite", "--no-fa", "--kv", "f16"),
                                       script("sweep_compute.py", "deepseek-v2-lite", "--no-fa", "--kv", "f16",
                                              "--ubatch", "256")), 5),
    Section("gpu-forecast", "Plans for a target machine", (script("check_gpu_forecast.py"),), 0.2),
    Section("speed", "`ggprec calibrate` and the speed model",
            (ggprec("calibrate"), script("check_speed_model.py")), 12),
    Section("demo", "`ggprec demo`", (script("bench_demo.py"),), 4),
    Section("parity", "`ggprec quantize` and `ggprec eval` against llama.cpp's own tools",
            (script("bench_quantize.py"), script("bench_eval.py")), 5),
    Section("recommend-speed", "`ggprec recommend` (the scenarios' fronts, and the speed of recommend itself)",
            (script("bench_recommend.py", "--fronts"),), 1),
    Section("recommend-verify", "Recommend on a quantized file", (script("verify_recommend.py"),), 8),
    Section("devices", "Several devices", (script("fit_split_examples.py"), script("check_rpc_memory.py"),
                                           script("bench_rpc.py")), 3),
    Section("imatrix", "Importance matrix", (script("bench_imatrix.py"),), 10, long=True),
    Section("proxy", "`ggprec sensitivity MODEL --proxy`", (script("bench_proxy.py", "--skip-smollm2"),), 5, long=True),
    Section("frontier", "`ggprec sensitivity MODEL` (frontier)", (script("frontier.py", "--out", "docs"),), 2,
            long=True),
    Section("fuzz", "Hostile files", (script("fuzz_gguf.py", "--inputs", "100000", "--seed", "1"),), 4, long=True),
)


def machine() -> list[str]:
    """The machine and build every figure below was taken on."""
    from ggprec.hardware import fingerprint

    hw = fingerprint()
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    kernels = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_int8", "amx_bf16") if f in flags]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return [f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {hw.get('cpu')}, {hw.get('cores')} cores, {hw.get('ram_bytes', 0) / 2**30:.1f} GiB RAM, "
            f"GPU: {', '.join(map(str, hw.get('gpus') or [])) or 'none'}",
            f"- CPU features llama.cpp's kernels depend on: {', '.join(kernels) or 'none of avx2/avx512/amx'}",
            f"- llama-cpp-python {hw.get('llama_cpp_python')}; ggprec commit {commit.stdout.strip() or '?'}"
            + (" (with uncommitted changes)" if dirty else "")]


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def run_section(sec: Section, out: list[str], retaken: str = "") -> bool:
    out += [f"## {sec.name}", "", f"README: {sec.readme}", ""] + ([retaken, ""] if retaken else [])
    ok = True
    for cmd in sec.commands:
        shown = shlex.join(["python" if c == PY else c for c in cmd])
        print(f"[{sec.name}] {shown}", file=sys.stderr, flush=True)
        before, t0 = loadavg(), time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        wall, after = time.perf_counter() - t0, loadavg()
        ok &= proc.returncode == 0
        out += [f"`{shown}`: exit {proc.returncode}, {wall:.1f} s wall, load average {before} before, {after} after",
                "", "```", (proc.stdout.rstrip() or "(no output)")]
        if proc.returncode != 0:
            out += ["--- stderr (last 40 lines) ---", *proc.stderr.rstrip().splitlines()[-40:]]
        out += ["```", ""]
    return ok


def split_sections(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """An existing figures file as its opening lines and its sections by name (each with its heading)."""
    head: list[str] = []
    sections: dict[str, list[str]] = {}
    current = head
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        current.append(line)
    return head, sections


def update(path: Path, wanted: list[str]) -> tuple[list[str], list[str]]:
    """Re-take `wanted` sections of the figures file at `path` in place; the rest keep their run. Refused when
    the file was written on another machine (its figures would then mix two machines)."""
    head, old = split_sections(path.read_text())
    here = [line for line in machine() if line.startswith(("- machine:", "- CPU features"))]
    if not all(line in head for line in here):
        raise SystemExit(f"readme_figures: {path} was written on another machine; re-take it whole")
    stamp = next(line for line in machine() if line.startswith("- llama-cpp-python")).split("; ")[-1]
    when = f"Re-taken {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with {stamp} (`--update`)."
    out, failed = list(head), []
    for sec in SECTIONS:
        if sec.name in wanted:
            if not run_section(sec, out, when):
                failed.append(sec.name)
        elif sec.name in old:
            out += old[sec.name]
    return out, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated section names (see --list)")
    ap.add_argument("--all", action="store_true", help="also the long sections")
    ap.add_argument("--update", metavar="SECTIONS", help="re-take these sections of the existing --out file in place")
    ap.add_argument("--list", action="store_true", help="list the sections and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "FIGURES.md")
    args = ap.parse_args()
    if args.list:
        for s in SECTIONS:
            cmds = "; ".join(shlex.join(["python" if c == PY else c for c in cmd]) for cmd in s.commands)
            print(f"{s.name:17} ~{s.minutes:<4g} min {'(--all)' if s.long else '':8} {cmds}")
        return 0
    names = {s.name for s in SECTIONS}
    asked = args.update or args.only
    wanted = asked.split(",") if asked else [s.name for s in SECTIONS if args.all or not s.long]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"readme_figures: unknown section {unknown[0]!r} (known: {', '.join(sorted(names))})", file=sys.stderr)
        return 2
    if args.update:
        if not args.out.exists():
            print(f"readme_figures: {args.out} does not exist: run without --update first", file=sys.stderr)
            return 2
        out, failed = update(args.out, wanted)
    else:
        out = ["# Figures behind the README", "",
               "Written by `python scripts/readme_figures.py` (one run, one machine); the README quotes these.",
               "", *machine(), ""]
        failed = [s.name for s in SECTIONS if s.name in wanted and not run_section(s, out)]
    if failed:
        out += [f"Failed sections: {', '.join(failed)}", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(args.out)
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
