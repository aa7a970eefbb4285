"""The job file: TOML, validated by pydantic. Unknown keys are errors.

granularities = ["l3_d64", "l6_d384"]   # or "starbucks", or [[3, 64], [6, 384]]
calibration = "auto"               # or a .safetensors file; default: none (the model's raw vectors)

[input]
uri = "data/articles.parquet"      # local path, directory, glob or s3://
format = "parquet"                 # parquet | jsonl | csv | lance (default: from the suffix)
id_column = "id"
text_column = "text"
columns = ["title"]                # passed through to the output

[model]
path = "all-MiniLM-L6-v2"           # a directory, a bundled name, or a Hugging Face id in the cache
# pooling = "mean"; max_length = 256; dtype = "auto"
# backend = "torch"                 # or "int8": CPU inference with int8 linear layers (ONNX Runtime)

[output]
uri = "out/articles.lance"
vector_dtype = "float32"           # or float16
store_text = true
mode = "incremental"               # default: incremental once the table exists, else create;
                                   # create | overwrite | append | incremental | migrate (a staged change)
delete_missing = true              # incremental: delete rows whose ids left the input
max_delete_fraction = 0.10         # refuse a run that would delete more of the table than this
allow_empty = false                # create / overwrite: an input with no rows is refused unless true
max_reject_fraction = 0.01

[cluster]                          # all optional
address = "ray://head:10001"       # default: RAY_ADDRESS, else an embedded local Ray
actors = 2
gpus_per_actor = 1
batch_tokens = 4096                # default: 4096 on CPU, sized to free memory on CUDA
tokenize = "auto"                  # tasks | actor; auto: CPU tasks when actors hold GPUs
rows_per_part = 16384              # rows per staged part: what a killed run may have to redo

[chunking]                         # optional: long texts become several rows (doc_id, chunk, char_start, char_end)
tokens = 200                       # tokens per chunk (default: the model's max_length less its special tokens)
overlap = 24                       # tokens repeated from the chunk before (default: tokens // 8)
sentences = true                   # cut at a sentence start when one lies in the window's second half

[calibrate]                        # how calibrations are fitted (embedjob calibrate, calibration = "auto")
sample = 5000
heldout = 0.2
seed = 0
layers = "job"                     # "job": the granularities' exit layers; "all"; or a list [1, 2, 3]

[index]                            # optional: (re)build vector indexes after each run that changed the table
granularities = ["l6_d64"]         # or "all"
type = "ivf_pq"                    # ivf_pq | ivf_hnsw_sq | ivf_flat
# num_partitions = 256; num_sub_vectors = 8   (default: from the row count and dim)

[gate]                             # optional: a run whose probe quality is below floor does not move latest-good
probes = "probes.jsonl"            # lines {"query": "...", "expected": ["id1", "id2"]}, relative to the job file;
                                   # or "previous": top-k agreement with the latest-good version (sample = 200)
floor = 0.6                        # 0..1; below it the run commits but exits non-zero
# k = 10; granularity = "l6_d384" (default: the richest)

[migrate]                          # mode = "migrate" (or embedjob run --migrate): change the settings in stages
max_rows_per_run = 1000000         # old rows re-embedded per run (default: all that are left)
budget = "2h"                      # or a time budget per run for the old rows (s, m, h, d, w)
keep_old_columns = false           # keep the old vectors as prev_vec_* after the switch

[storage]                          # S3 and S3-compatible stores; keys come from AWS_* env vars
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage import has_control_characters, table_name_problem
from storage.vocab import (
    Backend,
    CalibrateLayerChoice,
    GateMetric,
    IndexType,
    InputFormat,
    ModelDtype,
    OutputMode,
    PoolingName,
    TokenizeChoice,
    VectorDtype,
)

__all__ = [
    "ChunkingSpec",
    "GateSpec",
    "JobSpec",
    "JobSpecError",
    "MigrateSpec",
    "load_job",
    "parse_duration",
    "with_overrides",
]


class JobSpecError(ValueError):
    """The job file is not valid; the message names each bad key or value and what is allowed."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:  # one line: the file, the value and what is allowed
            super().__init__(f"{source}: {self.problems[0]}")
            return
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problems:\n{body}")

    def __reduce__(self):
        return (type(self), (self.source, self.problems))


