"""The memory model against llama.cpp's own allocation reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggprec.alloc import measure_allocation
from ggprec.ggml_types import lookup
from ggprec.gguf_info import ModelInfo, read_gguf
from ggprec.memory import bytes_read_per_token, predict
from ggprec.settings import ALL_LAYERS, RuntimeSettings
from ggprec.synth import PRESETS, shape_for, write_synth

LOG_ROUNDING = 5243  # llama.cpp logs MiB with two decimals: +-0.005 MiB


@pytest.fixture(scope="module")
def sparse_8b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("s8b") / "8b.gguf", PRESETS["llama-3-8b"], sparse=True)


@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_0"])
def test_kv_cache_is_exact_on_the_tiny_model(tiny_model: Path, kv: str) -> None:
    settings = RuntimeSettings(n_ctx=1000, n_threads=2, cache_type_k=kv, cache_type_v=kv)
    reported = measure_allocation(tiny_model, settings).buffers["kv:CPU"]
    predicted = predict(read_gguf(tiny_model), settings).buffers["kv:CPU"]
    assert abs(predicted - reported) <= LOG_ROUNDING


def test_model_buffer_is_the_mapped_file_range(tiny_model: Path) -> None:
    settings = RuntimeSettings(n_ctx=512, n_threads=2)
    reported = measure_allocation(tiny_model, settings).buffers
    predicted = predict(read_gguf(tiny_model), settings).buffers
    assert abs(predicted["model:CPU_Mapped"] - reported["model:CPU_Mapped"]) <= LOG_ROUNDING


def test_a_context_smaller_than_the_batch_caps_the_compute_buffer_like_llama_cpp(tiny_model: Path) -> None:
    settings = RuntimeSettings(n_ctx=128, n_batch=512, n_ubatch=512, n_threads=2)
    predicted = predict(read_gguf(tiny_model), settings, mmap=False).buffers
    reported = measure_allocation(tiny_model, settings, no_alloc=True).buffers
    assert abs(predicted["compute:CPU"] - reported["compute:CPU"]) <= LOG_ROUNDING


def assert_no_alloc_within_2_percent(model: Path, settings: RuntimeSettings) -> None:
    """Every buffer llama.cpp's no_alloc simulation reports is predicted, within 2% + the log's rounding."""
    reported = measure_allocation(model, settings, no_alloc=True).buffers
    predicted = predict(read_gguf(model), settings, mmap=False).buffers
    assert set(predicted) == set(reported)
    for key, n in reported.items():
        assert abs(predicted[key] - n) <= 0.02 * n + LOG_ROUNDING, key


def test_sparse_8b_prediction_matches_no_alloc_within_2_percent(sparse_8b: Path) -> None:
    assert_no_alloc_within_2_percent(sparse_8b, RuntimeSettings(n_ctx=8192, n_threads=2))


@pytest.mark.llama
@pytest.mark.parametrize("n_ctx", [4096, 8192])
def test_a_quantized_kv_cache_with_flash_attention_matches_no_alloc_within_2_percent(sparse_8b: Path,
                                                                                     n_ctx: int) -> None:
    """llama.cpp rotates attention for a quantized cache; the output peak holds one more activation only
    once the mask is an activation or more (8B: n_kv 8192), which a fixed +1 over-predicted by 3%."""
    assert_no_alloc_within_2_percent(sparse_8b, RuntimeSettings(n_ctx=n_ctx, n_threads=2, flash_attn=True,
                                                                cache_type_k="q8_0", cache_type_v="q8_0"))


def test_attention_is_rotated_for_a_quantized_cache_of_64_wide_heads_only(sparse_8b: Path) -> None:
    from ggprec.compute_graph import attn_rotation

    info = read_gguf(sparse_8b)  # head size 128
    assert attn_rotation(info, RuntimeSettings(cache_type_k="q8_0", cache_type_v="f16"))
    assert not attn_rotation(info, RuntimeSettings(cache_type_k="f16", cache_type_v="f16"))


def test_offloaded_tied_head_is_copied_to_the_gpu_and_token_embd_stays_on_host(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    pred = predict(info, RuntimeSettings(n_gpu_layers=ALL_LAYERS), mmap=False)
    embd = info.tensor("token_embd.weight").n_bytes
    assert pred.buffers["model:CPU"] == embd
    assert pred.buffers["model:CUDA0"] == info.tensor_bytes  # every other tensor + the head's copy
    assert pred.host_total + pred.device_total("CUDA0") == pred.total


def output_layer_bytes(info: ModelInfo) -> int:
    """output_norm and the head (a tied head: the copy of token_embd llama.cpp makes in the output layer)."""
    head = info.tensor("output.weight") or info.tensor("token_embd.weight")
    return info.tensor("output_norm.weight").n_bytes + head.n_bytes


def test_ngl_1_offloads_the_output_layer_only(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    pred = predict(info, RuntimeSettings(n_gpu_layers=1), mmap=False)
    assert pred.buffers["model:CUDA0"] == output_layer_bytes(info)
    assert "kv:CUDA0" not in pred.buffers


def test_ngl_n_layer_offloads_every_block_but_the_first(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    n_layer = info.hparams.n_layer
    pred = predict(info, RuntimeSettings(n_gpu_layers=n_layer, cache_type_k="q8_0"), mmap=False)
    blocks = sum(t.n_bytes for t in info.tensors if t.layer is not None and t.layer >= 1)
    assert pred.buffers["model:CUDA0"] == blocks + output_layer_bytes(info)
    assert pred.buffers["kv:CUDA0"] == (n_layer - 1) * pred.buffers["kv:CPU"]  # block 0's rows stay on the host


def test_split_head_in_tensor_types_is_counted(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    tied = predict(info, RuntimeSettings(), mmap=False).buffers["model:CPU"]
    split = predict(info, RuntimeSettings(), {"output.weight": lookup("q8_0")}, mmap=False).buffers["model:CPU"]
    embd = info.tensor("token_embd.weight")
    assert split - tied == lookup("q8_0").tensor_bytes(embd.shape)


def test_predict_on_a_70b_shape_runs_in_a_loop(tmp_path: Path) -> None:
    info = read_gguf(write_synth(tmp_path / "70b.gguf", PRESETS["llama-3-70b"], sparse=True))
    for ngl in range(0, info.hparams.n_layer + 2):
        pred = predict(info, RuntimeSettings(n_gpu_layers=ngl, n_ctx=8192, cache_type_k="q4_0", cache_type_v="q4_0"))
        assert pred.by_kind("kv") == 80 * 8 * 128 * 2 * 18 // 32 * 8192


def test_an_unknown_kv_type_is_a_one_line_error(tiny_model: Path) -> None:
    from ggprec.errors import GgprecError

    with pytest.raises(GgprecError, match="not a KV-cache type"):
        predict(read_gguf(tiny_model), RuntimeSettings(cache_type_k="q4_k"))


# --- mixtures of experts and per-tensor placement ---------------------------------------------------

def test_tiny_moe_prediction_matches_no_alloc_within_2_percent(tiny_moe: Path) -> None:
    assert_no_alloc_within_2_percent(tiny_moe, RuntimeSettings(n_ctx=1024, n_threads=1))


@pytest.mark.llama
@pytest.mark.parametrize("n_ctx", [1024, 4096])
def test_a_quantized_cache_on_a_mixture_of_experts_matches_no_alloc_within_2_percent(tiny_moe: Path,
                                                                                      n_ctx: int) -> None:
    """The Hadamard rotation's hole: one activation fewer beside the routed FFN, none more at the output."""
    assert_no_alloc_within_2_percent(tiny_moe, RuntimeSettings(n_ctx=n_ctx, n_threads=1, cache_type_k="q8_0",
                                                               cache_type_v="q8_0"))


