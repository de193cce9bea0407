"""`ggprec recommend`: the plan that fits a memory budget with the least expected accuracy loss.

What is searched: a weight type per tensor group (role x layer band, token_embd, the output head), the
KV-cache type (f16, q8_0, q4_0) and n_gpu_layers. What must hold: memory.predict's bytes per device fit
VRAM and RAM minus the margin.

Method. Expected loss (mean KLD against the unquantized model) is additive over groups. For one KV type and
one n_gpu_layers, every group lives on one device (bands are split at the offload boundary), so the problem
splits into one multiple-choice knapsack per device: choose a type per group, cost = bytes, loss = expected
KLD. Each is solved by Lagrangian relaxation: on each group's lower convex hull of (bytes, loss) options, the
upgrade steps are taken in order of loss saved per byte while the budget allows (the greedy that solves the
LP relaxation exactly; the multiplier lambda is the efficiency of the last step taken). The outer search
tries every KV type and every n_gpu_layers; memory.predict gives the non-weight buffers (KV cache, compute)
for each, and the final plan is checked against memory.predict again.

Goals: quality = least expected loss; among plans within 1% of it, the fastest. speed = the highest
expected tg tok/s (bandwidth model) among plans whose expected loss is no worse than every group at
4.5 bits per weight (a Q4_K_M-like level), taking the fewest bytes that reach that level.

Loss per group: from measured sensitivity (ggprec sensitivity, stored per model sha256) when present,
otherwise from priors (see `PRIOR_IMPORTANCE`). With several probe types measured (`--also q5_1 --also
q8_0`, per band or per role) each group's loss follows its measured points, log-linear in bits between
them, instead of one probe stretched by a fixed law.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import GgprecError
from .ggml_types import GgmlType, lookup
from .gguf_info import ModelInfo, TensorInfo
from .settings import RuntimeSettings

GIB = 2**30
MIB = 2**20
GPU_DEVICE = "CUDA0"
HOST_DEVICE = "CPU"

# Weight types recommend chooses from, best first. A type is offered for a group only when its block
# divides every row of the group (K-quants need rows of 256; llama.cpp would fall back otherwise) and it is
# no wider than the source (upcasting buys nothing).
CANDIDATE_TYPES: tuple[str, ...] = ("f16", "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k",
                                    "q2_k", "iq4_nl")
KV_TYPES: tuple[str, ...] = ("f16", "q8_0", "q4_0")

# Priors, used when no sensitivity was measured for the model. Relative damage per parameter of
# quantizing a role (llama.cpp's own mixes give attn_v, ffn_down and the output head more bits; a tied
# head at 4 bits is the most damaging single choice measured on SmolLM2 (DESIGN.md); an untied
# token_embd is a row lookup and tolerates little precision).
PRIOR_IMPORTANCE: dict[str, float] = {
    "output": 8.0,
    "tied_head": 8.0,
    "attn_v": 2.0,
    "ffn_down": 2.0,
    "attn_q": 1.0,
    "attn_k": 1.0,
    "attn_output": 1.0,
    "attn_qkv": 1.5,
    "ffn_gate": 1.0,
    "ffn_up": 1.0,
    "token_embd": 0.1,
}
EDGE_LAYER_BONUS = 1.5  # llama.cpp's use_more_bits: the first and last eighth of the layers matter more
# Expected KLD of the whole model at 8.5 bits (all Q8_0), measured on SmolLM2 (DESIGN.md: 0.0062).
PRIOR_KLD_AT_Q8 = 0.0062
# KLD ~ 2^(-ALPHA * bits): ALPHA from the same table (all Q4_0 / all Q8_0 = 0.37 / 0.0062 ~ 2^(1.5 * 4)).
LOSS_EXPONENT = 1.5
Q8_BPW = 8.5
# Expected KLD added by a quantized KV cache, measured on SmolLM2 with F16 weights (DESIGN.md).
KV_PRIOR_KLD: dict[str, float] = {"f16": 0.0, "q8_0": 0.0005, "q4_0": 0.0947}
SPEED_FLOOR_BPW = 4.5  # speed goal: expected loss no worse than every group at this many bits
QUALITY_TIE = 0.01  # quality goal: plans within 1% of the least loss count as equal; the faster wins


# --- groups ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Tensors that take one type together."""

    key: str  # "ffn_down@0-7", "token_embd", "output"
    role: str  # tensor role, or "tied_head" for a token_embd that is also the output head
    layers: tuple[int, ...]  # block layers covered; empty outside the blocks
    tensors: tuple[TensorInfo, ...]

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def source_bpw(self) -> float:
        return max(t.type.bits_per_weight for t in self.tensors)

    def bytes_as(self, t: GgmlType) -> int:
        return sum(t.tensor_bytes(x.shape) for x in self.tensors)

    def accepts(self, t: GgmlType) -> bool:
        return all(x.shape[0] % t.block_size == 0 for x in self.tensors)


def quantizable(t: TensorInfo) -> bool:
    """Tensors llama.cpp's quantizer may change (plan.quantizable), of a role recommend knows."""
    from .plan import quantizable as llama_quantizes

    return t.role not in ("norm", "other") and llama_quantizes(t.name, t.shape)


