"""Is a process that wrote a record still the same live process? (The table lock, the scheduler's fires.)"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_alive", "process_start_ticks"]


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def process_alive(pid: int, start: int | None = None) -> bool:
    """True while process ``pid`` runs (not a zombie) and, when ``start`` is given, is the one that started
    then (a reused pid is another process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):  # a zombie is a process that has ended
        return False
    return start is None or int(fields[19]) == start
