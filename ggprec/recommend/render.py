"""The terminal output of `ggprec recommend`: the front (a few rows, the chosen one marked), why that row,
the chosen plan by group with each loss figure's source, its predicted memory, and the llama.cpp commands."""

from __future__ import annotations

from typing import Any

from .api import Recommendation
from .commands import LlamaCommands
from .search import GIB, MIB

FRONT_COLUMNS = ("", "bits/weight", "KV", "GPU layers", "GPU GiB", "RAM GiB", "expected KLD", "expected tg tok/s")


def front_rows(rec: Recommendation, n_layer: int) -> list[tuple[str, ...]]:
    """The printed rows of the front, as text (the table and the README show the same)."""
    out = []
    with_pp = any(rec.front[i].pp_tps for i in rec.shown)
    for i in rec.shown:
        r = rec.front[i]
        layers = f"all {n_layer}" if r.n_gpu_layers > n_layer else f"{r.n_gpu_layers}/{n_layer}"
        if r.n_cpu_moe:
            layers += f", experts of {r.n_cpu_moe} in RAM"
        out.append(("->" if i == rec.chosen else "", f"{r.bits_per_weight:.2f}", r.kv_type, layers,
                    f"{r.gpu_bytes / GIB:.2f}", f"{r.ram_bytes / GIB:.2f}", f"{r.expected_kld:.4f}",
                    f"{r.tg_tps:.1f}", *([f"{r.pp_tps:.0f}" if r.pp_tps else "-"] if with_pp else [])))
    return out


def render(rec: Recommendation, console: Any, n_layer: int, commands: LlamaCommands | None = None,
           verified: dict[str, Any] | None = None, written: bool = False) -> None:
    from rich.table import Table

    s = rec.settings
    console.print(f"[bold]{rec.model}[/]: goal {rec.goal}, budget {rec.vram / GIB:g} GiB VRAM + "
                  f"{rec.ram / GIB:.1f} GiB RAM, margin {rec.margin / MIB:g} MiB, ctx {s.n_ctx}")
    front = Table(title=f"quality/speed front ({len(rec.shown)} of {len(rec.front)} plans; all in --json)")
    rows = front_rows(rec, n_layer)
    for col in FRONT_COLUMNS + (("expected pp tok/s",) if rows and len(rows[0]) > len(FRONT_COLUMNS) else ()):
        front.add_column(col, justify="left" if col in ("", "KV", "GPU layers") else "right")
    for row in rows:
        front.add_row(*row, style="bold" if row[0] else None)
    console.print(front)
    for r in rec.reasons:
        console.print(f"- {r}")
    console.print(f"chosen: n_gpu_layers {s.n_gpu_layers}, KV cache {s.cache_type_k}/{s.cache_type_v}"
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
        console.print(f"  {commands.quantize}", soft_wrap=True, markup=False)
        console.print(f"  {commands.server}", soft_wrap=True, markup=False)
        where = "" if written else " (-o writes it next to the profile)"
        console.print(f"  ({len(commands.tensor_type_lines)} anchored name=type lines in {commands.tensor_type_file}"
                      f"{where}; llama-cli takes the same flags)", markup=False)
    if verified:
        console.print(f"verified: predicted KLD {verified['predicted_kld']:.4f}, measured "
                      f"{verified['measured_kld']:.4f} (top-1 {verified['measured_top1']:.1%})"
                      f" on {verified['variant']}")
