"""Every benchmark in ``bench/``, one after the other, and one table of what each measured against its target.

Each script runs as its own process (``python -m bench.NAME ... --json
out/bench/NAME.json``) and reports ratios measured side by side within its own
run, since this machine is shared and noisy; absolute times are context only.
The table lists every figure with its target and whether it holds; the exit
code is 1 when a target is missed or a script fails.

    python -m bench.suite                 # everything, at the sizes the targets are about (about 1.5 h on 2 cores)
    python -m bench.suite --only encoder,funnel
    python -m bench.suite --quick         # tiny sizes: checks the plumbing, not the targets
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench._report import Check, read_report

#: name -> (full-size arguments, quick arguments)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "encoder": (["--n", "2000", "--rounds", "2"], ["--n", "200", "--rounds", "1", "--chunk", "100"]),
    "pipeline": (["--tokenize", "actor,tasks,tasks,actor"], ["--n", "300", "--no-marginal", "--memory-n", "200"]),
    "calibration": ([], ["--fit", "400", "--eval", "300", "--dims", "64,384"]),
    "incremental": (["--n", "20000"], ["--n", "800"]),
    "funnel": (["--n", "20000"], ["--n", "2000", "--queries", "50", "--folder", "out/bench/funnel-quick"]),
    "scale": (["--n", "100000"], ["--n", "2000", "--folder", "out/bench/scale-quick"]),
    "migrate": ([], ["--n", "300", "--per-night", "100", "--to", "calibrated"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--skip", default="", help="comma-separated benches to leave out")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the plumbing, not the targets")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="where the JSON reports go")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names + [s for s in args.skip.split(",") if s] if n not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown bench(es) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    names = [n for n in names if n not in args.skip.split(",")]
    console = Console(width=160)
    rows: list[tuple[str, Check | None, str]] = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    for name in names:
        report = (args.out / ("quick" if args.quick else "") / f"{name}.json").resolve()
        report.unlink(missing_ok=True)
        extra = BENCHES[name][1 if args.quick else 0]
        cmd = [sys.executable, "-m", f"bench.{name}", *extra, "--json", str(report)]
        console.print(f"[bold]$ {' '.join(cmd[1:])}[/bold]", highlight=False)
        t0 = time.perf_counter()
        code = subprocess.run(cmd, env=env).returncode
        took = f"{time.perf_counter() - t0:,.0f} s"
        if not report.exists():
            rows.append((name, None, f"failed (exit {code}) after {took}, no report"))
            continue
        _, checks = read_report(report)
        rows.extend((name, c, took) for c in checks)
        console.print()

    table = Table(title="bench suite" + (" (quick sizes: the targets are about the full ones)" if args.quick else ""))
    for col in ("bench", "figure", "value", "target", "holds", "script took"):
        table.add_column(col, justify="left" if col in ("bench", "figure", "target") else "right")
    for name, check, took in rows:
        if check is None:
            table.add_row(name, "-", "-", "-", "[red]FAILED[/red]", took)
            continue
        holds = "-" if check.holds is None else ("yes" if check.holds else "[red]NO[/red]")
        table.add_row(name, check.figure, check.shown(), check.target, holds, took)
    console.print(table)
    missed = [c for _, c, _ in rows if c is None or c.holds is False]
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
