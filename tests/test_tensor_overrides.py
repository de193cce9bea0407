"""Per-tensor placement (-ot, --cpu-moe, --n-cpu-moe): the ctypes array llama.cpp reads, the placement
memory.predict uses, and llama.cpp's own log agreeing with it."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.errors import GgprecError
from ggprec.ggml_lib import buffer_types
from ggprec.gguf_info import read_gguf
from ggprec.llama_backend import TensorBuftOverride, buft_overrides, load_model
from ggprec.settings import ALL_LAYERS, RuntimeSettings
from ggprec.tensor_overrides import (
    EXPS_PATTERN,
    check_pattern,
    gpu_layers,
    overridden,
    override_list,
    parse_overrides,
    placement,
)

EXPS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


@pytest.mark.parametrize("ngl, expected", [(0, (30, False)), (1, (30, True)), (2, (29, True)), (30, (1, True)),
                                           (31, (0, True)), (99, (0, True)), (ALL_LAYERS, (0, True))])
def test_gpu_layers_offload_the_output_layer_first_like_llama_cpp(ngl: int, expected: tuple[int, bool]) -> None:
    # src/llama-model.cpp: i_gpu_start = max(n_layer + 1 - ngl, 0) over the blocks and the output layer.
    assert gpu_layers(ngl, 30) == expected


def test_the_struct_is_two_pointers_pattern_first() -> None:
    ptr = ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(TensorBuftOverride) == 2 * ptr
    assert (TensorBuftOverride.pattern.offset, TensorBuftOverride.buft.offset) == (0, ptr)


def test_the_array_lists_override_tensor_then_n_cpu_moe_and_ends_with_a_null_pattern() -> None:
    arr = buft_overrides(RuntimeSettings(override_tensor=(("attn_q", "CPU"),), n_cpu_moe=2))
    assert arr is not None and len(arr) == 4
    assert [e.pattern for e in arr[:3]] == [b"attn_q", rb"blk\.0" + EXPS_PATTERN.encode(),
                                           rb"blk\.1" + EXPS_PATTERN.encode()]
    assert all(e.buft == buffer_types()["CPU"] for e in arr[:3])
    assert (arr[3].pattern, arr[3].buft) == (None, None)


def test_no_overrides_is_no_array() -> None:
    assert buft_overrides(RuntimeSettings()) is None


def test_cpu_moe_is_llama_cpps_expert_pattern_for_every_block() -> None:
    assert override_list(RuntimeSettings(n_cpu_moe=ALL_LAYERS)) == [(EXPS_PATTERN, "CPU")]


def test_an_unknown_device_is_a_one_line_error_listing_this_builds_devices() -> None:
    with pytest.raises(GgprecError, match=r"^override_tensor: unknown device 'NPU7'; this llama.cpp build has: .*CPU"):
        buft_overrides(RuntimeSettings(override_tensor=(("exps", "NPU7"),)))


def test_dash_ot_values_split_on_commas_like_llama_cpp() -> None:
    assert parse_overrides(["exps=CPU,attn_q=CUDA0", r"blk\.1\.=CPU"]) == (
        ("exps", "CPU"), ("attn_q", "CUDA0"), (r"blk\.1\.", "CPU"))


@pytest.mark.parametrize("bad", ["exps", "=CPU", "exps="])
def test_a_dash_ot_value_without_pattern_and_device_is_an_error(bad: str) -> None:
    with pytest.raises(GgprecError, match="expected PATTERN=DEVICE"):
        parse_overrides([bad])


@pytest.mark.parametrize("pattern", [r"(?<=blk)\.0", "(?i)EXPS", r"(?P<x>exps)", r"\Ablk"])
def test_python_only_regex_syntax_is_refused(pattern: str) -> None:
    with pytest.raises(GgprecError, match="Python-only regex syntax"):
        check_pattern(pattern)


def test_placement_with_all_layers_offloaded_and_cpu_moe_keeps_only_experts_and_token_embd_on_cpu(
        tiny_moe: Path) -> None:
    info = read_gguf(tiny_moe)
    where = placement(info, RuntimeSettings(n_gpu_layers=ALL_LAYERS, n_cpu_moe=ALL_LAYERS))
    on_cpu = sorted(n for n, d in where.items() if d == "CPU")
    assert on_cpu == sorted(["token_embd.weight"] + [f"blk.{i}.{e}.weight" for i in (0, 1) for e in EXPS])
    assert where["blk.0.ffn_gate_inp.weight"] == where["output.weight"] == "CUDA0"


def test_n_cpu_moe_moves_the_experts_of_the_first_blocks_only(tiny_moe: Path) -> None:
    where = placement(read_gguf(tiny_moe), RuntimeSettings(n_gpu_layers=ALL_LAYERS, n_cpu_moe=1))
    assert [where[f"blk.{i}.ffn_up_exps.weight"] for i in (0, 1)] == ["CPU", "CUDA0"]


def test_the_first_matching_override_wins(tiny_moe: Path) -> None:
    s = RuntimeSettings(override_tensor=((r"blk\.0\.", "CUDA0"), ("attn", "CPU")), n_gpu_layers=ALL_LAYERS)
    where = placement(read_gguf(tiny_moe), s)
    assert (where["blk.0.attn_q.weight"], where["blk.1.attn_q.weight"], where["blk.1.ffn_up_exps.weight"]) == (
        "CUDA0", "CPU", "CUDA0")


def test_llama_cpp_overrides_exactly_the_tensors_placement_predicts(tiny_moe: Path) -> None:
    """The pattern `attn_q` is searched, not matched: it also moves attn_q_norm, in llama.cpp as here."""
    s = RuntimeSettings(n_ctx=256, n_threads=1, override_tensor=(("attn_q", "CPU"),), n_cpu_moe=1)
    with load_model(tiny_moe, s) as m:
        logged = {line.split()[1]: line.rsplit(" ", 1)[1] for line in m.log.text
                  if line.startswith("tensor ") and "buffer type overridden to" in line}
    predicted = overridden(read_gguf(tiny_moe), s)
    assert logged == predicted
    assert "blk.0.attn_q_norm.weight" in predicted and "blk.1.ffn_up_exps.weight" not in predicted


def test_run_with_an_unknown_device_exits_2_with_one_line(tiny_moe: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(tiny_moe), "-ot", "exps=NPU7", "--tg", "1", "--pp", "8", "--reps", "1",
                                  "--db", str(tmp_path / "h.db")])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "unknown device 'NPU7'" in r.output


def test_cpu_moe_and_n_cpu_moe_together_are_refused(tiny_moe: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["run", str(tiny_moe), "--cpu-moe", "--n-cpu-moe", "1",
                                  "--db", str(tmp_path / "h.db")])
    assert r.exit_code == 2 and "alternatives" in r.output


@pytest.mark.parametrize(("runtime", "message"), [
    ({"n_cpu_moe": -2}, "n_cpu_moe: expected a block count"),
    ({"override_tensor": [{"pattern": "exps"}]}, r"override_tensor\[0\]: expected \{pattern"),
    ({"override_tensor": [{"pattern": "(?<=x)exps", "device": "CPU"}]}, "Python-only regex syntax"),
])
def test_bad_placement_in_a_profile_is_a_one_line_error(runtime: dict, message: str) -> None:
    from ggprec.profile import profile_from_dict

    with pytest.raises(GgprecError, match=message):
        profile_from_dict({"name": "p", "runtime": runtime})
