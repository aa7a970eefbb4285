"""Searching a migrating table with the new model alone.

While a table migrates, its migrated rows have the new settings' vectors (``next_vec_*``) and the others only the
old ones (``vec_*``). A query embedded with the new model (the migration's ``to`` provenance: its model, pooling,
max_length and calibration, read from next to the table) searches

* the migrated rows' ``next_vec_X`` column as it is (prefilter ``next_vec_X IS NOT NULL``);
* the other rows' old ``vec_Y`` column through the compatibility map new ``X`` -> old ``Y``
  (prefilter ``next_vec_X IS NULL``), the mapped query re-normalized;

and the two lists are merged on one scale: the old column's cosines are put on the new column's scale by the
map's linear equating (:meth:`embedder.CompatMaps.scores_to_new`: the mean and spread of the cosines a mapped
vector gets from other rows' old vectors, matched to the new vectors' own, both measured on held-out rows when the
map was fitted). The old model is never run: it can be retired before the migration ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from embedder import (
    Calibration,
    CalibrationError,
    CompatMaps,
    Granularity,
    GranularityError,
    ModelError,
)

if TYPE_CHECKING:
    from embedder import ElasticEncoder

from ._calibrations import calibration_uri, load_calibration
from ._compat import FIT_MAP_COMMAND, find_compat_maps, richest
from ._migration import MigrationError, MigrationState, next_column
from ._provenance import Provenance
from ._schema import vector_column

__all__ = ["MIGRATED", "NewModelSearch", "encoder_for", "table_calibration"]

#: the result column that says which vectors a hit was scored on: the new ones (True) or the old ones via a map
MIGRATED = "migrated"

#: (query vector, column, limit, columns, where) -> hits with ``score`` and ``_distance``
Nearest = Callable[[np.ndarray, str, int, Sequence[str], "str | None"], pa.Table]


def table_calibration(
    table_uri: str, fingerprint: str | None, storage_options: Mapping[str, str] | None, what: str
) -> Calibration | None:
    """The calibration ``fingerprint`` stored next to the table (None for none); ``what`` says whose it is."""
    if not fingerprint:
        return None
    try:
        return load_calibration(calibration_uri(table_uri, fingerprint), storage_options=storage_options)
    except CalibrationError as exc:
        raise CalibrationError(
            f"{what} of table {table_uri!r} uses calibration {fingerprint}, which cannot be loaded ({exc}); "
            f"queries would not go through the same maps as its vectors"
        ) from None


def encoder_for(provenance: Provenance, calibration: Calibration | None) -> ElasticEncoder:
    """An encoder that embeds queries as ``provenance``'s vectors were made, at every one of its granularities;
    refused when the model's weights changed since."""
    from embedder import ElasticEncoder  # here: torch is imported when a query is embedded, not with the table

    enc = ElasticEncoder.from_pretrained(
        provenance.model_path,
        list(provenance.granularities),
        pooling=provenance.pooling,
        normalize=provenance.normalize,
        max_length=provenance.max_length,
        calibration=calibration,
        backend=provenance.backend,
    )
    if enc.fingerprint != provenance.weights_fingerprint:
        raise ModelError(
            provenance.model_path,
            f"its weights are now {enc.fingerprint}, but the vectors were embedded with "
            f"{provenance.weights_fingerprint}; query vectors would not be comparable",
        )
    return enc


@dataclass(frozen=True, eq=False)
class NewModelSearch:
    """A migrating table's new-model search: the migration, the table's old settings and the maps."""

    table_uri: str
    old: Provenance
    state: MigrationState
    maps: CompatMaps

    @classmethod
    def of(
        cls, table_uri: str, old: Provenance, state: MigrationState | None, storage_options: Mapping[str, str] | None
    ) -> NewModelSearch:
        """Refused, saying why and what to do, for a table that is not migrating or has no map fitted yet."""
        if state is None:
            raise MigrationError(
                f"table {table_uri!r} is not migrating: model='new' searches a migration's new vectors; "
                f"search with the table's own model (model='old', the default)"
            )
        maps = find_compat_maps(table_uri, old, state.to, storage_options=storage_options)
        if maps is None:
            raise MigrationError(
                f"table {table_uri!r} has no compatibility map between its settings and its migration's yet: "
                f"fit one with `{FIT_MAP_COMMAND} {table_uri}` (or storage.fit_compat_maps)"
            )
        return cls(table_uri, old, state, maps)

    @property
    def granularities(self) -> tuple[Granularity, ...]:
        """The migration's (new) granularities."""
        return tuple(Granularity.parse(g) for g in self.state.to.granularities)

    def resolve(
        self, granularity: str | Granularity | None, old_granularity: str | Granularity | None
    ) -> tuple[Granularity, Granularity]:
        """(new, old): ``granularity`` among the migration's (default: the richest that has a map), and the old
        column its query searches through a map (default: the richest old one with a map from it)."""
        mapped = self.maps.pairs
        if granularity is None:
            new = richest(n for _, n in mapped)
        else:
            new = Granularity.parse(granularity)
            if new not in self.granularities:
                raise GranularityError(
                    f"granularity {new} is not in the migration; its new settings have "
                    f"{', '.join(self.state.to.granularities)}"
                )
        olds = [o for o, n in mapped if n == new]
        if old_granularity is None:
            if not olds:
                raise MigrationError(
                    f"the compatibility map {self.maps.fingerprint} has no map from new {new}: fit one with "
                    f"`{FIT_MAP_COMMAND} {self.table_uri}` (it maps every new granularity)"
                )
            return new, richest(olds)
        old = Granularity.parse(old_granularity)
        if str(old) not in self.old.granularities:
            raise GranularityError(
                f"old granularity {old} is not in this table; it has {', '.join(self.old.granularities)}"
            )
        if old not in olds:
            raise MigrationError(
                f"the compatibility map {self.maps.fingerprint} has no map from new {new} to old {old}: fit one with "
                f"`{FIT_MAP_COMMAND} {self.table_uri} --old {old}`"
            )
        return new, old

    def hits(
        self,
        nearest: Nearest,
        query: np.ndarray,
        new: Granularity,
        old: Granularity,
        limit: int,
        columns: Sequence[str],
        where: str | None,
    ) -> pa.Table:
        """The ``limit`` best rows for the new-model ``query`` at ``new``: migrated rows scored on their new
        vectors, the others on their ``old`` vectors through the map, merged best first on the new scale."""
        nxt = next_column(new)
        migrated = nearest(query, nxt, limit, columns, _both(where, f"{nxt} IS NOT NULL"))
        mapped = self.maps.to_old_space(query, new=new, old=old)
        rest = nearest(mapped, vector_column(str(old)), limit, columns, _both(where, f"{nxt} IS NULL"))
        rest = rest.set_column(
            rest.schema.get_field_index("score"),
            "score",
            pa.array(self.maps.scores_to_new(rest["score"].to_numpy(), old=old, new=new), pa.float32()),
        )
        merged = pa.concat_tables(
            [
                migrated.append_column(MIGRATED, pa.array([True] * migrated.num_rows, pa.bool_())),
                rest.append_column(MIGRATED, pa.array([False] * rest.num_rows, pa.bool_())),
            ]
        )
        order = pa.compute.sort_indices(merged, sort_keys=[("score", "descending")])
        return merged.take(order).slice(0, limit)


def _both(where: str | None, condition: str) -> str:
    return condition if not where else f"({where}) AND {condition}"
