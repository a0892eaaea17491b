"""The evaluation journal: every scored candidate, in SQLite, committed as it is scored.

A killed search loses at most the candidate being scored. `--resume` replays the
strategy from the start with the same seed; each candidate it proposes is looked up
here first, so nothing is scored twice and the replay reaches the same state.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelglue.errors import ModelGlueError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    split TEXT NOT NULL,
    recipe TEXT NOT NULL,
    params TEXT NOT NULL,
    scores TEXT NOT NULL,
    seconds REAL NOT NULL,
    origin TEXT NOT NULL,
    worker TEXT NOT NULL,
    created REAL NOT NULL,
    error TEXT,
    UNIQUE (key, split)
);
"""


@dataclass(frozen=True)
class JournalRow:
    seq: int
    key: str
    split: str
    recipe: dict[str, Any]
    params: dict[str, Any]
    scores: dict[str, float]
    seconds: float
    origin: str
    worker: str
    error: str | None = None  # the candidate failed on every attempt (no scores)


class Journal:
    """One SQLite file per search output directory.

    `config` is what defines the search (models, tasks, strategy, seed, ...); resuming
    with a different one is refused, since the recorded scores would not mean the same.
    """

    FILENAME = "journal.sqlite"

    def __init__(self, path: str | Path, config: dict[str, Any], *, resume: bool = False):
        self.path = Path(path)
        existed = self.path.exists()
        if existed and not resume:
            raise ModelGlueError(f"{self.path} exists: pass --resume to continue that search, or use a new --out")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so each insert is durable when execute returns.
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")  # a reader (e.g. a test) never blocks the writer
        self.db.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; only power loss can drop the last rows
        self.db.executescript(SCHEMA)
        if "error" not in {row[1] for row in self.db.execute("PRAGMA table_info(scores)")}:
            self.db.execute("ALTER TABLE scores ADD COLUMN error TEXT")  # a journal from before failures were kept
        canonical = json.dumps(config, sort_keys=True)
        stored = self.db.execute("SELECT value FROM meta WHERE key='config'").fetchone()
        if stored is None:
            self.db.execute("INSERT INTO meta VALUES ('config', ?)", (canonical,))
        elif stored[0] != canonical:
            old = json.loads(stored[0])
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ModelGlueError(f"{self.path}: cannot resume, the search settings differ ({', '.join(diff)}); "
                                 "use a new --out")
        self._cache: dict[tuple[str, str], JournalRow] = {(r.key, r.split): r for r in self.rows()}

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: str, split: str) -> JournalRow | None:
        return self._cache.get((key, split))

    def put(self, key: str, split: str, recipe: dict, params: dict, scores: dict[str, float], seconds: float,
            origin: str, worker: str = "local", error: str | None = None) -> JournalRow:
        if (key, split) in self._cache:  # a programming error upstream: never score twice
            raise ModelGlueError(f"candidate {key} ({split}) is already in the journal")
        cur = self.db.execute(
            "INSERT INTO scores (key, split, recipe, params, scores, seconds, origin, worker, created, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, split, json.dumps(recipe, sort_keys=True), json.dumps(params), json.dumps(scores), seconds,
             origin, worker, time.time(), error))
        row = JournalRow(int(cur.lastrowid), key, split, recipe, params, dict(scores), seconds, origin, worker, error)
        self._cache[(key, split)] = row
        return row

    def rows(self) -> list[JournalRow]:
        rows = self.db.execute("SELECT seq, key, split, recipe, params, scores, seconds, origin, worker, error "
                               "FROM scores ORDER BY seq")
        return [JournalRow(seq, key, split, json.loads(recipe), json.loads(params), json.loads(scores), seconds,
                           origin, worker, error)
                for seq, key, split, recipe, params, scores, seconds, origin, worker, error in rows]

    def close(self) -> None:
        self.db.close()
