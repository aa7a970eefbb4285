"""The schedules and their fires in one SQLite file (``STATE_DIR/schedule.db``).

Its schema changes as numbered migrations, applied in order; the number of the last one applied is the
database's ``PRAGMA user_version`` (0 in a new file). A database written by a newer embedjob (a higher
number than this code knows) is refused, never downgraded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ._records import ACTIVE_STATES, Fire, FireKind, FireState, Schedule, ScheduleError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Store"]

# (number, SQL), in order; never edit one that has shipped: add the next number instead
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT,
    address TEXT,
    created_at REAL NOT NULL,
    last_slot REAL
);
CREATE TABLE IF NOT EXISTS fires (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule TEXT NOT NULL,
    slot REAL NOT NULL,
    fired_at REAL NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    finished_at REAL,
    pid INTEGER,
    pid_start INTEGER,
    submission_id TEXT,
    exit_code INTEGER,
    ray_status TEXT,
    log_path TEXT,
    message TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS fires_by_schedule ON fires (schedule, id);
""",
    ),
    (
        2,
        """
-- a local run's counts, one line (what `embedjob run` committed), for `schedule list`
ALTER TABLE fires ADD COLUMN counts TEXT NOT NULL DEFAULT '';
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_ACTIVE = f"state IN ({', '.join('?' * len(ACTIVE_STATES))})"


class Store:
    """The SQLite file: schedules and fires as records in, records out. Each call opens its own connection
    (autocommit; a claim is one explicit transaction), so schedulers in several processes can share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            _migrate(db, path)

    # ------------------------------------------------------------------ schedules

    def add(self, schedule: Schedule) -> None:
        """Insert a new schedule (``last_slot`` is not stored: a new schedule has none)."""
        with self._db() as db:
            try:
                db.execute(
                    "INSERT INTO schedules (name, job, cron, timezone, address, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        schedule.name,
                        schedule.job,
                        schedule.cron,
                        schedule.timezone,
                        schedule.address,
                        schedule.created_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise ScheduleError(f"a schedule named {schedule.name!r} exists; remove it first") from None

    def remove(self, name: str) -> None:
        """Delete a schedule and its fires."""
        with self._db() as db:
            db.execute("DELETE FROM fires WHERE schedule = ?", (name,))
            db.execute("DELETE FROM schedules WHERE name = ?", (name,))

    def schedule(self, name: str) -> Schedule | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
        return None if row is None else _schedule(row)

    def schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        with self._db() as db:
            return [_schedule(r) for r in db.execute("SELECT * FROM schedules ORDER BY name")]

    # ------------------------------------------------------------------ fires

    def fire(self, fire_id: int) -> Fire:
        with self._db() as db:
            row = db.execute("SELECT * FROM fires WHERE id = ?", (fire_id,)).fetchone()
        if row is None:
            raise ScheduleError(f"no fire #{fire_id}")
        return _fire(row)

    def fires(self, name: str | None = None, *, limit: int = 50) -> list[Fire]:
        """Recorded fires (of one schedule, or all), newest first."""
        with self._db() as db:
            if name is None:
                rows = db.execute("SELECT * FROM fires ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = db.execute("SELECT * FROM fires WHERE schedule = ? ORDER BY id DESC LIMIT ?", (name, limit))
            return [_fire(r) for r in rows]

    def active_fires(self) -> list[Fire]:
        """Every fire not ended yet (starting or running)."""
        with self._db() as db:
            return [_fire(r) for r in db.execute(f"SELECT * FROM fires WHERE {_ACTIVE}", ACTIVE_STATES)]

    def update(self, fire_id: int, **values: object) -> Fire:
        """Set some of a fire's columns; returns its record as stored now."""
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE fires SET {cols} WHERE id = ?", (*values.values(), fire_id))
        return self.fire(fire_id)

    def claim(
        self,
        schedule: Schedule,
        slot: float,
        now: float,
        *,
        note: str,
        decide: Callable[[Fire | None], tuple[FireState, str]],
    ) -> int | None:
        """Record the fire for ``slot`` (or its skip) and move the schedule past it, in one transaction.

        ``decide`` gets the schedule's fire still going (None if none) and returns the new fire's state
        (``starting`` or ``skipped``) and message. Returns the new fire's id; None: another scheduler moved the
        schedule first.
        """
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT last_slot FROM schedules WHERE name = ?", (schedule.name,)).fetchone()
            if row is None or row[0] != schedule.last_slot:
                db.execute("ROLLBACK")
                return None
            busy = db.execute(
                f"SELECT * FROM fires WHERE schedule = ? AND {_ACTIVE} ORDER BY id DESC",
                (schedule.name, *ACTIVE_STATES),
            ).fetchone()
            state, message = decide(None if busy is None else _fire(busy))
            cur = db.execute(
                "INSERT INTO fires (schedule, slot, fired_at, state, kind, message, note, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    schedule.name,
                    slot,
                    now,
                    state,
                    schedule.kind,
                    message,
                    note,
                    now if state == FireState.SKIPPED else None,
                ),
            )
            db.execute("UPDATE schedules SET last_slot = ? WHERE name = ?", (slot, schedule.name))
            db.execute("COMMIT")
            return int(cur.lastrowid or 0)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; explicit BEGIN
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations above the database's number, in order, in one transaction (a second process
    opening the file meanwhile waits for it, then finds nothing left to do)."""
    version = _version(db, path)
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _version(db, path)  # another process may have migrated it while this one waited
        for number, sql in MIGRATIONS:
            if number > version:
                for statement in _statements(sql):  # (executescript would commit the transaction first)
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _version(db: sqlite3.Connection, path: Path) -> int:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ScheduleError(f"{path} was written by a newer embedjob (schema {version})")
    return version


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""
    if statement.strip():
        yield statement.strip()


def _schedule(row: sqlite3.Row) -> Schedule:
    return Schedule(
        name=row["name"],
        job=row["job"],
        cron=row["cron"],
        timezone=row["timezone"],
        address=row["address"],
        created_at=row["created_at"],
        last_slot=row["last_slot"],
    )


def _fire(row: sqlite3.Row) -> Fire:
    values = {k: row[k] for k in row.keys()}
    return Fire(**{**values, "state": FireState(values["state"]), "kind": FireKind(values["kind"])})
