"""What every fault test reports: missing, duplicate and wrong-vector counts against the input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from embedder import ElasticEncoder, Granularity
from storage import open_table


@dataclass
class Audit:
    missing: int
    duplicate: int
    extra: int
    wrong_vector: int
    rows: int

    @property
    def clean(self) -> bool:
        return self.missing == self.duplicate == self.extra == self.wrong_vector == 0


def audit_table(uri: str, expected: dict, model_dir, granularity: str = "l2_d32", storage_options=None) -> Audit:
    """Compare the committed table with ``expected`` (id -> text): every id exactly once, and each row's
    vector equal (cos >= 0.999) to the text embedded again here."""
    tbl = open_table(uri, storage_options=storage_options)
    g = Granularity.parse(granularity)
    data = tbl.to_arrow(["id", f"vec_{g}"])
    ids = data.column("id").to_pylist()
    counts = Counter(ids)
    missing = sum(1 for i in expected if i not in counts)
    duplicate = sum(n - 1 for n in counts.values() if n > 1)
    extra = sum(1 for i in counts if i not in expected)
    present = [(k, i) for k, i in enumerate(ids) if i in expected]
    wrong = 0
    if present:
        enc = ElasticEncoder.from_pretrained(model_dir, [g], device="cpu")
        fresh = enc.encode([expected[i] for _, i in present])[g]
        stored = np.asarray(data.column(f"vec_{g}").to_pylist(), dtype=np.float32)[[k for k, _ in present]]
        cos = np.sum(fresh * stored, axis=1)
        wrong = int(np.sum(cos < 0.999))
    return Audit(missing, duplicate, extra, wrong, len(ids))
