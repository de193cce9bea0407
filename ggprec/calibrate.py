"""`ggprec calibrate`: this machine's decode and prompt speed per weight type, measured with llama.cpp.

Three families of synthetic llama models (ggprec.synth), written once as f16 in a temporary directory:
- wide: llama-3.2-1b's width (n_embd 2048, n_ff 8192, 32/8 heads), a few layers, a small vocabulary;
  quantized by llama.cpp's quantizer to each type and run (ggprec.runner.run_benchmark). Its bytes per
  token dominate its time, so it gives the effective bandwidth of each type.
- mid: n_embd 512 (rows a quarter as long), enough layers that its weights do not fit a CPU cache, f16.
  Its rows are short, so it separates a cost per row (a dot product's setup and final reduction, which
  narrow models such as SmolLM2 pay on few bytes) from the bytes. It runs again with each quantized KV
  cache (KV_TYPES, flash attention on as llama.cpp requires): the extra prompt time per attention element.
- narrow: n_embd 64 at two depths, f16. Its bytes are small, so its time is mostly the fixed costs.
Every figure is the best repetition but one (`fastest`): on a shared machine other processes only ever
slow a run down (with 2 threads on 2 busy cores, by up to 10x, and a median of 5 can be 16x off), so the
fastest runs are the ones closest to the machine's own speed; the very fastest is left out because a lone
lucky run (a turbo burst) was seen 30% above the rest. The seconds per generated token of every f16 run
are fitted together, by least squares on relative residuals, to

    seconds = token_s + n_layer * layer_s + rows * row_s + bytes / (gbps[f16] * 1e9)

then gbps of each other type from its wide run less the fixed costs. Prompt speed is compute-bound:
seconds per prompt token = weight elements multiplied per token (the output head and the last block's FFN
run for the last token only) / that type's elements per second + n_layer * pp_layer_s + rows * pp_row_s
+ the weights' bytes read once per ubatch (at the type's gbps) / tokens per ubatch (the f16 runs again,
then each type's wide run).
The result is stored in the history (kind `calibration`) with the hardware fingerprint and the thread
count; `find_calibration` returns the newest one whose machine and llama.cpp build match this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import GgprecError
from .progress import Progress
from .speed import GPU, HOST, DeviceSpeed, bytes_read_per_token, matmul_work
from .synth import SynthShape

DEFAULT_TYPES = ("f16", "f32", "q8_0", "q6_k", "q5_k", "q4_k", "q5_0", "q4_0", "q3_k", "q2_k")
QUICK_TYPES = ("f16", "q8_0", "q4_k", "q4_0")
WIDE = SynthShape(n_layer=2, n_embd=2048, n_head=32, n_head_kv=8, n_ff=8192, n_vocab=2048, n_ctx=1024)
# Narrow enough (~0.1 MB a layer) that its weights stay in the CPU caches: its time is the fixed costs.
NARROW = SynthShape(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=512, n_ctx=1024)
NARROW_DEPTHS = (2, 24)
# Rows of 512 (1 KiB in f16, 4x shorter than the wide model's): ~6 MB a layer, so 16 layers (96 MB) stream
# from memory like a real model rather than sitting in a CPU cache.
MID = SynthShape(n_layer=16, n_embd=512, n_head=8, n_head_kv=2, n_ff=1536, n_vocab=2048, n_ctx=1024)
N_CTX = 256  # context of every calibration run: the pp batch and the tg prefix + tokens fit
KV_TYPES = ("q8_0", "q4_0")  # quantized KV caches whose prompt cost is measured (the shipped profiles use them)


@dataclass(frozen=True)
class Effort:
    """How much each measurement costs: layers of the wide model, tokens and repetitions."""

    wide_layers: int
    pp: int
    tg: int
    reps: int
    mid_layers: int = 16


FULL = Effort(wide_layers=2, pp=128, tg=32, reps=5, mid_layers=16)
QUICK = Effort(wide_layers=1, pp=32, tg=16, reps=2, mid_layers=4)
NARROW_REPS = 4  # the narrow runs take ~1 ms a repetition, where one preemption doubles the time: 4x the reps


def fastest(samples: Sequence[float]) -> float:
    """The best tok/s but one of the repetitions (the best of fewer than 4)."""
    ranked = sorted(samples, reverse=True)
    return ranked[1] if len(ranked) >= 4 else ranked[0]


@dataclass
class Point:
    """One benchmark run: what ran and what it measured (median tok/s over the repetitions)."""

    device: str  # HOST or GPU
    model: str  # "wide", "mid" or "narrow"
    type: str
    n_layer: int
    n_embd: int
    bytes_per_token: int  # weights (token_embd: one row) + KV cells in use
    elems_per_token: int  # weight elements multiplied per prompt token
    tg_tps: float  # the best repetition but one (see the module doc)
    tg_spread: float  # max - min over the repetitions
    pp_tps: float | None  # the best repetition but one
    rows_per_token: float = 0.0  # weight rows a generated token multiplies (the head included)
    pp_rows_per_token: float = 0.0  # weight rows a prompt token multiplies (no head)
    pp_stream_bytes: int = 0  # weight bytes each prompt ubatch reads once
    pp_tokens: int = 0  # tokens of the timed prompt (one ubatch)
    tg_median: float | None = None
    pp_median: float | None = None
    kv_type: str = "f16"  # the KV cache's type (a quantized one runs with flash attention)
    attn_elems_per_token: float = 0.0  # speed.prompt_attention of the timed prompt

    @property
    def tg_seconds(self) -> float:
        return 1.0 / self.tg_tps


@dataclass
class Calibration:
    speeds: dict[str, DeviceSpeed]  # device class -> its figures
    points: list[Point]
    n_threads: int
    effort: dict[str, int]
    seconds: float  # wall time of the calibration
    fit_notes: list[str] = field(default_factory=list)
    id: int | None = None  # history row, once stored or found
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"speeds": {d: s.to_dict() for d, s in self.speeds.items()},
                "points": [asdict(p) for p in self.points], "n_threads": self.n_threads,
                "effort": dict(self.effort), "seconds": self.seconds, "fit_notes": list(self.fit_notes),
                "id": self.id, "created": self.created}

    @classmethod
    def from_dict(cls, d: dict[str, Any], id: int | None = None, created: str | None = None) -> Calibration:
        speeds = {dev: DeviceSpeed(**s) for dev, s in d["speeds"].items()}
        cal = cls(speeds, [Point(**p) for p in d["points"]], d["n_threads"], d["effort"], d["seconds"],
                  d.get("fit_notes", []), id, created)
        cal.label_sources()
        return cal

    def label_sources(self) -> None:
        """Name this calibration in every device's `source` (shown beside each expected speed)."""
        when = (self.created or "").replace("T", " ").replace("+00:00", " UTC")
        where = f"history #{self.id}, {when}" if self.id else "not stored"
        self.speeds = {dev: replace(s, source=f"calibrated ({where}, {len(s.gbps)} types, {self.n_threads} threads)")
                       for dev, s in self.speeds.items()}


