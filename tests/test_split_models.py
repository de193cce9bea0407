"""Split GGUF models (`name-00001-of-00002.gguf`): read as one model from any shard, loaded, predicted
and quantized by llama.cpp. The shard pair is made here from the tiny synthetic model, the way
llama.cpp's gguf-split writes one (see tests/shards.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from shards import write_shards

from ggprec.cli import main
from ggprec.errors import GgprecError
from ggprec.gguf_info import read_gguf, split_path, split_prefix
from ggprec.memory import predict
from ggprec.plan import resolve_plan
from ggprec.profile import load_profile
from ggprec.quantize import quantize
from ggprec.settings import RuntimeSettings


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> list[Path]:
    return write_shards(tiny_model, tmp_path_factory.mktemp("shards") / "tiny", 2)


def test_split_names_follow_llama_cpp() -> None:
    assert split_path("/m/name", 0, 3) == Path("/m/name-00001-of-00003.gguf")
    assert split_prefix("/m/name-00002-of-00003.gguf", 1, 3) == "/m/name"
    assert split_prefix("/m/name-00002-of-00003.gguf", 0, 3) is None
    assert split_prefix("-00001-of-00001.gguf", 0, 1) is None


@pytest.mark.parametrize("which", [0, 1])
def test_any_shard_reads_the_whole_model(shards: list[Path], tiny_model: Path, which: int) -> None:
    whole, split = read_gguf(tiny_model), read_gguf(shards[which])
    assert split.shards == shards
    assert split.path == shards[0]
    assert split.is_split and not whole.is_split and whole.shards == [tiny_model]
    assert [(t.name, t.shape, t.type, t.n_bytes) for t in split.tensors] == \
        [(t.name, t.shape, t.type, t.n_bytes) for t in whole.tensors]
    assert [t.shard for t in split.tensors] == [0] * 10 + [1] * 10
    assert split.hparams == whole.hparams
    assert split.file_size == sum(p.stat().st_size for p in shards)
    # Each tensor's offset is inside its own shard's file, where its bytes are.
    for t in split.tensors:
        with open(shards[t.shard], "rb") as f:
            f.seek(t.offset)
            data = f.read(t.n_bytes)
        with open(tiny_model, "rb") as f:
            f.seek(whole.tensor(t.name).offset)
            assert data == f.read(t.n_bytes), t.name


def test_a_missing_shard_is_one_clear_line(shards: list[Path], tmp_path: Path) -> None:
    lone = tmp_path / shards[0].name
    shutil.copy(shards[0], lone)
    missing = tmp_path / shards[1].name
    with pytest.raises(GgprecError) as e:
        read_gguf(lone)
    assert str(e.value) == f"{missing}: no such file: shard 2 of 2 of split model {lone.name} is missing"
    result = CliRunner().invoke(main, ["inspect", str(lone)])
    assert result.exit_code == 2
    assert result.stderr == f"ggprec: error: {e.value}\n"


def test_a_renamed_shard_cannot_find_its_siblings(shards: list[Path], tmp_path: Path) -> None:
    renamed = tmp_path / "model.gguf"
    shutil.copy(shards[1], renamed)
    with pytest.raises(GgprecError, match=r"model\.gguf: shard 2 of 2 of a split model, but its name does not "
                                          r"end in -00002-of-00002\.gguf \(llama\.cpp finds the other shards "
                                          r"by that name\)"):
        read_gguf(renamed)


def test_a_shard_of_another_split_is_refused(shards: list[Path], tmp_path: Path) -> None:
    first = tmp_path / "m-00001-of-00002.gguf"
    shutil.copy(shards[0], first)
    shutil.copy(shards[0], tmp_path / "m-00002-of-00002.gguf")  # shard 1 again, under shard 2's name
    with pytest.raises(GgprecError, match=r"m-00002-of-00002\.gguf: shard 2 of 2 says it is shard 1 of 2$"):
        read_gguf(first)


def test_memory_maps_each_shard_on_its_own(shards: list[Path]) -> None:
    from ggprec.alloc import measure_allocation

    settings = RuntimeSettings(n_ctx=256, n_threads=2)
    info = read_gguf(shards[1])
    predicted = predict(info, settings)
    reported = measure_allocation(shards[1], settings).buffers
    # llama.cpp maps each shard file on its own and logs one CPU_Mapped buffer per file (2 lines, each
    # rounded to 0.01 MiB); ggprec sums them under one key.
    assert set(predicted.buffers) == set(reported)
    assert abs(predicted.buffers["model:CPU_Mapped"] - reported["model:CPU_Mapped"]) <= 2 * 0.005 * 2**20
    assert "in 2 shard files" in predicted.explain["model:CPU_Mapped"]


def test_llama_cpp_runs_the_split_model_from_any_shard(shards: list[Path]) -> None:
    from ggprec.runner import run_benchmark

    result = run_benchmark(shards[1], RuntimeSettings(n_ctx=256, n_threads=2), pp=8, tg=4, reps=1)
    assert result.pp_tps.median > 0 and result.tg_tps.median > 0


def test_quantize_a_split_model_to_one_file(shards: list[Path], tiny_model: Path, tmp_path: Path) -> None:
    plan = resolve_plan(read_gguf(shards[1]), load_profile("q8_0"))
    out = quantize(shards[1], plan, tmp_path / "q8.gguf", threads=2)
    written = read_gguf(out)
    assert not written.is_split
    assert out.stat().st_size == plan.predicted_file_size
    assert "split.count" not in written.metadata
    single = quantize(tiny_model, resolve_plan(read_gguf(tiny_model), load_profile("q8_0")), tmp_path / "ref.gguf",
                      threads=2)
    assert out.read_bytes() == single.read_bytes()  # the same file as from the unsplit model


def test_quantize_keep_split_writes_a_shard_per_source_shard(shards: list[Path], tmp_path: Path) -> None:
    plan = resolve_plan(read_gguf(shards[0]), load_profile("q8_0"))
    first = quantize(shards[0], plan, tmp_path / "q8.gguf", threads=2, keep_split=True)
    assert first == tmp_path / "q8-00001-of-00002.gguf"
    written = read_gguf(first)
    assert written.shards == [first, tmp_path / "q8-00002-of-00002.gguf"]
    assert {t.name: t.type.name for t in written.tensors} == {n: t.name for n, t in plan.tensor_types().items()}
    assert [t.shard for t in written.tensors] == [0] * 10 + [1] * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8-00001-of-00002.gguf", "q8-00002-of-00002.gguf"]
    from ggprec.llama_backend import load_model

    with load_model(tmp_path / "q8-00002-of-00002.gguf", RuntimeSettings(n_ctx=256, n_threads=2)) as loaded:
        assert loaded.n_layer == 2  # llama.cpp loads the written pair (from the first shard)


def test_quantize_a_split_model_with_a_split_output_head(shards: list[Path], tmp_path: Path) -> None:
    plan = resolve_plan(read_gguf(shards[1]), load_profile("mixed-split-head"))
    assert plan.split_output
    out = quantize(shards[1], plan, tmp_path / "head.gguf", threads=2)
    written = read_gguf(out)
    assert written.tensor("output.weight") is not None
    assert out.stat().st_size == plan.predicted_file_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.gguf"]  # the intermediate is gone


def test_quantize_cli_from_the_second_shard(shards: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    result = CliRunner().invoke(main, ["quantize", str(shards[1]), "--profile", "q8_0", "-o", str(out), "-t", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out} (")
    result = CliRunner().invoke(main, ["quantize", str(shards[1]), "--profile", "q8_0", "-o", str(out), "-t", "2",
                                       "--keep-split"])
    assert result.exit_code == 0, result.output
    first = tmp_path / "cli-00001-of-00002.gguf"
    assert result.stdout.startswith(f"wrote 2 shards {first} ... cli-00002-of-00002.gguf (")


def test_quantize_refuses_a_single_file_with_keep_split(tiny_model: Path, tmp_path: Path) -> None:
    plan = resolve_plan(read_gguf(tiny_model), load_profile("q8_0"))
    with pytest.raises(GgprecError, match=r"not a split model \(keep_split writes one output shard per source shard\)"):
        quantize(tiny_model, plan, tmp_path / "x.gguf", keep_split=True)


def test_inspect_and_plan_show_the_whole_model(shards: list[Path], tiny_model: Path) -> None:
    import json

    result = CliRunner().invoke(main, ["inspect", "--json", str(shards[1])])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["shards"] == [str(p) for p in shards]
    assert doc["n_tensors"] == 20 and [t["shard"] for t in doc["tensors"]] == [0] * 10 + [1] * 10
    whole = resolve_plan(read_gguf(tiny_model), load_profile("q8_0"))
    split = resolve_plan(read_gguf(shards[1]), load_profile("q8_0"))
    assert split.tensor_types() == whole.tensor_types()
    assert split.predicted_file_size == whole.predicted_file_size
