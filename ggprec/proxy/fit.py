"""From the proxy's error to expected KLD: the fit per role (see the package doc). Pure arithmetic on an
ErrorTable's values: no ggml, no llama.cpp."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import ggml_types
from ..errors import GgprecError
from ..gguf_info import ModelInfo, TensorInfo
from .table import ErrorTable, proxy_tensors


def fit_role(t: TensorInfo, info: ModelInfo) -> str:
    """The role a fit constant belongs to: the tensor's role, and `tied_head` for a token_embd that is also
    the output head (it acts as the head, whose damage per unit of error is far above an embedding's)."""
    return "tied_head" if t.role == "token_embd" and info.tied_output else t.role


@dataclass(frozen=True)
class FitPass:
    """One real evaluation: these tensors at these types (the rest as the file holds them) measured `kld`
    against the model."""

    label: str
    types: dict[str, str]  # tensor name -> requested type
    kld: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "types": dict(self.types), "kld": self.kld}


def role_counts(info: ModelInfo) -> dict[str, int]:
    """Proxied tensors per fit role (the activation floor of a role is spread evenly over them)."""
    out: dict[str, int] = {}
    for t in proxy_tensors(info):
        r = fit_role(t, info)
        out[r] = out.get(r, 0) + 1
    return out


def quantizes_activations(t: TensorInfo, written: str) -> bool:
    """Whether writing `t` as `written` changes how llama.cpp quantizes the matmul's input: a quantized weight
    type multiplies against activations quantized to 8 bits (ggml-cpu's vec_dot_type q8_0, q8_1 or q8_K), a
    float weight against float activations. So a float tensor becoming quantized, and a quantized one
    becoming another quantized type (measured on the SmolLM2 Q4_1 download: each role alone requantized to
    q8_0 costs KLD 0.0035-0.0039 whatever the role, far above its weight error) pay the floor."""
    return ggml_types.lookup(written).quantized and ggml_types.lookup(written) != t.type


