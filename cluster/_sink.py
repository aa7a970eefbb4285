"""The write path of the pipeline: a Ray Data ``Datasink`` that stages a run's rows, and hands the staged parts to
the commit.

``StagingSink.write`` runs in Ray tasks and stages its blocks with :class:`RunStager` (``_stager``): uncommitted
Lance fragments and a part per slice, a small report back (rows, rejected rows by reason, rejects' fragments),
never vectors. ``on_write_complete`` runs on the driver: it reads the run's parts (an earlier attempt's too, for a
resumed run) for the one commit the job layer makes.
"""

from __future__ import annotations

from typing import Any

from ray.data import Datasink

from ._stager import RunStager, StagedWrite

__all__ = ["StagedWrite", "StagingSink"]


class StagingSink(RunStager, Datasink[list[StagedWrite]]):
    """A :class:`RunStager` as Ray Data's sink: its write tasks stage, the driver's completion reads the parts."""

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_part

    def get_name(self) -> str:
        return "StageFragments"

    def on_write_complete(self, write_result: Any) -> None:
        self.finish(w for task in write_result.write_returns for w in task)
