"""Every check that can run before Ray starts, turning a JobSpec into a ResolvedJob.

Reads schemas and configs, never the data or the weights' tensors (the
weights' bytes are hashed once for the fingerprint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from cluster import Source, SourceError, resolve_source
from embedder import (
    Calibration,
    CalibrationError,
    EmbedderError,
    EncoderConfig,
    Granularity,
    GranularityError,
    read_model_dir,
    resolve_granularities,
    weights_fingerprint,
)
from storage import (
    METADATA_KEY,
    ObjectStore,
    Provenance,
    StoreError,
    calibration_uri,
    check_store,
    dataset_schema,
    list_calibrations,
    load_calibration,
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
    calibration: Calibration | None = field(default=None, repr=False)
    #: "auto" found nothing to reuse: the run fits one on a sample first
    calibration_pending: bool = False
    #: where the calibration comes from, for people: "none", "file ...", "the table's own", ...
    calibration_origin: str = "none"

    @property
    def mode(self) -> str:
        """The output mode this run uses: the spec's, where unset "incremental" once the table exists."""
        mode = self.spec.output.mode
        if mode is None:
            return "incremental" if self.output_exists else "create"
        if mode in ("incremental", "append") and not self.output_exists:
            return "create"
        return mode

    @property
    def storage_options(self) -> dict[str, str] | None:
        if self.store is None or not self.output_uri.startswith("s3://"):
            return None
        return self.store.lance_options()

    def fit_layers(self) -> tuple[int, ...]:
        """The exit layers a calibration for this job fits maps for (``[calibrate] layers``)."""
        depth = self.provenance.num_layers
        chosen = self.spec.calibrate.layers
        if chosen == "all":
            return tuple(range(1, depth))
        if chosen == "job":
            return tuple(sorted({g.layer for g in self.granularities if g.layer < depth}))
        return tuple(sorted({k for k in chosen if k < depth}))

    @property
    def index_granularities(self) -> tuple[Granularity, ...]:
        """The granularities the job's ``[index]`` section indexes after each run (none without one)."""
        idx = self.spec.index
        if idx is None:
            return ()
        if idx.granularities == "all":
            return self.granularities
        return tuple(Granularity.parse(g) for g in idx.granularities)

    def with_calibration(self, calibration: Calibration, origin: str) -> ResolvedJob:
        """The same job, its provenance and schema naming ``calibration``."""
        provenance = dataclasses.replace(self.provenance, calibration=calibration.fingerprint)
        schema = self.schema.with_metadata(
            {**(self.schema.metadata or {}), METADATA_KEY: provenance.to_json().encode()}
        )
        return dataclasses.replace(
            self,
            provenance=provenance,
            schema=schema,
            calibration=calibration,
            calibration_pending=False,
            calibration_origin=origin,
        )


