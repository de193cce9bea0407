"""`ggprec quantize`: plans written by llama.cpp's own quantizer, checked tensor by tensor."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.errors import GgprecError
from ggprec.gguf_info import read_gguf
from ggprec.llama_backend import load_model
from ggprec.plan import resolve_plan
from ggprec.profile import Profile, Rule, load_profile, shipped_profiles
from ggprec.quantize import RequantizeWarning, build_variant, quantize, verify
from ggprec.runner import Decoder, generate
from ggprec.settings import RuntimeSettings


def plan_for(src: Path, profile: str | Profile):
    return resolve_plan(read_gguf(src), load_profile(profile) if isinstance(profile, str) else profile)


def tensor_bytes(path: Path) -> dict[str, bytes]:
    with open(path, "rb") as f:
        out = {}
        for t in read_gguf(path).tensors:
            f.seek(t.offset)
            out[t.name] = f.read(t.n_bytes)
        return out


def last_logits(path: Path, tokens: list[int]):
    """llama.cpp's logits for the last of `tokens` (read with llama_get_logits_ith, see ARCHITECTURE.md)."""
    import llama_cpp
    import numpy as np

    from ggprec.llama_backend import load_model
    from ggprec.runner import Decoder
    from ggprec.settings import RuntimeSettings

    with load_model(path, RuntimeSettings(n_ctx=64, n_batch=64, n_threads=2)) as lm:
        dec = Decoder(lm)
        dec.decode(tokens, 0)
        dec.close()
        ptr = llama_cpp.llama_get_logits_ith(lm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(lm.n_vocab,)).copy()


# --- SmolLM2 (the real model, dequantized to f32 first) ---------------------------------------


@pytest.fixture(scope="module")
def smol_builds(tmp_path_factory: pytest.TempPathFactory, demo_f32: Path) -> dict[str, Path]:
    """Every shipped profile written from SmolLM2 f32 by `quantize` (plans with the same weights once)."""
    out_dir = tmp_path_factory.mktemp("smol")
    info = read_gguf(demo_f32)
    builds: dict[str, Path] = {}
    by_weights: dict[str, Path] = {}
    for profile in shipped_profiles():
        plan = resolve_plan(info, profile)
        if plan.weights_hash() not in by_weights:
            by_weights[plan.weights_hash()] = quantize(demo_f32, plan, out_dir / f"{profile.name}.gguf", threads=2)
        builds[profile.name] = by_weights[plan.weights_hash()]
    return builds


@pytest.mark.slow
def test_plan_predicts_the_written_size_of_every_shipped_profile_on_smollm2(demo_f32: Path,
                                                                            smol_builds: dict[str, Path]) -> None:
    for name, path in smol_builds.items():
        assert path.stat().st_size == plan_for(demo_f32, name).predicted_file_size, name


@pytest.mark.slow
def test_mixed_on_smollm2_holds_exactly_the_asked_types_and_generates(smol_builds: dict[str, Path]) -> None:

    info = read_gguf(smol_builds["mixed"])
    want = {"attn_q": "f16", "attn_k": "f16", "attn_v": "f16", "attn_output": "f16", "ffn_gate": "q8_0",
            "ffn_up": "q8_0", "ffn_down": "q8_0", "token_embd": "q4_0", "norm": "f32"}
    assert {t.role for t in info.tensors} == set(want)
    for t in info.tensors:
        assert t.type.name == want[t.role], t.name
    assert info.tied_output
    with load_model(smol_builds["mixed"], RuntimeSettings(n_ctx=128, n_threads=2)) as lm:
        dec = Decoder(lm)
        text = generate(lm, dec, "The capital of France is", 8)
        dec.close()
    assert text.strip()


@pytest.mark.slow
def test_mixed_split_head_on_smollm2_has_a_q8_0_output_head(smol_builds: dict[str, Path]) -> None:
    info = read_gguf(smol_builds["mixed-split-head"])
    assert info.tensor("output.weight").type.name == "q8_0"
    assert info.tensor("token_embd.weight").type.name == "q4_0"


@pytest.mark.slow
def test_a_split_f32_head_gives_the_same_logits_as_the_tied_f32_model(tmp_path: Path, demo_f32: Path) -> None:
    split = quantize(demo_f32, plan_for(demo_f32, Profile(name="f32-split", default="f32", split_output="f32")),
                     tmp_path / "split.gguf", threads=2)
    assert read_gguf(split).tensor("output.weight") is not None
    tokens = [1, 504, 3458, 282, 4649, 314]
    tied, untied = last_logits(demo_f32, tokens), last_logits(split, tokens)
    assert (tied == untied).all()


@pytest.mark.slow
def test_q8_0_profile_is_byte_identical_to_plain_llama_model_quantize(tmp_path: Path, demo_f32: Path,
                                                                      smol_builds: dict[str, Path]) -> None:
    import llama_cpp

    plain = tmp_path / "plain-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(demo_f32).encode(), str(plain).encode(), ctypes.byref(params)) == 0
    assert tensor_bytes(smol_builds["q8_0"]) == tensor_bytes(plain)


@pytest.mark.slow
def test_the_f32_reference_of_a_quantized_model_is_built_once(demo_model: Path, demo_f32: Path) -> None:
    assert {t.type.name for t in read_gguf(demo_f32).tensors} == {"f32"}
    assert build_variant(demo_model, load_profile("f32")) == demo_f32


# --- the tiny synthetic model ------------------------------------------------------------------


