"""A profile applied to one model: the type every tensor of the written file will hold, the rule that chose
it, the fallbacks llama.cpp applies, and the written file's exact size.

The predictions mirror llama.cpp's quantizer (src/llama-quant.cpp): which tensors it never quantizes
(1-D tensors, norms, a few special names), and which type it falls back to when a type's block does
not divide a tensor's rows. `ggprec.quantize` then asks llama.cpp for exactly these types and checks
the file it wrote against them.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import ggml_types
from .errors import GgprecError
from .ggml_types import GgmlType
from .gguf_info import ModelInfo
from .gguf_layout import (
    PREAMBLE_SIZE,
    Cursor,
    ValueType,
    encode_tensor_info,
    find_scalar_kv,
    ggml_n_dims,
    header_size,
    padding,
    scalar_kv_size,
    tensor_info_size,
)
from .profile import Profile, parse_layers
from .settings import RuntimeSettings

OUTPUT = "output.weight"
TOKEN_EMBD = "token_embd.weight"
SPLIT_RULE = "split_output"
DEFAULT_RULE = "default"
KEPT_RULE = "never quantized"

# Substrings of names llama.cpp's quantizer copies as they are (tensor_allows_quantization).
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight", "time_mix_first.weight",
    "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
    "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
    ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")

# llama.cpp's tensor_type_fallback: a type whose block does not divide the row length -> this type
# (and f16 when that does not divide it either).
_FALLBACK = {
    "q2_0": "q4_0", "q2_k": "q4_0", "q3_k": "q4_0", "tq1_0": "q4_0", "tq2_0": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1",
    "q6_k": "q8_0", "iq4_xs": "iq4_nl", "iq1_s": "iq4_nl", "iq1_m": "iq4_nl", "iq2_xxs": "iq4_nl",
    "iq2_xs": "iq4_nl", "iq2_s": "iq4_nl", "iq3_xxs": "iq4_nl", "iq3_s": "iq4_nl",
}

# Keys llama.cpp's quantizer sets in every file it writes (u32 values), and those it removes.
_WRITTEN_U32_KEYS = ("general.quantization_version", "general.file_type")
_REMOVED_KEYS = ("split.no", "split.count", "split.tensors.count")


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama.cpp's quantizer may change this tensor's type at all."""
    if ggml_n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if name in _NEVER_QUANTIZED_EXACT:
        return False
    return not any(s in name for s in _NEVER_QUANTIZED)


def fallback(requested: GgmlType, row: int) -> tuple[GgmlType, str | None]:
    """The type llama.cpp writes for `requested` on rows of `row` elements, and why it differs."""
    if row % requested.block_size == 0:
        return requested, None
    alt = _FALLBACK.get(requested.name)
    why = f"{requested.name} needs rows divisible by {requested.block_size}, row is {row}"
    if alt is not None and row % ggml_types.lookup(alt).block_size == 0:
        return ggml_types.lookup(alt), f"{why}: llama.cpp falls back to {alt}"
    # llama.cpp uses f16 when its fallback does not fit either; for types without a fallback it would
    # abort, so ggprec asks for f16 explicitly.
    return ggml_types.lookup("f16"), f"{why}: f16"


@dataclass(frozen=True)
class TensorPlan:
    name: str
    role: str
    layer: int | None
    shape: tuple[int, ...]
    source_type: GgmlType
    type: GgmlType  # what the written file holds
    rule: str  # the rule that chose the type
    note: str | None  # fallback or why the type was kept
    n_bytes: int
    split: bool = False  # a copy of token_embd written as a separate output head

    @property
    def changed(self) -> bool:
        return self.split or self.type != self.source_type

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "layer": self.layer, "shape": list(self.shape),
                "source_type": self.source_type.name, "type": self.type.name, "rule": self.rule,
                "note": self.note, "bytes": self.n_bytes, "split": self.split}


