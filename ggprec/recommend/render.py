"""The terminal output of `ggprec recommend`: the front (a few rows, the chosen one marked), why that row,
the chosen plan by group with each loss figure's source, its predicted memory, and the llama.cpp commands."""

from __future__ import annotations

from typing import Any

from ..printers import to_markdown, to_table
from ..records import Column
from ..units import GIB, MIB
from .api import Recommendation
from .commands import LlamaCommands

# The front's printed columns (printers.Column: header, format, scale); pp only where the speed model has it.
FRONT_COLUMNS = (
    Column("mark", ""),
    Column("bits_per_weight", "bits/weight", ".2f"),
    Column("kv_type", "KV"),
    Column("layers", "GPU layers"),
    Column("gpu_bytes", "GPU GiB", ".2f", "GiB", scale=GIB),
    Column("ram_bytes", "RAM GiB", ".2f", "GiB", scale=GIB),
    Column("expected_kld", "expected KLD", ".4f"),
    Column("tg_tps", "expected tg tok/s", ".1f", "tok/s"),
)
PP_COLUMN = Column("pp_tps", "expected pp tok/s", ".0f", "tok/s")


def front_rows(rec: Recommendation, n_layer: int) -> list[dict[str, Any]]:
    """The printed rows of the front (the table, `to_markdown` for the README): each row's figures, the
    chosen one marked, where its layers (and experts) live in words."""
    out = []
    for i in rec.shown:
        r = rec.front[i]
        layers = f"all {n_layer}" if r.n_gpu_layers > n_layer else f"{r.n_gpu_layers}/{n_layer}"
        if r.tensor_split:
            layers = f"-ngl {r.n_gpu_layers} -ts {','.join(f'{x:g}' for x in r.tensor_split)}"
        if r.n_cpu_moe:
            layers += f", experts of {r.n_cpu_moe} in RAM"
        mark = " ".join(m for m in ("->" if i == rec.chosen else "", "as is" if r.as_is else "") if m)
        out.append({**r.to_dict(), "mark": mark, "layers": layers})
    return out


def front_columns(rows: list[dict[str, Any]]) -> tuple[Column, ...]:
    return FRONT_COLUMNS + ((PP_COLUMN,) if any(r["pp_tps"] for r in rows) else ())


def front_markdown(rec: Recommendation, n_layer: int) -> str:
    rows = front_rows(rec, n_layer)
    return to_markdown(rows, front_columns(rows))


def render(rec: Recommendation, console: Any, n_layer: int, commands: LlamaCommands | None = None,
           verified: dict[str, Any] | None = None, written: bool = False) -> None:
    from rich.table import Table

    s = rec.settings
    rpc = "".join(f" + {d['name']} {d['budget_bytes'] / GIB:g} GiB" for d in rec.devices if d["endpoint"])
    console.print(f"[bold]{rec.model}[/]: goal {rec.goal}, budget {rec.vram / GIB:g} GiB VRAM{rpc} + "
                  f"{rec.ram / GIB:.1f} GiB RAM, margin {rec.margin / MIB:g} MiB, ctx {s.n_ctx}")
    rows = front_rows(rec, n_layer)
    front = to_table(rows, front_columns(rows), highlight=lambda r: bool(r["mark"]),
                     title=f"quality/speed front ({len(rec.shown)} of {len(rec.front)} plans; all in --json)")
    console.print(front)
    for r in rec.reasons:
        console.print(f"- {r}")
    split = (f", -ts {','.join(f'{x:g}' for x in s.tensor_split)} (--rpc {','.join(s.rpc_servers)})"
             if s.rpc_servers else "")
    console.print(f"chosen: n_gpu_layers {s.n_gpu_layers}{split}, KV cache {s.cache_type_k}/{s.cache_type_v}"
                  f"{', flash attention' if s.flash_attn_effective else ''}"
                  f"{f', n_cpu_moe {s.n_cpu_moe}' if s.n_cpu_moe else ''}")
    sources = {g["source"] for g in rec.group_types}
    one_source = len(sources) == 1
    t = Table(title="weights by group")
    for col in ("group", "type", "MiB", "device", "expected KLD", *(() if one_source else ("source",))):
        t.add_column(col, justify="right" if col in ("MiB", "expected KLD") else "left")
    for g in rec.group_types:
        t.add_row(g["key"], g["type"], f"{g['bytes'] / MIB:,.1f}", g["device"], f"{g['expected_kld']:.5f}",
                  *(() if one_source else (g["source"],)))
    console.print(t)
    if one_source:
        console.print(f"expected KLD of every group: {next(iter(sources))}")
    if rec.device_plan is not None:
        split_table(rec, console)
    b = Table(title="predicted memory (memory.predict)")
    b.add_column("buffer")
    b.add_column("MiB", justify="right")
    for key, n in rec.buffers.items():
        b.add_row(key, f"{n / MIB:,.1f}")
    b.add_row("[bold]GPU total[/]", f"{rec.gpu_total / MIB:,.1f}")
    b.add_row("[bold]RAM total[/]", f"{rec.host_total / MIB:,.1f}")
    console.print(b)
    console.print(f"expected KLD {rec.expected_kld:.4f} (weights {rec.expected_kld - rec.kv_kld:.4f}: "
                  f"{rec.loss_source}; KV cache {rec.kv_kld:.4f}: {rec.kv_source or 'no loss'}); expected tg "
                  f"{rec.tg_tps:.1f} tok/s ({rec.speed_source})")
    console.print(f"method: {rec.method}")
    if commands:
        console.print("llama.cpp:")
        if commands.quantize:
            console.print(f"  {commands.quantize}", soft_wrap=True, markup=False)
        else:
            console.print("  (no llama-quantize: the plan keeps every weight as the model has it)", markup=False)
        for line in commands.hosts:
            console.print(f"  {line}", soft_wrap=True, markup=False)
        console.print(f"  {'client: ' if commands.hosts else ''}{commands.server}", soft_wrap=True, markup=False)
        where = "" if written else " (-o writes it next to the profile)"
        if commands.quantize:
            console.print(f"  ({len(commands.tensor_type_lines)} anchored name=type lines in "
                          f"{commands.tensor_type_file}{where}; llama-cli takes the same flags)", markup=False)
    if verified:
        console.print(verified_text(verified), markup=False)


def split_table(rec: Recommendation, console: Any) -> None:
    """Each device of a split: its layers and buffers under the chosen plan (memory.predict over the devices),
    its budget and where that comes from (probed or declared)."""
    from ..device_plan import HOST
    from ..device_plan import render as render_devices

    budgets = {(d["device"]): d["budget_bytes"] for d in rec.devices if d["budget_bytes"] is not None}
    sources = {d["device"]: d["source"] for d in rec.devices}
    render_devices(rec.device_plan, console, "", budgets, sources, with_commands=False)
    console.print(f"{HOST}: RAM counts what stays resident ({rec.host_total / MIB:,.1f} MiB; mapped pages of "
                  "offloaded tensors are dropped after the load)", highlight=False)


def verified_text(verified: dict[str, Any]) -> str:
    """`--verify` in one line: predicted beside measured KLD, and measured / predicted."""
    ratio = verified.get("ratio")
    ratio_text = f"measured/predicted {ratio:.2f}x" if ratio is not None else "predicted 0: no ratio"
    return (f"verified: predicted KLD {verified['predicted_kld']:.4f} ({verified.get('loss_source') or 'expected'}), "
            f"measured {verified['measured_kld']:.4f}, {ratio_text} (top-1 {verified['measured_top1']:.1%}) on "
            f"{verified['variant']}")
