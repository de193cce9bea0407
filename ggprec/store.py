"""The history: every run, eval, compare, sensitivity, recommend and calibration result, in SQLite
(stdlib sqlite3, WAL).

One table `results` holds every kind of result: what was measured (`kind`), on which model (path and
sha256), with which profile (name and content hash), all settings, all results and the hardware
fingerprint, the last three as JSON. The results are a typed record (ggprec.records, one dataclass per
kind): `record()` takes one, `query()` gives it back checked, in `StoredRecord.record`. A row that does
not read back (unknown kind, bad JSON, a results object of another shape) is skipped and described in one
line in `Store.skipped`, never a traceback. Schema changes are migrations, applied in order and recorded in
`_migrations` (the simonw/llm way), so an old history keeps working after an upgrade. A model's
sha256 comes from `model_sha256()`, cached by path + size + mtime.

Each write is one transaction in WAL mode: an interrupted run leaves no half row, and concurrent
writers (two `ggprec run`s at once) wait for each other (busy timeout) instead of failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import GgprecError
from .records import KINDS, RecordError, ResultRecord, record_from_dict, upgrade

ENV_DB = "GGPREC_DB"
# The columns query() reads, by name (never SELECT *: a table with other or reordered columns fails
# with one line instead of being read in the wrong order).
COLUMNS = ("id", "created", "kind", "model_path", "model_sha256", "profile_name", "profile_hash",
           "settings_json", "results_json", "hardware_json")
BUSY_TIMEOUT_S = 60.0

MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_results(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            created TEXT NOT NULL,          -- UTC, ISO 8601
            kind TEXT NOT NULL,             -- ggprec.records.KINDS
            model_path TEXT,
            model_sha256 TEXT,
            profile_name TEXT,
            profile_hash TEXT,
            settings_json TEXT NOT NULL,
            results_json TEXT NOT NULL,
            hardware_json TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX results_kind ON results(kind, created)")
    db.execute("CREATE INDEX results_model ON results(model_sha256)")
    db.execute("CREATE INDEX results_profile ON results(profile_name)")


@migration
def m002_typed_results(db: sqlite3.Connection) -> None:
    """Results in today's record shapes (ggprec.records.upgrade), e.g. run rows' pp_tps/tg_tps Stats objects
    become medians as in compare rows. A row whose JSON does not parse is left as it is: reading skips it
    with a one-line warning."""
    rows = db.execute("SELECT id, kind, results_json FROM results").fetchall()
    for rid, kind, text in rows:
        try:
            doc = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(kind, str):
            new = upgrade(kind, doc)
            if new != doc:
                db.execute("UPDATE results SET results_json = ? WHERE id = ?", (_dumps(new), rid))


def default_db_path() -> Path:
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("ggprec")) / "history.db"


@dataclass
class StoredRecord:
    """One history row: its columns, the JSON settings and hardware decoded, and the typed results."""

    id: int
    created: str
    kind: str
    model_path: str | None
    model_sha256: str | None
    profile_name: str | None
    profile_hash: str | None
    settings: dict[str, Any]
    record: ResultRecord
    hardware: dict[str, Any]

    @property
    def results(self) -> dict[str, Any]:
        """The results as a plain dict (the record's fields)."""
        return self.record.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "kind": self.kind, "model_path": self.model_path,
                "model_sha256": self.model_sha256, "profile_name": self.profile_name,
                "profile_hash": self.profile_hash, "settings": self.settings, "results": self.results,
                "hardware": self.hardware}