def layer_bands(n_layer: int, n_bands: int) -> list[tuple[int, int]]:
    """Split 0..n_layer-1 into n_bands contiguous bands as equal as possible: [(first, last), ...]."""
    n_bands = max(1, min(n_bands, n_layer))
    edges = [round(i * n_layer / n_bands) for i in range(n_bands + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(n_bands) if edges[i + 1] > edges[i]]


def make_groups(info: ModelInfo, n_bands: int = 4) -> list[Group]:
    """Groups: every block role x layer band, token_embd (or the tied head) and the output head."""
    n_layer = info.hparams.n_layer
    bands = layer_bands(n_layer, n_bands) if n_layer else []
    by_role_band: dict[tuple[str, int], list[TensorInfo]] = {}
    singles: dict[str, list[TensorInfo]] = {}
    for t in info.tensors:
        if not quantizable(t):
            continue
        if t.layer is None:
            role = "tied_head" if t.role == "token_embd" and info.tied_output else t.role
            singles.setdefault(role, []).append(t)
            continue
        band = next(i for i, (a, b) in enumerate(bands) if a <= t.layer <= b)
        by_role_band.setdefault((t.role, band), []).append(t)
    groups = [Group(role if role != "tied_head" else "token_embd", role, (), tuple(ts))
              for role, ts in singles.items()]
    for (role, band), ts in by_role_band.items():
        a, b = bands[band]
        groups.append(Group(f"{role}@{a}-{b}", role, tuple(range(a, b + 1)), tuple(ts)))
    return groups


def split_at(group: Group, first_gpu_layer: int) -> list[Group]:
    """A band split where the GPU layers start, so that each part lives on one device."""
    lo = tuple(t for t in group.tensors if t.layer is not None and t.layer < first_gpu_layer)
    hi = tuple(t for t in group.tensors if t.layer is not None and t.layer >= first_gpu_layer)
    if not group.layers or not lo or not hi:
        return [group]
    parts = []
    for ts in (lo, hi):
        layers = tuple(sorted({t.layer for t in ts if t.layer is not None}))
        parts.append(Group(f"{group.role}@{layers[0]}-{layers[-1]}", group.role, layers, ts))
    return parts


# --- expected loss ---------------------------------------------------------------------------------------


def noise(bpw: float, exponent: float = LOSS_EXPONENT) -> float:
    """Relative damage of quantizing to bpw bits, 1.0 at Q8_0; 0 for 16 bits and more."""
    if bpw >= 16:
        return 0.0
    return 2.0 ** (-exponent * (bpw - Q8_BPW))


# Bounds on a fitted per-group exponent: two probes of a group whose KLD is at the measurement floor can
# give any slope; these keep the curve within what whole-model measurements show (DESIGN.md: ~1.5).
EXPONENT_RANGE = (0.5, 3.0)


def interpolate(points: dict[float, float], bpw: float, exponent: float) -> float:
    """KLD at bpw from measured (bits, KLD) points: log-linear between the two around bpw; beyond the
    measured range, 2^(-exponent x bits) from the nearest point."""
    import math

    xs = sorted(points)
    if bpw <= xs[0] or bpw >= xs[-1]:
        edge = xs[0] if bpw <= xs[0] else xs[-1]
        return points[edge] * 2.0 ** (-exponent * (bpw - edge))
    hi = next(i for i, x in enumerate(xs) if x >= bpw)
    x0, x1 = xs[hi - 1], xs[hi]
    y0, y1 = points[x0], points[x1]
    if y0 <= 0 or y1 <= 0:
        return y0 + (y1 - y0) * (bpw - x0) / (x1 - x0)
    f = (bpw - x0) / (x1 - x0)
    return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0)))


def fit_exponent(points: dict[float, float]) -> float | None:
    """The exponent of KLD ~ 2^(-a x bits) through the lowest- and highest-bit probes of one group, or None
    when fewer than two positive points were measured."""
    import math

    pos = sorted((b, k) for b, k in points.items() if k > 0 and b < 16)
    if len(pos) < 2 or pos[-1][0] <= pos[0][0]:
        return None
    (b0, k0), (b1, k1) = pos[0], pos[-1]
    a = math.log2(k0 / k1) / (b1 - b0)
    return min(max(a, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])


