"""The quality/speed front and the rule that picks a row of it.

Rules (frontier.choose), the front sorted fastest first:
- `--max-kld Y`: the fastest plan whose expected KLD is at most Y.
- `--min-tps X`: the least-loss plan expected at least X tok/s.
- goal quality: the least expected KLD (plans within QUALITY_TIE of it count as equal; the fastest wins).
- goal speed: the fastest plan whose expected KLD is at most that of every weight at q4_K (a Q4_K_M-like
  level; measured or prior like every loss figure), so never 3-bit weights with a q4_0 KV cache.
- goal balanced (the default): among plans expected at least BALANCED_MIN_TPS tok/s (all plans when none
  is), the most tok/s per unit of expected KLD: halving the loss is worth halving the speed, and KLD under
  KLD_FLOOR counts as KLD_FLOOR (between q8_0 and q6_k on Llama-3-8B in llama.cpp's published table: below it
  a smaller loss is not worth a slower plan; with GPU speeds from measured efficiencies, a floor of 0.001
  traded half the speed for 0.0024 of KLD by moving the output head of an 8B on 8 GiB to the host).
  On a GPU where the whole model fits at some size, this is the best mix that fits there (the loss falls
  faster than the speed as bits are added until the GPU is full, and far slower once layers move to RAM); on
  a model that only fits across GPU and RAM, the least loss at a usable speed.
- an already-quantized source (issue 17), goal balanced: the model as it is (its own tensor types, nothing
  requantized, expected KLD exactly 0 against itself: `measured: unchanged`) whenever it fits. A requantized
  plan is chosen instead only when it buys a stated, real gain: the model as it is does not fit the budget,
  or the balanced rule's pick is expected at least AS_IS_MIN_SPEEDUP times as fast. Requantizing to a
  slightly smaller mix for a few percent of speed costs more than the loss model can see (a requantize
  priced 0.0009 measured 0.032 on Gemma 3 270M Q4_K_M); --goal speed, --min-tps or --max-kld state a
  gain explicitly and pick by their own rules; goal quality picks the model as it is anyway (least loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import GgprecError

QUALITY_TIE = 0.01
BALANCED_MIN_TPS = 3.0  # tok/s: about the slowest decode still usable for reading along
KLD_FLOOR = 0.002  # between q8_0 (0.0014) and q6_k (0.0055) on Llama-3-8B in llama.cpp's published table
GOALS = ("balanced", "quality", "speed")
MAX_SHOWN = 8
SHOWN_MIN_STEP = 1.15
# A requantized plan replaces the model as it is (an already-quantized source, goal balanced) only when it is
# expected at least this many times as fast: a gain a user notices, beyond what the speed model's error
# (10-20% against llama.cpp's measured tok/s) could make up.
AS_IS_MIN_SPEEDUP = 1.5  # printed rows differ in speed by at least this factor (the chosen row and the ends aside)


@dataclass
class FrontRow:
    """One plan of the front: where it runs and what it is expected to cost and give."""

    bits_per_weight: float  # weight bytes x 8 / parameters, over the weights recommend chooses
    kv_type: str
    n_gpu_layers: int
    n_cpu_moe: int
    gpu_bytes: int  # predicted (weights + KV + compute + overhead per device)
    ram_bytes: int
    expected_kld: float
    tg_tps: float
    pp_tps: float | None = None  # expected prompt tok/s, where the speed model has pp figures (shown rows)
    as_is: bool = False  # every weight kept as the source has it (no requantize)
    loss_source: str = ""  # where the expected KLD comes from: measured / proxy: ... / prior: ...
    tensor_split: tuple[float, ...] = ()  # a split over several devices: -ts (layers per device, in order)
    walk: int = 0  # which placement (index into the search's walks)
    steps: int = 0  # how many upgrades of that placement's walk

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["walk"], d["steps"]
        return d


def pareto(points: Sequence[tuple[float, float, int, int]]) -> list[tuple[float, float, int, int]]:
    """(seconds per token, loss, walk, steps) points not beaten on both: fastest first, loss falling."""
    front: list[tuple[float, float, int, int]] = []
    best = math.inf
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if p[1] < best * (1 - 1e-9) - 1e-15:
            front.append(p)
            best = p[1]
    return front


def as_is_row(front: Sequence[FrontRow]) -> int | None:
    """The index of the model as it is with nothing lost (its own weight types and a lossless KV cache),
    where it is on the front: its least-loss row, as nothing is below 0."""
    if front and front[-1].as_is and front[-1].expected_kld == 0:
        return len(front) - 1
    return None


def choose(front: Sequence[FrontRow], goal: str, min_tps: float | None = None, max_kld: float | None = None,
           speed_max_kld: float = 0.0, quantized_source: bool = False) -> tuple[int, str]:
    """The index of the chosen row (front fastest first) and the rule that chose it, in words."""
    idx = range(len(front))
    if max_kld is not None:
        ok = [i for i in idx if front[i].expected_kld <= max_kld]
        if not ok:
            least = min(r.expected_kld for r in front)
            raise GgprecError(f"no plan is expected within KLD {max_kld:g}; the least expected KLD that fits is "
                              f"{least:.4f}")
        return ok[0], f"--max-kld {max_kld:g}: the fastest plan expected within KLD {max_kld:g}"
    if min_tps is not None:
        ok = [i for i in idx if front[i].tg_tps >= min_tps]
        if not ok:
            raise GgprecError(f"no plan is expected at {min_tps:g} tok/s or more; the fastest that fits is "
                              f"{front[0].tg_tps:.1f} tok/s")
        return ok[-1], f"--min-tps {min_tps:g}: the least expected KLD among plans expected at >= {min_tps:g} tok/s"
    if goal == "quality":
        least = min(r.expected_kld for r in front)
        i = next(i for i in idx if front[i].expected_kld <= least * (1 + QUALITY_TIE) + 1e-12)
        return i, f"goal quality: the least expected KLD (within {QUALITY_TIE:.0%} of it, the fastest)"
    if goal == "speed":
        ok = [i for i in idx if front[i].expected_kld <= speed_max_kld] or [len(front) - 1]
        return ok[0], (f"goal speed: the fastest plan expected within KLD {speed_max_kld:.4f} (every weight at "
                       "q4_K, a Q4_K_M-like level)")
    if goal != "balanced":
        raise GgprecError(f"goal must be one of {', '.join(GOALS)}, not '{goal}'")
    usable = [i for i in idx if front[i].tg_tps >= BALANCED_MIN_TPS] or list(idx)
    best = max(usable, key=lambda i: front[i].tg_tps / max(front[i].expected_kld, KLD_FLOOR))
    kept = as_is_row(front) if quantized_source else None
    if kept is not None:
        if best == kept or front[best].tg_tps < AS_IS_MIN_SPEEDUP * front[kept].tg_tps:
            return kept, (f"default (balanced) for an already-quantized source: the model as it is (its own tensor "
                          f"types, nothing requantized, KLD 0); a requantized plan is chosen only when the model "
                          f"does not fit or the plan is expected at least {AS_IS_MIN_SPEEDUP:g}x as fast"
                          + ("" if best == kept else f" (the balanced rule's pick here: "
                             f"{front[best].tg_tps / front[kept].tg_tps:.2f}x)")
                          + "; --goal speed, --min-tps or --max-kld choose otherwise")
        return best, (f"default (balanced) for an already-quantized source: requantized, as the plan is expected "
                      f"{front[best].tg_tps / front[kept].tg_tps:.2f}x as fast as the model as it is (at least "
                      f"{AS_IS_MIN_SPEEDUP:g}x buys a requantize) and has the most tok/s per unit of expected KLD "
                      f"among plans at >= {BALANCED_MIN_TPS:g} tok/s")
    if quantized_source:
        rule = ("default (balanced) for an already-quantized source that does not fit as it is: requantizing is "
                "needed to fit; ")
    else:
        rule = "default (balanced): "
    return best, (rule + f"among plans expected at >= {BALANCED_MIN_TPS:g} tok/s, the most tok/s per "
                  f"unit of expected KLD (halving the loss is worth halving the speed; KLD under {KLD_FLOOR:g} "
                  f"counts as {KLD_FLOOR:g}); --goal quality|speed, --min-tps or --max-kld choose otherwise")


def shown_rows(front: Sequence[FrontRow], chosen: int, limit: int = MAX_SHOWN) -> list[int]:
    """At most `limit` rows to print: both ends, the chosen row, and rows spread evenly in log speed between
    them, none within SHOWN_MIN_STEP of the speed of a row already printed (near-twins trade nothing)."""
    if len(front) <= limit:
        return list(range(len(front)))
    keep = {0, len(front) - 1, chosen}
    logs = [math.log(r.tg_tps) for r in front]
    n_targets = limit - len(keep)
    for j in range(1, n_targets + 1):
        target = logs[0] + (logs[-1] - logs[0]) * j / (n_targets + 1)
        i = min(range(len(front)), key=lambda i: (abs(logs[i] - target), i))
        if all(abs(logs[i] - logs[k]) > math.log(SHOWN_MIN_STEP) for k in keep):
            keep.add(i)
    return sorted(keep)


def trade_text(front: Sequence[FrontRow], shown: Sequence[int], chosen: int) -> list[str]:
    """What the rows printed next to the chosen one trade against it."""
    pos = list(shown).index(chosen)
    c = front[chosen]
    out = []
    if pos > 0:
        f = front[shown[pos - 1]]
        out.append(f"the faster row above: {f.tg_tps / c.tg_tps:.2f}x the speed ({f.tg_tps:.1f} tok/s) at "
                   f"{_ratio(f.expected_kld, c.expected_kld)} the expected KLD ({f.expected_kld:.4f})")
    if pos + 1 < len(shown):
        s = front[shown[pos + 1]]
        out.append(f"the better row below: {_ratio(s.expected_kld, c.expected_kld)} the expected KLD "
                   f"({s.expected_kld:.4f}) at {s.tg_tps / c.tg_tps:.2f}x the speed ({s.tg_tps:.1f} tok/s)")
    return out


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else ("the same" if a == 0 else "more than")
