"""The scan state: an embedded SQLite database that makes rescans of unchanged files free.

One row per (resolved path, model) holding the file's size and mtime_ns when it
was scored and the facts its record is built from (scores, provenance, size,
format), in `<app dir>/scan-state.sqlite3` (`$MAI_HOME` or `~/.mai`). A file is
unchanged when its resolved path, size, mtime_ns and model all match; its
record is then rebuilt from the stored facts under the current threshold and
band, without decoding or inferring anything.

Only scored files are stored: error records are retried on every scan (a
permission or a disk may have been fixed, and they are few).

WAL mode, one writer (the scanning process), a transaction per batch of
records: readers (another scan) never block it. If the database cannot be used
(a read-only home, a locked or corrupt file) the scan goes on without it and
says so once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mai.appdir import app_dir
from scanner.records import FACT_KEYS

DB_NAME = "scan-state.sqlite3"
#: Bump when what decode produces for the same file changes (provenance rules,
#: fact meaning): stored rows of older versions are then misses.
FACTS_VERSION = 2  # 2: stealth PNG info and remote C2PA references
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path BLOB NOT NULL,
    model TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    facts TEXT NOT NULL,
    scanned_at REAL NOT NULL,
    PRIMARY KEY (path, model)
) WITHOUT ROWID
"""


def facts_of(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a record that depends on the file and the model only."""
    return {"scores": record["scores"], "provenance": record["provenance"], **{k: record[k] for k in FACT_KEYS}}


class ScanState:
    """Stored facts of scored files, by (resolved path, size, mtime_ns, model key).

    Opening raises (sqlite3.Error, OSError, MaiError) when the database cannot
    be used at all; after that, a failing read or write (a disk full, another
    writer holding the lock past the timeout) disables the state: `on_error`
    hears why, once, and the scan goes on.
    """

    COMMIT_EVERY = 256  # rows per transaction ...
    COMMIT_AFTER_S = 2.0  # ... or seconds, so another scan's writes never wait long

    def __init__(self, path: str | os.PathLike[str] | None = None, model_key: str = "",
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = Path(path) if path is not None else app_dir() / DB_NAME
        self.model_key = f"{model_key}#f{FACTS_VERSION}"
        self.on_error = on_error
        self.db: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        self.db.execute(_SCHEMA)
        self._pending = 0
        self._since = 0.0

    def _fail(self, e: Exception) -> None:
        db, self.db = self.db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        if self.on_error is not None:
            self.on_error(f"scan state {self.path} failed ({e}); going on without it")

    @staticmethod
    def _key(path: str) -> bytes:
        return os.fsencode(path)  # exact bytes: names that are not UTF-8 stay distinct

    def lookup(self, path: str, size: int, mtime_ns: int) -> dict[str, Any] | None:
        """The stored facts if the file is unchanged since it was scored, else None."""
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT size, mtime_ns, facts FROM files WHERE path = ? AND model = ?",
                                  (self._key(path), self.model_key)).fetchone()
        except sqlite3.Error as e:
            self._fail(e)
            return None
        if row is None or row[0] != size or row[1] != mtime_ns:
            return None
        try:
            return json.loads(row[2])
        except ValueError:
            return None

    def put(self, path: str, size: int, mtime_ns: int, facts: dict[str, Any]) -> None:
        if self.db is None:
            return
        try:
            if self._pending == 0:
                self.db.execute("BEGIN")
                self._since = time.monotonic()
            self.db.execute(
                "INSERT OR REPLACE INTO files (path, model, size, mtime_ns, facts, scanned_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self._key(path), self.model_key, size, mtime_ns, json.dumps(facts), time.time()))
            self._pending += 1
            if self._pending >= self.COMMIT_EVERY or time.monotonic() - self._since >= self.COMMIT_AFTER_S:
                self.commit()
        except sqlite3.Error as e:
            self._fail(e)

    def commit(self) -> None:
        if self.db is None or not self._pending:
            return
        try:
            self.db.execute("COMMIT")
            self._pending = 0
        except sqlite3.Error as e:
            self._fail(e)

    def close(self) -> None:
        self.commit()
        if self.db is not None:
            self.db.close()
            self.db = None
