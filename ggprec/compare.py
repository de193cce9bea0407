"""Profiles side by side: for each profile build (or reuse) the variant, measure its file size, the memory
llama.cpp allocates, pp/tg speed and accuracy against a reference, then put ratios against a baseline
profile beside the raw numbers. `demo()` is the README's main job: that comparison on the demo model.

This module only orchestrates: building is quantize's, speed and memory are runner's, accuracy is
evaluate's, history rows are history's (saved by the CLI), printing is printers' and report's (files).
Each profile's row is a ggprec.records.CompareRecord.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GgprecError
from .progress import Progress
from .records import CompareRecord
from .units import MIB

# Defaults sized so that `ggprec demo` fits 10 minutes on a 2-core CPU (2 minutes with cached builds and
# reference logits): speed like llama-bench but shorter, accuracy over 4 windows of 512 tokens.
DEFAULT_PP = 256
DEFAULT_TG = 64
DEFAULT_REPS = 3
DEFAULT_CTX = 512
DEFAULT_CHUNKS = 4

DEMO_PROFILES = ("mixed", "mixed-split-head", "q8_0", "q4_0", "q8_0-kv-q8_0", "q8_0-kv-q4_0")
DEMO_BASELINE = "q8_0"
DEMO_REFERENCE = "f32"



@dataclass
class Comparison:
    """What `compare` measured: one CompareRecord per profile (the printers' input)."""

    source: str
    reference: str
    baseline: str
    settings: dict[str, Any]
    records: list[CompareRecord]
    files: list[Path] = field(default_factory=list)
    profile_hashes: dict[str, str] = field(default_factory=dict)  # profile -> content hash (history rows)
    history_ids: list[int] = field(default_factory=list)  # set by history.save_comparison

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reference": self.reference, "baseline": self.baseline,
                "settings": self.settings, "records": [r.to_dict() for r in self.records],
                "files": [str(p) for p in self.files]}


# --- progress ---------------------------------------------------------------------------------------


