"""Importance matrices: llama.cpp's GGUF imatrix format and the legacy .dat read and written, collection
through llama.cpp's graph callback (dense and expert counts), and quantizing with one."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ggprec.errors import GgprecError
from ggprec.ggml_types import lookup, needs_imatrix
from ggprec.gguf_info import read_gguf
from ggprec.imatrix_file import Imatrix, ImatrixEntry, check_imatrix, read_imatrix, write_imatrix
from ggprec.profile import Profile, load_profile, profile_to_yaml

N_CTX = 64  # small chunks keep the llama.cpp tests at a fraction of a second per chunk


def _imatrix() -> Imatrix:
    rng = np.random.default_rng(0)
    return Imatrix({
        "blk.0.attn_q.weight": ImatrixEntry(rng.random((1, 256), dtype=np.float32) * 64, np.array([64.0])),
        "blk.0.ffn_up_exps.weight": ImatrixEntry(rng.random((4, 256), dtype=np.float32),
                                                 np.array([3.0, 0.0, 5.0, 2.0])),
    }, ["calibration.txt"], 7, 512)


# --- the file formats -------------------------------------------------------------------------------------


def test_gguf_imatrix_round_trips(tmp_path: Path) -> None:
    imx = _imatrix()
    back = read_imatrix(write_imatrix(imx, tmp_path / "a.imatrix.gguf"))
    assert back.entries == imx.entries
    assert (back.datasets, back.chunk_count, back.chunk_size) == (["calibration.txt"], 7, 512)


def test_written_file_has_llama_cpp_layout(tmp_path: Path) -> None:
    import gguf

    r = gguf.GGUFReader(write_imatrix(_imatrix(), tmp_path / "a.gguf"))
    assert "general.architecture" not in r.fields
    assert bytes(r.fields["general.type"].parts[-1]).decode() == "imatrix"
    shapes = {t.name: [int(n) for n in t.shape] for t in r.tensors}
    assert shapes == {"blk.0.attn_q.weight.in_sum2": [256, 1], "blk.0.attn_q.weight.counts": [1, 1],
                      "blk.0.ffn_up_exps.weight.in_sum2": [256, 4], "blk.0.ffn_up_exps.weight.counts": [1, 4]}


def test_mean_is_sum_over_count_per_expert_and_one_where_unseen() -> None:
    e = _imatrix().entries["blk.0.ffn_up_exps.weight"]
    mean = e.mean().reshape(4, 256)
    assert np.array_equal(mean[0], e.in_sum2[0] / np.float32(3.0))
    assert np.array_equal(mean[1], np.ones(256, dtype=np.float32))
    assert np.array_equal(mean[2], e.in_sum2[2] / np.float32(5.0))
    assert e.mean().dtype == np.float32 and e.mean().shape == (1024,)


def _write_dat(path: Path, entries: dict[str, tuple[int, np.ndarray]], trailer: bool = True) -> Path:
    out = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size)
        out += values.astype("<f4").tobytes()
    if trailer:
        out += struct.pack("<i", 9) + struct.pack("<i", 8) + b"wiki.txt"
    path.write_bytes(out)
    return path


def test_legacy_dat_is_read_as_means_times_calls(tmp_path: Path) -> None:
    values = np.arange(1, 257, dtype=np.float32)
    imx = read_imatrix(_write_dat(tmp_path / "old.dat", {"blk.0.attn_q.weight": (4, values)}))
    assert np.array_equal(imx.entries["blk.0.attn_q.weight"].mean(), values / np.float32(4))
    assert (imx.datasets, imx.chunk_count, imx.chunk_size) == (["wiki.txt"], 9, 0)


def test_legacy_dat_without_trailer_reads(tmp_path: Path) -> None:
    imx = read_imatrix(_write_dat(tmp_path / "old.dat", {"a.weight": (1, np.ones(32))}, trailer=False))
    assert list(imx.entries) == ["a.weight"] and imx.datasets == [] and imx.chunk_count == 0


@pytest.mark.parametrize("cut", [3, 20, 200])
def test_truncated_gguf_imatrix_is_one_line(tmp_path: Path, cut: int) -> None:
    data = write_imatrix(_imatrix(), tmp_path / "a.gguf").read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut] if cut < 100 else data[:-cut])
    with pytest.raises(GgprecError, match=r"not a usable imatrix") as e:
        read_imatrix(bad)
    assert "\n" not in str(e.value)


def test_truncated_dat_is_one_line(tmp_path: Path) -> None:
    good = _write_dat(tmp_path / "old.dat", {"blk.0.attn_q.weight": (4, np.ones(256))}).read_bytes()
    (tmp_path / "cut.dat").write_bytes(good[:40])
    with pytest.raises(GgprecError, match=r"cut.dat: not a usable imatrix: ends inside blk.0.attn_q.weight's values"):
        read_imatrix(tmp_path / "cut.dat")


def test_a_model_file_is_not_an_imatrix(tiny_model: Path) -> None:
    with pytest.raises(GgprecError, match=r"not a usable imatrix: a GGUF without any '<weight>.in_sum2' tensor"):
        read_imatrix(tiny_model)


def test_imatrix_of_another_model_is_refused(tiny_model: Path) -> None:
    imx = Imatrix({"blk.7.attn_q.weight": ImatrixEntry(np.ones((1, 256)), np.ones(1))})
    with pytest.raises(GgprecError, match=r"does not match tiny-f16.gguf: blk.7.attn_q.weight is not a weight"):
        check_imatrix(imx, read_gguf(tiny_model))


def test_imatrix_of_the_wrong_size_is_refused(tiny_model: Path) -> None:
    imx = Imatrix({"blk.0.ffn_down.weight": ImatrixEntry(np.ones((1, 256)), np.ones(1))})
    with pytest.raises(GgprecError, match=r"ffn_down.weight has 256 values in 1 slice\(s\), the weight needs 512"):
        check_imatrix(imx, read_gguf(tiny_model))


def test_imatrix_with_nan_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    sums = np.ones((1, 256), dtype=np.float32)
    sums[0, 3] = np.nan
    imx = Imatrix({"blk.0.attn_q.weight": ImatrixEntry(sums, np.ones(1))})
    with pytest.raises(GgprecError, match=r"imatrix entry blk.0.attn_q.weight holds NaN or infinite values"):
        check_imatrix(imx, read_gguf(tiny_model))
    with pytest.raises(GgprecError, match=r"holds NaN or infinite values"):
        write_imatrix(imx, tmp_path / "nan.gguf")


def test_needs_imatrix_follows_llama_quant() -> None:
    assert [t for t in ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq4_nl", "q2_k", "q4_k")
            if needs_imatrix(t)] == ["iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs"]
    assert needs_imatrix("q2_k", ftype=21) and not needs_imatrix("q2_k", ftype=10)
    assert not needs_imatrix("iq2_xxs", tensor="token_embd.weight")
    assert lookup("iq2_xxs").weight and lookup("iq3_s").ftype == 26


def test_profile_imatrix_is_kept_and_relative_to_the_profile_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("name: p\ndefault: iq2_xxs\nimatrix: m.imatrix.gguf\n")
    p = load_profile(str(tmp_path / "p.yaml"))
    assert p.imatrix == str(tmp_path / "m.imatrix.gguf")
    assert "imatrix: " in profile_to_yaml(p)
    assert Profile("a").content_hash() != Profile("a", imatrix="x").content_hash()


# --- collecting with llama.cpp ------------------------------------------------------------------------------


@pytest.mark.llama
def test_moe_expert_counts_sum_to_tokens_times_experts_used(tiny_moe: Path) -> None:
    from ggprec.imatrix import collect_imatrix

    imx = collect_imatrix(tiny_moe, n_ctx=N_CTX, chunks=2, threads=2)
    tokens = 2 * N_CTX
    experts = {n: e for n, e in imx.entries.items() if "_exps" in n}
    assert sorted(experts) == [f"blk.{i}.ffn_{w}_exps.weight" for i in range(2) for w in ("down", "gate", "up")]
    for e in experts.values():
        assert e.n_mat == 4 and e.counts.sum() == tokens * 2
    dense = [e for n, e in imx.entries.items() if "_exps" not in n]
    assert dense and all(e.counts.tolist() == [tokens] for e in dense)
    assert (imx.chunk_count, imx.chunk_size) == (2, N_CTX)


@pytest.mark.llama
def test_dense_model_gets_every_matrix_of_every_block(tiny_model: Path) -> None:
    from ggprec.imatrix import collect_imatrix

    imx = collect_imatrix(tiny_model, n_ctx=N_CTX, chunks=1, threads=2)
    roles = ("attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up")
    assert sorted(imx.entries) == sorted(f"blk.{i}.{r}.weight" for i in range(2) for r in roles)
    check_imatrix(imx, read_gguf(tiny_model))
    assert imx.entries["blk.0.ffn_down.weight"].n_in == 512


@pytest.fixture(scope="module")
def tiny_imatrix(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Imatrix, Path]:
    from ggprec.imatrix import collect_imatrix

    imx = collect_imatrix(tiny_model, n_ctx=N_CTX, chunks=2, threads=2)
    return imx, write_imatrix(imx, tmp_path_factory.mktemp("imx") / "tiny.imatrix.gguf")


def _tensor_data(path: Path) -> dict[str, bytes]:
    import gguf

    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.llama
def test_file_and_memory_imatrix_quantize_byte_identical(tiny_model: Path, tiny_imatrix: tuple[Imatrix, Path],
                                                        tmp_path: Path) -> None:
    from ggprec.plan import resolve_plan
    from ggprec.quantize import quantize

    imx, path = tiny_imatrix
    plan = resolve_plan(read_gguf(tiny_model), Profile("iq", default="iq3_s"))
    from_memory = quantize(tiny_model, plan, tmp_path / "mem.gguf", threads=2, imatrix=imx)
    from_file = quantize(tiny_model, plan, tmp_path / "file.gguf", threads=2, imatrix_path=path)
    without = quantize(tiny_model, plan, tmp_path / "none.gguf", threads=2)
    assert _tensor_data(from_memory) == _tensor_data(from_file)
    assert _tensor_data(from_file)["blk.0.attn_q.weight"] != _tensor_data(without)["blk.0.attn_q.weight"]
    md = read_gguf(from_file).metadata
    assert {k: md[k] for k in md if k.startswith("quantize.imatrix.")} == {
        "quantize.imatrix.file": str(path), "quantize.imatrix.dataset": "ggprec calibration.txt",
        "quantize.imatrix.entries_count": 14, "quantize.imatrix.chunks_count": 2}


@pytest.mark.llama
def test_iq2_xxs_is_refused_without_an_imatrix_and_written_with_one(tiny_model: Path,
                                                                   tiny_imatrix: tuple[Imatrix, Path],
                                                                   tmp_path: Path) -> None:
    from ggprec.cli import main

    (tmp_path / "iq2.yaml").write_text("name: iq2\ndefault: iq2_xxs\nrules:\n"
                                       "  - {match: 'token_embd\\.weight', type: q4_k}\n")
    args = ["quantize", str(tiny_model), "-p", str(tmp_path / "iq2.yaml"), "-o", str(tmp_path / "q.gguf"), "-t", "2"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert r.stderr == ("ggprec: error: iq2_xxs needs an importance matrix (llama.cpp refuses to write "
                        "blk.0.attn_q.weight in it without one): collect one with `ggprec imatrix`\n")
    r = CliRunner().invoke(main, [*args, "--imatrix", str(tiny_imatrix[1])])
    assert r.exit_code == 0, r.output
    assert read_gguf(tmp_path / "q.gguf").tensor("blk.1.ffn_up.weight").type.name == "iq2_xxs"


@pytest.mark.llama
def test_cli_imatrix_writes_a_file_and_refuses_it_for_another_model(tiny_model: Path, tiny_moe: Path,
                                                                     tmp_path: Path) -> None:
    from ggprec.cli import main

    out = tmp_path / "moe.imatrix.gguf"
    r = CliRunner().invoke(main, ["imatrix", str(tiny_moe), "-o", str(out), "-c", str(N_CTX), "--chunks", "1",
                                  "-t", "2"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"wrote {out} (16 weights, 1 chunks of {N_CTX} tokens, ")
    r = CliRunner().invoke(main, ["quantize", str(tiny_model), "-p", "q4_0", "-o", str(tmp_path / "q.gguf"),
                                  "--imatrix", str(out)])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "the imatrix does not match tiny-f16.gguf: blk.0.ffn_down_exps" in r.stderr


@pytest.mark.llama
def test_token_embd_in_iq2_xxs_is_refused_even_with_an_imatrix(tiny_model: Path, tiny_imatrix: tuple[Imatrix, Path],
                                                                tmp_path: Path) -> None:
    from ggprec.plan import resolve_plan
    from ggprec.quantize import quantize

    plan = resolve_plan(read_gguf(tiny_model), Profile("iq2", default="iq2_xxs"))
    with pytest.raises(GgprecError, match=r"^token_embd.weight cannot be written in iq2_xxs: ggml quantizes it only "
                                          r"with importance data for that tensor, and no matrix product reads it"):
        quantize(tiny_model, plan, tmp_path / "q.gguf", imatrix=tiny_imatrix[0])


@pytest.mark.llama
def test_first_layer_sums_are_the_squared_normed_embeddings(tiny_model: Path) -> None:
    """blk.0.attn_q reads rms_norm(token_embd[token]) * attn_norm: the collected sums equal numpy's."""
    import gguf

    from ggprec.imatrix import calibration_text, chunk_tokens, collect_imatrix
    from ggprec.llama_backend import bos_token, load_vocab, tokenize

    imx = collect_imatrix(tiny_model, n_ctx=N_CTX, chunks=2, threads=2)
    with load_vocab(tiny_model) as vocab:
        chunks = chunk_tokens(tokenize(vocab, calibration_text(), add_bos=True), N_CTX, 2, bos_token(vocab))
    r = gguf.GGUFReader(tiny_model)
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in r.tensors}
    eps = float(r.fields["llama.attention.layer_norm_rms_epsilon"].parts[-1][0])
    x = tensors["token_embd.weight"][np.concatenate(chunks)]
    x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * tensors["blk.0.attn_norm.weight"]
    got = imx.entries["blk.0.attn_q.weight"]
    assert got.counts.tolist() == [2 * N_CTX]
    np.testing.assert_allclose(got.in_sum2[0], (x.astype(np.float64) ** 2).sum(axis=0), rtol=2e-3)


