"""The history: every run, eval, compare and sensitivity result, in SQLite (stdlib sqlite3, WAL).

One table `results` holds every kind of result: what was measured (`kind`), on which model (path and
sha256), with which profile (name and content hash), all settings, all results and the hardware
fingerprint, the last three as JSON. Schema changes are migrations, applied in order and recorded in
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

ENV_DB = "GGPREC_DB"
KINDS = ("run", "eval", "compare", "sensitivity", "calibration")
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
            kind TEXT NOT NULL,             -- run, eval, compare, sensitivity
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


def default_db_path() -> Path:
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("ggprec")) / "history.db"


@dataclass
class Record:
    """One history row, JSON columns decoded."""

    id: int
    created: str
    kind: str
    model_path: str | None
    model_sha256: str | None
    profile_name: str | None
    profile_hash: str | None
    settings: dict[str, Any]
    results: dict[str, Any]
    hardware: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Store:
    """The SQLite history at `path` (default: $GGPREC_DB, else the user data dir)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        explicit = path is not None or bool(os.environ.get(ENV_DB))
        self.path = Path(path) if path is not None else default_db_path()
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

    def record(self, kind: str, model_path: str | os.PathLike[str] | None, model_sha256: str | None,
               profile_name: str | None, profile_hash: str | None, settings: dict[str, Any],
               results: dict[str, Any], hardware: dict[str, Any]) -> int:
        """Store one result in a single transaction; returns its id."""
        if kind not in KINDS:
            raise GgprecError(f"unknown history kind '{kind}' (one of: {', '.join(KINDS)})")
        row = (_now(), kind, None if model_path is None else _abs(model_path), model_sha256, profile_name,
               profile_hash, _dumps(settings), _dumps(results), _dumps(hardware))
        try:
            with self._transaction():
                cur = self.db.execute(
                    "INSERT INTO results (created, kind, model_path, model_sha256, profile_name, profile_hash,"
                    " settings_json, results_json, hardware_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.Error as e:
            raise GgprecError(f"history database {self.path}: cannot write ({e})") from None
        return int(cur.lastrowid)

    def query(self, kind: str | None = None, model: str | None = None, profile: str | None = None,
              limit: int | None = None) -> list[Record]:
        """Rows newest first. `model` matches a path, a file name or a sha256 prefix; `profile` a name
        or a content-hash prefix."""
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
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        try:
            rows = self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise GgprecError(f"history database {self.path}: cannot read ({e})") from None
        return [Record(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), json.loads(r[8]),
                       json.loads(r[9])) for r in rows]

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
