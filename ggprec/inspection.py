"""`ggprec inspect`: a ModelInfo as a stable JSON document and as rich tables.

The JSON schema (version INSPECT_SCHEMA) is documented in docs/json.md; fields are only ever added.
"""

from __future__ import annotations

from typing import Any

from .gguf_info import ArraySummary, ModelInfo
from .memory import bytes_read_per_token
from .roles import is_routed_expert
from .settings import RuntimeSettings
from .units import MIB

INSPECT_SCHEMA = 1


def _json_value(value: Any) -> Any:
    if isinstance(value, ArraySummary):
        return {"array_of": value.element_type, "count": value.count}
    if isinstance(value, list):  # arrays of arrays may hold summarised long arrays
        return [_json_value(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None  # NaN and infinities have no JSON spelling
    return value


def to_dict(info: ModelInfo, tensors: bool = True) -> dict[str, Any]:
    hp = info.hparams
    doc: dict[str, Any] = {
        "schema": INSPECT_SCHEMA,
        "path": str(info.path),
        "shards": [str(p) for p in info.shards],
        "file_size": info.file_size,
        "gguf_version": info.version,
        "architecture": info.arch,
        "name": info.name,
        "hparams": {
            "n_layer": hp.n_layer,
            "n_embd": hp.n_embd,
            "n_head": hp.n_head,
            "n_head_kv": hp.n_head_kv_max,
            "n_head_kv_per_layer": list(hp.n_head_kv),
            "head_dim_k": hp.head_dim_k,
            "head_dim_v": hp.head_dim_v,
            "n_ff": hp.n_ff_max,
            "n_vocab": hp.n_vocab,
            "n_ctx_train": hp.n_ctx_train,
            "sliding_window": hp.sliding_window,
            "n_expert": hp.n_expert,
            "n_expert_used": hp.n_expert_used,
            "n_expert_shared": hp.n_expert_shared,
            "n_ff_exp": hp.n_ff_exp,
            "n_ff_shexp": hp.n_ff_shexp,
            "n_layer_dense_lead": hp.n_layer_dense_lead,
            "q_lora_rank": hp.q_lora_rank,
            "kv_lora_rank": hp.kv_lora_rank,
        },
        "tied_output": info.tied_output,
        "n_tensors": len(info.tensors),
        "n_params": info.n_params,
        "tensor_bytes": info.tensor_bytes,
        "bits_per_weight": round(info.bits_per_weight, 4),
        "n_params_active": active_params(info),
        "bytes_per_token": bytes_per_token(info),
        "totals": {
            key: [
                {key: k, "tensors": c, "params": n, "bytes": b}
                for k, (c, n, b) in info.totals_by(key).items()
            ]
            for key in ("role", "layer", "type")
        },
        "metadata": {k: _json_value(v) for k, v in info.metadata.items()},
    }
    if tensors:
        doc["tensors"] = [
            {
                "name": t.name,
                "role": t.role,
                "layer": t.layer,
                "shape": list(t.shape),
                "type": t.type.name,
                "bytes": t.n_bytes,
                "offset": t.offset,
                "shard": t.shard,
            }
            for t in info.tensors
        ]
    return doc


def active_params(info: ModelInfo) -> int:
    """Parameters one token uses: every tensor, routed experts at n_expert_used / n_expert (the way model
    cards count "A3B": embeddings included)."""
    hp = info.hparams
    share = hp.expert_share
    return round(sum(t.n_elements * (share if is_routed_expert(t.role) else 1.0) for t in info.tensors))


def bytes_per_token(info: ModelInfo) -> dict[str, int]:
    """Weight type -> bytes one generated token reads from the file as it is (memory.bytes_read_per_token
    summed over devices: routed experts at their used share, token_embd one row), largest first."""
    merged: dict[str, int] = {}
    for per_type in bytes_read_per_token(info, RuntimeSettings()).values():
        for name, n in per_type.items():
            merged[name] = merged.get(name, 0) + n
    return dict(sorted(merged.items(), key=lambda kv: -kv[1]))


def _mib(n: int) -> str:
    return f"{n / MIB:,.2f}"


def render(info: ModelInfo, console: Any, tensors: bool = False) -> None:
    """Print the summary (and with `tensors`, every tensor) as rich tables.

    These tables stay here rather than in ggprec.printers: they describe one file (its header, totals
    grouped from its tensor list, the tensor list itself), not a list of measured result records, and
    none of them is stored in the history or written as CSV/Markdown."""
    from rich.table import Table

    hp = info.hparams
    head = Table(title=f"{info.path.name}", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    kv_heads = str(hp.n_head_kv_max) if len(set(hp.n_head_kv)) <= 1 else f"{list(hp.n_head_kv)}"
    rows = [
        ("architecture", f"{info.arch}" + (f" ({info.name})" if info.name else "")),
        ("layers", str(hp.n_layer)),
        ("n_embd / n_ff", f"{hp.n_embd} / {hp.n_ff_max}"),
        ("heads / kv heads", f"{hp.n_head} / {kv_heads}"),
        ("head dim k / v", f"{hp.head_dim_k} / {hp.head_dim_v}"),
        ("vocabulary", f"{hp.n_vocab:,}"),
        ("training context", f"{hp.n_ctx_train:,}"),
    ]
    if hp.sliding_window:
        rows.append(("sliding window", f"{hp.sliding_window:,}"))
    if hp.n_expert:
        shared = f", {hp.n_expert_shared} shared" if hp.n_expert_shared else ""
        dense = f", first {hp.n_layer_dense_lead} blocks dense" if hp.n_layer_dense_lead else ""
        rows.append(("experts (used)", f"{hp.n_expert} ({hp.n_expert_used}) of {hp.n_ff_exp}{shared}{dense}"))
    if hp.kv_lora_rank:
        rows.append(("MLA", f"kv_lora_rank {hp.kv_lora_rank}, q_lora_rank {hp.q_lora_rank}"))
    rows += [
        ("output head", "tied to token_embd" if info.tied_output else "separate output.weight"),
        ("tensors", f"{len(info.tensors)}"),
        ("parameters", f"{info.n_params:,}" + (f" ({active_params(info):,} active per token)"
                                                 if hp.n_expert else "")),
        ("tensor data", f"{_mib(info.tensor_bytes)} MiB ({info.bits_per_weight:.2f} bits/weight)"),
        ("read per token", ", ".join(f"{_mib(n)} MiB {t}" for t, n in bytes_per_token(info).items())),
        ("file size", f"{_mib(info.file_size)} MiB (GGUF v{info.version})"
                      + (f" in {len(info.shards)} shards" if info.is_split else "")),
    ]
    for k, v in rows:
        head.add_row(k, v)
    console.print(head)

    for key, title in (("role", "By role"), ("type", "By type")):
        table = Table(title=title, title_justify="left")
        for col in (key, "tensors", "params", "MiB", "share"):
            table.add_column(col, justify="left" if col == key else "right")
        for k, (c, n, b) in info.totals_by(key).items():
            table.add_row(str(k), str(c), f"{n:,}", _mib(b), f"{100 * b / max(info.tensor_bytes, 1):.1f}%")
        console.print(table)

    layers = info.totals_by("layer")
    per_layer = [b for k, (_, _, b) in layers.items() if k is not None]
    if per_layer:
        console.print(
            f"Per layer: {len(per_layer)} layers, {_mib(min(per_layer))} to {_mib(max(per_layer))} MiB each; "
            f"outside the layers: {_mib(layers.get(None, (0, 0, 0))[2])} MiB "
            "(--tensors lists every tensor, --json gives everything)"
        )

    if tensors:
        table = Table(title="Tensors", title_justify="left")
        for col in ("name", "role", "layer", "shape", "type", "bytes"):
            table.add_column(col, justify="right" if col in ("layer", "bytes") else "left")
        for t in info.tensors:
            table.add_row(
                t.name,
                t.role,
                "" if t.layer is None else str(t.layer),
                "x".join(map(str, t.shape)),
                t.type.name,
                f"{t.n_bytes:,}",
            )
        console.print(table)
