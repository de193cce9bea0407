"""Profiles: the YAML format, its validation, the shipped set, and building one in Python."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.errors import GgprecError
from ggprec.profile import Profile, Rule, load_profile, parse_layers, profile_to_yaml, shipped_profiles

SHIPPED = ["mixed", "mixed-split-head", "q8_0", "f16", "f32", "q4_0", "q8_0-kv-q8_0", "q8_0-kv-q4_0"]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


def test_every_promised_profile_ships_with_a_one_line_description() -> None:
    profiles = {p.name: p for p in shipped_profiles()}
    assert set(SHIPPED) <= set(profiles)
    for p in profiles.values():
        assert p.description and "\n" not in p.description


def test_mixed_is_attention_f16_ffn_q8_0_embeddings_q4_0() -> None:
    p = load_profile("mixed")
    assert [(r.roles, r.type) for r in p.rules] == [
        (("attn_q", "attn_k", "attn_v", "attn_output"), "f16"),
        (("ffn_gate", "ffn_up", "ffn_down"), "q8_0"),
        (("token_embd",), "q4_0"),
    ]
    assert p.split_output is None
    assert load_profile("mixed-split-head").split_output == "q8_0"


def test_kv_cache_profiles_quantize_the_cache_with_flash_attention_on() -> None:
    for name, kv in (("q8_0-kv-q8_0", "q8_0"), ("q8_0-kv-q4_0", "q4_0")):
        rt = load_profile(name).runtime
        assert (rt.cache_type_k, rt.cache_type_v, rt.flash_attn) == (kv, kv, True)


@pytest.mark.parametrize("name", SHIPPED)
def test_profiles_round_trip_through_yaml(tmp_path: Path, name: str) -> None:
    p = load_profile(name)
    assert load_profile(write(tmp_path, profile_to_yaml(p))) == p


def test_a_profile_built_in_python_round_trips_and_hashes_its_decisions(tmp_path: Path) -> None:
    p = Profile(name="per-tensor", rules=(Rule.exact("blk.0.attn_q.weight", "q4_0"),
                                          Rule(type="f16", roles=("ffn_down",), layers="last 2")), default="int8")
    assert p.default == "q8_0"
    back = load_profile(write(tmp_path, profile_to_yaml(p)))
    assert back == p and back.content_hash() == p.content_hash()
    other = Profile(name="per-tensor", rules=p.rules, default="q4_0")
    assert other.content_hash() != p.content_hash()


def test_type_aliases_resolve_to_llama_cpp_names(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, "default: int4\nrules:\n  - role: attn_q\n    type: fp16\n"
                                     "  - role: ffn_up\n    type: INT8\n"))
    assert (p.default, p.rules[0].type, p.rules[1].type) == ("q4_0", "f16", "q8_0")


def test_a_regex_rule_matches_the_whole_name_only() -> None:
    rule = Rule(type="q8_0", match=r"output\.weight")
    assert rule.selects("output.weight", "output", None, 30)
    assert not rule.selects("blk.3.attn_output.weight", "attn_output", 3, 30)


def test_layer_selectors() -> None:
    assert parse_layers("first 2", 30) == {0, 1}
    assert parse_layers("last 2", 30) == {28, 29}
    assert parse_layers("0-2, 7", 30) == {0, 1, 2, 7}
    rule = Rule(type="f16", roles=("ffn_down",), layers="last 1")
    assert rule.selects("blk.29.ffn_down.weight", "ffn_down", 29, 30)
    assert not rule.selects("blk.28.ffn_down.weight", "ffn_down", 28, 30)


@pytest.mark.parametrize(("text", "message"), [
    ("rulez: []\n", "unknown key 'rulez' (did you mean 'rules'?)"),
    ("rules:\n  - role: attn_q\n    typ: f16\n", "rules[0]: unknown key 'typ' (did you mean 'type'?)"),
    ("default: q8_O\n", "unknown ggml type 'q8_O' (did you mean 'q8_0'?)"),
    ("rules:\n  - role: attn_q\n    type: q4_k_m\n", "unknown ggml type 'q4_k_m' (did you mean 'q4_k'?)"),
    ("rules:\n  - match: 'blk\\.(0'\n    type: f16\n", "invalid regex 'blk\\.(0'"),
    ("rules:\n  - role: attn\n    type: f16\n", "unknown role 'attn'"),
    ("rules:\n  - role: attn_q\n    layers: middle 3\n    type: f16\n", "invalid layer selector 'middle 3'"),
    ("kv_cache:\n  k: q4_k\n", "kv_cache.k: 'q4_k' is not a KV-cache type llama.cpp accepts"),
    ("kv_cache:\n  v: q8_0\nruntime:\n  flash_attn: false\n", "a quantized V cache (q8_0) needs flash attention"),
    ("runtime:\n  n_ctx: lots\n", "runtime.n_ctx: expected an integer, got 'lots'"),
    ("rules: [\n", "not valid YAML"),
])
def test_bad_profiles_give_one_precise_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GgprecError) as err:
        load_profile(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_profile_name_suggests_the_nearest() -> None:
    with pytest.raises(GgprecError, match="did you mean 'mixed'"):
        load_profile("mixd")


def test_profiles_command_lists_the_shipped_profiles() -> None:
    result = CliRunner().invoke(main, ["profiles"])
    assert result.exit_code == 0
    for name in SHIPPED:
        assert name in result.output


@pytest.mark.parametrize(("text", "message"), [
    ("rules:\n  - role: 5\n    type: f16\n", "rules[0]: 'role' must be a role name or a list of role names, got 5"),
    ("rules:\n  - role: [attn_q, 7]\n    type: f16\n", "got ['attn_q', 7]"),
    ("rules:\n  - role: attn_q\n    type: [f16]\n", "rules[0]: 'type' must be a single value, not a list"),
    ("rules:\n  - role: attn_q\n    layers: 0-3000000\n    type: f16\n",
     "layer 3000000 in '0-3000000' is beyond any model (layer numbers go up to 4095)"),
    ("rules:\n  - role: attn_q\n    layers: '" + "9" * 5000 + "'\n    type: f16\n", "layer 999999999999... in"),
])
def test_bad_rule_values_give_one_line_at_once(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GgprecError) as err:
        load_profile(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_layer_selectors_name_only_the_models_layers_and_never_expand_large_counts() -> None:
    assert parse_layers("28-4095", 30) == {28, 29}
    assert parse_layers("first 999999999", 3) == {0, 1, 2}
    rule = Rule(type="f16", roles=("attn_q",), layers="0-4095")
    assert rule.selects("blk.29.attn_q.weight", "attn_q", 29, 30)
    assert not rule.selects("blk.30.attn_q.weight", "attn_q", 30, 30)
