"""Tensor roles, derived from llama.cpp's tensor naming (`blk.N.attn_q.weight`, `token_embd.weight`).

One table: the base names llama.cpp writes (gguf-py `TENSOR_NAMES`) mapped to the role ggprec reports.
Any name not in the table is role `other`, never an error, so every architecture llama.cpp loads is
readable.
"""

from __future__ import annotations

import re

# base name (without `blk.N.` and `.weight`/`.bias`) -> role
ROLE_OF_BASE: dict[str, str] = {
    "token_embd": "token_embd",
    "output": "output",
    "attn_q": "attn_q",
    "attn_k": "attn_k",
    "attn_v": "attn_v",
    "attn_qkv": "attn_qkv",
    "attn_output": "attn_output",
    "attn_q_a": "attn_q",
    "attn_q_b": "attn_q",
    "attn_kv_a_mqa": "attn_kv",
    "attn_kv_b": "attn_kv",
    "attn_k_b": "attn_k",
    "attn_v_b": "attn_v",
    "ffn_gate": "ffn_gate",
    "ffn_up": "ffn_up",
    "ffn_down": "ffn_down",
    "ffn_gate_exps": "ffn_gate_exps",
    "ffn_up_exps": "ffn_up_exps",
    "ffn_down_exps": "ffn_down_exps",
    "ffn_gate_shexp": "ffn_gate",
    "ffn_up_shexp": "ffn_up",
    "ffn_down_shexp": "ffn_down",
    "ffn_gate_inp": "ffn_gate_inp",
}

# Roles in the order reports list them.
ROLE_ORDER: tuple[str, ...] = (
    "token_embd",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_kv",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "ffn_gate_inp",
    "ffn_gate_exps",
    "ffn_up_exps",
    "ffn_down_exps",
    "output",
    "norm",
    "other",
)

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
_SUFFIX = re.compile(r"\.(weight|bias)$")


def classify(name: str) -> tuple[str, int | None]:
    """Role and layer index (None outside the repeating blocks) of a tensor name."""
    layer: int | None = None
    m = _BLOCK.match(name)
    rest = name
    if m:
        layer = int(m.group(1))
        rest = m.group(2)
    is_bias = rest.endswith(".bias")
    base = _SUFFIX.sub("", rest)
    if "norm" in base:
        return "norm", layer
    if is_bias:
        return "other", layer
    return ROLE_OF_BASE.get(base, "other"), layer
