"""`ggprec run`: speed like llama-bench, memory llama.cpp allocated, every run kept in the history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.errors import GgprecError
from ggprec.runner import RunResult, run_benchmark
from ggprec.settings import RuntimeSettings

SMALL = RuntimeSettings(n_ctx=128, n_batch=64, n_ubatch=64, n_threads=2)


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_run_measures_pp_and_tg_each_rep_and_reports_buffers(tiny_model: Path) -> None:
    r = run_benchmark(tiny_model, SMALL, pp=32, tg=8, reps=2)
    for stats in (r.pp_tps, r.tg_tps):
        assert stats is not None and len(stats.samples) == 2
        assert 0 < stats.min <= stats.median <= stats.max
    assert set(r.allocation.buffers) == {"model:CPU_Mapped", "output:CPU", "kv:CPU", "compute:CPU"}
    assert r.load_s > 0 and r.peak_rss_bytes > r.allocation.buffers["kv:CPU"]
    assert r.n_layer == 2 and r.settings.n_threads == 2 and r.generated is None


@pytest.fixture(scope="module")
def tiny_run(tiny_model: Path) -> RunResult:
    return run_benchmark(tiny_model, SMALL, pp=0, tg=2, reps=1)


def test_run_predicts_the_kv_and_model_buffers_llama_cpp_allocates(tiny_run: RunResult) -> None:
    r = tiny_run
    assert r.predicted is not None
    half_a_logged_digit = 0.005 * 2**20  # llama.cpp logs MiB with two decimals
    for key in ("model:CPU_Mapped", "kv:CPU"):
        assert abs(r.predicted[key] - r.allocation.buffers[key]) <= half_a_logged_digit, key


def test_the_run_table_shows_predicted_allocated_and_the_error_per_buffer(tiny_run: RunResult) -> None:
    from rich.console import Console

    from ggprec.printers import allocation_table

    r = tiny_run
    console = Console(width=120, record=True)
    console.print(allocation_table(r.allocation, r.predicted))
    text = console.export_text()
    assert "predicted MiB" in text and "error" in text
    kv_row = next(line.replace("│", " ").split() for line in text.splitlines() if "kv:CPU" in line)
    assert kv_row == ["kv:CPU", "0.25", "0.25", "+0.00%"]  # buffer, allocated, predicted, error


def test_pp_larger_than_the_batch_is_decoded_in_batch_sized_pieces(tiny_model: Path) -> None:
    r = run_benchmark(tiny_model, SMALL, pp=100, tg=0, reps=1)  # n_batch 64: pieces of 64 and 36
    assert r.pp_tps is not None and r.tg_tps is None


def test_ngl_beyond_the_layer_count_is_clamped_with_a_notice(tiny_model: Path) -> None:
    from ggprec.llama_backend import local_gpu_available

    r = run_benchmark(tiny_model, SMALL.with_overrides(n_gpu_layers=99), pp=0, tg=2, reps=1)
    assert "-ngl 99 is more than the model's 2 layers + output; clamped to 3" in r.notices
    assert r.settings.n_gpu_layers == (3 if local_gpu_available() else 0)


def test_tests_that_do_not_fit_the_context_are_an_error(tiny_model: Path) -> None:
    with pytest.raises(GgprecError, match="context 128 too small for --pp 256"):
        run_benchmark(tiny_model, SMALL, pp=256, tg=8, reps=1)


# The `ggprec run --json` document, as docs/json.md describes it: key -> accepted types.
STATS = {"median": float, "min": float, "max": float, "stdev": float, "samples": list}
RUN_DOC = {
    "schema": int, "id": int, "model": str, "ran": str, "profile": (dict, type(None)), "settings": dict,
    "pp": int, "tg": int, "reps": int, "depth": int, "predicted_evictable": (int, type(None)),
    "pp_tps": (dict, type(None)), "tg_tps": (dict, type(None)),
    "load_s": float, "allocation": dict, "peak_rss_bytes": int, "gpu_memory_bytes": (int, type(None)),
    "n_layer": int, "notices": list, "prompt": (str, type(None)), "generated": (str, type(None)),
    "predicted": (dict, type(None)), "expected_tg_tps": (float, type(None)), "expected_pp_tps": (float, type(None)),
    "expected_tg_source": (str, type(None)), "hardware": dict,
}
SETTINGS_DOC = {"n_gpu_layers": int, "n_ctx": int, "n_batch": int, "n_ubatch": int,
                "flash_attn": (bool, type(None)), "flash_attn_effective": bool, "n_threads": int,
                "cache_type_k": str, "cache_type_v": str, "override_tensor": list, "n_cpu_moe": int,
                "rpc_servers": list, "tensor_split": list, "devices": list,
                "split_mode": str, "main_gpu": int}
ALLOCATION_DOC = {"buffers": dict, "total": int, "no_alloc": bool, "notes": list}
HARDWARE_DOC = {"cpu": str, "cores": int, "ram_bytes": (int, type(None)), "gpus": list, "gpu_offload": bool,
                "os": str, "python": str, "llama_cpp_python": str, "system_info": str}


def check(doc: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    assert set(doc) == set(schema), f"{where}: keys {sorted(set(doc) ^ set(schema))}"
    for key, types in schema.items():
        assert isinstance(doc[key], types), f"{where}.{key}: {type(doc[key]).__name__}"


def check_run_document(doc: dict[str, Any]) -> None:
    check(doc, RUN_DOC, "run")
    assert doc["schema"] == 1
    check(doc["settings"], SETTINGS_DOC, "settings")
    check(doc["allocation"], ALLOCATION_DOC, "allocation")
    assert all(k.count(":") == 1 and isinstance(v, int) for k, v in doc["allocation"]["buffers"].items())
    check(doc["hardware"], HARDWARE_DOC, "hardware")
    if doc["predicted"] is not None:
        assert set(doc["allocation"]["buffers"]) <= set(doc["predicted"])
        assert all(k.count(":") == 1 and isinstance(v, int) for k, v in doc["predicted"].items())
    for key in ("pp_tps", "tg_tps"):
        if doc[key] is not None:
            check(doc[key], STATS, key)
    if doc["profile"] is not None:
        check(doc["profile"], {"name": str, "hash": str}, "profile")


def test_run_json_follows_the_documented_schema_and_lands_in_history(tiny_model: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    res = run_cli("run", str(tiny_model), "--pp", "16", "--tg", "4", "--reps", "2", "-c", "128", "-t", "2",
                  "--json", "--db", db)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    check_run_document(doc)
    assert doc["profile"] is None and doc["ran"] == str(tiny_model) and doc["settings"]["n_ctx"] == 128
    hist = json.loads(run_cli("history", "--json", "--db", db, "--model", tiny_model.name).output)
    assert [r["id"] for r in hist["records"]] == [doc["id"]]
    # The history keeps the median as tg_tps (as compare rows do) and the whole Stats object as tg_stats.
    stored = hist["records"][0]["results"]
    assert (stored["tg_tps"], stored["tg_stats"]) == (doc["tg_tps"]["median"], doc["tg_tps"])


@pytest.mark.parametrize(("args", "message"), [
    (["-ctv", "q4_0", "-fa", "off"], "a quantized V cache (q4_0) needs flash attention"),
    (["-ctk", "q4_k"], "'q4_k' is not a KV-cache type llama.cpp accepts"),
])
def test_bad_runtime_settings_are_one_line_errors(tiny_model: Path, tmp_path: Path, args: list[str],
                                                  message: str) -> None:
    res = run_cli("run", str(tiny_model), *args, "--db", str(tmp_path / "h.db"))
    assert res.exit_code == 2
    assert res.output.startswith("ggprec: error: ") and message in res.output and res.output.count("\n") == 1


def test_a_model_llama_cpp_cannot_load_shows_its_reason(unknown_arch_model: Path, tmp_path: Path) -> None:
    res = run_cli("run", str(unknown_arch_model), "--db", str(tmp_path / "h.db"))
    assert res.exit_code == 2
    assert "llama.cpp cannot load it: unknown model architecture: 'nosucharch'" in res.output


def test_an_unusable_history_path_fails_before_measuring(tiny_model: Path, tmp_path: Path) -> None:
    res = run_cli("run", str(tiny_model), "--db", str(tmp_path))
    assert res.exit_code == 2 and res.output == f"ggprec: error: history database {tmp_path}: is a directory\n"


@pytest.mark.slow
def test_smollm2_with_the_q8_0_profile_runs_generates_and_is_recorded(demo_model: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    res = run_cli("run", str(demo_model), "--profile", "q8_0", "--pp", "16", "--tg", "4", "--reps", "1",
                  "-c", "256", "-t", "2", "--prompt", "The capital of France is", "-n", "3", "--json", "--db", db)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    check_run_document(doc)
    assert doc["profile"]["name"] == "q8_0" and doc["ran"] != str(demo_model)
    assert doc["generated"].split()[0].strip(".") == "Paris"
    kv_bytes = 256 * 30 * 3 * 64 * (2 + 2)  # cells x layers x KV heads x head dim x (f16 K + f16 V)
    assert doc["n_layer"] == 30 and abs(doc["allocation"]["buffers"]["kv:CPU"] - kv_bytes) <= 0.005 * 2**20 + 1
    hist = json.loads(run_cli("history", "--json", "--db", db, "--profile", "q8_0").output)["records"]
    assert [r["model_path"] for r in hist] == [str(demo_model.resolve())]
