"""`ggprec sensitivity`: which tensor groups hurt when quantized.

For each group (role, role x layer band, or layer), llama.cpp's quantizer writes a copy of the model in
which only that group is in the probe type and every other tensor keeps the source's precision; the copy
is evaluated against the reference (whose log-probs are computed once and cached by ggprec.evaluate), and
deleted. One quantizer pass and one evaluation per group is the least the measurement allows: the damage
of a group can only be seen with that group alone quantized. On SmolLM2 the evaluation is almost all of
a pass (about 6.6 s for 2 windows of 512 tokens on 2 cores; writing the 540 MB F32 copy takes 0.6 s), so
the count of passes is what sets the run time.

Further probe types (`also`, e.g. q8_0) give recommend a second point on each group's loss-vs-bits curve,
instead of stretching the q4_0 probe to every type by one fixed law (which overrated F16 near 8 bits).
They can be measured on coarser groups (`also_grouping="role"`: 9 passes instead of 29 on SmolLM2), since
the slope varies little between the layer bands of one role while the level varies a lot.

The KLD increase per group, top-1 loss and KLD per MiB saved are ranked and drawn as a layer x role heatmap;
the CLI keeps them in the history (`history.save_sensitivity`: kind 'sensitivity', keyed by the model's
sha256) where `ggprec recommend` finds them.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import GgprecError
from .ggml_types import weight_type
from .gguf_info import ModelInfo, read_gguf
from .progress import Progress
from .recommend import Group, layer_bands, make_groups, quantizable
from .settings import RuntimeSettings
from .units import MIB

GROUPINGS = ("role", "role-layer", "layer")

# progress(stage, done, total): stage is the pass about to run ("attn_q@0-7 at q4_0"), done of total passes.


@dataclass
class GroupResult:
    key: str
    role: str
    layers: list[int]
    tensors: list[str]
    n_params: int
    bytes_saved: int  # source bytes - bytes in the probe type (as llama.cpp writes it)
    probe_written: str  # the type the file holds (a fallback when the probe's block does not divide rows)
    kld: float  # mean KLD increase over the baseline
    kld_se: float
    top1_loss: float  # baseline top-1 agreement - this group's
    # KLD increase at every probed type (the probe type and the --also types): recommend fits each group's
    # loss-vs-bits curve through these points instead of stretching one probe by a fixed law.
    kld_at: dict[str, float] = field(default_factory=dict)

    @property
    def kld_per_mib(self) -> float:
        return self.kld / (self.bytes_saved / MIB) if self.bytes_saved > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kld_per_mib": self.kld_per_mib}


@dataclass
class SensitivityResult:
    model: str
    reference: str
    probe_type: str
    grouping: str
    n_ctx: int
    chunks: int | None
    baseline_kld: float
    baseline_top1: float
    groups: list[GroupResult]
    seconds: float
    record_id: int | None = None
    heatmap: str | None = None
    notes: list[str] = field(default_factory=list)
    also: list[str] = field(default_factory=list)  # further probe types
    also_grouping: str | None = None  # the grouping the further types were measured on (None: `grouping`)
    also_groups: list[GroupResult] = field(default_factory=list)  # those groups, when coarser than `groups`

    def ranking(self) -> list[str]:
        """Group keys, most damaging first."""
        return [g.key for g in sorted(self.groups, key=lambda g: (-g.kld, g.key))]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reference": self.reference, "probe_type": self.probe_type,
                "grouping": self.grouping, "n_ctx": self.n_ctx, "chunks": self.chunks,
                "also": self.also, "also_grouping": self.also_grouping,
                "also_groups": [g.to_dict() for g in self.also_groups],
                "baseline_kld": self.baseline_kld, "baseline_top1": self.baseline_top1,
                "groups": [g.to_dict() for g in self.groups], "ranking": self.ranking(),
                "seconds": self.seconds, "record_id": self.record_id, "heatmap": self.heatmap, "notes": self.notes}


def sensitivity_groups(info: ModelInfo, grouping: str, n_bands: int = 4) -> list[Group]:
    """role: one group per role across all layers; role-layer: role x layer band (recommend's groups);
    layer: every quantizable tensor of one layer band. token_embd (the tied head) and output stand alone."""
    if grouping not in GROUPINGS:
        raise GgprecError(f"--groups must be one of {', '.join(GROUPINGS)}, not '{grouping}'")
    if grouping == "role":
        return make_groups(info, n_bands=1)
    if grouping == "role-layer":
        return make_groups(info, n_bands=n_bands)
    singles = [g for g in make_groups(info, n_bands=1) if not g.layers]
    bands = layer_bands(info.hparams.n_layer, n_bands * 2)  # layer groups: finer bands, all roles together
    out = list(singles)
    for a, b in bands:
        ts = tuple(t for t in info.tensors if quantizable(t) and t.layer is not None and a <= t.layer <= b)
        if ts:
            out.append(Group(f"layers@{a}-{b}", "layers", tuple(range(a, b + 1)), ts))
    return out


def _probe_profile(info: ModelInfo, group: Group, probe: str, name: str) -> Any:
    """Only the group's tensors in the probe type; everything else as the source holds it."""
    from .profile import Profile, Rule

    rules = [Rule.exact(t.name, probe) for t in group.tensors]
    keep = {}
    for t in info.tensors:
        if quantizable(t) and t not in group.tensors:
            keep.setdefault(t.type.name, []).append(t.name)
    # The default covers the most common source type; other source types get exact rules.
    default = max(keep, key=lambda k: len(keep[k])) if keep else "f32"
    for type_name, names in keep.items():
        if type_name != default:
            rules += [Rule.exact(n, type_name) for n in names]
    return Profile(name=name, description=f"sensitivity probe: {group.key} at {probe}", rules=tuple(rules),
                   default=default)


def measure_sensitivity(model: str | Path, reference: str | Path | None = None, probe_type: str = "q4_0",
                        grouping: str = "role-layer", text: str | None = None, n_ctx: int = 512,
                        chunks: int | None = 4, n_bands: int = 4, threads: int = 2,
                        heatmap: str | Path | None = None, progress: Progress | None = None,
                        db: str | Path | None = None, also: tuple[str, ...] | list[str] = (),
                        also_grouping: str | None = None, reuse: bool = False,
                        imatrix_path: str | Path | None = None) -> SensitivityResult:
    """Measure every group's damage at probe_type, and at each type in `also` (one more quantizer pass and
    evaluation per group and type) on the `also_grouping` groups (default: the same groups; "role" measures
    the further types per role only, which is enough to fit each role's loss-vs-bits slope: on SmolLM2 the
    slopes of one role's layer bands agree to within about 0.2 bits^-1). See the module doc. db: the
    history (default: Store's). reuse: take the KLD of passes already stored for this model, reference,
    text, context and windows instead of repeating them (llama.cpp's quantizer and evaluation are
    deterministic at fixed threads: repeated passes give every KLD equal to the last digit). imatrix_path:
    every pass is quantized with this importance matrix (checked against the model first; passes stored
    with another importance matrix, or none, are not reused)."""
    import time

    from .evaluate import evaluate

    t0 = time.perf_counter()
    model, ref = Path(model), Path(reference) if reference is not None else Path(model)
    probe = weight_type(probe_type).name
    extra = [weight_type(t).name for t in also if weight_type(t).name != probe]
    info = read_gguf(model)
    if any(t.type.quantized for t in info.tensors if quantizable(t)):
        raise GgprecError(f"{model}: holds quantized weights; measure sensitivity on an f32/f16/bf16 model "
                          "(e.g. `ggprec quantize MODEL --profile f32 -o MODEL-f32.gguf`)")
    from .evaluate import check_text, default_text

    check_text(ref, default_text() if text is None else text, n_ctx, chunks)  # before any pass
    if imatrix_path is not None:
        from .imatrix_file import check_imatrix, read_imatrix

        check_imatrix(read_imatrix(imatrix_path), info)
    groups = sensitivity_groups(info, grouping, n_bands)
    also_grouping = None if also_grouping in (None, grouping) else also_grouping
    coarse = sensitivity_groups(info, also_grouping, n_bands) if also_grouping else groups
    settings = RuntimeSettings(n_threads=threads)
    # The model against itself is exactly 0 KLD and 100% top-1 (llama.cpp is deterministic for fixed
    # threads), so the baseline pass is only needed for a separate reference.
    base_kld, base_top1 = 0.0, 1.0
    if ref.resolve() != model.resolve():
        base = evaluate(model, ref, text=text, n_ctx=n_ctx, chunks=chunks, settings=settings)
        base_kld, base_top1 = base.kld_mean, base.top1
    results: list[GroupResult] = []
    notes: list[str] = []
    # A further type is measured only on groups whose rows its block divides: elsewhere llama.cpp would
    # write its fallback type, and the point would be filed under the wrong type.
    passes = [(g, probe) for g in groups] + [(g, t) for t in extra for g in coarse if g.accepts(weight_type(t))]
    measured: dict[tuple[str, str], Any] = {}
    known = _stored_passes(model, ref, text, n_ctx, chunks, db, imatrix_path) if reuse else {}
    with tempfile.TemporaryDirectory(prefix="ggprec-sens-", dir=model.parent if _writable(model.parent)
                                     else None) as tmp:
        for i, (g, ptype) in enumerate(passes):
            names = frozenset(t.name for t in g.tensors)
            if (names, ptype) in known:
                measured[g.key, ptype] = _planned(info, g, ptype) + (known[names, ptype],)
                continue
            if progress:
                progress(f"{g.key} at {ptype}", i, len(passes))
            measured[g.key, ptype] = _probe_pass(model, ref, info, g, ptype, Path(tmp) / f"probe-{i}.gguf", text,
                                                 n_ctx, chunks, settings, threads, imatrix_path)
    for g in groups:
        types, saved, r = measured[g.key, probe]
        if types != {probe}:
            notes.append(f"{g.key}: llama.cpp writes {', '.join(sorted(types))} for {probe} (rows not divisible)")
        kld_at = {t: measured[g.key, t][2].kld_mean - base_kld for t in [probe, *extra] if (g.key, t) in measured}
        results.append(GroupResult(g.key, g.role, list(g.layers), [t.name for t in g.tensors], g.n_params,
                                   saved, "/".join(sorted(types)), r.kld_mean - base_kld, r.kld_mean_se,
                                   base_top1 - r.top1, kld_at))
    if progress:
        progress("done", len(passes), len(passes))
    if imatrix_path is not None:
        notes.append(f"every pass quantized with the importance matrix {imatrix_path}")
    also_results = []
    if also_grouping:
        for g in coarse:
            kld_at = {t: measured[g.key, t][2].kld_mean - base_kld for t in extra if (g.key, t) in measured}
            first = next((t for t in extra if (g.key, t) in measured), None)
            if first is None:
                continue
            types, saved, r = measured[g.key, first]
            also_results.append(GroupResult(g.key, g.role, list(g.layers), [t.name for t in g.tensors], g.n_params,
                                            saved, "/".join(sorted(types)), r.kld_mean - base_kld, r.kld_mean_se,
                                            base_top1 - r.top1, kld_at))
    res = SensitivityResult(str(model), str(ref), probe, grouping, n_ctx, chunks, base_kld, base_top1,
                            results, time.perf_counter() - t0, notes=notes, also=extra,
                            also_grouping=also_grouping if extra else None, also_groups=also_results)
    if heatmap is not None:
        res.heatmap = str(write_heatmap(res, info, heatmap))
    return res


def _stored_passes(model: Path, ref: Path, text: str | None, n_ctx: int, chunks: int | None,
                   db: str | Path | None, imatrix_path: str | Path | None = None
                   ) -> dict[tuple[frozenset[str], str], Any]:
    """Passes stored by earlier runs on the same model file (sha256), reference, text, context and windows:
    (tensor names, type) -> the evaluation's KLD, its standard error and top-1 (NaN where a run stored the
    KLD only: the further types after the first on coarse groups)."""
    from types import SimpleNamespace

    from .hashing import model_sha256
    from .history import imatrix_key, text_key
    from .store import Store

    text_sha = text_key(text)
    imx_sha = imatrix_key(imatrix_path)
    nan = float("nan")
    out: dict[tuple[frozenset[str], str], Any] = {}
    with Store(db) as s:
        rows = s.query(kind="sensitivity", model=str(model))
        if not rows:
            return out
        sha = model_sha256(model)
        for row in reversed(rows):  # oldest first, so the newest wins
            st, res = row.settings, row.results
            if (row.model_sha256 != sha or st.get("text_sha256") != text_sha or st.get("n_ctx") != n_ctx
                    or st.get("chunks") != chunks or Path(st.get("reference", "")).resolve() != ref.resolve()
                    or res.get("baseline_kld") != 0.0 or st.get("imatrix_sha256") != imx_sha):
                continue
            for item in [*res.get("groups", []), *(res.get("also_groups") or [])]:
                names = frozenset(item["tensors"])
                first = item["probe_written"] if item["probe_written"] in item.get("kld_at", {}) else None
                for t, k in item.get("kld_at", {}).items():
                    full = t == first or (t == res.get("probe_type") and item in res.get("groups", []))
                    out[names, t] = SimpleNamespace(kld_mean=float(k), kld_mean_se=item["kld_se"] if full else nan,
                                                    top1=1.0 - item["top1_loss"] if full else nan)
    return out


def _planned(info: ModelInfo, g: Group, ptype: str) -> tuple[set[str], int]:
    """The types llama.cpp writes for g at ptype and the bytes that saves (from the plan, no quantizing)."""
    from .plan import resolve_plan

    plan = resolve_plan(info, _probe_profile(info, g, ptype, f"probe-{ptype}"))
    written = {tp.name: tp for tp in plan.tensors}
    return {written[t.name].type.name for t in g.tensors}, sum(t.n_bytes - written[t.name].n_bytes for t in g.tensors)


def _probe_pass(model: Path, ref: Path, info: ModelInfo, g: Group, ptype: str, out: Path, text: str | None,
                n_ctx: int, chunks: int | None, settings: RuntimeSettings, threads: int,
                imatrix_path: str | Path | None = None) -> tuple[set[str], int, Any]:
    """One group at one type: llama.cpp writes the copy (with the importance matrix where one is given), it is
    evaluated and deleted. Returns the types written for the group, the bytes it saves and the evaluation."""
    from .evaluate import evaluate
    from .plan import resolve_plan
    from .quantize import quantize

    plan = resolve_plan(info, _probe_profile(info, g, ptype, f"probe-{ptype}"))
    written = {tp.name: tp for tp in plan.tensors}
    types = {written[t.name].type.name for t in g.tensors}
    saved = sum(t.n_bytes - written[t.name].n_bytes for t in g.tensors)
    imatrix = None
    if imatrix_path is not None:
        from .imatrix_file import read_imatrix

        imatrix = read_imatrix(imatrix_path)
    quantize(model, plan, out, threads=threads, force=True, imatrix=imatrix, imatrix_path=imatrix_path)
    try:
        r = evaluate(out, ref, text=text, n_ctx=n_ctx, chunks=chunks, settings=settings)
    finally:
        out.unlink(missing_ok=True)
    return types, saved, r


def probe_pass(model: Path, info: ModelInfo, group: Group, probe: str, out: Path, text: str | None = None,
               n_ctx: int = 512, chunks: int | None = 4, threads: int = 2,
               imatrix_path: str | Path | None = None) -> tuple[set[str], int, Any]:
    """One group alone at one type against the model itself (what ggprec.proxy fits on): llama.cpp writes
    the copy to `out` (any source type: a quantized model is requantized), it is evaluated and deleted.
    Returns the types written for the group, the bytes it saves and the evaluation."""
    settings = RuntimeSettings(n_threads=threads)
    return _probe_pass(model, model, info, group, probe, out, text, n_ctx, chunks, settings, threads, imatrix_path)


def _writable(d: Path) -> bool:
    import os

    return os.access(d, os.W_OK)


def heat_matrix(res: SensitivityResult, n_layer: int) -> tuple[list[str], list[list[float | None]]]:
    """Rows: roles (token_embd/output as their own rows); columns: layers. A band's KLD increase is spread
    evenly over its layers so that bands of different widths compare per layer."""
    from .roles import ROLE_ORDER

    roles = sorted({g.role for g in res.groups}, key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else 99)
    matrix: list[list[float | None]] = [[None] * max(n_layer, 1) for _ in roles]
    for g in res.groups:
        row = matrix[roles.index(g.role)]
        cols = g.layers or list(range(max(n_layer, 1)))
        for c in cols:
            row[c] = g.kld / len(cols)
    return roles, matrix


def write_heatmap(res: SensitivityResult, info: ModelInfo, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .fileio import atomic_output

    roles, matrix = heat_matrix(res, info.hparams.n_layer)
    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * data.shape[1] + 3), 0.45 * len(roles) + 2))
    im = ax.imshow(data, aspect="auto", cmap="magma_r", interpolation="nearest")
    ax.set_yticks(range(len(roles)), labels=roles)
    ax.set_xlabel("layer (token_embd/output rows: whole tensor spread over the columns)")
    ax.set_title(f"KLD increase per layer, one group at {res.probe_type} ({Path(res.model).name})")
    fig.colorbar(im, ax=ax, label="mean KLD increase per layer")
    fig.tight_layout()
    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def pass_rows(res: SensitivityResult) -> tuple[list[dict[str, Any]], tuple[Any, ...]]:
    """The groups as SensitivityPass rows, most damaging first, with one more column per --also type
    ('-' where that type was not probed for the group), and the columns to print them."""
    from .records import Column, SensitivityPass

    order = {k: i for i, k in enumerate(res.ranking())}
    rows = []
    for g in sorted(res.groups, key=lambda g: order[g.key]):
        row = SensitivityPass.from_group(g, rank=order[g.key] + 1).to_dict()
        rows.append({**row, **{f"kld_at:{a}": g.kld_at.get(a) for a in res.also}})
    extra = tuple(Column(f"kld_at:{a}", f"KLD + at {a}", ".6f", "nats") for a in res.also)
    return rows, SensitivityPass.columns() + extra


def render(res: SensitivityResult, console: Any) -> None:
    from .printers import to_table

    rows, columns = pass_rows(res)
    console.print(to_table(rows, columns, title=f"sensitivity: one group at {res.probe_type} ({res.grouping}), "
                                                f"baseline KLD {res.baseline_kld:.5f}, {res.seconds:.0f} s"))
    for n in res.notes:
        console.print(f"- {n}")
    if res.heatmap:
        console.print(f"heatmap: {res.heatmap}")
    if res.record_id is not None:
        console.print(f"stored in the history as #{res.record_id} (recommend uses it for this model)")
