"""``embedjob inspect | index | query | gc | upgrade | rollback``: look into an output table, index it, search it,
clean it up, roll it back."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ._app import EndpointOpt, LockTimeoutOpt, RegionOpt, app, open_table_at
from ._console import console, err_console, fail


@app.command()
def inspect(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Show a table's schema, provenance, row count, versions and the runs that made them."""
    tbl = open_table_at(table_uri, endpoint, region)
    prov = tbl.provenance
    head = Table(title=f"{table_uri}", show_header=False)
    head.add_row("rows", f"{tbl.count_rows():,}")
    head.add_row("version", str(tbl.version))
    head.add_row("model", f"{prov.model_path} (weights {prov.weights_fingerprint})")
    head.add_row("granularities", ", ".join(prov.granularities))
    head.add_row("pooling / normalize / max_length", f"{prov.pooling} / {prov.normalize} / {prov.max_length}")
    if prov.chunking:
        head.add_row("chunking", f"{prov.chunking.replace(',', ', ')} (a row per chunk of a document)")
    head.add_row("vector dtype", prov.vector_dtype)
    head.add_row("backend", "int8 (ONNX Runtime, int8 linear layers)" if prov.backend == "int8" else prov.backend)
    head.add_row("calibration", _describe_calibration(tbl))
    head.add_row("embedjob", prov.embedjob_version)
    head.add_row(
        "plain LanceDB text search",
        "registered (import storage.lancedb)"
        if tbl.lancedb_search_registered
        else f"not registered here (older table, or moved): embedjob upgrade {table_uri}",
    )
    head.add_row("rejects", _describe_rejects(tbl.rejects()))
    _add_migration(head, tbl)
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
    _print_tags(tbl, by_version)
    _print_indexes(tbl)
    _print_unfinished(tbl)


def _add_migration(head: Table, tbl) -> None:
    """A migration in progress: from what to what, rows done of the total, steps left at the recent pace."""
    from .._migrate import PACE_RUNS, migration_status

    status = migration_status(tbl.uri, tbl.storage_options)
    if status is None:
        return
    head.add_row("migrating to", f"{status.to.model_path} ({status.changes}); begun by {status.started_by}")
    share = status.done / status.total if status.total else 1.0
    if not status.steps:
        pace = "no step committed yet"
    elif status.nights_left is None:
        pace = "no old rows taken by the recent runs"
    else:
        runs = min(status.steps, PACE_RUNS)
        pace = f"{status.pace:,.0f} old rows per run over the last {runs}: {status.nights_left} run(s) left"
    head.add_row("migrated", f"{status.done:,} of {status.total:,} rows ({share:.0%}); {pace}")


def _describe_rejects(rejects) -> str:
    """Rejected rows per run: a row rejected again by each night counts once per run that saw it."""
    if not rejects.num_rows:
        return "none"
    per_run: dict[str, int] = {}
    for run_id in rejects.column("run_id").to_pylist():
        per_run[run_id] = per_run.get(run_id, 0) + 1
    last = max(per_run)  # run ids sort by their start
    if len(per_run) == 1:
        return f"{per_run[last]:,} rows, by run {last}"
    kept = f"{rejects.num_rows:,} kept over {len(per_run)} runs"
    return f"{per_run[last]:,} rows by the last run that had any ({last}); {kept}"


def _print_tags(tbl, by_version: dict) -> None:
    """The table's tags: each committed run's id on its version, ``latest-good`` first."""
    tags = tbl.tags()
    out = Table(title="tags" if tags else "tags: none (each committed run tags the version it made)")
    if not tags:
        console.print(out)
        return
    for col in ("tag", "version", "mode"):
        out.add_column(col, justify="right" if col == "version" else "left", no_wrap=col == "tag")
    for name, version in tags.items():
        out.add_row(name, str(version), by_version.get(version, {}).get("mode", "-"))
    console.print(out)


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
    lock_timeout: LockTimeoutOpt = 0.0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Build (or replace) cosine vector indexes on granularity columns; each is one new table version.

    Rows a later run adds are still found before the index is rebuilt (they
    are scanned exactly); a job's \\[index] section rebuilds after each run.
    """
    from embedder import GranularityError
    from storage import TableLocked, VectorIndexError, index_params

    tbl = open_table_at(table_uri, endpoint, region)
    grans = [g.strip() for item in granularity or [] for g in item.split(",") if g.strip()]
    if all_columns == bool(grans):
        fail(ValueError("name the columns to index (--granularity l6_d128, repeatable) or --all, not both"))
    try:
        chosen = list(tbl.granularities) if all_columns else [tbl.resolve_granularity(g) for g in grans]
        rows = tbl.count_rows()
        for g in chosen:  # refuse before building any
            index_params(rows, g.dim, index_type, num_partitions=partitions, num_sub_vectors=sub_vectors)
        reports = [
            tbl.create_index(g, index_type, num_partitions=partitions, num_sub_vectors=sub_vectors, wait_s=lock_timeout)
            for g in chosen
        ]
    except (VectorIndexError, GranularityError, TableLocked) as exc:
        fail(exc)
    out = Table(title=f"indexes on {table_uri}")
    for col in ("column", "index", "rows", "took", "version"):
        out.add_column(col, justify="left" if col in ("column", "index") else "right")
    for r in reports:
        out.add_row(r.column, r.params.describe(), f"{r.rows:,}", f"{r.seconds:.1f} s", str(r.version))
    console.print(out)


@app.command()
def query(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    texts: Annotated[list[str], typer.Argument(metavar="TEXT...", help="The query text; several: one search each.")],
    granularity: Annotated[
        str | None, typer.Option("--granularity", "-g", help="e.g. l6_d128 (default: richest).")
    ] = None,
    k: Annotated[
        int | None, typer.Option("--k", "-k", help="How many hits (default 10; a funnel's last stage).")
    ] = None,
    funnel: Annotated[
        str | None,
        typer.Option(
            help="Funnel search: shortlist with a cheap granularity, re-score with richer ones, "
            "e.g. l6_d64:200,l6_d384:10 (the last stage's k is the number of hits).",
        ),
    ] = None,
    per_document: Annotated[
        bool, typer.Option("--per-document", help="A chunked table: the best chunk of each of the top k documents.")
    ] = False,
    nprobes: Annotated[
        int | None, typer.Option(help="IVF partitions to probe when the (first) column has an index.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print hits as JSON lines (with the query's position as 'query').")
    ] = False,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Embed each TEXT with the table's own model and layer, and print the nearest rows."""
    from embedder import EmbedderError

    tbl = open_table_at(table_uri, endpoint, region)
    try:
        if funnel and (granularity or per_document):
            raise ValueError(
                "--funnel names its own granularities and ranks rows; leave out --granularity/--per-document"
            )
        results = [_hits(tbl, text, granularity, k, funnel, per_document, nprobes) for text in texts]
    except (EmbedderError, ValueError) as exc:
        fail(exc)
    where = f"funnel {funnel}" if funnel else f"at {granularity or 'the richest granularity'}"
    for position, (text, (hits, shown)) in enumerate(zip(texts, results, strict=True)):
        if as_json:
            for row in hits.to_pylist():
                row.pop("_distance", None)
                typer.echo(json.dumps({"query": position, **row}, default=str))
        else:
            _print_hits(hits, f"top {shown} for {text!r} {where}")


