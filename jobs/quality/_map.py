"""The quality map: how good and how cheap every (layer, dim) of a job's or table's model is, on a sample.

For each granularity of the grid (default: every layer of the model x dims
32, 64, 128, 256 and full width, plus the job's own), on a sample of the
corpus:

- **agreement** with the richest vector (full depth, full width, raw):
  recall@k of each text's k nearest neighbours in the sample against its
  neighbours under the full vector;
- **encode cost** of its layer: the same timing texts encoded with the model
  stopped at that layer, as tokens/s and relative to full depth (= 1.0);
  bytes per vector (dims x the vector dtype's size);
- **correlation with people**, when a human-judged set is at hand: Spearman
  between pair cosines and human ratings, for the built-in Lee set (in the
  gensim wheel) and a user's own pairs file.

When the job or table has a calibration, the sample is also encoded through
it and every figure is given raw and calibrated (n/a for a layer it has no map
for). One forward pass to full depth gives the whole grid; the timing passes
stop at each exit layer for real.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cluster import ProgressDisplay
from embedder import (
    Calibration,
    CalibrationError,
    Granularity,
    ModelError,
    agreement,
    embeddable_text,
    neighbours,
    pair_correlation,
    recommend,
)
from storage import EmbeddingTable, Provenance, open_table, read_provenance, sample_texts

if TYPE_CHECKING:
    from embedder import ElasticEncoder

from ._human import LEE_INSTALL_HINT, ScoredPairs, lee_set, read_pairs

__all__ = [
    "DEFAULT_DIMS",
    "DEFAULT_K",
    "DEFAULT_SAMPLE",
    "DEFAULT_TIMING",
    "GRIDS",
    "METRICS",
    "QualityMap",
    "QualityRow",
    "evaluate",
    "evaluate_job",
    "evaluate_table",
    "quality_grid",
    "sample_job_texts",
    "write_heatmap",
]

logger = logging.getLogger("embedjob")

DEFAULT_DIMS = (32, 64, 128, 256)  # plus full width and the job's own dims
DEFAULT_SAMPLE = 2000
DEFAULT_TIMING = 256
DEFAULT_K = 10
GRIDS = ("full", "job")
METRICS = ("recall", "lee", "pairs")
_DTYPE_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True, kw_only=True)
class QualityRow:
    """One granularity's figures. ``None``: not measured (no calibration map for the layer, no such set)."""

    granularity: str
    layer: int
    dim: int
    in_job: bool
    recall_raw: float
    recall_calibrated: float | None
    lee_raw: float | None
    lee_calibrated: float | None
    pairs_raw: float | None
    pairs_calibrated: float | None
    tokens_per_second: float
    relative_cost: float
    bytes_per_vector: int

    def value(self, metric: str, *, calibrated: bool) -> float | None:
        """``metric`` (recall, lee or pairs), raw or calibrated."""
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        return getattr(self, f"{metric}_{'calibrated' if calibrated else 'raw'}")


