"""Live progress of a long command (run, backfill, calibrate, evaluate), and a run's counters as Ray metrics.

One model for every command: the rows it has read, the rows done of a total, the rows embedded, the tokens
and the rows rejected, and the stage it is in. Ray workers add what they did to a :class:`ProgressCounter`
actor (:func:`report`); work in the driver's own process (evaluate) adds to the display directly. The driver's
:class:`ProgressDisplay` shows it in one of two ways:

- on a terminal, one rich display: what runs, its stage, a bar of rows done of the total, tokens, rows/s and
  the time left;
- elsewhere (a log file, a CI job, ``--no-progress``), one log line every ``EMBEDJOB_PROGRESS_EVERY_S``
  seconds (default 10), and a last one when the command ends, with the same figures.

The rows a run embeds, their tokens and the rows it rejects are also Ray metrics (``ray.util.metrics``),
recorded by the encoder actors where the work happens (:func:`record_embedded`, :func:`record_rejected`), so
the Ray dashboard and Prometheus show them per run and per node beside the cluster's own metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ._handles import ask, in_ray

__all__ = [
    "COUNTS",
    "METRIC_ROWS_EMBEDDED",
    "METRIC_ROWS_REJECTED",
    "METRIC_TOKENS",
    "ProgressCounter",
    "ProgressCounts",
    "ProgressDisplay",
    "Stage",
    "display_or_own",
    "progress_every_s",
    "record_embedded",
    "record_rejected",
    "report",
    "start_counter",
    "verbose_output",
]

logger = logging.getLogger("embedjob.progress")

#: how often a progress line is logged where no live display shows; ``EMBEDJOB_PROGRESS_EVERY_S`` sets another
PROGRESS_EVERY_S = 10.0
#: how often the live display polls the workers' counter
LIVE_POLL_S = 0.5
#: how long a worker waits for the counter to take its report (a counter that is gone is ignored)
REPORT_TIMEOUT_S = 10.0


class Stage:
    """The stages a display names (evaluate names its own)."""

    STARTING = "starting"
    READING = "reading"  # shown until a phase's first rows are read (actors loading the model)
    ENCODING = "encoding"
    STAGING = "staging"  # shown once an encoding phase has done all its rows
    CALIBRATING = "calibrating"
    SOLVING = "solving"
    COMMITTING = "committing"
    INDEXES = "indexes"
    FINISHED = "finished"
    FAILED = "failed"


METRIC_ROWS_EMBEDDED = "embedjob_rows_embedded"
METRIC_TOKENS = "embedjob_tokens"
METRIC_ROWS_REJECTED = "embedjob_rows_rejected"


def verbose_output() -> bool:
    """``embedjob -v`` (``EMBEDJOB_VERBOSE=1``): Ray's and Lance's own output shows: Ray Data's progress bars
    and INFO logs, Lance's warnings, the notices Ray's C++ core prints; read when a command starts."""
    return os.environ.get("EMBEDJOB_VERBOSE", "") not in ("", "0")


def progress_every_s() -> float:
    """Seconds between progress lines: ``EMBEDJOB_PROGRESS_EVERY_S``, default 10."""
    raw = os.environ.get("EMBEDJOB_PROGRESS_EVERY_S", "").strip()
    if not raw:
        return PROGRESS_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every > 0:  # NaN too
        raise ValueError(f"EMBEDJOB_PROGRESS_EVERY_S={raw!r}: expected a number of seconds > 0, e.g. 10")
    return every


# ------------------------------------------------------------------ the counts


@dataclass(frozen=True)
class ProgressCounts:
    """What a command has done so far. ``done`` rows count against the total (a run: rows through the encoder
    or found unchanged; a calibration: sampled rows encoded); the others are shown beside it when not zero."""

    read: int = 0
    done: int = 0
    embedded: int = 0
    tokens: int = 0
    rejected: int = 0

    def __add__(self, other: ProgressCounts) -> ProgressCounts:
        return ProgressCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> ProgressCounts:
        unknown = set(counts) - set(COUNTS)
        if unknown:
            raise ValueError(f"unknown progress count(s) {sorted(unknown)}; allowed: {', '.join(COUNTS)}")
        return cls(**{k: int(v) for k, v in counts.items()})


COUNTS = tuple(f.name for f in fields(ProgressCounts))


class ProgressCounter:
    """The counts of one command's work, added to by its Ray workers (run as an actor: :func:`start_counter`).

    A retried task reports again: the counts are work done, the command's summary is the exact result."""

    def __init__(self) -> None:
        self._counts = ProgressCounts()
        self._notes: dict[str, float] = {}

    def add(self, counts: Mapping[str, int]) -> None:
        self._counts = self._counts + ProgressCounts.of(counts)

    def counts(self) -> ProgressCounts:
        return self._counts

    def note(self, phase: str, value: float) -> None:
        """A timing from a worker (``cluster._timing.note_timing``): seconds add up; an ``... at`` wall-clock
        time keeps the earliest."""
        if phase.endswith(" at"):
            self._notes[phase] = min(value, self._notes.get(phase, value))
        else:
            self._notes[phase] = self._notes.get(phase, 0.0) + value

    def notes(self) -> dict[str, float]:
        return dict(self._notes)