@dataclass
class LossModel:
    """Expected KLD of each tensor at a given bits per weight: density[name] x noise(bpw, exponent[name]) x
    n_params (exponent: the tensor's fitted slope where two probe types were measured, else LOSS_EXPONENT)."""

    density: dict[str, float]  # expected KLD per parameter at Q8_0, per tensor name
    source: str  # "priors" or "sensitivity <id>"
    exponent: dict[str, float] = field(default_factory=dict)
    # Measured KLD per parameter at several bits per weight, per tensor: interpolated log-linearly between
    # the points (outside them: the exponent, from the nearest point). Wins over density x noise.
    curve: dict[str, dict[float, float]] = field(default_factory=dict)
    # Measured KLD per parameter per type name, per tensor (`ggprec sensitivity --also`): types of equal bits
    # differ (iq4_nl, q4_k and q4_0 are all 4.5 bits), so where a group has these, only its measured types
    # are offered and each costs exactly its measurement (see type_loss, options_for).
    typed: dict[str, dict[str, float]] = field(default_factory=dict)
    kv: dict[str, float] = field(default_factory=lambda: dict(KV_PRIOR_KLD))
    options_cache: dict[str, list[Option]] = field(default_factory=dict, repr=False)

    def group_loss(self, g: Group, bpw: float) -> float:
        if bpw >= g.source_bpw:  # the source itself: nothing lost relative to it
            return 0.0
        return sum(self._per_param(t.name, bpw) * t.n_elements for t in g.tensors)

    def measured_types(self, g: Group) -> set[str] | None:
        """The types measured for every tensor of g (two or more), else None (g is known by bits only)."""
        sets = [set(self.typed.get(t.name, {})) for t in g.tensors]
        common = set.intersection(*sets) if sets else set()
        return common if len(common) >= 2 else None

    def offered(self, g: Group, t: GgmlType) -> bool:
        """Whether recommend may choose t for g: any type where g was measured by bits only; else a measured
        type, a 16-bit type, or one outside the measured range of bits (below the lowest probe: only the
        fitted slope can say, and nothing measured can stand in). An unmeasured type between measured ones is
        not offered: its neighbours' bits say little about it (on SmolLM2 q5_1 measured at half the damage of
        q4_0, not the 1/6 a bits law through q4_0 and q8_0 predicts)."""
        measured = self.measured_types(g)
        if measured is None or t.name in measured or t.bits_per_weight >= 16:
            return True
        bits = [lookup(m).bits_per_weight for m in measured]
        return not min(bits) <= t.bits_per_weight <= max(bits)

    def type_loss(self, g: Group, t: GgmlType) -> float:
        """Expected KLD of g at type t: its measurement where one was made, else the curve by bits."""
        if t.bits_per_weight >= g.source_bpw:
            return 0.0
        if all(t.name in self.typed.get(x.name, {}) for x in g.tensors):
            return sum(self.typed[x.name][t.name] * x.n_elements for x in g.tensors)
        return self.group_loss(g, t.bits_per_weight)

    def _per_param(self, name: str, bpw: float) -> float:
        exponent = self.exponent.get(name, LOSS_EXPONENT)
        points = self.curve.get(name)
        if not points or bpw >= 16:
            return self.density.get(name, 0.0) * noise(bpw, exponent)
        return interpolate(points, bpw, exponent)


