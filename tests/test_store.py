"""The SQLite history (ggprec.store): every result kept, filtered, written safely."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from ggprec.errors import GgprecError
from ggprec.records import EvalRecord, RunRecord
from ggprec.store import MIGRATIONS, Store


def add(store: Store, kind: str = "run", model: str = "/models/a.gguf", profile: str | None = "q8_0",
        tg: float = 10.0) -> int:
    record = RunRecord(ran=model, tg=64, tg_tps=tg) if kind == "run" else EvalRecord(kld_mean=0.01)
    return store.record(record, model_path=model, model_sha256="ab" * 32, profile_name=profile,
                        profile_hash=None if profile is None else "cd" * 32, settings={"n_ctx": 512},
                        hardware={"cpu": "test"})


def test_a_recorded_result_reads_back_typed_with_its_json_payloads(tmp_path: Path) -> None:
    with Store(tmp_path / "h.db") as store:
        rid = add(store, tg=12.5)
        [rec] = store.query()
    assert rec.id == rid and rec.kind == "run" and rec.model_path == "/models/a.gguf"
    assert rec.settings == {"n_ctx": 512} and rec.record == RunRecord(ran="/models/a.gguf", tg=64, tg_tps=12.5)
    assert rec.hardware == {"cpu": "test"} and rec.profile_name == "q8_0" and rec.created.endswith("+00:00")


def test_query_filters_by_kind_model_profile_newest_first(tmp_path: Path) -> None:
    with Store(tmp_path / "h.db") as store:
        a = add(store, model="/models/a.gguf", profile="q8_0")
        b = add(store, model="/models/b.gguf", profile="mixed")
        c = add(store, kind="eval", model="/models/a.gguf", profile="mixed")
        assert [r.id for r in store.query()] == [c, b, a]
        assert [r.id for r in store.query(kind="run")] == [b, a]
        assert [r.id for r in store.query(model="a.gguf")] == [c, a]  # by file name
        assert [r.id for r in store.query(model="/models/b.gguf")] == [b]  # by path
        assert [r.id for r in store.query(model="abab")] == [c, b, a]  # by sha256 prefix
        assert [r.id for r in store.query(profile="mixed", kind="run")] == [b]
        assert [r.id for r in store.query(limit=1)] == [c]


def test_migrations_are_applied_once_and_recorded(tmp_path: Path) -> None:
    Store(tmp_path / "h.db").close()
    with Store(tmp_path / "h.db") as store:
        assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_transaction_leaves_no_row(tmp_path: Path) -> None:
    with Store(tmp_path / "h.db") as store:
        with pytest.raises(KeyboardInterrupt), store._transaction():
            store.db.execute("INSERT INTO results (created, kind, settings_json, results_json, hardware_json)"
                             " VALUES ('now', 'run', '{}', '{}', '{}')")
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write
        assert store.query() == []


def _write_many(path: str, n: int, start: object) -> None:
    with Store(path) as store:
        start.wait()  # both processes begin writing at the same moment
        for i in range(n):
            add(store, tg=float(i))


def test_two_processes_writing_at_once_both_land(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_many, args=(db, 25, start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store(db) as store:
        assert len(store.query()) == 50


def test_the_env_variable_chooses_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGPREC_DB", str(tmp_path / "env.db"))
    with Store() as store:
        assert store.path == tmp_path / "env.db"
    assert (tmp_path / "env.db").is_file()


@pytest.mark.parametrize(("name", "message"), [
    (".", "is a directory"),
    ("missing/h.db", "does not exist"),
    ("not-a-db.txt", "cannot use it (file is not a database)"),
])
def test_an_unusable_database_path_is_an_error(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "not-a-db.txt").write_text("hello, this is not SQLite\n" * 100)
    with pytest.raises(GgprecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Store(tmp_path / name)


def test_only_a_result_record_is_stored(tmp_path: Path) -> None:
    with Store(tmp_path / "h.db") as store, pytest.raises(GgprecError, match="not a history record: 'bench'"):
        store.record("bench", model_path="/models/a.gguf")  # type: ignore[arg-type]


def test_history_db_is_plain_sqlite(tmp_path: Path) -> None:
    with Store(tmp_path / "h.db") as store:
        add(store)
    rows = sqlite3.connect(tmp_path / "h.db").execute("SELECT kind, profile_name FROM results").fetchall()
    assert rows == [("run", "q8_0")]
