"""The real evaluation passes a fit takes, and fits kept in the history (measure stack)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..gguf_info import ModelInfo
from ..progress import Progress
from .fit import FitPass, ProxyFit
from .table import ErrorTable, candidate_type, written_type

FIT_TYPES = ("q4_0", "q8_0")  # a coarse and a fine type per role: the scale, and the activation floor
# The whole model at these types: the one pass that changes every role at once, which separates the cost of
# changing anything at all (ProxyFit.change_floor, paid once) from each role's own cost.
WHOLE_TYPES = ("q8_0",)
# The fit's form: 2 since the change floor (fits stored before it priced every quantized role's change per
# role, 7x too high for a whole-model change: not reused).
FIT_FORM = 2
FIT_WINDOWS = 2  # evaluation windows of 512 tokens per pass (kv_loss measures with as many)


def fit_pass_plan(info: ModelInfo, types: Sequence[str] = FIT_TYPES, grouping: str = "role", n_bands: int = 4,
                  whole: Sequence[str] = WHOLE_TYPES) -> list[tuple[Any, str]]:
    """The (group, type) passes a fit takes, in order: each group of `grouping` ("role": one per role and the
    tied head) alone at each of `types`, then every quantizable tensor together at each of `whole`; a pass
    that would change nothing (the group already is that type) is left out. 16 on SmolLM2 Q4_1 and on Gemma 3
    270M Q4_K_M (their tied heads are q8_0 already), 17 on an f16 model."""
    from ..recommend.groups import Group
    from ..sensitivity import sensitivity_groups

    groups = sensitivity_groups(info, grouping, n_bands)
    everything = Group("all", "all", (), tuple(t for g in groups for t in g.tensors))
    todo = [(g, c.name) for c in dict.fromkeys(candidate_type(x) for x in types) for g in groups]
    todo += [(everything, candidate_type(c).name) for c in whole]
    return [(g, c) for g, c in todo if any(written_type(t, candidate_type(c)) != t.type for t in g.tensors)]


def describe_fit_passes(todo: Sequence[tuple[Any, str]], chunks: int | None = FIT_WINDOWS) -> str:
    """One line: how many passes and which (said before they run: minutes of work)."""
    by_type: dict[str, list[str]] = {}
    for g, c in todo:
        by_type.setdefault(c, []).append("the whole model" if g.key == "all" else g.key.split("@")[0])
    which = "; ".join(f"{c}: {', '.join(keys)}" for c, keys in by_type.items())
    return (f"{len(todo)} passes, each quantized by llama.cpp and evaluated against the model on "
            f"{chunks} windows of 512 tokens ({which})")


def run_fit_passes(model: str | os.PathLike[str], info: ModelInfo, types: Sequence[str] = FIT_TYPES,
                   grouping: str = "role", n_bands: int = 4, text: str | None = None, n_ctx: int = 512,
                   chunks: int | None = FIT_WINDOWS, threads: int = 2, progress: Progress | None = None,
                   whole: Sequence[str] = WHOLE_TYPES,
                   imatrix_path: str | os.PathLike[str] | None = None) -> list[FitPass]:
    """The passes of fit_pass_plan, each written by llama.cpp's quantizer (with the importance matrix where
    one is given, as the plans it predicts will be) and evaluated against the model itself (so the KLD is
    relative to the file, like the proxy)."""
    import tempfile
    import warnings

    from ..evaluate import check_text, default_text
    from ..quantize import RequantizeWarning
    from ..sensitivity import probe_pass

    path = Path(model)
    check_text(path, default_text() if text is None else text, n_ctx, chunks)  # before any pass
    todo = fit_pass_plan(info, types, grouping, n_bands, whole)
    passes = []
    parent = path.parent if os.access(path.parent, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="ggprec-proxyfit-", dir=parent) as tmp:
        for i, (g, c) in enumerate(todo):
            if progress:
                progress(f"fit pass {g.key} at {c}", i, len(todo))
            with warnings.catch_warnings():  # requantizing a quantized source is what is measured here
                warnings.simplefilter("ignore", RequantizeWarning)
                _, _, r = probe_pass(path, info, g, c, Path(tmp) / f"fit-{i}.gguf", text, n_ctx, chunks, threads,
                                    imatrix_path)
            passes.append(FitPass(f"{g.key} at {c}", {t.name: c for t in g.tensors}, r.kld_mean))
    if progress:
        progress("done", len(todo), len(todo))
    return passes


def stored_passes(model: str | os.PathLike[str], db: str | os.PathLike[str] | None = None,
                  imatrix_path: str | os.PathLike[str] | None = None) -> list[FitPass]:
    """Passes `ggprec sensitivity` stored for this very file (sha256) against itself: every group at every
    type it measured (baseline 0, so each KLD is relative to the file, like the proxy), quantized with the same
    importance matrix (or none)."""
    from ..hashing import model_sha256
    from ..store import Store

    path = Path(model)
    out: list[FitPass] = []
    with Store(db) as s:
        rows = s.query(kind="sensitivity", model=str(path.resolve()))
        if not rows:
            return out
        sha = model_sha256(path)
        imx_sha = None if imatrix_path is None else model_sha256(imatrix_path)
        seen: set[tuple[frozenset[str], str]] = set()
        for row in rows:  # newest first: an identical older pass is skipped
            res = row.results
            ref = row.settings.get("reference") or res.get("reference") or ""
            if (row.model_sha256 != sha or res.get("baseline_kld") != 0.0 or Path(ref).resolve() != path.resolve()
                    or row.settings.get("imatrix_sha256") != imx_sha):  # quantized as the fit's passes are
                continue
            for item in [*res.get("groups", []), *(res.get("also_groups") or [])]:
                for t, k in (item.get("kld_at") or {}).items():
                    key = (frozenset(item["tensors"]), t)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(FitPass(f"{item['key']} at {t} (history #{row.id})",
                                       {n: t for n in item["tensors"]}, float(k)))
    return out


def find_fit(model: str | os.PathLike[str], weighting: str = "uniform",
             imatrix_path: str | os.PathLike[str] | None = None,
             db: str | os.PathLike[str] | None = None) -> tuple[ProxyFit, int] | None:
    """The newest stored fit of this model file (sha256) for this weighting (and importance matrix), with its
    history id; None when there is none."""
    from ..hashing import model_sha256
    from ..store import Store

    path = Path(model)
    with Store(db) as s:
        rows = s.query(kind="proxy-fit", model=str(path.resolve()))
        if not rows:
            return None
        sha = model_sha256(path)
        imx_sha = None if imatrix_path is None else model_sha256(imatrix_path)
        for row in rows:
            rec = row.results
            if (row.model_sha256 == sha and rec["weighting"] == weighting and rec["imatrix_sha256"] == imx_sha
                    and row.settings.get("form") == FIT_FORM):
                return ProxyFit.from_dict(rec), row.id
    return None


def model_fit(model: str | os.PathLike[str], info: ModelInfo, table: ErrorTable, probe_type: str = "q4_0",
              imatrix_path: str | os.PathLike[str] | None = None, db: str | os.PathLike[str] | None = None,
              use_stored: bool = True) -> tuple[ProxyFit, int | None]:
    """The fit to use for this model and table: the newest stored one of the same weighting (with its
    history id), else the prior at `probe_type` spread by the proxy (id None). What recommend calls."""
    found = find_fit(model, table.weighting, imatrix_path, db) if use_stored else None
    if found is not None:
        return found
    return ProxyFit.from_prior(table, info, probe_type), None