def prior_loss_model(info: ModelInfo, groups: Sequence[Group]) -> LossModel:
    """Priors scaled so the whole model at Q8_0 is expected at PRIOR_KLD_AT_Q8."""
    n_layer = info.hparams.n_layer
    edge = max(1, n_layer // 8)
    weights: dict[str, float] = {}
    for g in groups:
        for t in g.tensors:
            w = PRIOR_IMPORTANCE.get(g.role, 1.0)
            if t.layer is not None and (t.layer < edge or t.layer >= n_layer - edge):
                w *= EDGE_LAYER_BONUS
            weights[t.name] = w
    total = sum(weights[t.name] * t.n_elements for g in groups for t in g.tensors) or 1.0
    return LossModel({k: v * PRIOR_KLD_AT_Q8 / total for k, v in weights.items()}, "priors")


def sensitivity_loss_model(info: ModelInfo, groups: Sequence[Group], record: dict[str, Any]) -> LossModel:
    """Loss from a stored sensitivity run: each measured group's KLD increase, spread over its tensors by
    parameters. With one probe type the curve is stretched to other types by LOSS_EXPONENT; with several
    (`ggprec sensitivity --also q8_0`) each group gets its own exponent through its lowest- and highest-bit
    probes, anchored at the highest (the one nearest the types compared at large budgets); where the further
    types were measured per role only (`--also-groups role`), each band takes its role's exponent, anchored
    at its own probe. Tensors the run did not measure keep their prior."""
    model = prior_loss_model(info, groups)
    by_name = {t.name: t for t in info.tensors}
    coarse = _coarse_curves(record)
    coarse_typed = _coarse_typed(record)
    fitted = 0
    for item in record["groups"]:
        names = [n for n in item["tensors"] if n in by_name]
        n_params = sum(by_name[n].n_elements for n in names)
        if not n_params:
            continue
        probe_bpw = lookup(record["probe_type"]).bits_per_weight
        points = _bits_points(record["probe_type"], item.get("kld_at", {}))
        points.setdefault(probe_bpw, max(float(item["kld"]), 0.0))
        typed = {t: max(float(k), 0.0) for t, k in item.get("kld_at", {}).items()}
        typed.setdefault(record["probe_type"], max(float(item["kld"]), 0.0))
        role_curve = coarse.get(frozenset(names))
        role_typed = coarse_typed.get(frozenset(names))
        if fit_exponent(points) is None and role_curve and role_curve.get(probe_bpw, 0) > 0:
            # The band's own probe scales its role's measured curve.
            scale = points[probe_bpw] / role_curve[probe_bpw]
            points = {b: k * scale for b, k in role_curve.items()}
            typed = {t: k * scale for t, k in role_typed.items()} | {record["probe_type"]: typed[record["probe_type"]]}
        exponent = fit_exponent(points)
        fitted += exponent is not None
        exponent = LOSS_EXPONENT if exponent is None else exponent
        per_param = points[probe_bpw] / n_params / noise(probe_bpw, exponent)
        for n in names:
            model.density[n] = per_param
            model.exponent[n] = exponent
            if len(points) > 1:
                model.curve[n] = {b: k / n_params for b, k in points.items()}
            if len(typed) > 1:
                model.typed[n] = {t: k / n_params for t, k in typed.items()}
    probes = "+".join([record["probe_type"], *record.get("also", [])])
    model.source = f"sensitivity #{record.get('id', '?')} ({probes} probe{'s' if record.get('also') else ''}" \
                   f"{f', {fitted} groups fitted' if fitted else ''})"
    return model


def _coarse_curves(record: dict[str, Any]) -> dict[frozenset[str], dict[float, float]]:
    """Curves measured on the coarser groups the further probe types were measured on (`--also-groups
    role`), for each fine group they contain: the coarse group's probe-type point is the sum of its fine
    groups' (the additive model), its other points are measured."""
    out: dict[frozenset[str], dict[float, float]] = {}
    items = [(frozenset(i["tensors"]), max(float(i["kld"]), 0.0)) for i in record["groups"]]
    for c in record.get("also_groups") or []:
        members = frozenset(c["tensors"])
        inside = [(names, k) for names, k in items if names <= members]
        points = _bits_points(record["probe_type"], {**c.get("kld_at", {}), record["probe_type"]: 0.0})
        points[lookup(record["probe_type"]).bits_per_weight] = sum(k for _, k in inside)
        out.update({names: points for names, _ in inside})
    return out


def _bits_points(probe: str, kld_at: dict[str, float]) -> dict[float, float]:
    """Measured KLD by bits per weight for the curve between types: where types share a number of bits
    (q4_0, iq4_nl, q4_k: 4.5) the probe type's point, then a legacy type's, is the one on the curve (the
    others are used as measured by type_loss)."""
    def rank(t: str) -> tuple[int, str]:
        return (0 if t == probe else 1 if not (t.endswith("_k") or t.startswith("iq")) else 2, t)

    points: dict[float, float] = {}
    for t in sorted(kld_at, key=rank):
        points.setdefault(lookup(t).bits_per_weight, max(float(kld_at[t]), 0.0))
    return points


def _coarse_typed(record: dict[str, Any]) -> dict[frozenset[str], dict[str, float]]:
    """_coarse_curves keyed by type name (types of equal bits measured apart)."""
    out: dict[frozenset[str], dict[str, float]] = {}
    items = [(frozenset(i["tensors"]), max(float(i["kld"]), 0.0)) for i in record["groups"]]
    for c in record.get("also_groups") or []:
        members = frozenset(c["tensors"])
        inside = [(names, k) for names, k in items if names <= members]
        points = {t: max(float(k), 0.0) for t, k in c.get("kld_at", {}).items()}
        points[record["probe_type"]] = sum(k for _, k in inside)
        out.update({names: points for names, _ in inside})
    return out


# --- the knapsack ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    type: GgmlType
    bytes: int
    loss: float


def options_for(g: Group, losses: LossModel, exclude: Sequence[str] = ()) -> list[Option]:
    """The group's candidate types on its lower convex hull of (bytes, loss), smallest first; where types
    were measured for the group, only those LossModel.offered allows, each at its measured loss."""
    opts = [Option(t, g.bytes_as(t), losses.type_loss(g, t))
            for t in map(lookup, CANDIDATE_TYPES)
            if g.accepts(t) and t.bits_per_weight <= g.source_bpw + 1e-9 and losses.offered(g, t)
            and t.name not in exclude]
    source = g.tensors[0].type
    if all(x.type == source for x in g.tensors) and source.name not in CANDIDATE_TYPES:
        opts.append(Option(source, g.bytes_as(source), 0.0))  # keeping the source type is always allowed
    opts.sort(key=lambda o: (o.bytes, o.loss))
    hull: list[Option] = []
    for o in opts:
        if hull and o.loss >= hull[-1].loss:
            continue  # dominated: more bytes, no less loss
        while len(hull) >= 2 and _slope(hull[-2], hull[-1]) >= _slope(hull[-2], o):
            hull.pop()  # hull[-1] lies above the chord: never the best for any multiplier
        hull.append(o)
    return hull


def _cached_options(g: Group, losses: LossModel) -> list[Option]:
    """options_for, computed once per group: the same bands recur for every KV type and n_gpu_layers."""
    cache = losses.options_cache
    if g.key not in cache:
        cache[g.key] = options_for(g, losses)
    return cache[g.key]


def _slope(a: Option, b: Option) -> float:
    return (b.loss - a.loss) / max(b.bytes - a.bytes, 1)


@dataclass
class Solution:
    choice: list[int]  # index into each group's options
    bytes: int
    loss: float
    multiplier: float  # loss saved per byte at the last upgrade taken (Lagrange multiplier)


def solve(options: Sequence[Sequence[Option]], budget: float | None = None,
          loss_target: float | None = None) -> Solution | None:
    """Multiple-choice knapsack by Lagrangian relaxation over convex hulls. Start every group at its
    smallest option and take upgrades in order of loss saved per byte: up to the byte budget (least loss
    within budget), or until the loss target is reached (fewest bytes for that loss). None if even the
    smallest options exceed the budget."""
    choice = [0] * len(options)
    total_bytes = sum(o[0].bytes for o in options)
    total_loss = sum(o[0].loss for o in options)
    if budget is not None and total_bytes > budget:
        return None
    steps = []
    for gi, opts in enumerate(options):
        for k in range(1, len(opts)):
            d_bytes = opts[k].bytes - opts[k - 1].bytes
            d_loss = opts[k - 1].loss - opts[k].loss
            steps.append((d_loss / max(d_bytes, 1), gi, k, d_bytes, d_loss))
    steps.sort(key=lambda s: -s[0])  # hull steps within a group come out in order: their slopes fall
    multiplier = 0.0
    blocked: set[int] = set()
    for eff, gi, k, d_bytes, d_loss in steps:
        if loss_target is not None and total_loss <= loss_target:
            break
        if gi in blocked or choice[gi] != k - 1:
            continue
        if budget is not None and total_bytes + d_bytes > budget:
            blocked.add(gi)  # later steps of this group build on this one
            continue
        choice[gi] = k
        total_bytes += d_bytes
        total_loss -= d_loss
        multiplier = eff
    exact_loss = sum(opts[k].loss for opts, k in zip(options, choice, strict=True))  # no float drift
    return Solution(choice, total_bytes, exact_loss, multiplier)


# --- the search ------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    settings: RuntimeSettings
    groups: list[Group]
    options: list[list[Option]]
    solution: Solution
    buffers: dict[str, int]
    gpu_total: int
    host_total: int
    loss: float
    tg_tps: float

    @property
    def kv_type(self) -> str:
        return self.settings.cache_type_k

    @property
    def n_gpu_layers(self) -> int:
        return self.settings.n_gpu_layers


@dataclass
class Recommendation:
    model: str
    goal: str
    vram: int
    ram: int
    margin: int
    settings: RuntimeSettings
    tensor_types: dict[str, str]  # every quantizable tensor -> chosen type
    group_types: list[dict[str, Any]]  # key, role, layers, type, bytes, expected_kld, device
    buffers: dict[str, int]  # memory.predict of the chosen plan
    gpu_total: int
    host_total: int
    weights_bytes: int
    expected_kld: float
    kv_kld: float
    tg_tps: float
    bandwidth: Any
    loss_source: str
    method: str
    reasons: list[str]
    searched: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "goal": self.goal,
            "budget": {"vram_bytes": self.vram, "ram_bytes": self.ram, "margin_bytes": self.margin},
            "settings": self.settings.to_dict(),
            "groups": self.group_types, "tensor_types": self.tensor_types,
            "predicted": {"buffers": self.buffers, "gpu_total": self.gpu_total, "host_total": self.host_total,
                          "weights_bytes": self.weights_bytes},
            "expected": {"kld_mean": self.expected_kld, "kv_kld": self.kv_kld, "tg_tok_s": self.tg_tps,
                         "bandwidth_gbps": {"gpu": self.bandwidth.gpu_gbps, "host": self.bandwidth.host_gbps,
                                            "gpu_source": self.bandwidth.gpu_source,
                                            "host_source": self.bandwidth.host_source}},
            "loss_source": self.loss_source, "method": self.method, "reasons": self.reasons,
            "plans_searched": self.searched,
        }


