"""Typed result records: one dataclass per kind of result ggprec measures and keeps.

A record is what one history row holds as its results (ggprec.store) and what one printed row shows
(ggprec.printers). Each field carries its own print metadata (`col(...)`: header, format, unit, scale,
help), so the table, CSV and Markdown printers and the history summary are derived from the record
class instead of being written per command. A field without a header is data only: kept in the JSON
and the history, not printed as a column.

Reading is checked: `record_from_dict(kind, doc)` upgrades the shapes older ggprec versions stored
(`upgrade`), checks every field's type against its annotation and raises `RecordError` (one line) for
an unknown kind, a missing field or a value of the wrong type, so a damaged history row is skipped with
a one-line warning instead of crashing a printer later.

Kinds: `run` (RunRecord), `compare` (CompareRecord), `eval` (EvalRecord), `sensitivity`
(SensitivityRecord, one whole sensitivity measurement; its groups print as SensitivityPass rows),
`recommend` (RecommendRecord), `calibration` (CalibrationRecord), `proxy-fit` (ProxyFitRecord).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import GgprecError
from .units import MIB


class RecordError(GgprecError):
    """A stored or given result does not fit its record type (one line)."""


@dataclass(frozen=True)
class Column:
    """How one field prints: `key` (the field, also the CSV/JSON name), `header`, `fmt` (a format spec;
    "" means str()), `unit` (what the printed number is in), `scale` (the value is divided by it before
    formatting, e.g. bytes shown as MiB; CSV and JSON keep the raw value), `help`, and `se`, the key of
    the field holding this one's standard error (printed beside it in a one-record table)."""

    key: str
    header: str
    fmt: str = ""
    unit: str = ""
    scale: float = 1.0
    help: str = ""
    se: str | None = None

    @property
    def numeric(self) -> bool:
        return bool(self.fmt)

    def value(self, record: Any) -> Any:
        return record.get(self.key) if isinstance(record, dict) else getattr(record, self.key, None)

    def format(self, value: Any) -> str:
        """The printed form: "-" for a missing or NaN value."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if self.fmt:
            try:
                return format(value / self.scale if self.scale != 1 else value, self.fmt)
            except (TypeError, ValueError):
                return str(value)  # a value of another type than the column's: shown as it is, not a crash
        return str(value)

    def render(self, record: Any) -> str:
        return self.format(self.value(record))


def col(header: str = "", fmt: str = "", unit: str = "", help: str = "", *, scale: float = 1.0,
        se: str | None = None, default: Any = None, factory: Any = None) -> Any:
    """A dataclass field with print metadata (see Column); fields default to None unless told."""
    meta = {"column": (header, fmt, unit, scale, help, se)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- the base class -----------------------------------------------------------------------------------


@dataclass
class ResultRecord:
    """Base of every record kind: typed fields, `to_dict`, a checked `from_dict`, the printed columns
    and the history summary."""

    KIND: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, doc: Any) -> Any:
        """The record from a stored dict: older shapes upgraded, unknown keys ignored (a newer ggprec may
        have added fields), every value type-checked; RecordError otherwise."""
        if not isinstance(doc, dict):
            raise RecordError(f"{cls.KIND} results are a JSON {type(doc).__name__}, not an object")
        doc = upgrade(cls.KIND, doc)
        hints = _hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in doc:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise RecordError(f"{cls.KIND} results lack '{f.name}'")
                continue
            value = doc[f.name]
            if not _accepts(hints[f.name], value):
                raise RecordError(f"{cls.KIND} results: '{f.name}' is a {type(value).__name__}, "
                                  f"expected {hints[f.name]}")
            values[f.name] = value
        return cls(**values)

    @classmethod
    def columns(cls) -> tuple[Column, ...]:
        """The printed columns, in field order (fields with a header)."""
        out = []
        for f in dataclasses.fields(cls):
            meta = f.metadata.get("column")
            if meta and meta[0]:
                header, fmt, unit, scale, help_, se = meta
                out.append(Column(f.name, header, fmt, unit, scale, help_, se))
        return tuple(out)

    def summary(self) -> dict[str, Any]:
        """This record's cells in the history table (keys of HISTORY_COLUMNS; missing ones print "-")."""
        return {}


def _hints(cls: type) -> dict[str, str]:
    # Annotations are strings here (from __future__ import annotations); the checker reads them as text.
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,),
                                       "dict": (dict,), "list": (list,), "Any": (object,)}