class _Strict(BaseModel):
    # strict: no string becomes a bool or a number ("yes" is not true); numbers must be finite (TOML has inf, nan)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class InputSpec(_Strict):
    uri: str
    format: InputFormat | None = None
    id_column: str = "id"
    text_column: str = "text"
    columns: list[str] = Field(default_factory=list)


class ModelSpec(_Strict):
    #: a local directory, a bundled model's name ("all-MiniLM-L6-v2") or a Hugging Face id in the local cache
    path: str
    #: fetch a Hugging Face id that is not in the local cache (needs a network)
    download: bool = False
    pooling: PoolingName | None = None
    max_length: int | None = Field(default=None, ge=2, le=1 << 17)
    dtype: ModelDtype = "auto"
    normalize: bool = True
    #: "torch", or "int8": CPU inference through ONNX Runtime with int8 linear layers (``embedder._int8``)
    backend: Backend = "torch"


class OutputSpec(_Strict):
    uri: str
    vector_dtype: VectorDtype = "float32"
    store_text: bool = True
    #: None: "incremental" once the table exists, else "create"
    mode: OutputMode | None = None
    delete_missing: bool = True
    #: the most of the table's rows one run may delete (ids gone from the input); an empty input counts as
    #: deleting every row. Above it the run fails before its commit (``embedjob run --allow-deletes`` allows once)
    max_delete_fraction: float = Field(default=0.10, ge=0.0, le=1.0)
    #: create / overwrite: an input with no rows makes an empty table only when this is true
    allow_empty: bool = False
    max_reject_fraction: float = Field(default=0.01, ge=0.0, le=1.0)

    @field_validator("uri")
    @classmethod
    def _lance_suffix(cls, value: str) -> str:
        value = value.rstrip("/")
        value = value if value.endswith(".lance") else value + ".lance"
        problem = table_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value


#: ``[cluster] in_process_below``'s default: below this many rows to embed, a night without Ray was faster
IN_PROCESS_BELOW = 1000


class ClusterSpec(_Strict):
    address: str | None = None
    #: checked against the cluster when the pool is planned (before any work): CPU actors <= CPUs,
    #: GPU actors x gpus_per_actor <= GPUs
    actors: int | None = Field(default=None, ge=1, le=100_000)
    gpus_per_actor: float | None = Field(default=None, ge=0, le=64)
    cpus_per_actor: float | None = Field(default=None, gt=0, le=1024)
    batch_tokens: int | None = Field(default=None, ge=16, le=1 << 22)
    rows_per_block: int | None = Field(default=None, ge=1, le=1 << 20)
    #: where texts are tokenized: "tasks" (CPU tasks, so a GPU never waits for the tokenizer), "actor", or
    #: "auto" (tasks on GPU actors, actor on CPU-only pools)
    tokenize: TokenizeChoice = "auto"
    #: rows per staged part (one write task, one set of fragments); a killed run redoes at most the parts
    #: in flight. Larger parts make fewer, larger fragments.
    rows_per_part: int = Field(default=16384, ge=1, le=1 << 24)
    #: a run with fewer rows than this to embed (a night's new + changed, a chunked table's documents; a create's,
    #: overwrite's or append's input rows) runs in the driver's process, without Ray, when no cluster is given (no
    #: ``address``, no RAY_ADDRESS); so does any run where the embedded pool would be one CPU actor
    #: (``cluster.one_encoder_here``); 0: never. The default is the break-even bench/incremental.py measured (pool
    #: vs in-process, see bench/RESULTS.md)
    in_process_below: int = Field(default=IN_PROCESS_BELOW, ge=0, le=1 << 24)


class ChunkingSpec(_Strict):
    #: tokens per chunk; None: the model's max_length less its special tokens (checked against it)
    tokens: int | None = Field(default=None, ge=8, le=1 << 17)
    #: tokens repeated from the chunk before; None: tokens // 8
    overlap: int | None = Field(default=None, ge=0, le=1 << 17)
    sentences: bool = False


