"""Loss priors: the expected KL divergence of a whole model quantized to one type (or run with a quantized KV
cache) against the unquantized model, for a model of a given size, from facts at several scales.

The facts (ggprec/data/loss_priors.json, each with its source): llama.cpp's published Llama-3-8B table (KLD
vs FP16 per llama.cpp mix) and what scripts/measure_priors.py measured on the two real models ggprec can
reach (SmolLM2-135M, Gemma 3 270M). The model:

    KLD(type, N) = KLD_8B(type) x (N / N_8B) ** (-b)

- KLD_8B(type): the published row that stands for the type (`type_rows` in the data file) less the table's
  floor (its f16 row); a type without a row is interpolated log-linearly in bits per weight along llama.cpp's
  K-quant ladder (q2_k ... q6_k, q8_0). 16-bit and wider types lose nothing.
- b: least squares through the origin of ln(measured / KLD_8B(same mix)) against ln(N / N_8B) over the
  measured points that are not flagged (scripts/measure_priors.py flags a point when the file mostly keeps
  the source's own type, or when llama.cpp's shape fallback turned the mix into another one). Smaller
  models lose more at the same type: b > 0.
- Where a measured model's own size is asked and its point for that mix is usable, the measurement itself
  is returned (`measured: ...`).

KV cache: the geometric mean over the measured models of the KLD each KV type adds, for any size (see
kv_facts for why no size law); types between q4_0 and q8_0 are interpolated in bits.

The size law is a coarse prior, not a property of quantization: Llama 2 7B loses 2.5-4x less than Llama 3 8B
at every type (same table), so training matters as much as size. A model's own measurements (ggprec
sensitivity, `kv_loss.measure_kv_loss`) always win over these priors.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from .errors import GgprecError
from .ggml_types import lookup

ANCHOR = "llama-3-8b"
# The K-quant ladder: what a type without a published row is interpolated along (bits -> KLD_8B).
LADDER = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0")
LOSSLESS_BPW = 16.0


@dataclass(frozen=True)
class Prior:
    """An expected KLD and where it comes from ("measured: ..." or "prior: ...")."""

    kld: float
    source: str


@dataclass(frozen=True)
class Fit:
    """The size exponent and the points it was fitted on: (model, mix, n_params, measured, 8B, residual)."""

    b: float
    points: tuple[tuple[str, str, int, float, float, float], ...]
    rms_log_residual: float


# --- the facts ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def facts() -> dict[str, Any]:
    """The data file, read once per process."""
    return json.loads((files("ggprec") / "data" / "loss_priors.json").read_text(encoding="utf-8"))


def _anchor() -> dict[str, Any]:
    return facts()["published"][ANCHOR]


def anchor_kld(mix: str) -> float:
    """The published Llama-3-8B KLD of llama.cpp mix `mix`, less the table's floor."""
    a = _anchor()
    return max(a["weights"][mix]["kld"] - a["floor"]["kld"], 0.0)


@functools.cache
def anchor_type_kld(type_name: str) -> tuple[float, str]:
    """KLD_8B of every weight at `type_name` and how it was obtained (a row, or interpolated in bits)."""
    t = lookup(type_name)
    if t.bits_per_weight >= LOSSLESS_BPW:
        return 0.0, "16-bit or wider: nothing lost"
    rows = _anchor()["type_rows"]
    if t.name in rows:
        return anchor_kld(rows[t.name]), f"row {rows[t.name]}"
    ladder = sorted((lookup(n).bits_per_weight, anchor_kld(rows[n])) for n in LADDER)
    bits = t.bits_per_weight
    if bits <= ladder[0][0]:  # below q2_k: continue the last step's slope (in log KLD per bit)
        (x0, y0), (x1, y1) = ladder[0], ladder[1]
    elif bits >= ladder[-1][0]:
        (x0, y0), (x1, y1) = ladder[-2], ladder[-1]
    else:
        i = next(i for i, (x, _) in enumerate(ladder) if x >= bits)
        (x0, y0), (x1, y1) = ladder[i - 1], ladder[i]
    f = (bits - x0) / (x1 - x0)
    return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0))), f"interpolated at {bits:g} bits"


# --- the size dependence --------------------------------------------------------------------------------


def usable_points() -> list[tuple[str, str, int, float]]:
    """Measured (model, mix, n_params, kld) points that may be fitted: not flagged, with a published row."""
    published = _anchor()["weights"]
    out = []
    for name, m in facts().get("measured", {}).items():
        for mix, p in m.get("weights", {}).items():
            if p.get("excluded") is None and mix in published and p["kld"] > 0:
                out.append((name, mix, int(m["n_params"]), float(p["kld"])))
    return out