def _accepts(annotation: str, value: Any) -> bool:
    """Whether a JSON value fits a field annotation such as 'float | None' or 'dict[str, int]'."""
    for part in annotation.split("|"):
        name = part.strip().split("[", 1)[0]
        if name == "None":
            if value is None:
                return True
            continue
        allowed = _TYPES.get(name)
        if allowed is None:
            return True  # an annotation the checker does not know: accept rather than lose the row
        if isinstance(value, bool) and bool not in allowed and object not in allowed:
            continue  # JSON true is not a number
        if isinstance(value, allowed):
            return True
    return False


# --- the kinds ----------------------------------------------------------------------------------------


@dataclass
class RunRecord(ResultRecord):
    """`ggprec run`: speed like llama-bench and what llama.cpp allocated. `pp_tps`/`tg_tps` are the
    medians (tok/s), the same shape as a compare row's; the spread is in `pp_stats`/`tg_stats`."""

    KIND: ClassVar[str] = "run"

    ran: str = col(help="the file that ran: the profile's variant, else the model", default="")
    pp: int = col("pp", "d", "tokens", "prompt tokens per test (0: not measured)", default=0)
    tg: int = col("tg", "d", "tokens", "generated tokens per test (0: not measured)", default=0)
    reps: int = col("reps", "d", "", "repetitions of each test", default=1)
    depth: int = col(help="tokens in the KV cache before the timed decodes (llama-bench -d; 0: a short prefix)",
                     default=0)
    pp_tps: float | None = col("pp tok/s", ".1f", "tok/s", "prompt processing speed, median")
    tg_tps: float | None = col("tg tok/s", ".1f", "tok/s", "generation speed, median")
    pp_stats: dict[str, Any] | None = col(help="median, min, max, stdev, samples of pp tok/s")
    tg_stats: dict[str, Any] | None = col(help="median, min, max, stdev, samples of tg tok/s")
    expected_tg_tps: float | None = col("tg expected", ".1f", "tok/s", "ggprec.speed's expected generation speed")
    expected_pp_tps: float | None = col(help="ggprec.speed's expected prompt speed (None: not modelled)")
    expected_tg_source: str | None = col(help="where the expected speeds come from")
    load_s: float | None = col("load s", ".2f", "s", "seconds to load the model and create the context")
    memory_bytes: int | None = col("alloc MiB", ",.1f", "MiB", "every buffer llama.cpp allocated", scale=MIB)
    allocation: dict[str, Any] = col(help="ggprec.alloc.Allocation.to_dict()", factory=dict)
    predicted: dict[str, int] | None = col(help="ggprec.memory's prediction, keyed like allocation.buffers")
    peak_rss_bytes: int | None = col("peak RSS MiB", ",.1f", "MiB", "peak resident memory", scale=MIB)
    gpu_memory_bytes: int | None = col("GPU MiB", ",.1f", "MiB", "GPU memory held (nvidia-smi)", scale=MIB)
    n_layer: int | None = col(help="layers as llama.cpp loaded the model")
    notices: list[str] = col(help="adjustments made, e.g. -ngl clamped", factory=list)
    prompt: str | None = col(help="--prompt")
    generated: str | None = col(help="greedy continuation of prompt (untimed)")

    @classmethod
    def from_run(cls, run: Any) -> RunRecord:
        """From a ggprec.runner.ProfileRun."""
        r = run.result

        def stats(s: Any) -> dict[str, Any] | None:
            return None if s is None else dataclasses.asdict(s)

        return cls(ran=run.ran, pp=r.pp, tg=r.tg, reps=r.reps, depth=r.depth,
                   pp_tps=None if r.pp_tps is None else r.pp_tps.median,
                   tg_tps=None if r.tg_tps is None else r.tg_tps.median,
                   pp_stats=stats(r.pp_tps), tg_stats=stats(r.tg_tps), expected_tg_tps=r.expected_tg_tps,
                   expected_pp_tps=r.expected_pp_tps, expected_tg_source=r.expected_tg_source, load_s=r.load_s,
                   memory_bytes=r.allocation.total, allocation=r.allocation.to_dict(), predicted=r.predicted,
                   peak_rss_bytes=r.peak_rss_bytes, gpu_memory_bytes=r.gpu_memory_bytes, n_layer=r.n_layer,
                   notices=list(r.notices), prompt=r.prompt, generated=r.generated)

    def summary(self) -> dict[str, Any]:
        return {"pp_tps": self.pp_tps, "tg_tps": self.tg_tps, "memory_bytes": self.memory_bytes,
                "detail": f"pp {self.pp}, tg {self.tg}{f' @ d{self.depth}' if self.depth else ''}, x{self.reps}"}