class CalibrateSpec(_Strict):
    sample: int = Field(default=5000, ge=16, le=10_000_000)
    heldout: float = Field(default=0.2, gt=0.0, lt=0.9)
    seed: int = 0
    layers: CalibrateLayerChoice | list[int] = "job"


class IndexSpec(_Strict):
    granularities: Literal["all"] | list[str]
    type: IndexType = "ivf_pq"
    num_partitions: int | None = Field(default=None, ge=1, le=1 << 20)
    num_sub_vectors: int | None = Field(default=None, ge=1, le=4096)


#: ``[gate] probes``: agreement with the table's ``latest-good`` version instead of a probe file
PREVIOUS = "previous"


class GateSpec(_Strict):
    """A quality gate: ``metric`` at ``k`` on the committed version, against ``floor``."""

    #: a JSON-lines file of probes, {"query": "...", "expected": ["id", ...]} (relative: to the job file), or
    #: "previous": agreement with the ``latest-good`` version, over ``sample`` of its rows
    probes: str = Field(min_length=1)
    floor: float = Field(ge=0.0, le=1.0)
    k: int = Field(default=10, ge=1, le=10_000)
    #: None: "recall" for a probe file, "overlap" for "previous" (the only metric each has)
    metric: GateMetric | None = None
    #: None: the table's richest granularity
    granularity: str | None = None
    #: "previous": how many of the previous version's rows are compared (the first in a seeded shuffle)
    sample: int = Field(default=200, ge=1, le=100_000)

    @model_validator(mode="after")
    def _metric_fits_probes(self) -> GateSpec:
        fits = "overlap" if self.probes == PREVIOUS else "recall"
        if self.metric is None:
            object.__setattr__(self, "metric", fits)
        elif self.metric != fits:
            what = "'previous'" if self.probes == PREVIOUS else "a probe file"
            raise ValueError(f"metric {self.metric!r} does not fit probes = {what}, which measures {fits!r}")
        return self


def parse_duration(text: str, example: str = "2h") -> timedelta:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"1w"``: a number and a unit; ValueError naming the value
    and the allowed forms (with ``example``) otherwise."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    value, unit = text.strip()[:-1], text.strip()[-1:]
    try:
        if unit not in units:
            raise ValueError
        duration = timedelta(**{units[unit]: float(value)})
    except (ValueError, OverflowError):
        raise ValueError(
            f"{text!r} is not a duration: expected a number and a unit (s, m, h, d, w), e.g. {example}"
        ) from None
    if duration.total_seconds() <= 0:
        raise ValueError(f"{text!r}: a duration must be above zero")
    return duration


class MigrateSpec(_Strict):
    """``[migrate]``: how much of a staged migration (``mode = "migrate"``) one run does."""

    #: the most old rows (a chunked table's: documents) one run re-embeds with the new settings; None: no limit
    max_rows_per_run: int | None = Field(default=None, ge=1)
    #: the time one run spends taking old rows, e.g. "2h" (rows already taken when it runs out are finished)
    budget: str | None = None
    #: keep the old vectors as ``prev_vec_*`` columns after the switch (default: dropped)
    keep_old_columns: bool = False

    @field_validator("budget")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def budget_s(self) -> float | None:
        return parse_duration(self.budget).total_seconds() if self.budget else None


class StorageSpec(_Strict):
    endpoint: str | None = None
    region: str | None = None
    allow_http: bool | None = None