def start_counter() -> Any:
    """A :class:`ProgressCounter` actor for one command (no CPU; it goes when its last handle does)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressCounter).options(max_restarts=0).remote()


def report(counter: Any, **counts: int) -> None:
    """In a Ray worker: add ``counts`` to the command's counter and wait until it has them (so the counts are
    complete when the work is); never fails the work (a counter that is gone or slow is ignored). In this process
    (a small night without Ray) ``counter`` is a plain :class:`ProgressCounter`."""
    if counter is None or not any(counts.values()):
        return
    try:
        ask(counter, "add", counts, timeout=REPORT_TIMEOUT_S)
    except Exception as exc:  # progress is never a reason for the work to fail
        logging.getLogger("cluster").debug("progress report lost: %s", exc)


# ------------------------------------------------------------------ Ray metrics

_metrics: dict[str, Any] = {}


def _metric(name: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    """The process's one ``ray.util.metrics.Counter`` called ``name``."""
    if name not in _metrics:
        from ray.util.metrics import Counter

        _metrics[name] = Counter(name, description=description, tag_keys=tag_keys)
    return _metrics[name]


def record_embedded(run_id: str, node: str, *, rows: int, tokens: int) -> None:
    """Ray metrics ``embedjob_rows_embedded`` and ``embedjob_tokens`` (tags ``run_id``, ``node``: the Ray node
    id that embedded them), where the rows were embedded."""
    if not in_ray():  # a small night embedded without Ray: no metrics to export
        return
    tags = {"run_id": run_id, "node": node or "unknown"}
    if rows > 0:
        _metric(METRIC_ROWS_EMBEDDED, "Rows embedded by embedjob runs.", ("run_id", "node")).inc(rows, tags=tags)
    if tokens > 0:
        _metric(METRIC_TOKENS, "Tokens embedded by embedjob runs.", ("run_id", "node")).inc(tokens, tags=tags)


def record_rejected(run_id: str, reasons: Mapping[str, int]) -> None:
    """Ray metric ``embedjob_rows_rejected`` (tags ``run_id``, ``reason``)."""
    if not in_ray():
        return
    metric = _metric(METRIC_ROWS_REJECTED, "Rows rejected by embedjob runs, by reason.", ("run_id", "reason"))
    for reason, n in reasons.items():
        if n > 0:
            metric.inc(n, tags={"run_id": run_id, "reason": reason})


# ------------------------------------------------------------------ the driver's display