def check_job(
    spec: JobSpec,
    *,
    source_name: str = "job",
    purpose: Literal["run", "calibrate"] = "run",
    backfill: tuple[str, ...] = (),
) -> ResolvedJob:
    """Run every pre-flight check; raise JobSpecError listing what is wrong.

    ``purpose="calibrate"`` (``embedjob calibrate``) skips what only a run
    needs: the output mode against an existing table, and finding a calibration.
    ``backfill``: granularities to add to the existing table as new columns
    (the job lists the table's granularities plus these).
    """
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
    if store is not None:
        # the store itself first, fast and in one line each: the checks below would only repeat an
        # unreachable endpoint or bad credentials, slowly, through three libraries' retries
        for key, uri in (("input.uri", spec.input.uri), ("output.uri", spec.output.uri)):
            if uri.startswith("s3://"):
                try:
                    check_store(uri, store.lance_options())
                except StoreError as exc:
                    problems.append(f"{key} = {uri!r}: {exc}")
        if problems:
            raise JobSpecError(source_name, problems)

    # --- input: files exist, columns exist, text column holds text
    source = None
    id_type: pa.DataType = pa.string()
    passthrough_fields: list[pa.Field] = []
    try:
        source = resolve_source(spec.input.uri, spec.input.format, store=store)
        schema = source.schema()
        source.check_readable()
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
    if isinstance(spec.calibrate.layers, list):
        depth = provenance.num_layers if provenance else None
        bad = [k for k in spec.calibrate.layers if k < 1 or (depth is not None and k > depth)]
        if bad:
            problems.append(
                f"calibrate.layers: {bad} out of range; allowed: 1..{depth or 'the model depth'}, 'job' or 'all'"
            )

    if spec.index is not None and grans:
        problems.extend(_index_problems(spec, grans))

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
    calibration, pending, origin = None, False, "none"
    if purpose == "run" and spec.calibration is not None and provenance is not None:
        try:
            calibration, origin = _find_calibration(spec, provenance, grans, existing, out, opts, store)
        except CalibrationError as exc:
            problems.append(f"calibration: {exc}")
        else:
            pending = calibration is None
            if calibration is not None:
                provenance = dataclasses.replace(provenance, calibration=calibration.fingerprint)
            elif spec.output.mode in ("append", "incremental", None) and output_exists:
                problems.append(
                    f"calibration = 'auto': no stored calibration fits this job, and one fitted now would differ "
                    f"from the table's ({existing.calibration if existing else 'none'}), mixing vectors in "
                    f"output.uri = {out!r}; use mode = 'overwrite', a new uri, or name a calibration file"
                )
    if purpose == "run" and backfill:
        problems.extend(_backfill_problems(backfill, out, opts, existing, provenance, pending))
    elif purpose == "run":
        problems.extend(_output_problems(spec, out, opts, output_exists, existing, provenance, id_type, pending))
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
        calibration=calibration,
        calibration_pending=pending,
        calibration_origin=origin,
    )


def _index_problems(spec: JobSpec, grans: tuple[Granularity, ...]) -> list[str]:
    """``[index]``: its granularities are the job's, and PQ sub-vectors divide each indexed dim."""
    idx = spec.index
    assert idx is not None
    if idx.granularities == "all":
        chosen = list(grans)
    else:
        chosen, problems = [], []
        for value in idx.granularities:
            try:
                g = Granularity.parse(value)
            except GranularityError as exc:
                problems.append(f"index.granularities: {exc}")
                continue
            if g not in grans:
                problems.append(
                    f"index.granularities: {value!r} is not one of the job's granularities "
                    f"({', '.join(str(x) for x in grans)}), or 'all'"
                )
            chosen.append(g)
        if problems:
            return problems
    if idx.num_sub_vectors is not None:
        if idx.type != "ivf_pq":
            return [f"index.num_sub_vectors = {idx.num_sub_vectors}: only type = 'ivf_pq' has sub-vectors"]
        bad = [str(g) for g in chosen if g.dim % idx.num_sub_vectors]
        if bad:
            return [f"index.num_sub_vectors = {idx.num_sub_vectors} does not divide the dim of {', '.join(bad)}"]
    return []


def _output_problems(
    spec: JobSpec,
    out: str,
    opts: Mapping[str, str] | None,
    output_exists: bool,
    existing: Provenance | None,
    provenance: Provenance | None,
    id_type: pa.DataType,
    calibration_pending: bool,
) -> list[str]:
    """The output mode against what is already at ``out``."""
    if not output_exists:
        return []
    if spec.output.mode == "create":
        return [
            f"output.uri = {out!r} already exists and output.mode is 'create'; use mode = 'incremental' "
            f"(or leave mode unset) to update it, 'overwrite' to replace it, 'append' to add new ids, or a new uri"
        ]
    mode = spec.output.mode or "incremental"
    if mode == "overwrite" or provenance is None or calibration_pending:
        return []  # (a pending calibration is reported with the calibration)
    verb = "append to it" if mode == "append" else "update it incrementally"
    if existing is None:
        return [f"output.uri = {out!r} exists but was not written by embedjob; cannot {verb}"]
    diffs = existing.differences(provenance)
    if diffs:
        added = [g for g in provenance.granularities if g not in existing.granularities]
        hint = ""
        if (
            len(diffs) == 1
            and diffs[0].startswith("granularities:")
            and set(existing.granularities) < set(provenance.granularities)
        ):
            hint = f"; to add only the new column(s), backfill: embedjob run JOB --add-granularity {','.join(added)}"
        return [
            f"output.uri = {out!r} was made with another config ({'; '.join(diffs)}), so the run cannot "
            f"{verb} without mixing vectors; use mode = 'overwrite' (one new version, old ones stay readable) "
            f"or a new output.uri{hint}"
        ]
    table_schema = dataset_schema(out, opts)
    if table_schema is not None and table_schema.field("id").type != id_type:
        return [
            f"input.id_column type {id_type} differs from the table's id type "
            f"{table_schema.field('id').type}; cannot {verb}"
        ]
    return []


