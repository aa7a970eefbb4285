"""Reading a local model directory: Hugging Face or sentence-transformers layout.

Everything here runs offline (``local_files_only``). It finds the transformer's
block list generically, reads the sentence-transformers pooling and
max_seq_length when present, and fingerprints the weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._config import Pooling
from ._errors import EncoderConfigError, ModelError, UnsupportedModelError
from ._hub import resolve_model

if TYPE_CHECKING:  # reading a model dir (the tokenizer's tasks do) needs no torch; loading the weights does
    import torch
    from torch import nn

__all__ = ["ModelDir", "find_blocks", "read_model_dir", "weights_fingerprint"]

# sentence-transformers modules we understand. Normalize is the ``normalize``
# option here (all-MiniLM-L6-v2 names a 2_Normalize folder that is missing).
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_IGNORED = {"sentence_transformers.models.Normalize"}

# Where common architectures keep their block list, tried before the generic search.
_KNOWN_BLOCK_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, XLM-R, MPNet, ELECTRA
    "transformer.layer",  # DistilBERT
    "layers",  # ModernBERT, Llama/Mistral/Qwen base models
    "encoder.layers",
    "h",  # GPT-2 style
    "transformer.h",
    "model.layers",
)
_DEPTH_KEYS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer")
_WIDTH_KEYS = ("hidden_size", "dim", "d_model", "n_embd")

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ModelDir:
    """What the directory says about the model, before any weights are loaded."""

    root: Path
    transformer_dir: Path
    config: dict[str, Any]
    num_layers: int
    hidden_size: int
    pooling: Pooling | None  # None: the dir names no pooling
    include_prompt: bool
    max_seq_length: int | None
    do_lower_case: bool

    @property
    def name(self) -> str:
        return self.root.name or str(self.root)

    @property
    def position_limit(self) -> int | None:
        """Most tokens one text may have (RoBERTa-style models reserve two positions)."""
        limit = self.config.get("max_position_embeddings")
        if not isinstance(limit, int) or limit <= 0:
            return None
        if self.config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # positions are offset by padding_idx + 1
        return limit

    def resolve(self, pooling: Pooling | None, max_length: int | None) -> tuple[Pooling, int]:
        """The pooling and max_length an encoder on this dir uses, given the caller's overrides.

        Pooling: the override, else the sentence-transformers config, else mean. max_length: the
        override, else ``max_seq_length`` from sentence_bert_config.json, else the position limit.
        """
        limit = self.position_limit
        if max_length is not None and limit is not None and max_length > limit:
            raise EncoderConfigError(f"max_length {max_length} is out of range; {self.name} allows 2..{limit} tokens")
        chosen = max_length or self.max_seq_length or limit or 512
        if limit is not None:
            chosen = min(chosen, limit)
        return pooling or self.pooling or Pooling.MEAN, int(chosen)


def read_model_dir(path: str | Path) -> ModelDir:
    """Validate ``path`` and read its configs; raises :class:`ModelError` naming what is wrong."""
    root = _model_root(path)
    transformer_dir, pooling, include_prompt = _read_st_modules(root, str(path))
    config_file = transformer_dir / "config.json"
    if not config_file.is_file():
        raise ModelError(str(path), f"no config.json in {transformer_dir}; is this a Hugging Face model dir?")
    config = _read_json(config_file, str(path))
    max_seq_length, do_lower_case = _read_st_config(transformer_dir, root, str(path))
    num_layers, hidden_size = _read_shape(config, str(path))
    return ModelDir(
        root=root,
        transformer_dir=transformer_dir,
        config=config,
        num_layers=num_layers,
        hidden_size=hidden_size,
        pooling=pooling,
        include_prompt=include_prompt,
        max_seq_length=int(max_seq_length) if max_seq_length else None,
        do_lower_case=do_lower_case,
    )


def _model_root(path: str | Path) -> Path:
    """The model directory ``path`` names (a directory, a bundled model's name, or a Hugging Face id in the
    local cache: ``resolve_model``)."""
    return resolve_model(path)


def _read_st_modules(root: Path, model: str) -> tuple[Path, Pooling | None, bool]:
    """The transformer's folder, the pooling and include_prompt, from modules.json (or a bare 1_Pooling
    folder); the root, no pooling and True when the dir has neither."""
    transformer_dir = root
    pooling: Pooling | None = None
    include_prompt = True
    modules_file = root / "modules.json"
    if modules_file.is_file():
        for module in _read_json(modules_file, model):
            mtype = module.get("type", "")
            mdir = root / module.get("path", "")
            if mtype == _ST_TRANSFORMER:
                transformer_dir = mdir
            elif mtype == _ST_POOLING:
                pooling, include_prompt = _read_st_pooling(mdir / "config.json", model)
            elif mtype not in _ST_IGNORED:
                raise UnsupportedModelError(
                    model,
                    f"sentence-transformers module {mtype!r} (in modules.json) is not supported; "
                    f"supported: Transformer, Pooling, Normalize",
                )
    elif (root / "1_Pooling" / "config.json").is_file():
        pooling, include_prompt = _read_st_pooling(root / "1_Pooling" / "config.json", model)
    return transformer_dir, pooling, include_prompt


def _read_st_config(transformer_dir: Path, root: Path, model: str) -> tuple[Any, bool]:
    """max_seq_length (as written) and do_lower_case from sentence_bert_config.json, in the transformer's
    folder or else the root; None and False without one."""
    for where in (transformer_dir, root):
        st_file = where / "sentence_bert_config.json"
        if st_file.is_file():
            st_cfg = _read_json(st_file, model)
            return st_cfg.get("max_seq_length"), bool(st_cfg.get("do_lower_case", False))
    return None, False


def _read_shape(config: dict[str, Any], model: str) -> tuple[int, int]:
    """The layer count and hidden size config.json names."""
    num_layers = _first_int(config, _DEPTH_KEYS)
    hidden_size = _first_int(config, _WIDTH_KEYS)
    if num_layers is None or hidden_size is None:
        raise UnsupportedModelError(
            model,
            f"config.json names no layer count ({'/'.join(_DEPTH_KEYS)}) or hidden size ({'/'.join(_WIDTH_KEYS)})",
        )
    return num_layers, hidden_size


def _read_json(file: Path, model: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(model, f"cannot read {file.name}: {exc}") from None


def _first_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        return _first_int(text_config, keys)
    return None


def _read_st_pooling(file: Path, model: str) -> tuple[Pooling, bool]:
    cfg = _read_json(file, model)
    modes = {
        "pooling_mode_mean_tokens": Pooling.MEAN,
        "pooling_mode_cls_token": Pooling.CLS,
        "pooling_mode_max_tokens": Pooling.MAX,
        "pooling_mode_lasttoken": Pooling.LAST_TOKEN,
    }
    if "pooling_mode" in cfg and isinstance(cfg["pooling_mode"], str):
        return Pooling.parse(cfg["pooling_mode"]), bool(cfg.get("include_prompt", True))
    chosen = [mode for key, mode in modes.items() if cfg.get(key)]
    unsupported = [
        key for key in ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens") if cfg.get(key)
    ]
    if unsupported or len(chosen) != 1:
        enabled = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
        raise UnsupportedModelError(
            model,
            f"pooling config {file} enables {enabled}; "
            f"exactly one of mean / cls / max / lasttoken is supported (pass pooling= to override)",
        )
    return chosen[0], bool(cfg.get("include_prompt", True))


def find_blocks(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """Find the transformer's block list: known paths first, then any ModuleList of the model's depth."""
    from torch import nn

    for dotted in _KNOWN_BLOCK_PATHS:
        module: Any = model
        for part in dotted.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return dotted, module
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) == num_layers and name
    ]
    if not candidates:
        raise UnsupportedModelError(
            type(model).__name__,
            f"cannot find its list of {num_layers} transformer blocks (looked at "
            f"{', '.join(_KNOWN_BLOCK_PATHS)} and every nn.ModuleList)",
        )
    candidates.sort(key=lambda item: item[0].count("."))
    return candidates[0]


def set_submodule(model: nn.Module, dotted: str, value: nn.Module) -> None:
    parent_path, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, value)


def weight_files(path: str | Path) -> list[Path]:
    """The model dir's weight files (safetensors, bin, pt, pth), sorted."""
    return sorted(p for p in Path(path).expanduser().rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def weights_fingerprint(path: str | Path, *, chunk: int = 1 << 22) -> str:
    """sha256 over the names, sizes and bytes of the model dir's weight files (first 16 hex digits)."""
    root = Path(path)
    digest = hashlib.sha256()
    files = weight_files(root)
    if not files:
        raise ModelError(str(path), f"no weight files ({', '.join(_WEIGHT_SUFFIXES)}) found")
    for file in files:
        digest.update(str(file.relative_to(root)).encode())
        digest.update(str(file.stat().st_size).encode())
        with file.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()[:16]


def torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