@dataclass(frozen=True, kw_only=True)
class QualityMap:
    """The quality map of one model config on one sample; ``to_dict`` / ``to_json`` give every figure."""

    source: str
    model_path: str
    weights_fingerprint: str
    num_layers: int
    hidden_size: int
    pooling: str
    max_length: int
    vector_dtype: str
    calibration: str | None
    reference: str
    grid: str
    k: int
    sample_size: int
    seed: int
    timing_texts: int
    timing_tokens: int
    lee_pairs: int | None
    pairs_file: str | None
    pairs_count: int | None
    device: str
    seconds: float
    notes: tuple[str, ...]
    rows: tuple[QualityRow, ...]

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def row(self, granularity: str | Granularity) -> QualityRow:
        name = str(Granularity.parse(granularity))
        for r in self.rows:
            if r.granularity == name:
                return r
        raise KeyError(f"{name} is not in this quality map; it has {', '.join(r.granularity for r in self.rows)}")

    def layer_cost(self) -> dict[int, float]:
        return {r.layer: r.relative_cost for r in self.rows}

    def recommend(self, budget: float, metric: str = "recall") -> QualityRow:
        """The cheapest granularity whose ``metric`` is within ``budget`` (e.g. 0.95) of the full vector's.

        Calibrated figures when the map has a calibration (a layer it has no
        map for is no candidate), raw otherwise. Cheapest: the lowest measured
        encode cost of the layer, then the fewest dims (see :func:`embedder.recommend`).
        """
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        quality = {Granularity(r.layer, r.dim): r.value(metric, calibrated=self.calibrated) for r in self.rows}
        if all(v is None for v in quality.values()):
            missing = {"lee": "the built-in Lee set was not used", "pairs": "no --pairs file was given"}
            raise ValueError(f"no {metric} figures to recommend from: {missing.get(metric, 'none measured')}")
        chosen = recommend(quality, self.layer_cost(), budget, reference=Granularity.parse(self.reference))
        return self.row(chosen)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["rows"] = [asdict(r) for r in self.rows]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityMap:
        data = dict(data)
        rows = tuple(QualityRow(**r) for r in data.pop("rows"))
        known = {f.name for f in fields(cls)}
        return cls(rows=rows, **{k: (tuple(v) if k == "notes" else v) for k, v in data.items() if k in known})

    def write_json(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_json() + "\n", encoding="utf-8")
        return target


# ------------------------------------------------------------------ the grid