@dataclass
class Plan:
    source: Path
    profile: Profile
    tensors: list[TensorPlan]
    runtime: RuntimeSettings
    predicted_file_size: int
    source_file_size: int
    warnings: list[str] = field(default_factory=list)
    written_kv_bytes: int = 0  # size of the metadata llama.cpp writes: where the tensor infos start, minus 24

    def tensor_types(self) -> dict[str, GgmlType]:
        return {t.name: t.type for t in self.tensors}

    @property
    def split_output(self) -> bool:
        return any(t.split for t in self.tensors)

    @property
    def requantize(self) -> bool:
        """Some tensor goes from a quantized type to another type: quality is bounded by the source."""
        return any(t.source_type.quantized and t.type != t.source_type for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def weights_hash(self) -> str:
        """sha256 of what decides the written file's tensors (not the runtime settings)."""
        doc = sorted((t.name, t.type.name, t.split) for t in self.tensors)
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()

    def plan_hash(self) -> str:
        """sha256 of the tensor types and the runtime settings: identifies the plan in results."""
        doc = {"weights": self.weights_hash(), "runtime": self.runtime.to_dict()}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def totals_by_type(self) -> dict[str, tuple[int, int]]:
        """(tensor count, bytes) per planned type, largest first."""
        out: dict[str, list[int]] = {}
        for t in self.tensors:
            g = out.setdefault(t.type.name, [0, 0])
            g[0] += 1
            g[1] += t.n_bytes
        return {k: (v[0], v[1]) for k, v in sorted(out.items(), key=lambda kv: -kv[1][1])}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "profile": self.profile.name,
            "profile_hash": self.profile.content_hash(),
            "plan_hash": self.plan_hash(),
            "source_file_size": self.source_file_size,
            "predicted_file_size": self.predicted_file_size,
            "split_output": self.split_output,
            "requantize": self.requantize,
            "runtime": self.runtime.to_dict(),
            "totals_by_type": {k: {"tensors": n, "bytes": b} for k, (n, b) in self.totals_by_type().items()},
            "changed_tensors": sum(t.changed for t in self.tensors),
            "warnings": list(self.warnings),
            "tensors": [t.to_dict() for t in self.tensors],
        }


def _choose(profile: Profile, name: str, role: str, layer: int | None, n_layer: int,
            used: list[bool]) -> tuple[str, str]:
    """(type name, rule label) for a quantizable tensor: the first matching rule, else the default."""
    for i, rule in enumerate(profile.rules):
        if rule.selects(name, role, layer, n_layer):
            used[i] = True
            return rule.type, f"rules[{i}] {rule.describe()}"
    return profile.default, DEFAULT_RULE


def resolve_plan(info: ModelInfo, profile: Profile) -> Plan:
    """Apply `profile` to the model `info`: a type per tensor, llama.cpp's fallbacks predicted."""
    n_layer = info.hparams.n_layer
    for rule in profile.rules:
        if rule.layers is not None:
            parse_layers(rule.layers, n_layer)
    sources = list(info.tensors)
    split = profile.split_output is not None and info.tied_output
    if split:
        embd = info.tensor(TOKEN_EMBD)
        assert embd is not None  # tied_output implies it
        sources.append(embd)
    used = [False] * len(profile.rules)
    tensors = []
    for i, src in enumerate(sources):
        is_split = split and i == len(sources) - 1
        name, role = (OUTPUT, "output") if is_split else (src.name, src.role)
        note = None
        if not quantizable(name, src.shape):
            gtype, rule = src.type, KEPT_RULE
            note = "llama.cpp never quantizes 1-D tensors" if ggml_n_dims(src.shape) < 2 else \
                "llama.cpp never quantizes this tensor"
        else:
            if name == OUTPUT and profile.split_output is not None:
                type_name, rule = profile.split_output, SPLIT_RULE
            else:
                type_name, rule = _choose(profile, name, role, src.layer, n_layer, used)
            gtype, note = fallback(ggml_types.lookup(type_name), src.shape[0])
        if is_split:
            note = f"copy of {TOKEN_EMBD} (split head)" + (f"; {note}" if note else "")
        tensors.append(TensorPlan(name, role, src.layer, src.shape, src.type, gtype, rule, note,
                                  gtype.tensor_bytes(src.shape), split=is_split))
    warnings = [f"rules[{i}] {r.describe()} matches no tensor" for i, r in enumerate(profile.rules) if not used[i]]
    if profile.split_output is not None and not info.tied_output:
        warnings.append("split_output: the model already has a separate output.weight; it gets "
                        f"{profile.split_output}")
    kv_bytes = _written_kv_bytes(info)
    size = _predict_file_size(info, tensors, kv_bytes)
    return Plan(info.path, profile, tensors, profile.runtime, size, info.file_size, warnings, kv_bytes)


