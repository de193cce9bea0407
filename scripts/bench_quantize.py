"""Overhead of `ggprec quantize` over the bare llama.cpp call on the same plan, as whole processes.

Both sides are timed from the parent, from spawning the process to its exit, with the peak RSS of that
process alone (os.wait4):
  bare:   `python THIS --child-bare SPEC`: Python start, `import llama_cpp`, build
          llama_model_quantize_params with the plan's ftype, token-embedding/output types and one
          tt_overrides entry per tensor (read from SPEC, a JSON file the parent wrote before timing),
          call llama_model_quantize. Nothing else: no header read, no plan, no check, no rename.
          llama-cpp-python's default log callback prints llama.cpp's log (to a file here).
  ggprec: `ggprec quantize SOURCE --profile P -o OUT --force -t N`, the CLI as a user runs it: Python start,
          imports, header read, plan resolution, the same llama_model_quantize call, the re-read of OUT's
          tensor infos checking every type against the plan, rename into place. Its log goes to an
          in-memory capture; with stderr not a terminal no progress is drawn.
The two sides alternate rep by rep (which goes first alternates too); the report gives the median of
each side, and the median of the per-rep ratios (ggprec / bare of the same rep, the pair run back to
back), which is what to hold against the target (<= 1.05). The load average is printed: the machine
may be shared.

    python scripts/bench_quantize.py [--source F32.gguf] [--profile mixed] [--threads 2] [--reps 7] [--stages]

--stages also times ggprec's steps inside one process (imports, header and plan, parameters, the
quantize call, the verification), to show where the difference goes.

Without --source it uses SmolLM2-135M dequantized to f32 (built once by build_variant). For a profile
that splits the output head the bare side quantizes ggprec's intermediate file (llama.cpp alone cannot
add the tensor), so that comparison leaves out the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bare_child(spec_path: str) -> None:
    """The bare side: only llama-cpp-python, the parameters, the call."""
    import ctypes

    import llama_cpp

    spec = json.loads(Path(spec_path).read_text())
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = spec["threads"]
    p.ftype = spec["ftype"]
    p.allow_requantize = spec["allow_requantize"]
    p.pure = True
    p.token_embedding_type = spec["token_embedding_type"]
    p.output_tensor_type = spec["output_tensor_type"]
    pats = [pat.encode() for pat, _ in spec["overrides"]]
    arr = (llama_cpp.llama_model_tensor_override * (len(pats) + 1))()
    for i, (pat, (_, type_id)) in enumerate(zip(pats, spec["overrides"], strict=True)):
        arr[i].pattern = pat
        arr[i].type = type_id
    arr[len(pats)].pattern = None
    p.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    rc = llama_cpp.llama_model_quantize(spec["source"].encode(), spec["out"].encode(), ctypes.byref(p))
    sys.exit(rc)


def stages_child(source: str, profile: str, out: str, threads: int) -> None:
    """ggprec's own work in the order `ggprec quantize` does it, each step timed (ms), as JSON."""
    t = [time.perf_counter()]
    import ggprec.cli  # noqa: F401  (click and the command table: the CLI's start)

    t.append(time.perf_counter())
    from ggprec.gguf_info import read_gguf
    from ggprec.plan import resolve_plan
    from ggprec.profile import load_profile
    from ggprec.quantize import QuantizeCall, verify

    t.append(time.perf_counter())
    import llama_cpp  # noqa: F401  (the bare side pays this too)

    t.append(time.perf_counter())
    plan = resolve_plan(read_gguf(source), load_profile(profile))
    t.append(time.perf_counter())
    call = QuantizeCall(plan, threads)
    t.append(time.perf_counter())
    call.run(Path(source), Path(out), None)
    t.append(time.perf_counter())
    verify(Path(out), plan)
    t.append(time.perf_counter())
    names = ["cli_import", "ggprec_modules", "llama_cpp_import", "header_and_plan", "params", "quantize_call",
             "verify"]
    print(json.dumps({n: (b - a) * 1000 for n, a, b in zip(names, t[:-1], t[1:], strict=True)}))


def run_stages(args: argparse.Namespace, out: str) -> list[dict[str, float]]:
    runs = []
    for _ in range(args.reps):
        Path(out).unlink(missing_ok=True)
        done = subprocess.run([sys.executable, __file__, "--child-stages", "--source", args.source, "--profile",
                               args.profile, "--threads", str(args.threads), "--out", out],
                              capture_output=True, text=True, check=True, env=ENV)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def print_stages(runs: list[dict[str, float]]) -> None:
    print("ggprec's steps in one process (median ms over the reps; llama_cpp import and the quantize call are "
          "the bare side's work too):")
    for name in runs[0]:
        print(f"  {name:18} {statistics.median(r[name] for r in runs):8.1f}")


