"""The search: every placement that fits, each swept from its smallest mix to its least-loss mix.

A placement is a KV-cache type x n_gpu_layers (and, for a mixture of experts, x n_cpu_moe): it fixes the
device of every tensor (tensor_overrides.placement, as llama.cpp loads it) and the non-weight buffers (KV cache,
compute, output: memory.predict). Within a placement every group lives on one device (bands are split where
the devices change), so the weights are a multiple-choice knapsack per device under that device's budget.

Several devices (RPC servers, a local GPU, this host): the placement adds the split, -ngl and -ts, which
llama.cpp turns into the device of every layer (layer_split). Which splits are worth a walk depends on the
types, so each KV type is split by recommend_devices.fit_split for a few uniform weight levels (the
smallest mix and one per candidate type): the most offloaded split that fits every device at that size.
Every device then has its own budget (the knapsack's `used` and `budget` are keyed by device; this host's
memory is BUDGET_HOST), and every plan on the front is checked against each of them by memory.predict over
those devices.

The sweep is the Lagrangian one with the price of a byte set by the speed model: from every group's
smallest option, upgrades are taken in order of expected KLD saved per second of decode time added (on one
device that is the order of loss saved per byte, so the last plan of the walk is the least-loss knapsack
solution of each device), skipping those that no longer fit. Every plan along the walk is a point (expected
KLD, expected seconds per token); the front is the Pareto set of all points of all placements
(frontier.pareto), and the rule of the goal picks one row (frontier.choose).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..device_plan import HOST
from ..devices import GPU_CLASS as GPU
from ..devices import device_class
from ..ggml_types import GgmlType
from ..gguf_info import ModelInfo
from ..settings import RuntimeSettings
from ..speed import KV_PREFIX, rpc_hops
from ..tensor_overrides import Placer, placement
from .groups import Group, reads_per_token, split_by_device
from .knapsack import Option, cached_options
from .loss import KV_TYPES, LossModel


def is_gpu(device: str) -> bool:
    """GPU memory; CPU, AMX and mapped buffers and pinned host memory (CUDA_Host) count as RAM."""
    return device_class(device) == GPU


BUDGET_HOST = "host"  # the budget key of this host's RAM; every other device is its own key (its buffer name)
Budgets = dict[str, int]  # budget key -> bytes (before the margin)


def budget_key(device: str) -> str:
    """The budget a buffer of this device counts against: BUDGET_HOST for host memory, else the device."""
    return device if is_gpu(device) else BUDGET_HOST


Predictor = Callable[[ModelInfo, RuntimeSettings, dict[str, GgmlType]], Any]


def default_predict(info: ModelInfo, settings: RuntimeSettings, types: dict[str, GgmlType],
                    devices: Sequence[Any] | None = None) -> Any:
    """memory.predict; with `devices` (a split's OffloadDevices) each layer on its device."""
    from ..memory import predict

    return predict(info, settings, tensor_types=types, devices=devices or None)


class SecondsPerByte:
    """The speed model, linearised per (device, type): seconds one more byte read per token adds. The
    walk orders upgrades by it; rows of the front get the speed model's own figure (api._row)."""

    PROBE = 2**30

    def __init__(self, speed: Any) -> None:
        self.speed = speed
        self.cache: dict[tuple[str, str], float] = {}

    def __call__(self, device: str, type_name: str) -> float:
        key = (device, type_name)
        if key not in self.cache:
            one = 1.0 / self.speed.tg_tps({device: {type_name: self.PROBE}})
            two = 1.0 / self.speed.tg_tps({device: {type_name: 2 * self.PROBE}})
            self.cache[key] = max(two - one, 0.0) / self.PROBE or one / self.PROBE
        return self.cache[key]


@dataclass
class Walk:
    """One placement's plans: its groups (each on one device), their options, and the upgrades taken in
    order; plan n is the smallest options with the first n upgrades applied."""

    settings: RuntimeSettings
    groups: list[Group]
    devices: list[str]  # where each group's bytes are held
    read_devices: list[str]  # where each group is read per token (a tied head: its copy in the output layer)
    options: list[list[Option]]
    steps: list[tuple[int, int]]  # (group, option index) in the order taken
    # After 0..len(steps) upgrades: (expected KLD incl. the KV cache, seconds per token, GPU bytes, RAM bytes).
    points: list[tuple[float, float, int, int]]
    kv_reads: dict[str, int]  # device -> KV-cache bytes read per token
    kv_loss: float
    layers: dict[str, int] = field(default_factory=dict)  # device -> blocks with tensors there (fixed costs)
    fixed_secs: float = 0.0  # the speed model's fixed seconds per token of this placement
    # Budget key -> bytes besides the chosen weights, at the smallest mix (KV, compute, fixed tensors).
    overhead: dict[str, int] = field(default_factory=dict)
    fixed_host: int = 0  # host bytes of the tensors recommend does not choose a type for (those left mapped)
    # memory.predict of the last plan less the estimate (overhead + weights) per budget key, once checked.
    correction: dict[str, int] | None = None
    used: list[dict[str, int]] = field(default_factory=list)  # weight bytes per budget key of each point
    hops: int = 0  # RPC hops per token (speed.rpc_hops)
    devices_of_split: tuple[Any, ...] = ()  # the split's OffloadDevices (none: one machine)

    @property
    def n_params(self) -> int:
        return sum(g.n_params for g in self.groups)

    def device_memory(self, n: int) -> dict[str, int]:
        """Bytes per budget key of plan n: the overhead plus its weights, corrected by the check of the last."""
        fix = self.correction or {}
        keys = set(self.overhead) | set(self.used[n]) | set(fix)
        return {k: self.overhead.get(k, 0) + self.used[n].get(k, 0) + fix.get(k, 0) for k in keys}

    def memory(self, n: int) -> tuple[int, int]:
        """(GPU, RAM) bytes of plan n: every device's memory summed, and this host's."""
        by_key = self.device_memory(n)
        return sum(v for k, v in by_key.items() if k != BUDGET_HOST), by_key.get(BUDGET_HOST, 0)

    def resident_host(self, choice: list[int]) -> int:
        """Host weights of `choice`, each counted once whether it stays in the mapping or is repacked into an
        extra CPU buffer (the walk's linear part of RAM; totals gives the plan's whole resident RAM)."""
        return self.fixed_host + sum(opts[k].bytes for opts, k, d in zip(self.options, choice, self.devices,
                                                                          strict=True) if not is_gpu(d))

    def choice(self, n: int) -> list[int]:
        choice = [0] * len(self.groups)
        for gi, k in self.steps[:n]:
            choice[gi] = k
        return choice

    def types(self, choice: list[int]) -> dict[str, GgmlType]:
        return {t.name: opts[k].type_of(i) for g, opts, k in zip(self.groups, self.options, choice, strict=True)
                for i, t in enumerate(g.tensors)}

    def reads(self, choice: list[int], info: ModelInfo) -> dict[str, dict[str, int]]:
        """Bytes read per generated token, by device and type, for the speed model."""
        out: dict[str, dict[str, int]] = {}
        for g, dev, opts, k in zip(self.groups, self.read_devices, self.options, choice, strict=True):
            for type_name, n_bytes in opts[k].by_type:
                n = int(n_bytes * reads_per_token(g, info))
                if n:
                    by_type = out.setdefault(dev, {})
                    by_type[type_name] = by_type.get(type_name, 0) + n
        kv = KV_PREFIX + self.settings.cache_type_k
        for dev, n in self.kv_reads.items():
            by_type = out.setdefault(dev, {})
            by_type[kv] = by_type.get(kv, 0) + n
        return out


def totals(pred: Any) -> tuple[int, int]:
    """(GPU bytes, RAM bytes) a plan needs. llama.cpp maps one file range spanning every host tensor, which
    includes offloaded and repacked tensors lying in between; those pages are read once (to upload or repack
    them) and are then clean page cache the kernel drops, so RAM counts what must stay resident
    (memory.MemoryPrediction.resident_host)."""
    gpu = sum(v for k, v in pred.buffers.items() if is_gpu(_device_of(k)))
    return gpu, pred.resident_host


def key_totals(pred: Any) -> dict[str, int]:
    """Bytes per budget key a plan needs: each device's buffers, this host's resident RAM (see totals)."""
    out = {BUDGET_HOST: pred.resident_host}
    for k, v in pred.buffers.items():
        if is_gpu(_device_of(k)):
            out[_device_of(k)] = out.get(_device_of(k), 0) + v
    return out


def over_budget(need: Mapping[str, int], budgets: Mapping[str, int], margin: int) -> int:
    """The largest excess of any budget key (<= 0: every one fits). A key without a budget (no VRAM
    given) has none to exceed unless it holds bytes."""
    worst = -(2**62)
    for key, n in need.items():
        budget = budgets.get(key, 0)
        if budget or n:
            worst = max(worst, n - (budget - margin))
    return worst


def _device_of(key: str) -> str:
    return key.split(":", 1)[1] if ":" in key else "CPU"


def placements(info: ModelInfo, ctx: int, vram: int) -> list[RuntimeSettings]:
    """KV type x n_gpu_layers (all of them down to 0; only 0 without VRAM), and for a mixture of experts
    with every layer offloaded, x n_cpu_moe (the routed experts of the first N layers kept in RAM). One
    GPU; a split over several devices: split_placements."""
    n_layer = info.hparams.n_layer
    ngls = list(range(n_layer + 1, -1, -1)) if vram > 0 else [0]
    moe = info.hparams.n_expert > 0
    out = []
    for kv in KV_TYPES:
        for ngl in ngls:
            out.append(RuntimeSettings(n_gpu_layers=ngl, n_ctx=ctx, cache_type_k=kv, cache_type_v=kv))
        if moe and vram > 0:
            for n in range(1, n_layer + 1):
                out.append(RuntimeSettings(n_gpu_layers=n_layer + 1, n_ctx=ctx, cache_type_k=kv, cache_type_v=kv,
                                           n_cpu_moe=n))
    return out


def walk_placement(info: ModelInfo, settings: RuntimeSettings, base_groups: list[Group], losses: LossModel,
                   budgets: Budgets, margin: int, predict: Predictor, spb: SecondsPerByte,
                   smallest: list[tuple[int, int]], devices: Sequence[Any] = ()) -> Walk | None:
    """The plans of one placement within the budgets (not yet checked by memory.predict beyond the smallest:
    see check_walk), or None when even its smallest mix does not fit. devices: the split's OffloadDevices
    (none: one machine, the single-GPU rule of n_gpu_layers)."""
    layer_device = split_layers(info, settings, devices)
    placer = Placer.for_model(info.hparams.n_layer, settings, layer_device)
    device = {t.name: placer.device(t.name, t.layer) for t in info.tensors} if devices else placement(info, settings)
    parts = [p for g in base_groups for p in split_by_device(g, device)]
    groups = [g for g, _ in parts]
    held = [d for _, d in parts]
    head = placer.device("token_embd.weight", None, output_copy=True)
    read_devices = [head if g.role == "tied_head" else d for g, d in parts]
    options = [cached_options(g, losses) for g in groups]
    grouped = {t.name for g in groups for t in g.tensors}
    from ..cpu_buffers import host_buffers

    rules = host_buffers()
    fixed_host = sum(t.n_bytes for t in info.tensors if t.name not in grouped and not is_gpu(device[t.name])
                     and rules.buffer_for(t.type, t.shape) is None)
    walk = Walk(settings, groups, held, read_devices, options, [], [], {},
                losses.kv.get(settings.cache_type_k, 0.0), fixed_host=fixed_host,
                hops=rpc_hops(layer_device) if devices else 0, devices_of_split=tuple(devices))
    low = [0] * len(groups)
    pred = predict(info, settings, walk.types(low))
    need = key_totals(pred)
    smallest.append(totals(pred))
    low_used: dict[str, int] = {}
    for o, d in zip(options, held, strict=True):
        low_used[budget_key(d)] = low_used.get(budget_key(d), 0) + o[0].bytes
    walk.overhead = {k: need.get(k, 0) - low_used.get(k, 0) for k in set(need) | set(low_used)}
    for k, v in pred.buffers.items():
        if k.startswith("kv:"):
            walk.kv_reads[_device_of(k)] = walk.kv_reads.get(_device_of(k), 0) + v
    by_layer: dict[int, set[str]] = {}
    for t in info.tensors:
        if t.layer is not None:
            by_layer.setdefault(t.layer, set()).add(device[t.name])
    for devs in by_layer.values():
        for d in devs:
            walk.layers[d] = walk.layers.get(d, 0) + 1
    reading = {d for g, d in zip(groups, read_devices, strict=True) if reads_per_token(g, info) > 0}
    reading |= set(walk.kv_reads)
    walk.fixed_secs = 1.0 / spb.speed.tg_tps({d: {} for d in reading}, walk.layers, hops=walk.hops)
    return walk if _sweep(walk, info, _budget(walk, budgets, margin, {}), spb) else None


def _budget(walk: Walk, budgets: Budgets, margin: int, shrink: Mapping[str, int]) -> dict[str, float]:
    """What each budget key has left for the chosen weights."""
    keys = set(budgets) | set(walk.overhead)
    return {k: budgets.get(k, 0) - margin - walk.overhead.get(k, 0) - shrink.get(k, 0) for k in keys}


def check_walk(walk: Walk, info: ModelInfo, budgets: Budgets, margin: int, predict: Predictor,
               spb: SecondsPerByte) -> bool:
    """Check the walk's last plan with memory.predict (the compute buffer and the CPU's repacked copies
    depend on the types) against every device's budget; where one is over, sweep again with that budget
    tightened by the excess. False when no plan of the walk fits."""
    shrink: dict[str, int] = {}
    for _ in range(3):
        choice = walk.choice(len(walk.steps))
        need = key_totals(predict(info, walk.settings, walk.types(choice)))
        used = walk.used[-1]
        walk.correction = {k: need.get(k, 0) - walk.overhead.get(k, 0) - used.get(k, 0)
                           for k in set(need) | set(walk.overhead) | set(used)}
        if over_budget(need, budgets, margin) <= 0:
            return True
        for k, n in need.items():
            excess = n - (budgets.get(k, 0) - margin)
            if excess > 0 and (budgets.get(k, 0) or n):
                shrink[k] = shrink.get(k, 0) + excess
        walk.steps.clear()
        walk.points.clear()
        walk.used.clear()
        walk.correction = None
        if not _sweep(walk, info, _budget(walk, budgets, margin, shrink), spb):
            return False
    return False


def _sweep(walk: Walk, info: ModelInfo, budget: dict[str, float], spb: SecondsPerByte) -> bool:
    """Fill walk.steps, walk.points and walk.used; False when the smallest mix exceeds a budget."""
    groups, devices, options = walk.groups, walk.devices, walk.options
    keys = [budget_key(d) for d in devices]
    # Decode seconds per token of every option of every group (bytes read x the device's seconds per byte).
    sec = [[sum(n * spb(dev, type_name) for type_name, n in o.by_type) * reads_per_token(g, info) for o in opts]
           for g, dev, opts in zip(groups, walk.read_devices, options, strict=True)]

    used: dict[str, int] = {}
    for i, o in enumerate(options):
        used[keys[i]] = used.get(keys[i], 0) + o[0].bytes
    if any(n and n > budget.get(k, 0) for k, n in used.items()):  # a device without weights: check_walk
        return False

    def point() -> tuple[float, float, int, int]:
        walk.used.append(dict(used))
        return (max(loss, 0.0), secs, sum(n for k, n in used.items() if k != BUDGET_HOST), used.get(BUDGET_HOST, 0))

    loss = sum(o[0].loss for o in options) + walk.kv_loss
    secs = walk.fixed_secs + sum(s[0] for s in sec)
    secs += sum(n * spb(dev, KV_PREFIX + walk.settings.cache_type_k) for dev, n in walk.kv_reads.items())
    walk.points.append(point())
    heap: list[tuple[float, int, int]] = []

    def push(i: int, k: int) -> None:
        if k < len(options[i]):
            d_loss = options[i][k - 1].loss - options[i][k].loss
            d_secs = sec[i][k] - sec[i][k - 1]
            eff = math.inf if d_secs <= 0 else d_loss / d_secs
            heapq.heappush(heap, (-eff, i, k))

    for i in range(len(groups)):
        push(i, 1)
    while heap:
        _, i, k = heapq.heappop(heap)
        d_bytes = options[i][k].bytes - options[i][k - 1].bytes
        if used[keys[i]] + d_bytes > budget.get(keys[i], 0):
            continue  # this group stops here: its later upgrades build on this one
        used[keys[i]] += d_bytes
        loss -= options[i][k - 1].loss - options[i][k].loss
        secs += sec[i][k] - sec[i][k - 1]
        walk.steps.append((i, k))
        walk.points.append(point())
        push(i, k + 1)
    return True


# --- several devices: the splits worth a walk ------------------------------------------------------------

def split_layers(info: ModelInfo, settings: RuntimeSettings, devices: Sequence[Any]) -> tuple[str, ...] | None:
    """The device of each layer 0..n_layer under a split (None: one machine)."""
    if not devices:
        return None
    from ..layer_split import layer_devices

    return tuple(layer_devices(info.hparams.n_layer, settings.n_gpu_layers, devices, settings.tensor_split))


def type_levels(groups: Sequence[Group], losses: LossModel, n: int = 6) -> list[dict[str, GgmlType]]:
    """`n` weight mixes from the smallest to the largest: level j takes each group's option j/(n-1) of the
    way along its options (knapsack.cached_options, smallest first). The splits worth a walk are the ones
    that fit these sizes."""
    levels = []
    for j in range(n):
        types: dict[str, GgmlType] = {}
        for g in groups:
            opts = cached_options(g, losses)
            o = opts[round(j * (len(opts) - 1) / max(n - 1, 1))]
            types.update({t.name: o.type_of(i) for i, t in enumerate(g.tensors)})
        levels.append(types)
    return levels


def split_placements(info: ModelInfo, ctx: int, devices: Sequence[Any], budgets: Budgets, margin: int,
                     levels: Sequence[Mapping[str, GgmlType]], base: RuntimeSettings) -> list[RuntimeSettings]:
    """KV type x the most offloaded split (-ngl, -ts) that fits every device at each weight level (a
    uniform mix of tensor types; recommend_devices.fit_split, memory.predict buffer by buffer), each split
    once, and no offload at all (this host alone may be faster than paying the hops). `base` carries the RPC
    servers and any other settings every placement shares."""
    from ..errors import GgprecError
    from ..recommend_devices import fit_split

    room = {(k if k != BUDGET_HOST else HOST): max(v - margin, 0) for k, v in budgets.items()}
    out: dict[tuple[Any, ...], RuntimeSettings] = {}
    for kv in KV_TYPES:
        settings = base.with_overrides(n_ctx=ctx, cache_type_k=kv, cache_type_v=kv)
        out[(kv, 0, ())] = settings.with_overrides(n_gpu_layers=0, rpc_servers=())  # no server needed then
        for types in levels:
            try:
                fit = fit_split(info, settings, devices, room, types)
            except GgprecError:  # not even -ngl 0 fits this host at this level
                continue
            out.setdefault((kv, fit.n_gpu_layers, tuple(fit.counts)), fit.settings)
    return list(out.values())
