"""Bad input, table-driven: job files, names, paths, stores and rows, each with what the user must see.

Every case goes through the CLI (``embedjob ...``) or the public Python API, with
real files, a real Lance table, a real S3-compatible server (moto) and, for the
cases that only a run can find, the session's real Ray.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from jobs import run_job
from jobs.cli import app
from storage import RunIdError, TableNotFoundError, collect_garbage, open_table

from .jobfiles import write_embedded_table
from .raynodes import free_port

DELETE = object()  # an edit that removes the key


@dataclass(frozen=True)
class Case:
    id: str
    edits: dict[str, Any] = field(default_factory=dict)  # "section.key" (or "key") -> value, or DELETE
    expect: tuple[str, ...] = ()  # each must appear in the one-line error
    raw: str | None = None  # the job file's whole text instead of the base job


def _toml_value(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings (JSON escapes are TOML's), ints, floats


def _write(path: Path, job: dict[str, Any]) -> Path:
    lines = [f"{k} = {_toml_value(v)}" for k, v in job.items() if not isinstance(v, dict)]
    for section, values in job.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, _tiny_models) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad-inputs")
    corpus = root / "docs.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "body": ["alpha text", "beta text"]}), corpus)
    truncated = root / "truncated.parquet"
    truncated.write_bytes(corpus.read_bytes()[: corpus.stat().st_size // 2])
    return {
        "root": root,
        "truncated": str(truncated),
        "job": {
            "granularities": ["l2_d32", "l4_d64"],
            "input": {"uri": str(corpus), "id_column": "doc_id", "text_column": "body"},
            "model": {"path": str(_tiny_models["bert"])},
            "output": {"uri": str(root / "out" / "docs.lance")},
        },
    }


def _job_file(base: dict[str, Any], case: Case, tmp_path: Path) -> Path:
    if case.raw is not None:
        path = tmp_path / "job.toml"
        path.write_text(case.raw)
        return path
    job = json.loads(json.dumps(base["job"]))
    for dotted, value in case.edits.items():
        section, _, key = dotted.rpartition(".")
        where = job.setdefault(section, {}) if section else job
        if value is DELETE:
            where.pop(key, None)
        else:
            where[key] = base["truncated"] if value == "<truncated>" else value
    return _write(tmp_path / "job.toml", job)


JOB_FILES = [
    Case("store_text-as-a-string", {"output.store_text": "yes"}, ("output.store_text = 'yes'", "valid boolean")),
    Case("normalize-as-a-number", {"model.normalize": 1}, ("model.normalize = 1", "valid boolean")),
    Case("actors-as-a-string", {"cluster.actors": "2"}, ("cluster.actors = '2'", "valid integer")),
    Case("actors-zero", {"cluster.actors": 0}, ("cluster.actors = 0", "greater than or equal to 1")),
    Case("cpus-infinite", {"cluster.cpus_per_actor": math.inf}, ("cluster.cpus_per_actor = inf", "finite number")),
    Case("reject-fraction-nan", {"output.max_reject_fraction": math.nan}, ("max_reject_fraction = nan", "finite")),
    Case(
        "delete-fraction-above-1",
        {"output.max_delete_fraction": 1.5},
        ("max_delete_fraction = 1.5", "than or equal to 1"),
    ),
    Case("batch-tokens-huge", {"cluster.batch_tokens": 10**9}, ("cluster.batch_tokens", "4194304")),
    Case("max-length-float", {"model.max_length": 256.0}, ("model.max_length = 256.0", "valid integer")),
    Case("table-name-with-a-space", {"output.uri": "out/my table.lance"}, ("'my table'", "refused by LanceDB")),
    Case("table-name-not-ascii", {"output.uri": "out/tablé"}, ("'tablé'", "letters, digits, '_', '-' and '.'")),
    Case("output-uri-newline", {"output.uri": "out/docs\n.lance"}, ("output.uri", "control character")),
    Case("job-name-newline", {"name": "nightly\n"}, ("name = 'nightly\\n'", "control characters")),
    Case("unknown-key", {"output.store_txt": True}, ("unknown key 'output.store_txt'", "store_text")),
    Case("missing-section", {"input": DELETE}, ("missing required key 'input'",)),
    Case("unknown-format", {"input.format": "xls"}, ("input.format = 'xls'", "'parquet'")),
    Case("unknown-mode", {"output.mode": "replace"}, ("output.mode = 'replace'", "'incremental'")),
    Case("calibration-not-a-file", {"calibration": "cal.txt"}, ("calibration = 'cal.txt'", ".safetensors")),
    Case("layer-beyond-the-model", {"granularities": ["l9_d32"]}, ("layer 9 is out of range",)),
    Case("dim-beyond-the-model", {"granularities": ["l2_d999"]}, ("dim 999",)),
    Case("model-missing", {"model.path": "/nonexistent/model"}, ("'/nonexistent/model'", "does not exist")),
    Case("id-column-missing", {"input.id_column": "nope"}, ("input.id_column = 'nope' is not a column",)),
    Case("input-matches-nothing", {"input.uri": "/nonexistent/*.parquet"}, ("matches no parquet files",)),
    Case("input-file-truncated", {"input.uri": "<truncated>"}, ("truncated.parquet", "Parquet magic bytes not found")),
    Case("index-of-another-granularity", {"index.granularities": ["l3_d16"]}, ("'l3_d16' is not one of",)),
    Case("rows-per-part-zero", {"cluster.rows_per_part": 0}, ("cluster.rows_per_part = 0",)),
    Case(
        "in-process-below-negative",
        {"cluster.in_process_below": -5},
        ("cluster.in_process_below = -5", "greater than or equal to 0"),
    ),
    Case("in-process-below-a-word", {"cluster.in_process_below": "many"}, ("cluster.in_process_below = 'many'",)),
    Case("toml-syntax", raw="granularities = [\n", expect=("not valid TOML",)),
]


@pytest.mark.parametrize("case", JOB_FILES, ids=[c.id for c in JOB_FILES])
def test_bad_job_files_are_refused_in_one_line(case, base, tmp_path):
    job = _job_file(base, case, tmp_path)
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2, result.output
    error = result.output.strip()
    assert error.startswith("error: ") and "\n" not in error, error  # one line
    for text in case.expect:
        assert text in error, (text, error)


@dataclass(frozen=True)
class CliCase:
    id: str
    args: tuple[str, ...]  # "{table}", "{plain}", "{job}", "{state}" are filled in
    expect: tuple[str, ...]


CLI_CASES = [
    CliCase("resume-a-path", ("resume", "../../x"), ("'../../x' is not a run id", "20261122T161500Z-1a2b3c4d")),
    CliCase("resume-a-dir", ("resume", "/etc"), ("'/etc' is not a run id",)),
    CliCase("resume-an-unknown-run", ("resume", "20261101T000000Z-0000beef"), ("was not started on this machine",)),
    CliCase(
        "schedule-name-newline",
        ("schedule", "add", "nightly\n", "{job}", "--cron", "0 2 * * *", "--state-dir", "{state}"),
        ("schedule name 'nightly\\n' is not allowed",),
    ),
    CliCase(
        "schedule-name-a-path",
        ("schedule", "add", "../evil", "{job}", "--cron", "0 2 * * *", "--state-dir", "{state}"),
        ("schedule name '../evil' is not allowed",),
    ),
    CliCase(
        "schedule-bad-cron",
        ("schedule", "add", "nightly", "{job}", "--cron", "0 2 * *", "--state-dir", "{state}"),
        ("has 4 field(s); expected 5",),
    ),
    CliCase("gc-a-dataset-embedjob-did-not-write", ("gc", "{plain}"), ("not written by embedjob",)),
    CliCase("gc-bad-retention", ("gc", "{table}", "--older-than", "7x"), ("--older-than '7x'", "e.g. 7d")),
    CliCase("query-a-missing-table", ("query", "{root}/missing.lance", "rivers"), ("no table at",)),
    CliCase("query-a-granularity-it-lacks", ("query", "{table}", "rivers", "-g", "l3_d16"), ("it has l2_d16, l4_d64",)),
    CliCase("inspect-not-embedjob", ("inspect", "{plain}"), ("was not written by embedjob",)),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_bad_names_and_paths_are_refused_in_one_line(case, base, tmp_path, tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("EMBEDJOB_STATE_DIR", str(tmp_path / "state"))
    table = str(tmp_path / "t.lance")
    write_embedded_table(table, tiny_bert_dir, ["rivers and boats", "trains in spring"])
    plain = tmp_path / "plain.lance"
    lance.write_dataset(pa.table({"id": ["x"]}), str(plain))
    foreign = tmp_path / "plain_staging"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not embedjob's")
    job = _write(tmp_path / "job.toml", base["job"])
    fill = {"{table}": table, "{plain}": str(plain), "{job}": str(job), "{state}": str(tmp_path / "sched")}
    args = [fill.get(a, a).replace("{root}", str(tmp_path)) for a in case.args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    error = result.output.strip()
    assert error.startswith("error: ") and "\n" not in error, error
    for text in case.expect:
        assert text in error, (text, error)
    assert (foreign / "keep.txt").exists()  # nothing of what is not embedjob's was touched
    assert lance.dataset(str(plain)).count_rows() == 1


def test_the_python_api_refuses_the_same(tmp_path):
    plain = tmp_path / "plain.lance"
    lance.write_dataset(pa.table({"id": ["x"]}), str(plain))
    (tmp_path / "plain_staging" / "20261101T000000Z-0000beef").mkdir(parents=True)
    with pytest.raises(TableNotFoundError, match="embedjob did not write"):
        collect_garbage(str(plain))
    assert (tmp_path / "plain_staging" / "20261101T000000Z-0000beef").is_dir()
    with pytest.raises(TableNotFoundError, match="is not a table"):
        collect_garbage(str(tmp_path / "nothing.lance"))
    from jobs import resume_run

    with pytest.raises(RunIdError, match="is not a run id"):
        resume_run("../../x/run")
    with pytest.raises(RunIdError, match="is not a run id"):
        run_job(tmp_path / "job.toml", resume="a/b")


def test_a_damaged_exit_file_fails_only_its_own_schedule(base, tmp_path):
    from jobs.schedule import Scheduler

    sched = Scheduler(tmp_path / "state", clock=lambda: now[0], local_command=lambda job: ["true"])
    now = [time.time()]
    job = _write(tmp_path / "job.toml", base["job"])
    sched.add("first", job, "* * * * *")
    sched.add("second", job, "* * * * *")
    now[0] += 61
    fires = {f.schedule: f for f in sched.run_due()}
    exits = {name: tmp_path / "state" / "exits" / f"{f.id}.exit" for name, f in fires.items()}  # STATE_DIR's layout
    deadline = time.time() + 30
    while not all(path.exists() for path in exits.values()) and time.time() < deadline:
        time.sleep(0.1)
    exits["first"].write_text("garbage\x00")  # a damaged file (a full disk, a bad editor)
    rows = {r.schedule.name: r for r in sched.status()}
    assert rows["first"].last_fire.state == "failed" and "damaged" in rows["first"].last_fire.message
    assert rows["second"].last_fire.state == "succeeded"
    result = CliRunner().invoke(app, ["schedule", "list", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 0 and "first" in result.output and "second" in result.output


def test_the_state_dir_logs_and_database_are_private(base, tmp_path, monkeypatch):
    from jobs.schedule import Scheduler
    from jobs.state import remember_run

    state = tmp_path / "state"
    monkeypatch.setenv("EMBEDJOB_STATE_DIR", str(state))
    sched = Scheduler(None, clock=lambda: now[0], local_command=lambda job: ["true"])
    now = [time.time()]
    sched.add("nightly", _write(tmp_path / "job.toml", base["job"]), "* * * * *")
    now[0] += 61
    (fire,) = sched.run_due()
    sched.wait([fire], timeout_s=30, poll_s=0.1)
    remember_run("20261101T000000Z-0000beef", "t.lance", "job.toml")
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in [state, *state.rglob("*")]}
    assert modes["state"] == 0o700
    for name, mode in modes.items():
        expected = 0o700 if (tmp_path / name).is_dir() else 0o600
        assert mode == expected, (name, oct(mode))
    assert any(n.endswith(".log") for n in modes) and any(n.endswith(".exit") for n in modes)
    assert "state/schedule.db" in modes and "state/runs/20261101T000000Z-0000beef.json" in modes


# ----------------------------------------------------------------- object stores


@pytest.fixture(scope="module")
def s3_with_auth():
    """A moto server that checks credentials (after the first few requests, which make an IAM user and a
    bucket); yields (endpoint, good key id, good secret). Stopped at teardown."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        anon = {"aws_access_key_id": "x", "aws_secret_access_key": "x", "region_name": "us-east-1"}
        iam = boto3.client("iam", endpoint_url=endpoint, **anon)
        for _ in range(100):
            try:
                iam.create_user(UserName="embedjob")
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start-up") from None
                time.sleep(0.1)
        key = iam.create_access_key(UserName="embedjob")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="embedjob", PolicyName="all", PolicyDocument=json.dumps(policy))
        boto3.client("s3", endpoint_url=endpoint, **anon).create_bucket(Bucket="data")
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