def test_cpu_moe_moves_exactly_the_expert_bytes_from_the_gpu_to_host_memory(tiny_moe: Path) -> None:
    info = read_gguf(tiny_moe)
    exps = sum(t.n_bytes for t in info.tensors if t.role.endswith("_exps"))
    full = predict(info, RuntimeSettings(n_gpu_layers=ALL_LAYERS), mmap=False).buffers
    moved = predict(info, RuntimeSettings(n_gpu_layers=ALL_LAYERS, n_cpu_moe=ALL_LAYERS), mmap=False).buffers
    assert full["model:CUDA0"] - moved["model:CUDA0"] == exps
    assert moved["model:CPU"] - full["model:CPU"] == exps
    assert moved["kv:CUDA0"] == full["kv:CUDA0"]  # the KV cache follows the layers, not the overrides


def test_an_override_to_the_gpu_moves_host_tensors_there(tiny_moe: Path) -> None:
    """`^output` and not `output`, which is also found in every attn_output."""
    info = read_gguf(tiny_moe)
    pred = predict(info, RuntimeSettings(override_tensor=(("^output", "CUDA0"),)), mmap=False).buffers
    assert pred["model:CUDA0"] == info.tensor("output.weight").n_bytes + info.tensor("output_norm.weight").n_bytes


