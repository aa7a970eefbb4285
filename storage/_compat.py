"""Compatibility maps of a migrating table, fitted on its migrated rows and kept next to it.

A migrated row has both vectors: the old settings' (``vec_*``) and the new ones' (``next_vec_*``), so fitting a
map runs no model. :func:`fit_compat_maps` reads a sample of those rows fragment by fragment (a fragment's share
of the sample at a time, never the table), sums :class:`embedder.CompatStats` per fragment, solves once, measures
the maps on held-out rows and stores them as ``<table stem>_compat/<fingerprint>.safetensors`` (plus a readable
``.json``), local or ``s3://``. Content-addressed like calibrations: a refit never overwrites a file, and
:func:`find_compat_maps` picks the newest one fitted between the table's settings and its migration's, so a
query finds it with no pointer in the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from embedder import (
    DEFAULT_ALPHAS,
    CompatMapError,
    CompatMaps,
    CompatSpace,
    CompatStats,
    Granularity,
    GranularityError,
    heldout_mask,
)

from ._files import list_addressed, read_addressed, save_addressed, table_stem
from ._lance_io import dataset_at
from ._migration import MigrationError, MigrationState, next_column, read_migration
from ._provenance import METADATA_KEY, Provenance
from ._schema import ID, vector_column

__all__ = [
    "DEFAULT_COMPAT_SAMPLE",
    "FIT_MAP_COMMAND",
    "compat_dir",
    "compat_space",
    "compat_uri",
    "find_compat_maps",
    "fit_compat_maps",
    "list_compat_maps",
    "load_compat_maps",
    "richest",
    "save_compat_maps",
]

_SUFFIX = ".safetensors"
#: migrated rows a fit reads by default
DEFAULT_COMPAT_SAMPLE = 20_000
#: held-out rows whose vectors are kept to measure the maps (cosines, nearest neighbour, score scales)
CHECK_ROWS = 1_000
#: what fits a table's maps, for messages that say how to get one
FIT_MAP_COMMAND = "embedjob migrate fit-map"


def compat_dir(table_uri: str) -> str:
    """``out/articles.lance`` -> ``out/articles_compat``."""
    return f"{table_stem(table_uri)}_compat"


def compat_uri(table_uri: str, fingerprint: str) -> str:
    return f"{compat_dir(table_uri)}/{fingerprint}{_SUFFIX}"


def compat_space(provenance: Provenance) -> CompatSpace:
    """One side of a map, described by the provenance of its vectors."""
    return CompatSpace(
        settings=provenance.settings_fingerprint,
        weights_fingerprint=provenance.weights_fingerprint,
        calibration=provenance.calibration,
        model_path=provenance.model_path,
        normalize=provenance.normalize,
        granularities=provenance.granularities,
    )


def save_compat_maps(table_uri: str, maps: CompatMaps, *, storage_options: Mapping[str, str] | None = None) -> str:
    """Write the maps (and their readable ``.json``) next to the table; returns their URI. Idempotent."""
    readable = (json.dumps(maps.describe(), indent=2) + "\n").encode()
    return save_addressed(compat_uri(table_uri, maps.fingerprint), maps.to_bytes(), readable, storage_options)


def load_compat_maps(uri: str, *, storage_options: Mapping[str, str] | None = None) -> CompatMaps:
    """Read a compatibility map file (local or ``s3://``)."""
    data = read_addressed(uri, "compatibility map", CompatMapError, storage_options)
    return CompatMaps.from_bytes(data, source=uri)


def list_compat_maps(table_uri: str, *, storage_options: Mapping[str, str] | None = None) -> list[CompatMaps]:
    """Every compatibility map file next to the table, newest first; unreadable files are skipped."""

    def load(uri: str) -> CompatMaps:
        return load_compat_maps(uri, storage_options=storage_options)

    return list_addressed(compat_dir(table_uri), _SUFFIX, load, CompatMapError, storage_options)


def find_compat_maps(
    table_uri: str, old: Provenance, new: Provenance, *, storage_options: Mapping[str, str] | None = None
) -> CompatMaps | None:
    """The newest maps fitted between the spaces of ``old`` and ``new``; None when there are none."""
    want = (old.settings_fingerprint, new.settings_fingerprint)
    for maps in list_compat_maps(table_uri, storage_options=storage_options):
        if (maps.info.old.settings, maps.info.new.settings) == want:
            return maps
    return None


def _chosen(
    names: Iterable[str | Granularity] | None, allowed: Sequence[str], default: Sequence[str], side: str
) -> tuple[Granularity, ...]:
    grans = [Granularity.parse(g) for g in (default if names is None else names)]
    bad = [str(g) for g in grans if str(g) not in allowed]
    if bad or not grans:
        raise GranularityError(
            f"{side} granularity {', '.join(bad) or '(none)'} is not in the migration; the {side} settings have "
            f"{', '.join(allowed)}"
        )
    return tuple(sorted(set(grans)))


def richest(granularities: Iterable[str | Granularity]) -> Granularity:
    """The deepest, then widest granularity: what a search uses by default."""
    return max((Granularity.parse(g) for g in granularities), key=lambda g: (g.layer, g.dim))


def fit_compat_maps(
    table_uri: str,
    *,
    old: Iterable[str | Granularity] | None = None,
    new: Iterable[str | Granularity] | None = None,
    sample: int = DEFAULT_COMPAT_SAMPLE,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    version: int | None = None,
    storage_options: Mapping[str, str] | None = None,
    save: bool = True,
) -> CompatMaps:
    """Fit the maps between a migrating table's old and new granularities on up to ``sample`` of its migrated
    rows, measure them on held-out rows and store them next to the table (unless ``save`` is False).

    ``old``: the old granularities a new-model query may search through a map (default: the richest, what a
    search uses by default); ``new``: the new granularities mapped (default: all the migration's). Each fragment
    gives its share of the sample (its first migrated rows); ``heldout_fraction`` of the rows, chosen by a hash
    of their id and ``seed``, are held out to choose each map's ridge strength and to measure it.

    >>> maps = fit_compat_maps("out/articles.lance", sample=50_000)   # doctest: +SKIP
    >>> maps.check("l6_d384", "l6_d256").to_old_cosine                # doctest: +SKIP
    0.97
    """
    if sample < 12:
        raise ValueError(f"sample must be at least 12 rows (8 to fit, 4 held out), got {sample}")
    ds = dataset_at(table_uri, version, storage_options)
    state, prov = _migration_of(table_uri, ds, storage_options)
    old_g = _chosen(old, prov.granularities, [str(richest(prov.granularities))], "old")
    new_g = _chosen(new, state.to.granularities, state.to.granularities, "new")
    columns = {("old", g): vector_column(str(g)) for g in old_g} | {("new", g): next_column(g) for g in new_g}
    where = " AND ".join(f"{c} IS NOT NULL" for c in columns.values())
    migrated = ds.count_rows(filter=where)
    if migrated < 12:
        raise MigrationError(
            f"table {table_uri!r} has {migrated:,} migrated rows (with old and new vectors); a compatibility map "
            f"needs at least 12: migrate more rows first"
        )
    reader = _SampleReader(old_g, new_g, columns, heldout_fraction, seed)
    rate = min(1.0, sample / migrated)
    for fragment in ds.get_fragments():
        rows = fragment.count_rows(where)
        if rows:
            reader.read(ds, fragment, [ID, *columns.values()], where, math.ceil(rows * rate))
    maps = reader.stats.solve(
        old_space=compat_space(prov),
        new_space=compat_space(state.to),
        source=f"{table_uri} version {ds.version}: {reader.stats.rows:,} of {migrated:,} migrated rows",
        seed=seed,
        alphas=alphas,
    )
    if reader.check_rows >= 2:
        maps = maps.checked(*reader.check_vectors())
    if save:
        save_compat_maps(table_uri, maps, storage_options=storage_options)
    return maps


def _migration_of(
    table_uri: str, ds: lance.LanceDataset, storage_options: Mapping[str, str] | None
) -> tuple[MigrationState, Provenance]:
    state = read_migration(table_uri, ds.version, storage_options)
    if state is None:
        raise MigrationError(
            f"table {table_uri!r} is not migrating (version {ds.version}): a compatibility map is fitted between "
            f"the settings of a migration in progress and the table's"
        )
    raw = (ds.schema.metadata or {}).get(METADATA_KEY)
    if not raw:
        raise MigrationError(f"{table_uri!r} was not written by embedjob (no provenance)")
    return state, Provenance.from_json(raw)


def _vectors(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


class _SampleReader:
    """Sums a fragment's sampled rows into the stats (one shard per fragment) and keeps the first held-out
    rows' vectors for the checks."""

    def __init__(
        self,
        old: tuple[Granularity, ...],
        new: tuple[Granularity, ...],
        columns: dict[tuple[str, Granularity], str],
        fraction: float,
        seed: int,
    ) -> None:
        self.old, self.new, self.columns = old, new, columns
        self.fraction, self.seed = fraction, seed
        self.stats = CompatStats.empty(old=old, new=new)
        self.kept: dict[tuple[str, Granularity], list[np.ndarray]] = {k: [] for k in columns}
        self.check_rows = 0

    def read(self, ds: lance.LanceDataset, fragment: Any, columns: list[str], where: str, limit: int) -> None:
        shard = CompatStats.empty(old=self.old, new=self.new)
        scanner = ds.scanner(columns=columns, filter=where, fragments=[fragment], limit=limit, batch_size=4096)
        for batch in scanner.to_batches():
            if not batch.num_rows:
                continue
            vecs = {k: _vectors(batch.column(c), k[1].dim) for k, c in self.columns.items()}
            mask = heldout_mask(batch.column(0).to_pylist(), self.fraction, self.seed)
            shard.add(
                {g: v for (side, g), v in vecs.items() if side == "old"},
                {g: v for (side, g), v in vecs.items() if side == "new"},
                mask,
            )
            take = np.flatnonzero(mask)[: max(CHECK_ROWS - self.check_rows, 0)]
            if len(take):
                for k, v in vecs.items():
                    self.kept[k].append(v[take].astype(np.float32))
                self.check_rows += len(take)
        self.stats = self.stats + shard

    def check_vectors(self) -> tuple[dict[Granularity, np.ndarray], dict[Granularity, np.ndarray]]:
        joined = {k: np.concatenate(v) for k, v in self.kept.items()}
        return (
            {g: v for (side, g), v in joined.items() if side == "old"},
            {g: v for (side, g), v in joined.items() if side == "new"},
        )