class NoFitError(GgprecError):
    """Nothing fits the budget; the message says the smallest budget that would."""


Predictor = Callable[[ModelInfo, RuntimeSettings, dict[str, GgmlType]], Any]


def _default_predict(info: ModelInfo, settings: RuntimeSettings, types: dict[str, GgmlType]) -> Any:
    from .memory import predict

    return predict(info, settings, tensor_types=types)


def _device_of(key: str) -> str:
    return key.split(":", 1)[1] if ":" in key else HOST_DEVICE


def _is_gpu(key: str) -> bool:
    """Buffers in GPU memory; CUDA_Host (pinned host memory) and CPU buffers count as RAM."""
    return _device_of(key) == GPU_DEVICE


MAPPED = "model:CPU_Mapped"


def _totals(pred: Any, info: ModelInfo, types: dict[str, GgmlType], ngl: int) -> tuple[int, int]:
    """(GPU bytes, RAM bytes) a plan needs. llama.cpp maps one file range spanning every host tensor, which
    includes offloaded layers lying in between; those pages are read once to upload them and are then clean
    page cache the kernel drops, so RAM counts only the weights that stay on the host."""
    gpu = sum(v for k, v in pred.buffers.items() if _is_gpu(k))
    host = sum(v for k, v in pred.buffers.items() if not _is_gpu(k))
    if MAPPED in pred.buffers:
        n_layer, tied = info.hparams.n_layer, info.tied_output
        resident = sum(types.get(t.name, t.type).tensor_bytes(t.shape) for t in info.tensors
                       if not _on_gpu(t, n_layer, ngl, tied))
        host += min(resident, pred.buffers[MAPPED]) - pred.buffers[MAPPED]
    return gpu, host


def _on_gpu(t: TensorInfo, n_layer: int, ngl: int, tied: bool) -> bool:
    """Where llama.cpp puts a weight: the last ngl layers on the GPU; the output head when ngl > n_layer;
    token_embd (a row lookup) always on the host, also when it doubles as a tied head."""
    if t.layer is not None:
        return t.layer >= n_layer - ngl
    if t.role == "output":
        return ngl > n_layer
    return False