def quality_grid(
    num_layers: int,
    hidden_size: int,
    job_granularities: Sequence[Granularity],
    *,
    grid: str = "full",
    dims: Sequence[int] = DEFAULT_DIMS,
) -> tuple[Granularity, ...]:
    """The granularities a quality map measures, sorted by (layer, dim).

    ``grid="full"``: every layer 1..num_layers x (``dims`` up to the width, the
    full width and the job's dims). ``grid="job"``: the job's granularities.
    Either way the reference (full depth, full width) is included.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid {grid!r} is not one of {', '.join(GRIDS)}")
    bad = [d for d in dims if d < 1]
    if bad:
        raise ValueError(f"dims must be >= 1; got {bad}")
    reference = Granularity(num_layers, hidden_size)
    if grid == "job":
        return tuple(sorted({*job_granularities, reference}))
    widths = {d for d in dims if d <= hidden_size} | {hidden_size} | {g.dim for g in job_granularities}
    return tuple(Granularity(layer, d) for layer in range(1, num_layers + 1) for d in sorted(widths))


# ------------------------------------------------------------------ evaluation


def evaluate(
    texts: Sequence[str],
    provenance: Provenance,
    *,
    calibration: Calibration | None = None,
    grid: Literal["full", "job"] | str = "full",
    dims: Sequence[int] = DEFAULT_DIMS,
    k: int = DEFAULT_K,
    timing_texts: int = DEFAULT_TIMING,
    repeats: int = 3,
    lee: ScoredPairs | None = None,
    pairs: ScoredPairs | None = None,
    source: str = "",
    seed: int = 0,
    notes: Sequence[str] = (),
    device: str | None = None,
    display: ProgressDisplay | None = None,
) -> QualityMap:
    """Measure the quality map of ``provenance``'s model config on ``texts`` (see the module docstring).

    ``timing_texts``: how many of ``texts`` each exit layer is timed on (best
    of ``repeats`` passes, layers interleaved). ``lee`` / ``pairs``: human-judged
    sets. ``device``: as :meth:`ElasticEncoder.from_pretrained` (default: CUDA when there is one).
    ``display``: where each step shows its texts encoded so far (none: nothing shown).
    """
    display = display or ProgressDisplay("evaluate", live=False)
    t_start = time.perf_counter()
    texts = list(texts)
    if len(texts) <= k:
        raise ValueError(
            f"the sample has {len(texts)} text(s); recall@{k} needs more than {k} (a larger sample, or a smaller --k)"
        )
    if timing_texts < 1 or repeats < 1:
        raise ValueError(f"timing texts and repeats must be >= 1; got {timing_texts} and {repeats}")
    prov = provenance
    job = tuple(Granularity.parse(g) for g in prov.granularities)
    grans = quality_grid(prov.num_layers, prov.hidden_size, job, grid=grid, dims=dims)
    reference = Granularity(prov.num_layers, prov.hidden_size)
    dtype_bytes = _DTYPE_BYTES.get(prov.vector_dtype, 4)
    from embedder import ElasticEncoder  # here: torch is imported by a quality map, not by every command

    options = dict(
        pooling=prov.pooling, normalize=prov.normalize, max_length=prov.max_length, device=device, backend=prov.backend
    )

    raw_enc = ElasticEncoder.from_pretrained(prov.model_path, grans, **options)
    if raw_enc.fingerprint != prov.weights_fingerprint:
        raise ModelError(
            prov.model_path,
            f"its weights are now {raw_enc.fingerprint}, but the vectors being evaluated were made with "
            f"{prov.weights_fingerprint}; the quality map would describe another model",
        )
    layers = sorted({g.layer for g in grans})
    logger.info(
        "quality map: timing %d exit layers on %d texts (best of %d passes)", len(layers), timing_texts, repeats
    )
    timing = _time_layers(raw_enc, grans, texts[:timing_texts], repeats, display)
    logger.info("quality map: embedding the sample of %d texts at %d granularities", len(texts), len(grans))
    display.begin("encoding the sample", total=len(texts))
    raw = _encode(raw_enc, texts, display)
    truth = neighbours(raw[reference], k)
    human = {name: s for name, s in (("lee", lee), ("pairs", pairs)) if s is not None}
    logger.info("quality map: embedding the human-rated sets (%s)", ", ".join(human) or "none")
    human_raw = _encode_sets(raw_enc, human, display, "encoding the human-rated sets")
    device_name = str(raw_enc.device)
    del raw_enc

    cal: dict[Granularity, np.ndarray] = {}
    human_cal: dict[str, dict[Granularity, np.ndarray]] = {}
    if calibration is not None:
        served = [g for g in grans if calibration.serves(g.layer)]
        logger.info("quality map: the same through the calibration (%d granularities)", len(served))
        cal_enc = ElasticEncoder.from_pretrained(prov.model_path, served, calibration=calibration, **options)
        display.begin("encoding the sample through the calibration", total=len(texts))
        cal = _encode(cal_enc, texts, display)
        human_cal = _encode_sets(cal_enc, human, display, "encoding the human-rated sets through the calibration")
        del cal_enc

    def correlation(name: str, vectors: Mapping[str, Mapping[Granularity, np.ndarray]], g: Granularity):
        if name not in vectors or g not in vectors[name]:
            return None
        s = human[name]
        return _finite(pair_correlation(vectors[name][g], s.pairs, s.scores))

    full_seconds = timing[reference.layer][0]
    rows = []
    for g in grans:
        seconds, tokens = timing[g.layer]
        rows.append(
            QualityRow(
                granularity=str(g),
                layer=g.layer,
                dim=g.dim,
                in_job=g in job,
                recall_raw=agreement(raw[g], truth=truth),
                recall_calibrated=agreement(cal[g], truth=truth) if g in cal else None,
                lee_raw=correlation("lee", human_raw, g),
                lee_calibrated=correlation("lee", human_cal, g),
                pairs_raw=correlation("pairs", human_raw, g),
                pairs_calibrated=correlation("pairs", human_cal, g),
                tokens_per_second=tokens / seconds if seconds > 0 else math.inf,
                relative_cost=seconds / full_seconds if full_seconds > 0 else 1.0,
                bytes_per_vector=g.dim * dtype_bytes,
            )
        )
    all_notes = list(notes)
    if calibration is not None:
        missing = sorted({g.layer for g in grans} - {g.layer for g in cal})
        if missing:
            all_notes.append(
                f"calibration {calibration.fingerprint} has no map for layer(s) {', '.join(map(str, missing))}: "
                f"calibrated n/a there (embedjob calibrate --layers all fits every layer)"
            )
    return QualityMap(
        source=source,
        model_path=prov.model_path,
        weights_fingerprint=prov.weights_fingerprint,
        num_layers=prov.num_layers,
        hidden_size=prov.hidden_size,
        pooling=prov.pooling,
        max_length=prov.max_length,
        vector_dtype=prov.vector_dtype,
        calibration=calibration.fingerprint if calibration is not None else None,
        reference=str(reference),
        grid=grid,
        k=k,
        sample_size=len(texts),
        seed=seed,
        timing_texts=min(timing_texts, len(texts)),
        timing_tokens=timing[reference.layer][1],
        lee_pairs=len(lee) if lee is not None else None,
        pairs_file=pairs.name if pairs is not None else None,
        pairs_count=len(pairs) if pairs is not None else None,
        device=device_name,
        seconds=time.perf_counter() - t_start,
        notes=tuple(all_notes),
        rows=tuple(rows),
    )


#: texts per encode call when a step reports its progress (small enough to move, large enough to batch well)
_CHUNK = 256


def _encode(encoder: ElasticEncoder, texts: Sequence[str], display: ProgressDisplay) -> dict[Granularity, np.ndarray]:
    """``encoder.encode(texts)``, a chunk at a time, each chunk's texts and tokens added to ``display``."""
    parts: list[dict[Granularity, np.ndarray]] = []
    for start in range(0, len(texts), _CHUNK):
        result = encoder.encode_with_stats(texts[start : start + _CHUNK])
        parts.append(result.vectors)
        n = len(result.token_counts)
        display.add(read=n, done=n, embedded=n, tokens=int(result.token_counts.sum()))
    if not parts:
        return encoder.encode(texts)
    return {g: np.concatenate([p[g] for p in parts]) for g in parts[0]}