@dataclass
class CompareRecord(ResultRecord):
    """One profile of `ggprec compare` / `ggprec demo`: file size, memory, speed and accuracy, with ratios
    against the baseline profile (candidate / baseline)."""

    KIND: ClassVar[str] = "compare"

    profile: str = col("profile", help="profile name", default="")
    path: str = col(help="the variant file", default="")
    file_bytes: int | None = col(help="size of the GGUF file, bytes")
    file_mb: float | None = col("file MiB", ".1f", "MiB", "size of the GGUF file")
    memory_bytes: int | None = col(help="memory llama.cpp allocated, bytes")
    memory_mb: float | None = col("mem MiB", ".1f", "MiB", "memory llama.cpp allocated (model + KV + compute)")
    memory_predicted_mb: float | None = col("pred MiB", ".1f", "MiB", "memory ggprec.memory predicted for that load")
    memory_saved_pct: float | None = col("mem saved %", "+.1f", "%", "memory saved vs the baseline")
    pp_tps: float | None = col("pp tok/s", ".1f", "tok/s", "prompt processing speed, median")
    pp_spread: float | None = col(help="max - min of pp tok/s over the repetitions")
    pp_ratio: float | None = col("pp x", ".2f", "", "pp tok/s / baseline pp tok/s")
    tg_tps: float | None = col("tg tok/s", ".1f", "tok/s", "generation speed, median")
    tg_spread: float | None = col(help="max - min of tg tok/s over the repetitions")
    tg_ratio: float | None = col("tg x", ".2f", "", "tg tok/s / baseline tg tok/s")
    tg_vs_expected: float | None = col("tg / exp", ".2f", "", "tg tok/s / expected tg tok/s (ggprec.speed)")
    expected_tg_tps: float | None = col(help="expected generation speed (ggprec.speed), tok/s")
    expected_tg_source: str | None = col(help="where the expected speed comes from (calibration, flags, assumption)")
    kld_mean: float | None = col("KLD mean", ".4f", "nats", "mean KL divergence from the reference")
    kld_p99: float | None = col("KLD p99", ".4f", "nats", "99th percentile of the per-token KL divergence")
    kld_vs_baseline: float | None = col("KLD x base", ".2f", "", "KLD mean / baseline KLD mean")
    top1_pct: float | None = col("top-1 %", ".1f", "%", "tokens whose most likely next token is the reference's")
    top1_vs_baseline: float | None = col("top-1 vs base", "+.1f", "pp", "top-1 minus the baseline's")
    ppl: float | None = col("PPL", ".2f", "", "perplexity of the candidate on the evaluation text")
    ppl_ref: float | None = col(help="perplexity of the reference")
    ppl_ratio: float | None = col(help="ppl / ppl_ref")
    kld_mean_se: float | None = col(help="standard error of kld_mean")
    top1_se_pct: float | None = col(help="standard error of top1_pct")
    ppl_se: float | None = col(help="standard error of ppl")
    eval_tokens: int | None = col(help="scored tokens")
    load_s: float | None = col(help="seconds to load")
    buffers: dict[str, int] = col(help="every buffer llama.cpp allocated, bytes", factory=dict)
    predicted_buffers: dict[str, int] = col(help="every buffer ggprec.memory predicted for that load, bytes",
                                            factory=dict)
    predicted_devices: dict[str, int] = col(help="predicted bytes per device (RPC servers, GPUs; `host`: host RAM)",
                                            factory=dict)
    peak_rss_bytes: int | None = col(help="peak resident memory")
    gpu_memory_bytes: int | None = col(help="GPU memory held (nvidia-smi)")
    reference_cached: bool | None = col(help="the reference's log-probs came from the cache")
    accuracy_cached: bool | None = col(help="the accuracy figures came from the cache")
    runtime: dict[str, Any] = col(help="runtime settings of the speed run", factory=dict)
    baseline: bool = col(help="this row is the baseline", default=False)

    def summary(self) -> dict[str, Any]:
        return {"pp_tps": self.pp_tps, "tg_tps": self.tg_tps, "memory_bytes": self.memory_bytes,
                "kld_mean": self.kld_mean, "top1_pct": self.top1_pct,
                "detail": "baseline" if self.baseline else ""}


