"""Faults made with real processes: a background thread that SIGKILLs a Ray worker while a run uses it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Kill:
    """What the killer did: the pids it killed, in order (none: the process never showed up, or the run was
    over), and the command line of the first."""

    pids: list[int] = field(default_factory=list)
    command: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int | None:
        return self.pids[0] if self.pids else None


def _processes(match: str) -> Iterator[tuple[int, str]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            command = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if match in command:
            yield int(entry), command


@contextmanager
def kill_once(
    match: str, *, when: Callable[[], bool] = lambda: True, times: int = 1, timeout_s: float = 300.0
) -> Iterator[Kill]:
    """While the block runs, SIGKILL the first process whose command line holds ``match`` (a Ray actor's process
    title names its class) once ``when()`` is true; ``times`` > 1: each one that shows up next, until that many
    were killed. The thread is stopped when the block ends."""
    kill = Kill()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not kill.stop.is_set() and time.monotonic() < deadline and len(kill.pids) < times:
            found = next((p for p in _processes(match) if p[0] not in kill.pids), None)
            if found is not None and when():
                try:
                    os.kill(found[0], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                kill.pids.append(found[0])
                kill.command = kill.command or found[1]
            time.sleep(0.05)

    thread = threading.Thread(target=watch, name=f"kill-once-{match}", daemon=True)
    thread.start()
    try:
        yield kill
    finally:
        kill.stop.set()
        thread.join(timeout=10)