def recommend(info: ModelInfo, vram_gb: float, ram_gb: float | None = None, ctx: int = 4096,
              goal: str = "quality", margin_mb: float = 512, n_bands: int = 4,
              sensitivity: dict[str, Any] | None = None, gpu_gbps: float | None = None,
              host_gbps: float | None = None, predictor: Predictor | None = None) -> Recommendation:
    """The plan that fits vram_gb (GiB) of GPU memory and ram_gb (GiB; default this machine's RAM) with
    margin_mb (MiB) to spare on each, best for the goal. Raises NoFitError when nothing fits."""
    from .speed import bandwidth, tg_tokens_per_second

    if goal not in ("quality", "speed"):
        raise GgprecError(f"goal must be 'quality' or 'speed', not '{goal}'")
    if vram_gb < 0 or (ram_gb is not None and ram_gb <= 0) or ctx <= 0 or margin_mb < 0:
        raise GgprecError("--vram, --ram, --ctx and --margin must be positive")
    predict = predictor or _default_predict
    vram = int(vram_gb * GIB)
    ram = int((ram_gb if ram_gb is not None else system_ram_gib()) * GIB)
    margin = int(margin_mb * MIB)
    bw = bandwidth(host_gbps, gpu_gbps)
    n_layer = info.hparams.n_layer
    tied = info.tied_output
    base_groups = make_groups(info, n_bands)
    if not base_groups:
        raise GgprecError(f"{info.path}: no quantizable weights found")
    losses = (sensitivity_loss_model(info, base_groups, sensitivity) if sensitivity
              else prior_loss_model(info, base_groups))

    ngl_choices = list(range(n_layer + 1, -1, -1)) if vram > 0 else [0]
    feasible: list[Candidate] = []
    smallest: list[tuple[int, int]] = []  # (gpu, host) bytes of the smallest plan of each configuration
    for kv in KV_TYPES:
        for ngl in ngl_choices:
            settings = RuntimeSettings(n_gpu_layers=ngl, n_ctx=ctx, cache_type_k=kv, cache_type_v=kv)
            cand = _solve_configuration(info, settings, base_groups, losses, vram, ram, margin, goal,
                                        predict, smallest, tied)
            if cand is None:
                continue
            gpu_read = sum(o.bytes for g, opts, k in zip(cand.groups, cand.options, cand.solution.choice, strict=True)
                           for o in [opts[k]] if _on_gpu(g.tensors[0], n_layer, ngl, tied))
            host_read = cand.solution.bytes - gpu_read - _embd_bytes(cand)
            kv_bytes = sum(v for k, v in cand.buffers.items() if k.startswith("kv:"))
            kv_gpu = sum(v for k, v in cand.buffers.items() if k.startswith("kv:") and _is_gpu(k))
            cand.tg_tps = tg_tokens_per_second(gpu_read + kv_gpu, host_read + kv_bytes - kv_gpu, bw)
            feasible.append(cand)
    if not feasible:
        raise NoFitError(_no_fit_message(smallest, vram, ram, margin))
    best = _pick(feasible, goal)
    return _recommendation(info, best, feasible, goal, vram, ram, margin, losses, bw)


def _embd_bytes(c: Candidate) -> int:
    """token_embd is looked up one row per token, so it does not count toward bytes read per token."""
    return sum(opts[k].bytes for g, opts, k in zip(c.groups, c.options, c.solution.choice, strict=True)
               if g.role in ("token_embd",))


def _solve_configuration(info: ModelInfo, settings: RuntimeSettings, base_groups: list[Group], losses: LossModel,
                         vram: int, ram: int, margin: int, goal: str,
                         predict: Predictor,
                         smallest: list[tuple[int, int]], tied: bool) -> Candidate | None:
    n_layer = info.hparams.n_layer
    ngl = settings.n_gpu_layers
    groups = [p for g in base_groups for p in split_at(g, n_layer - ngl)]
    options = [_cached_options(g, losses) for g in groups]
    on_gpu = [_on_gpu(g.tensors[0], n_layer, ngl, tied) for g in groups]
    low_types = _types_of(groups, options, [0] * len(groups))
    pred = predict(info, settings, low_types)
    gpu0, host0 = _totals(pred, info, low_types, ngl)
    smallest.append((gpu0, host0))
    low_gpu = sum(o[0].bytes for o, d in zip(options, on_gpu, strict=True) if d)
    low_host = sum(o[0].bytes for o, d in zip(options, on_gpu, strict=True) if not d)
    # Non-weight memory (KV cache, compute, fixed tensors, host overhead) per device, from memory.predict.
    over_gpu, over_host = gpu0 - low_gpu, host0 - low_host
    kv_loss = losses.kv.get(settings.cache_type_k, 0.0)
    shrink = 0
    for _ in range(3):  # the compute buffer may grow with wider types: re-check and tighten
        budget_gpu = vram - margin - over_gpu - shrink
        budget_host = ram - margin - over_host - shrink
        sol = _solve_devices(groups, options, on_gpu, budget_gpu, budget_host, goal, losses)
        if sol is None:
            return None
        types = _types_of(groups, options, sol.choice)
        pred = predict(info, settings, types)
        gpu, host = _totals(pred, info, types, ngl)
        over = max(gpu - (vram - margin) if vram or gpu else 0, host - (ram - margin))
        if over <= 0:
            return Candidate(settings, groups, options, sol, dict(pred.buffers), gpu, host,
                             sol.loss + kv_loss, 0.0)
        shrink += over
    return None


def _solve_devices(groups: list[Group], options: list[list[Option]], on_gpu: list[bool], budget_gpu: float,
                   budget_host: float, goal: str, losses: LossModel) -> Solution | None:
    """One knapsack per device; the two are independent because every group lives on one device."""
    choice = [0] * len(groups)
    total = Solution(choice, 0, 0.0, 0.0)
    for device_gpu, budget in ((True, budget_gpu), (False, budget_host)):
        idx = [i for i, d in enumerate(on_gpu) if d == device_gpu]
        if not idx:
            continue
        target = None
        if goal == "speed":
            target = sum(losses.group_loss(groups[i], SPEED_FLOOR_BPW) for i in idx)
        sol = solve([options[i] for i in idx], budget, loss_target=target)
        if sol is None:
            return None
        for i, k in zip(idx, sol.choice, strict=True):
            choice[i] = k
        total.bytes += sol.bytes
        total.loss += sol.loss
        total.multiplier = max(total.multiplier, sol.multiplier)
    return total


def _types_of(groups: list[Group], options: list[list[Option]], choice: list[int]) -> dict[str, GgmlType]:
    return {t.name: opts[k].type for g, opts, k in zip(groups, options, choice, strict=True) for t in g.tensors}


