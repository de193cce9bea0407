"""Tensor roles, derived from llama.cpp's tensor naming (`blk.N.attn_q.weight`, `token_embd.weight`).

One table: the base names llama.cpp writes (gguf-py `TENSOR_NAMES`) mapped to the role ggprec reports.
Any name not in the table is role `other`, never an error, so every architecture llama.cpp loads is
readable.
"""

from __future__ import annotations

import re

# base name (without `blk.N.` and `.weight`/`.bias`) -> role. Names from gguf-py's constants.py
# (TENSOR_NAMES) of the llama.cpp vendored in llama-cpp-python 0.3.36.
ROLE_OF_BASE: dict[str, str] = {
    "token_embd": "token_embd",
    "output": "output",
    "attn_q": "attn_q",
    "attn_k": "attn_k",
    "attn_v": "attn_v",
    "attn_qkv": "attn_qkv",
    "attn_output": "attn_output",
    "attn_kv": "attn_kv",
    # DeepSeek multi-head latent attention (MLA): low-rank projections, each its own role because they
    # differ in shape and in what the quantizer does with them.
    "attn_q_a": "attn_q_a",
    "attn_q_b": "attn_q_b",
    "attn_kv_a_mqa": "attn_kv_a_mqa",
    "attn_kv_b": "attn_kv_b",
    "attn_k_b": "attn_k_b",
    "attn_v_b": "attn_v_b",
    "attn_sinks": "attn_sinks",  # gpt-oss: one learned logit per head
    "ffn_gate": "ffn_gate",
    "ffn_up": "ffn_up",
    "ffn_down": "ffn_down",
    # Routed experts (3-D: n_expert matrices); chunked experts (`_chexps`) are routed experts too.
    "ffn_gate_exps": "ffn_gate_exps",
    "ffn_up_exps": "ffn_up_exps",
    "ffn_down_exps": "ffn_down_exps",
    "ffn_gate_up_exps": "ffn_gate_up_exps",
    "ffn_gate_chexps": "ffn_gate_exps",
    "ffn_up_chexps": "ffn_up_exps",
    "ffn_down_chexps": "ffn_down_exps",
    # Shared experts run for every token: their own roles, never the dense FFN's.
    "ffn_gate_shexp": "ffn_gate_shexp",
    "ffn_up_shexp": "ffn_up_shexp",
    "ffn_down_shexp": "ffn_down_shexp",
    "ffn_gate_inp_shexp": "ffn_gate_inp_shexp",
    # Router.
    "ffn_gate_inp": "ffn_gate_inp",
    "exp_probs_b": "exp_probs_b",
}

# Bias tensors that are roles of their own (other biases are `other`).
ROLE_OF_BIAS: dict[str, str] = {
    "exp_probs_b": "exp_probs_b",  # router score correction (DeepSeek-V3 style)
    "ffn_gate_inp": "ffn_gate_inp",  # gpt-oss router bias
    "ffn_gate_exps": "ffn_exps_bias",  # gpt-oss per-expert biases: routed like the expert matrices
    "ffn_up_exps": "ffn_exps_bias",
    "ffn_down_exps": "ffn_exps_bias",
    "ffn_gate_up_exps": "ffn_exps_bias",
}

# Roles of routed expert tensors: a token reads n_expert_used / n_expert of them (on average).
ROUTED_EXPERT_ROLES: frozenset[str] = frozenset(
    {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_up_exps", "ffn_exps_bias"})
SHARED_EXPERT_ROLES: frozenset[str] = frozenset(
    {"ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp_shexp"})
ROUTER_ROLES: frozenset[str] = frozenset({"ffn_gate_inp", "exp_probs_b"})

# Roles in the order reports list them.
ROLE_ORDER: tuple[str, ...] = (
    "token_embd",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_kv",
    "attn_q_a",
    "attn_q_b",
    "attn_kv_a_mqa",
    "attn_kv_b",
    "attn_k_b",
    "attn_v_b",
    "attn_sinks",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "ffn_gate_inp",
    "exp_probs_b",
    "ffn_gate_exps",
    "ffn_up_exps",
    "ffn_down_exps",
    "ffn_gate_up_exps",
    "ffn_exps_bias",
    "ffn_gate_inp_shexp",
    "ffn_gate_shexp",
    "ffn_up_shexp",
    "ffn_down_shexp",
    "output",
    "norm",
    "other",
)


def is_routed_expert(role: str) -> bool:
    return role in ROUTED_EXPERT_ROLES


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
        return ROLE_OF_BIAS.get(base, "other"), layer
    return ROLE_OF_BASE.get(base, "other"), layer