def test_mla_caches_one_latent_row_per_cell_and_no_v(tmp_path: Path) -> None:
    path = write_synth(tmp_path / "ds.gguf", shape_for("deepseek-v2-lite", n_layer=2, n_vocab=1000), sparse=True)
    s = RuntimeSettings(n_ctx=512, n_threads=1)
    pred = predict(read_gguf(path), s, mmap=False).buffers
    assert pred["kv:CPU"] == 2 * 512 * (512 + 64) * 2  # layers x cells x (kv_lora_rank + rope dims) x f16
    # llama.cpp logs the simulated cache in MiB with two decimals: known to +-0.005 MiB
    assert abs(pred["kv:CPU"] - measure_allocation(path, s, no_alloc=True).buffers["kv:CPU"]) <= 5243


def test_a_token_reads_the_used_share_of_the_routed_experts(tiny_moe: Path) -> None:
    """tiny-moe: 2 of 4 experts used; token_embd is one row of 256 f16; norms are f32."""
    info = read_gguf(tiny_moe)
    exps = sum(t.n_bytes for t in info.tensors if t.role.endswith("_exps"))
    f16_dense = sum(t.n_bytes for t in info.tensors
                    if t.type.name == "f16" and not t.role.endswith("_exps") and t.name != "token_embd.weight")
    f32 = sum(t.n_bytes for t in info.tensors if t.type.name == "f32")
    assert bytes_read_per_token(info, RuntimeSettings()) == {"CPU": {"f16": exps // 2 + f16_dense + 256 * 2,
                                                                     "f32": f32}}