def _pick(feasible: list[Candidate], goal: str) -> Candidate:
    if goal == "speed":
        return max(feasible, key=lambda c: (c.tg_tps, -c.loss))
    least = min(c.loss for c in feasible)
    near = [c for c in feasible if c.loss <= least * (1 + QUALITY_TIE) + 1e-12]
    return max(near, key=lambda c: (c.tg_tps, -c.loss))


def _no_fit_message(smallest: list[tuple[int, int]], vram: int, ram: int, margin: int) -> str:
    need = min(smallest, key=lambda s: (max(s[1] + margin - ram, 0), s[0]))
    return (f"nothing fits {vram / GIB:.1f} GiB VRAM + {ram / GIB:.1f} GiB RAM with a {margin / MIB:.0f} MiB "
            f"margin; the smallest plan needs {(need[0] + margin) / GIB:.2f} GiB VRAM and "
            f"{(need[1] + margin) / GIB:.2f} GiB RAM")


def system_ram_gib() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def _recommendation(info: ModelInfo, best: Candidate, feasible: list[Candidate], goal: str, vram: int, ram: int,
                    margin: int, losses: LossModel, bw: Any) -> Recommendation:
    n_layer = info.hparams.n_layer
    rows = []
    for g, opts, k in zip(best.groups, best.options, best.solution.choice, strict=True):
        o = opts[k]
        rows.append({"key": g.key, "role": g.role, "layers": list(g.layers), "type": o.type.name,
                     "bytes": o.bytes, "expected_kld": o.loss,
                     "device": "gpu" if _on_gpu(g.tensors[0], n_layer, best.n_gpu_layers, info.tied_output)
                     else "host"})
    types = {t.name: opts[k].type.name
             for g, opts, k in zip(best.groups, best.options, best.solution.choice, strict=True) for t in g.tensors}
    settings = best.settings
    reasons = _reasons(info, best, feasible, goal, vram, losses, bw)
    return Recommendation(
        model=str(info.path), goal=goal, vram=vram, ram=ram, margin=margin, settings=settings,
        tensor_types=types, group_types=rows, buffers=best.buffers, gpu_total=best.gpu_total,
        host_total=best.host_total, weights_bytes=best.solution.bytes, expected_kld=best.loss,
        kv_kld=losses.kv.get(best.kv_type, 0.0), tg_tps=best.tg_tps, bandwidth=bw, loss_source=losses.source,
        method=("multiple-choice knapsack per device over groups x candidate types (bytes = cost, expected KLD "
                "= loss), solved by Lagrangian relaxation on convex hulls; exhaustive over KV type x "
                "n_gpu_layers, memory checked with memory.predict"),
        reasons=reasons, searched=len(feasible))


def _reasons(info: ModelInfo, best: Candidate, feasible: list[Candidate], goal: str, vram: int,
             losses: LossModel, bw: Any) -> list[str]:
    n_layer = info.hparams.n_layer
    out = []
    if vram == 0:
        where = "CPU only (no VRAM given)"
    elif best.n_gpu_layers > n_layer:
        where = "all layers and the output head on the GPU"
    else:
        where = f"{best.n_gpu_layers} of {n_layer} layers on the GPU, the rest on the host"
    out.append(f"goal {goal}: {where}; expected KLD {best.loss:.4f} ({losses.source}); "
               f"expected tg {best.tg_tps:.1f} tok/s (GPU {bw.gpu_gbps:.0f} GB/s {bw.gpu_source}, "
               f"host {bw.host_gbps:.1f} GB/s {bw.host_source})")
    counts: dict[str, int] = {}
    for opts, k in zip(best.options, best.solution.choice, strict=True):
        counts[opts[k].type.name] = counts.get(opts[k].type.name, 0) + 1
    mix = ", ".join(f"{n} groups {t}" for t, n in sorted(counts.items(), key=lambda x: -x[1]))
    out.append(f"weights: {mix}; cheapest loss per byte upgrades first (multiplier "
               f"{best.solution.multiplier:.3g} KLD/byte)")
    if best.kv_type != "f16":
        f16 = [c for c in feasible if c.kv_type == "f16"]
        alt = (f"the best f16-cache plan would cost expected KLD {min(c.loss for c in f16):.4f}" if f16
               else "no plan with an f16 cache fits")
        out.append(f"KV cache {best.kv_type}: expected +{losses.kv.get(best.kv_type, 0):.4f} KLD, but it frees "
                   f"memory for weights; {alt}")
    else:
        out.append("KV cache f16: a quantized cache would add KLD without being needed to fit")
    worst = [(opts[k].loss, g.key, opts[k].type.name) for g, opts, k in
             zip(best.groups, best.options, best.solution.choice, strict=True)]
    worst.sort(reverse=True)
    if worst and worst[0][0] > 0:
        top = "; ".join(f"{key} at {t} (+{loss:.4f})" for loss, key, t in worst[:3])
        out.append(f"largest expected losses: {top}")
    return out


