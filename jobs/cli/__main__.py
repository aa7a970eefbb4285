"""``python -m jobs.cli``: the ``embedjob`` command (how local schedule fires and Ray Jobs run a job)."""

from __future__ import annotations

from . import main

main()
