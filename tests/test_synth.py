"""Synthetic GGUF models: real shapes, seeded weights, a tokenizer llama.cpp accepts, sparse big shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.errors import GgprecError
from ggprec.gguf_info import ModelInfo, read_gguf
from ggprec.synth import PRESETS, shape_for, tensor_shapes, write_synth

SMALL = dict(n_layer=1, n_embd=128, n_head=2, n_head_kv=1, n_ff=256, n_vocab=300)


@pytest.fixture(scope="module")
def llama3_8b_sparse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("l3") / "llama-3-8b.gguf", PRESETS["llama-3-8b"], sparse=True)


def test_tiny_model_runs_in_llama_cpp_with_finite_varied_logits(tiny_model: Path) -> None:
    import llama_cpp
    import numpy as np

    from ggprec.llama_backend import load_model
    from ggprec.runner import Decoder, tokenize
    from ggprec.settings import RuntimeSettings

    with load_model(tiny_model, RuntimeSettings(n_ctx=64, n_threads=2)) as lm:
        assert lm.n_vocab == 1024
        tokens = tokenize(lm, "hello world")
        assert 2 <= len(tokens) <= 11
        dec = Decoder(lm)
        rows = []
        for i, tok in enumerate(tokens):  # one token at a time: the logits of every position
            dec.decode([tok], i)
            rows.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lm.ctx, -1), shape=(lm.n_vocab,)).copy())
        dec.close()
    logits = np.array(rows)
    assert logits.shape == (len(tokens), 1024)
    assert np.isfinite(logits).all()
    assert logits.std(axis=1).min() > 0  # not constant over the vocabulary
    assert not np.allclose(logits[0], logits[-1])  # and depends on the input


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    shape = shape_for("tiny", **SMALL)
    a = write_synth(tmp_path / "a.gguf", shape, seed=7)
    b = write_synth(tmp_path / "b.gguf", shape, seed=7)
    c = write_synth(tmp_path / "c.gguf", shape, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.stat().st_size == c.stat().st_size


def test_llama_3_8b_preset_has_the_real_shape(llama3_8b_sparse: Path) -> None:
    info = read_gguf(llama3_8b_sparse)
    hp = info.hparams
    assert len(info.tensors) == 291
    assert info.n_params == 8_030_261_248
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv_max, hp.n_ff_max) == (32, 4096, 32, 8, 14336)
    assert (hp.n_vocab, hp.head_dim_k, hp.n_ctx_train) == (128256, 128, 8192)
    assert not info.tied_output
    assert info.tensor("output.weight").shape == (4096, 128256)
    assert len(info.metadata["tokenizer.ggml.merges"]) == 280147


def test_sparse_file_has_the_full_size_but_no_data_blocks(llama3_8b_sparse: Path) -> None:
    info = read_gguf(llama3_8b_sparse)
    st = llama3_8b_sparse.stat()
    # Logical size: header, then every tensor padded to the alignment; f16 weights, f32 norms.
    padded = sum(-(-t.n_bytes // info.alignment) * info.alignment for t in info.tensors)
    assert st.st_size == info.data_offset + padded
    assert info.tensor_bytes == 2 * (8_030_261_248 - 65 * 4096) + 4 * 65 * 4096
    # Allocated: the header (a 128k vocabulary and 280k merges) plus at most a filesystem block or two.
    assert st.st_blocks * 512 <= info.data_offset + 64 * 1024
    assert st.st_blocks * 512 < st.st_size / 1000


@pytest.mark.parametrize(("preset", "n_tensors", "n_params", "tied"), [
    ("tiny", 20, 1_443_072, True),
    ("smollm2-135m", 272, 134_515_008, True),
    ("llama-3.2-1b", 146, 1_235_814_400, True),  # the real file adds rope_freqs.weight (147)
    ("llama-3-70b", 723, 70_553_706_496, False),
])
def test_presets_tensor_counts_and_parameters(preset: str, n_tensors: int, n_params: int, tied: bool) -> None:
    shapes = tensor_shapes(PRESETS[preset])
    assert len(shapes) == n_tensors
    assert sum(math.prod(s) for _, s in shapes) == n_params
    assert PRESETS[preset].tied is tied


def test_smollm2_preset_matches_the_real_file_tensor_by_tensor(demo_model: Path) -> None:
    real = read_gguf(demo_model)
    synth = {name: tuple(reversed(shape)) for name, shape in tensor_shapes(PRESETS["smollm2-135m"])}
    assert synth == {t.name: t.shape for t in real.tensors}
    p = PRESETS["smollm2-135m"]
    assert (p.n_ctx, p.rope_base) == (real.hparams.n_ctx_train, real.metadata["llama.rope.freq_base"])


def test_explicit_dimensions_override_the_preset() -> None:
    shape = shape_for("llama-3-8b", n_layer=2, n_vocab=1000, n_merges=None, tied=True)
    assert (shape.n_layer, shape.n_vocab, shape.tied) == (2, 1000, True)
    assert (shape.n_embd, shape.n_head, shape.n_head_kv, shape.n_ff) == (4096, 32, 8, 14336)  # kept
    assert shape.n_merges is None  # a new vocabulary gets its own merges, not Llama 3's 280,147


def test_vocabulary_and_merges_can_both_be_given() -> None:
    shape = shape_for("tiny", n_vocab=128256, n_merges=280000)
    assert (shape.n_vocab, shape.n_merges) == (128256, 280000)
    assert shape_for("llama-3-8b").n_merges == 280147


def test_explicit_dimensions_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "small.gguf"
    result = CliRunner().invoke(main, ["synth", str(out), "--layers", "1", "--embd", "128", "--heads", "2",
                                       "--kv-heads", "1", "--ff", "256", "--vocab", "300", "--untied",
                                       "--type", "f32"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out} (")
    info = read_gguf(out)
    hp = info.hparams
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv_max, hp.n_ff_max, hp.n_vocab) == (1, 128, 2, 1, 256, 300)
    assert not info.tied_output
    assert len(info.metadata["tokenizer.ggml.tokens"]) == 300


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_weight_type_is_written_and_norms_stay_f32(dtype: str, tmp_path: Path) -> None:
    info: ModelInfo = read_gguf(write_synth(tmp_path / f"{dtype}.gguf", shape_for("tiny", **SMALL), dtype=dtype))
    types = {t.name: t.type.name for t in info.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == dtype
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "f32"
    assert info.metadata["general.file_type"] == {"f32": 0, "f16": 1, "bf16": 32}[dtype]


def test_f16_and_bf16_hold_the_f32_weights_rounded(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    shape = shape_for("tiny", **SMALL)
    data = {}
    for dtype in ("f32", "f16", "bf16"):
        reader = gguf.GGUFReader(write_synth(tmp_path / f"{dtype}.gguf", shape, dtype=dtype, seed=3))
        raw = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight").data
        if dtype == "bf16":
            raw = (np.asarray(raw).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        data[dtype] = np.asarray(raw, dtype=np.float32).reshape(-1)
    ref = data["f32"]
    assert 0.018 < ref.std() < 0.022  # N(0, 0.02)
    np.testing.assert_allclose(data["f16"], ref, rtol=2**-11, atol=2**-24)
    np.testing.assert_allclose(data["bf16"], ref, rtol=2**-8, atol=0)
    assert not np.array_equal(data["bf16"], ref)  # really rounded, not a copy


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "llama-3-9b"], "Invalid value for '--preset'"),
    (["--embd", "100", "--heads", "3"], "n_embd 100 must divide by n_head 3"),
    (["--vocab", "100"], "n_vocab must be at least 259"),
    (["--embd", "-128"], "n_embd must be a positive number, not -128"),
    (["--heads", "0"], "n_head must be a positive number, not 0"),
    (["--layers", "0"], "n_layer must be a positive number, not 0"),
    (["--merges", "-1"], "n_merges must not be negative, not -1"),
    (["--type", "q4_0"], "Invalid value for '--type'"),
])
def test_bad_synth_requests_fail_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    result = CliRunner().invoke(main, ["synth", str(out), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_unknown_preset_in_the_library() -> None:
    with pytest.raises(GgprecError, match="unknown preset 'llama-3-9b'"):
        shape_for("llama-3-9b")


def test_existing_output_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "keep.gguf"
    out.write_bytes(b"precious")
    result = CliRunner().invoke(main, ["synth", str(out), "--layers", "1"])
    assert result.exit_code == 2
    assert result.stderr == f"ggprec: error: {out}: already exists (use --force to replace it)\n"
    assert out.read_bytes() == b"precious"


def test_a_sparse_file_may_declare_quantized_weights_and_a_full_one_may_not(tmp_path: Path) -> None:
    path = write_synth(tmp_path / "q.gguf", PRESETS["tiny"], sparse=True, type_of=lambda name: "q4_k")
    info = read_gguf(path)
    assert {t.type.name for t in info.tensors if len(t.shape) > 1} == {"q4_k"}
    assert info.file_size == path.stat().st_size
    with pytest.raises(GgprecError, match="need a sparse file"):
        write_synth(tmp_path / "full.gguf", PRESETS["tiny"], type_of=lambda name: "q4_k")