STORES = [
    ("unreachable-endpoint", "http://127.0.0.1:1", "s3://data/t.lance", "good", ("cannot reach the S3 endpoint",)),
    ("missing-bucket", None, "s3://nobucket/t.lance", "good", ("bucket 'nobucket' does not exist", "create it")),
    ("unknown-access-key", None, "s3://data/t.lance", "unknown", ("does not know the access key", "AWS_ACCESS")),
    ("wrong-secret", None, "s3://data/t.lance", "wrong-secret", ("refused the secret key", "does not match")),
]


@pytest.mark.parametrize(("endpoint", "uri", "keys", "expect"), [s[1:] for s in STORES], ids=[s[0] for s in STORES])
def test_object_store_failures_are_one_line(endpoint, uri, keys, expect, base, tmp_path, s3_with_auth, monkeypatch):
    real, key_id, secret = s3_with_auth
    if keys == "unknown":
        key_id = "AKIAUNKNOWNKEY000000"
    elif keys == "wrong-secret":
        secret = "not-the-secret"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    job = json.loads(json.dumps(base["job"]))
    job["output"]["uri"] = uri
    job["storage"] = {"endpoint": endpoint or real}
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["validate", str(_write(tmp_path / "job.toml", job))])
    assert result.exit_code == 2, result.output
    error = result.output.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error, error
    for text in expect:
        assert text in error, (text, error)
    assert time.perf_counter() - t0 < 30  # not minutes of retries


