"""``embedjob evaluate``: the quality map of a job or a table, on the terminal, as JSON and as a heatmap PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from ._app import EndpointOpt, ProgressOpt, RegionOpt, app, open_table_at, setup_logging
from ._console import console, err_console, fail


@app.command()
def evaluate(
    target: Annotated[
        str, typer.Argument(metavar="JOB_OR_TABLE", help="A job file (an existing *.toml) or a table (path or s3://).")
    ],
    sample: Annotated[int, typer.Option("--sample", help="Texts to sample from the corpus or the table.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample.")] = 0,
    k: Annotated[int, typer.Option("--k", "-k", help="Neighbours for recall@k.")] = 10,
    grid: Annotated[
        str,
        typer.Option(
            "--grid",
            help="'full': every layer x dims (32, 64, 128, 256, full width and the job's); 'job': its granularities.",
        ),
    ] = "full",
    dims: Annotated[
        str | None, typer.Option("--dims", help="Dims of the full grid, e.g. '32,64,128' (full width is added).")
    ] = None,
    timing: Annotated[int, typer.Option("--timing", help="Sample texts each exit layer is timed on.")] = 256,
    pairs: Annotated[
        Path | None,
        typer.Option("--pairs", help="Your own human-scored pairs: CSV, TSV or JSONL with text_a, text_b, score."),
    ] = None,
    no_lee: Annotated[bool, typer.Option("--no-lee", help="Skip the built-in Lee set (gensim's).")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for quality_map.json and quality_map.png.")] = Path(
        "quality_map"
    ),
    json_path: Annotated[Path | None, typer.Option("--json-file", help="Write the JSON here instead.")] = None,
    png_path: Annotated[Path | None, typer.Option("--png-file", help="Write the heatmap here instead.")] = None,
    title: Annotated[
        str | None, typer.Option("--title", help="The model's name in the heatmap (default: from its path).")
    ] = None,
    recommend: Annotated[
        float | None,
        typer.Option(
            "--recommend",
            help="Name the cheapest granularity within this share of the full vector's quality, e.g. 0.95.",
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="What --recommend holds to: recall, lee or pairs.")
    ] = "recall",
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Measure every (layer, dim): agreement with the full vector, encode cost per layer, correlation with
    human ratings; raw and calibrated side by side when there is a calibration.

    Prints a table and writes quality_map.json and quality_map.png (layers x dims heatmap).
    """
    setup_logging()  # a long measurement says which step it is in
    dim_list = _check_options(
        sample=sample,
        k=k,
        timing=timing,
        grid=grid,
        dims=dims,
        no_lee=no_lee,
        pairs=pairs,
        recommend=recommend,
        metric=metric,
    )
    options = dict(grid=grid, k=k, timing_texts=timing, sample=sample, seed=seed, use_lee=not no_lee, pairs_file=pairs)
    if dim_list is not None:
        options["dims"] = dim_list
    from cluster import ProgressDisplay

    with ProgressDisplay.for_command(f"evaluate {target}", show=progress) as display:
        qmap = _measure(target, {**options, "display": display}, sample, endpoint, region)
    _print_map(qmap, out=out, json_path=json_path, png_path=png_path, title=title)
    if recommend is not None:
        _print_recommendation(qmap, recommend, metric, target)


def _check_options(
    *,
    sample: int,
    k: int,
    timing: int,
    grid: str,
    dims: str | None,
    no_lee: bool,
    pairs: Path | None,
    recommend: float | None,
    metric: str,
) -> tuple[int, ...] | None:
    """The --dims list, once every option is checked; every problem in one error line, or ``fail``."""
    from ..quality import GRIDS, METRICS

    problems = []
    if recommend is not None and not (0.0 < recommend <= 1.0):  # NaN fails too
        problems.append(f"--recommend {recommend}: the budget is a share of full quality in (0, 1], e.g. 0.95")
    if metric not in METRICS:
        problems.append(f"--metric {metric!r}: allowed: {', '.join(METRICS)}")
    if grid not in GRIDS:
        problems.append(f"--grid {grid!r}: allowed: {', '.join(GRIDS)}")
    if sample < 1 or k < 1 or timing < 1:
        problems.append(f"--sample, --k and --timing must be >= 1; got {sample}, {k}, {timing}")
    if metric == "lee" and no_lee:
        problems.append("--metric lee needs the Lee set; drop --no-lee")
    if metric == "pairs" and pairs is None:
        problems.append("--metric pairs needs a --pairs file")
    dim_list = _parse_dims(dims, problems)
    if problems:
        fail(ValueError("; ".join(problems)))
    return dim_list


