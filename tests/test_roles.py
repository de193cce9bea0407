"""Tensor roles from llama.cpp's names: expert, shared-expert, router and MLA tensors each have their own."""

from __future__ import annotations

import pytest

from ggprec.roles import ROLE_ORDER, classify, is_routed_expert


@pytest.mark.parametrize(("name", "role"), [
    ("blk.3.ffn_gate_exps.weight", "ffn_gate_exps"),
    ("blk.3.ffn_up_chexps.weight", "ffn_up_exps"),
    ("blk.3.ffn_gate_up_exps.weight", "ffn_gate_up_exps"),
    ("blk.3.ffn_down_exps.bias", "ffn_exps_bias"),
    ("blk.3.ffn_up_shexp.weight", "ffn_up_shexp"),
    ("blk.3.ffn_gate_inp_shexp.weight", "ffn_gate_inp_shexp"),
    ("blk.3.ffn_gate_inp.weight", "ffn_gate_inp"),
    ("blk.3.ffn_gate_inp.bias", "ffn_gate_inp"),
    ("blk.3.exp_probs_b.bias", "exp_probs_b"),
    ("blk.3.attn_sinks.weight", "attn_sinks"),
    ("blk.3.attn_kv_a_mqa.weight", "attn_kv_a_mqa"),
    ("blk.3.attn_k_b.weight", "attn_k_b"),
    ("blk.3.attn_q_a_norm.weight", "norm"),
    ("blk.3.ffn_norm_exps.weight", "norm"),
    ("blk.3.attn_q.bias", "other"),
])
def test_moe_and_mla_tensor_roles(name: str, role: str) -> None:
    assert classify(name) == (role, 3)
    assert role in ROLE_ORDER


def test_shared_experts_are_not_routed_and_not_the_dense_ffn() -> None:
    role, _ = classify("blk.0.ffn_down_shexp.weight")
    assert not is_routed_expert(role) and role != "ffn_down"
    assert is_routed_expert(classify("blk.0.ffn_down_exps.weight")[0])