@dataclass
class ProxyFit:
    """Expected KLD = sum over tensors of scale[role] x error + floor[role] / (the role's tensor count) for each
    tensor whose activations become quantized (`quantizes_activations`), default_scale for roles without a
    pass of their own. `n_passes` real evaluations fitted it (0: scaled to the priors, `prior_source`).

    The floor is what the weight error cannot see: measured on SmolLM2 (F32), the tied head at q8_0 (its
    values already on the q8_0 grid, so a weight error of 0) costs KLD 0.0006, and every role at q8_0 costs
    2-4x what its q4_0 scale predicts from the weight error: quantized weights multiply 8-bit activations."""

    scale: dict[str, float]
    default_scale: float
    n_passes: int
    weighting: str  # the table's weighting: a fit holds only for tables of the same weighting
    passes: list[dict[str, Any]] = field(default_factory=list)  # FitPass.to_dict() + the fitted prediction
    prior_source: str | None = None
    residual: float | None = None  # rms of log(measured / fitted) over the passes
    floor: dict[str, float] = field(default_factory=dict)  # role -> KLD of quantizing all its activations

    @property
    def source(self) -> str:
        if self.n_passes == 0:
            return f"prior: {self.prior_source}"
        return f"proxy: fitted on {self.n_passes} passes"

    def role_scale(self, role: str) -> float:
        return self.scale.get(role, self.default_scale)

    def tensor_kld(self, table: ErrorTable, info: ModelInfo, tensor: str, candidate: str,
                   counts: Mapping[str, int] | None = None) -> float | None:
        entry = table.errors.get(tensor, {}).get(ggml_types.lookup(candidate).name)
        t = info.tensor(tensor)
        if entry is None or t is None:
            return None
        role = fit_role(t, info)
        kld = self.role_scale(role) * entry.error
        if self.floor.get(role) and quantizes_activations(t, entry.written):
            n = (counts if counts is not None else role_counts(info)).get(role, 1)
            kld += self.floor[role] / n
        return kld

    def group_kld(self, table: ErrorTable, info: ModelInfo, tensors: Iterable[str], candidate: str) -> float | None:
        return self.predict(table, info, dict.fromkeys(tensors, candidate))

    def predict(self, table: ErrorTable, info: ModelInfo, types: Mapping[str, str]) -> float | None:
        """Expected KLD of an assignment (tensor -> type; other tensors keep the file's type)."""
        counts = role_counts(info)
        total = 0.0
        for name, c in types.items():
            k = self.tensor_kld(table, info, name, c, counts)
            if k is None:
                return None
            total += k
        return total

    @classmethod
    def fit(cls, table: ErrorTable, info: ModelInfo, passes: Sequence[FitPass], min_share: float = 0.9) -> ProxyFit:
        """Least squares in relative terms (close to the log scale: KLDs span decades). The global constant: a
        one-constant model log KLD = log c + log S, whose least-squares c is the geometric mean of KLD / S
        over every pass (S: the pass's summed error). A role's constants take the passes whose error lies
        at least `min_share` in that role: with one such pass (or passes of one type), the geometric mean
        again; with passes at two or more types, KLD = c x S + floor x A (A: the share of the role's tensors
        whose activations the pass quantizes) by least squares on the relative residuals, kept when both
        are positive. Why per role and no finer: a role's tensors share a shape and a place in the block, so
        their error turns into output damage alike, while roles differ by orders of magnitude (a tied head
        against attn_k)."""
        counts = role_counts(info)
        points: list[tuple[FitPass, dict[str, float], dict[str, float]]] = []
        for p in passes:
            by_role: dict[str, float] = {}
            act: dict[str, float] = {}
            for name, c in p.types.items():
                t = info.tensor(name)
                entry = table.errors.get(name, {}).get(ggml_types.lookup(c).name)
                if t is None or entry is None:
                    break
                r = fit_role(t, info)
                by_role[r] = by_role.get(r, 0.0) + entry.error
                if quantizes_activations(t, entry.written):
                    act[r] = act.get(r, 0.0) + 1.0 / counts.get(r, 1)
            else:
                # A pass with no weight error can still quantize activations (the tied head at q8_0 when its
                # values already lie on the q8_0 grid): it measures the floor alone.
                if p.kld > 0 and (sum(by_role.values()) > 0 or sum(act.values()) > 0):
                    points.append((p, by_role, act))
        logs = [math.log(p.kld / sum(r.values())) for p, r, _ in points if sum(r.values()) > 0]
        if not logs:
            raise GgprecError("no evaluation pass to fit the proxy on (each needs a positive KLD and measured "
                              "errors for its tensors)")
        fit = cls({}, math.exp(sum(logs) / len(logs)), len(points), table.weighting)
        for role in sorted({r for _, by, _ in points for r in by}):
            own = [(p.kld, by[role], act.get(role, 0.0)) for p, by, act in points
                   if role in by and by[role] >= min_share * sum(by.values()) and (by[role] > 0 or len(by) == 1)]
            if any(e > 0 for _, e, _ in own):
                fit.scale[role], floor = _fit_role(own)
                if floor:
                    fit.floor[role] = floor
        res = []
        for p, by, act in points:
            pred = sum(fit.role_scale(r) * e + fit.floor.get(r, 0.0) * act.get(r, 0.0) for r, e in by.items())
            fit.passes.append({**p.to_dict(), "fitted": pred})
            res.append(math.log(p.kld / pred) if pred > 0 else 0.0)
        fit.residual = math.sqrt(sum(x * x for x in res) / len(res))
        return fit

    @classmethod
    def from_prior(cls, table: ErrorTable, info: ModelInfo, candidate: str) -> ProxyFit:
        """No evaluation possible: one constant such that every proxied tensor at `candidate` adds up to the
        prior's whole-model KLD at that type (ggprec.priors), i.e. the prior spread over the tensors by
        their proxy error."""
        from ..priors import weight_prior

        c = ggml_types.lookup(candidate).name
        names = list(table.errors)
        s = table.group_error(names, c)
        n_params = sum(t.n_elements for t in proxy_tensors(info))
        prior = weight_prior(c, n_params)
        scale = prior.kld / s if s else 0.0
        text = prior.source.removeprefix("prior:").strip()
        return cls({}, scale, 0, table.weighting, prior_source=f"{text}, spread over the tensors by the proxy")

    def to_dict(self) -> dict[str, Any]:
        return {"scale": dict(self.scale), "default_scale": self.default_scale, "n_passes": self.n_passes,
                "weighting": self.weighting, "passes": list(self.passes), "prior_source": self.prior_source,
                "residual": self.residual, "floor": dict(self.floor), "source": self.source}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProxyFit:
        return cls(dict(doc["scale"]), float(doc["default_scale"]), int(doc["n_passes"]), str(doc["weighting"]),
                   list(doc.get("passes", [])), doc.get("prior_source"), doc.get("residual"),
                   dict(doc.get("floor") or {}))


def _fit_role(points: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """(scale, floor) of KLD = scale x S + floor x A through (KLD, S, A) points, minimising the relative
    residuals; (geometric mean of KLD / S, 0) when the points cannot separate the two or give a negative."""
    pos = [(k, s) for k, s, _ in points if s > 0]  # at least one: the caller checks
    geo = math.exp(sum(math.log(k / s) for k, s in pos) / len(pos))
    if len({round(math.log(s), 6) if s > 0 else None for _, s, _ in points}) < 2 or not any(a > 0 for *_, a in points):
        return geo, 0.0
    # Normal equations of sum ((c S + f A) / K - 1)^2.
    ss = sum((s / k) ** 2 for k, s, _ in points)
    sa = sum(s * a / k**2 for k, s, a in points)
    aa = sum((a / k) ** 2 for k, _, a in points)
    s1 = sum(s / k for k, s, _ in points)
    a1 = sum(a / k for k, _, a in points)
    det = ss * aa - sa * sa
    if det <= 0:
        return geo, 0.0
    c = (s1 * aa - a1 * sa) / det
    f = (ss * a1 - sa * s1) / det
    if c <= 0 or f < 0:
        return geo, 0.0
    return c, f