@dataclass(frozen=True)
class _State:
    stage: str
    total: int | None
    counts: ProgressCounts
    seconds: float  # since the phase began (the command began, before its first phase)
    began: bool = True  # a phase began: there are rows to count

    @property
    def shown_stage(self) -> str:
        """``reading`` until a phase's first rows are read; ``staging`` once an encoding phase has done
        all its rows (its last blocks are being written)."""
        c = self.counts
        if self.stage in (Stage.ENCODING, Stage.CALIBRATING) and c.read == 0 and c.done == 0:
            return Stage.READING
        if self.stage == Stage.ENCODING and self.total is not None and c.done >= self.total:
            return Stage.STAGING
        return self.stage

    def figures(self) -> dict[str, str]:
        """The display's fields: stage, rows, detail, tokens, rate and time left (empty when not known)."""
        if not self.began:  # nothing to count yet (Ray starting, the table's lock, a plan)
            return dict.fromkeys(("rows", "detail", "tokens", "rate", "eta"), "") | {"stage": self.shown_stage}
        c = self.counts
        of = f" of {self.total:,}" if self.total is not None else ""
        # beside the rows done, what differs from them: rows read ahead, rows embedded, rejected
        detail = [
            f"{k} {getattr(c, k):,}" for k in ("read", "embedded", "rejected") if getattr(c, k) not in (0, c.done)
        ]
        rate = c.done / self.seconds if self.seconds > 0 else 0.0
        eta = ""
        if (
            self.total is not None
            and rate > 0
            and c.done < self.total
            and self.stage not in (Stage.FINISHED, Stage.FAILED)
        ):
            eta = f"ETA {_clock(max(0.0, (self.total - c.done) / rate))}"
        return {
            "stage": self.shown_stage,
            "rows": f"{c.done:,}{of} rows",
            "detail": ", ".join(detail),
            "tokens": f"{c.tokens:,} tokens" if c.tokens else "",
            "rate": f"{rate:,.1f} rows/s" if rate else "",
            "eta": eta,
        }

    def line(self, what: str) -> str:
        f = self.figures()
        if not self.began:
            return f"{what}: {f['stage']}, {_clock(self.seconds)} elapsed"
        rows = f"{f['rows']} done" + (f" ({f['detail']})" if f["detail"] else "")
        parts = [rows, f["tokens"], f["rate"], f["eta"] or f"{_clock(self.seconds)} elapsed"]
        return f"{what}: {f['stage']}: " + ", ".join(p for p in parts if p)


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressDisplay:
    """What one long command shows while it works (the module docstring says how).

    Use as a context manager. :meth:`begin` starts a phase (its stage, its total of rows, and the counter
    actor its workers report to, or none when :meth:`add` gives the counts); :meth:`end_phase` takes the
    counter's last counts; :meth:`stage` names what the command does next (committing, indexes) and keeps the
    counts. When the block ends, the display shows the last counts as ``finished`` (``failed`` on an
    exception): the live display stays on the terminal, and a last line is logged.

    >>> with ProgressDisplay("evaluate", console=Console(force_terminal=True)) as p:  # doctest: +SKIP
    ...     p.begin("encoding the sample", total=2000)
    ...     p.add(done=256, embedded=256, tokens=30_000)
    """

    def __init__(self, what: str, *, console: Any = None, live: bool | None = None, every_s: float | None = None):
        self.what = what
        self._console = console
        self._live_wanted = live
        self._every_s = progress_every_s() if every_s is None else every_s
        self._lock = threading.Lock()
        self._stage = Stage.STARTING
        self._total: int | None = None
        self._local = ProgressCounts()
        self._polled = ProgressCounts()
        self._counter: Any = None
        self._t_phase = time.perf_counter()
        self._began = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rich: Any = None
        self._task: Any = None
        self._swapped: list[tuple[logging.StreamHandler, Any]] = []

    @classmethod
    def for_command(cls, what: str, *, show: bool = True) -> ProgressDisplay:
        """The display of a command: live on a terminal when ``show`` (and Ray Data's own bars are not shown,
        ``embedjob -v``), else progress lines."""
        return cls(what, live=show and sys.stderr.isatty() and not verbose_output())

    # ---------------------------------------------------------------- what the command tells it

    def begin(self, stage: str, *, total: int | None = None, counter: Any = None) -> None:
        """A new phase: its counts start at zero, from ``counter`` (a :class:`ProgressCounter` actor) and
        :meth:`add`."""
        with self._lock:
            self._stage, self._total, self._counter = stage, total, counter
            self._local, self._polled = ProgressCounts(), ProgressCounts()
            self._t_phase = time.perf_counter()
            self._began = True
        if self._rich is not None:  # a new row: the last phase's total may not be this one's
            self._rich.remove_task(self._task)
            state = self.state()
            self._task = self._rich.add_task(self.what, total=state.total, **state.figures())
        self._refresh()

    def end_phase(self, *, total: int | None = None) -> None:
        """The counter's final counts (its workers are done), and no more polling of it; ``total``: the
        phase's real total, where it began with an estimate."""
        self._poll(timeout=30.0)
        with self._lock:
            self._counter = None
            if total is not None:
                self._total = total
        self._refresh()

    def stage(self, name: str) -> None:
        with self._lock:
            self._stage = name
        self._refresh()

    def add(self, **counts: int) -> None:
        with self._lock:
            self._local = self._local + ProgressCounts.of(counts)
        self._refresh()

    def state(self) -> _State:
        with self._lock:
            counts = self._local + self._polled
            return _State(self._stage, self._total, counts, time.perf_counter() - self._t_phase, self._began)

    @property
    def counts(self) -> ProgressCounts:
        return self.state().counts

    # ---------------------------------------------------------------- rendering

    @property
    def live(self) -> bool:
        console = self._get_console()
        return bool(self._live_wanted if self._live_wanted is not None else console.is_terminal)

    def _get_console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            self._start_rich()
        self._thread = threading.Thread(target=self._loop, name=f"progress: {self.what}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._poll(timeout=5.0)
        with self._lock:
            started = self._stage != Stage.STARTING or self._began
            self._stage = Stage.FINISHED if exc_type is None else Stage.FAILED
        if self._rich is not None:
            self._refresh()
            self._stop_rich(keep=started)
        elif started:  # (a command that failed before it started, a lock held elsewhere, says so itself)
            logger.info("%s", self.state().line(self.what))

    def _loop(self) -> None:
        every = LIVE_POLL_S if self._rich is not None else self._every_s
        while not self._stop.wait(every):
            self._poll(timeout=5.0)
            if self._rich is not None:
                self._refresh()
            else:
                logger.info("%s", self.state().line(self.what))

    def _poll(self, timeout: float) -> None:
        with self._lock:
            counter = self._counter
        if counter is None:
            return
        if not isinstance(counter, ProgressCounter) and not in_ray():
            return  # the command's Ray session ended (a failure): the last counts stand
        try:
            counts = ask(counter, "counts", timeout=timeout)
        except Exception:  # the counter is busy or gone: the last counts stand
            return
        with self._lock:
            if self._counter is counter:
                self._polled = counts

    def _start_rich(self) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        self._rich = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("[bold]{task.description}"),
            TextColumn("[cyan]{task.fields[stage]}"),
            BarColumn(),
            TextColumn("{task.fields[rows]}"),
            TextColumn("{task.fields[detail]}", style="dim"),
            TextColumn("{task.fields[tokens]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            console=self._get_console(),
            refresh_per_second=4,
        )
        state = self.state()
        self._task = self._rich.add_task(self.what, total=state.total, **state.figures())
        before = sys.stderr
        self._rich.start()
        self._route_logs(before, sys.stderr)

    def _route_logs(self, before: Any, proxy: Any) -> None:
        """Log lines written to stderr while the display is live go above it (through rich's stderr proxy),
        not through it."""
        if proxy is before:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is before:
                self._swapped.append((handler, handler.setStream(proxy)))

    def _stop_rich(self, *, keep: bool) -> None:
        self._rich.live.transient = not keep
        self._rich.stop()
        for handler, stream in self._swapped:
            handler.setStream(stream)
        self._swapped.clear()

    def _refresh(self) -> None:
        if self._rich is None or self._task is None:
            return
        state = self.state()
        done = state.counts.done if state.total is None else min(state.counts.done, state.total)
        self._rich.update(self._task, description=self.what, total=state.total, completed=done, **state.figures())
        self._rich.refresh()


def display_or_own(display: ProgressDisplay | None, what: str, *, show: bool) -> Any:
    """A context manager giving ``display`` as it is (its owner shows it), or a new display for ``what``
    that the block shows (a cluster function called on its own)."""
    if display is not None:
        return contextlib.nullcontext(display)
    return ProgressDisplay.for_command(what, show=show)
