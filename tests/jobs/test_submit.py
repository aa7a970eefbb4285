"""What `embedjob submit` sends: the job as TOML with its paths made absolute, and the entrypoint."""

from __future__ import annotations

import tomllib

from jobs import load_job, parse_job
from jobs.submission import entrypoint, job_text, local_paths

from ..jobfiles import write_job


def test_job_text_round_trips_with_absolute_paths(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(
        """name = "n\u00e4chtlich \\"quoted\\""
granularities = [[2, 32], "l4_d64"]
[input]
uri = "data/docs.parquet"
columns = ["title"]
id_column = "doc id"
[model]
path = "models/tiny"
max_length = 64
[output]
uri = "out/docs"
store_text = false
max_reject_fraction = 0.05
[cluster]
cpus_per_actor = 0.5
"""
    )
    (tmp_path / "models" / "tiny").mkdir(parents=True)  # a model path next to the job file (else: a model's name)
    spec = load_job(job)
    text = job_text(spec)
    data = tomllib.loads(text)
    assert parse_job(data) == spec
    assert data["input"]["uri"] == str(tmp_path / "data/docs.parquet")
    assert data["model"]["path"] == str(tmp_path / "models/tiny")
    assert data["output"]["uri"] == str(tmp_path / "out/docs.lance")
    assert data["name"] == 'nächtlich "quoted"'
    assert "calibrate" not in data and "storage" not in data  # only what the user set
    assert local_paths(spec) == [data["input"]["uri"], data["model"]["path"], data["output"]["uri"]]


def test_remote_uris_are_kept_and_not_local(tmp_path):
    job = write_job(
        tmp_path / "job.toml",
        granularities="starbucks",
        input={"uri": "s3://bucket/docs/*.parquet"},
        model={"path": "/models/minilm"},
        output={"uri": "s3://bucket/out.lance"},
        storage={"endpoint": "http://127.0.0.1:9000"},
    )
    spec = load_job(job)
    assert parse_job(tomllib.loads(job_text(spec))) == spec
    assert local_paths(spec) == ["/models/minilm"]


def test_entrypoint_runs_the_job_against_the_cluster_it_runs_on():
    run = "python -m jobs.cli run 'my job.toml' --address auto --no-progress"
    assert entrypoint("my job.toml") == f"EMBEDJOB_SUMMARY_FILE=- {run}"  # the summary as the log's last line
    assert "=- /opt/py/bin/python -m jobs.cli run j.toml" in entrypoint("j.toml", python="/opt/py/bin/python")
