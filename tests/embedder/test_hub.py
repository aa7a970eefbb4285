"""Models by name: the bundled all-MiniLM-L6-v2, a Hugging Face id in a hub cache laid out under HF_HOME, and an
offline miss that says where it looked and how to fetch the model."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from embedder import ModelError, local_models, read_model_dir, resolve_model
from jobs import load_job
from jobs.cli import app
from tests.jobfiles import write_job


@pytest.fixture
def hub_home(tmp_path, monkeypatch, minilm_path):
    """An HF_HOME whose hub cache holds ``acme/minilm-copy`` (the bundled weights), laid out as huggingface_hub
    lays out a download: models--acme--minilm-copy/{refs/main, snapshots/<commit>/...}."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--acme--minilm-copy"
    shutil.copytree(minilm_path, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def test_the_bundled_model_is_found_by_its_name(minilm_path):
    assert resolve_model("all-MiniLM-L6-v2") == minilm_path.resolve()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == minilm_path.resolve()
    mdir = read_model_dir("all-MiniLM-L6-v2")
    assert (mdir.num_layers, mdir.hidden_size) == (6, 384)


def test_a_hub_id_in_the_local_cache_is_found_offline(hub_home):
    snapshot = hub_home / "hub" / "models--acme--minilm-copy" / "snapshots" / "0123abcd"
    assert resolve_model("acme/minilm-copy") == snapshot.resolve()
    assert read_model_dir("acme/minilm-copy").num_layers == 6
    names = {m.name: m.origin for m in local_models()}
    assert names == {"all-MiniLM-L6-v2": "bundled", "acme/minilm-copy": "hub cache"}


def test_an_offline_miss_names_where_it_looked_and_the_command_that_fetches_it(hub_home):
    with pytest.raises(ModelError) as info:
        resolve_model("acme/not-here")
    text = str(info.value)
    assert str(hub_home / "hub") in text and "hf download acme/not-here" in text and "download = true" in text
    with pytest.raises(ModelError, match="directory does not exist"):
        resolve_model(str(hub_home / "no" / "such" / "dir"))


def test_embedjob_models_lists_what_is_here(hub_home):
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in map(json.loads, result.output.splitlines())}
    assert set(rows) == {"all-MiniLM-L6-v2", "acme/minilm-copy"}
    assert {k: rows["acme/minilm-copy"][k] for k in ("layers", "width", "pooling", "max_length")} == {
        "layers": 6,
        "width": 384,
        "pooling": "mean",
        "max_length": 256,
    }


def test_a_job_names_its_model(tmp_path, hub_home):
    job = write_job(
        tmp_path / "job.toml",
        granularities=["l3_d64"],
        input={"uri": str(tmp_path / "in.parquet")},
        model={"path": "acme/minilm-copy"},
        output={"uri": str(tmp_path / "out.lance")},
    )
    assert load_job(job).model.path == "acme/minilm-copy"  # a name, not made a path next to the job file
    result = CliRunner().invoke(app, ["model-info", "acme/minilm-copy"])
    assert result.exit_code == 0 and "1..6" in result.output, result.output


def test_download_without_a_network_is_one_line_naming_the_repo(hub_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        resolve_model("acme/not-here", download=True)
    assert "could not download 'acme/not-here' from the Hugging Face hub" in str(info.value)
    assert "\n" not in str(info.value).strip()
