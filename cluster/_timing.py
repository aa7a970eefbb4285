"""Where a command's wall time goes, phase by phase: DEBUG lines of the ``embedjob.timing`` logger.

The driver logs each phase it times (:func:`timed`, :func:`log_timing`): the job checks, the lock and staging,
Ray's start and stop, planning the pool, the pipeline, the commit. What only the encoder actors see (how
long their start and model load took, how long they were busy) they note on the command's progress counter
(:func:`note_timing`, held by ``ProgressCounter``), and the driver logs it when the pipeline is done
(:func:`log_actor_timings`). Each record carries ``phase`` and ``seconds`` attributes, so a handler can collect
them (``bench/pipeline.py`` prints the breakdown of a real run):

    embedjob.timing: Ray start: 4.61 s
    embedjob.timing: actors ready (process start, imports, model load): 9.80 s
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["TIMING_LOGGER", "log_actor_timings", "log_timing", "note_timing", "timed"]

TIMING_LOGGER = "embedjob.timing"
_logger = logging.getLogger(TIMING_LOGGER)

#: what the encoder actors note (``note_timing``): the sum of their seconds, and for ``*_at`` the earliest time
ACTOR_INIT_AT = "actor init at"  # wall clock: an actor's constructor began (its process is up, imports done)
ACTOR_READY_AT = "actor ready at"  # wall clock: an actor's constructor returned (its model is loaded)
ACTOR_LOAD = "actor model load"  # seconds in the constructor (model, tokenizer, calibration)
ACTOR_BUSY = "actor busy"  # seconds in calls (prepare's output to vectors), summed over the actors


def log_timing(phase: str, seconds: float) -> None:
    """One phase's seconds, as a DEBUG line with ``phase`` and ``seconds`` attributes."""
    _logger.debug("%s: %.2f s", phase, seconds, extra={"phase": phase, "seconds": seconds})


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    """Log the body's wall time as ``phase`` (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        log_timing(phase, time.perf_counter() - t0)


def note_timing(counter: Any, phase: str, value: float) -> None:
    """Note ``value`` (seconds, or a wall-clock time for an ``... at`` phase) on the command's progress counter
    (in a Ray worker: the counter actor, without waiting; a run in this process: the counter object); never fails
    the work."""
    if counter is None:
        return
    try:
        note = counter.note
        getattr(note, "remote", note)(phase, value)
    except Exception as exc:  # timings are never a reason for the work to fail
        logging.getLogger("cluster").debug("timing note lost: %s", exc)


def log_in_process_timings(notes: Mapping[str, float]) -> None:
    """Log what the encoder of a run in this process noted: its model load and its busy time."""
    if ACTOR_LOAD in notes:
        log_timing("model load (in this process)", notes[ACTOR_LOAD])
    if ACTOR_BUSY in notes:
        log_timing("encode (in this process)", notes[ACTOR_BUSY])


def log_actor_timings(notes: Mapping[str, float], *, started_at: float, actors: int) -> None:
    """Log what the encoder actors noted, against the wall-clock time the pipeline started (``started_at``):
    how long until the first actor's constructor began (worker process start, imports, Ray Data's start) and
    returned (its model loaded), its load time, and the actors' busy time (per actor, over ``actors``)."""
    if ACTOR_INIT_AT in notes:
        log_timing("actor start (worker process, imports)", notes[ACTOR_INIT_AT] - started_at)
    if ACTOR_LOAD in notes:
        log_timing("actor model load (per actor)", notes[ACTOR_LOAD] / max(1, actors))
    if ACTOR_READY_AT in notes:
        log_timing("first actor ready", notes[ACTOR_READY_AT] - started_at)
    if ACTOR_BUSY in notes:
        log_timing("actor busy (encode, per actor)", notes[ACTOR_BUSY] / max(1, actors))
