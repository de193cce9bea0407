"""`ggprec sensitivity --proxy`: every group's expected KLD from one streaming pass."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..history import save_proxy_fit
from ..progress import Progress
from ..store import Store
from .fit import ProxyFit
from .passes import FIT_FORM, FIT_TYPES, model_fit, run_fit_passes, stored_passes
from .table import MAX_ROWS, ErrorTable, candidate_type, error_table, load_imatrix


@dataclass
class ProxyGroup:
    key: str
    role: str
    layers: list[int]
    tensors: list[str]
    n_params: int
    written: str  # the types llama.cpp writes for the probe
    error: float | None  # summed proxy error of the group's tensors at the probe type
    kld: float | None  # expected KLD increase at the probe type
    kld_at: dict[str, float | None] = field(default_factory=dict)  # at every measured type
    error_at: dict[str, float | None] = field(default_factory=dict)
    source: str = ""  # of the expected KLDs: `proxy: fitted on N passes` or `prior: ...`


@dataclass
class ProxySensitivity:
    model: str
    probe_type: str
    also: list[str]
    grouping: str
    weighting: str
    source: str  # where the expected KLDs come from: `proxy: fitted on N passes` or `prior: ...`
    groups: list[ProxyGroup]
    fit: ProxyFit
    table: ErrorTable
    seconds_proxy: float
    seconds_fit: float = 0.0
    fit_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        return [g.key for g in sorted(self.groups, key=lambda g: (-(g.kld if g.kld is not None else -1.0), g.key))]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "probe_type": self.probe_type, "also": self.also, "grouping": self.grouping,
                "weighting": self.weighting, "source": self.source, "groups": [asdict(g) for g in self.groups],
                "ranking": self.ranking(), "fit": self.fit.to_dict(), "fit_id": self.fit_id,
                "proxy": self.table.describe(), "max_rows": self.table.max_rows,
                "seconds_proxy": self.seconds_proxy, "seconds_fit": self.seconds_fit, "notes": self.notes}



def proxy_sensitivity(model: str | os.PathLike[str], probe_type: str = "q4_0", also: Sequence[str] = (),
                      grouping: str = "role-layer", n_bands: int = 4,
                      imatrix_path: str | os.PathLike[str] | None = None,
                      fit: bool = False, threads: int | None = None, max_rows: int | None = MAX_ROWS,
                      text: str | None = None, n_ctx: int = 512, chunks: int | None = 4, use_stored: bool = True,
                      progress: Progress | None = None, db: str | os.PathLike[str] | None = None) -> ProxySensitivity:
    """Every group's expected KLD at the probe (and `also`) types from one streaming pass of the proxy.
    Expected KLD: `fit` runs the evaluation passes now (run_fit_passes, one per role) and stores the fit;
    otherwise the newest stored fit of this model and weighting; otherwise the prior spread by the proxy."""
    from ..gguf_info import read_gguf
    from ..sensitivity import sensitivity_groups

    path = Path(model)
    info = read_gguf(path)
    probe = candidate_type(probe_type).name
    extra = [c for c in dict.fromkeys(candidate_type(a).name for a in also) if c != probe]
    groups = sensitivity_groups(info, grouping, n_bands)
    imatrix = None if imatrix_path is None else load_imatrix(imatrix_path, info)
    names = list(dict.fromkeys(t.name for g in groups for t in g.tensors))
    table = error_table(path, info, [probe, *extra], imatrix, threads, progress, max_rows, tensors=names)
    notes = list(table.notes)
    t0 = time.perf_counter()
    fit_id = None
    if fit:
        types = list(dict.fromkeys([probe, *FIT_TYPES[1:]]))
        passes = run_fit_passes(path, info, types, "role", n_bands, text, n_ctx, chunks, threads or 2, progress,
                                imatrix_path=imatrix_path)
        if use_stored:
            passes += stored_passes(path, db, imatrix_path)
        the_fit = ProxyFit.fit(table, info, passes)
        with Store(db) as store:
            fit_id = save_proxy_fit(store, the_fit, path, probe, max_rows, imatrix_path, FIT_FORM)
    else:
        the_fit, fit_id = model_fit(path, info, table, probe, imatrix_path, db, use_stored)
        if fit_id is None:
            notes.append("no fit stored for this model and weighting: the prior spread by the proxy "
                         "(a fit, two evaluation passes per role, is kept once it is run)")
    seconds_fit = time.perf_counter() - t0
    rows = []
    for g in groups:
        tn = [t.name for t in g.tensors]
        written = sorted({table.errors[n][probe].written for n in tn if probe in table.errors[n]})
        kld_at = {c: the_fit.group_kld(table, info, tn, c) for c in [probe, *extra]}
        error_at = {c: table.group_error(tn, c) for c in [probe, *extra]}
        rows.append(ProxyGroup(g.key, g.role, list(g.layers), tn, g.n_params, "/".join(written), error_at[probe],
                               kld_at[probe], kld_at, error_at, the_fit.source))
    return ProxySensitivity(str(path), probe, extra, grouping, table.weighting, the_fit.source, rows, the_fit, table,
                            table.seconds, seconds_fit, fit_id, notes)


def render(res: ProxySensitivity, console: Any) -> None:
    """The groups ranked by expected KLD, each figure with its source."""
    from rich.table import Table

    order = res.ranking()
    by_key = {g.key: g for g in res.groups}
    t = Table(title=f"sensitivity by proxy: one group at {res.probe_type} ({res.grouping}), {res.weighting} weights")
    for name in ("rank", "group", "written", f"error at {res.probe_type}", f"KLD + at {res.probe_type}",
                 *(f"KLD + at {a}" for a in res.also)):
        t.add_column(name, justify="left" if name in ("group", "written") else "right")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for i, key in enumerate(order, 1):
        g = by_key[key]
        t.add_row(str(i), g.key, g.written, fmt(g.error, ".3e"), fmt(g.kld, ".3e"),
                  *(fmt(g.kld_at.get(a), ".3e") for a in res.also))
    t.caption = f"expected KLD: {res.source}"
    console.print(t)
    console.print(f"proxy: {res.table.describe()}", highlight=False)
    fit = res.fit
    if fit.n_passes:
        where = f" (history #{res.fit_id})" if res.fit_id is not None else ""
        console.print(f"fit{where}: {fit.source}, rms log error {fit.residual:.2f}; scale per role: "
                      + ", ".join(f"{r} {c:.3g}" for r, c in sorted(fit.scale.items()))
                      + f"; other roles {fit.default_scale:.3g}", highlight=False)
    for n in res.notes:
        console.print(f"- {n}", highlight=False)
