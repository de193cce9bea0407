"""The files of a comparison: JSON, CSV and Markdown tables (ggprec.printers over CompareRecords) and PNG
plots of size and speed against accuracy loss, with the Pareto front marked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import atomic_output
from .printers import get_value, to_csv, to_json, to_markdown

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


def _plottable(records: Sequence[Any], y_key: str) -> list[Any]:
    return [r for r in records if get_value(r, "kld_mean") is not None and get_value(r, y_key) is not None]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 0.25 * max(abs(a), abs(b), 1e-12)


def plot(records: Sequence[Any], spec: PlotSpec, path: Path, subtitle: str | None = None,
         baseline: str | None = None) -> Path:
    """One scatter plot, KLD mean on x (symlog: the reference itself sits at 0), the Pareto front as a
    line, every point labelled with its profile name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _plottable(records, spec.y_key)
    xs = [float(get_value(r, "kld_mean")) for r in rows]
    ys = [float(get_value(r, spec.y_key)) for r in rows]
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
            profile = get_value(r, "profile")
            name = f"{profile}" + (" (baseline)" if profile == baseline else "")
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


def write_plots(records: Sequence[Any], out_dir: str | Path, subtitle: str | None = None,
                baseline: str | None = None) -> list[Path]:
    """size_vs_kld.png and tg_vs_kld.png into out_dir (created if needed)."""
    _make_dir(Path(out_dir))
    return [plot(records, spec, Path(out_dir) / spec.filename, subtitle=subtitle, baseline=baseline)
            for spec in PLOTS]


# Text outputs of `write_all`, by file name.
WRITERS: dict[str, Callable[[Sequence[Any]], str]] = {
    "compare.json": to_json,
    "compare.csv": to_csv,
    "compare.md": to_markdown,
}


def write_all(records: Sequence[Any], out_dir: str | Path, subtitle: str | None = None,
              baseline: str | None = None) -> list[Path]:
    """JSON, CSV, Markdown and the PNG plots into out_dir (created if needed); returns the paths."""
    out = _make_dir(Path(out_dir))
    paths = []
    for name, writer in WRITERS.items():
        with atomic_output(out / name, force=True) as tmp:
            tmp.write_text(writer(records))
        paths.append(out / name)
    return paths + write_plots(records, out, subtitle=subtitle, baseline=baseline)
