"""The encoder's one frozen config object, and device/dtype resolution.

The job spec, the CLI and :meth:`ElasticEncoder.from_pretrained` all build an
:class:`EncoderConfig`; strings are turned into enums and ranges are checked
here, when the object is built.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from ._errors import EncoderConfigError
from ._granularity import Granularity, parse_granularities

if TYPE_CHECKING:
    import torch

__all__ = [
    "BACKENDS",
    "MODEL_DTYPES",
    "POOLINGS",
    "Backend",
    "EncoderConfig",
    "ModelDtype",
    "Pooling",
    "PoolingName",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger("embedder")


class Pooling(enum.StrEnum):
    """How token states of one layer become one vector."""

    MEAN = "mean"
    CLS = "cls"
    MAX = "max"
    LAST_TOKEN = "lasttoken"

    @classmethod
    def parse(cls, value: Any) -> Pooling:
        if isinstance(value, Pooling):
            return value
        key = str(value).strip().lower().replace("-", "").replace("_", "")
        for member in cls:
            if member.value == key:
                return member
        raise EncoderConfigError(f"pooling {value!r} is not supported; allowed: {', '.join(m.value for m in cls)}")


#: the poolings by the names a job file uses ("mean", "cls", "max", "lasttoken"), from :class:`Pooling`
POOLINGS: tuple[str, ...] = tuple(m.value for m in Pooling)
PoolingName = Literal[POOLINGS]  # type: ignore[valid-type]  # built from the enum: one list of names

#: the model dtypes a job file names; "auto": bf16 (or fp16) on CUDA, float32 elsewhere. The config also
#: takes the aliases in ``_DTYPES`` (fp16, half, bf16, ...)
ModelDtype = Literal["auto", "float32", "float16", "bfloat16"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDtype)

#: how the forward pass runs: "torch" (any device, the model's dtype) or "int8" (CPU only: ONNX Runtime with
#: int8 linear layers, ``embedder._int8``)
Backend = Literal["torch", "int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)

#: the dtype names a config takes -> torch's name for it (torch is imported where a dtype is resolved, so that
#: reading this vocabulary, as ``storage.vocab`` does, costs no torch import)
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}

#: Default padded tokens per forward batch, by device type. On a 2-core CPU, 512..4096
#: ran within noise of each other and 16384 was ~30% slower (2,000 real passages, 2026-11-22).
#: CUDA has no fixed default: the encoder sizes it to the device's free memory.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "mps": 16384}
#: The int8 backend's default (CPU): ONNX Runtime's int8 kernels ran fastest on smaller batches (all-MiniLM-L6-v2,
#: 600 real passages, quiet 2-core machine, 2026-12-06: 1.52x the torch path at 4096, 1.85-1.88x at 2048, 1.79x at
#: 1024, 1.38x at 8192)
INT8_BATCH_TOKENS = 2048


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Settings of one :class:`ElasticEncoder`; checked when built.

    ``pooling=None`` and ``max_length=None`` mean "read them from the model
    dir"; ``device=None`` / ``dtype=None`` mean "choose for this machine"
    (CUDA with bf16/fp16 when available, else CPU with float32).
    """

    granularities: tuple[Granularity, ...]
    pooling: Pooling | None = None
    normalize: bool = True
    max_length: int | None = None
    device: str | None = None
    dtype: str | None = None
    batch_tokens: int | None = None
    #: most texts per batch; None: 1024 padded, no cap packed (the token budget alone)
    max_batch_size: int | None = None
    num_threads: int | None = None
    #: run batches packed (no padding) instead of padded: None = on CUDA for BERT-architecture models
    #: (model_type bert, roberta, xlm-roberta: ``embedder._packed.PACKED_MODEL_TYPES``)
    packed: bool | None = None
    #: "torch", or "int8" on CPU (``BACKENDS``)
    backend: Backend = "torch"

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularities", parse_granularities(self.granularities))
        if self.pooling is not None:
            object.__setattr__(self, "pooling", Pooling.parse(self.pooling))
        if not isinstance(self.normalize, bool):
            raise EncoderConfigError(f"normalize must be true or false, got {self.normalize!r}")
        _check_positive_int("max_length", self.max_length, minimum=2)
        _check_positive_int("batch_tokens", self.batch_tokens, minimum=1)
        _check_positive_int("max_batch_size", self.max_batch_size, minimum=1)
        _check_positive_int("num_threads", self.num_threads, minimum=1)
        if self.packed is not None and not isinstance(self.packed, bool):
            raise EncoderConfigError(f"packed must be true, false or unset, got {self.packed!r}")
        if self.dtype is not None:
            key = str(self.dtype).strip().lower().removeprefix("torch.")
            if key != "auto" and key not in _DTYPES:
                raise EncoderConfigError(
                    f"dtype {self.dtype!r} is not supported; allowed: auto, {', '.join(sorted(_DTYPES))}"
                )
            object.__setattr__(self, "dtype", None if key == "auto" else key)
        if self.device is not None:
            key = str(self.device).strip().lower()
            if key == "auto":
                object.__setattr__(self, "device", None)
            else:
                import torch

                try:
                    torch.device(key)
                except (RuntimeError, ValueError):
                    raise EncoderConfigError(
                        f"device {self.device!r} is not a torch device; allowed: auto, cpu, cuda, cuda:N, mps"
                    ) from None
                object.__setattr__(self, "device", key)
        self._check_backend()

    def _check_backend(self) -> None:
        """``backend`` is one of :data:`BACKENDS`; "int8" runs on CPU, from float32 weights, padded."""
        if self.backend not in BACKENDS:
            raise EncoderConfigError(f"backend {self.backend!r} is not supported; allowed: {', '.join(BACKENDS)}")
        if self.backend != "int8":
            return
        if self.device is not None and self.device.split(":")[0] != "cpu":
            raise EncoderConfigError(f"backend 'int8' runs on CPU; device {self.device!r} is not allowed with it")
        if self.dtype not in (None, "float32", "fp32"):
            raise EncoderConfigError(
                f"backend 'int8' quantizes the float32 weights; dtype {self.dtype!r} is not allowed with it "
                "(leave dtype unset or 'float32')"
            )
        if self.packed:
            raise EncoderConfigError("backend 'int8' runs padded batches; packed = true is not allowed with it")


def _check_positive_int(name: str, value: Any, *, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EncoderConfigError(f"{name} must be an int >= {minimum}, got {value!r}")


def resolve_device(device: str | None) -> torch.device:
    """``None`` picks CUDA when available, else CPU. A CUDA device that isn't there is an error."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderConfigError(f"device {device!r} was asked for but torch sees no CUDA GPU here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EncoderConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise EncoderConfigError(f"device {device!r} was asked for but MPS is not available")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``None`` is bf16 (or fp16 where bf16 is unsupported) on CUDA, float32 elsewhere."""
    import torch

    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    chosen = getattr(torch, _DTYPES[dtype])
    if device.type == "cpu" and chosen is torch.float16:
        logger.warning(
            "dtype float16 on CPU is usually slower than float32 and loses precision; "
            "use float32 (or bfloat16 on CPUs with AMX/AVX512-BF16)"
        )
    return chosen


def resolve_num_threads(num_threads: int | None) -> int | None:
    """Threads for CPU inference: the explicit value, else OMP_NUM_THREADS when set, else the usable cores."""
    if num_threads is not None:
        return num_threads
    if os.environ.get("OMP_NUM_THREADS"):
        return None  # the launcher (e.g. Ray, from an actor's num_cpus) already chose
    return usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity where the OS tells it, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