@functools.lru_cache(maxsize=1)
def size_fit() -> Fit:
    """b of KLD ~ N^(-b), fitted through the origin in log-log against the 8B table (b = 0 with no points)."""
    n8 = _anchor()["n_params"]
    rows = []
    for name, mix, n, kld in usable_points():
        ref = anchor_kld(mix)
        if ref > 0:
            rows.append((name, mix, n, kld, ref, math.log(n / n8), math.log(kld / ref)))
    sxx = sum(x * x for *_, x, _ in rows)
    b = -sum(x * y for *_, x, y in rows) / sxx if sxx else 0.0
    resid = [y + b * x for *_, x, y in rows]
    rms = math.sqrt(sum(r * r for r in resid) / len(resid)) if resid else 0.0
    return Fit(b=b, points=tuple((r[0], r[1], r[2], r[3], r[4], e) for r, e in zip(rows, resid, strict=True)),
               rms_log_residual=rms)


def _scale(n_params: int, b: float) -> float:
    return (max(n_params, 1) / _anchor()["n_params"]) ** (-b)


def _size_label(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _measured_here(n_params: int, type_name: str) -> Prior | None:
    """The usable measurement of a real model of exactly this size whose mix is named after this type."""
    for name, m in facts().get("measured", {}).items():
        if int(m["n_params"]) != n_params:
            continue
        for mix, p in m.get("weights", {}).items():
            if p.get("excluded") is None and _mix_type(mix) == type_name:
                return Prior(float(p["kld"]), f"measured: {m.get('title', name)}, llama.cpp mix {mix}")
    return None


def _mix_type(mix: str) -> str:
    """The ggml type a llama.cpp mix is named after: q4_k_m -> q4_k."""
    return mix[:-2] if mix.endswith(("_m", "_s", "_l")) and "_k" in mix else mix


# --- public API -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # recommend asks per type per group: after the first call, no work at all
def weight_prior(type_name: str, n_params: int) -> Prior:
    """Expected whole-model KLD vs the unquantized model if every quantizable weight of a model with
    `n_params` parameters were `type_name`."""
    t = lookup(type_name)
    if t.bits_per_weight >= LOSSLESS_BPW:
        return Prior(0.0, "prior: 16-bit or wider weights lose nothing")
    here = _measured_here(n_params, t.name)
    if here is not None:
        return here
    base, how = anchor_type_kld(t.name)
    fit = size_fit()
    return Prior(base * _scale(n_params, fit.b),
                 f"prior: llama.cpp Llama-3-8B table ({how}) scaled to {_size_label(n_params)} (b={fit.b:.2f})")


@functools.lru_cache(maxsize=1)
def kv_facts() -> dict[str, Any]:
    """The KV-cache prior: per KV type, the geometric mean over the measured models of the KLD the cache adds
    (less what flash attention alone changes), with no size dependence: the two measured models give no sign
    of one (Gemma 3 270M loses more than SmolLM2-135M), and the only published Llama-3-8B figure (q8_0, PR
    #7412) predates llama.cpp's rotation of K and V, so it only caps the q8_0 prior from above."""
    a = _anchor()
    logs: dict[str, list[float]] = {}
    for m in facts().get("measured", {}).values():
        kv = m.get("kv", {})
        control = kv.get("f16", {}).get("kld", 0.0)
        for name, p in kv.items():
            if name != "f16" and p["kld"] - control > 0:
                logs.setdefault(name, []).append(math.log(p["kld"] - control))
    out = {name: math.exp(sum(v) / len(v)) for name, v in logs.items()}
    cap = max(a["kv"]["q8_0"]["kld"] - a["kv_floor"]["kld"], 0.0)
    out["q8_0"] = min(out.get("q8_0", cap), cap)
    return out


@functools.lru_cache(maxsize=1024)
def kv_prior(kv_type: str, n_params: int) -> Prior:
    """Expected KLD added by a KV cache of `kv_type` (K and V alike). `n_params` is accepted for symmetry with
    weight_prior and ignored: no size dependence is assumed (see kv_facts)."""
    t = lookup(kv_type)
    if t.bits_per_weight >= LOSSLESS_BPW:
        return Prior(0.0, "prior: a 16-bit KV cache loses nothing")
    known = kv_facts()
    models = " and ".join(m.get("title", n).split(" (")[0] for n, m in facts().get("measured", {}).items())
    if t.name in known:
        return Prior(known[t.name], f"prior: {t.name} KV cache, geometric mean of {models} (no size law)")
    if not {"q8_0", "q4_0"} <= set(known):
        raise GgprecError(f"no KV-cache prior for {t.name}: the data file has no measured q8_0 and q4_0 KV points")
    lo, hi = lookup("q4_0").bits_per_weight, lookup("q8_0").bits_per_weight
    f = min(max((t.bits_per_weight - lo) / (hi - lo), 0.0), 1.0)  # log-linear in bits between q4_0 and q8_0
    kld = math.exp(math.log(known["q4_0"]) + f * (math.log(known["q8_0"]) - math.log(known["q4_0"])))
    return Prior(kld, f"prior: {t.name} KV cache interpolated in bits between q4_0 and q8_0 ({models})")


# --- the KV loss of one model, measured --------------------------------------------------------------------
