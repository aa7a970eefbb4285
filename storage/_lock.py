"""One run at a time per table: a lock file with an owner and a lease.

``<table stem>_staging/LOCK.json`` holds the owning run's id, host, pid and
the time its lease ends. The owner renews the lease from a heartbeat thread;
a lock whose lease ran out, or whose owner process on this host is gone, is
taken over. Locally the lock is created with ``O_EXCL`` (atomic). On S3 there
is no create-if-absent through pyarrow: the lock is written, then read back
after a short pause, and only an unchanged read-back counts as acquired; two
runs starting within that pause on two hosts could both pass, and Lance's
commit check on the version each run read is then the last guard.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ._files import filesystem, read_bytes, write_bytes
from ._staging import staging_dir

__all__ = ["TableLock", "TableLocked"]

logger = logging.getLogger("storage")

DEFAULT_LEASE_S = 60.0


class TableLocked(RuntimeError):
    """Another run holds the table's lock."""

    def __init__(self, table_uri: str, holder: Mapping[str, Any]) -> None:
        self.table_uri, self.holder = table_uri, dict(holder)
        until = datetime.fromtimestamp(float(holder.get("lease_until", 0)), UTC)
        super().__init__(
            f"table {table_uri!r} is being written by run {holder.get('run_id')} "
            f"(host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('acquired_at')}); "
            f"its lease runs to {until:%Y-%m-%d %H:%M:%S} UTC and is renewed while it runs. "
            f"Wait for it (embedjob run --wait SECONDS), or, if its process died, run again after the lease ends"
        )

    def __reduce__(self):
        return (type(self), (self.table_uri, self.holder))


class TableLock:
    """``with TableLock(uri, run_id=...):`` holds the table for one run, renewing the lease meanwhile."""

    def __init__(
        self,
        table_uri: str,
        *,
        run_id: str,
        lease_s: float = DEFAULT_LEASE_S,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        self.table_uri = table_uri
        self.run_id = run_id
        self.lease_s = float(os.environ.get("EMBEDJOB_LOCK_LEASE_S", lease_s))
        self.storage_options = dict(storage_options or {}) or None
        self.uri = f"{staging_dir(table_uri)}/LOCK.json"
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- public
    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0) -> None:
        """Take the lock, waiting up to ``wait_s`` for a live holder; raise TableLocked after that."""
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            holder = self._try_acquire()
            if holder is None:
                self._thread = threading.Thread(target=self._heartbeat, name="embedjob-lock", daemon=True)
                self._thread.start()
                return
            if time.monotonic() >= deadline:
                raise TableLocked(self.table_uri, holder)
            time.sleep(poll_s)

    def check(self) -> None:
        """Raise when the lock was lost (taken over after a missed renewal): committing now could race."""
        holder = self.holder()
        if self.lost or holder is None or holder.get("token") != self.token:
            raise TableLocked(self.table_uri, holder or {"run_id": "(nobody: the lock file is gone)"})

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            fs, path = filesystem(self.uri, self.storage_options)
            fs.delete_file(path)

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(read_bytes(self.uri, self.storage_options))
        except FileNotFoundError:
            return None
        except ValueError:  # half-written by a process killed mid-write: nobody holds it
            return {"run_id": None, "lease_until": 0}

    def live_holder(self) -> dict[str, Any] | None:
        """The holder, unless its lease ran out or its process on this host is gone."""
        holder = self.holder()
        return None if holder is None or _is_stale(holder) else holder

    def __enter__(self) -> TableLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ----------------------------------------------------------------- inside
    def _record(self, acquired_at: str | None = None) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "acquired_at": acquired_at or datetime.now(UTC).isoformat(timespec="seconds"),
                "lease_until": time.time() + self.lease_s,
            }
        ).encode()

    def _try_acquire(self) -> dict[str, Any] | None:
        """None when acquired, else the live holder."""
        holder = self.holder()
        if holder is not None and not _is_stale(holder):
            return holder
        if self.uri.startswith("s3://"):
            write_bytes(self.uri, self._record(), self.storage_options)
            time.sleep(0.5)
            now = self.holder()
            return None if now is not None and now.get("token") == self.token else (now or {})
        path = self.uri
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if holder is not None:  # stale: move it aside; of two runs doing this at once only one rename succeeds
            try:
                os.rename(path, f"{path}.stale-{self.token}")
                os.remove(f"{path}.stale-{self.token}")
                logger.warning("took over the lock of run %s on %s (owner gone)", holder.get("run_id"), self.table_uri)
            except FileNotFoundError:
                pass
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return self.holder() or {}
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._record())
        return None

    def _heartbeat(self) -> None:
        acquired_at = (self.holder() or {}).get("acquired_at")
        while not self._stop.wait(self.lease_s / 3):
            holder = self.holder()
            if holder is None or holder.get("token") != self.token:
                self.lost = True
                logger.error("lost the lock on %s to run %s", self.table_uri, (holder or {}).get("run_id"))
                return
            try:
                write_bytes(self.uri, self._record(acquired_at), self.storage_options)
            except OSError as exc:  # the store is unreachable for a moment: try again next beat
                logger.warning("could not renew the lock on %s: %s", self.table_uri, exc)


def _is_stale(holder: Mapping[str, Any]) -> bool:
    if float(holder.get("lease_until", 0)) < time.time():
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True  # its owner on this host is gone
        except PermissionError:
            return False
    return False