def _encode_sets(
    encoder: ElasticEncoder, sets: Mapping[str, ScoredPairs], display: ProgressDisplay, stage: str
) -> dict[str, dict[Granularity, np.ndarray]]:
    """Each human-rated set's texts encoded, as one step of ``display`` (none when there are no sets)."""
    if sets:
        display.begin(stage, total=sum(len(s.texts) for s in sets.values()))
    return {name: _encode(encoder, list(s.texts), display) for name, s in sets.items()}


def _time_layers(
    encoder: ElasticEncoder,
    grans: Sequence[Granularity],
    texts: Sequence[str],
    repeats: int,
    display: ProgressDisplay,
) -> dict[int, tuple[float, int]]:
    """Per exit layer: (best seconds over ``repeats``, real tokens) to encode ``texts`` stopping at that layer."""
    by_layer: dict[int, list[Granularity]] = {}
    for g in grans:
        by_layer.setdefault(g.layer, []).append(g)
    encoder.encode(texts[:8], by_layer[max(by_layer)])  # warm-up: allocator, kernels, thread pool
    display.begin("timing the exit layers", total=len(texts) * len(by_layer) * repeats)
    best: dict[int, tuple[float, int]] = {}
    for _ in range(repeats):
        for layer, subset in sorted(by_layer.items()):  # interleaved, so drift hits every layer alike
            stats = encoder.encode_with_stats(texts, subset).stats
            display.add(read=len(texts), done=len(texts), embedded=len(texts), tokens=stats.real_tokens)
            if layer not in best or stats.seconds_total < best[layer][0]:
                best[layer] = (stats.seconds_total, stats.real_tokens)
    return best


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------ from a job file or a table


