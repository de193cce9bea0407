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
    """Whether writing `t` as `written` makes llama.cpp quantize the matmul's input where it did not: a
    quantized weight type multiplies against activations quantized to 8 bits (ggml-cpu's vec_dot_type q8_0,
    q8_1 or q8_K), a float weight against float activations. A float tensor becoming quantized pays its
    role's activation floor."""
    return ggml_types.lookup(written).quantized and not t.type.quantized


def changes(t: TensorInfo, written: str) -> bool:
    """Whether writing `t` as `written` changes it at all (what pays the change floor)."""
    return ggml_types.lookup(written) != t.type


@dataclass
class ProxyFit:
    """Expected KLD of an assignment = change_floor (once, when any tensor changes) + sum over tensors of
    scale[role] x error + floor[role] / (the role's tensor count) for each float tensor that becomes
    quantized (`quantizes_activations`); default_scale for roles without a pass of their own. `n_passes` real
    evaluations fitted it (0: scaled to the priors, `prior_source`).

    Two costs the weight error cannot see, both measured:
    - floor[role]: quantized weights multiply 8-bit activations. On SmolLM2 (F32) the tied head at q8_0 (its
      values already on the q8_0 grid, a weight error of 0) costs KLD 0.0006, and every role at q8_0 2-4x
      what its q4_0 scale predicts from the weight error. Per matmul, so it adds up over roles.
    - change_floor: on a quantized source, changing anything at all costs a fixed amount once. Each role
      alone requantized to q8_0 (a weight error of ~1e-5 per tensor) costs 0.0034-0.0040 on the SmolLM2
      Q4_1 download and 0.0065-0.0070 on Gemma 3 270M Q4_K_M, whatever the role; the whole model at q8_0
      costs 0.0049 and 0.0070: not 7x. About what turning flash attention on costs each model (0.0033,
      0.0064: kv_loss), so the likely cause is the same: any change of the inputs decorrelates llama.cpp's
      f16 rounding in attention from the reference's, and that noise is paid once, not per change."""

    scale: dict[str, float]
    default_scale: float
    n_passes: int
    weighting: str  # the table's weighting: a fit holds only for tables of the same weighting
    passes: list[dict[str, Any]] = field(default_factory=list)  # FitPass.to_dict() + the fitted prediction
    prior_source: str | None = None
    residual: float | None = None  # rms of log(measured / fitted) over the passes
    floor: dict[str, float] = field(default_factory=dict)  # role -> KLD of quantizing all its activations
    change_floor: float = 0.0  # KLD of changing any tensor at all, paid once

    @property
    def source(self) -> str:
        if self.n_passes == 0:
            return f"prior: {self.prior_source}"
        return f"proxy: fitted on {self.n_passes} passes"

    def role_scale(self, role: str) -> float:
        return self.scale.get(role, self.default_scale)

    def tensor_kld(self, table: ErrorTable, info: ModelInfo, tensor: str, candidate: str,
                   counts: Mapping[str, int] | None = None) -> float | None:
        """The tensor's own share (the change floor, paid once per assignment, is not in it)."""
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
        changed = False
        for name, c in types.items():
            k = self.tensor_kld(table, info, name, c, counts)
            t = info.tensor(name)
            if k is None or t is None:
                return None
            total += k
            changed = changed or changes(t, table.errors[name][ggml_types.lookup(c).name].written)
        return total + (self.change_floor if changed else 0.0)

    @classmethod
    def fit(cls, table: ErrorTable, info: ModelInfo, passes: Sequence[FitPass]) -> ProxyFit:
        """Least squares on relative residuals (KLDs span decades), every constant >= 0: one column per role's
        scale (its summed error in each pass), one per role's activation floor where the role was passed at
        two or more errors (the share of its tensors that become quantized), and the change floor where some
        pass changes two or more roles (a single-role pass cannot tell it from the role's own cost). Why per
        role and no finer: a role's tensors share a shape and a place in the block, so their error turns into
        output damage alike, while roles differ by orders of magnitude (a tied head against attn_k).
        default_scale (roles without a pass): the geometric mean of (KLD - change floor) / error."""
        points = _points(table, info, passes)
        if not any(sum(by.values()) > 0 for _, by, _, _ in points):
            raise GgprecError("no evaluation pass to fit the proxy on (each needs a positive KLD and measured "
                              "errors for its tensors)")
        roles = sorted({r for _, by, _, _ in points for r in by})
        floors = [r for r in roles if len({round(by[r], 12) for _, by, _, _ in points if r in by}) >= 2
                  and any(act.get(r, 0.0) > 0 for _, _, act, _ in points)]
        shared = any(len(changed) >= 2 for *_, changed in points)
        columns = [("scale", r) for r in roles] + [("floor", r) for r in floors] + ([("change", "")] if shared else [])
        rows = [[by.get(r, 0.0) if kind == "scale" else act.get(r, 0.0) if kind == "floor" else 1.0
                 for kind, r in columns] for _, by, act, _ in points]
        x = nnls_relative(rows, [p.kld for p, _, _, _ in points])
        values = dict(zip(columns, x, strict=True))
        change = values.get(("change", ""), 0.0)
        logs = [math.log((p.kld - change) / sum(by.values())) for p, by, _, _ in points
                if sum(by.values()) > 0 and p.kld > change]
        default = math.exp(sum(logs) / len(logs)) if logs else 0.0
        fit = cls({}, default, len(points), table.weighting, change_floor=change)
        for (kind, r), v in values.items():
            if kind == "scale" and any(by.get(r, 0.0) > 0 for _, by, _, _ in points):
                fit.scale[r] = v
            elif kind == "floor" and v > 0:
                fit.floor[r] = v
        res = []
        for p, by, act, _ in points:
            pred = change + sum(fit.role_scale(r) * e + fit.floor.get(r, 0.0) * act.get(r, 0.0) for r, e in by.items())
            fit.passes.append({**p.to_dict(), "fitted": pred})
            res.append(math.log(p.kld / pred) if pred > 0 else 0.0)
        fit.residual = math.sqrt(sum(v * v for v in res) / len(res))
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
                "residual": self.residual, "floor": dict(self.floor), "change_floor": self.change_floor,
                "source": self.source}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProxyFit:
        return cls(dict(doc["scale"]), float(doc["default_scale"]), int(doc["n_passes"]), str(doc["weighting"]),
                   list(doc.get("passes", [])), doc.get("prior_source"), doc.get("residual"),
                   dict(doc.get("floor") or {}), float(doc.get("change_floor") or 0.0))


