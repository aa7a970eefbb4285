"""What a migration run needs besides the job: the table's old settings, the migration in progress, the schema.

A job with ``mode = "migrate"`` whose settings differ from its table's is a step of a staged migration
(``storage._migration`` keeps its state in the table). The job's settings are the *new* ones; the table's
provenance names the *old* ones, whose model must still load: new and changed rows get both spaces' vectors,
so no row is ever missing from a search with either model. Resolved here, once, for the checks and the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from embedder import EmbedderError, EncoderConfig, weights_fingerprint
from storage import (
    MigrationState,
    Provenance,
    calibration_uri,
    is_vector_column,
    next_fields,
    vector_column,
    vector_field,
)

from ._spec import JobSpec, MigrateSpec

__all__ = ["MigrationPlan", "migration_problems", "migration_schema"]


@dataclass(frozen=True)
class MigrationPlan:
    """A migration step: from the table's settings (``old``) to the job's, begun already (``state``) or not."""

    old: Provenance
    #: the migration in progress; None: this run begins it
    state: MigrationState | None
    #: the old settings' encoder (vec_* columns of new and changed rows)
    old_encoder: EncoderConfig
    #: where the old settings' calibration is stored (next to the table); None: it had none
    old_calibration_uri: str | None
    options: MigrateSpec

    def describe(self, new: Provenance) -> str:
        """ "from -> to" for people: the settings that differ."""
        return "; ".join(self.old.differences(new)) or "the same settings"


def old_encoder(old: Provenance, spec: JobSpec) -> EncoderConfig:
    """The encoder that made the table's vectors, from its provenance (the job's dtype and batch budget)."""
    return EncoderConfig(
        granularities=old.granularities,
        pooling=old.pooling,
        normalize=old.normalize,
        max_length=old.max_length,
        dtype=spec.model.dtype if old.backend == "torch" else None,
        batch_tokens=spec.cluster.batch_tokens,
        backend=old.backend,  # type: ignore[arg-type]  # one of BACKENDS: the table's provenance recorded it
    )


def plan_migration(spec: JobSpec, out: str, old: Provenance, state: MigrationState | None) -> MigrationPlan:
    return MigrationPlan(
        old=old,
        state=state,
        old_encoder=old_encoder(old, spec),
        old_calibration_uri=calibration_uri(out, old.calibration) if old.calibration else None,
        options=spec.migrate,
    )


def migration_problems(
    out: str, old: Provenance, new: Provenance | None, state: MigrationState | None, *, pending: bool
) -> list[str]:
    """A migrate run against its table: the migration in progress is to the job's settings, the rows stay the
    same rows (no chunking change), and the old model is still there to embed new rows the old way.

    ``pending``: the job's calibration is fitted by this run ("auto" with none stored): its settings are a new
    space, compared once it is fitted."""
    problems = []
    if state is not None and new is not None and not pending:
        diffs = state.to.differences(new)
        if diffs:
            problems.append(
                f"output.uri = {out!r} is migrating to other settings than this job's ({'; '.join(diffs)}); run "
                f"the job that began it, or undo it first: embedjob migrate abort {out}"
            )
    if new is not None and old.chunking != new.chunking:
        problems.append(
            f"mode = 'migrate': the chunking differs (chunking: {old.chunking} -> {new.chunking}), which changes the "
            f"table's rows, not only their vectors; a migration keeps the rows (use mode = 'overwrite')"
        )
    try:
        found = weights_fingerprint(old.model_path) if Path(old.model_path).is_dir() else None
    except EmbedderError:
        found = None
    if found != old.weights_fingerprint:
        why = "is gone" if found is None else f"has other weights now ({found})"
        problems.append(
            f"mode = 'migrate': the table's model {old.model_path} {why}; the migration embeds new and changed rows "
            f"with it too (weights {old.weights_fingerprint}), so that every row stays searchable the old way"
        )
    return problems


def migration_schema(schema: pa.Schema, old: Provenance, new: Provenance) -> pa.Schema:
    """The rows a migration run writes: the job's columns with the old settings' vectors, and ``next_vec_*``."""
    base = [f for f in schema if not is_vector_column(f.name)]
    olds = [vector_field(vector_column(g), g, old.vector_dtype) for g in old.granularities]
    return pa.schema([*base, *olds, *next_fields(new)], metadata=schema.metadata)
