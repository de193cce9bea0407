"""Expected loss (mean KLD against the source model as it is) of each group at each type.

Loss is additive over groups. Where `ggprec sensitivity` measured the model (stored per sha256), its
measurements win: each measured group's KLD at the probe type(s), extended to other types along a fitted
curve in bits. Elsewhere a per-tensor estimator (`TensorLoss`): by default the priors
(`PriorTensorLoss`): `priors.weight_prior(type, n_params)` is the expected whole-model KLD if every
quantizable weight were that type (at the model's size); a group's share of it is its parameters weighted by
how much its role matters (PRIOR_IMPORTANCE, stated below) and by how often a token reads it (a routed
expert: expert_used/expert_count of the time). Where the model runs here, `recommend --loss auto` (the
default) prices with the per-tensor error proxy fitted on this model instead: the measure stack
(`ggprec.proxy.recommend_proxy`) measures and fits, and hands the result down as a `ProxyEstimate`
(`proxy_tensor_loss` wraps it, the priors pricing what its table lacks); its change floor (what any change
to a quantized file costs once) is added to every changed plan by recommend.api.

A tensor the source already quantized (issue 17):
- Its own type costs exactly 0 (nothing changes: `measured: unchanged`); the model as it is is always an
  option of every group.
- Its candidates are only the types that make it smaller. A type of more bits gains nothing (the source's
  rounding is already in the weights) and requantizing to it is not even lossless (q4_k -> q5_0 rounds the
  q4_k values again onto another grid): such types are never offered, 16-bit ones included.
- Requantizing it to a smaller type t is priced by the priors at prior(t) + REQUANT_SOURCE_WEIGHT x
  prior(source type), each times the tensor's share. Why more than prior(t): the priors are measured from
  16-bit sources, where the quantizer's scale search sees the true weights; here it fits weights that already
  carry the source's rounding error as if it were signal, and the two roundings compound in the result
  (llama.cpp warns of exactly this with --allow-requantize). Measured on Gemma 3 270M Q4_K_M, a requantize
  the f16-based priors priced at KLD 0.0009 measured 0.032 (issue 17). The penalty is a stated heuristic, not
  a measurement: the proxy (which quantizes the file's own rows) or a sensitivity run replaces it.

Every figure carries its source: `measured` (`measured: unchanged` for a kept tensor), `proxy: fitted on N
passes`, or `prior: <source>`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import GgprecError
from ..ggml_types import GgmlType, lookup
from ..gguf_info import ModelInfo, TensorInfo
from ..priors import Prior, kv_prior, weight_prior
from .groups import Group, reads_per_token

# Weight types recommend chooses from, best first. A type is offered for a group only when its block
# divides every row of the group (K-quants need rows of 256; llama.cpp would fall back otherwise) and it is
# no wider than the source (upcasting buys nothing).
CANDIDATE_TYPES: tuple[str, ...] = ("f16", "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k",
                                    "q2_k", "iq4_nl")
KV_TYPES: tuple[str, ...] = ("f16", "q8_0", "q4_0")
# Types that join the candidates when an importance matrix is given (`recommend --imatrix`): llama.cpp's
# i-quants, which only an imatrix makes worth their bits (the IQ2/IQ3_XXS ones are refused without one).
# Only those ggml_types marks as weight types are offered (a profile can name no other).
IMATRIX_TYPES: tuple[str, ...] = ("iq4_xs", "iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs")
# llama-quant.cpp's tensor_requires_imatrix, for a build whose ggml_types does not say (see needs_imatrix).
_NEEDS_IMATRIX = frozenset({"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs"})
# The requantize penalty of the priors: requantizing a tensor of source type s to t costs
# prior(t) + REQUANT_SOURCE_WEIGHT x prior(s) (module docstring).
REQUANT_SOURCE_WEIGHT = 1.0
UNCHANGED = "measured: unchanged"

# Relative damage per parameter of quantizing a role, for the priors. llama.cpp's own mixes give attn_v,
# ffn_down and the output head more bits; a tied head at 4 bits is the most damaging single choice measured
# on SmolLM2 (DESIGN.md); an untied token_embd is a row lookup and tolerates little precision; the MoE router
# (ffn_gate_inp) is tiny and decides which experts run. Expert and shared-expert roles take their dense
# role's weight (ffn_down_exps as ffn_down), routed experts times the share of tokens that read them.
PRIOR_IMPORTANCE: dict[str, float] = {
    "output": 8.0,
    "tied_head": 8.0,
    "ffn_gate_inp": 8.0,
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
# KLD ~ 2^(-LOSS_EXPONENT x bits) for a measured group between/beyond its probes (whole-model measurements on
# SmolLM2: all Q4_0 / all Q8_0 = 0.37 / 0.0062 ~ 2^(1.5 x 4)).
LOSS_EXPONENT = 1.5
Q8_BPW = 8.5


_UNSET: Any = object()


def role_importance(role: str) -> float:
    base = role
    for suffix in ("_exps", "_shexp", "_chexps"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return PRIOR_IMPORTANCE.get(role, PRIOR_IMPORTANCE.get(base, 1.0))


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
    pos = sorted((b, k) for b, k in points.items() if k > 0 and b < 16)
    if len(pos) < 2 or pos[-1][0] <= pos[0][0]:
        return None
    (b0, k0), (b1, k1) = pos[0], pos[-1]
    a = math.log2(k0 / k1) / (b1 - b0)
    return min(max(a, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])



def candidate_names(imatrix: bool) -> tuple[str, ...]:
    """The weight types recommend offers, best first: CANDIDATE_TYPES, plus IMATRIX_TYPES with an importance
    matrix; never a type llama.cpp refuses without one when there is none (what the proxy measures)."""
    names = CANDIDATE_TYPES + (IMATRIX_TYPES if imatrix else ())
    return tuple(n for n in names if lookup(n).weight and (imatrix or not needs_imatrix(lookup(n))))


def needs_imatrix(t: GgmlType) -> bool:
    """Whether llama.cpp refuses t without an importance matrix (ggml_types.needs_imatrix where this build
    has it; the imatrix branch adds it)."""
    from .. import ggml_types

    fn = getattr(ggml_types, "needs_imatrix", None)
    return bool(fn(t)) if fn is not None else t.name in _NEEDS_IMATRIX


def shrinks(x: TensorInfo, t: GgmlType) -> bool:
    """Whether t makes tensor x smaller: the only changes recommend offers (a wider type gains nothing)."""
    return t.tensor_bytes(x.shape) < x.type.tensor_bytes(x.shape)


class TensorLoss(Protocol):
    """A per-tensor loss estimator: the expected KLD (against the source as it is) of giving every tensor of
    group_tensors the candidate type, and where that figure comes from (`prior: ...`, `proxy: fitted on N
    passes`). Called only with tensors the candidate makes smaller (see shrinks)."""

    def estimate(self, group_tensors: Sequence[TensorInfo], candidate: GgmlType) -> tuple[float, str]: ...


@dataclass
class PriorTensorLoss:
    """The priors: each tensor's share of the whole-model prior of the candidate type, plus, where the source
    already quantized the tensor, the requantize penalty (REQUANT_SOURCE_WEIGHT x the source type's prior)."""

    share: dict[str, float]  # each tensor's share of the whole-model prior damage (sums to 1)
    n_params: int  # quantizable parameters of the model: the size the priors are taken at
    source: str  # "prior: ..."
    _prior: dict[str, float] = field(default_factory=dict, repr=False)

    def prior_kld(self, type_name: str) -> float:
        """Whole-model KLD at this type from the priors (cached: one call per type)."""
        if type_name not in self._prior:
            self._prior[type_name] = weight_prior(type_name, self.n_params).kld
        return self._prior[type_name]

    def estimate(self, group_tensors: Sequence[TensorInfo], candidate: GgmlType) -> tuple[float, str]:
        total = 0.0
        requantized = False
        for x in group_tensors:
            kld = self.prior_kld(candidate.name)
            if x.type.quantized:
                kld += REQUANT_SOURCE_WEIGHT * self.prior_kld(x.type.name)
                requantized = True
            total += kld * self.share.get(x.name, 0.0)
        return total, self.source + (" + requantize penalty" if requantized else "")


class ProxyEstimate(Protocol):
    """The per-tensor error proxy fitted to this model, as values (ggprec.proxy.FittedProxy is one): the
    measure stack computes the error table and the fit and passes them down; recommend never measures.
    tensor_kld: the expected KLD of writing `tensor` as `candidate` (None where the table lacks the pair);
    change_floor: the KLD any change to the file costs once (ProxyFit.change_floor); source: `proxy:
    fitted on N passes` (or `prior: ...` for a fit scaled to the priors)."""

    @property
    def source(self) -> str: ...

    @property
    def change_floor(self) -> float: ...

    def tensor_kld(self, tensor: str, candidate: str) -> float | None: ...


@dataclass
class ProxyTensorLoss:
    """Expected KLD from the error proxy; the tensors it has no figure for are priced by `fallback` (the
    priors), and the group's source then names both."""

    proxy: ProxyEstimate
    fallback: TensorLoss | None = None

    @property
    def source(self) -> str:
        return self.proxy.source

    @property
    def change_floor(self) -> float:
        return self.proxy.change_floor

    def estimate(self, group_tensors: Sequence[TensorInfo], candidate: GgmlType) -> tuple[float, str]:
        total = 0.0
        missing = []
        for x in group_tensors:
            kld = self.proxy.tensor_kld(x.name, candidate.name)
            if kld is None:
                missing.append(x)
            else:
                total += kld
        if not missing:
            return total, self.source
        if self.fallback is None:
            raise GgprecError(f"the error proxy has no figure for {missing[0].name} at {candidate.name}")
        rest, source = self.fallback.estimate(missing, candidate)
        return total + rest, source if len(missing) == len(group_tensors) else f"{self.source}; {source}"


def proxy_tensor_loss(proxy: ProxyEstimate, fallback: TensorLoss | None = None) -> ProxyTensorLoss:
    """The fitted proxy as recommend's TensorLoss (fallback: what prices the tensors it lacks)."""
    return ProxyTensorLoss(proxy, fallback)


@dataclass
class LossModel:
    """Expected KLD of each tensor at a type, against the source as it is. Measured tensors (`density` set):
    density[name] x noise(bpw, exponent[name]) x n_params, or their measured curve/types; the others: the
    estimator (default: the priors, prior[type] x share[name], with the requantize penalty)."""

    share: dict[str, float]  # each unmeasured tensor's share of the whole-model prior damage (sums to 1)
    n_params: int  # quantizable parameters of the model: the size the priors are taken at
    prior_source: str
    density: dict[str, float] = field(default_factory=dict)  # measured: expected KLD per parameter at Q8_0
    source: str = ""  # "prior: ..." or "measured: sensitivity #id (...)"
    exponent: dict[str, float] = field(default_factory=dict)
    # Measured KLD per parameter at several bits per weight, per tensor: interpolated log-linearly between
    # the points (outside them: the exponent, from the nearest point). Wins over density x noise.
    curve: dict[str, dict[float, float]] = field(default_factory=dict)
    # Measured KLD per parameter per type name, per tensor (`ggprec sensitivity --also`): types of equal bits
    # differ (iq4_nl, q4_k and q4_0 are all 4.5 bits), so where a group has these, only its measured types
    # are offered and each costs exactly its measurement (see type_loss, options_for).
    typed: dict[str, dict[str, float]] = field(default_factory=dict)
    kv: dict[str, float] = field(default_factory=dict)  # KV type -> expected KLD it adds
    kv_source: dict[str, str] = field(default_factory=dict)
    # The unmeasured tensors' estimator (TensorLoss): None is the priors. with_estimator sets it.
    estimator: Any = None
    # Expected KLD of changing anything at all, paid once by every plan that is not the model as it is (the
    # proxy's change floor; 0 with the priors, whose requantize penalty is per tensor).
    change_floor: float = 0.0
    imatrix: bool = False  # an importance matrix is given: IMATRIX_TYPES join the candidates
    options_cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    _priors: PriorTensorLoss | None = field(default=None, repr=False)
    _tensor_costs: dict[tuple[str, str], tuple[int, float, str]] = field(default_factory=dict, repr=False)

    @property
    def priors(self) -> PriorTensorLoss:
        if self._priors is None:
            self._priors = PriorTensorLoss(self.share, self.n_params, self.prior_source)
        return self._priors

    def with_estimator(self, estimator: TensorLoss, change_floor: float = 0.0) -> LossModel:
        """This model with `estimator` pricing the unmeasured tensors (e.g. proxy_tensor_loss(proxy,
        model.priors)) and `change_floor` paid once by any changed plan; its source names it."""
        self.estimator = estimator
        self.change_floor = change_floor
        self.options_cache.clear()
        self._tensor_costs.clear()
        if not self.density:
            self.source = str(getattr(estimator, "source", self.source))
        return self

    def prior_kld(self, type_name: str) -> float:
        """Whole-model KLD at this type from the priors (cached: one call per type)."""
        return self.priors.prior_kld(type_name)

    def candidate_types(self) -> tuple[str, ...]:
        """The weight types offered, best first (candidate_names)."""
        return candidate_names(self.imatrix)

    def group_source(self, g: Group) -> str:
        return "measured" if all(t.name in self.density for t in g.tensors) else self.source_of_estimates()

    def source_of_estimates(self) -> str:
        return str(getattr(self.estimator, "source", self.prior_source)) if self.estimator else self.prior_source

    def group_loss(self, g: Group, bpw: float) -> float:
        """Expected KLD of g at bpw bits (measured tensors by their curve; the others by the prior of the
        candidate type nearest in bits)."""
        if bpw >= g.source_bpw:  # the source itself: nothing lost relative to it
            return 0.0
        total = 0.0
        for t in g.tensors:
            if t.name in self.density:
                total += self._per_param(t.name, bpw) * t.n_elements
            else:
                nearest = min(CANDIDATE_TYPES, key=lambda n: (abs(lookup(n).bits_per_weight - bpw), n))
                total += self.tensor_cost(t, lookup(nearest))[1]
        return total

    def measured_types(self, g: Group) -> set[str] | None:
        """The types measured for every tensor of g (two or more), else None (g is known by bits only)."""
        sets = [set(self.typed.get(t.name, {})) for t in g.tensors]
        common = set.intersection(*sets) if sets else set()
        return common if len(common) >= 2 else None

    def offered(self, g: Group, t: GgmlType, measured: Any = _UNSET) -> bool:
        """Whether recommend may choose t for g: any type where g was measured by bits only or not at all;
        else a measured type, a 16-bit type, or one outside the measured range of bits (below the lowest
        probe: only the fitted slope can say, and nothing measured can stand in). An unmeasured type between
        measured ones is not offered: its neighbours' bits say little about it (on SmolLM2 q5_1 measured at
        half the damage of q4_0, not the 1/6 a bits law through q4_0 and q8_0 predicts)."""
        if measured is _UNSET:  # callers asking for many types pass measured_types(g) once
            measured = self.measured_types(g)
        if measured is None or t.name in measured or t.bits_per_weight >= 16:
            return True
        bits = [lookup(m).bits_per_weight for m in measured]
        return not min(bits) <= t.bits_per_weight <= max(bits)

    def type_loss(self, g: Group, t: GgmlType) -> float:
        """Expected KLD of g at type t, each tensor that t makes smaller moved to t and the others kept:
        its measurement where one was made, else its curve by bits (measured tensors) or the estimator."""
        return sum(self.tensor_cost(x, t)[1] for x in g.tensors)

    def tensor_cost(self, x: TensorInfo, t: GgmlType) -> tuple[int, float, str]:
        """(bytes, expected KLD, source) of tensor x offered type t: x kept as it is (0, `measured:
        unchanged`) where t would not make it smaller; else its measurement, its measured curve, or the
        estimator (cached: the same tensors recur in the groups of every placement)."""
        key = (x.name, t.name)
        cost = self._tensor_costs.get(key)
        if cost is None:
            if not shrinks(x, t):
                cost = (x.type.tensor_bytes(x.shape), 0.0, UNCHANGED)
            elif t.name in self.typed.get(x.name, {}):
                cost = (t.tensor_bytes(x.shape), self.typed[x.name][t.name] * x.n_elements, "measured")
            elif x.name in self.density:
                cost = (t.tensor_bytes(x.shape), self._per_param(x.name, t.bits_per_weight) * x.n_elements,
                        "measured")
            else:
                loss, source = (self.estimator or self.priors).estimate((x,), t)
                cost = (t.tensor_bytes(x.shape), loss, source)
            self._tensor_costs[key] = cost
        return cost

    def _per_param(self, name: str, bpw: float) -> float:
        exponent = self.exponent.get(name, LOSS_EXPONENT)
        points = self.curve.get(name)
        if not points or bpw >= 16:
            return self.density.get(name, 0.0) * noise(bpw, exponent)
        return interpolate(points, bpw, exponent)


def prior_loss_model(info: ModelInfo, groups: Sequence[Group], kv_measured: dict[str, Prior] | None = None
                     ) -> LossModel:
    """Priors: each tensor's share of the whole-model damage by role importance x parameters x how often a
    token reads it (x EDGE_LAYER_BONUS in the first and last eighth of the layers)."""
    n_layer = info.hparams.n_layer
    edge = max(1, n_layer // 8)
    weights: dict[str, float] = {}
    for g in groups:
        w = role_importance(g.role) * (reads_per_token(g, info) if g.role != "token_embd" else 1.0)
        for t in g.tensors:
            bonus = EDGE_LAYER_BONUS if t.layer is not None and (t.layer < edge or t.layer >= n_layer - edge) else 1.0
            weights[t.name] = w * bonus * t.n_elements
    total = sum(weights.values()) or 1.0
    n_params = sum(g.n_params for g in groups)
    source = weight_prior("q4_k", n_params).source  # "prior: <where>" (or "measured: ..." at a measured size)
    model = LossModel({k: v / total for k, v in weights.items()}, n_params, source, source=source)
    for kv in KV_TYPES:
        p = (kv_measured or {}).get(kv) or kv_prior(kv, n_params)
        model.kv[kv] = p.kld
        model.kv_source[kv] = p.source
    return model


def sensitivity_loss_model(info: ModelInfo, groups: Sequence[Group], record: dict[str, Any],
                           kv_measured: dict[str, Prior] | None = None) -> LossModel:
    """Loss from a stored sensitivity run: each measured group's KLD increase, spread over its tensors by
    parameters. With one probe type the curve is stretched to other types by LOSS_EXPONENT; with several
    (`ggprec sensitivity --also q8_0`) each group gets its own exponent through its lowest- and highest-bit
    probes, anchored at the highest (the one nearest the types compared at large budgets); where the further
    types were measured per role only (`--also-groups role`), each band takes its role's exponent, anchored
    at its own probe. Tensors the run did not measure keep their prior."""
    model = prior_loss_model(info, groups, kv_measured)
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
    plural = "s" if record.get("also") else ""
    model.source = f"measured: sensitivity #{record.get('id', '?')} ({probes} probe{plural}" \
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


def stored_sensitivity(model_path: str, store: Any = None) -> dict[str, Any] | None:
    """The newest sensitivity run stored for this model file (same sha256), as recommend's loss source.
    Rows are found by path or file name first, so a model without any costs no hashing (a sparse 70B
    file would take minutes to hash)."""
    from ..hashing import model_sha256
    from ..store import Store

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