@dataclass
class EvalRecord(ResultRecord):
    """`ggprec eval`: accuracy of a candidate against a reference (llama-perplexity's method)."""

    KIND: ClassVar[str] = "eval"

    kld_mean: float = col("KLD mean", ".6f", "nats", "mean KL(reference || candidate)", se="kld_mean_se",
                          default=math.nan)
    kld_median: float | None = col("KLD median", ".6f", "nats")
    kld_p99: float | None = col("KLD p99", ".6f", "nats")
    kld_max: float | None = col("KLD max", ".6f", "nats")
    kld_mean_se: float | None = col(help="standard error of kld_mean")
    top1: float | None = col("top-1 agreement", ".2%", "", "same most probable token as the reference",
                             se="top1_se")
    top1_se: float | None = col(help="binomial standard error of top1")
    ppl: float | None = col("PPL", ".4f", "", "perplexity of the candidate", se="ppl_se")
    ppl_se: float | None = col()
    ppl_ref: float | None = col("PPL reference", ".4f", "", "perplexity of the reference", se="ppl_ref_se")
    ppl_ref_se: float | None = col()
    ppl_ratio: float | None = col("PPL ratio", ".5f", "", "ppl / ppl_ref", se="ppl_ratio_se")
    ppl_ratio_se: float | None = col()
    n_tokens: int | None = col(help="scored positions")
    n_chunks: int | None = col(help="windows evaluated")
    candidate: str = col(default="")
    reference: str = col(default="")
    n_ctx: int | None = col(help="window size in tokens")
    text_sha256: str = col(default="")
    reference_cached: bool = col(default=False)

    @classmethod
    def from_result(cls, result: Any) -> EvalRecord:
        """From a ggprec.evaluate.EvalResult."""
        doc = result.to_dict()
        return cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc})

    def summary(self) -> dict[str, Any]:
        return {"kld_mean": self.kld_mean, "top1_pct": None if self.top1 is None else 100.0 * self.top1,
                "detail": f"vs {_name(self.reference)}, {self.n_tokens} tokens"}


@dataclass
class SensitivityPass(ResultRecord):
    """One group of a sensitivity measurement: the group alone quantized to the probe type. Printed by
    `ggprec sensitivity`; stored inside its SensitivityRecord (`groups`), not as a row of its own."""

    KIND: ClassVar[str] = "sensitivity-pass"

    rank: int | None = col("rank", "d", "", "1 = the most damaging group")
    key: str = col("group", help="role, role x layer band or layer band", default="")
    probe_written: str = col("written", help="the type the file holds (a fallback when blocks do not divide)",
                             default="")
    bytes_saved: int | None = col("MiB saved", ",.1f", "MiB", "source bytes - probe bytes", scale=MIB)
    kld: float | None = col("KLD +", ".5f", "nats", "mean KLD increase over the baseline")
    kld_se: float | None = col("± se", ".5f", "nats", "standard error of the KLD increase")
    top1_loss: float | None = col("top-1 loss", "+.2%", "", "baseline top-1 agreement - this group's")
    kld_per_mib: float | None = col("KLD/MiB", ".2e", "nats/MiB", "KLD increase per MiB saved")
    kld_at: dict[str, float] = col(help="KLD increase at every probed type", factory=dict)

    @classmethod
    def from_group(cls, group: Any, rank: int | None = None) -> SensitivityPass:
        """From a ggprec.sensitivity.GroupResult."""
        return cls(rank=rank, key=group.key, probe_written=group.probe_written, bytes_saved=group.bytes_saved,
                   kld=group.kld, kld_se=group.kld_se, top1_loss=group.top1_loss, kld_per_mib=group.kld_per_mib,
                   kld_at=dict(group.kld_at))


