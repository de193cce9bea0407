"""Plan resolution: a profile applied to a model, with llama.cpp's fallbacks and the exact file size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.gguf_info import read_gguf
from ggprec.plan import resolve_plan
from ggprec.profile import Profile, Rule, load_profile, shipped_profiles
from ggprec.quantize import quantize
from ggprec.synth import shape_for, write_synth


def test_mixed_on_the_tiny_model_types_every_tensor_by_role(tiny_model: Path) -> None:
    plan = resolve_plan(read_gguf(tiny_model), load_profile("mixed"))
    want = {"attn_q": "f16", "attn_k": "f16", "attn_v": "f16", "attn_output": "f16", "ffn_gate": "q8_0",
            "ffn_up": "q8_0", "ffn_down": "q8_0", "token_embd": "q4_0", "norm": "f32"}
    for t in plan.tensors:
        assert t.type.name == want[t.role], t.name
    norms = [t for t in plan.tensors if t.role == "norm"]
    assert all(t.rule == "never quantized" and t.note for t in norms)
    assert plan.tensor_types()["blk.1.attn_q.weight"].name == "f16"


def test_the_first_matching_rule_wins_and_is_named(tiny_model: Path) -> None:
    profile = Profile(name="p", default="q8_0", rules=(Rule(type="f32", match=r"blk\.0\.attn_q\.weight"),
                                                       Rule(type="f16", roles=("attn_q",))))
    plan = {t.name: t for t in resolve_plan(read_gguf(tiny_model), profile).tensors}
    assert (plan["blk.0.attn_q.weight"].type.name, plan["blk.0.attn_q.weight"].rule) == \
        ("f32", r"rules[0] match 'blk\.0\.attn_q\.weight'")
    assert (plan["blk.1.attn_q.weight"].type.name, plan["blk.1.attn_q.weight"].rule) == ("f16", "rules[1] role attn_q")
    assert (plan["blk.1.ffn_up.weight"].type.name, plan["blk.1.ffn_up.weight"].rule) == ("q8_0", "default")


def test_a_rule_matching_no_tensor_is_a_warning(tiny_model: Path) -> None:
    profile = Profile(name="p", rules=(Rule(type="f16", roles=("attn_qkv",)),))
    assert resolve_plan(read_gguf(tiny_model), profile).warnings == ["rules[0] role attn_qkv matches no tensor"]


def test_split_output_adds_an_output_head_copied_from_token_embd(tiny_model: Path) -> None:
    plan = resolve_plan(read_gguf(tiny_model), load_profile("mixed-split-head"))
    head = plan.tensors[-1]
    assert (head.name, head.type.name, head.split, head.rule) == ("output.weight", "q8_0", True, "split_output")
    assert head.shape == read_gguf(tiny_model).tensor("token_embd.weight").shape
    assert plan.tensor_types()["token_embd.weight"].name == "q4_0"


def test_k_quant_rows_not_divisible_by_256_fall_back_like_llama_cpp(tmp_path: Path) -> None:
    # n_embd 288 is a multiple of 32, not of 256: q4_k falls back to q5_0 there; ffn_down rows (512) keep q4_k.
    src = write_synth(tmp_path / "odd.gguf", shape_for("tiny", n_embd=288), dtype="f16")
    plan = resolve_plan(read_gguf(src), Profile(name="k", default="q4_k"))
    types = {t.name: t for t in plan.tensors}
    assert types["blk.0.attn_q.weight"].type.name == "q5_0"
    assert "q4_k needs rows divisible by 256, row is 288: llama.cpp falls back to q5_0" in types[
        "blk.0.attn_q.weight"].note
    assert types["blk.0.ffn_down.weight"].type.name == "q4_k"
    out = quantize(src, plan, tmp_path / "odd-q4k.gguf", threads=2)  # re-reads and checks every type
    assert out.stat().st_size == plan.predicted_file_size


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_predicted_size_is_the_written_size_for_every_shipped_profile_tiny(tmp_path: Path, dtype: str,
                                                                            tiny_model: Path,
                                                                            tiny_model_f32: Path) -> None:
    src = tiny_model if dtype == "f16" else tiny_model_f32
    info = read_gguf(src)
    for profile in shipped_profiles():
        plan = resolve_plan(info, profile)
        out = quantize(src, plan, tmp_path / f"{profile.name}.gguf", threads=2)
        assert out.stat().st_size == plan.predicted_file_size, profile.name


def test_plan_json_has_every_tensor_rule_and_size(tiny_model: Path) -> None:
    result = CliRunner().invoke(main, ["plan", str(tiny_model), "--profile", "mixed", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["profile"] == "mixed" and len(doc["plan_hash"]) == 64
    assert doc["predicted_file_size"] == resolve_plan(read_gguf(tiny_model), load_profile("mixed")).predicted_file_size
    q = next(t for t in doc["tensors"] if t["name"] == "blk.0.attn_q.weight")
    assert (q["source_type"], q["type"], q["rule"]) == ("f16", "f16", "rules[0] role attn_q,attn_k,attn_v,attn_output")


def test_plan_command_shows_changes_and_predicted_size(tiny_model: Path) -> None:
    result = CliRunner().invoke(main, ["plan", str(tiny_model), "--profile", "q8_0"])
    assert result.exit_code == 0, result.output
    assert "tensors change type" in result.output and "predicted" in result.output


def test_plan_hash_depends_on_types_and_runtime_not_on_names(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    q8, kv8 = resolve_plan(info, load_profile("q8_0")), resolve_plan(info, load_profile("q8_0-kv-q8_0"))
    assert q8.weights_hash() == kv8.weights_hash()
    assert q8.plan_hash() != kv8.plan_hash()
    renamed = Profile(name="other-name", default="q8_0")
    assert resolve_plan(info, renamed).plan_hash() == q8.plan_hash()


def test_plan_of_a_missing_model_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plan", str(tmp_path / "none.gguf"), "--profile", "mixed"])
    assert result.exit_code == 2
    assert result.output == f"ggprec: error: {tmp_path / 'none.gguf'}: no such file\n"


def test_the_metadata_size_is_found_without_a_second_walk_and_matches_the_walk(tiny_model: Path) -> None:
    from ggprec import plan as plan_module

    info = read_gguf(tiny_model)
    sizes, end = plan_module.kv_region(info)  # the full walk over every key-value pair
    changed, fast_end = plan_module._changed_kv_sizes(info, ("general.file_type", "no.such"))
    assert fast_end == end == plan_module.metadata_end(info)
    assert changed == {"general.file_type": sizes["general.file_type"]}  # a u32, found by its encoded key
    # A key that is not a scalar cannot be sized from its type alone: the walk answers instead.
    assert plan_module._changed_kv_sizes(info, ("general.name",)) == ({"general.name": sizes["general.name"]}, end)


def test_profiles_json_is_a_document_with_a_schema() -> None:
    doc = json.loads(CliRunner().invoke(main, ["profiles", "--json"]).stdout)
    assert doc["schema"] == 1 and "q8_0" in {p["name"] for p in doc["profiles"]}
