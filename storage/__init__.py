"""The Lance side: output schema and provenance, fragment writes and the one
commit per run, opening tables for queries. Knows nothing about Ray.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

# Lance's index statistics leave out the IVF centroids (large, and unused here) when this is false, its future
# default; unset, reading them warns that the default will change (`inspect` printed it). Lance reads it when a
# dataset is opened, so it is set here, with the package, before any is (its modules are imported lazily)
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")

#: each public name by the private module that defines it: a name's module is imported on first use
#: (PEP 562), so that a process needing one part (a Ray worker running the id registry or a write task)
#: does not import the rest (torch, transformers) through this package
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_backfill": ("backfill_fragment", "commit_new_columns", "fragment_ids"),
    "_calibrations": (
        "calibration_dir",
        "calibration_uri",
        "list_calibrations",
        "load_calibration",
        "save_calibration",
    ),
    "_changes": ("commit_changes", "read_hashes"),
    "_compat": (
        "DEFAULT_COMPAT_SAMPLE",
        "FIT_MAP_COMMAND",
        "compat_dir",
        "compat_space",
        "compat_uri",
        "find_compat_maps",
        "fit_compat_maps",
        "list_compat_maps",
        "load_compat_maps",
        "save_compat_maps",
    ),
    "_funnel": ("FunnelStage", "parse_stages"),
    "_gc": ("GcReport", "collect_garbage"),
    "_index": ("MIN_INDEX_ROWS", "IndexParams", "IndexReport", "VectorIndexError", "build_index", "index_params"),
    "_lance_io": (
        "TableMovedError",
        "append_rows",
        "commit",
        "commit_message",
        "committed_by",
        "count_rows",
        "dataset_schema",
        "dataset_version",
        "read_provenance",
        "read_rows",
        "sibling_uri",
        "table_exists",
        "write_fragments",
    ),
    "_lock": ("LockLost", "LockStoreWarning", "TableLock", "TableLocked"),
    "_messages": ("drop_source_locations", "error_line"),
    "_migration": (
        "MIGRATION_KEY",
        "MigrationError",
        "MigrationState",
        "abort_migration",
        "begin_migration",
        "migrated_rows",
        "next_column",
        "next_fields",
        "old_vectors",
        "read_migration",
        "switch_migration",
        "unmigrated_keys",
        "unmigrated_rows",
    ),
    "_migration_search": ("MIGRATED", "NewModelSearch"),
    "_names": ("has_control_characters", "split_table_uri", "table_name_problem"),
    "_process": ("process_alive", "process_start_ticks"),
    "_provenance": ("METADATA_KEY", "Provenance"),
    "_runs": ("RUNS_SCHEMA", "VERSION", "RunRecord", "record_run"),
    "_s3": ("ObjectStore", "StoreError", "check_store"),
    "_sample": ("NoStoredTextError", "sample_texts"),
    "_schema": (
        "BOOKKEEPING_COLUMNS",
        "CHAR_END",
        "CHAR_START",
        "CHUNK",
        "CHUNK_COLUMNS",
        "CONTENT_HASH",
        "DOC_ID",
        "EMBEDDED_AT",
        "ID",
        "NEXT_PREFIX",
        "PREV_PREFIX",
        "REJECTS_SCHEMA",
        "RESERVED_COLUMNS",
        "RUN_ID",
        "TEXT",
        "TEXT_TYPES",
        "VECTOR_DTYPES",
        "VECTOR_PREFIX",
        "chunk_id",
        "chunk_ordinal",
        "content_hash",
        "holds_vectors",
        "is_reserved_column",
        "is_vector_column",
        "output_schema",
        "vector_array",
        "vector_column",
        "vector_field",
    ),
    "_staging": (
        "AFTER_COMMIT",
        "RunIdError",
        "RunStaging",
        "RunStatus",
        "StagedPart",
        "StagingRecord",
        "is_run_id",
        "new_run_id",
        "rows_per_node",
        "staged_runs",
        "staging_dir",
    ),
    "_table": ("EmbeddingTable", "TableNotFoundError", "open_table"),
    "_tags": (
        "LATEST_GOOD",
        "RollbackError",
        "RollbackReport",
        "TagError",
        "move_latest_good",
        "rollback_table",
        "run_tag",
        "table_tags",
        "tag_run",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
