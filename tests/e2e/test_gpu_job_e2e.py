"""A real job on a CUDA GPU: GPU actors, tokenized in CPU tasks, vectors as the CPU makes them.

Runs only where torch sees a GPU (`make test-all` on a GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder import ElasticEncoder
from jobs import run_job
from storage import open_table

from ..embedder.reference import row_cosines
from ..jobfiles import write_job

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GRANS = ["l3_d64", "l6_d384"]


def test_job_on_a_gpu_tokenizes_in_tasks_and_matches_cpu(tmp_path, lee_parquet, lee_articles, minilm_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        job = write_job(
            tmp_path / "job.toml",
            granularities=GRANS,
            input={"uri": str(lee_parquet), "id_column": "doc_id", "text_column": "body"},
            model={"path": str(minilm_path)},
            output={"uri": str(tmp_path / "gpu.lance")},
        )
        summary = run_job(job, progress=False)
    finally:
        ray.shutdown()
    assert summary.rows_embedded == 300
    assert "GPU actor" in summary.pool and "tokenizing in the tasks" in summary.pool
    data = open_table(summary.table_uri).to_arrow()
    order = np.argsort(data["id"].to_numpy(zero_copy_only=False))
    cpu = ElasticEncoder.from_pretrained(minilm_path, GRANS, device="cpu").encode(list(lee_articles))
    for g, expected in cpu.items():
        stored = np.stack(data[g.column].to_numpy(zero_copy_only=False))[order]
        assert row_cosines(stored, expected).min() >= 0.99, str(g)
