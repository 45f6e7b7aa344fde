"""The durable store: spaces and their lifecycle, in SQLite (nothing to install).

Small, synchronous queries on a local file: each one takes microseconds, so the
control plane calls them inline. A multi-node deployment swaps this for a shared
database behind the same methods.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from townhall.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spaces (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  host_id TEXT NOT NULL,
  scheduled_at REAL,
  created_at REAL NOT NULL,
  started_at REAL,
  ended_at REAL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS room_journal (
  space_id TEXT PRIMARY KEY,
  record TEXT NOT NULL,
  updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SpaceRecord:
    id: str
    title: str
    description: str
    state: str
    host_id: str
    scheduled_at: float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    # Appended columns (added to older stores by ``_migrate``): SELECT * keeps this order.
    listed: bool = True  # shown on the public front page
    host_name: str = "Host"  # the name the host gave at creation


# Columns added after the first schema, with their definitions for ALTER TABLE.
_ADDED_COLUMNS = (
    ("listed", "INTEGER NOT NULL DEFAULT 1"),
    ("host_name", "TEXT NOT NULL DEFAULT 'Host'"),
)


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        have = {row[1] for row in self._db.execute("PRAGMA table_info(spaces)")}
        for name, definition in _ADDED_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE spaces ADD COLUMN {name} {definition}")

    def setting(self, key: str, default: str) -> str:
        """Read a setting, storing ``default`` the first time (the admin key, the secret)."""
        self._db.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (key, default))
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def create_space(
        self,
        title: str,
        description: str,
        scheduled_at: float | None,
        listed: bool = True,
        host_name: str = "Host",
    ) -> SpaceRecord:
        space_id = secrets.token_urlsafe(8).replace("-", "x").replace("_", "y")
        self._db.execute(
            "INSERT INTO spaces (id, title, description, state, host_id, scheduled_at,"
            " created_at, listed, host_name) VALUES (?, ?, ?, 'scheduled', ?, ?, ?, ?, ?)",
            (
                space_id,
                title,
                description,
                secrets.token_urlsafe(9),
                scheduled_at,
                time.time(),
                int(listed),
                host_name,
            ),
        )
        return self.space(space_id)

    def adopt_space(self, record: SpaceRecord) -> bool:
        """Keep a Space made on another node (its copy from the cluster) under its own id;
        False if this store has a Space with that id already."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO spaces (id, title, description, state, host_id,"
            " scheduled_at, created_at, started_at, ended_at, listed, host_name)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id, record.title, record.description, record.state, record.host_id,
                record.scheduled_at, record.created_at, record.started_at, record.ended_at,
                int(record.listed), record.host_name,
            ),
        )  # fmt: skip
        return cursor.rowcount == 1

    def space(self, space_id: str) -> SpaceRecord:
        row = self._db.execute("SELECT * FROM spaces WHERE id = ?", (space_id,)).fetchone()
        if row is None:
            raise NotFound(f"unknown space {space_id!r}")
        return _record(row)

    def set_state(self, space_id: str, state: str, at: float) -> None:
        column = {"live": "started_at", "ended": "ended_at"}[state]
        self._db.execute(
            f"UPDATE spaces SET state = ?, {column} = ? WHERE id = ?", (state, at, space_id)
        )

    def live_spaces(self) -> list[SpaceRecord]:
        """Spaces that are live: a control process that starts resumes every one of them."""
        rows = self._db.execute("SELECT * FROM spaces WHERE state = 'live' ORDER BY started_at")
        return [_record(r) for r in rows]

    def scheduled_spaces(self, limit: int) -> list[SpaceRecord]:
        """Spaces not started yet, soonest first ("starting soon", no time, last)."""
        rows = self._db.execute(
            "SELECT * FROM spaces WHERE state = 'scheduled'"
            " ORDER BY scheduled_at IS NULL, scheduled_at, created_at LIMIT ?",
            (limit,),
        )
        return [SpaceRecord(*r) for r in rows]

    def journal_room(self, space_id: str, record_json: str, at: float) -> None:
        """Keep the latest state of a Space's room (``room.record.record_to_json``).

        One row per Space, replaced in one statement: SQLite commits it durably (WAL)
        before this returns, so a process killed right after still finds it.
        """
        self._db.execute(
            "INSERT INTO room_journal (space_id, record, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (space_id) DO UPDATE SET record = excluded.record,"
            " updated_at = excluded.updated_at",
            (space_id, record_json, at),
        )

    def journaled_room(self, space_id: str) -> str | None:
        row = self._db.execute(
            "SELECT record FROM room_journal WHERE space_id = ?", (space_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def spaces(self, limit: int = 100) -> list[SpaceRecord]:
        rows = self._db.execute("SELECT * FROM spaces ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_record(r) for r in rows]

    def listed_spaces(self, state: str, limit: int) -> list[SpaceRecord]:
        """Listed Spaces in ``state``: live by start, scheduled by the planned start
        (unscheduled last), ended newest first."""
        order = {
            "live": "started_at DESC",
            "scheduled": "scheduled_at IS NULL, scheduled_at, created_at",
            "ended": "ended_at DESC",
        }[state]
        rows = self._db.execute(
            "SELECT * FROM spaces WHERE state = ? AND listed = 1"
            # A cancelled Space (ended, never started) has nothing to replay.
            " AND (state != 'ended' OR started_at IS NOT NULL)"
            f" ORDER BY {order} LIMIT ?",
            (state, limit),
        )
        return [_record(r) for r in rows]


def _record(row: tuple[object, ...]) -> SpaceRecord:
    record = SpaceRecord(*row)  # type: ignore[arg-type]
    return dataclasses.replace(record, listed=bool(record.listed))
