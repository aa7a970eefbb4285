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
