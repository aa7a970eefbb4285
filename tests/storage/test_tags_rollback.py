"""Version tags and rollback on real Lance tables (written in-process by the real encoder, no Ray)."""

from __future__ import annotations

from datetime import timedelta

import lance
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from storage import (
    LATEST_GOOD,
    RollbackError,
    RunIdError,
    TableLock,
    TagError,
    collect_garbage,
    move_latest_good,
    new_run_id,
    open_table,
    run_tag,
    table_tags,
    tag_run,
)

from ..jobfiles import write_embedded_table

TEXTS = ["rivers flood the valley", "a quiet harbour town", "glaciers retreat each summer"]
MORE = ["bushfires near the coast", "a storm over the plains"]


@pytest.fixture
def two_versions(tmp_path, tiny_bert_dir) -> str:
    """A table at version 2: three rows (version 1), then two more appended."""
    uri = str(tmp_path / "out" / "docs.lance")
    assert write_embedded_table(uri, tiny_bert_dir, TEXTS) == 1
    ids = [f"m{i}" for i in range(len(MORE))]
    assert write_embedded_table(uri, tiny_bert_dir, MORE, ids=ids, mode="append", read_version=1) == 2
    return uri


def _rows(uri: str, version: int | None = None) -> list[dict]:
    ds = lance.dataset(uri, version=version)
    return sorted(ds.to_table(columns=["id", "content_hash", "vec_l4_d64"]).to_pylist(), key=lambda r: r["id"])


def test_rollback_through_the_cli_restores_a_version_as_a_new_one(two_versions):
    uri = two_versions
    first = new_run_id()
    tag_run(uri, first, 1)
    runner = CliRunner()
    result = runner.invoke(app, ["rollback", uri, "--to", first])
    assert result.exit_code == 0, result.output
    assert f"version 2 (5 rows) -> version 3 (3 rows), the contents of version 1 (tag {first})" in result.output

    table = open_table(uri)
    assert table.version == 3 and _rows(uri) == _rows(uri, 1)  # ids, hashes and vectors: version 1's
    assert lance.dataset(uri, version=2).count_rows() == 5  # nothing deleted: the rolled-back version stays
    (record,) = table.runs()
    assert (record["mode"], record["status"], record["table_version"], record["read_version"]) == (
        f"rollback to {first} (version 1)",
        "committed",
        3,
        2,
    )
    assert table.tags() == {LATEST_GOOD: 3, record["run_id"]: 3, first: 1}
    assert f"tags: {record['run_id']}, {LATEST_GOOD}" in result.output

    shown = runner.invoke(app, ["inspect", uri], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    tags = shown.output[shown.output.index("tags") :]
    assert LATEST_GOOD in tags and first in tags and f"rollback to {first}" in tags

    # a version number works as well, and the Python API says the same
    report = table.rollback(2)
    assert (report.from_version, report.version, report.target_version) == (3, 4, 2)
    assert (report.rows_before, report.rows_after, report.mode) == (3, 5, "rollback to version 2")
    assert table.version == 4 and table.count_rows() == 5 and table.tags()[LATEST_GOOD] == 4


def test_rollback_refuses_what_the_table_does_not_have(two_versions):
    uri = two_versions
    runner = CliRunner()

    def refused(*args: str) -> str:
        result = runner.invoke(app, ["rollback", uri, *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ")
        return " ".join(result.output.split())

    assert "no tag 'nightly'; give a tag or a version number (it has versions 1-2; tags: none)" in refused(
        "--to", "nightly"
    )
    assert "has no version '9' (it has versions 1-2; tags: none)" in refused("--to", "9")
    assert "is at version 2 already" in refused("--to", "2")
    with TableLock(uri, run_id=new_run_id()):
        assert "is being written by run" in refused("--to", "1")
    assert lance.dataset(uri).version == 2  # nothing was committed
    with pytest.raises(RollbackError, match=r"no tag 'latest-good'"):
        open_table(uri).rollback(LATEST_GOOD)


def test_gc_drops_old_run_tags_and_a_rollback_names_what_it_removed(two_versions, tiny_bert_dir):
    """Lance never removes a tagged version: gc drops the run tags past its retention first, and keeps
    latest-good, an operator's own tags and the tags on the newest version."""
    uri = two_versions
    assert write_embedded_table(uri, tiny_bert_dir, ["one more"], ids=["x"], mode="append", read_version=2) == 3
    assert write_embedded_table(uri, tiny_bert_dir, ["and one"], ids=["y"], mode="append", read_version=3) == 4
    runs = [new_run_id() for _ in range(4)]
    for version, run_id in enumerate(runs, start=1):
        tag_run(uri, run_id, version)
    move_latest_good(uri, 2)
    lance.dataset(uri).tags.create("release-1", 3)  # an operator's own

    report = collect_garbage(uri, older_than=timedelta(0))
    assert report.tags_removed == [runs[0]]
    assert report.versions_removed["table"] == 1  # version 1; 2 and 3 are tagged, 4 is the newest
    assert table_tags(uri) == {LATEST_GOOD: 2, runs[3]: 4, "release-1": 3, runs[2]: 3, runs[1]: 2}

    with pytest.raises(
        RollbackError, match=r"version 1 of .* is gone: `embedjob gc` removed it.*oldest version left is 2"
    ):
        open_table(uri).rollback("1")
    with pytest.raises(RollbackError, match=rf"no tag '{runs[0]}'"):
        open_table(uri).rollback(runs[0])
    assert open_table(uri).rollback(LATEST_GOOD).version == 5


def test_tags_are_set_once_and_latest_good_never_moves_back(two_versions):
    uri = two_versions
    run_id = new_run_id()
    assert tag_run(uri, run_id, 2) == run_id
    assert tag_run(uri, run_id, 2) == run_id  # a retried step: the same tag on the same version is fine
    with pytest.raises(TagError, match=rf"tag {run_id} of .* names version 2, but run {run_id} committed version 1"):
        tag_run(uri, run_id, 1)
    assert move_latest_good(uri, 2) == 2
    assert move_latest_good(uri, 1) == 2  # a late bookkeeping of an older run: not moved back
    assert table_tags(uri) == {LATEST_GOOD: 2, run_id: 2}
    with pytest.raises(RunIdError):
        run_tag("../x")  # only a run id names a run's tag