def _hits(tbl, text: str, granularity: str | None, k: int | None, funnel: str | None, per_document: bool, nprobes):
    """One query's hits and how many were asked for (a funnel's last stage)."""
    if funnel:
        from storage import parse_stages

        stages = parse_stages(funnel)
        if k is not None and k != stages[-1].k:
            raise ValueError(f"-k {k} differs from the funnel's last stage ({stages[-1]}); its k is the hits")
        return tbl.funnel_search(text, stages, nprobes=nprobes), stages[-1].k
    k = 10 if k is None else k
    return tbl.search(text, granularity, k=k, nprobes=nprobes, per_document=per_document), k


def _print_hits(hits, title: str) -> None:
    rows = hits.to_pylist()
    out = Table(title=title)
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


@app.command()
def gc(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    older_than: Annotated[
        str, typer.Option(help="Retention: keep versions (and resumable runs) younger than this, e.g. 7d, 12h, 0s.")
    ] = "7d",
    lock_timeout: LockTimeoutOpt = 0.0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Remove staging folders of finished or abandoned runs, old table versions, and unused calibrations."""
    from storage import TableLocked, collect_garbage

    tbl = open_table_at(table_uri, endpoint, region)
    try:
        report = collect_garbage(
            table_uri, older_than=_duration(older_than), storage_options=tbl.storage_options, wait_s=lock_timeout
        )
    except TableLocked as exc:
        fail(exc)
    out = Table(title=f"gc {table_uri}", show_header=False)
    out.add_row("staging removed", ", ".join(report.staging_removed) or "-")
    out.add_row("staging kept (resumable)", ", ".join(report.staging_kept) or "-")
    out.add_row("versions removed", ", ".join(f"{k}: {v}" for k, v in report.versions_removed.items()))
    out.add_row("bytes removed", f"{report.bytes_removed:,}")
    out.add_row("calibrations removed", ", ".join(report.calibrations_removed) or "-")
    out.add_row("run tags removed", ", ".join(report.tags_removed) or "-")
    console.print(out)


@app.command()
def upgrade(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    lock_timeout: LockTimeoutOpt = 0.0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Bring a table an older embedjob wrote (or one moved since) up to date: register embedjob's query embedding
    for its vector columns, so plain LanceDB's search("text") embeds as embedjob does. One new version, or none."""
    from storage import TableLocked

    tbl = open_table_at(table_uri, endpoint, region)
    try:
        changed = tbl.upgrade(wait_s=lock_timeout)
    except TableLocked as exc:
        fail(exc)
    if changed:
        console.print(
            f"{table_uri}: LanceDB embedding functions written for "
            f"{', '.join(tbl.provenance.granularities)} (version {tbl.version})"
        )
    else:
        console.print(f"{table_uri}: already up to date (version {tbl.version})")


@app.command()
def rollback(
    table_uri: Annotated[str, typer.Argument(metavar="TABLE", help="Output table URI (path or s3://).")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="TAG|VERSION",
            help="The version to go back to: a tag (a run id, latest-good) or a version number (embedjob inspect "
            "lists both).",
        ),
    ],
    lock_timeout: LockTimeoutOpt = 0.0,
    endpoint: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Restore an earlier version's rows as one new version (nothing is deleted: every version stays readable);
    recorded in the runs table, tagged, and made latest-good. The next run is incremental from there."""
    from storage import RollbackError, TableLocked

    tbl = open_table_at(table_uri, endpoint, region)
    try:
        report = tbl.rollback(to, wait_s=lock_timeout)
    except (RollbackError, TableLocked) as exc:
        fail(exc)
    for line in (
        f"rolled back {report.describe()}",
        f"run {report.run_id} ({report.mode}); tags: {', '.join(report.tags) or '-'}",
    ):
        console.print(Text(line), soft_wrap=True)
    for warning in report.warnings:
        err_console.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)


def _duration(text: str):
    from .._spec import parse_duration

    try:
        return parse_duration(text, example="7d")
    except ValueError as exc:
        fail(ValueError(f"--older-than {exc}"))


def _one_line(value: object, limit: int = 160) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