def evaluate_job(
    job: str | Path,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    use_lee: bool = True,
    pairs_file: str | Path | None = None,
    **options: Any,
) -> QualityMap:
    """The quality map of a job's model config, on a sample of its corpus read in-process (no Ray).

    The job is checked as ``embedjob validate`` would (input, model,
    granularities, calibration), except the output mode: evaluating does not write.
    ``options`` go to :func:`evaluate` (grid, dims, k, timing_texts, ...).
    """
    from .._checks import check_job
    from .._spec import load_job

    resolved = check_job(load_job(job), source_name=str(job), purpose="calibrate")
    calibration, note = _job_calibration(resolved, str(job))
    lee, pairs, notes = _human_sets(use_lee, pairs_file)
    _sampling(options)
    texts = sample_job_texts(resolved, sample, seed=seed)
    if note:
        notes.insert(0, note)
    return evaluate(
        texts,
        resolved.provenance,
        calibration=calibration,
        lee=lee,
        pairs=pairs,
        source=f"job {job}",
        seed=seed,
        notes=notes,
        **options,
    )


def evaluate_table(
    table: EmbeddingTable | str,
    *,
    storage_options: Mapping[str, str] | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    use_lee: bool = True,
    pairs_file: str | Path | None = None,
    **options: Any,
) -> QualityMap:
    """The quality map of a table's model config (and its calibration), on a sample of its stored text."""
    tbl = open_table(table, storage_options=storage_options) if isinstance(table, str) else table
    _sampling(options)
    texts = sample_texts(tbl, sample, seed=seed)
    lee, pairs, notes = _human_sets(use_lee, pairs_file)
    return evaluate(
        texts,
        tbl.provenance,
        calibration=tbl.calibration,
        lee=lee,
        pairs=pairs,
        source=f"table {tbl.uri} (version {tbl.version})",
        seed=seed,
        notes=notes,
        **options,
    )


def _sampling(options: Mapping[str, Any]) -> None:
    display = options.get("display")
    if display is not None:
        display.stage("sampling the texts")


def _human_sets(use_lee: bool, pairs_file: str | Path | None) -> tuple[ScoredPairs | None, ScoredPairs | None, list]:
    notes = []
    lee = lee_set() if use_lee else None
    if use_lee and lee is None:
        notes.append(LEE_INSTALL_HINT)
    pairs = read_pairs(pairs_file) if pairs_file is not None else None
    return lee, pairs, notes


def _job_calibration(resolved: Any, source_name: str) -> tuple[Calibration | None, str]:
    """The calibration a run of this job would use (as ``embedjob run`` finds it), and a note when there is none yet."""
    from .._checks import _find_calibration
    from .._spec import JobSpecError

    spec = resolved.spec
    if spec.calibration is None:
        return None, ""
    opts = resolved.storage_options
    existing = read_provenance(resolved.output_uri, opts)
    try:
        cal, _origin = _find_calibration(
            spec, resolved.provenance, resolved.granularities, existing, resolved.output_uri, opts, resolved.store
        )
    except CalibrationError as exc:
        raise JobSpecError(source_name, [f"calibration: {exc}"]) from None
    if cal is None:
        return None, (
            "calibration = 'auto' has none fitted yet, so the figures are raw only; "
            "fit one (embedjob calibrate JOB) to see calibrated ones"
        )
    return cal, ""


