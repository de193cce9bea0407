"""Printers over result records, the llama-bench way: one record list, several printers.

`to_table` (rich), `to_json`, `to_csv` and `to_markdown` take a list of records (ggprec.records
dataclasses, or plain dicts with explicit columns) and read how each field is headed and formatted from
the record class's field metadata (`Record.columns()`); a command that needs other columns passes
`columns=`. Missing values print as "-" (empty in CSV). `record_table` prints one record vertically
(figure, value, ± standard error), `history_table`/`history_document` any mix of kinds through each
record's `summary()`. The one-run view (`render_run`, `run_document`, `allocation_table`) lives here too:
it is one record with its memory buffers, not a list.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .records import Column, ResultRecord
from .units import MIB

if TYPE_CHECKING:
    from .alloc import Allocation
    from .runner import ProfileRun, Stats
    from .store import StoredRecord

RUN_SCHEMA = 1
HISTORY_SCHEMA = 2  # 2: results are typed records (run rows' pp_tps/tg_tps are medians, spreads in *_stats)


def columns_of(records: Sequence[Any], columns: Sequence[Column] | None = None) -> Sequence[Column]:
    """The given columns, else those of the records' class (every record of one kind)."""
    if columns is not None:
        return columns
    if not records:
        return ()
    first = records[0]
    if not isinstance(first, ResultRecord):
        raise TypeError("records that are not ggprec.records dataclasses need explicit columns")
    return first.columns()


def _as_dict(record: Any) -> dict[str, Any]:
    return record.to_dict() if isinstance(record, ResultRecord) else dict(record)


def to_json(records: Sequence[Any]) -> str:
    """Every field of every record, raw values, as a JSON list."""
    return json.dumps([_as_dict(r) for r in records], indent=2, default=str)


def to_csv(records: Sequence[Any], columns: Sequence[Column] | None = None) -> str:
    """One header row of column keys, then raw values (full precision, unscaled, empty for missing)."""
    cols = columns_of(records, columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.key for c in cols])
    for r in records:
        writer.writerow(["" if c.value(r) is None else c.value(r) for c in cols])
    return buf.getvalue()


