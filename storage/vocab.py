"""Every closed set of names a job file, the CLI or a table uses, defined once; and the output-mode rules.

Each set is a ``Literal`` type (what the job spec validates against, so its
messages list the allowed values) and a tuple derived from it (what code
checks membership against and names in its own messages). The sets the
encoder itself needs (poolings, model dtypes) live in ``embedder``, which
cannot import storage, and are re-exported here: import them from here.

The output mode a run uses is decided by :func:`resolve_mode` (the job's
mode and whether the table is there), and what a mode does to the table is
asked of the predicates below it, rather than spelled as a tuple of modes.

>>> resolve_mode(None, table_exists=True)
'incremental'
>>> replaces_table(resolve_mode("append", table_exists=False))
True
"""

from __future__ import annotations

from typing import Literal, get_args

from embedder import BACKENDS, MODEL_DTYPES, POOLINGS, Backend, ModelDtype, PoolingName

__all__ = [
    "BACKENDS",
    "CALIBRATE_LAYER_CHOICES",
    "GATE_METRICS",
    "INDEX_TYPES",
    "INPUT_FORMATS",
    "MODEL_DTYPES",
    "OUTPUT_MODES",
    "POOLINGS",
    "QUERY_MODELS",
    "TOKENIZE_CHOICES",
    "VECTOR_DTYPE_NAMES",
    "Backend",
    "CalibrateLayerChoice",
    "GateMetric",
    "IndexType",
    "InputFormat",
    "ModelDtype",
    "OutputMode",
    "PoolingName",
    "QueryModel",
    "TokenizeChoice",
    "VectorDtype",
    "keeps_existing_rows",
    "migrates",
    "replaces_table",
    "resolve_mode",
    "updates_rows",
]

#: how a run writes its table: ``create`` a new one, ``overwrite`` it (one new version), ``append`` rows with
#: new ids, ``incremental``: embed new and changed rows, delete rows whose ids left the input, or ``migrate``:
#: incremental, and a slice of the old rows re-embedded with the job's new settings (a staged migration)
OutputMode = Literal["create", "overwrite", "append", "incremental", "migrate"]
OUTPUT_MODES: tuple[str, ...] = get_args(OutputMode)

#: the input file formats (``[input] format``; by default from the suffix)
InputFormat = Literal["parquet", "jsonl", "csv", "lance"]
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)

#: the vector index types (``[index] type``, ``embedjob index --type``)
IndexType = Literal["ivf_pq", "ivf_hnsw_sq", "ivf_flat"]
INDEX_TYPES: tuple[str, ...] = get_args(IndexType)

#: how the output stores its vectors (``[output] vector_dtype``)
VectorDtype = Literal["float16", "float32"]
VECTOR_DTYPE_NAMES: tuple[str, ...] = get_args(VectorDtype)

#: where texts are tokenized (``[cluster] tokenize``): "tasks" (CPU tasks), "actor" (inside the encoder actor),
#: or "auto" (tasks on GPU actors, actor on CPU-only pools)
TokenizeChoice = Literal["auto", "actor", "tasks"]
TOKENIZE_CHOICES: tuple[str, ...] = get_args(TokenizeChoice)

#: the exit layers a calibration fits maps for (``[calibrate] layers``), besides a list of layers: "job" (the
#: granularities' exit layers) or "all"
CalibrateLayerChoice = Literal["job", "all"]
CALIBRATE_LAYER_CHOICES: tuple[str, ...] = get_args(CalibrateLayerChoice)

#: what a quality gate measures (``[gate] metric``): "recall", the share of a probe's expected ids in its top k
#: (a probe file); "overlap", the share of a sampled row's top k that the previous good version had too
GateMetric = Literal["recall", "overlap"]
GATE_METRICS: tuple[str, ...] = get_args(GateMetric)

#: which settings embed a search's query: the table's own ("old"), or, while the table migrates, the
#: migration's ("new": rows not migrated yet are searched through the compatibility map)
QueryModel = Literal["old", "new"]
QUERY_MODELS: tuple[str, ...] = get_args(QueryModel)


def resolve_mode(requested: OutputMode | None, table_exists: bool) -> OutputMode:
    """The output mode a run uses, from the job's ``[output] mode`` and whether the table is there.

    Unset is "incremental" once the table exists, else "create"; "append" and
    "incremental" with no table yet create it. "create" stays "create" on an
    existing table (the job checks refuse it), and "overwrite" stays itself.
    """
    if requested is None:
        return "incremental" if table_exists else "create"
    if keeps_existing_rows(requested) and not table_exists:
        return "create"
    return requested


def replaces_table(mode: str) -> bool:
    """The run writes a whole table ("create", "overwrite"): nothing of an existing one is kept."""
    return mode in ("create", "overwrite")


def keeps_existing_rows(mode: str) -> bool:
    """The run adds to the table's rows ("append", "incremental", "migrate"): it reads the ids (and hashes)
    there."""
    return mode in ("append", "incremental", "migrate")


def updates_rows(mode: str) -> bool:
    """The run replaces changed rows and deletes rows whose ids left the input ("incremental", "migrate")."""
    return mode in ("incremental", "migrate")


def migrates(mode: str) -> bool:
    """The run is a step of a staged migration ("migrate"): it also re-embeds old rows with new settings."""
    return mode == "migrate"