def test_requantizing_a_quantized_source_warns(tmp_path: Path, tiny_model: Path) -> None:
    q8 = quantize(tiny_model, plan_for(tiny_model, "q8_0"), tmp_path / "q8.gguf", threads=2)
    with pytest.warns(RequantizeWarning, match="quality is bounded by the source"):
        out = quantize(q8, plan_for(q8, "f16"), tmp_path / "f16.gguf", threads=2)
    assert {t.type.name for t in read_gguf(out).tensors} == {"f16", "f32"}


def test_progress_reports_every_tensor(tmp_path: Path, tiny_model: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    plan = plan_for(tiny_model, "mixed")
    quantize(tiny_model, plan, tmp_path / "m.gguf", threads=2, progress=lambda d, n, name: seen.append((d, n, name)))
    assert [d for d, _, _ in seen] == list(range(1, len(plan.tensors) + 1))
    assert {name for _, _, name in seen} == {t.name for t in plan.tensors}


def test_verify_rejects_a_file_that_differs_from_the_plan(tmp_path: Path, tiny_model: Path) -> None:
    out = quantize(tiny_model, plan_for(tiny_model, "q8_0"), tmp_path / "q8.gguf", threads=2)
    with pytest.raises(GgprecError, match=r"differ from the plan, e\.g\. .* is q8_0, planned q4_0"):
        verify(out, plan_for(tiny_model, "q4_0"))


def test_refuses_to_overwrite_the_source_or_an_existing_output(tmp_path: Path, tiny_model: Path) -> None:
    plan = plan_for(tiny_model, "q8_0")
    with pytest.raises(GgprecError, match="refusing to overwrite the source model"):
        quantize(tiny_model, plan, tiny_model, force=True)
    existing = tmp_path / "out.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(GgprecError, match="already exists"):
        quantize(tiny_model, plan, existing)
    assert existing.read_bytes() == b"keep me"
    quantize(tiny_model, plan, existing, force=True, threads=2)
    assert existing.stat().st_size == plan.predicted_file_size


def test_a_plan_for_another_model_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    split_plan = plan_for(tiny_model, "mixed-split-head")
    split_file = quantize(tiny_model, split_plan, tmp_path / "split.gguf", threads=2)
    with pytest.raises(GgprecError, match="resolved for a different model"):
        quantize(split_file, split_plan, tmp_path / "again.gguf")
    assert not (tmp_path / "again.gguf").exists()


def test_build_variant_reuses_an_identical_build(tmp_path: Path, tiny_model: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGPREC_CACHE", str(tmp_path / "cache"))
    first = build_variant(tiny_model, load_profile("q8_0"), threads=2)
    mtime = first.stat().st_mtime_ns
    assert first.parent == tmp_path / "cache" / "variants"
    assert build_variant(tiny_model, load_profile("q8_0-kv-q8_0"), threads=2) == first  # same weights
    assert first.stat().st_mtime_ns == mtime
    assert build_variant(tiny_model, load_profile("f16"), threads=2) != first


@pytest.mark.parametrize(("args", "profile_text", "message"), [
    (["missing.gguf", "-p", "q8_0", "-o", "out.gguf"], "", "missing.gguf: no such file"),
    (["{src}", "-p", "nope", "-o", "out.gguf"], "", "no profile named or at 'nope'"),
    (["{src}", "-p", "q8_0", "-o", "no/such/dir/out.gguf"], "", "directory no/such/dir does not exist"),
    (["{src}", "-p", "q8_0", "-o", "{src}", "--force"], "", "refusing to overwrite the source model"),
    (["{src}", "-p", "bad.yaml", "-o", "out.gguf"], "default: q9_0\n", "unknown ggml type 'q9_0'"),
    (["{src}", "-p", "bad.yaml", "-o", "out.gguf"], "defaults: q8_0\n", "unknown key 'defaults'"),
    (["{src}", "-p", "bad.yaml", "-o", "out.gguf"], "rules:\n  - match: '(('\n    type: f16\n", "invalid regex"),
    (["{src}", "-p", "bad.yaml", "-o", "out.gguf"], "kv_cache:\n  v: q6_k\n", "not a KV-cache type"),
    (["{src}", "-p", "bad.yaml", "-o", "out.gguf"], "kv_cache:\n  v: q4_0\nruntime:\n  flash_attn: false\n",
     "needs flash attention"),
])
def test_quantize_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, tiny_model: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                                   profile_text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(profile_text)
    before = tiny_model.stat().st_mtime_ns
    result = CliRunner().invoke(main, ["quantize", *[a.replace("{src}", str(tiny_model)) for a in args]])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
    assert tiny_model.stat().st_mtime_ns == before


def test_quantize_cli_writes_the_plan(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "mixed.gguf"
    result = CliRunner().invoke(main, ["quantize", str(tiny_model), "-p", "mixed", "-o", str(out), "-t", "2"])
    assert result.exit_code == 0, result.output
    assert f"predicted {plan_for(tiny_model, 'mixed').predicted_file_size:,}" in result.output
    assert read_gguf(out).tensor("token_embd.weight").type.name == "q4_0"


def test_a_mix_of_unquantized_types_is_written_exactly(tmp_path: Path, tiny_model: Path) -> None:
    # llama.cpp ignores per-tensor overrides under an f16/f32 base type; ggprec still gets this mix.
    profile = Profile(name="f16-attn", default="f32", rules=(Rule(type="f16", roles=("attn_q", "attn_k")),))
    out = quantize(tiny_model, plan_for(tiny_model, profile), tmp_path / "mix.gguf", threads=2)
    info = read_gguf(out)
    assert info.tensor("blk.0.attn_q.weight").type.name == "f16"
    assert info.tensor("blk.0.attn_v.weight").type.name == "f32"
    assert info.tensor("token_embd.weight").type.name == "f32"
