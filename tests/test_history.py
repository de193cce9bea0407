"""`ggprec history` over every kind of result, rows that do not read back, and the migration of a history
written before typed records. Rows are built through the library (ggprec.records + Store.record), in the
shapes the commands record them; no llama.cpp here."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggprec.cli import main
from ggprec.compare import DEMO_BASELINE, DEMO_PROFILES, add_baseline_ratios
from ggprec.records import (
    KINDS,
    CalibrationRecord,
    CompareRecord,
    EvalRecord,
    ProxyFitRecord,
    RecommendRecord,
    RecordError,
    RunRecord,
    SensitivityRecord,
    record_from_dict,
)
from ggprec.store import Store

MIB = 2**20
SHA = "ab" * 32
STATS = {"median": 41.5, "min": 40.0, "max": 43.0, "stdev": 1.5, "samples": [40.0, 41.5, 43.0]}
ALLOC = {"buffers": {"model:CPU_Mapped": 100 * MIB, "kv:CPU": 6 * MIB, "compute:CPU": 2 * MIB},
         "total": 108 * MIB, "no_alloc": False, "notes": []}


def run_record() -> RunRecord:
    return RunRecord(ran="/models/smollm2.gguf", pp=512, tg=128, reps=3, pp_tps=820.0, tg_tps=41.5,
                     pp_stats={**STATS, "median": 820.0}, tg_stats=STATS, load_s=0.4, memory_bytes=ALLOC["total"],
                     allocation=ALLOC, predicted=dict(ALLOC["buffers"]), peak_rss_bytes=300 * MIB, n_layer=30)


def compare_records() -> list[CompareRecord]:
    """One row per demo profile, as `ggprec demo` records them (ratios filled against q8_0)."""
    rows = [CompareRecord(profile=p, path=f"/cache/variants/{p}.gguf", file_bytes=(100 + i) * MIB,
                          file_mb=100.0 + i, memory_bytes=(120 + i) * MIB, memory_mb=120.0 + i, pp_tps=800.0 - i,
                          pp_spread=3.0, tg_tps=40.0 + i, tg_spread=1.0, kld_mean=0.01 * (i + 1), kld_p99=0.1,
                          top1_pct=95.0 - i, ppl=12.0, ppl_ref=11.9, ppl_ratio=1.01, kld_mean_se=0.001,
                          top1_se_pct=0.5, ppl_se=0.2, eval_tokens=1020, load_s=0.3,
                          buffers={"model:CPU_Mapped": (100 + i) * MIB}, peak_rss_bytes=400 * MIB,
                          reference_cached=True, accuracy_cached=False, runtime={"n_ctx": 512})
            for i, p in enumerate(DEMO_PROFILES)]
    add_baseline_ratios(rows, DEMO_BASELINE)
    return rows


def one_of_each_kind() -> list:
    sens = SensitivityRecord(model="/models/smollm2.gguf", reference="/models/smollm2.gguf", probe_type="q4_0",
                             grouping="role", n_ctx=512, chunks=2, baseline_kld=0.0, baseline_top1=1.0,
                             groups=[{"key": "ffn_down", "kld": 0.02}], ranking=["ffn_down"], seconds=30.0)
    rec = RecommendRecord(goal="quality", vram_bytes=4 * 2**30, ram_bytes=16 * 2**30, n_ctx=4096, n_gpu_layers=31,
                          cache_type_k="f16", cache_type_v="f16", weights_bytes=90 * MIB, gpu_bytes=200 * MIB,
                          host_bytes=50 * MIB, expected_kld=0.004, expected_tg_tps=120.0)
    cal = CalibrationRecord(speeds={"CPU": {"gbps": {"q8_0": 9.5, "q4_0": 7.25}, "default_gbps": 9.5, "token_s": 0.001,
                                            "layer_s": 0.0, "pp_elems_per_s": {}, "pp_layer_s": 0.0, "source": ""}},
                            points=[], n_threads=2, effort={"reps": 2}, seconds=61.5, fit_notes=[])
    ev = EvalRecord(kld_mean=0.0037, kld_median=0.002, kld_p99=0.03, kld_max=0.2, kld_mean_se=0.0001, top1=0.97,
                    top1_se=0.005, ppl=12.1, ppl_se=0.3, ppl_ref=12.0, ppl_ref_se=0.3, ppl_ratio=1.008,
                    ppl_ratio_se=0.001, n_tokens=1020, n_chunks=4, candidate="q8.gguf", reference="f32.gguf",
                    n_ctx=512, text_sha256="cd" * 32)
    fit = ProxyFitRecord(scale={"attn_v": 2.5}, default_scale=1.75, n_passes=3, weighting="uniform",
                         probe_type="q4_0", residual=0.2, passes=[{"label": "attn_v", "kld": 0.01, "fitted": 0.012}],
                         source="proxy: fitted on 3 passes", max_rows=512)
    return [run_record(), compare_records()[0], ev, sens, rec, cal, fit]


def store_all(db: Path, records: list) -> list[int]:
    with Store(db) as store:
        return [store.record(r, model_path="/models/smollm2.gguf", model_sha256=SHA,
                             profile_name=getattr(r, "profile", None) or None, settings={"n_ctx": 512},
                             hardware={"cpu": "test"}) for r in records]


def history(db: Path, *args: str):
    return CliRunner().invoke(main, ["history", "--db", str(db), *args])


def test_every_kind_has_a_record_type_and_one_row_of_each_reads_back_equal(tmp_path: Path) -> None:
    records = one_of_each_kind()
    assert sorted(r.KIND for r in records) == sorted(KINDS)
    store_all(tmp_path / "h.db", records)
    with Store(tmp_path / "h.db") as store:
        back = [s.record for s in reversed(store.query())]
        assert store.skipped == []
    assert back == records


def test_history_table_shows_a_row_of_every_kind(tmp_path: Path) -> None:
    ids = store_all(tmp_path / "h.db", one_of_each_kind())
    res = history(tmp_path / "h.db")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for rid, kind in zip(ids, ("run", "compare", "eval", "sensitivity", "recommend", "calibration",
                                    "proxy-fit"), strict=True):
        [line] = [ln for ln in lines if ln.startswith(f"│ {rid:>2} │")]
        assert f" {kind} " in line
    run_line = next(ln for ln in lines if " run " in ln)
    assert "820.0" in run_line and "41.5" in run_line and "108.0" in run_line  # pp, tg medians; MiB allocated


def test_history_json_has_every_row_with_its_typed_results(tmp_path: Path) -> None:
    records = one_of_each_kind()
    ids = store_all(tmp_path / "h.db", records)
    res = history(tmp_path / "h.db", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["schema"] == 2
    assert [r["id"] for r in doc["records"]] == ids[::-1]
    assert [record_from_dict(r["kind"], r["results"]) for r in doc["records"]] == records[::-1]


def test_the_demos_compare_rows_beside_a_run_row_print_and_export(tmp_path: Path) -> None:
    """The crash of issue 14: compare rows store pp_tps as a float, run rows used to store a Stats dict."""
    db = tmp_path / "h.db"
    store_all(db, [run_record(), *compare_records()])
    table, as_json = history(db), history(db, "--json")
    assert (table.exit_code, as_json.exit_code) == (0, 0), table.output + as_json.output
    assert sum(f" {p} " in table.output for p in DEMO_PROFILES) == len(DEMO_PROFILES)
    kinds = [r["kind"] for r in json.loads(as_json.output)["records"]]
    assert kinds == ["compare"] * len(DEMO_PROFILES) + ["run"]


def test_history_filters_by_the_new_kinds(tmp_path: Path) -> None:
    store_all(tmp_path / "h.db", one_of_each_kind())
    res = history(tmp_path / "h.db", "--kind", "calibration", "--json")
    [row] = json.loads(res.output)["records"]
    assert row["results"]["speeds"]["CPU"]["gbps"] == {"q8_0": 9.5, "q4_0": 7.25}


# --- rows that do not read back -----------------------------------------------------------------------


def insert_raw(db: Path, kind: str, results: str, settings: str = "{}") -> int:
    con = sqlite3.connect(db)
    with con:
        cur = con.execute("INSERT INTO results (created, kind, settings_json, results_json, hardware_json) "
                          "VALUES ('2026-01-01T00:00:00+00:00', ?, ?, ?, '{}')", (kind, settings, results))
    con.close()
    return int(cur.lastrowid)


@pytest.mark.parametrize(("kind", "results", "settings", "why"), [
    ("bench", "{}", "{}",
     "unknown history kind 'bench' (one of: run, compare, eval, sensitivity, recommend, calibration, proxy-fit)"),
    ("run", "{not json", "{}", "results is not valid JSON"),
    ("run", "[1, 2]", "{}", "results is a JSON list, not an object"),
    ("run", '{"pp_tps": "fast"}', "{}", "run results: 'pp_tps' is a str, expected float | None"),
    ("compare", '{"profile": "q8_0", "tg_tps": {"median": 4}}', "{}",
     "compare results: 'tg_tps' is a dict, expected float | None"),
    ("eval", '{"kld_mean": 0.1}', "nul\x00l", "settings is not valid JSON"),
])
def test_a_bad_row_is_skipped_with_one_warning_line_and_the_rest_is_shown(
        tmp_path: Path, kind: str, results: str, settings: str, why: str) -> None:
    db = tmp_path / "h.db"
    [good] = store_all(db, [run_record()])
    bad = insert_raw(db, kind, results, settings)
    res = CliRunner().invoke(main, ["history", "--db", str(db), "--json"])
    assert res.exit_code == 0
    assert res.stderr == f"ggprec: warning: history row {bad} skipped: {why}\n"
    assert [r["id"] for r in json.loads(res.stdout)["records"]] == [good]


def sqlite_db(path: Path, *statements: str) -> Path:
    """A database another schema or program wrote: `statements` run in one transaction."""
    con = sqlite3.connect(path)
    with con:
        for sql in statements:
            con.execute(sql)
    con.close()
    return path


def test_a_results_table_of_another_schema_is_one_error_line(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "other.db",
                   "CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)",
                   "INSERT INTO _migrations VALUES ('m001_results', 'then'), ('m002_typed_results', 'then')",
                   "CREATE TABLE results (id INTEGER PRIMARY KEY, kind TEXT, payload BLOB)")
    res = history(db)
    assert res.exit_code == 2
    assert res.output == f"ggprec: error: history database {db}: cannot read (no such column: created)\n"


def test_an_unknown_kind_or_a_missing_field_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="unknown history kind 'x'"):
        record_from_dict("x", {})
    with pytest.raises(RecordError, match="'kld_mean' is a bool"):
        record_from_dict("eval", {"kld_mean": True})


# --- migration from the first schema ------------------------------------------------------------------

M001 = """CREATE TABLE results (id INTEGER PRIMARY KEY, created TEXT NOT NULL, kind TEXT NOT NULL,
    model_path TEXT, model_sha256 TEXT, profile_name TEXT, profile_hash TEXT, settings_json TEXT NOT NULL,
    results_json TEXT NOT NULL, hardware_json TEXT NOT NULL)"""


def old_history(db: Path) -> None:
    """A history as ggprec wrote it before typed records: only m001 applied, a run row with Stats objects
    (runner.record_run's old shape) and a compare row with float medians."""
    old_run = {"ran": "/models/smollm2.gguf", "pp": 512, "tg": 128, "reps": 3, "pp_tps": {**STATS, "median": 820.0},
               "tg_tps": STATS, "load_s": 0.4, "allocation": ALLOC, "peak_rss_bytes": 300 * MIB,
               "gpu_memory_bytes": None, "n_layer": 30, "notices": [], "prompt": None, "generated": None,
               "predicted": None}
    old_compare = compare_records()[2].to_dict()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
    con.execute("INSERT INTO _migrations VALUES ('m001_results', '2026-01-01T00:00:00+00:00')")
    con.execute(M001)
    for kind, results in (("run", old_run), ("compare", old_compare)):
        con.execute("INSERT INTO results (created, kind, model_path, settings_json, results_json, hardware_json) "
                    "VALUES ('2026-01-01T00:00:00+00:00', ?, '/models/smollm2.gguf', '{}', ?, '{}')",
                    (kind, json.dumps(results)))
    con.commit()
    con.close()


def test_an_old_history_is_migrated_to_one_shape_of_speed(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old_history(db)
    with Store(db) as store:
        assert store.applied_migrations() == ["m001_results", "m002_typed_results"]
        compare_row, run_row = store.query()
    assert (run_row.record.pp_tps, run_row.record.tg_tps, run_row.record.tg_stats) == (820.0, 41.5, STATS)
    assert run_row.record.memory_bytes == ALLOC["total"]
    assert compare_row.record == compare_records()[2]
    stored = sqlite3.connect(db).execute("SELECT results_json FROM results WHERE kind = 'run'").fetchone()[0]
    assert json.loads(stored)["tg_tps"] == 41.5  # rewritten in the file, not only on reading


def test_history_of_an_old_database_prints(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old_history(db)
    res = history(db)
    assert res.exit_code == 0, res.output
    assert " run " in res.output and " compare " in res.output and "820.0" in res.output


def test_history_json_follows_the_documented_schema(tmp_path: Path) -> None:
    """docs/json.md documents every key of a history record and, per kind, every field of its record."""
    import dataclasses

    from ggprec.records import RECORD_TYPES

    section = (Path(__file__).parents[1] / "docs" / "json.md").read_text()
    section = section.split("## `ggprec history --json`", 1)[1].split("\n## ", 1)[0]
    store_all(tmp_path / "h.db", one_of_each_kind())
    doc = json.loads(history(tmp_path / "h.db", "--json").output)
    assert doc["schema"] == 2 and f'"schema": {doc["schema"]}' in section
    for row in doc["records"]:
        assert all(f"`{key}`" in section for key in row), sorted(row)
        [line] = [ln for ln in section.splitlines() if ln.startswith(f"| `{row['kind']}` |")]
        fields = [f.name for f in dataclasses.fields(RECORD_TYPES[row["kind"]])]
        assert sorted(row["results"]) == sorted(fields)
        assert [f for f in fields if f"`{f}`" not in line] == []


@pytest.mark.parametrize("index", range(7))
def test_every_printer_prints_every_kind_from_its_metadata(index: int) -> None:
    from ggprec.printers import to_csv, to_json, to_markdown, to_table

    record = one_of_each_kind()[index]
    columns = record.columns()
    assert columns and to_table([record]).row_count == 1
    header, row = to_csv([record]).splitlines()
    assert header.split(",") == [c.key for c in columns]
    md = to_markdown([record]).splitlines()
    assert md[0] == "| " + " | ".join(c.header for c in columns) + " |" and len(md) == 3
    assert json.loads(to_json([record])) == [record.to_dict()]


def test_a_database_of_another_program_is_one_error_line(tmp_path: Path) -> None:
    db = sqlite_db(tmp_path / "foreign.db", "CREATE TABLE results (id INTEGER PRIMARY KEY, score REAL)")
    res = history(db)
    assert res.exit_code == 2
    assert res.output == f"ggprec: error: history database {db}: cannot use it (table results already exists)\n"


def test_a_sensitivity_result_is_stored_as_its_record_and_found_by_recommend(tmp_path: Path) -> None:
    from rich.console import Console

    from ggprec.hashing import model_sha256
    from ggprec.recommend import stored_sensitivity
    from ggprec.sensitivity import GroupResult, SensitivityResult, render

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    group = GroupResult(key="ffn_down", role="ffn_down", layers=[0, 1], tensors=["blk.0.ffn_down.weight"],
                        n_params=4096, bytes_saved=6 * MIB, probe_written="q4_0", kld=0.02, kld_se=0.001,
                        top1_loss=0.01, kld_at={"q4_0": 0.02, "q8_0": 0.001})
    res = SensitivityResult(model=str(model), reference=str(model), probe_type="q4_0", grouping="role", n_ctx=512,
                            chunks=2, baseline_kld=0.0, baseline_top1=1.0, groups=[group], seconds=12.0,
                            also=["q8_0"])
    with Store(tmp_path / "h.db") as store:
        rid = store.record(SensitivityRecord.from_dict(res.to_dict()), model_path=model,
                           model_sha256=model_sha256(model))
        found = stored_sensitivity(str(model), store=store)
    assert found is not None and found["id"] == rid and found["groups"] == [group.to_dict()]
    console = Console(width=200, record=True)
    render(res, console)
    [row] = [ln for ln in console.export_text().splitlines() if "ffn_down" in ln]
    assert [c.strip() for c in row.split("│")[1:-1]] == ["1", "ffn_down", "q4_0", "6.0", "0.02000", "0.00100",
                                                         "+1.00%", "3.33e-03", "0.001000"]
