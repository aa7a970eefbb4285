"""A run's summary: its row of the runs table (``storage.RunRecord``) plus what only the driver sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage import RunRecord

__all__ = ["RunSummary"]


@dataclass
class RunSummary(RunRecord):
    """What ``run_job`` returns and ``embedjob run`` prints."""

    calibration: str | None = None  # the calibration's fingerprint (also in the table's provenance)
    calibration_origin: str = "none"
    seconds_calibration: float = 0.0  # fitting one first (calibration = "auto" with none to reuse)
    indexes: list[dict[str, Any]] = field(default_factory=list)  # the job's [index] section, after the commit
    #: Ray node id -> rows whose encoder actor ran there (summed over the committed parts; not in the runs table)
    rows_per_node: dict[str, int] = field(default_factory=dict)
    #: a chunked table: rows read, new, changed, unchanged and deleted are documents; rows embedded are chunks
    chunked: bool = False
    #: what went wrong after the commit (bookkeeping that could not be finished), and what to run about it
    warnings: list[str] = field(default_factory=list)
    #: the table's tags that name this run's version, set by the run (its run id; ``latest-good``)
    tags: list[str] = field(default_factory=list)
    #: the job's ``[gate]`` on the committed version (``jobs._gate.evaluate_gate``: metric, value, floor,
    #: passed, ...); None: the job has no gate. A run below the floor stays committed; its record's ``error`` says so
    gate: dict[str, Any] | None = None
    #: a migration step: ``to`` (what changes), ``done`` / ``total`` rows with the new vectors after it, and
    #: ``switched`` (the version whose commit made the new settings the table's) when it finished the migration
    migration: dict[str, Any] | None = None

    #: below this many embedded rows a run's time is mostly start-up, and a rate says nothing about throughput
    MIN_ROWS_FOR_RATE = 100

    @property
    def passed_checks(self) -> bool:
        """Whether the run may move the table's ``latest-good`` tag to its version: the one rule. It committed,
        its bookkeeping finished without a warning, none of its ``[index]`` section's indexes failed, and its
        ``[gate]`` (when the job has one) passed."""
        return (
            self.status == "committed"
            and self.table_version is not None
            and not self.warnings
            and not any(i.get("action") == "failed" for i in self.indexes)
            and (self.gate is None or self.gate.get("passed") is True)
        )

    @property
    def rates_meaningful(self) -> bool:
        return self.rows_embedded >= self.MIN_ROWS_FOR_RATE and self.seconds_pipeline > 0

    @property
    def rows_per_s(self) -> float:
        return self.rows_embedded / self.seconds_pipeline if self.seconds_pipeline else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds_pipeline if self.seconds_pipeline else 0.0
