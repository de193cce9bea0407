"""What llama.cpp allocates, read from its own log (ggprec.alloc, ggprec.llama_backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggprec.alloc import measure_allocation, parse_buffers
from ggprec.errors import GgprecError
from ggprec.gguf_info import read_gguf
from ggprec.llama_backend import capture_log, load_model
from ggprec.settings import RuntimeSettings
from ggprec.units import MIB

SETTINGS = RuntimeSettings(n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2)
HALF_LOGGED_DIGIT = 0.005 * MIB + 1  # llama.cpp logs MiB with two decimals; we round to whole bytes


def kv_bytes(path: Path, n_ctx: int, k_bytes: float, v_bytes: float) -> float:
    hp = read_gguf(path).hparams
    return n_ctx * sum(n_kv * (hp.head_dim_k * k_bytes + hp.head_dim_v * v_bytes) for n_kv in hp.n_head_kv)


def test_parse_buffers_sums_per_kind_and_device() -> None:
    lines = [
        "load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
        "load_tensors:        CUDA0 model buffer size =  1024.00 MiB",
        "llama_context:        CPU  output buffer size =     0.19 MiB",
        "llama_kv_cache:        CPU KV buffer size =    11.25 MiB",
        "llama_kv_cache:        CPU KV buffer size =     1.00 MiB",
        "sched_reserve:    CUDA_Host compute buffer size =     2.00 MiB",
        "print_info: file size   = 2.75 MiB (16.01 BPW)",
    ]
    assert parse_buffers(lines) == {
        "model:CPU_Mapped": round(92.10 * MIB),
        "model:CUDA0": 1024 * MIB,
        "output:CPU": round(0.19 * MIB),
        "kv:CPU": round(12.25 * MIB),
        "compute:CUDA_Host": 2 * MIB,
    }


def test_loaded_tiny_model_reports_mapped_weights_kv_and_compute(tiny_model: Path) -> None:
    alloc = measure_allocation(tiny_model, SETTINGS)
    assert set(alloc.buffers) == {"model:CPU_Mapped", "output:CPU", "kv:CPU", "compute:CPU"}
    assert alloc.buffers["kv:CPU"] == kv_bytes(tiny_model, 512, 2, 2)  # f16 K and V
    assert abs(alloc.buffers["model:CPU_Mapped"] - read_gguf(tiny_model).tensor_bytes) <= HALF_LOGGED_DIGIT
    assert alloc.buffers["compute:CPU"] > 0
    assert alloc.host_total == alloc.total and not alloc.no_alloc


def test_no_alloc_simulates_the_same_buffers_without_loading_weights(tiny_model: Path) -> None:
    real = measure_allocation(tiny_model, SETTINGS)
    sim = measure_allocation(tiny_model, SETTINGS, no_alloc=True)
    assert sim.no_alloc
    # load mode NONE instead of mmap: the weights land in a plain CPU buffer of their exact size
    assert sim.buffers["model:CPU"] == read_gguf(tiny_model).tensor_bytes
    assert sim.buffers["kv:CPU"] == real.buffers["kv:CPU"]
    assert sim.buffers["compute:CPU"] == real.buffers["compute:CPU"]


def test_quantized_kv_cache_shrinks_the_kv_buffer(tiny_model: Path) -> None:
    q8 = SETTINGS.with_overrides(cache_type_k="q8_0", cache_type_v="q8_0", flash_attn=True)
    alloc = measure_allocation(tiny_model, q8, no_alloc=True)
    assert abs(alloc.buffers["kv:CPU"] - kv_bytes(tiny_model, 512, 34 / 32, 34 / 32)) <= HALF_LOGGED_DIGIT


def test_capture_log_collects_llama_cpp_lines_in_process(tiny_model: Path) -> None:
    with capture_log() as outer:
        lm = load_model(tiny_model, SETTINGS)
        lm.close()
    assert any("model buffer size" in line for line in lm.log.text)  # the load's own capture
    assert not any("model buffer size" in line for line in outer.text)
    assert any("compute buffer size is" in line for line in outer.text)  # freeing the context logs too
    assert lm.n_layer == 2 and lm.settings.n_threads == 2


def test_model_llama_cpp_cannot_load_is_an_error_with_its_reason(unknown_arch_model: Path) -> None:
    with pytest.raises(GgprecError, match="llama.cpp cannot load it: unknown model architecture: 'nosucharch'"):
        measure_allocation(unknown_arch_model, SETTINGS)


def test_quantized_v_cache_with_flash_attention_forced_off_is_an_error(tiny_model: Path) -> None:
    bad = SETTINGS.with_overrides(cache_type_v="q4_0", flash_attn=False)
    with pytest.raises(GgprecError, match="quantized V cache .q4_0. needs flash attention"):
        measure_allocation(tiny_model, bad)


def test_unknown_cache_type_is_an_error(tiny_model: Path) -> None:
    with pytest.raises(GgprecError, match="'q4_k' is not a KV-cache type"):
        measure_allocation(tiny_model, SETTINGS.with_overrides(cache_type_k="q4_k"))


def test_no_alloc_sizes_an_8b_shape_from_a_sparse_file(sparse_8b_session: Path) -> None:
    alloc = measure_allocation(sparse_8b_session, RuntimeSettings(n_ctx=8192, n_threads=2), no_alloc=True)
    assert alloc.buffers["model:CPU"] == read_gguf(sparse_8b_session).tensor_bytes
    assert alloc.buffers["kv:CPU"] == kv_bytes(sparse_8b_session, 8192, 2, 2) == 2**30
    assert alloc.buffers["compute:CPU"] > 0
