"""ggprec recommend for a mixture of experts (issue 11 item 5): types per group and where each group lives,
chosen together, on the sparse Qwen3-30B-A3B shape (bf16, no disk used)."""

from __future__ import annotations

import pytest

from ggprec.gguf_info import ModelInfo, read_gguf
from ggprec.recommend import recommend
from ggprec.recommend.api import Recommendation
from ggprec.recommend.commands import llama_commands
from ggprec.roles import ROUTED_EXPERT_ROLES
from ggprec.synth import PRESETS, write_synth
from ggprec.tensor_overrides import placement
from ggprec.units import GIB, MIB

HOST_GBPS, GPU_GBPS = 60.0, 936.0


@pytest.fixture(scope="module")
def qwen3_moe(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    path = write_synth(tmp_path_factory.mktemp("q30") / "qwen3-30b-a3b.gguf", PRESETS["qwen3-30b-a3b"],
                       dtype="bf16", sparse=True)
    return read_gguf(path)


@pytest.fixture(scope="module")
def rec_24(qwen3_moe: ModelInfo) -> Recommendation:
    return recommend(qwen3_moe, 24, ram_gb=64, ctx=32768, host_gbps=HOST_GBPS, gpu_gbps=GPU_GBPS)


def _devices(info: ModelInfo, rec: Recommendation) -> dict[str, str]:
    return placement(info, rec.settings)


def test_24_gib_keeps_attention_and_router_on_the_gpu_and_puts_routed_experts_partly_in_ram(
        qwen3_moe: ModelInfo, rec_24: Recommendation) -> None:
    where = _devices(qwen3_moe, rec_24)
    blocks = [t for t in qwen3_moe.tensors if t.layer is not None]
    assert all(where[t.name] == "CUDA0" for t in blocks if t.role.startswith("attn") or t.role == "ffn_gate_inp")
    experts = [t for t in blocks if t.role in ROUTED_EXPERT_ROLES]
    in_ram = [t for t in experts if where[t.name] == "CPU"]
    assert 0 < len(in_ram) <= len(experts)
    assert rec_24.settings.n_cpu_moe > 0 and rec_24.row.n_cpu_moe == rec_24.settings.n_cpu_moe
    assert rec_24.gpu_total <= 24 * GIB - 512 * MIB and rec_24.host_total <= 64 * GIB - 512 * MIB


def test_types_are_chosen_per_group_with_each_groups_device(rec_24: Recommendation) -> None:
    by_role = {}
    for g in rec_24.group_types:
        by_role.setdefault(g["role"], set()).add(g["type"])
    assert {"attn_q", "attn_v", "ffn_down_exps", "ffn_up_exps"} <= set(by_role)
    expert_rows = [g for g in rec_24.group_types if g["role"] in ROUTED_EXPERT_ROLES]
    assert {g["device"] for g in expert_rows} == {"gpu", "host"}  # bands split where --n-cpu-moe stops


def test_the_speed_counts_only_the_experts_a_token_uses(qwen3_moe: ModelInfo, rec_24: Recommendation) -> None:
    # 8 of 128 experts per token: far faster than reading every expert byte in RAM at 60 GB/s would allow.
    experts_in_ram = sum(g["bytes"] for g in rec_24.group_types
                         if g["role"] in ROUTED_EXPERT_ROLES and g["device"] == "host")
    assert rec_24.tg_tps > 2 * HOST_GBPS * 1e9 / experts_in_ram


def test_the_llama_cpp_flags_place_the_experts_with_n_cpu_moe(qwen3_moe: ModelInfo, rec_24: Recommendation) -> None:
    cmd = llama_commands(rec_24, qwen3_moe, "t.txt")
    assert f"-ngl 49 -ctk {rec_24.settings.cache_type_k}" in cmd.server
    assert cmd.server.endswith(f"--n-cpu-moe {rec_24.settings.n_cpu_moe}")


def test_8_gib_and_32_gib_ram_is_still_a_plan_with_most_experts_in_ram(qwen3_moe: ModelInfo) -> None:
    rec = recommend(qwen3_moe, 8, ram_gb=32, ctx=32768, host_gbps=HOST_GBPS, gpu_gbps=GPU_GBPS)
    assert rec.settings.n_cpu_moe > qwen3_moe.hparams.n_layer // 2
    assert rec.gpu_total <= 8 * GIB - 512 * MIB and rec.host_total <= 32 * GIB - 512 * MIB


def test_the_expected_speed_is_the_one_run_will_print_for_the_plan(qwen3_moe: ModelInfo,
                                                                  rec_24: Recommendation) -> None:
    from ggprec.ggml_types import lookup
    from ggprec.speed import load_speed_model

    speed = load_speed_model(host_gbps=HOST_GBPS, gpu_gbps=GPU_GBPS)
    types = {n: lookup(t) for n, t in rec_24.tensor_types.items()}
    assert rec_24.tg_tps == pytest.approx(speed.expected(qwen3_moe, rec_24.settings, types).tg_tps, rel=0.01)