def sample_job_texts(resolved: Any, n: int, *, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct non-blank texts of a job's corpus, read in this process with pyarrow.

    Files are visited in an order shuffled by ``seed`` and read until ``4 n``
    texts are in hand (the whole corpus when it is smaller); ``n`` of them are
    then chosen by ``seed``. A large corpus is not read whole, so a corpus
    whose files each hold one topic gives a sample of a few topics.
    """
    if n < 1:
        raise ValueError(f"sample size must be >= 1; got {n}")
    source = resolved.source
    column = resolved.spec.input.text_column
    if source.format == "lance":
        opts = source.store.lance_options() if (source.store is not None and source.is_s3) else None
        return sample_texts(source.paths[0], n, seed=seed, column=column, storage_options=opts)
    import pyarrow.dataset as pads

    fs = source.filesystem()
    paths = [p.removeprefix("s3://") for p in source.paths] if fs is not None else list(source.paths)
    fmt = {"jsonl": "json"}.get(source.format, source.format)
    rng = np.random.default_rng(seed)
    wanted = 4 * n
    seen: dict[str, None] = {}
    for i in rng.permutation(len(paths)):
        for batch in pads.dataset(paths[i], format=fmt, filesystem=fs).to_batches(columns=[column]):
            for value in batch.column(0).to_pylist():
                text = embeddable_text(value)
                if text is not None:
                    seen[text] = None
            if len(seen) >= wanted:
                break
        if len(seen) >= wanted:
            break
    texts = list(seen)
    if len(texts) <= n:
        return texts
    return [texts[i] for i in np.sort(rng.choice(len(texts), size=n, replace=False))]


# ------------------------------------------------------------------ the picture


def write_heatmap(qmap: QualityMap, path: str | Path, *, title: str | None = None) -> Path:
    """A PNG heatmap: layers x dims, colour = agreement recall@k with the full vector, each cell annotated.

    Two panels, raw | calibrated, when the map has a calibration. Row labels
    carry each layer's measured encode cost relative to full depth, column
    labels the bytes per vector; the job's own granularities are outlined.
    ``title`` names the model (default: the last two parts of its path).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    layers = sorted({r.layer for r in qmap.rows})
    dims = sorted({r.dim for r in qmap.rows})
    cost = qmap.layer_cost()
    nbytes = {r.dim: r.bytes_per_vector for r in qmap.rows}
    cells = {(r.layer, r.dim): r for r in qmap.rows}
    panels = [("raw", "recall_raw")]
    if qmap.calibrated:
        panels.append((f"calibrated ({qmap.calibration})", "recall_calibrated"))

    fig = Figure(figsize=(len(panels) * (1.4 + 0.95 * len(dims)) + 1.6, 1.9 + 0.6 * len(layers)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    image = None
    for ax, (panel, attr) in zip(axes, panels, strict=True):
        grid = np.full((len(layers), len(dims)), np.nan)
        for i, layer in enumerate(layers):
            for j, d in enumerate(dims):
                row = cells.get((layer, d))
                value = getattr(row, attr) if row is not None else None
                if value is not None:
                    grid[i, j] = value
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=_cmap(), vmin=0.0, vmax=1.0, aspect="auto")
        for i, layer in enumerate(layers):
            for j, d in enumerate(dims):
                row = cells.get((layer, d))
                if row is None:
                    continue
                v = grid[i, j]
                text, colour = ("n/a", "black") if np.isnan(v) else (f"{v:.2f}", "white" if v < 0.55 else "black")
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color=colour)
                if row.in_job:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#e4002b", linewidth=2.5))
        ax.set_title(panel, fontsize=10)
        ax.set_xticks(range(len(dims)), [f"{d}\n{nbytes[d]:,} B" for d in dims], fontsize=8)
        ax.set_xlabel("dims (bytes per vector)", fontsize=9)
        ax.set_yticks(range(len(layers)), [f"layer {layer} (cost {cost[layer]:.2f})" for layer in layers], fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.9, label=f"recall@{qmap.k} vs {qmap.reference}")
    model = title or "/".join(Path(qmap.model_path).parts[-2:]) or qmap.model_path
    fig.suptitle(
        f"{model}: agreement with full depth, full width on {qmap.sample_size:,} sample texts\n"
        f"cost = encode time to that layer / full depth; outlined: the job's granularities",
        fontsize=10,
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    return target


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#d9d9d9")  # n/a: no calibration map for the layer, or off the grid