def _points(table: ErrorTable, info: ModelInfo, passes: Sequence[FitPass]
            ) -> list[tuple[FitPass, dict[str, float], dict[str, float], set[str]]]:
    """Per usable pass: (pass, summed error per role, share of each role's tensors whose activations become
    quantized, the roles it changes). A pass with no weight error can still count (the tied head at q8_0 when
    its values already lie on the q8_0 grid: it measures a floor alone)."""
    counts = role_counts(info)
    out = []
    for p in passes:
        by_role: dict[str, float] = {}
        act: dict[str, float] = {}
        changed: set[str] = set()
        for name, c in p.types.items():
            t = info.tensor(name)
            entry = table.errors.get(name, {}).get(ggml_types.lookup(c).name)
            if t is None or entry is None:
                break
            r = fit_role(t, info)
            by_role[r] = by_role.get(r, 0.0) + entry.error
            if changes(t, entry.written):
                changed.add(r)
            if quantizes_activations(t, entry.written):
                act[r] = act.get(r, 0.0) + 1.0 / counts.get(r, 1)
        else:
            if p.kld > 0 and changed:
                out.append((p, by_role, act, changed))
    return out


def nnls_relative(rows: Sequence[Sequence[float]], targets: Sequence[float]) -> list[float]:
    """x >= 0 minimising sum ((rows @ x) / target - 1)^2: Lawson and Hanson's active-set method on the
    columns scaled to unit norm (the columns span decades: errors of 1e-5 beside a constant 1)."""
    import numpy as np

    a = np.asarray(rows, dtype=np.float64) / np.asarray(targets, dtype=np.float64)[:, None]
    b = np.ones(len(targets))
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    a = a / norms
    n = a.shape[1]
    passive = np.zeros(n, dtype=bool)
    x = np.zeros(n)
    tol = 1e-10 * max(1.0, float(np.abs(a).sum()))
    for _ in range(3 * n + 10):
        w = a.T @ (b - a @ x)
        free = ~passive & (w > tol)
        if not free.any():
            break
        passive[int(np.argmax(np.where(free, w, -np.inf)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = float(np.min(x[neg] / (x[neg] - z[neg])))
            x = x + alpha * (z - x)
            passive &= x > tol
    return list(x / norms)
