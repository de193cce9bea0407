"""Printers for `ggprec run` and `ggprec history`: rich tables and the `--json` documents
(schemas in docs/json.md)."""

from __future__ import annotations

from typing import Any

from .alloc import Allocation
from .runner import ProfileRun, Stats

RUN_SCHEMA = 1
HISTORY_SCHEMA = 1


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.2f}"


def relative_error(predicted: int | None, allocated: int | None) -> float | None:
    """(predicted - allocated) / allocated; None when either is missing or nothing was allocated."""
    if predicted is None or not allocated:
        return None
    return (predicted - allocated) / allocated


def allocation_table(alloc: Allocation, predicted: dict[str, int] | None = None) -> Any:
    """Allocated bytes per buffer as llama.cpp reported them; with `predicted` (same keys, e.g. from
    ggprec.memory) the prediction and its relative error beside them. llama.cpp logs MiB with two
    decimals, so an error under ~5 KiB / allocated is within that rounding."""
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
        table.add_row(key, *cells(alloc.buffers.get(key), None if predicted is None else predicted.get(key)))
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
    gpu = "" if r.gpu_memory_bytes is None else f"  GPU memory used {mib(r.gpu_memory_bytes)} MiB"
    console.print(f"peak RSS {mib(r.peak_rss_bytes)} MiB{gpu}")
    if r.generated is not None:
        from rich.text import Text

        console.print(Text.assemble((r.prompt or "", "bold"), r.generated))
    if record_id is not None:
        console.print(f"history row {record_id}")


def run_document(run: ProfileRun, record_id: int | None, hardware: dict[str, Any]) -> dict[str, Any]:
    """The `ggprec run --json` document."""
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


def render_history(records: list[Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="history")
    for col in ("id", "when (UTC)", "kind", "model", "profile", "pp tok/s", "tg tok/s", "allocated MiB"):
        table.add_column(col, justify="right" if "/s" in col or "MiB" in col or col == "id" else "left")
    for rec in records:
        res = rec.results
        pp, tg = res.get("pp_tps"), res.get("tg_tps")
        alloc = res.get("allocation") or {}
        table.add_row(str(rec.id), rec.created.replace("+00:00", ""), rec.kind,
                      (rec.model_path or "-").rsplit("/", 1)[-1], rec.profile_name or "-",
                      f"{pp['median']:,.1f}" if pp else "-", f"{tg['median']:,.1f}" if tg else "-",
                      mib(alloc.get("total")) if alloc else "-")
    console.print(table)


def history_document(records: list[Any]) -> dict[str, Any]:
    return {"schema": HISTORY_SCHEMA, "records": [r.to_dict() for r in records]}