def to_markdown(records: Sequence[Any], columns: Sequence[Column] | None = None) -> str:
    """A GitHub Markdown table with formatted values; numbers right-aligned."""
    cols = columns_of(records, columns)
    lines = ["| " + " | ".join(c.header for c in cols) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|"]
    for r in records:
        lines.append("| " + " | ".join(c.render(r) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_table(records: Sequence[Any], columns: Sequence[Column] | None = None, title: str | None = None,
             highlight: Any = None, caption: str | None = None) -> Any:
    """A rich Table, one row per record; a row for which `highlight(record)` is true (or, given a
    string, whose `profile` is it: the baseline) is bold."""
    from rich.table import Table

    cols = columns_of(records, columns)
    table = Table(title=title, caption=caption, show_lines=False)
    for c in cols:
        table.add_column(c.header, justify="right" if c.numeric else "left", no_wrap=True)
    for r in records:
        bold = highlight(r) if callable(highlight) else highlight is not None and get_value(r, "profile") == highlight
        table.add_row(*(c.render(r) for c in cols), style="bold" if bold else None)
    return table


def get_value(record: Any, key: str) -> Any:
    """A field of a record, or a key of a plain dict; None when absent."""
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)


def record_table(record: ResultRecord, title: str | None = None, caption: str | None = None) -> Any:
    """One record as rows of (figure, value, ± standard error) from its columns' metadata."""
    from rich.table import Table

    table = Table(title=title, caption=caption)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("± std. error", justify="right")
    for c in record.columns():
        se = "" if c.se is None else dataclasses.replace(c, key=c.se).render(record)
        table.add_row(c.header, c.render(record), se)
    return table


# --- history ------------------------------------------------------------------------------------------

# The history table: the row's own columns, then each record's summary() cells.
HISTORY_COLUMNS: tuple[Column, ...] = (
    Column("id", "id", "d"),
    Column("created", "when (UTC)"),
    Column("kind", "kind"),
    Column("model", "model"),
    Column("profile", "profile"),
    Column("pp_tps", "pp tok/s", ",.1f", "tok/s"),
    Column("tg_tps", "tg tok/s", ",.1f", "tok/s"),
    Column("memory_bytes", "memory MiB", ",.1f", "MiB", MIB),
    Column("kld_mean", "KLD mean", ".4f", "nats"),
    Column("top1_pct", "top-1 %", ".1f", "%"),
    Column("detail", "detail"),
)


def history_rows(stored: Sequence[StoredRecord]) -> list[dict[str, Any]]:
    """One flat dict per history row, keyed like HISTORY_COLUMNS."""
    return [{"id": s.id, "created": s.created.replace("+00:00", ""), "kind": s.kind,
             "model": (s.model_path or "-").rsplit("/", 1)[-1], "profile": s.profile_name or "-",
             **s.record.summary()} for s in stored]


def history_table(stored: Sequence[StoredRecord]) -> Any:
    return to_table(history_rows(stored), HISTORY_COLUMNS, title="history")


def history_document(stored: Sequence[StoredRecord]) -> dict[str, Any]:
    """The `ggprec history --json` document."""
    return {"schema": HISTORY_SCHEMA, "records": [s.to_dict() for s in stored]}


# --- one run ------------------------------------------------------------------------------------------


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:,.2f}"


def relative_error(predicted: int | None, allocated: int | None) -> float | None:
    """(predicted - allocated) / allocated; None when either is missing or nothing was allocated."""
    if predicted is None or not allocated:
        return None
    return (predicted - allocated) / allocated


def allocation_table(alloc: Allocation, predicted: dict[str, int] | None = None) -> Any:
    """Allocated bytes per buffer as llama.cpp reported them; with `predicted` (same keys, e.g. from
    ggprec.memory) the prediction and its relative error beside them. llama.cpp logs MiB with two
    decimals, so an error under ~5 KiB / allocated is within that rounding. A buffer list, not a record
    list: its rows are keys of one measurement."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="memory allocated by llama.cpp" + (" (simulated, no_alloc)" if alloc.no_alloc else ""))
    table.add_column("buffer")
    table.add_column("MiB", justify="right")
    if predicted is not None:
        table.add_column("predicted MiB", justify="right")
        table.add_column("error", justify="right")
    keys = list(alloc.buffers) + [k for k in (predicted or {}) if k not in alloc.buffers]

    def cells(got: int | None, want: int | None) -> list[str]:
        if predicted is None:
            return [mib(got)]
        err = relative_error(want, got)
        return [mib(got), mib(want), "-" if err is None else f"{err:+.2%}"]

    for key in keys:
        # escape: an RPC buffer's name carries its server in brackets, which rich would read as markup
        table.add_row(escape(key), *cells(alloc.buffers.get(key), None if predicted is None else predicted.get(key)))
    total_pred = None if predicted is None else sum(predicted.values())
    table.add_row("total", *cells(alloc.total, total_pred), style="bold")
    return table


def _speed(s: Stats | None) -> list[str]:
    if s is None:
        return ["-", "-", "-"]
    return [f"{s.median:,.1f}", f"{s.min:,.1f} - {s.max:,.1f}", f"{s.stdev:,.1f}"]


def expected_line(r: Any) -> str | None:
    """Expected tg (and pp) tok/s beside the measured medians, with measured / expected."""
    if r.expected_tg_tps is None:
        return None
    parts = []
    for name, want, got in (("tg", r.expected_tg_tps, r.tg_tps), ("pp", r.expected_pp_tps, r.pp_tps)):
        if want is None:
            continue
        ratio = f" (measured x{got.median / want:.2f})" if got is not None and want else ""
        parts.append(f"{name} {want:,.1f} tok/s{ratio}")
    return f"expected {', '.join(parts)}; {r.expected_tg_source}"


def render_run(run: ProfileRun, console: Any, record_id: int | None = None) -> None:
    from rich.table import Table

    r = run.result
    s = r.settings
    what = f"profile {run.profile.name} ({run.ran})" if run.profile is not None else run.ran
    console.print(f"[bold]{what}[/bold]")
    console.print(f"ngl {s.n_gpu_layers}  ctx {s.n_ctx}  batch {s.n_batch}/{s.n_ubatch}  threads {s.n_threads}  "
                  f"KV {s.cache_type_k}/{s.cache_type_v}  flash attn {'on' if s.flash_attn_effective else 'off'}  "
                  f"load {r.load_s:.2f} s")
    speed = Table(title=f"speed ({r.reps} reps)")
    for col in ("test", "tok/s median", "min - max", "stdev"):
        speed.add_column(col, justify="left" if col == "test" else "right")
    if r.pp_tps is not None:
        speed.add_row(f"pp {r.pp}", *_speed(r.pp_tps))
    if r.tg_tps is not None:
        speed.add_row(f"tg {r.tg}", *_speed(r.tg_tps))
    console.print(speed)
    line = expected_line(r)
    if line:
        console.print(line)
    console.print(allocation_table(r.allocation, r.predicted))
    if r.predicted_evictable:
        console.print(f"of model:CPU_Mapped, {mib(r.predicted_evictable)} MiB (predicted) is evictable page cache: "
                      "offloaded or repacked tensors, read once while loading")
    gpu = "" if r.gpu_memory_bytes is None else f"  GPU memory used {mib(r.gpu_memory_bytes)} MiB"
    console.print(f"peak RSS {mib(r.peak_rss_bytes)} MiB{gpu}")
    if r.generated is not None:
        from rich.text import Text

        console.print(Text.assemble((r.prompt or "", "bold"), r.generated))
    if record_id is not None:
        console.print(f"history row {record_id}")


def run_document(run: ProfileRun, record_id: int | None, hardware: dict[str, Any]) -> dict[str, Any]:
    """The `ggprec run --json` document (schema 1: pp_tps/tg_tps are the Stats objects)."""
    p = run.profile
    result = run.result.to_dict()
    del result["model_path"]  # the same as "ran"
    return {
        "schema": RUN_SCHEMA,
        "id": record_id,
        "model": run.source,
        "ran": run.ran,
        "profile": None if p is None else {"name": p.name, "hash": p.content_hash()},
        **result,
        "hardware": hardware,
    }