@dataclass
class SensitivityRecord(ResultRecord):
    """`ggprec sensitivity`: one whole measurement (every group at every probe type), as
    ggprec.sensitivity.SensitivityResult.to_dict() writes it; recommend reads `groups` back."""

    KIND: ClassVar[str] = "sensitivity"

    model: str = col(default="")
    reference: str = col(default="")
    probe_type: str = col("probe", default="")
    grouping: str = col("grouping", default="")
    n_ctx: int | None = col("ctx", "d")
    chunks: int | None = col("chunks", "d")
    baseline_kld: float | None = col("baseline KLD", ".5f", "nats", "KLD of the unquantized copy")
    baseline_top1: float | None = col()
    groups: list[dict[str, Any]] = col(help="GroupResult.to_dict() per group", factory=list)
    ranking: list[str] = col(help="group keys, most damaging first", factory=list)
    seconds: float | None = col("seconds", ".0f", "s")
    record_id: int | None = col()
    heatmap: str | None = col()
    notes: list[str] = col(factory=list)
    also: list[str] = col(help="further probe types", factory=list)
    also_grouping: str | None = col()
    also_groups: list[dict[str, Any]] = col(factory=list)

    def summary(self) -> dict[str, Any]:
        worst = f", worst {self.ranking[0]}" if self.ranking else ""
        also = f" (+ {', '.join(self.also)})" if self.also else ""
        return {"detail": f"{self.probe_type}{also} x {len(self.groups)} groups ({self.grouping}){worst}"}


@dataclass
class RecommendRecord(ResultRecord):
    """`ggprec recommend`: the chosen plan for a budget and what it is expected to give, with the measured
    KLD when it was verified. Budget and memory in bytes."""

    KIND: ClassVar[str] = "recommend"

    goal: str = col("goal", default="")
    vram_bytes: int | None = col("VRAM GiB", ".1f", "GiB", "GPU budget", scale=2**30)
    ram_bytes: int | None = col("RAM GiB", ".1f", "GiB", "host budget", scale=2**30)
    n_ctx: int | None = col("ctx", "d", "tokens")
    n_gpu_layers: int | None = col("ngl", "d")
    cache_type_k: str | None = col("KV K")
    cache_type_v: str | None = col("KV V")
    weights_bytes: int | None = col("weights MiB", ",.1f", "MiB", "bytes of the chosen weight types", scale=MIB)
    gpu_bytes: int | None = col("GPU MiB", ",.1f", "MiB", "predicted GPU memory", scale=MIB)
    host_bytes: int | None = col("host MiB", ",.1f", "MiB", "predicted host memory", scale=MIB)
    expected_kld: float | None = col("KLD expected", ".4f", "nats", "predicted mean KLD")
    measured_kld: float | None = col("KLD measured", ".4f", "nats", "measured by --verify")
    expected_tg_tps: float | None = col("tg tok/s expected", ".1f", "tok/s", "predicted generation speed")
    loss_source: str | None = col(help="priors or the sensitivity row used")
    tensor_types: dict[str, str] = col(help="tensor name -> chosen type", factory=dict)
    profile: str | None = col(help="the profile YAML written, if any")

    def summary(self) -> dict[str, Any]:
        kld = self.measured_kld if self.measured_kld is not None else self.expected_kld
        gib = "-" if self.vram_bytes is None else f"{self.vram_bytes / 2**30:g}"
        return {"tg_tps": self.expected_tg_tps, "kld_mean": kld,
                "memory_bytes": None if self.gpu_bytes is None or self.host_bytes is None
                else self.gpu_bytes + self.host_bytes,
                "detail": f"goal {self.goal}, {gib} GiB VRAM, ngl {self.n_gpu_layers}, KV {self.cache_type_k}"
                          f"/{self.cache_type_v}" + (" (expected)" if self.measured_kld is None else "")}


@dataclass
class CalibrationRecord(ResultRecord):
    """`ggprec calibrate` (ggprec.calibrate.Calibration as stored): per device, effective memory bandwidth per
    weight type (bytes read per generated token x tg tok/s) and fixed costs, fitted on llama.cpp runs of
    synthetic models (`points`, one per benchmark run); recommend and run/compare read their expected speeds
    from the newest one of this machine."""

    KIND: ClassVar[str] = "calibration"

    speeds: dict[str, Any] = col(help="device -> DeviceSpeed figures (GB/s per type, overhead, pp rates)",
                                 factory=dict)
    points: list[Any] = col(help="the benchmark runs the figures were fitted on", factory=list)
    n_threads: int | None = col("threads", "d")
    effort: dict[str, Any] = col(help="repetitions and sizes used", factory=dict)
    seconds: float | None = col("seconds", ".1f", "s", "wall time of the calibration")
    fit_notes: list[str] = col(help="what the fit found", factory=list)

    def summary(self) -> dict[str, Any]:
        parts = []
        for dev, sp in sorted(self.speeds.items()):
            gbps = sp.get("gbps", {}) if isinstance(sp, dict) else {}
            if gbps:
                lo, hi = min(gbps.values()), max(gbps.values())
                parts.append(f"{dev}: {len(gbps)} types, {lo:.1f}-{hi:.1f} GB/s")
        return {"detail": "; ".join(parts) or "-"}