# --- measuring ------------------------------------------------------------------------------------


def _variant(src: Path, type_name: str, out_dir: Path, threads: int) -> Path:
    """`src` (f16) with every quantizable weight in `type_name`, written by llama.cpp's quantizer."""
    if type_name == "f16":
        return src
    from .gguf_info import read_gguf
    from .plan import resolve_plan
    from .profile import Profile
    from .quantize import quantize

    plan = resolve_plan(read_gguf(src), Profile(name=f"calibrate-{type_name}", default=type_name))
    return quantize(src, plan, out_dir / f"{src.stem}.{type_name}.gguf", threads=threads, force=True)


def _measure(path: Path, device: str, model: str, effort: Effort, threads: int, kv: str = "f16") -> Point:
    from .gguf_info import read_gguf
    from .runner import TG_PREFIX, run_benchmark
    from .settings import ALL_LAYERS, RuntimeSettings
    from .speed import prompt_attention

    settings = RuntimeSettings(n_gpu_layers=ALL_LAYERS if device == GPU else 0, n_ctx=N_CTX,
                               n_threads=threads, cache_type_k=kv, cache_type_v=kv)
    run = run_benchmark(path, settings, pp=effort.pp, tg=effort.tg,
                        reps=effort.reps * (NARROW_REPS if model == "narrow" else 1))
    info = read_gguf(path)
    # The KV cells in use during the timed decodes: the prefix and, on average, half the generated tokens.
    reads = bytes_read_per_token(info, settings, kv_cells=TG_PREFIX + effort.tg // 2)
    types = {t.type.name for t in info.tensors if len(t.shape) > 1}
    prompt, token = matmul_work(info, settings, prompt=True), matmul_work(info, settings)
    assert run.tg_tps is not None
    return Point(device, model, types.pop() if len(types) == 1 else "mixed", info.hparams.n_layer,
                 info.hparams.n_embd, sum(n for by_type in reads.values() for n in by_type.values()),
                 sum(n for by_type in prompt.elements.values() for n in by_type.values()), fastest(run.tg_tps.samples),
                 run.tg_tps.max - run.tg_tps.min, None if run.pp_tps is None else fastest(run.pp_tps.samples),
                 sum(n for by_type in token.rows.values() for n in by_type.values()),
                 sum(n for by_type in prompt.rows.values() for n in by_type.values()),
                 sum(n for by_type in prompt.bytes.values() for n in by_type.values()), effort.pp,
                 run.tg_tps.median, None if run.pp_tps is None else run.pp_tps.median, kv,
                 prompt_attention(info, settings, effort.pp))


def faster_rounds(points: Sequence[Point]) -> list[Point]:
    """One point per run (device, model, type, layers, KV type), in first-seen order: where a run was
    measured in two rounds, the faster tg and the faster pp of the two."""
    best: dict[tuple[str, str, str, int, str], Point] = {}
    for p in points:
        key = (p.device, p.model, p.type, p.n_layer, p.kv_type)
        old = best.get(key)
        if old is None:
            best[key] = p
            continue
        pp = max((x for x in (old.pp_tps, p.pp_tps) if x is not None), default=None)
        best[key] = replace(old if old.tg_tps >= p.tg_tps else p, pp_tps=pp)
    return list(best.values())


def _relative_lstsq(rows: list[list[float]], seconds: list[float]) -> list[float] | None:
    """x minimising the relative residuals of rows . x = seconds (each equation divided by its seconds,
    so a 40 us narrow run counts as much as a 5 ms wide one); None when the system is underdetermined."""
    import numpy as np

    if not rows or not rows[0]:
        return None
    a = np.array(rows, dtype=float) / np.array(seconds)[:, None]
    if len(rows) < a.shape[1] or np.linalg.matrix_rank(a) < a.shape[1]:
        return None
    return [float(v) for v in np.linalg.lstsq(a, np.ones(len(rows)), rcond=None)[0]]


def _nonnegative_lstsq(rows: list[list[float]], seconds: list[float], names: Sequence[str],
                       notes: list[str], what: str) -> list[float]:
    """_relative_lstsq with every figure >= 0: a figure the noise drives negative is set to 0 (the most
    negative first) and the rest refitted, as an active-set non-negative least squares does; said in `notes`."""
    free = list(range(len(names)))
    while free:
        x = _relative_lstsq([[r[i] for i in free] for r in rows], seconds)
        if x is None:
            break
        if min(x) >= 0:
            out = [0.0] * len(names)
            for i, v in zip(free, x, strict=True):
                out[i] = v
            return out
        worst = free[min(range(len(x)), key=lambda k: x[k])]
        notes.append(f"{what}: {names[worst]} fitted negative (noise); set to 0 and the rest refitted")
        free.remove(worst)
    notes.append(f"{what}: too few runs to fit the fixed costs; they are 0")
    return [0.0] * len(names)


def _fit_decode(f16: list[Point], notes: list[str]) -> tuple[float, float, float]:
    """(token_s, layer_s, row_s) from the f16 runs of every width; f16's own bandwidth follows."""
    x = _nonnegative_lstsq([[1.0, p.n_layer, p.rows_per_token, p.bytes_per_token] for p in f16],
                           [p.tg_seconds for p in f16], ("token_s", "layer_s", "row_s", "1/GBps"), notes, "decode")
    return x[0], x[1], x[2]


def _fit_prompt(f16: list[Point], gbps: float, notes: list[str]) -> tuple[float, float]:
    """(pp_layer_s, pp_row_s) from the f16 runs of every width, after the weights' streaming."""
    pts = [p for p in f16 if p.pp_tps and p.pp_tokens]
    x = _nonnegative_lstsq([[p.n_layer, p.pp_rows_per_token, p.elems_per_token] for p in pts],
                           [1 / p.pp_tps - _stream_s(p, gbps) for p in pts],  # type: ignore[operator]
                           ("pp_layer_s", "pp_row_s", "1/elements per s"), notes, "prompt")
    return x[0], x[1]


def _stream_s(p: Point, gbps: float) -> float:
    """Seconds per prompt token of reading the weights once per ubatch (one ubatch: the timed prompt)."""
    return p.pp_stream_bytes / (gbps * 1e9) / p.pp_tokens if gbps and p.pp_tokens else 0.0


def fit(points: Sequence[Point], device: str) -> tuple[DeviceSpeed, list[str]]:
    """The device's figures from its points: the fixed costs (per token, per layer, per row) from the
    f16 runs at three widths, then each type's bandwidth from its wide run less those costs; pp likewise."""
    mine = [p for p in points if p.device == device and p.kv_type == "f16"]
    wide = {p.type: p for p in mine if p.model == "wide"}
    f16 = [p for p in mine if p.model in ("narrow", "mid") and p.type == "f16"]
    f16 += [wide["f16"]] if "f16" in wide else []
    notes: list[str] = []
    token_s, layer_s, row_s = _fit_decode(f16, notes)
    notes.append(f"decode fixed costs: {token_s * 1e3:.3f} ms per token + {layer_s * 1e3:.4f} ms per layer + "
                 f"{row_s * 1e9:.2f} ns per weight row")
    mids = {p.type: p for p in mine if p.model == "mid"}
    type_row = {"f16": row_s}
    for t, w in wide.items():
        if t != "f16" and t in mids:
            row = _type_row(mids[t], w, lambda p: p.tg_seconds - token_s - p.n_layer * layer_s, prompt=False)
            if row is not None:
                type_row[t] = row
    gbps = {}
    for type_name, p in wide.items():
        transfer = p.tg_seconds - token_s - p.n_layer * layer_s - p.rows_per_token * type_row.get(type_name, row_s)
        if transfer <= 0:
            notes.append(f"{type_name}: the fixed costs exceed the measured time; bandwidth from the raw time")
            transfer = p.tg_seconds
        gbps[type_name] = p.bytes_per_token / transfer / 1e9
    pp_layer_s, pp_row_s = _fit_prompt(f16, gbps.get("f16", 0.0), notes)
    notes.append(f"prompt fixed costs: {pp_layer_s * 1e6:.2f} us per layer + {pp_row_s * 1e9:.3f} ns per weight row "
                 "per token, beside the matmuls and the weights read once per ubatch")
    type_pp_row = {"f16": pp_row_s}
    for t, w in wide.items():
        if t != "f16" and t in mids and w.pp_tps and mids[t].pp_tps:
            bw = gbps[t]
            row = _type_row(mids[t], w, lambda p, bw=bw: 1 / p.pp_tps - p.n_layer * pp_layer_s - _stream_s(p, bw),
                            prompt=True)
            if row is not None:
                type_pp_row[t] = row
    if len(type_row) > 1 or len(type_pp_row) > 1:
        notes.append("per weight row, decode / prompt: " + ", ".join(
            f"{t} {type_row.get(t, row_s) * 1e9:.2f} / {type_pp_row.get(t, pp_row_s) * 1e9:.2f} ns" for t in wide))
    pp_rates = {}
    for type_name, p in wide.items():
        if p.pp_tps:
            matmul_s = (1 / p.pp_tps - p.n_layer * pp_layer_s - _stream_s(p, gbps[type_name])
                        - p.pp_rows_per_token * type_pp_row.get(type_name, pp_row_s))
            pp_rates[type_name] = p.elems_per_token / (matmul_s if matmul_s > 0 else 1 / p.pp_tps)
    pp_kv_s = _fit_kv(points, device, notes)
    default = sorted(gbps.values())[len(gbps) // 2] if gbps else 0.0
    return DeviceSpeed(gbps, default, token_s, layer_s, pp_rates, pp_layer_s, row_s=row_s, pp_row_s=pp_row_s,
                       pp_kv_s=pp_kv_s, type_row_s=type_row, type_pp_row_s=type_pp_row), notes


def _type_row(mid: Point, wide: Point, rest: Any, prompt: bool) -> float | None:
    """One type's cost per row from its mid and wide runs: two equations rows * row + size / rate = the
    seconds `rest(point)` leaves after the shared fixed costs (size: bytes read, or in a prompt elements
    multiplied), solved for (row, 1 / rate); None where the noise makes either negative (the type then
    takes the f16 figure)."""
    import numpy as np

    def eq(p: Point) -> list[float]:
        return [p.pp_rows_per_token, p.elems_per_token] if prompt else [p.rows_per_token, p.bytes_per_token]

    a = np.array([eq(mid), eq(wide)], dtype=float)
    if abs(np.linalg.det(a)) < 1e-12 * abs(a).max() ** 2:
        return None
    row, inv = np.linalg.solve(a, np.array([rest(mid), rest(wide)]))
    return float(row) if row >= 0 and inv > 0 else None


def _fit_kv(points: Sequence[Point], device: str, notes: list[str]) -> dict[str, float]:
    """KV type -> extra seconds per attention element of a prompt token, from the mid model's runs with
    that cache against its f16 run (the same weights: the difference is the attention)."""
    mid = {p.kv_type: p for p in points if p.device == device and p.model == "mid" and p.type == "f16" and p.pp_tps}
    base = mid.get("f16")
    out: dict[str, float] = {}
    for kv, p in mid.items():
        if base is None or kv == "f16" or not p.attn_elems_per_token:
            continue
        out[kv] = max((1 / p.pp_tps - 1 / base.pp_tps) / p.attn_elems_per_token, 0.0)  # type: ignore[operator]
        notes.append(f"prompt with a {kv} KV cache: {out[kv] * 1e12:.2f} ps more per attention element "
                     f"({base.pp_tps / p.pp_tps:.2f}x the f16 cache's time on the mid model)")  # type: ignore[operator]
    return out


def gpu_available() -> bool:
    """A local GPU llama.cpp can offload to (not llama_supports_gpu_offload: true on any RPC build)."""
    from .llama_backend import local_gpus

    return bool(local_gpus())


def calibrate(types: Sequence[str] = DEFAULT_TYPES, quick: bool = False, threads: int | None = None,
              gpu: bool | None = None, progress: Progress | None = None,
              work_dir: str | os.PathLike[str] | None = None, wide: SynthShape = WIDE,
              narrow: SynthShape = NARROW, mid: SynthShape = MID) -> Calibration:
    """Measure every type on the host (and the GPU when the build has one: `gpu` None), fit, return.
    Temporary models are written under `work_dir` (default: the system temp dir) and deleted. `wide`,
    `mid` and `narrow` are the three model shapes (their n_layer is set by the effort and NARROW_DEPTHS)."""
    from . import ggml_types
    from .synth import write_synth

    names = []
    for t in types:
        gt = ggml_types.weight_type(t)
        if gt.name not in names:
            names.append(gt.name)
    if "f16" not in names:
        names.insert(0, "f16")  # the fixed-cost fit needs it
    effort = QUICK if quick else FULL
    from .llama_backend import default_threads

    threads = threads or default_threads()  # what `ggprec run` uses unless told otherwise
    if threads < 1:
        raise GgprecError(f"threads must be at least 1 (got {threads})")
    devices = [HOST] + ([GPU] if (gpu_available() if gpu is None else gpu) else [])
    total = (2 + (len(NARROW_DEPTHS) + 1 + len(KV_TYPES)) * 2 * len(devices) + len(NARROW_DEPTHS)
             + len(names) * (1 + 2 * len(devices)) + len(devices))
    step = 0

    def say(stage: str) -> None:  # progress(stage, steps done, steps in all)
        nonlocal step
        if progress is not None:
            progress(stage, step, total)
        step += 1

    t0 = time.perf_counter()
    load_before = load_average()
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="ggprec-calibrate-", dir=work_dir) as d:
        tmp = Path(d)
        narrow_files = []
        for depth in NARROW_DEPTHS:
            say(f"writing a narrow model ({depth} layers)")
            narrow_files.append(write_synth(tmp / f"narrow-{depth}.gguf", _shape(narrow, depth), "f16"))
        say(f"writing a mid model ({effort.mid_layers} layers of n_embd {mid.n_embd})")
        mid_file = write_synth(tmp / "mid.gguf", _shape(mid, effort.mid_layers), "f16")
        say(f"writing a wide model ({effort.wide_layers} layers of n_embd {wide.n_embd})")
        wide_src = write_synth(tmp / "wide.gguf", _shape(wide, effort.wide_layers), "f16")

        def fixed_cost_runs(round_: str) -> None:
            for dev in devices:
                for path in narrow_files:
                    say(f"{dev}: narrow f16, {path.stem}{round_}")
                    points.append(_measure(path, dev, "narrow", effort, threads))
                for kv in ("f16", *KV_TYPES):
                    say(f"{dev}: mid f16, {kv} KV cache{round_}")
                    points.append(_measure(mid_file, dev, "mid", effort, threads, kv))

        fixed_cost_runs("")
        for type_name in names:
            say(f"quantizing to {type_name}")
            path = _variant(wide_src, type_name, tmp, threads)
            mid_path = _variant(mid_file, type_name, tmp, threads)  # its rows: a repacked one costs less
            for dev in devices:
                say(f"{dev}: wide {type_name}")
                points.append(_measure(path, dev, "wide", effort, threads))
                if mid_path != mid_file:
                    say(f"{dev}: mid {type_name}")
                    points.append(_measure(mid_path, dev, "mid", effort, threads))
            for made in {path, mid_path} - {wide_src, mid_file}:
                made.unlink()
        # The f16 runs the fit rests on, again minutes later: each keeps the faster of its two rounds, so a
        # busy stretch of the machine does not tilt the fixed costs against the bandwidths.
        fixed_cost_runs(" (second round)")
        for dev in devices:
            say(f"{dev}: wide f16 (second round)")
            points.append(_measure(wide_src, dev, "wide", effort, threads))
        points = faster_rounds(points)
    speeds, notes = {}, []
    for dev in devices:
        speeds[dev], dev_notes = fit(points, dev)
        notes += [f"{dev}: {n}" for n in dev_notes]
    if GPU in speeds:
        notes.append("GPU: measured with -ngl 99 but never checked against a real GPU run in this project")
    load_after = load_average()
    notes.append(f"load average (1, 5, 15 min): {load_before} at the start, {load_after} at the end")
    busiest = max((float(x.split()[0]) for x in (load_before, load_after) if x != "?"), default=0.0)
    if busiest >= (os.cpu_count() or 1):
        notes.append(f"WARNING: a load average of {busiest:g} on {os.cpu_count()} CPUs: other processes slowed "
                     "these runs; calibrate again on a quiet machine")
    cal = Calibration(speeds, points, threads, asdict(effort), time.perf_counter() - t0, notes)
    cal.label_sources()
    return cal


def load_average() -> str:
    """The machine's load average (1, 5, 15 minutes) as /proc/loadavg gives it, "?" where there is none:
    printed beside every speed figure, since other processes slow a run down."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _shape(base: SynthShape, n_layer: int) -> SynthShape:
    return replace(base, n_layer=n_layer)


# --- the history ------------------------------------------------------------------------------------


MACHINE_KEYS = ("cpu", "cores", "ram_bytes", "gpus", "gpu_offload", "llama_cpp_python", "system_info")


def machine_key(hardware: dict[str, Any]) -> str:
    """What a calibration is valid for: the machine (CPU, cores, RAM, GPUs) and the llama.cpp build."""
    doc = {k: hardware.get(k) for k in MACHINE_KEYS}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def find_calibration(store: Any = None, hardware: dict[str, Any] | None = None,
                     n_threads: int | None = None) -> Calibration | None:
    """The newest calibration of this machine and llama.cpp build (or of `hardware`), None if there is none;
    with n_threads, the newest one measured at that thread count when there is one (a calibration is per
    thread count: 1 and 2 threads differ by up to 2x on 2 cores), else the newest of any."""
    from .store import Store, default_db_path

    if store is None and not default_db_path().is_file():
        return None  # no history yet: do not create one just to look
    if hardware is None:
        from .hardware import fingerprint

        hardware = fingerprint()
    key = machine_key(hardware)
    own = store is None
    st = Store() if own else store
    try:
        mine = [rec for rec in st.query(kind="calibration") if machine_key(rec.hardware) == key]
        same = [rec for rec in mine if n_threads is None or rec.results.get("n_threads") == n_threads]
        for rec in same or mine:  # newest first
            return Calibration.from_dict(rec.results, rec.id, rec.created)
    finally:
        if own:
            st.close()
    return None


def speed_model_for(host_gbps: float | None = None, gpu_gbps: float | None = None, store: Any = None,
                    n_threads: int | None = None) -> Any:
    """`speed.load_speed_model` with this machine's newest calibration in `store` (None: the default history;
    at n_threads when one was measured at that count) for every device whose bandwidth is not given."""
    from .speed import load_speed_model

    calibration = (None if host_gbps is not None and gpu_gbps is not None
                   else find_calibration(store, n_threads=n_threads))
    return load_speed_model(host_gbps=host_gbps, gpu_gbps=gpu_gbps, calibration=calibration)


def summary_rows(cal: Calibration) -> list[dict[str, Any]]:
    """One row per (device, type) measured on the wide model: what was measured and what was derived."""
    rows = []
    for p in cal.points:
        if p.model != "wide":
            continue
        spd = cal.speeds[p.device]
        rows.append({"device": p.device, "type": p.type, "mib_per_token": p.bytes_per_token / 2**20,
                     "tg_tps": p.tg_tps, "tg_spread": p.tg_spread, "gbps": spd.gbps.get(p.type),
                     "pp_tps": p.pp_tps, "pp_gelems_per_s": (spd.pp_elems_per_s.get(p.type) or 0) / 1e9 or None})
    return rows


def render(cal: Calibration, console: Any) -> None:
    """The calibration as a table: measured tok/s per type and the figures derived from them."""
    from rich.table import Table

    table = Table(title=f"calibration ({cal.n_threads} threads, {cal.seconds:.0f} s)")
    for col in ("device", "type", "MiB/token", "tg tok/s", "tg spread", "GB/s", "pp tok/s", "pp Gelem/s"):
        table.add_column(col, justify="left" if col in ("device", "type") else "right")

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in summary_rows(cal):
        table.add_row(r["device"], r["type"], num(r["mib_per_token"], ".1f"), num(r["tg_tps"], ".1f"),
                      num(r["tg_spread"], ".1f"), num(r["gbps"], ".2f"), num(r["pp_tps"], ".1f"),
                      num(r["pp_gelems_per_s"], ".2f"))
    console.print(table)
    for note in cal.fit_notes:
        console.print(note)
    if cal.id is not None:
        console.print(f"history row {cal.id}")