class _Steps:
    """Counts the long steps (builds, speed runs, evaluations) for a progress(stage, done, total)
    callback: the stage is reported when a step starts, with the steps done so far."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(description, self.done, self.total)
        yield
        self.done += 1

    def finish(self) -> None:
        if self.progress is not None:
            self.progress("done", self.done, self.total)


# --- one profile ------------------------------------------------------------------------------------


def _speed_fields(run: Any) -> dict[str, Any]:
    """pp/tg tok/s (median and max - min over the repetitions) and what llama.cpp allocated."""
    def stats(st: Any) -> tuple[float | None, float | None]:
        return (None, None) if st is None else (st.median, st.max - st.min)

    pp, pp_spread = stats(run.pp_tps)
    tg, tg_spread = stats(run.tg_tps)
    expected = run.expected_tg_tps
    return {"pp_tps": pp, "pp_spread": pp_spread, "tg_tps": tg, "tg_spread": tg_spread, "load_s": run.load_s,
            # ggprec.speed's expectation for this build and runtime, and measured / expected
            "expected_tg_tps": expected, "expected_tg_source": run.expected_tg_source,
            "tg_vs_expected": None if expected is None or tg is None else tg / expected,
            # model + KV cache + compute (+ output) buffers on every device, as llama.cpp logged them
            "memory_bytes": run.allocation.total or None,
            "memory_mb": run.allocation.total / MIB if run.allocation.total else None,
            # ggprec.memory's prediction for the same load, beside what llama.cpp allocated
            "memory_predicted_mb": sum(run.predicted.values()) / MIB if run.predicted else None,
            "buffers": dict(run.allocation.buffers),
            # per buffer and per device (a split: each RPC server's share), beside the allocated `buffers`
            "predicted_buffers": dict(run.predicted or {}), "predicted_devices": _per_device(run.predicted),
            "peak_rss_bytes": run.peak_rss_bytes, "gpu_memory_bytes": run.gpu_memory_bytes}


def _per_device(predicted: dict[str, int] | None) -> dict[str, int]:
    """Predicted bytes per device with memory of its own, and `host` (host RAM)."""
    from .devices import Buffers

    if not predicted:
        return {}
    b = Buffers(dict(predicted))
    return {"host": b.host_total} | b.device_totals()


def _accuracy_fields(ev: Any) -> dict[str, Any]:
    return {
        "kld_mean": ev.kld_mean, "kld_p99": ev.kld_p99,
        "top1_pct": 100.0 * ev.top1, "ppl": ev.ppl, "ppl_ref": ev.ppl_ref, "ppl_ratio": ev.ppl_ratio,
        "kld_mean_se": ev.kld_mean_se, "top1_se_pct": 100.0 * ev.top1_se, "ppl_se": ev.ppl_se,
        "eval_tokens": ev.n_tokens, "reference_cached": ev.reference_cached,
    }


ACCURACY_CACHE_FORMAT = 1


def _accuracy_cache_path(candidate: Path, reference: Path, text: str | None, n_ctx: int, chunks: int | None,
                         runtime: Any) -> Path:
    """Accuracy is deterministic for the same files, text, settings and llama.cpp build, so a candidate's
    figures are kept next to the reference logits; speed is never cached (it depends on the moment)."""
    import hashlib
    import json

    from .llama_bindings import load

    llama_cpp = load()

    from .demo_model import cache_dir
    from .evaluate import default_text
    from .hashing import model_sha256

    key = {"format": ACCURACY_CACHE_FORMAT, "candidate": model_sha256(candidate), "reference": model_sha256(reference),
           "text": hashlib.sha256((default_text() if text is None else text).encode()).hexdigest(),
           "n_ctx": n_ctx, "chunks": chunks, "runtime": runtime.to_dict(), "llama_cpp": llama_cpp.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "compare-accuracy" / f"{digest}.json"


def _evaluate(candidate: Path, reference: Path, text: str | None, n_ctx: int, chunks: int | None, runtime: Any,
              reuse: bool) -> tuple[Any, bool]:
    """evaluate(), or its earlier result for exactly the same inputs; returns (result, reused)."""
    import json

    from .evaluate import EvalResult, evaluate
    from .fileio import atomic_write_text

    path = _accuracy_cache_path(candidate, reference, text, n_ctx, chunks, runtime)
    if reuse and path.is_file():
        try:
            return EvalResult(**json.loads(path.read_text())), True
        except (OSError, ValueError, TypeError):
            pass  # damaged or from another version: measure again
    ev = evaluate(candidate, reference, text=text, n_ctx=n_ctx, chunks=chunks, settings=runtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(ev.to_dict()))
    return ev, False


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def add_baseline_ratios(records: list[CompareRecord], baseline: str) -> None:
    """Fill the vs-baseline columns of every record in place: memory saved %, tok/s ratios, KLD ratio
    and top-1 difference in percentage points."""
    base = next(r for r in records if r.profile == baseline)
    for r in records:
        mem, base_mem = r.memory_bytes, base.memory_bytes
        r.memory_saved_pct = None if not mem or not base_mem else 100.0 * (1.0 - mem / base_mem)
        r.pp_ratio = _ratio(r.pp_tps, base.pp_tps)
        r.tg_ratio = _ratio(r.tg_tps, base.tg_tps)
        r.kld_vs_baseline = _ratio(r.kld_mean, base.kld_mean)
        r.top1_vs_baseline = None if r.top1_pct is None or base.top1_pct is None else r.top1_pct - base.top1_pct
        r.baseline = r.profile == baseline


def with_imatrix(profile: Any, source: Path, imatrix: str | os.PathLike[str]) -> Any:
    """The profile quantized with this importance matrix (read and checked against the source: one line)."""
    from dataclasses import replace

    from .gguf_info import read_gguf
    from .imatrix_file import check_imatrix, read_imatrix

    check_imatrix(read_imatrix(imatrix), read_gguf(source))
    return replace(profile, imatrix=str(Path(imatrix).resolve()))


def _profile_list(profiles: Sequence[str], baseline: str) -> list[str]:
    names = [p.strip() for p in profiles if p.strip()]
    if not names:
        raise GgprecError("no profiles to compare")
    if len(set(names)) != len(names):
        raise GgprecError(f"profile listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if baseline not in names:
        names.insert(0, baseline)  # the ratios need it measured on the same machine, in the same run
    return names


def compare(source: str | os.PathLike[str], profiles: Sequence[str], baseline: str = DEMO_BASELINE,
            reference: str = DEMO_REFERENCE, out_dir: str | os.PathLike[str] | None = None, *,
            pp: int = DEFAULT_PP, tg: int = DEFAULT_TG, reps: int = DEFAULT_REPS, n_ctx: int = DEFAULT_CTX,
            chunks: int | None = DEFAULT_CHUNKS, text: str | None = None, threads: int | None = None,
            progress: Progress | None = None, reuse_accuracy: bool = True,
            devices: Mapping[str, Any] | None = None, imatrix: str | os.PathLike[str] | None = None) -> Comparison:
    """Build, run and evaluate every profile on `source`; accuracy is measured against the variant that
    the `reference` profile builds (e.g. f32: lossless from any source). Writes JSON/CSV/Markdown/PNG
    into out_dir when given (the CLI keeps one history row per profile: `history.save_comparison`).
    Builds, reference logits and (unless reuse_accuracy is False) accuracy figures of unchanged inputs are
    reused; speed and memory are measured every time. devices: RuntimeSettings fields (n_gpu_layers, rpc_servers,
    tensor_split, devices) every profile runs with; RPC servers are probed before anything is built.
    imatrix: an importance-matrix file every compared profile is quantized with (in place of the profile's
    own `imatrix` field; the reference is built as its profile says), checked against the model first."""
    from .calibrate import speed_model_for
    from .profile import load_profile
    from .quantize import build_variant
    from .runner import run_benchmark

    src = Path(source)
    if not src.is_file():
        raise GgprecError(f"{src}: no such file")
    names = _profile_list(profiles, baseline)
    # Every profile is loaded before anything long starts, so a typo fails in a second, not minutes later.
    loaded = {name: load_profile(name) for name in names}
    if imatrix is not None:
        loaded = {name: with_imatrix(p, src, imatrix) for name, p in loaded.items()}
    ref_profile = load_profile(reference)
    # So is a text that gives no evaluation windows (the variants share the source's tokenizer).
    from .evaluate import check_text, default_text

    check_text(src, default_text() if text is None else text, n_ctx, chunks)
    devices = dict(devices or {})
    if devices.get("rpc_servers"):
        from . import rpc

        rpc.require_rpc()
        rpc.probe_all(devices["rpc_servers"])
    threads = threads or os.cpu_count() or 1
    settings = {"pp": pp, "tg": tg, "reps": reps, "n_ctx": n_ctx, "chunks": chunks, "threads": threads}

    speed = speed_model_for(n_threads=threads)  # once: every row's expected tok/s from the same figures
    records: list[CompareRecord] = []
    steps = _Steps(1 + 3 * len(names), progress)
    with steps.step(f"build reference ({reference})"):
        ref_path = build_variant(src, ref_profile, threads=threads)
    for name in names:
        profile = loaded[name]
        runtime = profile.runtime.with_overrides(n_threads=threads, **devices)
        with steps.step(f"build {name}"):
            path = build_variant(src, profile, threads=threads)
        with steps.step(f"speed {name} (pp {pp}, tg {tg}, x{reps})"):
            run = run_benchmark(path, runtime, pp=pp, tg=tg, reps=reps, speed_model=speed)
        with steps.step(f"accuracy {name} vs {reference}"):
            ev, reused = _evaluate(path, ref_path, text, n_ctx, chunks, runtime, reuse_accuracy)
        size = path.stat().st_size
        records.append(CompareRecord(profile=name, path=str(path), file_bytes=size, file_mb=size / MIB,
                                     **_speed_fields(run), **_accuracy_fields(ev), accuracy_cached=reused,
                                     runtime=runtime.to_dict()))
    steps.finish()
    add_baseline_ratios(records, baseline)

    result = Comparison(source=str(src), reference=reference, baseline=baseline, settings=settings,
                        records=records, profile_hashes={n: p.content_hash() for n, p in loaded.items()})
    if out_dir is not None:
        from .report import write_all

        result.files = write_all(result.records, out_dir, subtitle=_subtitle(result), baseline=baseline)
    return result


def _subtitle(result: Comparison) -> str:
    import platform

    return (f"{Path(result.source).name} vs {result.reference}; {platform.machine()}, {os.cpu_count()} cores, "
            f"{result.settings['threads']} threads")


def summary_lines(result: Comparison) -> list[str]:
    """What to read under the table: how the numbers were taken and where the files are."""
    s = result.settings
    tokens = result.records[0].eval_tokens if result.records else None
    lines = [f"speed: pp {s['pp']} and tg {s['tg']} tokens, median of {s['reps']}, {s['threads']} threads; "
             f"accuracy: {'?' if tokens is None else tokens} scored tokens ({s['chunks']} windows of {s['n_ctx']}) "
             f"vs {result.reference}; ratios vs {result.baseline}"]
    if result.files:
        lines.append("written: " + ", ".join(str(p) for p in result.files))
    return lines


# --- the demo ---------------------------------------------------------------------------------------


def demo_out_dir() -> Path:
    from .demo_model import cache_dir

    return cache_dir() / "demo"


def demo(out_dir: str | os.PathLike[str] | None = None, progress: Progress | None = None,
         **options: Any) -> Comparison:
    """The README's main job: on SmolLM2-135M, the f32 reference, then mixed, mixed-split-head, q8_0
    (baseline), q4_0 and the KV-cache variants of q8_0, with tables and plots in out_dir."""
    from .demo_model import demo_model_path

    return compare(demo_model_path(quiet=progress is None), DEMO_PROFILES, baseline=DEMO_BASELINE,
                   reference=DEMO_REFERENCE, out_dir=out_dir if out_dir is not None else demo_out_dir(),
                   progress=progress, **options)