def to_profile(rec: Recommendation, name: str = "recommended") -> Any:
    """The recommendation as a Profile (one rule per group: role + layer band), for plan/quantize/run."""
    from .profile import Profile, Rule

    counts: dict[str, int] = {}
    for row in rec.group_types:
        counts[row["type"]] = counts.get(row["type"], 0) + 1
    default = max(counts, key=lambda t: counts[t])
    rules = []
    for row in rec.group_types:
        if row["type"] == default:
            continue
        role = "token_embd" if row["role"] == "tied_head" else row["role"]
        layers = row["layers"]
        spec = f"{layers[0]}-{layers[-1]}" if layers else None
        rules.append(Rule(type=row["type"], roles=(role,), layers=spec))
    desc = (f"ggprec recommend --goal {rec.goal} for {rec.vram / GIB:g} GiB VRAM, {rec.ram / GIB:g} GiB RAM, "
            f"ctx {rec.settings.n_ctx}: expected KLD {rec.expected_kld:.4f}, {rec.tg_tps:.1f} tok/s")
    return Profile(name=name, description=desc, rules=tuple(rules), default=default, runtime=rec.settings)


# --- stored sensitivity, verification, printing -------------------------------------------------------


def stored_sensitivity(model_path: str, store: Any = None) -> dict[str, Any] | None:
    """The newest sensitivity run stored for this model file (same sha256), as recommend's loss source.
    Rows are found by path or file name first, so a model without any costs no hashing (a sparse 70B
    file would take minutes to hash)."""
    from .hashing import model_sha256
    from .store import Store

    own = store is None
    store = store or Store()
    try:
        rows = store.query(kind="sensitivity", model=str(model_path))
        if not rows:
            return None
        sha = model_sha256(model_path)
        for row in rows:
            if row.model_sha256 == sha and row.results.get("groups"):
                return {**row.results, "id": row.id}
        return None
    finally:
        if own:
            store.close()


def verify(rec: Recommendation, source: str, reference: str | None = None, chunks: int | None = 4,
           n_ctx: int = 512, threads: int = 2) -> dict[str, Any]:
    """Quantize the recommended plan with llama.cpp and measure its KLD against the reference (default:
    the source itself); returns predicted vs measured."""
    from .evaluate import evaluate
    from .quantize import build_variant

    profile = to_profile(rec, name="recommended")
    variant = build_variant(source, profile, threads=threads)
    settings = RuntimeSettings(n_threads=threads, cache_type_k=rec.settings.cache_type_k,
                               cache_type_v=rec.settings.cache_type_v)
    result = evaluate(variant, reference or source, n_ctx=n_ctx, chunks=chunks, settings=settings)
    measured = result.kld_mean
    return {"variant": str(variant), "file_bytes": variant.stat().st_size, "predicted_kld": rec.expected_kld,
            "measured_kld": measured, "measured_top1": result.top1,
            "ratio": measured / rec.expected_kld if rec.expected_kld > 0 else None}


def render(rec: Recommendation, console: Any, verified: dict[str, Any] | None = None) -> None:
    from rich.table import Table

    s = rec.settings
    console.print(f"[bold]{rec.model}[/]: goal {rec.goal}, budget {rec.vram / GIB:g} GiB VRAM + "
                  f"{rec.ram / GIB:.1f} GiB RAM, margin {rec.margin / MIB:g} MiB")
    console.print(f"n_gpu_layers {s.n_gpu_layers}, n_ctx {s.n_ctx}, KV cache {s.cache_type_k}/{s.cache_type_v}"
                  f"{', flash attention' if s.flash_attn_effective else ''}")
    t = Table(title="weights by group")
    for col in ("group", "type", "MiB", "device", "expected KLD"):
        t.add_column(col, justify="left" if col in ("group", "type", "device") else "right")
    for row in rec.group_types:
        t.add_row(row["key"], row["type"], f"{row['bytes'] / MIB:,.1f}", row["device"], f"{row['expected_kld']:.5f}")
    console.print(t)
    b = Table(title="predicted memory (memory.predict)")
    b.add_column("buffer")
    b.add_column("MiB", justify="right")
    for key, n in rec.buffers.items():
        b.add_row(key, f"{n / MIB:,.1f}")
    b.add_row("[bold]GPU total[/]", f"{rec.gpu_total / MIB:,.1f}")
    b.add_row("[bold]RAM total[/]", f"{rec.host_total / MIB:,.1f}")
    console.print(b)
    console.print(f"expected KLD {rec.expected_kld:.4f} (weights {rec.expected_kld - rec.kv_kld:.4f} + KV cache "
                  f"{rec.kv_kld:.4f}; {rec.loss_source}); expected tg {rec.tg_tps:.1f} tok/s")
    console.print(f"method: {rec.method}")
    for r in rec.reasons:
        console.print(f"- {r}")
    if verified:
        console.print(f"verified: predicted KLD {verified['predicted_kld']:.4f}, measured "
                      f"{verified['measured_kld']:.4f} (top-1 {verified['measured_top1']:.1%})"
                      f" on {verified['variant']}")


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
    from .plan import resolve_plan
    from .profile import Profile, Rule

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
            t = opts[k].type.name
            chosen[g.key] = t
            role = "token_embd" if g.role == "tied_head" else g.role
            rules.append(Rule(type=t, roles=(role,),
                              layers=f"{g.layers[0]}-{g.layers[-1]}" if g.layers else None))
        profile = Profile(name=name, description=f"least expected KLD within {max_file_bytes / MIB:.1f} MiB "
                          f"({losses.source})", rules=tuple(rules), default=info.tensors[0].type.name
                          if info.tensors[0].type.weight else "f16")
        size = resolve_plan(info, profile).predicted_file_size
        if size <= max_file_bytes:
            return SizedPlan(profile, chosen, sol.loss, size)
        shrink += size - max_file_bytes
    raise NoFitError(f"no mix of {info.path.name} fits {max_file_bytes / MIB:.1f} MiB")
