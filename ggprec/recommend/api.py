"""`recommend()`: the front of plans that fit a GPU and RAM budget, and the row the goal picks; the chosen
plan as a Profile, verified with llama.cpp on request; the file-size variant used by scripts/frontier.py."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..devices import GPU
from ..errors import GgprecError
from ..ggml_types import lookup
from ..gguf_info import ModelInfo
from ..settings import RuntimeSettings
from ..units import GIB, MIB, size_text
from .frontier import GOALS, FrontRow, as_is_row, choose, pareto, shown_rows, trade_text
from .groups import make_groups
from .knapsack import options_for, solve
from .loss import UNCHANGED, LossModel, ProxyEstimate, prior_loss_model, proxy_tensor_loss, sensitivity_loss_model
from .search import (
    BUDGET_HOST,
    Budgets,
    Predictor,
    SecondsPerByte,
    Walk,
    check_walk,
    default_predict,
    is_gpu,
    placements,
    split_placements,
    totals,
    type_levels,
    walk_placement,
)
from .split import describe_split, split_devices, split_text

METHOD = ("every placement (KV type x n_gpu_layers, x n_cpu_moe for MoE) swept from its smallest to its least-loss "
          "mix: a multiple-choice knapsack per device (groups x candidate types, bytes = cost, expected KLD = loss) "
          "whose upgrades are taken in order of loss saved per second of decode time; the Pareto front of all "
          "plans; memory checked with memory.predict")


METHOD_SPLIT = ("every placement (KV type x the most offloaded split, -ngl and -ts, that fits every device at each of "
                "6 weight levels) swept from its smallest to its least-loss mix: a multiple-choice knapsack per device "
                "under that device's budget, upgrades taken in order of loss saved per second of decode time (each "
                "device's bytes at its rate, each RPC hop charged); the Pareto front of all plans; every device "
                "checked with memory.predict over the split")

JSON_SCHEMA = 1  # `recommend --json` (docs/json.md)


class NoFitError(GgprecError):
    """Nothing fits the budget; the message says the smallest budget that would."""


@dataclass
class Recommendation:
    model: str
    goal: str
    vram: int
    ram: int
    margin: int
    settings: RuntimeSettings
    tensor_types: dict[str, str]  # every quantizable tensor -> chosen type
    group_types: list[dict[str, Any]]  # key, role, layers, type, bytes, expected_kld, source, device
    buffers: dict[str, int]  # memory.predict of the chosen plan
    gpu_total: int
    host_total: int
    weights_bytes: int
    expected_kld: float
    kv_kld: float
    kv_source: str
    tg_tps: float
    speed_source: str
    loss_source: str
    rule: str  # why the chosen row was chosen
    reasons: list[str]
    searched: int  # plans on all walks
    front: list[FrontRow] = field(default_factory=list)  # fastest first
    chosen: int = 0  # index into front
    shown: list[int] = field(default_factory=list)  # rows the table prints
    method: str = METHOD
    imatrix: str | None = None  # the importance matrix the plan is quantized with (`--imatrix`)
    quantized_source: bool = False  # some weight of the source is already quantized
    # A split over several devices (RPC servers, the local GPU, this host): each device with its budget and
    # where that came from, what memory.predict gives it under the chosen plan (device_plan.DevicePlan).
    devices: list[dict[str, Any]] = field(default_factory=list)
    device_plan: Any = None

    @property
    def row(self) -> FrontRow:
        return self.front[self.chosen]

    @property
    def as_is(self) -> bool:
        """The chosen plan keeps every weight as the source has it: nothing to quantize."""
        return self.row.as_is

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": JSON_SCHEMA, "model": self.model, "goal": self.goal,
            "budget": {"vram_bytes": self.vram, "ram_bytes": self.ram, "margin_bytes": self.margin},
            "settings": self.settings.to_dict(),
            "groups": self.group_types, "tensor_types": self.tensor_types,
            "predicted": {"buffers": self.buffers, "gpu_total": self.gpu_total, "host_total": self.host_total,
                          "weights_bytes": self.weights_bytes},
            "expected": {"kld_mean": self.expected_kld, "kv_kld": self.kv_kld, "kv_source": self.kv_source,
                         "tg_tok_s": self.tg_tps, "speed_source": self.speed_source},
            "front": [dict(r.to_dict(), chosen=i == self.chosen, shown=i in self.shown)
                      for i, r in enumerate(self.front)],
            "rule": self.rule, "loss_source": self.loss_source, "method": self.method, "reasons": self.reasons,
            "plans_searched": self.searched, "imatrix": self.imatrix, "quantized_source": self.quantized_source,
            "as_is": self.as_is,
        } | ({"devices": self.devices} if self.devices else {})  # a split only (docs/json.md)


def system_ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def _finite(name: str, value: float | None, low: float, strict: bool) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise GgprecError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, not {value!r}")


def validate(vram_gb: float, ram_gb: float | None, ctx: int, margin_mb: float, n_bands: int,
             min_tps: float | None, max_kld: float | None, gpu_gbps: float | None, host_gbps: float | None) -> None:
    """One-line errors for inputs no plan can be made from (NaN and inf included)."""
    _finite("--vram", vram_gb, 0, strict=False)
    _finite("--ram", ram_gb, 0, strict=True)
    _finite("--margin", margin_mb, 0, strict=False)
    _finite("--min-tps", min_tps, 0, strict=True)
    _finite("--max-kld", max_kld, 0, strict=False)
    _finite("--gpu-bandwidth", gpu_gbps, 0, strict=True)
    _finite("--host-bandwidth", host_gbps, 0, strict=True)
    if ctx <= 0:
        raise GgprecError(f"--ctx must be positive, not {ctx}")
    if n_bands < 1:
        raise GgprecError(f"--bands must be at least 1, not {n_bands}")
    if min_tps is not None and max_kld is not None:
        raise GgprecError("give --min-tps or --max-kld, not both")


def recommend(info: ModelInfo, vram_gb: float, ram_gb: float | None = None, ctx: int = 4096,
              goal: str = "balanced", margin_mb: float = 512, n_bands: int = 4,
              sensitivity: dict[str, Any] | None = None, gpu_gbps: float | None = None,
              host_gbps: float | None = None, predictor: Predictor | None = None, min_tps: float | None = None,
              max_kld: float | None = None, speed_model: Any = None, kv_measured: dict[str, Any] | None = None,
              imatrix: str | os.PathLike[str] | None = None, estimator: Any = None,
              devices: Sequence[Any] = (), proxy: ProxyEstimate | None = None) -> Recommendation:
    """The front of plans that fit vram_gb (GiB) of GPU memory and ram_gb (GiB; default this machine's RAM)
    with margin_mb (MiB) to spare on each, and the row the goal (or min_tps / max_kld) picks. Raises
    NoFitError when nothing fits. kv_measured: kv_loss.measure_kv_loss of the model (wins over the KV prior).
    imatrix: an importance-matrix file the plan will be quantized with (its types join the candidates).
    estimator: a loss.TensorLoss pricing the unmeasured tensors instead of the priors. proxy: the error proxy
    fitted to this model (ggprec.proxy.recommend_proxy, measured by the caller): it prices the unmeasured
    tensors (the priors where it has no figure), and its change floor is paid once by every changed plan.
    devices: recommend_devices.DeviceBudgets of RPC servers (probed or declared): the model is split over
    them, then the local GPU (vram_gb, when > 0), then this host, as llama.cpp orders them; each has its
    own budget, and the split (-ngl, -ts) is chosen with the types and the KV cache."""
    if goal not in GOALS:
        raise GgprecError(f"goal must be one of {', '.join(GOALS)}, not '{goal}'")
    validate(vram_gb, ram_gb, ctx, margin_mb, n_bands, min_tps, max_kld, gpu_gbps, host_gbps)
    vram = int(vram_gb * GIB)
    ram = int((ram_gb if ram_gb is not None else system_ram_gib()) * GIB)
    margin = int(margin_mb * MIB)
    offload = split_devices(devices, vram)
    budgets: Budgets = {BUDGET_HOST: ram} | ({GPU: vram} if vram else {}) | {d.device.buffer: d.budget
                                                                             for d in devices}
    predict = predictor or (functools.partial(default_predict, devices=offload) if offload else default_predict)
    if speed_model is None:
        from ..speed import load_speed_model

        speed_model = load_speed_model(host_gbps=host_gbps, gpu_gbps=gpu_gbps)
    speed = speed_model.with_devices({d.device.buffer: d.gbps for d in devices if d.gbps}) if devices else speed_model
    spb = SecondsPerByte(speed)
    base_groups = make_groups(info, n_bands)
    if not base_groups:
        raise GgprecError(f"{info.path}: no quantizable weights found")
    losses = (sensitivity_loss_model(info, base_groups, sensitivity, kv_measured) if sensitivity
              else prior_loss_model(info, base_groups, kv_measured))
    losses.imatrix = imatrix is not None
    if proxy is not None:
        losses.with_estimator(proxy_tensor_loss(proxy, losses.priors), proxy.change_floor)
    elif estimator is not None:
        losses.with_estimator(estimator)
    quantized_source = any(x.type.quantized for g in base_groups for x in g.tensors)

    walks: list[Walk] = []
    smallest: list[tuple[int, int]] = []  # (gpu, host) bytes of the smallest plan of each placement
    if offload:
        base = RuntimeSettings(rpc_servers=tuple(dict.fromkeys(d.endpoint for d in devices)))
        candidates = split_placements(info, ctx, offload, budgets, margin, type_levels(base_groups, losses), base)
    else:
        candidates = placements(info, ctx, vram)
    for settings in candidates:
        w = walk_placement(info, settings, base_groups, losses, budgets, margin, predict, spb, smallest, offload)
        if w is not None:
            walks.append(w)
    if not walks:
        raise NoFitError(_no_fit_message(smallest, vram, ram, margin, offload))
    front, searched = _front(info, walks, speed, budgets, margin, predict, spb, losses.change_floor)
    if not front:
        raise NoFitError(_no_fit_message(smallest, vram, ram, margin, offload))
    speed_max = sum(losses.type_loss(g, lookup("q4_k") if g.accepts(lookup("q4_k")) else lookup("q4_0"))
                    for g in base_groups)
    chosen, rule = choose(front, goal, min_tps, max_kld, speed_max, quantized_source)
    shown = shown_rows(front, chosen)
    kept = as_is_row(front)
    if kept is not None and kept not in shown:  # the model as it is is always printed
        shown = sorted([*shown, kept])
    _add_pp(info, walks, front, shown, speed)
    rec = _recommendation(info, walks, front, chosen, shown, rule, goal, vram, ram, margin, losses, speed,
                          predict, searched)
    if offload:
        describe_split(rec, info, devices, offload, budgets, speed, walks[front[chosen].walk])
        rec.method = METHOD_SPLIT
        rec.reasons = _reasons(info, rec, walks, losses)
    rec.imatrix = None if imatrix is None else str(imatrix)
    rec.quantized_source = quantized_source
    if quantized_source:
        rec.reasons.insert(1, _as_is_reason(rec))
    return rec


def _as_is_reason(rec: Recommendation) -> str:
    """Where the model as it is stands: kept, on the front beside the chosen plan, or not fitting."""
    kept = as_is_row(rec.front)
    what = "the model as it is (its own tensor types, nothing requantized; KLD 0: measured: unchanged)"
    if kept is None:
        return f"{what} does not fit this budget with a 16-bit KV cache: every plan here changes it"
    r = rec.front[kept]
    if kept == rec.chosen:
        return f"{what} is the chosen plan: {r.tg_tps:.1f} tok/s expected, {r.ram_bytes / GIB:.2f} GiB RAM"
    c = rec.row
    return (f"{what} fits too, at {r.tg_tps:.1f} tok/s expected: the chosen plan is expected "
            f"{c.tg_tps / r.tg_tps:.2f}x as fast for expected KLD {c.expected_kld:.4f} ({c.loss_source})")


def _front(info: ModelInfo, walks: list[Walk], speed: Any, budgets: Budgets, margin: int, predict: Predictor,
           spb: SecondsPerByte, change_floor: float = 0.0) -> tuple[list[FrontRow], int]:
    """The Pareto front of every walk's plans, fastest first, after checking with memory.predict each walk
    that has a plan on it (a walk changed by its check can change the front: repeat until none does). A plan
    that changes any weight pays change_floor once."""
    checked: set[int] = set()
    while True:
        points = [(secs, loss + (change_floor if _changes(w, n) else 0.0), wi, n) for wi, w in enumerate(walks)
                  if w.points for n, (loss, secs, _, _) in enumerate(w.points)]
        best = pareto(points)
        todo = {wi for _, _, wi, _ in best} - checked
        if not todo:
            break
        for wi in todo:
            checked.add(wi)
            if not check_walk(walks[wi], info, budgets, margin, predict, spb):
                walks[wi].points.clear()
                walks[wi].steps.clear()
    rows = sorted((_row(info, walks, wi, n, speed, change_floor) for _, _, wi, n in best),
                  key=lambda r: (-r.tg_tps, r.expected_kld))
    front: list[FrontRow] = []
    for r in rows:  # the speed model's own figures: drop a row a faster one now beats (rounding of the reads)
        if not front or r.expected_kld < front[-1].expected_kld:
            front.append(r)
    return front, len(points)


def _add_pp(info: ModelInfo, walks: list[Walk], front: list[FrontRow], shown: list[int], speed: Any) -> None:
    """Expected prompt speed of the printed rows, where the speed model has pp figures (a calibration)."""
    from ..speed import matmul_elements

    for i in shown:
        w = walks[front[i].walk]
        front[i].pp_tps = speed.pp_tps(matmul_elements(info, w.settings, w.types(w.choice(front[i].steps))), w.layers)


def _changes(w: Walk, n: int) -> bool:
    """Whether plan n of walk w changes any weight of the source."""
    return not all(opts[k].kept for opts, k in zip(w.options, w.choice(n), strict=True))


def _row(info: ModelInfo, walks: list[Walk], wi: int, n: int, speed: Any, change_floor: float = 0.0) -> FrontRow:
    """Plan n of walk wi as a row, with the speed model's figure for its reads."""
    w = walks[wi]
    choice = w.choice(n)
    chosen = [opts[k] for opts, k in zip(w.options, choice, strict=True)]
    as_is = all(o.kept for o in chosen)
    loss = sum(o.loss for o in chosen) + w.kv_loss + (0.0 if as_is else change_floor)
    sources = sorted({o.source for o in chosen if not o.kept})
    loss_source = "; ".join(sources) if sources else UNCHANGED
    n_params = w.n_params
    weight_bytes = sum(opts[k].bytes for opts, k in zip(w.options, choice, strict=True))
    gpu, ram = w.memory(n)
    return FrontRow(bits_per_weight=8 * weight_bytes / max(n_params, 1), kv_type=w.settings.cache_type_k,
                    n_gpu_layers=w.settings.n_gpu_layers, n_cpu_moe=w.settings.n_cpu_moe,
                    gpu_bytes=gpu, ram_bytes=ram, expected_kld=loss,
                    tg_tps=speed.tg_tps(w.reads(choice, info), w.layers, hops=w.hops), walk=wi, steps=n, as_is=as_is,
                    loss_source=loss_source, tensor_split=tuple(w.settings.tensor_split or ()))


def _no_fit_message(smallest: list[tuple[int, int]], vram: int, ram: int, margin: int,
                    offload: Sequence[Any] = ()) -> str:
    if offload and not smallest:
        return (f"no split over {', '.join(d.name for d in offload)} and {size_text(ram)} RAM fits even the "
                f"smallest mix with a {margin / MIB:.0f} MiB margin on each device")
    if offload:
        need = min(smallest, key=lambda s: (max(s[1] + margin - ram, 0), s[0]))
        return (f"nothing fits the devices ({', '.join(d.name for d in offload)}) and {size_text(ram)} RAM with a "
                f"{margin / MIB:.0f} MiB margin; the smallest plan needs {size_text(need[0] + margin)} on the "
                f"devices together and {size_text(need[1] + margin)} RAM")
    need = min(smallest, key=lambda s: (max(s[1] + margin - ram, 0), s[0]))
    return (f"nothing fits {size_text(vram)} VRAM + {size_text(ram)} RAM with a {margin / MIB:.0f} MiB "
            f"margin; the smallest plan needs {size_text(need[0] + margin)} VRAM and "
            f"{size_text(need[1] + margin)} RAM")


def _recommendation(info: ModelInfo, walks: list[Walk], front: list[FrontRow], chosen: int, shown: list[int],
                    rule: str, goal: str, vram: int, ram: int, margin: int, losses: LossModel, speed: Any,
                    predict: Predictor, searched: int) -> Recommendation:
    row = front[chosen]
    w = walks[row.walk]
    choice = w.choice(row.steps)
    types = w.types(choice)
    pred = predict(info, w.settings, types)
    gpu, host = totals(pred)
    row.gpu_bytes, row.ram_bytes = gpu, host
    groups = []
    for g, dev, opts, k in zip(w.groups, w.devices, w.options, choice, strict=True):
        o = opts[k]
        where = (dev if is_gpu(dev) else "host") if w.devices_of_split else "gpu" if is_gpu(dev) else "host"
        groups.append({"key": g.key, "role": g.role, "layers": list(g.layers), "type": o.label,
                       "bytes": o.bytes, "expected_kld": o.loss, "source": o.source, "kept": o.kept,
                       "device": where, "tensors": [t.name for t in g.tensors]})
    kv = w.settings.cache_type_k
    rec = Recommendation(
        model=str(info.path), goal=goal, vram=vram, ram=ram, margin=margin, settings=w.settings,
        tensor_types={n: t.name for n, t in types.items()}, group_types=groups, buffers=dict(pred.buffers),
        gpu_total=gpu, host_total=host, weights_bytes=sum(gr["bytes"] for gr in groups),
        expected_kld=row.expected_kld, kv_kld=losses.kv.get(kv, 0.0), kv_source=losses.kv_source.get(kv, ""),
        tg_tps=row.tg_tps, speed_source=speed.describe(), loss_source=_loss_source(row, losses),
        rule=rule, reasons=[],
        searched=searched, front=front, chosen=chosen, shown=shown)
    rec.reasons = _reasons(info, rec, walks, losses)
    return rec


def _loss_source(row: FrontRow, losses: LossModel) -> str:
    """Where the chosen weights' expected KLD comes from: unchanged (the model as it is), the stored sensitivity
    run, or the row's own sources (the estimator's, with the requantize penalty where it applies)."""
    if row.as_is:
        return UNCHANGED
    return losses.source if losses.density else row.loss_source


def _reasons(info: ModelInfo, rec: Recommendation, walks: list[Walk], losses: LossModel) -> list[str]:
    n_layer = info.hparams.n_layer
    s = rec.settings
    out = [rec.rule]
    n_cpu_moe = s.n_cpu_moe
    if rec.devices:
        where = split_text(rec)
    elif rec.vram == 0:
        where = "CPU only (no VRAM given)"
    elif s.n_gpu_layers > n_layer and n_cpu_moe:
        where = f"all layers on the GPU except the routed experts of the first {n_cpu_moe} layers (--n-cpu-moe)"
    elif s.n_gpu_layers > n_layer:
        where = "all layers and the output head on the GPU"
    else:
        where = f"{s.n_gpu_layers} of {n_layer} layers on the GPU, the rest on the host"
    out.append(f"{where}; expected KLD {rec.expected_kld:.4f} ({rec.loss_source}); expected tg "
               f"{rec.tg_tps:.1f} tok/s ({rec.speed_source})")
    out.extend(trade_text(rec.front, rec.shown, rec.chosen))
    if losses.change_floor and not rec.as_is:  # in the total, in no group's figure
        out.append(f"change floor +{losses.change_floor:.4f}: what any change to this file costs once, whatever "
                   f"changes ({losses.source_of_estimates()}); in the expected KLD, not in the groups' figures")
    out.append(_kv_reason(rec, losses))
    worst = sorted(((g["expected_kld"], g["key"], g["type"]) for g in rec.group_types), reverse=True)
    if worst and worst[0][0] > 0:
        out.append("largest expected losses: " + "; ".join(f"{key} at {t} (+{loss:.4f})" for loss, key, t in worst[:3]))
    return out


def _kv_reason(rec: Recommendation, losses: LossModel) -> str:
    kv = rec.settings.cache_type_k
    if kv == "f16":
        return "KV cache f16: a quantized cache would add expected KLD that the memory it frees does not buy back"
    f16 = [r for r in rec.front if r.kv_type == "f16"]
    if f16:
        near = min(f16, key=lambda r: abs(r.tg_tps - rec.tg_tps))
        alt = f"the f16-cache plan nearest in speed: KLD {near.expected_kld:.4f} at {near.tg_tps:.1f} tok/s"
    else:
        alt = "no f16-cache plan is on the front"
    # On a GPU a quantized cache decodes slower (measured on an H100): there it buys memory only.
    frees = ("the GPU memory it frees (where it decodes slower)" if rec.settings.n_gpu_layers
             else "the memory and reads it frees")
    return f"KV cache {kv}: expected +{rec.kv_kld:.4f} KLD ({rec.kv_source}), worth {frees}; {alt}"


def to_profile(rec: Recommendation, name: str = "recommended") -> Any:
    """The recommendation as a Profile (one rule per group: role + layer band; a group whose tensors keep
    different types of the source: one exact-name rule per type), for plan/quantize/run."""
    import re

    from ..profile import Profile, Rule

    counts: dict[str, int] = {}
    for t in rec.tensor_types.values():
        counts[t] = counts.get(t, 0) + 1
    default = max(counts, key=lambda t: (counts[t], t))
    rules = []
    seen: set[tuple[str, str, str | None]] = set()
    for row in rec.group_types:
        by_type: dict[str, list[str]] = {}
        for n in row.get("tensors") or []:
            by_type.setdefault(rec.tensor_types[n], []).append(n)
        if len(by_type) > 1:
            rules.extend(Rule(type=t, match="|".join(map(re.escape, names)))
                         for t, names in sorted(by_type.items()) if t != default)
            continue
        gtype = next(iter(by_type)) if by_type else row["type"]
        if gtype == default:
            continue
        role = "token_embd" if row["role"] == "tied_head" else row["role"]
        layers = row["layers"]
        spec = f"{layers[0]}-{layers[-1]}" if layers else None
        if (gtype, role, spec) not in seen:
            seen.add((gtype, role, spec))
            rules.append(Rule(type=gtype, roles=(role,), layers=spec))
    desc = (f"ggprec recommend --goal {rec.goal} for {rec.vram / GIB:g} GiB VRAM, {rec.ram / GIB:g} GiB RAM, "
            f"ctx {rec.settings.n_ctx}: expected KLD {rec.expected_kld:.4f}, {rec.tg_tps:.1f} tok/s")
    imatrix = str(Path(rec.imatrix).resolve()) if rec.imatrix else None  # the written profile quantizes with it
    return Profile(name=name, description=desc, rules=tuple(rules), default=default, runtime=rec.settings,
                   imatrix=imatrix)


def read_imatrix_file(path: str | os.PathLike[str]) -> Any:
    """imatrix_file.read_imatrix(path): one-line errors for a missing or unreadable file."""
    from ..imatrix_file import read_imatrix

    return read_imatrix(path)


def check_imatrix_file(path: str | os.PathLike[str], info: ModelInfo) -> None:
    """One line where the imatrix cannot be read or does not match the model (imatrix_file.check_imatrix)."""
    from ..imatrix_file import check_imatrix

    check_imatrix(read_imatrix_file(path), info)


@dataclass
class SizedPlan:
    """A mix chosen for a file-size budget (the frontier): group types, expected KLD, the profile."""

    profile: Any
    group_types: dict[str, str]
    expected_kld: float
    predicted_file_size: int


def recommend_for_size(info: ModelInfo, max_file_bytes: int, sensitivity: dict[str, Any] | None = None,
                       n_bands: int = 4, name: str = "recommended", exclude: Sequence[str] = ()) -> SizedPlan:
    """The mix with the least expected KLD whose written file is at most max_file_bytes (plan's exact
    size prediction): the same knapsack, with the file as the only budget. exclude: types not to choose
    (e.g. the type a reference was dequantized from, which re-quantizes it almost exactly)."""
    from ..plan import resolve_plan
    from ..profile import Profile, Rule

    groups = make_groups(info, n_bands)
    losses = sensitivity_loss_model(info, groups, sensitivity) if sensitivity else prior_loss_model(info, groups)
    options = [options_for(g, losses, exclude) for g in groups]
    fixed = info.file_size - sum(t.n_bytes for g in groups for t in g.tensors)  # header + tensors kept as they are
    shrink = 0
    for _ in range(4):
        sol = solve(options, max_file_bytes - fixed - shrink)
        if sol is None:
            smallest = fixed + sum(o[0].bytes for o in options)
            raise NoFitError(f"no mix of {info.path.name} fits {max_file_bytes / MIB:.1f} MiB; the smallest is "
                             f"{smallest / MIB:.1f} MiB")
        rules = []
        chosen = {}
        for g, opts, k in zip(groups, options, sol.choice, strict=True):
            o = opts[k]
            chosen[g.key] = o.label
            if o.tensor_types:  # tensors of the group keep different types: one exact rule each
                rules.extend(Rule.exact(x.name, o.type_of(i).name) for i, x in enumerate(g.tensors))
                continue
            role = "token_embd" if g.role == "tied_head" else g.role
            rules.append(Rule(type=o.type.name, roles=(role,),
                              layers=f"{g.layers[0]}-{g.layers[-1]}" if g.layers else None))
        profile = Profile(name=name, description=f"least expected KLD within {max_file_bytes / MIB:.1f} MiB "
                          f"({losses.source})", rules=tuple(rules), default=info.tensors[0].type.name
                          if info.tensors[0].type.weight else "f16")
        size = resolve_plan(info, profile).predicted_file_size
        if size <= max_file_bytes:
            return SizedPlan(profile, chosen, sol.loss, size)
        shrink += size - max_file_bytes
    raise NoFitError(f"no mix of {info.path.name} fits {max_file_bytes / MIB:.1f} MiB")

