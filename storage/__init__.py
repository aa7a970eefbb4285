"""The Lance side: output schema and provenance, fragment writes and the one
commit per run, opening tables for queries. Knows nothing about Ray.
"""

from __future__ import annotations

from ._backfill import backfill_fragment, commit_new_columns, fragment_ids
from ._calibrations import (
    calibration_dir,
    calibration_uri,
    list_calibrations,
    load_calibration,
    save_calibration,
)
from ._changes import commit_changes, read_hashes
from ._funnel import FunnelStage, parse_stages
from ._gc import GcReport, collect_garbage
from ._index import MIN_INDEX_ROWS, IndexParams, IndexReport, VectorIndexError, build_index, index_params
from ._lance_io import (
    TableMovedError,
    append_rows,
    commit,
    commit_message,
    committed_by,
    count_rows,
    dataset_schema,
    dataset_version,
    read_provenance,
    read_rows,
    sibling_uri,
    table_exists,
    write_fragments,
)
from ._lock import LockLost, LockStoreWarning, TableLock, TableLocked
from ._messages import drop_source_locations, error_line
from ._names import has_control_characters, split_table_uri, table_name_problem
from ._process import process_alive, process_start_ticks
from ._provenance import METADATA_KEY, Provenance
from ._runs import RUNS_SCHEMA, VERSION, RunRecord
from ._s3 import ObjectStore, StoreError, check_store
from ._sample import NoStoredTextError, sample_texts
from ._schema import REJECTS_SCHEMA, VECTOR_DTYPES, content_hash, output_schema, vector_array, vector_column
from ._staging import (
    AFTER_COMMIT,
    RunIdError,
    RunStaging,
    RunStatus,
    StagedPart,
    StagingRecord,
    is_run_id,
    new_run_id,
    rows_per_node,
    staged_runs,
    staging_dir,
)
from ._table import EmbeddingTable, TableNotFoundError, open_table

__all__ = [
    "AFTER_COMMIT",
    "METADATA_KEY",
    "MIN_INDEX_ROWS",
    "REJECTS_SCHEMA",
    "RUNS_SCHEMA",
    "VECTOR_DTYPES",
    "VERSION",
    "EmbeddingTable",
    "FunnelStage",
    "GcReport",
    "IndexParams",
    "IndexReport",
    "LockLost",
    "LockStoreWarning",
    "NoStoredTextError",
    "ObjectStore",
    "Provenance",
    "RunIdError",
    "RunRecord",
    "RunStaging",
    "RunStatus",
    "StagedPart",
    "StagingRecord",
    "StoreError",
    "TableLock",
    "TableLocked",
    "TableMovedError",
    "TableNotFoundError",
    "VectorIndexError",
    "append_rows",
    "backfill_fragment",
    "build_index",
    "calibration_dir",
    "calibration_uri",
    "check_store",
    "collect_garbage",
    "commit",
    "commit_changes",
    "commit_message",
    "commit_new_columns",
    "committed_by",
    "content_hash",
    "count_rows",
    "dataset_schema",
    "dataset_version",
    "drop_source_locations",
    "error_line",
    "fragment_ids",
    "has_control_characters",
    "index_params",
    "is_run_id",
    "list_calibrations",
    "load_calibration",
    "new_run_id",
    "open_table",
    "output_schema",
    "parse_stages",
    "process_alive",
    "process_start_ticks",
    "read_hashes",
    "read_provenance",
    "read_rows",
    "rows_per_node",
    "sample_texts",
    "save_calibration",
    "sibling_uri",
    "split_table_uri",
    "staged_runs",
    "staging_dir",
    "table_exists",
    "table_name_problem",
    "vector_array",
    "vector_column",
    "write_fragments",
]