class JobSpec(_Strict):
    """A validated job file; ``model_dump()`` round-trips through ``parse_job`` (run records keep it)."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    input: InputSpec
    model: ModelSpec
    granularities: str | list[str | list[int]]
    calibration: str | None = None
    output: OutputSpec
    cluster: ClusterSpec = ClusterSpec()
    chunking: ChunkingSpec | None = None
    calibrate: CalibrateSpec = CalibrateSpec()
    index: IndexSpec | None = None
    gate: GateSpec | None = None
    migrate: MigrateSpec = MigrateSpec()
    storage: StorageSpec = StorageSpec()

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        if value is not None and has_control_characters(value):
            raise ValueError("must not hold control characters (newlines, tabs, escapes)")
        return value

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "none", "off"):
            return None
        if value.strip().lower() == "auto":
            return "auto"
        if not value.endswith(".safetensors"):
            raise ValueError(f"must be 'auto', 'none' or a calibration file ending in .safetensors, got {value!r}")
        return value


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a job file. Relative local paths are taken relative to the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobSpecError(str(path), ["job file does not exist"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise JobSpecError(str(path), [f"not valid TOML: {exc}"]) from None
    _set_dotted(data, overrides)
    _anchor_paths(data, path.resolve().parent)
    return parse_job(data, source=str(path))


def with_overrides(spec: JobSpec, overrides: dict[str, Any] | None, *, source: str = "job") -> JobSpec:
    """``spec`` with ``overrides`` (dotted keys, as ``load_job`` takes them) applied and checked again."""
    if not overrides:
        return spec
    data = spec.model_dump()
    _set_dotted(data, overrides)
    return parse_job(data, source=source)


def _set_dotted(data: dict[str, Any], overrides: dict[str, Any] | None) -> None:
    """Set ``{"section.key": value}`` overrides in a job's raw data, in place (a missing section is made)."""
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        target = data.setdefault(section, {}) if section else data
        if target is None:  # an optional section the spec leaves out ([index], [chunking])
            target = data[section] = {}
        target[key] = value


def anchored(spec: JobSpec, base: Path) -> JobSpec:
    """``spec`` with its relative local paths (input, output, a model dir, a calibration file) made absolute
    against ``base``, as a job file's are against its folder: Ray's workers do not share the driver's working
    directory (a notebook that started Ray and then changed directory, a cluster's nodes)."""
    data = spec.model_dump()
    return parse_job(data) if _anchor_paths(data, base) else spec


def _anchor_paths(data: dict[str, Any], base: Path) -> bool:
    """Make the job's relative local paths absolute against ``base``, in place; True when one changed."""
    changed = False
    for section, key in (
        ("input", "uri"),
        ("output", "uri"),
        ("model", "path"),
        ("", "calibration"),
        ("gate", "probes"),
    ):
        where = data if not section else data.get(section)
        value = where.get(key) if isinstance(where, dict) else None
        if not isinstance(value, str) or "://" in value or Path(value).expanduser().is_absolute():
            continue
        if key == "path" and not value.startswith(".") and not (base / value).exists():
            continue  # a model's name ("all-MiniLM-L6-v2", "org/name"), not a path next to the job file
        if key == "calibration" and not value.endswith(".safetensors"):
            continue  # "auto" / "none", not a path
        if key == "probes" and value == PREVIOUS:
            continue  # agreement with the table's latest-good version, not a file
        where[key] = str(base / value)
        changed = True
    return changed


def parse_job(data: dict[str, Any], *, source: str = "job") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            text = _describe(err)
            head, sep, msg = text.partition(": ")
            # a union (e.g. granularities: string or list) fails once per member: say it once
            if sep and problems and problems[-1].startswith(head + ": "):
                problems[-1] += f", or {msg[0].lower()}{msg[1:]}"
            else:
                problems.append(text)
        raise JobSpecError(source, problems) from None


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "": JobSpec,
    "input": InputSpec,
    "model": ModelSpec,
    "output": OutputSpec,
    "cluster": ClusterSpec,
    "chunking": ChunkingSpec,
    "calibrate": CalibrateSpec,
    "index": IndexSpec,
    "gate": GateSpec,
    "storage": StorageSpec,
}


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    # pydantic adds the union member's type name to the location; drop it for readability
    loc = [p for p in loc if not p.startswith(("list[", "str", "int"))]
    where = ".".join(loc) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        section = ".".join(loc[:-1])
        model = _SECTION_MODELS.get(section)
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"unknown key '{where}'; allowed in [{section or 'top level'}]: {allowed}"
    if kind == "missing":
        return f"missing required key '{where}'"
    value = err.get("input")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where} = {value!r}: {msg}"
