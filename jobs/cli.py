"""The ``embedjob`` command line."""

from __future__ import annotations

import json
import logging
import os
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import __version__, _console
from ._console import console, err_console
from ._console import fail as _fail


class _OneErrorPath(TyperGroup):
    """Every command's failure ends as one line, ``error: ...`` naming the value and the fix, and exit code 2;
    ``embedjob --debug ...`` (or ``EMBEDJOB_DEBUG=1``) shows the traceback instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if type(exc).__module__.startswith(("typer", "click")):  # exits, aborts, usage errors: theirs
                raise
            _fail(exc)  # (with --debug: raised again, traceback and all)


app = typer.Typer(
    name="embedjob",
    help="Distributed batch embedding jobs with elastic (layer, dim) granularities.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneErrorPath,
)

EndpointOpt = Annotated[
    str | None, typer.Option("--endpoint", help="S3-compatible endpoint for s3:// tables (keys from AWS_* env).")
]
RegionOpt = Annotated[str | None, typer.Option("--region", help="S3 region for s3:// tables.")]


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of a failure instead of its one-line error.")
    ] = False,
) -> None:
    _console.debug = debug


@app.command()
def version() -> None:
    """Print the embedjob version."""
    console.print(f"embedjob {__version__}")


@app.command()
def validate(job: Annotated[str, typer.Argument(help="The job file (TOML).")]) -> None:
    """Run every check a job gets before Ray starts, and nothing else."""
    from ._checks import check_job
    from ._spec import JobSpecError, load_job

    try:
        resolved = check_job(load_job(job), source_name=job)
    except JobSpecError as exc:
        _fail(exc)
    table = Table(title=f"{job}: valid", show_header=False)
    table.add_row("input", f"{resolved.source.uri} ({resolved.source.format}, {len(resolved.source.paths)} file(s))")
    table.add_row("model", resolved.provenance.model_path)
    table.add_row("granularities", ", ".join(str(g) for g in resolved.granularities))
    table.add_row("output", f"{resolved.output_uri} (mode {resolved.mode})")
    cal = resolved.calibration
    table.add_row(
        "calibration", f"{cal.fingerprint} ({resolved.calibration_origin})" if cal else resolved.calibration_origin
    )
    console.print(table)


@app.command()
def run(
    job: Annotated[str, typer.Argument(help="The job file (TOML).")],
    progress: Annotated[bool, typer.Option(help="Show Ray Data progress bars.")] = True,
    address: Annotated[str | None, typer.Option(help="Ray address (overrides cluster.address).")] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for another run that holds the table's lock (default: refuse).")
    ] = 0.0,
    add_granularity: Annotated[
        list[str] | None,
        typer.Option(
            "--add-granularity",
            help="Backfill: embed the table's stored text for these new granularities (e.g. l4_d64) and add "
            "them as columns in one commit; the job lists the table's granularities plus these.",
        ),
    ] = None,
    allow_deletes: Annotated[
        bool,
        typer.Option(
            "--allow-deletes",
            help="Allow this run to delete more of the table than [output] max_delete_fraction (ids gone from "
            "the input); without it such a run fails before its commit.",
        ),
    ] = False,
) -> None:
    """Embed what changed in the corpus a job names and commit one new version of its output table.

    Once the table exists the default mode is incremental: only new and changed
    rows are embedded. An unfinished earlier run of the same job is resumed.
    """
    from ._run import run_job

    _logging()
    overrides = {"cluster.address": address} if address else None
    try:
        if add_granularity:
            from ._backfill import backfill_job

            grans = [g.strip() for item in add_granularity for g in item.split(",") if g.strip()]
            summary = backfill_job(job, grans, progress=progress, overrides=overrides, wait_s=wait)
        else:
            summary = run_job(job, progress=progress, overrides=overrides, wait_s=wait, allow_deletes=allow_deletes)
    except _run_errors() as exc:
        _fail(exc)
    _print_summary(summary)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The id of an unfinished run.")],
    table: Annotated[
        str | None, typer.Option(help="The run's output table, when this machine did not start the run.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show Ray Data progress bars.")] = True,
    address: Annotated[str | None, typer.Option(help="Ray address (overrides cluster.address).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the table's lock.")] = 0.0,
    allow_deletes: Annotated[
        bool, typer.Option("--allow-deletes", help="Allow deleting more than [output] max_delete_fraction.")
    ] = False,
) -> None:
    """Finish a run whose driver died: rows it staged are committed, not embedded again."""
    from ._run import resume_run

    _logging()
    try:
        summary = resume_run(
            run_id, table_uri=table, progress=progress, address=address, wait_s=wait, allow_deletes=allow_deletes
        )
    except _run_errors() as exc:
        _fail(exc)
    _print_summary(summary)


def _print_summary(summary) -> None:
    table = Table(title=f"run {summary.run_id}: {summary.status}", show_header=False)
    version = (
        f"version {summary.table_version}"
        if summary.table_version != summary.read_version
        else f"still version {summary.table_version}: nothing changed"
    )
    table.add_row("table", f"{summary.table_uri} ({version}, mode {summary.mode})")
    table.add_row(
        "rows read / embedded / rejected",
        f"{summary.rows_read:,} / {summary.rows_embedded:,} / {summary.rows_rejected:,}",
    )
    table.add_row(
        "new / changed / unchanged / deleted",
        f"{summary.rows_new:,} / {summary.rows_changed:,} / {summary.rows_unchanged:,} / {summary.rows_deleted:,}",
    )
    if summary.rows_resumed:
        table.add_row("resumed", f"{summary.rows_resumed:,} rows staged by an earlier attempt, not embedded again")
    if summary.reject_reasons:
        table.add_row("reject reasons", ", ".join(f"{r}: {n}" for r, n in summary.reject_reasons.items()))
    table.add_row("tokens (truncated texts)", f"{summary.tokens:,} ({summary.truncated:,})")
    table.add_row("actor pool", summary.pool)
    per_node = getattr(summary, "rows_per_node", None) or {}
    if len(per_node) > 1:  # each Ray node id by its first 8 hex digits
        table.add_row(
            f"rows per node ({len(per_node)} nodes)", ", ".join(f"{node[:8]}: {n:,}" for node, n in per_node.items())
        )
    if summary.calibration:
        fitted = f", fitting took {summary.seconds_calibration:.1f} s" if summary.seconds_calibration else ""
        table.add_row("calibration", f"{summary.calibration} ({summary.calibration_origin}{fitted})")
    table.add_row("wall time", f"{summary.seconds:.1f} s (pipeline {summary.seconds_pipeline:.1f} s)")
    table.add_row("throughput", f"{summary.rows_per_s:,.1f} rows/s, {summary.tokens_per_s:,.0f} tokens/s")
    for i in summary.indexes:
        what = (
            f"{i['description']} on {i['rows']:,} rows in {i['seconds']:.1f} s (version {i['version']})"
            if i["action"] == "built"
            else f"{i['action']}: {i['reason']}"
        )
        table.add_row(f"index {i['column']}", what)
    console.print(table)
    for warning in getattr(summary, "warnings", None) or []:
        err_console.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)
    if any(i["action"] == "failed" for i in summary.indexes):
        err_console.print("error: the run committed, but an index could not be built (see above)")
        raise typer.Exit(1)


@app.command()
def gc(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    older_than: Annotated[
        str, typer.Option(help="Retention: keep versions (and resumable runs) younger than this, e.g. 7d, 12h, 0s.")
    ] = "7d",
    wait: Annotated[float, typer.Option(help="Seconds to wait for a run that holds the table's lock.")] = 0.0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Remove staging folders of finished or abandoned runs, old table versions, and unused calibrations."""
    from storage import TableLocked, collect_garbage

    tbl = _open(table_uri, endpoint, region)
    try:
        report = collect_garbage(
            table_uri, older_than=_duration(older_than), storage_options=tbl.storage_options, wait_s=wait
        )
    except TableLocked as exc:
        _fail(exc)
    out = Table(title=f"gc {table_uri}", show_header=False)
    out.add_row("staging removed", ", ".join(report.staging_removed) or "-")
    out.add_row("staging kept (resumable)", ", ".join(report.staging_kept) or "-")
    out.add_row("versions removed", ", ".join(f"{k}: {v}" for k, v in report.versions_removed.items()))
    out.add_row("bytes removed", f"{report.bytes_removed:,}")
    out.add_row("calibrations removed", ", ".join(report.calibrations_removed) or "-")
    console.print(out)


