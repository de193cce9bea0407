"""read_gguf: the header of a GGUF file as a ModelInfo, checked on the real SmolLM2 and against gguf-py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggprec.gguf_info import ArraySummary, ModelInfo, read_gguf
from ggprec.roles import classify


@pytest.fixture(scope="module")
def smollm2(demo_model: Path) -> ModelInfo:
    return read_gguf(demo_model)


def test_smollm2_architecture_and_hyper_parameters(smollm2: ModelInfo) -> None:
    hp = smollm2.hparams
    assert smollm2.arch == "llama"
    assert len(smollm2.tensors) == 272
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv_max, hp.n_ff_max) == (30, 576, 9, 3, 1536)
    assert hp.n_head_kv == (3,) * 30
    assert (hp.head_dim_k, hp.head_dim_v) == (64, 64)
    assert hp.n_vocab == 49152
    assert hp.n_ctx_train == 8192


def test_smollm2_output_head_is_tied(smollm2: ModelInfo) -> None:
    assert smollm2.tied_output
    assert smollm2.tensor("output.weight") is None
    assert smollm2.tensor("token_embd.weight").shape == (576, 49152)


def test_smollm2_tensor_bytes_fill_the_data_region_exactly(smollm2: ModelInfo) -> None:
    # The data region runs from the aligned end of the header to the end of the file. Its only
    # padding is between tensors (each starts on an alignment boundary) and after the last one;
    # SmolLM2's tensor sizes are all multiples of 32, so there is none and the sum is exact.
    assert smollm2.alignment == 32
    assert smollm2.data_offset % 32 == 0
    assert smollm2.file_size - smollm2.data_offset == smollm2.tensor_bytes == 96_576_768
    by_offset = sorted(smollm2.tensors, key=lambda t: t.offset)
    assert by_offset[0].offset == smollm2.data_offset
    for a, b in zip(by_offset, by_offset[1:], strict=False):
        assert b.offset == a.offset + a.n_bytes  # contiguous: no gap, no overlap
    assert by_offset[-1].offset + by_offset[-1].n_bytes == smollm2.file_size


def test_smollm2_totals_by_role_layer_and_type_add_up(smollm2: ModelInfo) -> None:
    for key in ("role", "layer", "type"):
        totals = smollm2.totals_by(key)
        assert sum(c for c, _, _ in totals.values()) == 272
        assert sum(b for _, _, b in totals.values()) == smollm2.tensor_bytes
    by_type = smollm2.totals_by("type")
    assert {k: v[0] for k, v in by_type.items()} == {"q4_1": 210, "q8_0": 1, "f32": 61}
    assert list(by_type) == ["q4_1", "q8_0", "f32"]  # largest first
    by_role = smollm2.totals_by("role")
    assert list(by_role)[0] == "token_embd" and by_role["attn_q"][0] == 30 and by_role["norm"][0] == 61
    by_layer = smollm2.totals_by("layer")
    assert list(by_layer) == [*range(30), None]
    assert by_layer[None][0] == 2  # token_embd and output_norm


def test_smollm2_bits_per_weight(smollm2: ModelInfo) -> None:
    assert smollm2.n_params == 134_515_008
    assert smollm2.bits_per_weight == pytest.approx(8 * 96_576_768 / 134_515_008)


def test_vocabulary_is_summarised_not_kept(smollm2: ModelInfo) -> None:
    tokens = smollm2.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArraySummary)
    assert (tokens.element_type, len(tokens)) == ("string", 49152)
    assert smollm2.metadata["general.architecture"] == "llama"


def test_agrees_with_gguf_py_on_every_tensor(tiny_model: Path) -> None:
    import gguf

    ref = gguf.GGUFReader(tiny_model)
    info = read_gguf(tiny_model)
    assert info.data_offset == ref.data_offset
    assert len(info.tensors) == len(ref.tensors)
    for ours, theirs in zip(info.tensors, ref.tensors, strict=True):
        assert ours.name == theirs.name
        assert ours.shape == tuple(int(d) for d in theirs.shape)
        assert ours.type.type_id == int(theirs.tensor_type)
        assert ours.offset == theirs.data_offset
        assert ours.n_bytes == int(theirs.n_bytes)
    assert info.metadata["llama.block_count"] == 2
    assert info.metadata["tokenizer.ggml.model"] == "gpt2"


def test_tiny_model_hyper_parameters_and_tied_head(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    hp = info.hparams
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv_max, hp.n_ff_max, hp.n_vocab) == (2, 256, 4, 2, 512, 1024)
    assert info.tied_output
    assert len(info.tensors) == 1 + 2 * 9 + 1
    assert info.totals_by("type")["f16"][0] == 1 + 2 * 7


@pytest.mark.parametrize(
    ("name", "role", "layer"),
    [
        ("token_embd.weight", "token_embd", None),
        ("output.weight", "output", None),
        ("output_norm.weight", "norm", None),
        ("blk.0.attn_q.weight", "attn_q", 0),
        ("blk.12.attn_output.weight", "attn_output", 12),
        ("blk.3.ffn_down.weight", "ffn_down", 3),
        ("blk.3.ffn_gate_exps.weight", "ffn_gate_exps", 3),
        ("blk.7.attn_q_norm.weight", "norm", 7),
        ("blk.1.attn_q.bias", "other", 1),
        ("blk.2.ssm_conv1d.weight", "other", 2),  # an architecture ggprec has no role for
        ("rope_freqs.weight", "other", None),
    ],
)
def test_roles_come_from_llama_cpp_tensor_names(name: str, role: str, layer: int | None) -> None:
    assert classify(name) == (role, layer)


@pytest.mark.parametrize("length", [2**60, 2**20])
def test_corrupt_length_inside_a_long_token_list_is_caught(tmp_path: Path, length: int) -> None:
    import struct

    import gguf

    from ggprec.errors import GgprecError
    from ggprec.gguf_info import KEEP_ARRAY_MAX
    from ggprec.synth import shape_for, write_synth

    # More tokens than KEEP_ARRAY_MAX: the list is skipped (not decoded), by the fast path.
    shape = shape_for("tiny", n_layer=1, n_embd=64, n_head=1, n_head_kv=1, n_ff=64, n_vocab=KEEP_ARRAY_MAX + 100)
    path = write_synth(tmp_path / "long-vocab.gguf", shape, dtype="f32")
    assert read_gguf(path).metadata["tokenizer.ggml.tokens"] == ArraySummary("string", KEEP_ARRAY_MAX + 100)
    field = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"]
    # key length u64 + key + value type u32 + element type u32 + count u64, then the first string's length
    first_token_length_at = field.offset + 8 + len(field.name.encode()) + 4 + 4 + 8
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, first_token_length_at, length)
    path.write_bytes(bytes(data))
    with pytest.raises(GgprecError, match=r"corrupt GGUF header at offset \d+: "
                                          r"tokenizer\.ggml\.tokens runs past the end of the file"):
        read_gguf(path)
