"""The tiny mixture of experts end to end through llama.cpp: quantized with a mixed profile that places the
experts on the CPU, run with --cpu-moe, evaluated against its own f32 build."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.gguf_info import read_gguf
from ggprec.llama_backend import load_model
from ggprec.profile import load_profile
from ggprec.runner import Decoder, tokenize
from ggprec.settings import ALL_LAYERS, RuntimeSettings
from ggprec.synth import PRESETS, write_synth

PROFILE = """\
name: moe-mixed
description: attention q8_0, routed experts q4_k, everything else f16; experts on the CPU
default: f16
rules:
  - role: [attn_q, attn_k, attn_v, attn_output]
    type: q8_0
  - role: [ffn_gate_exps, ffn_up_exps, ffn_down_exps]
    type: q4_k
runtime:
  n_cpu_moe: -1
  override_tensor:
    - {pattern: 'blk\\.0\\.attn_q\\.', device: CPU}
"""


@pytest.fixture(scope="module")
def moe_quantized(tiny_moe: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("moe-e2e")
    profile = tmp / "moe-mixed.yaml"
    profile.write_text(PROFILE)
    out = tmp / "tiny-moe-mixed.gguf"
    r = CliRunner().invoke(main, ["quantize", str(tiny_moe), "-p", str(profile), "-o", str(out), "-t", "2"])
    assert r.exit_code == 0, r.output
    return out, profile


def test_a_profile_places_tensors_and_keeps_it_through_a_round_trip(moe_quantized: tuple[Path, Path]) -> None:
    rt = load_profile(str(moe_quantized[1])).runtime
    assert (rt.n_cpu_moe, rt.override_tensor) == (ALL_LAYERS, ((r"blk\.0\.attn_q\.", "CPU"),))
    assert load_profile(str(moe_quantized[1])).to_dict()["runtime"]["override_tensor"] == [
        {"pattern": r"blk\.0\.attn_q\.", "device": "CPU"}]


def test_the_mixed_profile_quantizes_experts_and_attention_as_asked(moe_quantized: tuple[Path, Path]) -> None:
    types = {t.name: t.type.name for t in read_gguf(moe_quantized[0]).tensors}
    assert {types[f"blk.{i}.{e}.weight"] for i in (0, 1) for e in ("ffn_gate_exps", "ffn_up_exps",
                                                                    "ffn_down_exps")} == {"q4_k"}
    assert types["blk.1.attn_v.weight"] == "q8_0"
    assert types["blk.0.ffn_gate_inp.weight"] == "f16"  # llama.cpp never quantizes the router


def test_run_with_cpu_moe_measures_speed_and_memory(moe_quantized: tuple[Path, Path], tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(moe_quantized[0]), "--cpu-moe", "-c", "256", "--pp", "16", "--tg", "4",
                                  "--reps", "1", "-t", "2", "--json", "--db", str(tmp_path / "h.db")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["settings"]["n_cpu_moe"] == ALL_LAYERS
    assert doc["tg_tps"]["median"] > 0 and doc["pp_tps"]["median"] > 0
    assert set(doc["predicted"]) == set(doc["allocation"]["buffers"])


def test_logits_with_the_experts_placed_on_the_cpu_are_finite(moe_quantized: tuple[Path, Path]) -> None:
    import llama_cpp
    import numpy as np

    s = RuntimeSettings(n_ctx=128, n_threads=2, n_cpu_moe=ALL_LAYERS)
    with load_model(moe_quantized[0], s) as lm:
        dec = Decoder(lm)
        try:
            dec.decode(tokenize(lm, "The quick brown fox"), 0)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lm.ctx, -1), shape=(lm.n_vocab,))
            assert lm.n_vocab == 1024 and np.isfinite(logits).all() and logits.std() > 0
        finally:
            dec.close()


def test_eval_against_its_own_f32_build_gives_finite_figures(moe_quantized: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    f32 = write_synth(tmp_path / "tiny-moe-f32.gguf", PRESETS["tiny-moe"], dtype="f32")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    r = CliRunner().invoke(main, ["eval", str(moe_quantized[0]), "--reference", str(f32), "--text", str(text),
                                  "--ctx", "128", "--chunks", "2", "--threads", "2", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert math.isfinite(doc["kld_mean"]) and doc["kld_mean"] > 0  # q4_k experts differ from f32
    assert 0 <= doc["top1"] <= 1