class Store:
    """The SQLite history at `path` (default: $GGPREC_DB, else the user data dir)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        explicit = path is not None or bool(os.environ.get(ENV_DB))
        self.path = Path(path) if path is not None else default_db_path()
        self.skipped: list[str] = []  # one line per row the last query() left out
        if self.path.is_dir():
            raise GgprecError(f"history database {self.path}: is a directory")
        if not explicit:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.parent.is_dir():
            raise GgprecError(f"history database {self.path}: directory {self.path.parent} does not exist")
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            # Switching a fresh file to WAL needs an exclusive lock, and SQLite answers a competing
            # opener with "locked" at once instead of waiting on the busy timeout: retry it.
            _retry_locked(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as e:
            raise GgprecError(f"history database {self.path}: cannot use it ({e})") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        # Inside BEGIN IMMEDIATE too: an autocommit read-then-write can fail with "locked" at once in WAL
        # mode when another process committed in between (no busy wait for a stale snapshot).
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
        self.db.execute("COMMIT")
        for name, fn in MIGRATIONS:
            # BEGIN IMMEDIATE: two processes opening a fresh DB at once apply each migration once
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                    fn(self.db)
                    self.db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, _now()))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM _migrations ORDER BY rowid")]

    def record(self, record: ResultRecord, *, model_path: str | os.PathLike[str] | None = None,
               model_sha256: str | None = None, profile_name: str | None = None, profile_hash: str | None = None,
               settings: dict[str, Any] | None = None, hardware: dict[str, Any] | None = None) -> int:
        """Store one result (its kind is the record's) in a single transaction; returns its id."""
        if not isinstance(record, ResultRecord) or record.KIND not in KINDS:
            raise GgprecError(f"not a history record: {record!r:.80} (kinds: {', '.join(KINDS)})")
        row = (_now(), record.KIND, None if model_path is None else _abs(model_path), model_sha256, profile_name,
               profile_hash, _dumps(settings or {}), _dumps(record.to_dict()), _dumps(hardware or {}))
        try:
            with self._transaction():
                cur = self.db.execute(
                    "INSERT INTO results (created, kind, model_path, model_sha256, profile_name, profile_hash,"
                    " settings_json, results_json, hardware_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.Error as e:
            raise GgprecError(f"history database {self.path}: cannot write ({e})") from None
        return int(cur.lastrowid)

    def query(self, *, kind: str | None = None, model: str | None = None, profile: str | None = None,
              limit: int | None = None) -> list[StoredRecord]:
        """Rows newest first. `model` matches a path, a file name or a sha256 prefix; `profile` a name
        or a content-hash prefix. Rows that do not read back are left out, each described in one line
        in `self.skipped` (reset by every query)."""
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if model is not None:
            where.append("(model_path = ? OR model_path LIKE ? ESCAPE '\\' OR model_sha256 LIKE ?)")
            args += [_abs(model), "%/" + _like_escape(Path(model).name), model.lower() + "%"]
        if profile is not None:
            where.append("(profile_name = ? OR profile_hash LIKE ?)")
            args += [profile, profile.lower() + "%"]
        sql = (f"SELECT {', '.join(COLUMNS)} FROM results" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        try:
            cursor = self.db.execute(sql, args)
            rows = [dict(zip(COLUMNS, r, strict=True)) for r in cursor.fetchall()]
        except sqlite3.Error as e:
            raise GgprecError(f"history database {self.path}: cannot read ({e})") from None
        self.skipped = []
        out = []
        for row in rows:
            try:
                out.append(_stored(row))
            except RecordError as e:
                self.skipped.append(f"history row {row['id']} skipped: {e}")
        return out

    def _transaction(self) -> _Tx:
        return _Tx(self.db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (including KeyboardInterrupt)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _stored(row: dict[str, Any]) -> StoredRecord:
    """A row read by column name, its JSON decoded and its results typed; RecordError when it does not fit."""
    def obj(column: str) -> Any:
        text = row[column]
        try:
            doc = json.loads(text)
        except (TypeError, ValueError):
            raise RecordError(f"{column.removesuffix('_json')} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise RecordError(f"{column.removesuffix('_json')} is a JSON {type(doc).__name__}, not an object")
        return doc

    for column in ("created", "kind"):
        if not isinstance(row[column], str):
            raise RecordError(f"{column} is {row[column]!r:.40}, not text")
    for column in ("model_path", "model_sha256", "profile_name", "profile_hash"):
        if row[column] is not None and not isinstance(row[column], str):
            raise RecordError(f"{column} is {row[column]!r:.40}, not text")
    record = record_from_dict(row["kind"], obj("results_json"))
    return StoredRecord(row["id"], row["created"], row["kind"], row["model_path"], row["model_sha256"],
                        row["profile_name"], row["profile_hash"], obj("settings_json"), record, obj("hardware_json"))


def _retry_locked(statement: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _abs(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().resolve())


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, default=str)
