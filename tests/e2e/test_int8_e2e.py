"""``[model] backend = "int8"`` through a real job: the Ray pool runs the int8 graph, the table's provenance
records the backend, its queries are embedded the same way, and a change of backend is a change of settings."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.corpora import passages
from embedder import ElasticEncoder, Granularity
from jobs import JobSpecError, run_job
from storage import open_table

from ..jobfiles import write_job

pytest.importorskip("onnxruntime")

GRANS = ["l2_d32", "l4_d64"]


def test_an_int8_job_records_its_backend_and_a_change_of_backend_is_a_settings_change(
    ray_local, _tiny_models, tmp_path
):
    model = tmp_path / "model"
    shutil.copytree(_tiny_models["bert"], model)  # its own folder: the int8 graph is cached next to it
    texts = passages(40, words=20)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), tmp_path / "docs.parquet")
    out = tmp_path / "out" / "docs.lance"

    def job(backend: str | None):
        return write_job(
            tmp_path / "job.toml",
            granularities=GRANS,
            input={"uri": str(tmp_path / "docs.parquet")},
            model={"path": str(model), **({"backend": backend} if backend else {})},
            output={"uri": str(out)},
            cluster={"rows_per_block": 20},
        )

    summary = run_job(job("int8"), progress=False)
    assert summary.rows_new == len(texts)
    assert list((model / ".embedjob" / "int8").glob("*.onnx")), "the actors' int8 graph is cached next to the model"
    table = open_table(str(out))
    assert table.provenance.backend == "int8"
    assert table.encoder.config.backend == "int8"  # queries are embedded as the rows were

    # the pool's vectors are the int8 encoder's (dynamic activation scales: a batch's rows share one scale, so
    # other batch neighbours move them a little) and within the backend's bounds of float32
    rows = table.to_arrow(columns=["id", "vec_l4_d64"])
    order = np.argsort([int(i[1:]) for i in rows.column("id").to_pylist()])
    stored = np.stack(rows.column("vec_l4_d64").to_numpy(zero_copy_only=False))[order]
    here = ElasticEncoder.from_pretrained(model, GRANS, backend="int8").encode(texts)[Granularity(4, 64)]
    fp32 = ElasticEncoder.from_pretrained(model, GRANS).encode(texts)[Granularity(4, 64)]
    assert (stored * here).sum(axis=1).min() >= 0.999
    assert (stored * fp32).sum(axis=1).min() >= 0.98
    hits = table.search(texts[7], granularity="l4_d64", k=1)
    assert hits.column("id").to_pylist() == ["d7"]

    # the same job on torch is another config: refused (vectors would mix), with the difference named
    with pytest.raises(JobSpecError, match=r"backend: int8 -> torch"):
        run_job(job(None), progress=False)
