"""One run at a time per table: a lock file with an owner and a lease, taken and renewed atomically.

``<table stem>_staging/LOCK.json`` holds the owning run's id, host, pid and the
time its lease ends. The owner renews the lease from a heartbeat thread. A lock
is free when its lease ran out, unless its owner is a live process on this host
(a stalled heartbeat does not cost a live run its lock), or at once when its
owner process on this host is gone.

Every change is atomic, so two runs can never both hold a table:

- **Locally** the file appears whole or not at all: the record is written to a
  temporary file and hard-linked into place, which fails when a lock exists.
  Taking over a stale lock, renewing and releasing run under an ``flock`` on
  ``LOCK.guard`` and only touch the exact record read (no run can replace a
  lock between another's read and write).
- **On S3** (and S3-compatible stores): conditional writes. A lock is created
  with ``If-None-Match: *``, renewed and taken over with ``If-Match`` on the
  ETag read, and released with a conditional delete. A store that ignores
  conditional writes is detected once per process and gets a loud warning
  (the lock then falls back to write-and-read-back, which two hosts can race).

The heartbeat retries transient store errors with backoff; the lock counts as
lost the moment another run's record is seen, or when the lease ran out
without a renewal. ``check()`` renews synchronously: a run commits only right
after proving it still holds the lock, with a whole lease ahead of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from ._messages import error_line
from ._process import process_alive, process_start_ticks
from ._staging import staging_dir

__all__ = ["LockLost", "LockStoreWarning", "TableLock", "TableLocked"]

logger = logging.getLogger("storage")

DEFAULT_LEASE_S = 60.0
LOCK_NAME = "LOCK.json"


class TableLocked(RuntimeError):
    """Another run holds the table's lock (or took it over from this one)."""

    def __init__(self, table_uri: str, holder: Mapping[str, Any]) -> None:
        self.table_uri, self.holder = table_uri, dict(holder)
        until = datetime.fromtimestamp(float(holder.get("lease_until", 0)), UTC)
        super().__init__(
            f"table {table_uri!r} is being written by run {holder.get('run_id')} "
            f"(host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('acquired_at')}); "
            f"its lease runs to {until:%Y-%m-%d %H:%M:%S} UTC and is renewed while it runs. "
            f"Wait for it (--lock-timeout SECONDS), or, if its process died, run again after the lease ends"
        )

    def __reduce__(self):
        return (type(self), (self.table_uri, self.holder))


class LockLost(TableLocked):
    """This run no longer holds the table's lock (taken over, or not renewable): it must not commit."""

    def __init__(self, table_uri: str, run_id: str, why: str, holder: Mapping[str, Any] | None = None) -> None:
        self.table_uri, self.run_id, self.why = table_uri, run_id, why
        self.holder = dict(holder or {})
        RuntimeError.__init__(
            self,
            f"run {run_id} no longer holds the lock on table {table_uri!r} ({why}); nothing was committed. "
            f"Run the job again: the rows this run staged are kept unless another run committed meanwhile",
        )

    def __reduce__(self):
        return (type(self), (self.table_uri, self.run_id, self.why, self.holder))


