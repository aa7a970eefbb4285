"""Every check that can run before Ray starts, turning a JobSpec into a ResolvedJob.

Reads schemas and configs, never the data or the weights' tensors (the
weights' bytes are hashed once for the fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from cluster import Source, SourceError, resolve_source
from embedder import (
    EmbedderError,
    EncoderConfig,
    Granularity,
    GranularityError,
    read_model_dir,
    resolve_granularities,
    weights_fingerprint,
)
from storage import (
    ObjectStore,
    Provenance,
    dataset_schema,
    output_schema,
    read_provenance,
    sibling_uri,
    table_exists,
)

from . import __version__
from ._spec import JobSpec, JobSpecError

__all__ = ["ResolvedJob", "check_job"]

RESERVED_COLUMNS = ("id", "content_hash", "text", "run_id", "embedded_at")
_TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary(), pa.string_view())


@dataclass(frozen=True)
class ResolvedJob:
    spec: JobSpec
    source: Source
    granularities: tuple[Granularity, ...]
    encoder: EncoderConfig
    provenance: Provenance
    schema: pa.Schema
    output_uri: str
    rejects_uri: str
    runs_uri: str
    output_exists: bool
    store: ObjectStore | None = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict[str, str] | None:
        if self.store is None or not self.output_uri.startswith("s3://"):
            return None
        return self.store.lance_options()


def check_job(spec: JobSpec, *, source_name: str = "job") -> ResolvedJob:
    """Run every pre-flight check; raise JobSpecError listing what is wrong."""
    problems: list[str] = []
    uses_s3 = spec.input.uri.startswith("s3://") or spec.output.uri.startswith("s3://")
    store = (
        ObjectStore.from_env(
            endpoint=spec.storage.endpoint, region=spec.storage.region, allow_http=spec.storage.allow_http
        )
        if uses_s3
        else None
    )
    if store is not None and not store.has_credentials and spec.storage.endpoint:
        problems.append(
            "storage: an S3 endpoint is set but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not in the environment"
        )

    # --- input: files exist, columns exist, text column holds text
    source = None
    id_type: pa.DataType = pa.string()
    passthrough_fields: list[pa.Field] = []
    try:
        source = resolve_source(spec.input.uri, spec.input.format, store=store)
        schema = source.schema()
        names = schema.names
        for key, col in (("id_column", spec.input.id_column), ("text_column", spec.input.text_column)):
            if col not in names:
                problems.append(
                    f"input.{key} = {col!r} is not a column of {source.paths[0]}; columns: {', '.join(names)}"
                )
        for col in spec.input.columns:
            if col not in names:
                problems.append(
                    f"input.columns: {col!r} is not a column of {source.paths[0]}; columns: {', '.join(names)}"
                )
            elif (
                col in RESERVED_COLUMNS
                or col.startswith("vec_")
                or col in (spec.input.id_column, spec.input.text_column)
            ):
                problems.append(
                    f"input.columns: {col!r} clashes with an output column; "
                    f"reserved: {', '.join(RESERVED_COLUMNS)}, vec_*"
                )
            else:
                passthrough_fields.append(schema.field(col))
        if spec.input.text_column in names:
            ttype = schema.field(spec.input.text_column).type
            if ttype not in _TEXT_TYPES and ttype != pa.null():
                problems.append(
                    f"input.text_column {spec.input.text_column!r} has type {ttype}; expected a string or binary column"
                )
        if spec.input.id_column in names:
            id_type = schema.field(spec.input.id_column).type
            if pa.types.is_nested(id_type) or pa.types.is_floating(id_type):
                problems.append(
                    f"input.id_column {spec.input.id_column!r} has type {id_type}; ids must be strings or integers"
                )
            if pa.types.is_null(id_type):
                id_type = pa.string()
            if pa.types.is_large_string(id_type) or pa.types.is_string_view(id_type):
                id_type = pa.string()
    except SourceError as exc:
        problems.append(f"input.uri: {exc}")

    # --- model and granularities: validated without loading weights
    grans: tuple[Granularity, ...] = ()
    encoder_cfg = None
    provenance = None
    try:
        mdir = read_model_dir(spec.model.path)
        grans = resolve_granularities(
            spec.granularities,  # type: ignore[arg-type]
            num_layers=mdir.num_layers,
            hidden_size=mdir.hidden_size,
            model_name=mdir.name,
        )
        encoder_cfg = EncoderConfig(
            granularities=grans,
            pooling=spec.model.pooling,
            normalize=spec.model.normalize,
            max_length=spec.model.max_length,
            dtype=spec.model.dtype,
            batch_tokens=spec.cluster.batch_tokens,
        )
        pooling, max_length = mdir.resolve(encoder_cfg.pooling, encoder_cfg.max_length)
        provenance = Provenance(
            model_path=str(mdir.root),
            weights_fingerprint=weights_fingerprint(mdir.root),
            granularities=tuple(str(g) for g in grans),
            pooling=pooling.value,
            normalize=spec.model.normalize,
            max_length=max_length,
            num_layers=mdir.num_layers,
            hidden_size=mdir.hidden_size,
            vector_dtype=spec.output.vector_dtype,
            embedjob_version=__version__,
        )
    except EmbedderError as exc:
        where = "granularities" if isinstance(exc, GranularityError) else "model"
        problems.append(f"{where}: {exc}")

    # --- output: mode against what is there
    out = spec.output.uri
    output_exists = False
    opts = store.lance_options() if (store and out.startswith("s3://")) else None
    try:
        existing = read_provenance(out, opts)
        output_exists = existing is not None or table_exists(out, opts)
    except Exception as exc:
        problems.append(f"output.uri = {out!r}: cannot check it: {exc}")
        existing = None
    if output_exists and spec.output.mode == "create":
        problems.append(
            f"output.uri = {out!r} already exists and output.mode is 'create'; "
            f"use mode = 'overwrite' to replace it, 'append' to add to it, or a new uri"
        )
    if output_exists and spec.output.mode == "append" and provenance is not None:
        if existing is None:
            problems.append(f"output.uri = {out!r} exists but was not written by embedjob; cannot append")
        else:
            diffs = existing.differences(provenance)
            if diffs:
                problems.append(
                    f"output.uri = {out!r} was made with another config, so appending would mix vectors "
                    f"({'; '.join(diffs)}); use mode = 'overwrite' or a new uri"
                )
            else:
                table_schema = dataset_schema(out, opts)
                if table_schema is not None and table_schema.field("id").type != id_type:
                    problems.append(
                        f"input.id_column type {id_type} differs from the table's id type "
                        f"{table_schema.field('id').type}; cannot append"
                    )
    if problems:
        raise JobSpecError(source_name, problems)
    assert source is not None and encoder_cfg is not None and provenance is not None
    schema = output_schema(
        provenance, id_type=id_type, passthrough=passthrough_fields, store_text=spec.output.store_text
    )
    return ResolvedJob(
        spec=spec,
        source=source,
        granularities=grans,
        encoder=encoder_cfg,
        provenance=provenance,
        schema=schema,
        output_uri=out,
        rejects_uri=sibling_uri(out, "rejects"),
        runs_uri=sibling_uri(out, "runs"),
        output_exists=output_exists,
        store=store,
    )