def _duration(text: str):
    from datetime import timedelta

    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    value, unit = text[:-1], text[-1:]
    try:
        if unit not in units:
            raise ValueError
        return timedelta(**{units[unit]: float(value)})
    except ValueError:
        _fail(ValueError(f"--older-than {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 7d"))


@app.command()
def calibrate(
    job: Annotated[str, typer.Argument(help="The job file (TOML).")],
    sample: Annotated[
        int | None,
        typer.Option(help="About how many rows of the corpus to fit on (default: [calibrate] sample, 5000)."),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Exit layers to fit maps for: 'job' (the granularities'), 'all', or e.g. '1,2,3'."),
    ] = None,
    heldout: Annotated[
        float | None, typer.Option(help="Share of the sample held out to choose the ridge strength (default 0.2).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sample (by a hash of each row's id).")] = None,
    progress: Annotated[bool, typer.Option(help="Show Ray Data progress bars.")] = True,
    address: Annotated[str | None, typer.Option(help="Ray address (overrides cluster.address).")] = None,
) -> None:
    """Fit a calibration (Matryoshka rotation + per-exit linear maps) on a sample of the job's corpus.

    Stored next to the job's output, where `calibration = "auto"` finds it.
    """
    from embedder import EmbedderError

    from ._calibrate import calibrate_job
    from ._spec import JobSpecError

    _logging()
    overrides: dict[str, object] = {}
    for key, value in (("sample", sample), ("heldout", heldout), ("seed", seed)):
        if value is not None:
            overrides[f"calibrate.{key}"] = value
    if layers is not None:
        overrides["calibrate.layers"] = _parse_layers(layers)
    if address:
        overrides["cluster.address"] = address
    try:
        report = calibrate_job(job, progress=progress, overrides=overrides)
    except (JobSpecError, EmbedderError) as exc:
        _fail(exc)
    cal = report.calibration
    info = cal.info
    head = Table(title=f"calibration {cal.fingerprint}", show_header=False)
    head.add_row("stored at", report.uri)
    head.add_row("model", f"{info.model_path} (weights {info.model_fingerprint})")
    head.add_row(
        "sample",
        f"{report.rows_sampled:,} of {report.rows_total:,} rows ({info.sample_size - info.heldout_size:,} to fit, "
        f"{info.heldout_size:,} held out), seed {info.seed}",
    )
    kept = cal.describe()["variance_kept"]
    head.add_row("variance kept by the first dims", ", ".join(f"{d}: {v:.1%}" for d, v in kept.items()))
    head.add_row("took", f"{report.seconds:.1f} s on {report.pool}")
    console.print(head)
    fits = Table(title="per-exit maps (ridge strength chosen on the held-out rows)")
    for col in ("layer", "alpha", "held-out R²", "held-out R², first 64 dims"):
        fits.add_column(col, justify="right")
    for f in info.fits:
        fits.add_row(str(f.layer), f"{f.alpha:.3g}", f"{f.heldout_r2:.3f}", f"{f.heldout_r2_d64:.3f}")
    if info.fits:
        console.print(fits)
    console.print(f'Use it: calibration = "auto" in the job file (or calibration = "{report.uri}").')


def _parse_layers(text: str) -> str | list[int]:
    key = text.strip().lower()
    if key in ("job", "all"):
        return key
    try:
        return [int(part) for part in key.split(",") if part.strip()]
    except ValueError:
        _fail(ValueError(f"--layers {text!r}: expected 'job', 'all' or comma-separated layer numbers like '1,2,3'"))


@app.command()
def inspect(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Show a table's schema, provenance, row count, versions and the runs that made them."""
    tbl = _open(table_uri, endpoint, region)
    prov = tbl.provenance
    head = Table(title=f"{table_uri}", show_header=False)
    head.add_row("rows", f"{tbl.count_rows():,}")
    head.add_row("version", str(tbl.version))
    head.add_row("model", f"{prov.model_path} (weights {prov.weights_fingerprint})")
    head.add_row("granularities", ", ".join(prov.granularities))
    head.add_row("pooling / normalize / max_length", f"{prov.pooling} / {prov.normalize} / {prov.max_length}")
    head.add_row("vector dtype", prov.vector_dtype)
    head.add_row("calibration", _describe_calibration(tbl))
    head.add_row("embedjob", prov.embedjob_version)
    head.add_row("rejects", f"{tbl.rejects().num_rows:,} rows")
    console.print(head)
    schema = Table(title="schema")
    schema.add_column("column")
    schema.add_column("type")
    for f in tbl.dataset.schema:
        schema.add_row(f.name, str(f.type))
    console.print(schema)
    runs = Table(title="versions and the runs that made them")
    runs.add_column("version", justify="right")
    runs.add_column("committed (UTC)", no_wrap=True)
    runs.add_column("run", no_wrap=True, min_width=26)
    for col in ("mode", "read", "embedded", "unchanged", "deleted", "rejected"):
        runs.add_column(col, justify="right" if col != "mode" else "left")
    keys = ("rows_read", "rows_embedded", "rows_unchanged", "rows_deleted", "rows_rejected")
    by_version = {r["table_version"]: r for r in tbl.runs() if r.get("status", "committed") == "committed"}
    for v in tbl.dataset.versions():  # run records are already in by_version; read them once
        r = by_version.get(v["version"], {})
        stamp = v["timestamp"]
        runs.add_row(
            str(v["version"]),
            stamp.strftime("%Y-%m-%d %H:%M:%S") if hasattr(stamp, "strftime") else str(stamp),
            r.get("run_id", "-"),
            r.get("mode", "-"),
            *(f"{r[k]:,}" if r.get(k) is not None else "-" for k in keys),
        )
    console.print(runs)
    _print_indexes(tbl)
    _print_unfinished(tbl)


def _print_indexes(tbl) -> None:
    indexes = tbl.indexes()
    out = Table(title="vector indexes" if indexes else "vector indexes: none (embedjob index TABLE -g GRANULARITY)")
    if not indexes:
        console.print(out)
        return
    for col in ("column", "type", "partitions", "sub-vectors", "indexed rows", "unindexed rows"):
        out.add_column(col, justify="left" if col in ("column", "type") else "right")
    for i in indexes:
        out.add_row(
            i["column"],
            i["type"],
            str(i["num_partitions"] or "-"),
            str(i["num_sub_vectors"] or "-"),
            f"{i['indexed_rows']:,}",
            f"{i['unindexed_rows']:,}",
        )
    console.print(out)


def _print_unfinished(tbl) -> None:
    """Runs that did not commit: failed ones (from the runs table) and any still staged (resumable or running)."""
    from storage import StagingRecord, TableLock, staged_runs

    failed = [r for r in tbl.runs() if r.get("status") == "failed"]
    staged = staged_runs(tbl.uri, tbl.storage_options)
    if not failed and not staged:
        return
    out = Table(title="runs that did not commit")
    for col in ("run", "status", "started (UTC)", "staged rows", "what now"):
        out.add_column(col, no_wrap=col in ("run", "status"))
    holder = TableLock(tbl.uri, run_id="inspect", storage_options=tbl.storage_options).live_holder() or {}
    staged_ids = set()
    for s in staged:
        record = s.read_record() or StagingRecord(run_id=s.run_id, status="")
        staged_ids.add(s.run_id)
        running = holder.get("run_id") == s.run_id and record.status in ("running", "committing")
        resumable = record.resume_problem(tbl.version) is None
        status = "running" if running else (record.status or "?")
        if status == "running" and not running:
            status = "interrupted"
        if running:
            action = "-"
        elif status == "committed":  # its bookkeeping is what is left
            action = f"committed; embedjob resume {s.run_id} --table {tbl.uri} writes its record"
        elif status == "committing":
            action = f"stopped at its commit: embedjob resume {s.run_id} --table {tbl.uri}"
        else:
            action = f"embedjob resume {s.run_id}" if resumable else "abandoned: embedjob gc"
        out.add_row(
            s.run_id, status, str(record.started_at or "-")[:19], f"{sum(len(p.ids) for p in s.parts()):,}", action
        )
    for r in failed:
        if r["run_id"] not in staged_ids:
            out.add_row(r["run_id"], "failed", str(r["started_at"])[:19], "-", _one_line(r.get("error") or "", 80))
    console.print(out)


@app.command()
def index(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    granularity: Annotated[
        list[str] | None, typer.Option("--granularity", "-g", help="Column(s) to index, e.g. l6_d128.")
    ] = None,
    all_columns: Annotated[bool, typer.Option("--all", help="Index every vector column.")] = False,
    index_type: Annotated[str, typer.Option("--type", help="ivf_pq, ivf_hnsw_sq or ivf_flat.")] = "ivf_pq",
    partitions: Annotated[
        int | None, typer.Option(help="IVF partitions (default: about sqrt(rows), at most rows / 256).")
    ] = None,
    sub_vectors: Annotated[
        int | None, typer.Option(help="PQ sub-vectors, a divisor of the dim (default: dim / 8).")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a run that holds the table's lock.")] = 0.0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Build (or replace) cosine vector indexes on granularity columns; each is one new table version.

    Rows a later run adds are still found before the index is rebuilt (they
    are scanned exactly); a job's [index] section rebuilds after each run.
    """
    from embedder import GranularityError
    from storage import TableLocked, VectorIndexError, index_params

    tbl = _open(table_uri, endpoint, region)
    grans = [g.strip() for item in granularity or [] for g in item.split(",") if g.strip()]
    if all_columns == bool(grans):
        _fail(ValueError("name the columns to index (--granularity l6_d128, repeatable) or --all, not both"))
    try:
        chosen = list(tbl.granularities) if all_columns else [tbl.resolve_granularity(g) for g in grans]
        rows = tbl.count_rows()
        for g in chosen:  # refuse before building any
            index_params(rows, g.dim, index_type, num_partitions=partitions, num_sub_vectors=sub_vectors)
        reports = [
            tbl.create_index(g, index_type, num_partitions=partitions, num_sub_vectors=sub_vectors, wait_s=wait)
            for g in chosen
        ]
    except (VectorIndexError, GranularityError, TableLocked) as exc:
        _fail(exc)
    out = Table(title=f"indexes on {table_uri}")
    for col in ("column", "index", "rows", "took", "version"):
        out.add_column(col, justify="left" if col in ("column", "index") else "right")
    for r in reports:
        out.add_row(r.column, r.params.describe(), f"{r.rows:,}", f"{r.seconds:.1f} s", str(r.version))
    console.print(out)


@app.command()
def query(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    text: Annotated[str, typer.Argument(help="The query text.")],
    granularity: Annotated[
        str | None, typer.Option("--granularity", "-g", help="e.g. l6_d128 (default: richest).")
    ] = None,
    k: Annotated[int | None, typer.Option("-k", help="How many hits (default 10; a funnel's last stage).")] = None,
    funnel: Annotated[
        str | None,
        typer.Option(
            help="Funnel search: shortlist with a cheap granularity, re-score with richer ones, "
            "e.g. l6_d64:200,l6_d384:10 (the last stage's k is the number of hits).",
        ),
    ] = None,
    nprobes: Annotated[
        int | None, typer.Option(help="IVF partitions to probe when the (first) column has an index.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines.")] = False,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Embed TEXT with the table's own model and layer, and print the nearest rows."""
    from embedder import EmbedderError

    tbl = _open(table_uri, endpoint, region)
    try:
        if funnel:
            if granularity:
                raise ValueError("--funnel names its own granularities; leave out --granularity")
            from storage import parse_stages

            stages = parse_stages(funnel)
            if k is not None and k != stages[-1].k:
                raise ValueError(f"-k {k} differs from the funnel's last stage ({stages[-1]}); its k is the hits")
            hits = tbl.funnel_search(text, stages, nprobes=nprobes)
            k = stages[-1].k
        else:
            k = 10 if k is None else k
            hits = tbl.search(text, granularity, k=k, nprobes=nprobes)
    except (EmbedderError, ValueError) as exc:
        _fail(exc)
    rows = hits.to_pylist()
    if as_json:
        for row in rows:
            row.pop("_distance", None)
            typer.echo(json.dumps(row, default=str))
        return
    where = f"funnel {funnel}" if funnel else f"at {granularity or 'the richest granularity'}"
    out = Table(title=f"top {k} for {text!r} {where}")
    id_width = max([len(str(r["id"])) for r in rows] + [2])
    out.add_column("rank", justify="right", no_wrap=True, min_width=4)
    out.add_column("score", justify="right", no_wrap=True, min_width=6)
    out.add_column("id", no_wrap=True, min_width=min(id_width, 40))
    stage_scores = [c for c in hits.column_names if c.startswith("score_")]
    for c in stage_scores:
        out.add_column(c.removeprefix("score_"), justify="right", no_wrap=True)
    extra = [c for c in hits.column_names if c not in ("id", "score", "_distance", *stage_scores)]
    for c in extra:
        out.add_column(c, overflow="ellipsis", max_width=90 if c == "text" else 24)
    for rank, row in enumerate(rows, start=1):
        out.add_row(
            str(rank),
            f"{row['score']:.4f}",
            str(row["id"]),
            *[f"{row[c]:.4f}" for c in stage_scores],
            *[_one_line(row[c]) for c in extra],
        )
    console.print(out)


@app.command("model-info")
def model_info(
    path: Annotated[str, typer.Argument(help="Local Hugging Face or sentence-transformers model dir.")],
    granularities: Annotated[
        str,
        typer.Option("--granularities", "-g", help="'starbucks' or e.g. 'l3_d64,l6_d384'."),
    ] = "starbucks",
) -> None:
    """Show what a model dir can serve: depth, width, pooling, max length, and the granularities resolved."""
    from embedder import EmbedderError, read_model_dir, resolve_granularities

    try:
        mdir = read_model_dir(path)
        grans = resolve_granularities(
            granularities, num_layers=mdir.num_layers, hidden_size=mdir.hidden_size, model_name=mdir.name
        )
    except EmbedderError as exc:
        _fail(exc)
    table = Table(title=f"{mdir.root}", show_header=False)
    table.add_row("model type", str(mdir.config.get("model_type", "?")))
    table.add_row("layers", f"1..{mdir.num_layers}")
    table.add_row("dims", f"1..{mdir.hidden_size}")
    table.add_row("pooling", mdir.pooling.value if mdir.pooling else "mean (default; no pooling config)")
    table.add_row("max_seq_length", str(mdir.max_seq_length or "model limit"))
    table.add_row("granularities", ", ".join(str(g) for g in grans))
    console.print(table)


def _describe_calibration(tbl) -> str:
    from embedder import CalibrationError

    if not tbl.provenance.calibration:
        return "none"
    try:
        cal = tbl.calibration
    except CalibrationError as exc:
        return f"{tbl.provenance.calibration} (cannot be loaded: {exc})"
    info = cal.info
    layers = ", ".join(map(str, cal.layers)) or "none"
    return f"{cal.fingerprint} (maps for layers {layers}; fitted on {info.sample_size:,} rows of {info.corpus})"


def _run_errors() -> tuple[type[Exception], ...]:
    from storage import RunIdError, TableLocked, TableMovedError

    from ._guards import RunRefused
    from ._run import RunNotResumable
    from ._spec import JobSpecError

    return (JobSpecError, RunRefused, RunNotResumable, RunIdError, TableLocked, TableMovedError)


def _one_line(value: object, limit: int = 160) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _open(uri: str, endpoint: str | None, region: str | None):
    from storage import ObjectStore, StoreError, TableNotFoundError, check_store, open_table

    opts = None
    try:
        if uri.startswith("s3://"):
            opts = ObjectStore.from_env(endpoint=endpoint, region=region).lance_options()
            check_store(uri, opts)  # one line, fast, for a store that can't be used
        return open_table(uri, storage_options=opts)
    except (TableNotFoundError, StoreError) as exc:
        _fail(exc)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


from ._cli_ops import register  # noqa: E402  (submit/status/logs/stop and the schedule group)

register(app)
from ._cli_evaluate import register as register_evaluate  # noqa: E402  (embedjob evaluate: the quality map)

register_evaluate(app)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
