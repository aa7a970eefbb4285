"""The progress display: its two renderings (a rich display on a terminal, log lines elsewhere), no Ray."""

from __future__ import annotations

import io
import logging
import re
import time

import pytest
from rich.console import Console

from cluster import ProgressCounts, ProgressDisplay, Stage
from cluster._progress import progress_every_s

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_the_live_display_shows_the_stage_rows_tokens_rate_and_time_left_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system="standard")
    with ProgressDisplay("run r-1", console=console) as display:  # live: the console is a terminal
        display.begin(Stage.ENCODING, total=3000)
        assert "run r-1" in _ANSI.sub("", out.getvalue()) and "reading" in _ANSI.sub("", out.getvalue())
        time.sleep(0.2)
        display.add(read=2000, done=1200, embedded=1198, rejected=2, tokens=74_000)
        shown = _ANSI.sub("", out.getvalue())
        assert "encoding" in shown and "1,200 of 3,000 rows" in shown, shown[-600:]
        assert "read 2,000, embedded 1,198, rejected 2" in shown and "74,000 tokens" in shown
        assert re.search(r"[\d,.]+ rows/s", shown) and "ETA 0:0" in shown, shown[-600:]
        display.add(done=1800, embedded=1800)
        assert "staging" in _ANSI.sub("", out.getvalue())  # every row through the encoder: the writes go on
        display.stage(Stage.COMMITTING)
        assert "committing" in _ANSI.sub("", out.getvalue())
    final = _ANSI.sub("", out.getvalue()).rstrip().splitlines()[-1]
    assert "run r-1" in final and "finished" in final and "3,000 of 3,000 rows" in final, final


def test_without_a_terminal_a_line_every_few_seconds_and_a_last_one(caplog):
    caplog.set_level(logging.INFO, logger="embedjob.progress")
    with ProgressDisplay("evaluate x", every_s=0.05) as display:  # a StringIO-less default: pytest's stderr
        assert not display.live
        display.begin("encoding the sample", total=512)
        for _ in range(2):
            display.add(done=256, embedded=256, tokens=10_000)
            time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "embedjob.progress"]
    done = [int(m.group(1).replace(",", "")) for m in (re.search(r": ([\d,]+) of 512 rows", x) for x in lines) if m]
    assert len(done) >= 3 and done == sorted(done) and done[0] < 512, lines
    assert lines[-1].startswith("evaluate x: finished: 512 of 512 rows done, 20,000 tokens"), lines[-1]


def test_a_command_that_fails_before_it_starts_shows_no_progress(caplog):
    caplog.set_level(logging.INFO, logger="embedjob.progress")
    with pytest.raises(RuntimeError), ProgressDisplay("run", every_s=60):
        raise RuntimeError("the table is locked")
    assert not [r for r in caplog.records if r.name == "embedjob.progress"]


def test_a_failed_command_says_so_with_what_it_did(caplog):
    caplog.set_level(logging.INFO, logger="embedjob.progress")
    with pytest.raises(RuntimeError), ProgressDisplay("run r-2", every_s=60) as display:
        display.begin(Stage.ENCODING, total=10)
        display.add(read=10, done=4, embedded=4)
        raise RuntimeError("boom")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "embedjob.progress"]
    assert line.startswith("run r-2: failed: 4 of 10 rows done (read 10)"), line


def test_progress_interval_and_counts_are_checked(monkeypatch):
    monkeypatch.setenv("EMBEDJOB_PROGRESS_EVERY_S", "2.5")
    assert progress_every_s() == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("EMBEDJOB_PROGRESS_EVERY_S", bad)
        with pytest.raises(ValueError, match=rf"EMBEDJOB_PROGRESS_EVERY_S='{bad}': expected a number of seconds > 0"):
            progress_every_s()
    with pytest.raises(ValueError, match=r"unknown progress count\(s\) \['rows'\]; allowed: read, done"):
        ProgressCounts.of({"rows": 1})
    assert ProgressCounts.of({"done": 2}) + ProgressCounts(done=1, tokens=5) == ProgressCounts(done=3, tokens=5)