def _measure(target: str, options: dict[str, Any], sample: int, endpoint: str | None, region: str | None):
    """The quality map of the job file or the table ``target`` names, or ``fail``."""
    from embedder import EmbedderError

    from .._spec import JobSpecError
    from ..quality import PairsFileError, evaluate_job, evaluate_table

    is_job = target.endswith(".toml") and Path(target).is_file()
    err_console.print(Text(f"evaluating {'job' if is_job else 'table'} {target} on up to {sample:,} texts"))
    try:
        if is_job:
            return evaluate_job(target, **options)
        return evaluate_table(open_table_at(target, endpoint, region), **options)
    except (JobSpecError, PairsFileError, EmbedderError, ValueError) as exc:
        fail(exc)


def _print_map(qmap, *, out: Path, json_path: Path | None, png_path: Path | None, title: str | None) -> None:
    """The map as a table and its notes on the terminal; then its JSON and heatmap written."""
    from ..quality import write_heatmap

    console.print(_table(qmap))
    for note in qmap.notes:
        console.print(Text(f"note: {note}"), soft_wrap=True)
    written_json = qmap.write_json(json_path or out / "quality_map.json")
    written_png = write_heatmap(qmap, png_path or out / "quality_map.png", title=title)
    console.print(Text(f"wrote {written_json} and {written_png}"), soft_wrap=True)


def _print_recommendation(qmap, recommend: float, metric: str, target: str) -> None:
    """The cheapest granularity within ``recommend`` of the full vector's ``metric``, or ``fail``."""
    try:
        row = qmap.recommend(recommend, metric)
    except ValueError as exc:
        fail(exc)
    kind = "calibrated" if qmap.calibrated else "raw"
    full = qmap.row(qmap.reference).value(metric, calibrated=qmap.calibrated)
    value = row.value(metric, calibrated=qmap.calibrated)
    console.print(
        Text(
            f"recommended: {row.granularity} ({metric} {kind} {value:.3f} >= {recommend:g} x {full:.3f} of "
            f"{qmap.reference}; layer cost {row.relative_cost:.2f} of full depth, {row.bytes_per_vector:,} "
            f"bytes per vector){'' if row.in_job else '; not in the job yet'}",
            style="bold",
        ),
        soft_wrap=True,
    )
    if not row.in_job:
        job = target if target.endswith(".toml") else "JOB"
        console.print(
            Text(
                f"to add it: list {row.granularity} in {job}'s granularities, then "
                f"`embedjob run {job} --add-granularity {row.granularity}` (the table's text, embedded for the new "
                f"column only, in one commit)"
            ),
            soft_wrap=True,
        )


def _parse_dims(text: str | None, problems: list[str]) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        problems.append(f"--dims {text!r}: expected whole numbers separated by commas, e.g. 32,64,128")
        return None
    if not dims or any(d < 1 for d in dims):
        problems.append(f"--dims {text!r}: expected dims >= 1, e.g. 32,64,128")
        return None
    return dims


def _table(qmap) -> Table:
    cal = qmap.calibrated
    columns = [("recall", f"recall@{qmap.k}")]
    if qmap.lee_pairs:
        columns.append(("lee", "Lee ρ"))
    if qmap.pairs_count:
        columns.append(("pairs", f"{qmap.pairs_file} ρ"))
    title = (
        f"quality map: {qmap.source}; {qmap.sample_size:,} sample texts, reference {qmap.reference}"
        + (f", calibration {qmap.calibration}" if cal else "")
        + f"; cost timed on {qmap.timing_texts} texts ({qmap.device})"
    )
    table = Table(title=title)
    table.add_column("granularity")
    table.add_column("job", justify="center")
    for _key, label in columns:
        table.add_column(f"{label} raw", justify="right")
        if cal:
            table.add_column(f"{label} cal", justify="right")
    for col in ("tokens/s", "cost", "bytes"):
        table.add_column(col, justify="right")
    for r in qmap.rows:
        cells = [r.granularity, "*" if r.in_job else ""]
        for key, _label in columns:
            cells.append(_num(r.value(key, calibrated=False)))
            if cal:
                cells.append(_num(r.value(key, calibrated=True)))
        cells += [f"{r.tokens_per_second:,.0f}", f"{r.relative_cost:.2f}", f"{r.bytes_per_vector:,}"]
        table.add_row(*cells)
    return table


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
