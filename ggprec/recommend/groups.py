"""Tensor groups: the units recommend gives one type each (role x layer band, token_embd or the tied head,
the output head), and their split by the device each tensor lives on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from ..ggml_types import GgmlType
from ..gguf_info import ModelInfo, TensorInfo
from ..roles import ROUTED_EXPERT_ROLES


@dataclass(frozen=True)
class Group:
    """Tensors that take one type together."""

    key: str  # "ffn_down@0-7", "token_embd", "output"
    role: str  # tensor role, or "tied_head" for a token_embd that is also the output head
    layers: tuple[int, ...]  # block layers covered; empty outside the blocks
    tensors: tuple[TensorInfo, ...]

    @cached_property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @cached_property
    def source_bpw(self) -> float:
        return max(t.type.bits_per_weight for t in self.tensors)

    def bytes_as(self, t: GgmlType) -> int:
        return sum(t.tensor_bytes(x.shape) for x in self.tensors)

    def accepts(self, t: GgmlType) -> bool:
        return all(x.shape[0] % t.block_size == 0 for x in self.tensors)


def quantizable(t: TensorInfo) -> bool:
    """Tensors llama.cpp's quantizer may change (plan.quantizable), of a role recommend knows."""
    from ..plan import quantizable as llama_quantizes

    return t.role not in ("norm", "other") and llama_quantizes(t.name, t.shape)


def layer_bands(n_layer: int, n_bands: int) -> list[tuple[int, int]]:
    """Split 0..n_layer-1 into n_bands contiguous bands as equal as possible: [(first, last), ...]."""
    n_bands = max(1, min(n_bands, n_layer))
    edges = [round(i * n_layer / n_bands) for i in range(n_bands + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(n_bands) if edges[i + 1] > edges[i]]


def make_groups(info: ModelInfo, n_bands: int = 4) -> list[Group]:
    """Groups: every block role x layer band, token_embd (or the tied head) and the output head."""
    n_layer = info.hparams.n_layer
    bands = layer_bands(n_layer, n_bands) if n_layer else []
    by_role_band: dict[tuple[str, int], list[TensorInfo]] = {}
    singles: dict[str, list[TensorInfo]] = {}
    for t in info.tensors:
        if not quantizable(t):
            continue
        if t.layer is None:
            role = "tied_head" if t.role == "token_embd" and info.tied_output else t.role
            singles.setdefault(role, []).append(t)
            continue
        band = next(i for i, (a, b) in enumerate(bands) if a <= t.layer <= b)
        by_role_band.setdefault((t.role, band), []).append(t)
    groups = [Group(role if role != "tied_head" else "token_embd", role, (), tuple(ts))
              for role, ts in singles.items()]
    for (role, band), ts in by_role_band.items():
        a, b = bands[band]
        groups.append(Group(f"{role}@{a}-{b}", role, tuple(range(a, b + 1)), tuple(ts)))
    return groups


def split_by_device(group: Group, device: Mapping[str, str]) -> list[tuple[Group, str]]:
    """The group cut into parts that each live on one device (a band split where the GPU layers start, or
    where --n-cpu-moe stops), with that device."""
    parts: dict[str, list[TensorInfo]] = {}
    for t in group.tensors:
        parts.setdefault(device[t.name], []).append(t)
    if len(parts) == 1:
        return [(group, next(iter(parts)))]
    out = []
    for dev, ts in parts.items():
        layers = tuple(sorted({t.layer for t in ts if t.layer is not None}))
        key = f"{group.role}@{layers[0]}-{layers[-1]}" if layers else f"{group.key}:{dev}"
        out.append((Group(key, group.role, layers, tuple(ts)), dev))
    return out


def reads_per_token(g: Group, info: ModelInfo) -> float:
    """The fraction of a group's bytes one generated token reads: none of token_embd (one row is looked up),
    expert_used/expert_count of routed experts, all of every other weight."""
    if g.role == "token_embd":
        return 0.0
    if g.role in ROUTED_EXPERT_ROLES:
        return info.hparams.expert_share
    return 1.0
