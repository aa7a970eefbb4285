from __future__ import annotations

from typer.testing import CliRunner

from jobs import __version__
from jobs.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"embedjob {__version__}"


def test_model_info_resolves_the_starbucks_preset(minilm_path):
    result = runner.invoke(app, ["model-info", str(minilm_path)])
    assert result.exit_code == 0, result.output
    assert "1..6" in result.output and "1..384" in result.output
    assert "l2_d32, l4_d64, l6_d128" in result.output


def test_model_info_errors_name_the_value(minilm_path, tmp_path):
    result = runner.invoke(app, ["model-info", str(minilm_path), "-g", "l7_d10"])
    assert result.exit_code == 2
    assert "layer 7 is out of range" in result.output
    result = runner.invoke(app, ["model-info", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "directory does not exist" in result.output


def test_a_rate_is_printed_only_where_it_means_something(capsys):
    from datetime import UTC, datetime

    from jobs import RunSummary
    from jobs.cli import print_summary

    now = datetime.now(UTC)

    def summary(rows: int) -> RunSummary:
        return RunSummary(
            run_id="20261130T000000Z-00000000",
            job_name="j",
            table_uri="t.lance",
            mode="incremental",
            status="committed",
            table_version=2,
            started_at=now,
            finished_at=now,
            rows_read=rows,
            rows_embedded=rows,
            tokens=rows * 50,
            seconds=20.0,
            seconds_pipeline=10.0,
        )

    print_summary(summary(5000))
    assert "500.0 rows/s" in capsys.readouterr().out
    print_summary(summary(3))  # a small night: its time is start-up, not throughput
    assert "rows/s" not in capsys.readouterr().out


def test_the_embedjob_process_exits_with_the_commands_code_and_all_its_output(tmp_path):
    """``python -m jobs.cli`` (the console script's ``main``) ends without Python's module teardown: the exit
    code is the command's and everything it printed is there, on stdout and on stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    ok = subprocess.run([sys.executable, "-m", "jobs.cli", "version"], capture_output=True, text=True, env=env)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"embedjob {__version__}"), ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "validate", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "error:" in bad.stderr + bad.stdout and "nope.toml" in bad.stderr + bad.stdout, (bad.stdout, bad.stderr)