def kv_region(info: ModelInfo) -> tuple[dict[str, int], int]:
    """Bytes of each metadata key-value pair in the source header (as llama.cpp copies them), and the
    offset where the key-value region ends (the tensor infos start). Walks the whole header again."""
    sizes: dict[str, int] = {}
    try:
        with open(info.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = Cursor(buf, len(buf))
            cur.pos = PREAMBLE_SIZE
            for _ in range(len(info.metadata)):
                start = cur.pos
                key = cur.string("metadata key")
                cur.value(cur.u32(f"type of {key}"), key)
                sizes[key] = cur.pos - start
            return sizes, cur.pos
    except GgprecError:
        raise
    except (OSError, ValueError) as e:  # a header read_gguf accepted should walk again; say so if not
        raise GgprecError(f"{info.path}: cannot re-read the header ({e})") from None


def _source_tensor_infos(info: ModelInfo) -> bytes:
    """The tensor-info block of the source's (first) file, byte for byte as read_gguf found it."""
    return b"".join(encode_tensor_info(t.name, t.shape, t.type.type_id, t.offset - info.data_offset)
                    for t in info.tensors if t.shard == 0)


def _changed_kv_sizes(info: ModelInfo, keys: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """Bytes of the pairs `keys` (those llama.cpp rewrites or drops) and the end of the metadata region,
    without a second walk over the vocabulary: the region ends where the tensor-info block (rebuilt
    from `info`) starts, which lies within one alignment step before the data. Falls back to
    kv_region's full walk when that does not pin it down."""
    infos = _source_tensor_infos(info)
    try:
        with open(info.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            ends = [e for e in range(info.data_offset - len(infos) - info.alignment + 1,
                                     info.data_offset - len(infos) + 1)
                    if e >= PREAMBLE_SIZE and buf[e : e + len(infos)] == infos
                    and not buf[e + len(infos) : info.data_offset].strip(b"\0")]
            if len(ends) == 1:
                found = {k: find_scalar_kv(buf, PREAMBLE_SIZE, ends[0], k) for k in keys}
                return {k: at_size[1] for k, at_size in found.items() if at_size is not None}, ends[0]
    except (OSError, ValueError, LookupError, struct.error):
        pass
    kv, end = kv_region(info)
    return {k: kv[k] for k in keys if k in kv}, end


def _written_kv_bytes(info: ModelInfo) -> int:
    """Bytes of the metadata llama.cpp's quantizer writes: the source's pairs, split keys removed,
    quantization version and file type (u32) set."""
    changed, kv_end = _changed_kv_sizes(info, (*_WRITTEN_U32_KEYS, *_REMOVED_KEYS))
    return (kv_end - PREAMBLE_SIZE - sum(changed.values())
            + sum(scalar_kv_size(key, ValueType.UINT32) for key in _WRITTEN_U32_KEYS))


def metadata_end(info: ModelInfo) -> int:
    """Offset where the source's metadata ends and its tensor infos start."""
    return _changed_kv_sizes(info, ())[1]


def _predict_file_size(info: ModelInfo, tensors: list[TensorPlan], kv_bytes: int) -> int:
    """Exact size of the GGUF llama.cpp writes: header, metadata, tensor infos, padded data."""
    infos = sum(tensor_info_size(t.name, ggml_n_dims(t.shape)) for t in tensors)
    return header_size(kv_bytes, infos, info.alignment) + sum(
        t.n_bytes + padding(t.n_bytes, info.alignment) for t in tensors)


def with_added_metadata(plan: Plan, info: ModelInfo, pairs: dict[str, int]) -> Plan:
    """The plan with metadata pairs the quantizer is asked to set (key -> bytes of the written pair, e.g.
    the `quantize.imatrix.*` keys): a key the source already holds is replaced, not added."""
    existing, _ = _changed_kv_sizes(info, tuple(pairs))
    kv = plan.written_kv_bytes + sum(pairs.values()) - sum(existing.values())
    return replace(plan, written_kv_bytes=kv, predicted_file_size=_predict_file_size(info, plan.tensors, kv))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def render(plan: Plan, console: Any, tensors: bool = False) -> None:
    """The plan on a terminal: totals per type, what changes, fallbacks, predicted size, warnings."""
    from rich.table import Table

    console.print(f"[bold]{plan.source}[/] with profile [bold]{plan.profile.name}[/]: {plan.profile.description}",
                  highlight=False)
    table = Table(title="planned types")
    for col in ("type", "tensors", "size"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for name, (n, b) in plan.totals_by_type().items():
        table.add_row(name, str(n), _mib(b))
    console.print(table)
    if tensors:
        t = Table(title="tensors")
        for col in ("tensor", "shape", "source", "planned", "rule", "note"):
            t.add_column(col)
        for tp in plan.tensors:
            t.add_row(tp.name, "x".join(map(str, tp.shape)), tp.source_type.name, tp.type.name, tp.rule, tp.note or "")
        console.print(t)
    changed = [t for t in plan.tensors if t.changed]
    console.print(f"{len(changed)} of {len(plan.tensors)} tensors change type; "
                  f"file {_mib(plan.source_file_size)} -> predicted {_mib(plan.predicted_file_size)} "
                  f"({plan.predicted_file_size:,} bytes)", highlight=False)
    notes = [t for t in plan.tensors if t.note and t.rule != KEPT_RULE]
    for t in notes[:10]:
        console.print(f"  {t.name}: {t.note}", highlight=False)
    if len(notes) > 10:
        console.print(f"  ... and {len(notes) - 10} more (--tensors lists them)", highlight=False)
    kept = sum(t.rule == KEPT_RULE for t in plan.tensors)
    if kept:
        console.print(f"  {kept} tensors llama.cpp never quantizes (norms, 1-D) keep their type", highlight=False)
    rt = plan.runtime
    console.print(f"KV cache K {rt.cache_type_k} / V {rt.cache_type_v}, flash attention "
                  f"{'on' if rt.flash_attn_effective else 'off'}, n_ctx {rt.n_ctx}", highlight=False)
    if plan.requantize:
        console.print("[yellow]warning:[/] the source is quantized: quality is bounded by the source")
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