class LockStoreWarning(UserWarning):
    """The object store ignores conditional writes: the table lock cannot be made atomic there."""


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
        self.uri = f"{staging_dir(table_uri)}/{LOCK_NAME}"
        self.token = uuid.uuid4().hex
        #: set by the heartbeat when another run's record is seen, or the lease ran out unrenewed
        self.lost = False
        self._store: _LockStore = _S3Lock(self.uri, self.storage_options) if _is_s3(self.uri) else _LocalLock(self.uri)
        self._tag: Any = None  # what conditional writes compare with: our record's bytes (local) or ETag (S3)
        self._acquired_at: str | None = None
        self._lease_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- public
    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0) -> None:
        """Take the lock, waiting up to ``wait_s`` for a live holder; raise TableLocked after that."""
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            holder = self._try_acquire()
            if holder is None:
                self.lost = False
                self._stop.clear()
                self._thread = threading.Thread(target=self._heartbeat, name="embedjob-lock", daemon=True)
                self._thread.start()
                return
            if time.monotonic() >= deadline:
                raise TableLocked(self.table_uri, holder)
            time.sleep(poll_s)

    def check(self) -> None:
        """Renew the lease now and raise TableLocked unless the lock is still this run's.

        Called right before a commit: the renewal is conditional on the record this run wrote, so
        success proves no other run took the table over, and leaves a whole lease for the commit.
        """
        try:
            renewed = self._renew()
        except Exception as exc:
            raise LockLost(
                self.table_uri, self.run_id, f"its lease could not be renewed before the commit: {error_line(exc)}"
            ) from None
        if not renewed:
            self.lost = True
            holder = self.holder()
            why = (
                f"run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}) took it over"
                if holder
                else "the lock file is gone"
            )
            raise LockLost(self.table_uri, self.run_id, why, holder)

    def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours. Never raises (logs what went wrong)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._tag is None:
            return
        try:
            self._store.delete(self._tag)
        except Exception as exc:  # the outcome of the run must not be hidden by its clean-up
            logger.warning(
                "could not remove the lock %s of run %s (%s); it frees itself when its lease ends",
                self.uri,
                self.run_id,
                error_line(exc),
            )
        self._tag = None

    def holder(self) -> dict[str, Any] | None:
        record, _ = self._store.read()
        return record

    def live_holder(self) -> dict[str, Any] | None:
        """The holder, unless its lease ran out (and its owner is not a live process here) or its owner is gone."""
        holder = self.holder()
        return None if holder is None or _is_stale(holder) else holder

    def __enter__(self) -> TableLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ----------------------------------------------------------------- inside
    def _record(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "run_id": self.run_id,
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_start": process_start_ticks(os.getpid()),
                "acquired_at": self._acquired_at or datetime.now(UTC).isoformat(timespec="seconds"),
                "lease_until": now + self.lease_s,
            }
        ).encode()

    def _try_acquire(self) -> dict[str, Any] | None:
        """None when acquired, else the live holder."""
        with self._store.guard():
            holder, tag = self._store.read()
            if holder is not None and not _is_stale(holder):
                return holder
            self._acquired_at = None
            data = self._record()
            if holder is None:
                new_tag = self._store.create(data)
            else:
                new_tag = self._store.replace(data, tag)  # only the stale record read: a fresher one wins
            if new_tag is None:
                return self._store.read()[0] or {"run_id": "(another run, at this moment)"}
        if holder is not None:
            logger.warning(
                "took over the lock on %s from run %s (host %s, pid %s): %s",
                self.table_uri,
                holder.get("run_id"),
                holder.get("host"),
                holder.get("pid"),
                "its lease ran out" if float(holder.get("lease_until", 0)) < time.time() else "its process is gone",
            )
        self._tag = new_tag
        self._acquired_at = json.loads(data)["acquired_at"]
        self._lease_until = json.loads(data)["lease_until"]
        return None

    def _renew(self) -> bool:
        """Rewrite our record with a new lease, on condition it is still ours; False when it is not."""
        if self._tag is None:
            return False
        data = self._record()
        with self._store.guard():
            new_tag = self._store.replace(data, self._tag)
        if new_tag is None:
            return False
        self._tag = new_tag
        self._lease_until = json.loads(data)["lease_until"]
        if self.lost:
            logger.warning("renewed the lock on %s again: no other run had taken it", self.table_uri)
            self.lost = False
        return True

    def _heartbeat(self) -> None:
        interval = self.lease_s / 3
        wait = interval
        failures = 0
        while not self._stop.wait(wait):
            try:
                renewed = self._renew()
            except Exception as exc:  # the store is unreachable for a moment: retry within the lease
                failures += 1
                left = self._lease_until - time.time()
                if left <= 0 and not self.lost:
                    self.lost = True
                    logger.error(
                        "the lease on %s ran out at %s while the store could not be reached (%d failed renewals, "
                        "last: %s); another run may take the table, and this run will not commit unless it can "
                        "renew first",
                        self.table_uri,
                        datetime.fromtimestamp(self._lease_until, UTC).isoformat(timespec="seconds"),
                        failures,
                        error_line(exc),
                    )
                elif left > 0:
                    logger.warning(
                        "could not renew the lock on %s (attempt %d: %s); retrying, %.0f s of lease left",
                        self.table_uri,
                        failures,
                        error_line(exc),
                        left,
                    )
                wait = min(interval, 0.5 * 2 ** min(failures - 1, 6))
                if left > 1:
                    wait = min(wait, left / 2)  # another try before the lease ends
                continue
            if not renewed:
                self.lost = True
                holder = self.holder() or {}
                logger.error(
                    "lost the lock on %s to run %s (host %s, pid %s); this run will not commit",
                    self.table_uri,
                    holder.get("run_id", "(none: the lock file is gone)"),
                    holder.get("host"),
                    holder.get("pid"),
                )
                return
            failures, wait = 0, interval


