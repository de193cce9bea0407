"""Printers over result records, the llama-bench way: one list of flat records (dicts), several printers
(rich table, JSON, CSV, Markdown) and PNG plots with the Pareto front marked.

A record is one row of a comparison: a profile and what was measured for it. Missing values are None
and print as "-" (empty in CSV). The column table below is the one place that says how each field is
named, headed and formatted; every printer reads it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import atomic_output

Record = dict[str, Any]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str  # format spec for the value, e.g. ".1f"; "" means str()
    help: str

    def render(self, record: Record) -> str:
        value = record.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, self.fmt) if self.fmt else str(value)


# The columns of the comparison table, in print order. Ratios are candidate / baseline.
COLUMNS: tuple[Column, ...] = (
    Column("profile", "profile", "", "profile name"),
    Column("file_mb", "file MiB", ".1f", "size of the GGUF file, MiB"),
    Column("memory_mb", "mem MiB", ".1f", "memory llama.cpp allocated (model + KV + compute buffers), MiB"),
    Column("memory_saved_pct", "mem saved %", "+.1f", "memory saved vs the baseline, percent"),
    Column("pp_tps", "pp tok/s", ".1f", "prompt processing speed, median"),
    Column("pp_ratio", "pp x", ".2f", "pp tok/s / baseline pp tok/s"),
    Column("tg_tps", "tg tok/s", ".1f", "generation speed, median"),
    Column("tg_ratio", "tg x", ".2f", "tg tok/s / baseline tg tok/s"),
    Column("tg_vs_expected", "tg / exp", ".2f", "tg tok/s / expected tg tok/s (ggprec.speed; source in the JSON)"),
    Column("kld_mean", "KLD mean", ".4f", "mean KL divergence from the reference, nats per token"),
    Column("kld_p99", "KLD p99", ".4f", "99th percentile of the per-token KL divergence"),
    Column("kld_vs_baseline", "KLD x base", ".2f", "KLD mean / baseline KLD mean"),
    Column("top1_pct", "top-1 %", ".1f", "tokens whose most likely next token equals the reference's"),
    Column("top1_vs_baseline", "top-1 vs base", "+.1f", "top-1 minus the baseline's, percentage points"),
    Column("ppl", "PPL", ".2f", "perplexity of the candidate on the evaluation text"),
)


def _columns(columns: Sequence[Column] | None) -> Sequence[Column]:
    return COLUMNS if columns is None else columns


def to_json(records: Sequence[Record]) -> str:
    """Every field of every record, raw values."""
    return json.dumps(list(records), indent=2, default=str)


def to_csv(records: Sequence[Record], columns: Sequence[Column] | None = None) -> str:
    """One header row of column keys, then raw values (full precision, empty for missing)."""
    cols = _columns(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.key for c in cols])
    for r in records:
        writer.writerow(["" if r.get(c.key) is None else r.get(c.key) for c in cols])
    return buf.getvalue()


def to_markdown(records: Sequence[Record], columns: Sequence[Column] | None = None) -> str:
    """A GitHub Markdown table with formatted values; numbers right-aligned."""
    cols = _columns(columns)
    lines = ["| " + " | ".join(c.header for c in cols) + " |",
             "|" + "|".join("---" if not c.fmt else "---:" for c in cols) + "|"]
    for r in records:
        lines.append("| " + " | ".join(c.render(r) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_table(records: Sequence[Record], columns: Sequence[Column] | None = None, title: str | None = None,
             highlight: str | None = None) -> Any:
    """A rich Table; the row whose profile is `highlight` (the baseline) is bold."""
    from rich.table import Table

    cols = _columns(columns)
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c.header, justify="right" if c.fmt else "left", no_wrap=True)
    for r in records:
        table.add_row(*(c.render(r) for c in cols), style="bold" if r.get("profile") == highlight else None)
    return table


# --- Pareto front ------------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]], maximize_y: bool = False) -> list[int]:
    """Indices of the points no other point dominates, sorted by x. x is always minimized (a loss such
    as KLD); y is minimized (size) or, with maximize_y, maximized (speed). A point dominates another
    when it is no worse on both axes and better on at least one; equal points are all kept."""
    sign = -1.0 if maximize_y else 1.0
    pts = [(x, sign * y) for x, y in points]
    front = []
    for i, (xi, yi) in enumerate(pts):
        dominated = any(xj <= xi and yj <= yi and (xj < xi or yj < yi) for j, (xj, yj) in enumerate(pts) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1]))


@dataclass(frozen=True)
class PlotSpec:
    filename: str
    y_key: str
    y_label: str
    maximize_y: bool
    title: str


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("size_vs_kld.png", "file_mb", "file size (MiB)", False, "Size vs accuracy loss"),
    PlotSpec("tg_vs_kld.png", "tg_tps", "generation speed (tok/s)", True, "Generation speed vs accuracy loss"),
)


def _plottable(records: Sequence[Record], y_key: str) -> list[Record]:
    return [r for r in records if r.get("kld_mean") is not None and r.get(y_key) is not None]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 0.25 * max(abs(a), abs(b), 1e-12)


def plot(records: Sequence[Record], spec: PlotSpec, path: Path, subtitle: str | None = None,
         baseline: str | None = None) -> Path:
    """One scatter plot, KLD mean on x (symlog: the reference itself sits at 0), the Pareto front as a
    line, every point labelled with its profile name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _plottable(records, spec.y_key)
    xs = [float(r["kld_mean"]) for r in rows]
    ys = [float(r[spec.y_key]) for r in rows]
    front = pareto_front(list(zip(xs, ys, strict=True)), maximize_y=spec.maximize_y)
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    try:
        on_front = set(front)
        ax.scatter([xs[i] for i in range(len(xs)) if i not in on_front],
                   [ys[i] for i in range(len(ys)) if i not in on_front], color="tab:gray", label="dominated", zorder=3)
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], color="tab:red", label="Pareto front", zorder=4)
        if len(front) > 1:
            ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:red", linestyle="--", zorder=2)
        placed: list[tuple[float, float]] = []
        for x, y, r in zip(xs, ys, rows, strict=True):
            name = r["profile"] + (" (baseline)" if r["profile"] == baseline else "")
            # Stack the labels of points that nearly coincide (same file, different KV cache) instead of
            # printing them over each other.
            near = sum(1 for px, py in placed if _close(px, x) and _close(py, y))
            placed.append((x, y))
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5 + 11 * near), fontsize=8)
        smallest = min((x for x in xs if x > 0), default=1e-4)
        ax.set_xscale("symlog", linthresh=max(smallest / 2, 1e-6))
        ax.set_xlabel("KL divergence from the reference, mean (lower is better)")
        better = "higher" if spec.maximize_y else "lower"
        ax.set_ylabel(f"{spec.y_label} ({better} is better)")
        ax.set_title(spec.title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        with atomic_output(path, force=True) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def _make_dir(out: Path) -> Path:
    from .errors import GgprecError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GgprecError(f"{out}: cannot create the output directory ({e.strerror})") from None
    return out


def write_plots(records: Sequence[Record], out_dir: str | Path, subtitle: str | None = None,
                baseline: str | None = None) -> list[Path]:
    """size_vs_kld.png and tg_vs_kld.png into out_dir (created if needed)."""
    _make_dir(Path(out_dir))
    return [plot(records, spec, Path(out_dir) / spec.filename, subtitle=subtitle, baseline=baseline)
            for spec in PLOTS]


# Text outputs of `write_all`, by file name.
WRITERS: dict[str, Callable[[Sequence[Record]], str]] = {
    "compare.json": to_json,
    "compare.csv": to_csv,
    "compare.md": to_markdown,
}


def write_all(records: Sequence[Record], out_dir: str | Path, subtitle: str | None = None,
              baseline: str | None = None) -> list[Path]:
    """JSON, CSV, Markdown and the PNG plots into out_dir (created if needed); returns the paths."""
    out = _make_dir(Path(out_dir))
    paths = []
    for name, writer in WRITERS.items():
        with atomic_output(out / name, force=True) as tmp:
            tmp.write_text(writer(records))
        paths.append(out / name)
    return paths + write_plots(records, out, subtitle=subtitle, baseline=baseline)
