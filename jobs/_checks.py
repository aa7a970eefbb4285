"""Every check that can run before Ray starts, turning a JobSpec into a ResolvedJob.

Reads schemas and configs, never the data or the weights' tensors (the
weights' bytes are hashed once for the fingerprint).

:func:`check_job` validates, then resolves: :func:`_validate` runs the checks
in order, each a small function returning its problems (what they read on the
way, the input's schema, the model dir, the table at ``output.uri``, is kept in
a :class:`_Found`); :func:`_resolve` turns a job that passed into the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from cluster import Source, SourceError, resolve_source
from embedder import (
    Calibration,
    CalibrationError,
    Chunking,
    EmbedderError,
    EncoderConfig,
    Granularity,
    GranularityError,
    cached_tokenizer,
    read_model_dir,
    resolve_granularities,
    resolve_model,
    weights_fingerprint,
)
from storage import (
    DOC_ID,
    ID,
    METADATA_KEY,
    RESERVED_COLUMNS,
    TEXT,
    TEXT_TYPES,
    VECTOR_PREFIX,
    MigrationState,
    ObjectStore,
    Provenance,
    StoreError,
    calibration_uri,
    check_store,
    dataset_schema,
    is_reserved_column,
    list_calibrations,
    load_calibration,
    output_schema,
    read_migration,
    read_provenance,
    sibling_uri,
    table_exists,
)
from storage import VERSION as __version__
from storage.vocab import OutputMode, keeps_existing_rows, migrates, replaces_table, resolve_mode

from ._gate import ProbeFileError, read_probes
from ._migration import MigrationPlan, migration_problems, plan_migration
from ._spec import PREVIOUS, CalibrateSpec, GateSpec, IndexSpec, InputSpec, JobSpec, JobSpecError, anchored

__all__ = ["ResolvedJob", "check_job"]


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
    #: ``[chunking]`` resolved against the model; None: one row per text
    chunking: Chunking | None = None
    #: ``mode = "migrate"`` on a table with other settings (or migrating): the step's old side
    migration: MigrationPlan | None = None

    @property
    def mode(self) -> OutputMode:
        """The output mode this run uses: the spec's, where unset "incremental" once the table exists; "migrate"
        with nothing to migrate (the table has the job's settings) is "incremental"."""
        mode = resolve_mode(self.spec.output.mode, self.output_exists)
        return "incremental" if migrates(mode) and self.migration is None else mode

    @property
    def storage_options(self) -> dict[str, str] | None:
        return _lance_options(self.output_uri, self.store)

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
    spec = anchored(spec, Path.cwd())  # what the checks read here is what Ray's workers read, wherever they run
    found, problems = _validate(spec, purpose=purpose, backfill=backfill)
    if problems:
        raise JobSpecError(source_name, problems)
    return _resolve(spec, found)


@dataclass
class _Found:
    """What the checks read on the way, for the checks after them and for :func:`_resolve`.

    Filled in order by :func:`_validate`; a field stays empty where its read failed (a problem says why).
    """

    store: ObjectStore | None
    source: Source | None = None
    input_schema: pa.Schema | None = None
    granularities: tuple[Granularity, ...] = ()
    encoder: EncoderConfig | None = None
    #: how the run's vectors are made; names the calibration once one is found
    provenance: Provenance | None = None
    #: the provenance of the table at output.uri (None: no table there, or not an embedjob one)
    existing: Provenance | None = None
    output_exists: bool = False
    calibration: Calibration | None = None
    calibration_pending: bool = False
    calibration_origin: str = "none"
    chunking: Chunking | None = None
    #: the migration in progress in the table at output.uri
    migration: MigrationState | None = None

    def migrating(self, spec: JobSpec) -> bool:
        """The job asks for a migration step and the table is there."""
        return self.output_exists and migrates(resolve_mode(spec.output.mode, self.output_exists))


def _validate(
    spec: JobSpec, *, purpose: Literal["run", "calibrate"], backfill: tuple[str, ...]
) -> tuple[_Found, list[str]]:
    """Every check, in order: what they read, and every problem they found.

    Stops early only after the store checks; a check that needs an earlier
    read (the input's schema, the model's depth, a provenance) is skipped when
    that read failed, its problem already listed.
    """
    found = _Found(store=_object_store(spec))
    problems = [*_credential_problems(spec, found.store), *_store_problems(spec, found.store)]
    if problems:
        # the store itself first, fast and in one line each: the checks below would only repeat an
        # unreachable endpoint or bad credentials, slowly, through three libraries' retries
        return found, problems
    out = spec.output.uri
    opts = _lance_options(out, found.store)
    # --- input: files exist, columns exist, text column holds text
    problems += _read_input(spec.input, found)
    problems += _input_problems(spec.input, found.source, found.input_schema)
    # --- model and granularities: validated without loading weights
    problems += _backend_problems(spec)
    problems += _read_model(spec, found)
    problems += _read_chunking(spec, found)
    problems += _calibrate_layers_problems(spec.calibrate, found.provenance)
    problems += _index_problems(spec.index, found.granularities)
    problems += _gate_problems(spec.gate, found.granularities)
    # --- output: mode against what is there
    problems += _read_output(out, opts, found)
    if purpose == "run":
        problems += _run_problems(spec, backfill, out, opts, found)
    return found, problems


def _run_problems(
    spec: JobSpec, backfill: tuple[str, ...], out: str, opts: Mapping[str, str] | None, found: _Found
) -> list[str]:
    """What only a run checks, in order: the calibration it uses, then the table at ``out`` against the job
    (``backfill``: against the added granularities)."""
    problems = _read_calibration(spec, out, opts, found)
    problems += _refit_problems(spec.output.mode, out, found)
    if backfill:
        problems += _backfill_problems(backfill, out, opts, found.existing, found.provenance, found.calibration_pending)
        if found.migration is not None:
            problems.append(
                f"--add-granularity: output.uri = {out!r} is migrating to other settings (a backfill's commit "
                f"would not keep them); add the granularities after the switch, or abort the migration first"
            )
    else:
        id_type = _id_type(spec.input, found.input_schema)
        if found.migrating(spec) and found.existing is not None:
            pending = found.calibration_pending
            problems += migration_problems(out, found.existing, found.provenance, found.migration, pending=pending)
        problems += _output_problems(
            spec, out, opts, found.output_exists, found.existing, found.provenance, id_type, found.calibration_pending
        )
    return problems


def _resolve(spec: JobSpec, found: _Found) -> ResolvedJob:
    """The plan for a job that passed :func:`_validate`: the output schema (provenance, id type, passthrough
    columns) and the URIs next to the table."""
    source, input_schema, provenance = found.source, found.input_schema, found.provenance
    assert source is not None and input_schema is not None and found.encoder is not None and provenance is not None
    schema = output_schema(
        provenance,
        id_type=_id_type(spec.input, input_schema),
        passthrough=[input_schema.field(col) for col in spec.input.columns],
        store_text=spec.output.store_text,
        table_uri=spec.output.uri,
    )
    out = spec.output.uri
    return ResolvedJob(
        spec=spec,
        source=source,
        granularities=found.granularities,
        encoder=found.encoder,
        provenance=provenance,
        schema=schema,
        output_uri=out,
        rejects_uri=sibling_uri(out, "rejects"),
        runs_uri=sibling_uri(out, "runs"),
        output_exists=found.output_exists,
        store=found.store,
        calibration=found.calibration,
        calibration_pending=found.calibration_pending,
        calibration_origin=found.calibration_origin,
        chunking=found.chunking,
        migration=_migration(spec, found),
    )


def _migration(spec: JobSpec, found: _Found) -> MigrationPlan | None:
    """A migrate job's step: None when the table is at the job's settings with no migration in progress."""
    old, new = found.existing, found.provenance
    if not found.migrating(spec) or old is None or new is None:
        return None
    if found.migration is None and not found.calibration_pending and not old.differences(new):
        return None
    return plan_migration(spec, spec.output.uri, old, found.migration)


def _object_store(spec: JobSpec) -> ObjectStore | None:
    """The S3 store the job reads or writes (settings from ``[storage]`` and the environment); None off S3."""
    if not (spec.input.uri.startswith("s3://") or spec.output.uri.startswith("s3://")):
        return None
    return ObjectStore.from_env(
        endpoint=spec.storage.endpoint, region=spec.storage.region, allow_http=spec.storage.allow_http
    )


def _lance_options(uri: str, store: ObjectStore | None) -> dict[str, str] | None:
    """The storage options Lance needs for ``uri``: the store's where ``uri`` is on S3, else none."""
    if store is None or not uri.startswith("s3://"):
        return None
    return store.lance_options()


def _credential_problems(spec: JobSpec, store: ObjectStore | None) -> list[str]:
    """An S3 endpoint named in ``[storage]`` comes with keys in the environment."""
    if store is None or store.has_credentials or not spec.storage.endpoint:
        return []
    return ["storage: an S3 endpoint is set but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not in the environment"]


def _store_problems(spec: JobSpec, store: ObjectStore | None) -> list[str]:
    """Each ``s3://`` URI of the job reaches its store with these credentials (one quick request each)."""
    if store is None:
        return []
    problems = []
    for key, uri in (("input.uri", spec.input.uri), ("output.uri", spec.output.uri)):
        if uri.startswith("s3://"):
            try:
                check_store(uri, store.lance_options())
            except StoreError as exc:
                problems.append(f"{key} = {uri!r}: {exc}")
    return problems


def _read_input(inp: InputSpec, found: _Found) -> list[str]:
    """Lists the input's files and reads their schema (footers, not rows) into ``found``."""
    try:
        source = resolve_source(inp.uri, inp.format, store=found.store)
        schema = source.schema()
        source.check_readable()
    except SourceError as exc:
        return [f"input.uri: {exc}"]
    found.source, found.input_schema = source, schema
    return []


def _input_problems(inp: InputSpec, source: Source | None, schema: pa.Schema | None) -> list[str]:
    """The ``[input]`` columns against the input's schema (none to check when it could not be read)."""
    if source is None or schema is None:
        return []
    path = source.paths[0]
    return [
        *_key_column_problems(inp, schema.names, path),
        *_passthrough_problems(inp, schema.names, path),
        *_text_column_problems(inp, schema),
        *_id_column_problems(inp, schema),
    ]


def _key_column_problems(inp: InputSpec, names: Sequence[str], path: str) -> list[str]:
    """``id_column`` and ``text_column`` are columns of the input."""
    return [
        f"input.{key} = {col!r} is not a column of {path}; columns: {', '.join(names)}"
        for key, col in (("id_column", inp.id_column), ("text_column", inp.text_column))
        if col not in names
    ]


def _passthrough_problems(inp: InputSpec, names: Sequence[str], path: str) -> list[str]:
    """``columns``: each is a column of the input, named unlike every output column."""
    problems = []
    for col in inp.columns:
        if col not in names:
            problems.append(f"input.columns: {col!r} is not a column of {path}; columns: {', '.join(names)}")
        elif is_reserved_column(col) or col in (inp.id_column, inp.text_column):
            problems.append(
                f"input.columns: {col!r} clashes with an output column; "
                f"reserved: {', '.join(RESERVED_COLUMNS)}, {VECTOR_PREFIX}*"
            )
    return problems


def _text_column_problems(inp: InputSpec, schema: pa.Schema) -> list[str]:
    """The text column holds strings or bytes (or only nulls)."""
    if inp.text_column not in schema.names:
        return []
    ttype = schema.field(inp.text_column).type
    if ttype in TEXT_TYPES or ttype == pa.null():
        return []
    return [f"input.text_column {inp.text_column!r} has type {ttype}; expected a string or binary column"]


def _id_column_problems(inp: InputSpec, schema: pa.Schema) -> list[str]:
    """The id column holds strings or integers (or only nulls)."""
    if inp.id_column not in schema.names:
        return []
    id_type = schema.field(inp.id_column).type
    if pa.types.is_nested(id_type) or pa.types.is_floating(id_type):
        return [f"input.id_column {inp.id_column!r} has type {id_type}; ids must be strings or integers"]
    return []


def _id_type(inp: InputSpec, schema: pa.Schema | None) -> pa.DataType:
    """The output's id type: the id column's, with every string type (and an all-null column) as ``string``."""
    if schema is None or inp.id_column not in schema.names:
        return pa.string()
    id_type = schema.field(inp.id_column).type
    if pa.types.is_null(id_type) or pa.types.is_large_string(id_type) or pa.types.is_string_view(id_type):
        return pa.string()
    return id_type


def _backend_problems(spec: JobSpec) -> list[str]:
    """``[model] backend = "int8"``: its runtime is installed here, and the job asks no GPU of its actors."""
    if spec.model.backend != "int8":
        return []
    from embedder import int8_missing  # here: its module imports torch, which no other check needs

    problems = []
    if missing := int8_missing():
        problems.append(f"model: {missing}")
    if spec.cluster.gpus_per_actor:
        problems.append(
            f"cluster: gpus_per_actor = {spec.cluster.gpus_per_actor:g}, but backend 'int8' runs on CPU; "
            f"leave gpus_per_actor unset (or 0) with it, or use backend 'torch' on GPUs"
        )
    return problems


def _read_model(spec: JobSpec, found: _Found) -> list[str]:
    """Reads the model dir's configs (not its tensors) and checks the granularities against its depth and
    width; the granularities, the encoder config and the provenance go into ``found``."""
    try:
        mdir = read_model_dir(resolve_model(spec.model.path, download=spec.model.download))
        found.granularities = resolve_granularities(
            spec.granularities,  # type: ignore[arg-type]
            num_layers=mdir.num_layers,
            hidden_size=mdir.hidden_size,
            model_name=mdir.name,
        )
        found.encoder = EncoderConfig(
            granularities=found.granularities,
            pooling=spec.model.pooling,
            normalize=spec.model.normalize,
            max_length=spec.model.max_length,
            dtype=spec.model.dtype,
            batch_tokens=spec.cluster.batch_tokens,
            backend=spec.model.backend,
        )
        pooling, max_length = mdir.resolve(found.encoder.pooling, found.encoder.max_length)
        found.provenance = Provenance(
            model_path=str(mdir.root),
            weights_fingerprint=weights_fingerprint(mdir.root),
            granularities=tuple(str(g) for g in found.granularities),
            pooling=pooling.value,
            normalize=spec.model.normalize,
            max_length=max_length,
            num_layers=mdir.num_layers,
            hidden_size=mdir.hidden_size,
            vector_dtype=spec.output.vector_dtype,
            backend=spec.model.backend,
            embedjob_version=__version__,
        )
    except EmbedderError as exc:
        where = "granularities" if isinstance(exc, GranularityError) else "model"
        return [f"{where}: {exc}"]
    return []


def _read_chunking(spec: JobSpec, found: _Found) -> list[str]:
    """``[chunking]`` against the model: a chunk and the special tokens fit ``max_length``, the overlap is below
    the chunk; the chunking goes into ``found`` and into the provenance (a change of it changes the vectors)."""
    if spec.chunking is None or found.provenance is None:
        return []
    prov = found.provenance
    try:
        specials = cached_tokenizer(prov.model_path, prov.max_length).tokenizer.num_special_tokens_to_add(pair=False)
    except EmbedderError as exc:
        return [f"model: {exc}"]
    room = prov.max_length - specials
    tokens = spec.chunking.tokens or room
    if tokens > room:
        return [
            f"chunking.tokens = {tokens}: above what the model takes ({prov.max_length} tokens, less "
            f"{specials} special ones = {room}); chunks that long would be truncated"
        ]
    overlap = tokens // 8 if spec.chunking.overlap is None else spec.chunking.overlap
    if overlap >= tokens:
        return [f"chunking.overlap = {overlap}: must be below chunking.tokens ({tokens})"]
    found.chunking = Chunking(tokens, overlap, spec.chunking.sentences)
    found.provenance = dataclasses.replace(prov, chunking=found.chunking.describe())
    return []


def _calibrate_layers_problems(calibrate: CalibrateSpec, provenance: Provenance | None) -> list[str]:
    """``[calibrate] layers``, when a list: each within the model's depth (1.. when the model is unread)."""
    if not isinstance(calibrate.layers, list):
        return []
    depth = provenance.num_layers if provenance else None
    bad = [k for k in calibrate.layers if k < 1 or (depth is not None and k > depth)]
    if not bad:
        return []
    return [f"calibrate.layers: {bad} out of range; allowed: 1..{depth or 'the model depth'}, 'job' or 'all'"]


def _read_output(out: str, opts: Mapping[str, str] | None, found: _Found) -> list[str]:
    """Whether a table is at ``out``, and its provenance, into ``found``."""
    try:
        existing = read_provenance(out, opts)
        exists = existing is not None or table_exists(out, opts)
        found.migration = read_migration(out, None, opts) if existing is not None else None
    except Exception as exc:
        return [f"output.uri = {out!r}: cannot check it: {exc}"]
    found.existing, found.output_exists = existing, exists
    return []


def _read_calibration(spec: JobSpec, out: str, opts: Mapping[str, str] | None, found: _Found) -> list[str]:
    """The calibration a run uses (``calibration``), into ``found``; "auto" with none stored is pending.

    A found calibration's fingerprint goes into the provenance, which the table checks compare.
    """
    if spec.calibration is None or found.provenance is None:
        return []
    # a migration step's settings are its target's: "auto" finds the calibration the migration began with
    own = found.migration.to if found.migration is not None and found.migrating(spec) else found.existing
    try:
        calibration, origin = _find_calibration(
            spec, found.provenance, found.granularities, own, out, opts, found.store
        )
    except CalibrationError as exc:
        return [f"calibration: {exc}"]
    found.calibration, found.calibration_origin = calibration, origin
    found.calibration_pending = calibration is None
    if calibration is not None:
        found.provenance = dataclasses.replace(found.provenance, calibration=calibration.fingerprint)
    return []


def _refit_problems(requested: OutputMode | None, out: str, found: _Found) -> list[str]:
    """A calibration fitted now (``calibration = 'auto'``, none stored fits) must not be mixed into a table
    whose rows stay."""
    mode = resolve_mode(requested, found.output_exists)
    if not found.calibration_pending or not keeps_existing_rows(mode) or migrates(mode):
        return []  # (a migration step fits its new settings' calibration: they are a new space anyway)
    existing = found.existing
    return [
        f"calibration = 'auto': no stored calibration fits this job, and one fitted now would differ "
        f"from the table's ({existing.calibration if existing else 'none'}), mixing vectors in "
        f"output.uri = {out!r}; use mode = 'overwrite', a new uri, or name a calibration file"
    ]


def _index_problems(idx: IndexSpec | None, grans: tuple[Granularity, ...]) -> list[str]:
    """``[index]``: its granularities are the job's, and PQ sub-vectors divide each indexed dim."""
    if idx is None or not grans:
        return []
    chosen, problems = _index_granularities(idx, grans)
    if problems:
        return problems
    return _sub_vector_problems(idx, chosen)


def _gate_problems(gate: GateSpec | None, grans: tuple[Granularity, ...]) -> list[str]:
    """``[gate]``: its probe file (not "previous") reads, each line a probe, and its granularity is the job's."""
    if gate is None:
        return []
    problems = []
    try:
        if gate.probes != PREVIOUS:
            read_probes(gate.probes)
    except ProbeFileError as exc:
        problems.append(str(exc))
    if gate.granularity is not None and grans:
        try:
            g = Granularity.parse(gate.granularity)
        except GranularityError as exc:
            return [*problems, f"gate.granularity: {exc}"]
        if g not in grans:
            problems.append(
                f"gate.granularity = {gate.granularity!r} is not one of the job's granularities: "
                f"{', '.join(str(x) for x in grans)}"
            )
    return problems


def _index_granularities(idx: IndexSpec, grans: tuple[Granularity, ...]) -> tuple[list[Granularity], list[str]]:
    """The granularities ``[index]`` names ("all": the job's), and the problems of those it cannot index."""
    if idx.granularities == "all":
        return list(grans), []
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
    return chosen, problems


def _sub_vector_problems(idx: IndexSpec, chosen: Sequence[Granularity]) -> list[str]:
    """``num_sub_vectors``: only for ivf_pq, and a divisor of each indexed granularity's dim."""
    if idx.num_sub_vectors is None:
        return []
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
    mode = resolve_mode(spec.output.mode, table_exists=True)
    if mode == "create":
        return [
            f"output.uri = {out!r} already exists and output.mode is 'create'; use mode = 'incremental' "
            f"(or leave mode unset) to update it, 'overwrite' to replace it, 'append' to add new ids, or a new uri"
        ]
    if replaces_table(mode) or provenance is None or (calibration_pending and not migrates(mode)):
        return []  # (a pending calibration is reported with the calibration)
    verb = {"append": "append to it", "migrate": "migrate it"}.get(mode, "update it incrementally")
    if existing is None:
        return [f"output.uri = {out!r} exists but was not written by embedjob; cannot {verb}"]
    diffs = existing.differences(provenance)
    if diffs and not migrates(mode):
        added = [g for g in provenance.granularities if g not in existing.granularities]
        hint = ""
        if (
            len(diffs) == 1
            and diffs[0].startswith("granularities:")
            and set(existing.granularities) < set(provenance.granularities)
        ):
            hint = f"; to add only the new column(s), backfill: embedjob run JOB --add-granularity {','.join(added)}"
        hint += "; or change it in stages, the table searchable throughout: embedjob run JOB --migrate"
        return [
            f"output.uri = {out!r} was made with another config ({'; '.join(diffs)}), so the run cannot "
            f"{verb} without mixing vectors; use mode = 'overwrite' (one new version, old ones stay readable) "
            f"or a new output.uri{hint}"
        ]
    table_schema = dataset_schema(out, opts)
    key = DOC_ID if provenance.chunking else ID  # a chunked table keeps the input's ids as doc_id
    if table_schema is not None and table_schema.field(key).type != id_type:
        return [
            f"input.id_column type {id_type} differs from the table's {key} type "
            f"{table_schema.field(key).type}; cannot {verb}"
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
    if schema is not None and TEXT not in schema.names:
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
        return check(load_calibration(named, storage_options=_lance_options(named, store))), f"file {named}"
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