@pytest.mark.llama
def test_cached_imatrix_collects_once_per_model_and_text(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ggprec import imatrix

    first = imatrix.cached_imatrix(tiny_model, n_ctx=N_CTX, chunks=1, threads=2)
    monkeypatch.setattr(imatrix, "collect_imatrix", lambda *a, **k: pytest.fail("collected again"))
    assert imatrix.cached_imatrix(tiny_model, n_ctx=N_CTX, chunks=1, threads=2) == first
    assert first.parent == imatrix.cache_dir() and read_imatrix(first).chunk_count == 1
    with pytest.raises(BaseException, match="collected again"):
        imatrix.cached_imatrix(tiny_model, text=calibration_text_twice(), n_ctx=N_CTX, chunks=1)


def calibration_text_twice() -> str:
    from ggprec.imatrix import calibration_text

    return calibration_text() * 2


@pytest.mark.llama
def test_sigint_during_collection_exits_130_and_writes_nothing(tmp_path: Path, demo_model: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "m.imatrix.gguf"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "ggprec.cli", "imatrix", str(demo_model), "-o", str(out),
                             "-t", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while str(demo_model) not in Path(f"/proc/{proc.pid}/maps").read_text():  # llama.cpp has mapped the weights
        assert proc.poll() is None and time.monotonic() < deadline, "ggprec ended before loading the model"
        time.sleep(0.02)
    time.sleep(1.0)  # inside the decode loop (the whole collection takes several seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err.splitlines()) == (130, ["ggprec: interrupted (SIGINT)"])
    assert list(tmp_path.iterdir()) == []


def test_metadata_strings_are_cut_to_llama_quantize_s_127_bytes() -> None:
    from ggprec.quantize import imatrix_metadata

    imx = _imatrix()
    imx.datasets = ["é" * 100]
    md = imatrix_metadata(imx, "d/" * 100)
    assert md == {"quantize.imatrix.file": "d/" * 63 + "d", "quantize.imatrix.dataset": "é" * 63,
                  "quantize.imatrix.entries_count": 2, "quantize.imatrix.chunks_count": 7}


@pytest.mark.llama
def test_recommend_uses_a_cached_imatrix_only_after_auto_collected_one(tiny_model: Path) -> None:
    from ggprec.imatrix import recommend_imatrix

    told: list[str] = []
    assert recommend_imatrix(tiny_model, None, told.append) is None
    assert "`--imatrix auto` collects one" in told[-1]
    collected = recommend_imatrix(tiny_model, "auto", told.append, threads=2)
    assert collected is not None and read_imatrix(collected).entries
    assert recommend_imatrix(tiny_model, None, told.append) == collected  # later runs: the cached one, said
    assert told[-1].startswith(f"using this model's cached importance matrix {collected}")
    assert recommend_imatrix(tiny_model, "none", told.append) is None
    assert recommend_imatrix(tiny_model, "my.imatrix", told.append) == "my.imatrix"  # a file: as given


def test_auto_imatrix_of_a_sparse_file_is_one_line(tmp_path: Path) -> None:
    from ggprec.imatrix import recommend_imatrix
    from ggprec.synth import PRESETS, write_synth

    path = write_synth(tmp_path / "sparse.gguf", PRESETS["tiny"], sparse=True)
    assert recommend_imatrix(path, None) is None
    with pytest.raises(GgprecError, match="needs the model's weights on disk"):
        recommend_imatrix(path, "auto")
