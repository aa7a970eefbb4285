"""A job's ``[index]`` section: rebuild its vector indexes after a run, under the run's lock."""

from __future__ import annotations

import logging
from typing import Any

from storage import VectorIndexError, build_index, open_table, vector_column

from ._checks import ResolvedJob

__all__ = ["refresh_indexes"]

logger = logging.getLogger("jobs")


def refresh_indexes(resolved: ResolvedJob, *, changed: bool) -> list[dict[str, Any]]:
    """Rebuild the section's indexes when the run changed the table, or build any that are missing.

    The caller holds the table's lock. A table still too small for the index
    type is skipped with the reason (a first small run is not an error);
    other failures are reported, not raised: the run's commit stands.
    """
    spec = resolved.spec.index
    grans = resolved.index_granularities
    if spec is None or not grans:
        return []
    uri, opts = resolved.output_uri, resolved.storage_options
    have = {i["column"] for i in open_table(uri, storage_options=opts).indexes()}
    out: list[dict[str, Any]] = []
    for g in grans:
        column = vector_column(str(g))
        if not changed and column in have:
            out.append({"column": column, "action": "kept", "reason": "the run changed nothing"})
            continue
        try:
            report = build_index(
                uri,
                column,
                spec.type,
                num_partitions=spec.num_partitions,
                num_sub_vectors=spec.num_sub_vectors,
                storage_options=opts,
                lock=False,
            )
        except VectorIndexError as exc:
            logger.warning("index on %s skipped: %s", column, exc)
            out.append({"column": column, "action": "skipped", "reason": str(exc)})
        except Exception as exc:  # the commit stands; the summary says what failed
            logger.error("index on %s failed: %s", column, exc)
            out.append({"column": column, "action": "failed", "reason": f"{type(exc).__name__}: {exc}"})
        else:
            logger.info("index on %s: %s in %.1f s", column, report.params.describe(), report.seconds)
            out.append({**report.to_dict(), "description": report.params.describe()})
    return out