def test_cpu_moe_puts_the_expert_reads_on_the_host(tiny_moe: Path) -> None:
    info = read_gguf(tiny_moe)
    reads = bytes_read_per_token(info, RuntimeSettings(n_gpu_layers=ALL_LAYERS, n_cpu_moe=ALL_LAYERS))
    exps = sum(t.n_bytes for t in info.tensors if t.role.endswith("_exps"))
    assert reads["CPU"] == {"f16": exps // 2 + 256 * 2}


def test_sizes_print_in_mib_below_one_gib_and_in_gib_above() -> None:
    from ggprec.units import size_text

    assert (size_text(3.3 * 2**20), size_text(1.5 * 2**30)) == ("3.3 MiB", "1.50 GiB")


def test_repacked_weights_are_resident_once_not_twice(sparse_8b_session: Path) -> None:
    # With repacking the weights leave the mapping for CPU_REPACK, but llama.cpp still maps their file range:
    # that part is evictable page cache, so what must stay resident is the same with and without repacking.
    from ggprec.cpu_buffers import from_flags
    from ggprec.plan import resolve_plan
    from ggprec.profile import load_profile

    info = read_gguf(sparse_8b_session)
    types = resolve_plan(info, load_profile("q4_0")).tensor_types()
    plain = predict(info, RuntimeSettings(n_ctx=4096), types, host=from_flags(set()))
    repacked = predict(info, RuntimeSettings(n_ctx=4096), types, host=from_flags({"avx2"}))
    assert repacked.buffers["model:CPU_REPACK"] > 0 and plain.evictable == 0
    assert repacked.evictable == repacked.host_total - plain.host_total
    assert repacked.resident_host == plain.resident_host


@pytest.mark.llama
@pytest.mark.parametrize(("n_ctx", "where"), [(32768, "transposed latent V f16"),
                                              (8192, "transposed latent V in the query's hole")])
def test_mla_without_flash_attention_copies_the_latent_v_transposed(tmp_path: Path, n_ctx: int, where: str) -> None:
    """At n_ubatch 256 the query's intermediates leave 14 MiB: the 8 MiB copy of ctx 8192 fits, 32 MiB does not."""
    path = write_synth(tmp_path / "ds.gguf", shape_for("deepseek-v2-lite", n_layer=2, n_vocab=1000), sparse=True)
    s = RuntimeSettings(n_ctx=n_ctx, n_ubatch=256, n_threads=1, flash_attn=False)
    assert where in predict(read_gguf(path), s, mmap=False).explain["compute:CPU"]
    assert_no_alloc_within_2_percent(path, s)


def assert_flash_attention_output_peak(model: Path, n_ctx: int, kv: str, held: str) -> None:
    """The predicted compute buffer is the output peak whose reason ends with `held`, and matches no_alloc."""
    s = RuntimeSettings(n_ctx=n_ctx, n_threads=1, cache_type_k=kv, cache_type_v=kv, flash_attn=True)
    assert predict(read_gguf(model), s, mmap=False).explain["compute:CPU"].endswith(held)
    assert_no_alloc_within_2_percent(model, s)


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("oss") / "oss.gguf", shape_for("gpt-oss-20b", n_layer=2), sparse=True)


@pytest.mark.llama
@pytest.mark.parametrize(("n_ctx", "kv", "held"), [(1024, "q8_0", "+ 3 activations + 2 f16 masks 1024x512"),
                                                   (4096, "q8_0", "+ 6 activations + 2 f16 masks 4096x512"),
                                                   (8192, "f16", "+ 2 activations + 2 f16 masks 8192x512"),
                                                   (8192, "q8_0", "+ 3 activations"),
                                                   (16384, "f16", "+ 3 activations")])
def test_gpt_oss_logits_sit_above_what_its_mask_width_leaves(gpt_oss: Path, n_ctx: int, kv: str, held: str) -> None:
    """Sliding-window experts with flash attention: two masks of n_kv / n_embd activations (n_embd 2880) below
    one, between one and two, between 2.5 and 4 (a rotated cache: only while a mask is narrower than the query)."""
    assert_flash_attention_output_peak(gpt_oss, n_ctx, kv, held)


@pytest.fixture(scope="module")
def smollm2_shape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M's widths (n_ff 2.67 n_embd, as Llama 2 and TinyLlama), two layers, no weights."""
    return write_synth(tmp_path_factory.mktemp("sm") / "sm.gguf", shape_for("smollm2-135m", n_layer=2), sparse=True)


@pytest.mark.llama
@pytest.mark.parametrize(("n_ctx", "kv", "held"), [(2048, "f16", "+ 4 activations + f16 mask 2048x512"),
                                                   (1024, "q8_0", "+ 5 activations + f16 mask 1024x512"),
                                                   (2304, "f16", "+ 2 activations"),
                                                   (512, "q8_0", "+ 2 activations")])
def test_a_narrow_ffn_leaves_the_mask_below_the_logits(smollm2_shape: Path, n_ctx: int, kv: str, held: str) -> None:
    """Flash attention, n_ff 1536 and n_embd 576: the mask stays below the logits from n_ff / n_embd - 1 to 2
    activations wide (f16 cache: n_kv 2048 only), or from n_ff / n_embd - 2 to 1 (rotated q8_0: 768 and 1024)."""
    assert_flash_attention_output_peak(smollm2_shape, n_ctx, kv, held)
