"""`ggprec compare` end to end on the tiny synthetic model: real builds with llama.cpp's quantizer, real
speed runs and real evaluations, against the f32 build as the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.compare import Comparison, compare
from ggprec.errors import GgprecError
from ggprec.gguf_info import read_gguf

# Small sizes: the tiny model is random, so only the plumbing and the orderings are checked here.
FAST = {"pp": 32, "tg": 8, "reps": 1, "n_ctx": 64, "chunks": 2, "threads": 2, "progress": None}


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory):
    """Cache (variants, reference logits) and history in a temporary place, for the whole module."""
    root = tmp_path_factory.mktemp("compare-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GGPREC_CACHE", str(root / "cache"))
        mp.setenv("GGPREC_DB", str(root / "history.db"))
        yield root


@pytest.fixture(scope="module")
def comparison(isolated: Path, tiny_model: Path) -> Comparison:
    """A comparison kept in the history as the CLI keeps it (history.save_comparison)."""
    from ggprec.history import save_comparison
    from ggprec.store import Store

    result = compare(tiny_model, ["q4_0", "q8_0"], baseline="q8_0", reference="f32", out_dir=isolated / "out",
                     **FAST)
    with Store() as store:
        save_comparison(store, result)
    return result


def test_one_record_per_profile_in_the_order_given(comparison: Comparison):
    assert [r.profile for r in comparison.records] == ["q4_0", "q8_0"]


def test_each_row_shows_the_predicted_memory_beside_the_allocated(comparison: Comparison):
    """q8_0 with an f16 cache (no flash attention): ggprec.memory predicts every buffer within 2%."""
    row = comparison.records[1]
    assert row.profile == "q8_0"
    assert abs(row.memory_predicted_mb - row.memory_mb) <= 0.02 * row.memory_mb


def test_each_row_keeps_the_predicted_bytes_per_buffer_and_per_device(comparison: Comparison):
    row = comparison.records[1]
    assert set(row.predicted_buffers) >= set(row.buffers)
    assert sum(row.predicted_devices.values()) == sum(row.predicted_buffers.values())
    assert row.predicted_devices["host"] == sum(v for k, v in row.predicted_buffers.items()
                                                if k.split(":", 1)[1].startswith("CPU"))


def test_the_baseline_row_has_neutral_ratios(comparison: Comparison):
    base = comparison.records[1]
    assert base.baseline is True
    assert (base.memory_saved_pct, base.pp_ratio, base.tg_ratio, base.top1_vs_baseline) == (0, 1, 1, 0)


def test_q4_0_file_is_smaller_than_q8_0(comparison: Comparison):
    q4, q8 = comparison.records
    assert q4.file_bytes < q8.file_bytes


def test_memory_is_every_buffer_llama_cpp_allocated_and_saved_is_relative_to_the_baseline(comparison: Comparison):
    # On the tiny model the compute buffer dominates, and on CPU llama.cpp repacks q4_0 weights into an
    # extra buffer (model:CPU_REPACK), so q4_0 need not save memory here; only the arithmetic is checked.
    q4, q8 = comparison.records
    assert q4.memory_bytes == sum(q4.buffers.values())
    assert q4.memory_saved_pct == pytest.approx(100 * (1 - q4.memory_bytes / q8.memory_bytes))


def test_every_record_has_speed_and_accuracy(comparison: Comparison):
    for r in comparison.records:
        assert r.pp_tps > 0 and r.tg_tps > 0
        assert r.kld_mean >= 0 and 0 <= r.top1_pct <= 100 and r.ppl > 1
        assert r.pp_ratio == pytest.approx(r.pp_tps / comparison.records[1].pp_tps)


def test_q4_0_is_further_from_the_f32_reference_than_q8_0(comparison: Comparison):
    q4, q8 = comparison.records
    assert q4.kld_mean > q8.kld_mean


def test_tables_and_plots_are_written_to_out(comparison: Comparison, isolated: Path):
    assert sorted(p.name for p in (isolated / "out").iterdir()) == [
        "compare.csv", "compare.json", "compare.md", "size_vs_kld.png", "tg_vs_kld.png"]
    assert (isolated / "out" / "compare.csv").read_text().splitlines()[1].startswith("q4_0,")


def test_each_profile_is_stored_in_the_history(comparison: Comparison):
    from ggprec.store import Store

    with Store() as store:
        rows = store.query(kind="compare")
    assert len(comparison.history_ids) == 2
    assert [r.record for r in reversed(rows)] == comparison.records


def test_history_shows_the_compare_rows_beside_a_run_row(comparison: Comparison, tiny_model: Path):
    """`ggprec demo` (compare rows) and `ggprec run` (a run row) in one history, then `ggprec history`
    and `history --json`: every row shown, exit 0 (issue 14's crash)."""
    runner = CliRunner()
    ran = runner.invoke(main, ["run", str(tiny_model), "--pp", "16", "--tg", "4", "--reps", "1", "-c", "64",
                               "-t", "2"])
    assert ran.exit_code == 0, ran.output
    table, as_json = runner.invoke(main, ["history"]), runner.invoke(main, ["history", "--json"])
    assert (table.exit_code, as_json.exit_code) == (0, 0), table.output + as_json.output
    rows = json.loads(as_json.output)["records"]
    assert sorted(r["kind"] for r in rows) == ["compare", "compare", "run"]
    lines = table.output.splitlines()
    assert (sum(" compare " in ln for ln in lines), sum(" run " in ln for ln in lines)) == (2, 1)


def test_a_second_compare_reuses_builds_and_reference_logits_and_gets_the_same_accuracy(
        comparison: Comparison, tiny_model: Path):
    again = compare(tiny_model, ["q8_0"], baseline="q8_0", reference="f32", reuse_accuracy=False,
                    **FAST)
    first, second = comparison.records[1], again.records[0]
    assert second.path == first.path
    assert (second.reference_cached, second.accuracy_cached) == (True, False)
    for key in ("kld_mean", "kld_p99", "top1_pct", "ppl"):
        assert getattr(second, key) == getattr(first, key)


def test_compare_itself_keeps_nothing_the_cli_saves_the_rows(comparison: Comparison, tiny_model: Path):
    from ggprec.store import Store

    with Store() as store:
        before = len(store.query(kind="compare"))
        compare(tiny_model, ["q8_0"], baseline="q8_0", reference="f32", **FAST)
        assert len(store.query(kind="compare")) == before


def test_a_second_compare_reuses_the_accuracy_of_unchanged_inputs_but_measures_speed_again(
        comparison: Comparison, tiny_model: Path):
    again = compare(tiny_model, ["q8_0"], baseline="q8_0", reference="f32", **FAST)
    assert again.records[0].accuracy_cached is True
    assert again.records[0].kld_mean == comparison.records[1].kld_mean
    assert again.records[0].tg_tps > 0


def test_unknown_profile_is_a_one_line_error(isolated: Path, tiny_model: Path):
    result = CliRunner().invoke(main, ["compare", str(tiny_model), "--profiles", "q8_0,q9_9"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "q9_9" in result.output


def test_text_too_short_for_one_window_is_a_one_line_error(isolated: Path, tiny_model: Path, tmp_path: Path):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    result = CliRunner().invoke(main, ["compare", str(tiny_model), "--profiles", "q8_0", "--text", str(short),
                                       "--ctx", "64", "--chunks", "1", "--pp", "8", "--tg", "2", "--reps", "1",
                                       "--json"])
    assert result.exit_code == 2
    assert result.output.startswith("ggprec: error: text too short") and result.output.count("\n") == 1


def test_imatrix_reaches_the_quantizer_of_every_compared_profile(isolated: Path, tiny_model: Path,
                                                                 tiny_imatrix_file: Path,
                                                                 comparison: Comparison) -> None:
    from ggprec.imatrix_file import read_imatrix

    res = compare(tiny_model, ["q4_0"], baseline="q4_0", reference="f32", imatrix=tiny_imatrix_file, **FAST)
    with_imx = read_gguf(res.records[0].path).metadata
    assert with_imx["quantize.imatrix.entries_count"] == len(read_imatrix(tiny_imatrix_file).entries)
    without = read_gguf(comparison.records[0].path).metadata  # the same profile without --imatrix
    assert "quantize.imatrix.entries_count" not in without and res.records[0].path != comparison.records[0].path


def test_an_imatrix_of_another_model_is_one_line_before_any_build(isolated: Path, tiny_moe: Path,
                                                                  tiny_imatrix_file: Path) -> None:
    with pytest.raises(GgprecError, match="importance matrix|imatrix"):
        compare(tiny_moe, ["q4_0"], baseline="q4_0", reference="f32", imatrix=tiny_imatrix_file, **FAST)