# ----------------------------------------------------------------- what only a run finds


def test_more_actors_than_the_cluster_has_fail_before_any_work(ray_local, base, tmp_path):
    job = json.loads(json.dumps(base["job"]))
    job["cluster"] = {"actors": 10000}
    job["output"]["uri"] = str(tmp_path / "out" / "docs.lance")
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path / "job.toml", job)), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "cluster.actors = 10000 CPU actors, but the Ray cluster has 2 CPUs: at most 2" in result.output
    assert not (tmp_path / "out" / "docs.lance").exists()


def test_a_damaged_data_page_names_the_file(ray_local, base, tmp_path):
    good = tmp_path / "in" / "a.parquet"
    bad = tmp_path / "in" / "b.parquet"
    good.parent.mkdir()
    texts = [f"passage {i} about rivers and trains" for i in range(400)]
    for path, prefix in ((good, "a"), (bad, "b")):
        table = pa.table({"doc_id": [f"{prefix}{i}" for i in range(400)], "body": texts})
        pq.write_table(table, path, compression="none", use_dictionary=False)
    data = bytearray(bad.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64  # inside the text column's data page; the footer stays good
    bad.write_bytes(bytes(data))
    job = json.loads(json.dumps(base["job"]))
    job["input"]["uri"] = str(good.parent)
    job["input"]["format"] = "parquet"
    job["output"]["uri"] = str(tmp_path / "out" / "docs.lance")
    result = CliRunner().invoke(app, ["run", str(_write(tmp_path / "job.toml", job)), "--no-progress"])
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: input file ") and str(bad) in error and "nothing was committed" in error
    assert not (tmp_path / "out" / "docs.lance").exists()


BAD_ROWS = [  # (id, text) -> the reject reason, or None: embedded
    ("ok-1", b"A good passage about rivers.", None),
    ("null-text", None, "null text"),
    ("empty-text", b"", "empty text"),
    ("blank-text", b"  \n\t ", "whitespace-only text"),
    ("not-utf8", b"caf\xe9 au lait", "undecodable text (not UTF-8)"),
    (None, b"a row without an id", "null id"),
    ("ok-2", b"Another good passage, on trains.", None),
    ("ok-2", b"The same id again.", "duplicate id (an earlier row with this id was kept)"),
]


@pytest.fixture(scope="module")
def bad_rows_run(ray_local, base, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-rows")
    corpus = root / "rows.parquet"
    ids = pa.array([r[0] for r in BAD_ROWS], pa.string())
    pq.write_table(pa.table({"doc_id": ids, "body": pa.array([r[1] for r in BAD_ROWS], pa.binary())}), corpus)
    job = json.loads(json.dumps(base["job"]))
    job["input"]["uri"] = str(corpus)
    job["output"] = {"uri": str(root / "out" / "rows.lance"), "max_reject_fraction": 1.0}
    summary = run_job(_write(root / "job.toml", job), progress=False)
    return summary, open_table(summary.table_uri)


@pytest.mark.parametrize("row", range(len(BAD_ROWS)), ids=[f"{r[0]}-{r[2] or 'kept'}" for r in BAD_ROWS])
def test_bad_rows_are_rejected_with_their_reason_and_kept(row, bad_rows_run):
    summary, table = bad_rows_run
    id_value, text, reason = BAD_ROWS[row]
    rejects = table.rejects().to_pylist()
    ids = table.to_arrow(["id"])["id"].to_pylist()
    if reason is None:
        assert ids.count(id_value) == 1
    else:
        match = [r for r in rejects if r["id"] == id_value and r["reason"] == reason]
        assert len(match) == 1, (id_value, reason, rejects)
        if text:  # the rejected text is kept, readable
            assert match[0]["text"] == text.decode("utf-8", "backslashreplace")
    assert summary.rows_rejected == 6 and summary.rows_embedded == 2
    assert sum(summary.reject_reasons.values()) == 6


def test_debug_shows_the_traceback_instead_of_the_line():
    plain = CliRunner().invoke(app, ["resume", "../../x"])
    assert plain.exit_code == 2 and isinstance(plain.exception, SystemExit)
    debug = CliRunner().invoke(app, ["--debug", "resume", "../../x"])
    assert isinstance(debug.exception, RunIdError)  # raised, with its traceback, not turned into a line
    assert "error: " not in debug.output
    again = CliRunner().invoke(app, ["resume", "../../x"])  # --debug does not stick to the next command
    assert again.exit_code == 2 and "error: '../../x' is not a run id" in again.output