def write_spec(source: str, profile: str, out: str, threads: int, workdir: Path) -> Path:
    """The bare side's parameters: exactly those ggprec passes to llama_model_quantize for this plan."""
    from ggprec.gguf_info import read_gguf
    from ggprec.plan import resolve_plan
    from ggprec.profile import load_profile
    from ggprec.quantize import QuantizeCall, write_split_head

    plan = resolve_plan(read_gguf(source), load_profile(profile))
    call = QuantizeCall(plan, threads)
    p = call.params
    if plan.split_output:
        source = str(write_split_head(read_gguf(plan.source), workdir / "split-head.gguf"))
    n = len(call.patterns)
    spec = {
        "source": source, "out": out, "threads": threads, "ftype": p.ftype,
        "allow_requantize": bool(p.allow_requantize),
        "token_embedding_type": p.token_embedding_type, "output_tensor_type": p.output_tensor_type,
        "overrides": [[call.overrides[i].pattern.decode(), call.overrides[i].type] for i in range(n)],
    }
    path = workdir / "bare-spec.json"
    path.write_text(json.dumps(spec))
    return path


def child_env(workdir: Path) -> dict[str, str]:
    """Both sides' environment: bytecode cached in a private folder (warmed by the untimed first runs), as
    an installed package has its .pyc files; PYTHONDONTWRITEBYTECODE would make every process compile
    ggprec's modules from source (the bare side's llama_cpp has .pyc from pip either way)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env


ENV: dict[str, str] | None = None


def timed(cmd: list[str], out: str) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds user + system) of one process run to completion."""
    Path(out).unlink(missing_ok=True)  # neither side pays for deleting the previous output
    # stderr to a file, not a pipe: the bare side prints llama.cpp's log (~56 KB), a pipe could fill up
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {err.read().decode(errors='replace')[-500:]}")
    return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source")
    ap.add_argument("--profile", default="mixed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--stages", action="store_true", help="Also time ggprec's steps inside one process.")
    ap.add_argument("--child-bare", help=argparse.SUPPRESS)
    ap.add_argument("--child-stages", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_bare:
        bare_child(args.child_bare)
        return
    if args.child_stages:
        stages_child(args.source, args.profile, args.out, args.threads)
        return
    if args.source is None:
        from ggprec.demo_model import demo_model_path
        from ggprec.profile import load_profile
        from ggprec.quantize import build_variant

        args.source = str(build_variant(demo_model_path(quiet=True), load_profile("f32"), threads=args.threads))
    ggprec_exe = shutil.which("ggprec", path=str(Path(sys.executable).parent)) or shutil.which("ggprec")
    if ggprec_exe is None:
        raise SystemExit("the `ggprec` command is not installed (pip install -e .)")
    with tempfile.TemporaryDirectory(prefix="ggprec-bench-", dir=Path(args.source).parent) as d:
        out = str(Path(d) / "out.gguf")
        spec = write_spec(args.source, args.profile, out, args.threads, Path(d))
        cmds = {
            "bare": [sys.executable, __file__, "--child-bare", str(spec)],
            "ggprec": [ggprec_exe, "quantize", args.source, "--profile", args.profile, "-o", out, "--force",
                       "-t", str(args.threads)],
        }
        global ENV
        ENV = child_env(Path(d))
        for _ in range(2):  # warm the page cache and write the .pyc files
            timed(cmds["bare"], out)
            timed(cmds["ggprec"], out)
        results: dict[str, list[tuple[float, float, float]]] = {"bare": [], "ggprec": []}
        load = [os.getloadavg()[0]]
        for i in range(args.reps):
            order = ("ggprec", "bare") if i % 2 == 0 else ("bare", "ggprec")
            for mode in order:
                results[mode].append(timed(cmds[mode], out))
            load.append(os.getloadavg()[0])
        stages = run_stages(args, out) if args.stages else None
    secs = {m: [r[0] for r in rs] for m, rs in results.items()}
    rss = {m: [r[1] for r in rs] for m, rs in results.items()}
    cpu = {m: [r[2] for r in rs] for m, rs in results.items()}
    ratios = [g / b for g, b in zip(secs["ggprec"], secs["bare"], strict=True)]
    print(f"source {args.source}\nprofile {args.profile}, threads {args.threads}, {args.reps} alternating pairs, "
          f"whole processes; 1-min load average {min(load):.2f}-{max(load):.2f} on {os.cpu_count()} CPUs")
    print(f"{'':8} {'median s':>9} {'min-max s':>13} {'peak RSS MiB':>13} {'CPU s':>7}")
    for m in ("bare", "ggprec"):
        print(f"{m:8} {statistics.median(secs[m]):9.3f} {min(secs[m]):6.2f}-{max(secs[m]):<6.2f} "
              f"{statistics.median(rss[m]):13.1f} {statistics.median(cpu[m]):7.3f}")
    print(f"paired median time ratio ggprec/bare {statistics.median(ratios):.3f} "
          f"(pairs {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.05)")
    extra = statistics.median(g - b for g, b in zip(secs["ggprec"], secs["bare"], strict=True))
    cpu_ratio = statistics.median(g / b for g, b in zip(cpu["ggprec"], cpu["bare"], strict=True))
    print(f"paired median extra time {extra * 1000:.0f} ms; "
          f"peak RSS ratio {statistics.median(rss['ggprec']) / statistics.median(rss['bare']):.3f}; "
          f"paired median CPU-time ratio {cpu_ratio:.3f}")
    if stages:
        print_stages(stages)


if __name__ == "__main__":
    main()
