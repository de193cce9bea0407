"""The multiple-choice knapsack: one type per group, cost = bytes, loss = expected KLD.

Each group's options are its candidate types on the lower convex hull of (bytes, loss); solved by
Lagrangian relaxation: from every group's smallest option, upgrade steps are taken in order of loss saved per
byte while the budget allows (the greedy that solves the LP relaxation exactly; the multiplier lambda is the
efficiency of the last step taken)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..ggml_types import GgmlType, lookup
from .groups import Group
from .loss import CANDIDATE_TYPES, LossModel


@dataclass(frozen=True)
class Option:
    type: GgmlType
    bytes: int
    loss: float


def options_for(g: Group, losses: LossModel, exclude: Sequence[str] = ()) -> list[Option]:
    """The group's candidate types on its lower convex hull of (bytes, loss), smallest first; where types
    were measured for the group, only those LossModel.offered allows, each at its measured loss."""
    measured = losses.measured_types(g)
    source_bpw = g.source_bpw
    source = g.tensors[0].type
    opts = []
    for t in map(lookup, CANDIDATE_TYPES):
        if (t.bits_per_weight > source_bpw + 1e-9 or t.name in exclude or not g.accepts(t)
                or not losses.offered(g, t, measured)):
            continue
        if t.name == "f16" and source.name == "bf16":
            continue  # as wide, but narrower in range: keeping bf16 (below) is the lossless 16-bit choice
        costs = [losses.tensor_cost(x, t) for x in g.tensors]
        loss = 0.0 if t.bits_per_weight >= source_bpw else sum(c[1] for c in costs)
        opts.append(Option(t, sum(c[0] for c in costs), loss))
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


def cached_options(g: Group, losses: LossModel) -> list[Option]:
    """options_for, computed once per group: the same bands recur for every KV type and placement."""
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


def solve(options: Sequence[Sequence[Option]], budget: float | None = None) -> Solution | None:
    """Multiple-choice knapsack by Lagrangian relaxation over convex hulls, for one byte budget (a file size:
    recommend_for_size; recommend sweeps every budget of a placement in search._sweep). Start every group at
    its smallest option and take upgrades in order of loss saved per byte while the budget allows (least
    loss within budget). None if even the smallest options exceed the budget."""
    choice = [0] * len(options)
    total_bytes = sum(o[0].bytes for o in options)
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
    for eff, gi, k, d_bytes, _ in steps:
        if gi in blocked or choice[gi] != k - 1:
            continue
        if budget is not None and total_bytes + d_bytes > budget:
            blocked.add(gi)  # later steps of this group build on this one
            continue
        choice[gi] = k
        total_bytes += d_bytes
        multiplier = eff
    exact_loss = sum(opts[k].loss for opts, k in zip(options, choice, strict=True))  # no float drift
    return Solution(choice, total_bytes, exact_loss, multiplier)
