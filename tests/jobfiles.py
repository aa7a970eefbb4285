"""Job files and small embedjob tables for tests, written from plain values."""

from __future__ import annotations

from pathlib import Path


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
    storage_options: dict[str, str] | None = None,
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
    frags = write_fragments(rows, uri, schema, storage_options=storage_options, max_rows_per_file=max_rows_per_file)
    version = commit(uri, frags, schema=schema, mode=mode, read_version=read_version, storage_options=storage_options)
    if calibration is not None:
        save_calibration(uri, calibration, storage_options=storage_options)
    return version