def _backfill_problems(
    backfill: tuple[str, ...],
    out: str,
    opts: Mapping[str, str] | None,
    existing: Provenance | None,
    provenance: Provenance | None,
    calibration_pending: bool,
) -> list[str]:
    """``--add-granularity``: the table exists, stores its text, and differs from the job only by these."""
    if existing is None:
        return [f"--add-granularity: output.uri = {out!r} is not an embedjob table yet; run the job first"]
    if provenance is None:
        return []
    problems = []
    try:
        wanted = [str(Granularity.parse(g)) for g in backfill]
    except GranularityError as exc:
        return [f"--add-granularity: {exc}"]
    have = [g for g in wanted if g in existing.granularities]
    if have:
        problems.append(f"--add-granularity: the table already has {', '.join(have)}")
    expected = set(existing.granularities) | set(wanted)
    if set(provenance.granularities) != expected:
        problems.append(
            f"--add-granularity {','.join(wanted)}: the job's granularities ({', '.join(provenance.granularities)}) "
            f"must be the table's ({', '.join(existing.granularities)}) plus the added ones; "
            f"list granularities = {sorted(expected, key=lambda g: Granularity.parse(g))} in the job file"
        )
    if calibration_pending:
        problems.append(
            "--add-granularity: calibration = 'auto' found no stored calibration with maps for the new layers "
            "that matches the table's; a backfill cannot change the calibration (use mode = 'overwrite')"
        )
    others = [d for d in existing.differences(provenance) if not d.startswith("granularities:")]
    if others:
        problems.append(
            f"--add-granularity: the table was made with another config ({'; '.join(others)}); "
            f"a backfill adds columns from the same model only (use mode = 'overwrite')"
        )
    schema = dataset_schema(out, opts)
    if schema is not None and "text" not in schema.names:
        problems.append(
            f"--add-granularity: {out!r} does not store its text (store_text = false), which a backfill embeds; "
            f"rebuild with mode = 'overwrite'"
        )
    return problems


def _find_calibration(
    spec: JobSpec,
    provenance: Provenance,
    grans: tuple[Granularity, ...],
    existing: Provenance | None,
    out: str,
    opts: Mapping[str, str] | None,
    store: ObjectStore | None,
) -> tuple[Calibration | None, str]:
    """The calibration a run uses: the named file, or for "auto" the table's own, else the newest
    compatible one stored next to the output; ``None`` when "auto" must fit one first."""

    def check(cal: Calibration) -> Calibration:
        cal.check_compatible(
            model_fingerprint=provenance.weights_fingerprint,
            num_layers=provenance.num_layers,
            hidden_size=provenance.hidden_size,
            pooling=provenance.pooling,
            layers=tuple(sorted({g.layer for g in grans})),
            model_name=provenance.model_path,
        )
        return cal

    named = spec.calibration
    assert named is not None
    if named != "auto":
        file_opts = store.lance_options() if (store is not None and named.startswith("s3://")) else None
        return check(load_calibration(named, storage_options=file_opts)), f"file {named}"
    if existing is not None and existing.calibration:
        try:
            own = load_calibration(calibration_uri(out, existing.calibration), storage_options=opts)
            return check(own), "the table's own"
        except CalibrationError:
            pass  # gone, or made for another model / other layers: look further
    for cal in list_calibrations(out, storage_options=opts):
        try:
            return check(cal), f"stored next to the output ({cal.info.created_at})"
        except CalibrationError:
            continue
    return None, "to be fitted on a sample"