@dataclass
class ProxyFitRecord(ResultRecord):
    """ggprec.proxy.ProxyFit as stored: the proxy error mapped to expected KLD for one model (sha256) and one
    column weighting, fitted on `n_passes` real evaluations (`passes`: the types each set, the measured KLD
    and the fitted one); `ggprec sensitivity --proxy` and recommend read the newest one of the model."""

    KIND: ClassVar[str] = "proxy-fit"

    scale: dict[str, float] = col(help="role -> expected KLD per unit of proxy error", factory=dict)
    default_scale: float = col("scale", ".4g", "KLD/error", "the constant of roles without a pass of their own",
                               default=math.nan)
    n_passes: int = col("passes", "d", "", "evaluation passes fitted on", default=0)
    weighting: str = col("weighting", help="uniform, or imatrix (the proxy's column weights)", default="uniform")
    imatrix: str | None = col(help="the importance matrix file the errors were weighted by")
    imatrix_sha256: str | None = col(help="its sha256")
    probe_type: str = col("probe", help="the type the passes quantized to", default="")
    residual: float | None = col("rms log error", ".3f", "", "rms of log(measured / fitted) over the passes")
    passes: list[dict[str, Any]] = col(help="label, tensor types, measured and fitted KLD per pass", factory=list)
    prior_source: str | None = col()
    source: str = col(default="")
    max_rows: int | None = col(help="rows measured per tensor (None: all)")
    floor: dict[str, float] = col(help="role -> KLD of quantizing the activations of all its matmuls", factory=dict)
    change_floor: float = col("change floor", ".4f", "KLD", "the KLD of changing any tensor at all, paid once",
                              default=0.0)

    def summary(self) -> dict[str, Any]:
        return {"detail": f"{self.source}, {self.weighting} weights, scale {self.default_scale:.3g}"}


def _name(path: str | None) -> str:
    return (path or "-").rsplit("/", 1)[-1]


# --- kinds and old shapes ------------------------------------------------------------------------------

# The kinds a history row can be, and the record each holds (sensitivity-pass is never a row).
RECORD_TYPES: dict[str, type[ResultRecord]] = {
    cls.KIND: cls for cls in (RunRecord, CompareRecord, EvalRecord, SensitivityRecord, RecommendRecord,
                              CalibrationRecord, ProxyFitRecord)
}
KINDS: tuple[str, ...] = tuple(RECORD_TYPES)


def record_type(kind: str) -> type[ResultRecord]:
    try:
        return RECORD_TYPES[kind]
    except (KeyError, TypeError):
        raise RecordError(f"unknown history kind {kind!r:.40} (one of: {', '.join(KINDS)})") from None


def record_from_dict(kind: str, doc: Any) -> ResultRecord:
    """The typed record of `kind` from a stored results object; RecordError (one line) when it does
    not fit."""
    return typing.cast(ResultRecord, record_type(kind).from_dict(doc))


def upgrade(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A results object as older ggprec versions stored it, in today's shape (a new dict; unchanged
    when already current). Used by the store's migration and on every read, so rows an older ggprec
    writes into an upgraded history read the same way.

    - run rows before typed records: `pp_tps`/`tg_tps` were Stats objects (median, min, max, stdev,
      samples); now they are the medians, as in compare rows, with the objects in `pp_stats`/`tg_stats`,
      and `memory_bytes` is the allocation's total.
    """
    if kind != "run":
        return doc
    out = dict(doc)
    for key in ("pp", "tg"):
        value = out.get(f"{key}_tps")
        if isinstance(value, dict):
            out[f"{key}_stats"] = value
            out[f"{key}_tps"] = value.get("median")
    alloc = out.get("allocation")
    if "memory_bytes" not in out and isinstance(alloc, dict) and isinstance(alloc.get("total"), int):
        out["memory_bytes"] = alloc["total"]
    return out
