"""The printers on hand-made records: exact CSV and Markdown text, the Pareto front, plots."""

from __future__ import annotations

import json
from pathlib import Path

from ggprec.printers import to_csv, to_json, to_markdown, to_table
from ggprec.records import Column, CompareRecord
from ggprec.report import pareto_front, write_all

COLS = (
    Column("profile", "profile", "", ""),
    Column("file_mb", "file MB", ".1f", ""),
    Column("kld_mean", "KLD mean", ".4f", ""),
    Column("top1_vs_baseline", "top-1 vs base", "+.1f", ""),
)

RECORDS = [
    {"profile": "q8_0", "file_mb": 144.8125, "kld_mean": 0.0062, "top1_vs_baseline": 0.0, "extra": 1},
    {"profile": "q4_0", "file_mb": 91.7, "kld_mean": 0.3716, "top1_vs_baseline": -25.0},
    {"profile": "f32", "file_mb": 513.0, "kld_mean": None},
]


def test_csv_has_column_keys_then_raw_values_and_empty_cells_for_missing():
    assert to_csv(RECORDS, COLS) == (
        "profile,file_mb,kld_mean,top1_vs_baseline\n"
        "q8_0,144.8125,0.0062,0.0\n"
        "q4_0,91.7,0.3716,-25.0\n"
        "f32,513.0,,\n"
    )


def test_markdown_formats_values_right_aligns_numbers_and_dashes_missing():
    assert to_markdown(RECORDS, COLS) == (
        "| profile | file MB | KLD mean | top-1 vs base |\n"
        "|---|---:|---:|---:|\n"
        "| q8_0 | 144.8 | 0.0062 | +0.0 |\n"
        "| q4_0 | 91.7 | 0.3716 | -25.0 |\n"
        "| f32 | 513.0 | - | - |\n"
    )


def test_json_keeps_every_field_of_every_record():
    assert json.loads(to_json(RECORDS)) == RECORDS


def test_rich_table_has_one_row_per_record_and_the_headers():
    table = to_table(RECORDS, COLS, highlight="q8_0")
    assert [c.header for c in table.columns] == ["profile", "file MB", "KLD mean", "top-1 vs base"]
    assert table.row_count == 3


def test_pareto_front_minimizing_both_axes_drops_dominated_points():
    # (KLD, size): c is worse than a on both axes; d ties b on size but has more KLD.
    points = [(0.01, 150.0), (0.3, 90.0), (0.05, 160.0), (0.4, 90.0), (0.0, 500.0)]
    assert pareto_front(points) == [4, 0, 1]


def test_pareto_front_maximizing_y_keeps_the_fast_and_the_accurate():
    # (KLD, tok/s): the slow inaccurate point (index 2) is dominated by index 1.
    points = [(0.0, 10.0), (0.2, 30.0), (0.3, 20.0), (0.01, 25.0)]
    assert pareto_front(points, maximize_y=True) == [0, 3, 1]


def test_pareto_front_keeps_identical_points():
    assert pareto_front([(0.1, 5.0), (0.1, 5.0)]) == [0, 1]


def test_columns_come_from_the_record_class_when_not_given():
    rec = CompareRecord(profile="q4_0", file_mb=91.7, memory_mb=120.25, kld_mean=0.3716, top1_vs_baseline=-25.0)
    md = to_markdown([rec]).splitlines()
    assert md[0] == ("| profile | file MiB | mem MiB | pred MiB | mem saved % | pp tok/s | pp x | tg tok/s | tg x "
                     "| tg / exp | KLD mean | KLD p99 | KLD x base | top-1 % | top-1 vs base | PPL |")
    assert md[2] == "| q4_0 | 91.7 | 120.2 | - | - | - | - | - | - | - | 0.3716 | - | - | - | -25.0 | - |"
    assert to_csv([rec]).splitlines()[1] == "q4_0,91.7,120.25,,,,,,,,0.3716,,,,-25.0,"


def test_write_all_writes_text_files_and_two_pngs(tmp_path: Path):
    records = [CompareRecord(profile=r["profile"], file_mb=r["file_mb"], kld_mean=r["kld_mean"], tg_tps=t)
               for r, t in zip(RECORDS[:2], (40.0, 55.0), strict=True)]
    paths = write_all(records, tmp_path / "out", subtitle="hand-made", baseline="q8_0")
    assert sorted(p.name for p in paths) == ["compare.csv", "compare.json", "compare.md",
                                             "size_vs_kld.png", "tg_vs_kld.png"]
    for p in paths:
        assert p.stat().st_size > 0
    assert (tmp_path / "out" / "size_vs_kld.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*.tmp"))