def _is_stale(holder: Mapping[str, Any]) -> bool:
    """Free to take: its owner on this host is gone, or its lease ran out and its owner is not a live
    process on this host (a live run here keeps its lock even when its heartbeat stalled)."""
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int):
        start = holder.get("pid_start")
        return not process_alive(pid, start if isinstance(start, int) else None)
    return float(holder.get("lease_until", 0)) < time.time()


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _parse(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):  # not a lock embedjob wrote whole: nobody holds it
        return {"run_id": None, "lease_until": 0, "corrupt": True}
    return record


class _LockStore:
    """Where the lock record lives; every write is conditional. ``tag`` identifies the record read."""

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        raise NotImplementedError

    def create(self, data: bytes) -> Any:
        """Write ``data`` only if no lock exists; its tag, or None when one does."""
        raise NotImplementedError

    def replace(self, data: bytes, tag: Any) -> Any:
        """Write ``data`` only if the lock is still the record ``tag`` names; its new tag, or None."""
        raise NotImplementedError

    def delete(self, tag: Any) -> bool:
        raise NotImplementedError


class _LocalLock(_LockStore):
    """A lock file: created by hard-linking a complete temporary file, changed under an flock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = os.path.dirname(path) or "."

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(os.path.join(self.folder, "LOCK.guard"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # (closing releases the flock)

    def _bytes(self) -> bytes | None:
        try:
            with open(self.path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        data = self._bytes()
        return (None, None) if data is None else (_parse(data), data)

    def create(self, data: bytes) -> Any:
        os.makedirs(self.folder, exist_ok=True)
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)  # fails if a lock exists: never replaces one
            except FileExistsError:
                return None
            return data
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def replace(self, data: bytes, tag: Any) -> Any:
        # under the guard: the compare and the swap are one step for every embedjob process on this file
        if self._bytes() != tag:
            return None
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        return data

    def delete(self, tag: Any) -> bool:
        with self.guard():
            if self._bytes() != tag:
                return False
            os.remove(self.path)
            return True


#: (endpoint, bucket) -> whether the store honours If-None-Match (probed once per process)
_CONDITIONAL_SUPPORT: dict[tuple[str, str], bool] = {}
_PROBE_LOCK = threading.Lock()


class _S3Lock(_LockStore):
    """A lock object on S3, changed only by conditional requests."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None) -> None:
        from ._s3 import s3_client, split_s3_uri

        self.uri = uri
        self.options = dict(storage_options or {})
        self.bucket, self.key = split_s3_uri(uri)
        self.client = s3_client(self.options)

    def _conditional(self) -> bool:
        """Whether the store honours conditional writes; a store that does not is warned about, loudly."""
        where = (str(self.options.get("aws_endpoint") or "aws"), self.bucket)
        with _PROBE_LOCK:
            if where not in _CONDITIONAL_SUPPORT:
                _CONDITIONAL_SUPPORT[where] = self._probe()
                if not _CONDITIONAL_SUPPORT[where]:
                    import warnings

                    message = (
                        f"the object store at {where[0]} (bucket {where[1]!r}) ignores conditional writes "
                        f"(If-None-Match): the table lock falls back to write-and-read-back, and two runs "
                        f"starting at the same moment on two hosts could both take a table. Keep one writer "
                        f"per table (one schedule), or use a store with conditional writes (AWS S3, MinIO, "
                        f"Ceph RGW >= 18)"
                    )
                    logger.warning(message)
                    warnings.warn(message, LockStoreWarning, stacklevel=4)
        return _CONDITIONAL_SUPPORT[where]

    def _probe(self) -> bool:
        key = f"{self.key.rpartition('/')[0]}/.conditional-probe-{uuid.uuid4().hex}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
            except Exception as exc:
                return _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
            return False
        except Exception as exc:
            if _error_code(exc) in ("NotImplemented", "501"):
                return False
            raise
        finally:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def read(self) -> tuple[dict[str, Any] | None, Any]:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None, None
            raise
        return _parse(got["Body"].read()), got["ETag"]

    def create(self, data: bytes) -> Any:
        if not self._conditional():
            return self._write_and_read_back(data)
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")["ETag"]
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            raise

    def replace(self, data: bytes, tag: Any) -> Any:
        if not self._conditional():
            _, now = self.read()
            return self._write_and_read_back(data) if now == tag else None
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfMatch=tag)["ETag"]
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return None
            raise

    def delete(self, tag: Any) -> bool:
        _, now = self.read()
        if now != tag:
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=tag)
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                return False
            raise
        return True

    def _write_and_read_back(self, data: bytes) -> Any:
        """Without conditional writes: write, wait, and count it ours only if it is still what we wrote."""
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)
        time.sleep(0.5)
        record, tag = self.read()
        return tag if record is not None and record.get("token") == json.loads(data)["token"] else None


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
