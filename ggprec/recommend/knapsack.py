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
from .loss import UNCHANGED, LossModel, shrinks


@dataclass(frozen=True)
class Option:
    """One way to store a group: `type` for every tensor (or, where tensor_types is set, each tensor its own
    entry, in the group's order: a candidate caps the tensors it makes smaller and keeps the others), its
    bytes, expected KLD and where that figure comes from. kept: every tensor stays as the source has it."""

    type: GgmlType
    bytes: int
    loss: float
    tensor_types: tuple[GgmlType, ...] = ()
    kept: bool = False
    source: str = ""
    parts: tuple[tuple[str, int], ...] = ()  # bytes by type name, where the tensors differ in type

    def type_of(self, i: int) -> GgmlType:
        """The type of the group's i-th tensor."""
        return self.tensor_types[i] if self.tensor_types else self.type

    @property
    def by_type(self) -> tuple[tuple[str, int], ...]:
        return self.parts or ((self.type.name, self.bytes),)

    @property
    def label(self) -> str:
        """The type in words: one name, or the names of a mixed group joined by '+', most bytes first."""
        return "+".join(n for n, _ in sorted(self.by_type, key=lambda p: (-p[1], p[0])))


def _option(g: Group, t: GgmlType, targets: list[GgmlType], costs: list[tuple[int, float, str]],
            kept: bool = False) -> Option:
    parts: dict[str, int] = {}
    for tt, c in zip(targets, costs, strict=True):
        parts[tt.name] = parts.get(tt.name, 0) + c[0]
    mixed = len(parts) > 1
    changed = sorted({c[2] for c, tt, x in zip(costs, targets, g.tensors, strict=True) if tt != x.type})
    source = UNCHANGED if kept or not changed else "; ".join(changed)
    if kept:
        t = lookup(max(parts, key=lambda n: (parts[n], n)))
    return Option(t, sum(parts.values()), 0.0 if kept else sum(c[1] for c in costs),
                  tuple(targets) if mixed else (), kept, source,
                  tuple(sorted(parts.items())) if mixed else ())


def options_for(g: Group, losses: LossModel, exclude: Sequence[str] = ()) -> list[Option]:
    """The group's options on its lower convex hull of (bytes, loss), smallest first: every candidate type
    (LossModel.candidate_types) given to the tensors it makes smaller, the others kept; and the group kept as
    the source has it (loss 0). Where types were measured for the group, only those LossModel.offered allows,
    each at its measured loss."""
    measured = losses.measured_types(g)
    opts = []
    for t in map(lookup, losses.candidate_types()):
        if t.name in exclude or not g.accepts(t) or not losses.offered(g, t, measured):
            continue
        if t.name == "f16" and any(x.type.name == "bf16" for x in g.tensors):
            continue  # as wide, but narrower in range: keeping bf16 (below) is the lossless 16-bit choice
        targets = [t if shrinks(x, t) else x.type for x in g.tensors]
        if all(tt == x.type for tt, x in zip(targets, g.tensors, strict=True)):
            continue  # changes nothing: the kept option below
        opts.append(_option(g, t, targets, [losses.tensor_cost(x, t) for x in g.tensors]))
    if not all(x.type.name in exclude for x in g.tensors):
        own = [x.type for x in g.tensors]
        opts.append(_option(g, own[0], own, [(x.type.tensor_bytes(x.shape), 0.0, UNCHANGED) for x in g.tensors],
                            kept=True))
    opts.sort(key=lambda o: (o.bytes, o.loss, not o.kept))
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
