from __future__ import annotations

import logging
import pickle

import pytest
import torch

from embedder import (
    EncoderConfig,
    EncoderConfigError,
    GranularityError,
    InvalidTextError,
    ModelError,
    Pooling,
    UnsupportedModelError,
    resolve_device,
    resolve_dtype,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mean", Pooling.MEAN),
        ("CLS", Pooling.CLS),
        ("max", Pooling.MAX),
        ("last-token", Pooling.LAST_TOKEN),
        ("last_token", Pooling.LAST_TOKEN),
        ("lasttoken", Pooling.LAST_TOKEN),
    ],
)
def test_pooling_parse(text, expected):
    assert Pooling.parse(text) is expected


def test_config_converts_and_checks_on_construction():
    cfg = EncoderConfig(granularities="l6_d128,l3_d64", pooling="cls", dtype="bf16", device="auto")
    assert cfg.pooling is Pooling.CLS
    assert cfg.dtype == "bf16"
    assert cfg.device is None
    assert [str(g) for g in cfg.granularities] == ["l3_d64", "l6_d128"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "weightedmean"}, "pooling 'weightedmean' is not supported; allowed: mean, cls, max, lasttoken"),
        ({"dtype": "int8"}, "dtype 'int8' is not supported; allowed: auto, bf16, bfloat16"),
        ({"device": "tpu:0"}, "device 'tpu:0' is not a torch device"),
        ({"max_length": 1}, "max_length must be an int >= 2, got 1"),
        ({"batch_tokens": 0}, "batch_tokens must be an int >= 1, got 0"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an int >= 1, got 2.5"),
        ({"num_threads": 0}, "num_threads must be an int >= 1, got 0"),
        ({"normalize": "yes"}, "normalize must be true or false, got 'yes'"),
    ],
)
def test_config_errors_name_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(EncoderConfigError) as info:
        EncoderConfig(granularities="l1_d8", **kwargs)
    assert message in str(info.value)


def test_config_needs_a_granularity():
    with pytest.raises(GranularityError, match="at least one granularity"):
        EncoderConfig(granularities=[])


def test_cuda_device_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EncoderConfigError, match="'cuda' was asked for but torch sees no CUDA GPU"):
        resolve_device("cuda")


def test_default_dtype_is_float32_on_cpu():
    assert resolve_dtype(None, torch.device("cpu")) is torch.float32


def test_float16_on_cpu_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="embedder"):
        assert resolve_dtype("float16", torch.device("cpu")) is torch.float16
    assert "dtype float16 on CPU is usually slower than float32" in caplog.text


@pytest.mark.parametrize(
    "error",
    [
        ModelError("/models/x", "directory does not exist"),
        UnsupportedModelError("/models/x", "no blocks"),
        InvalidTextError([1, 4], ["null", "empty string"], 9),
        GranularityError("granularity l9_d8: layer 9 is out of range"),
        EncoderConfigError("dtype 'int8' is not supported"),
    ],
)
def test_errors_survive_pickling_with_their_fields(error):
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)
    assert isinstance(clone, ValueError)


def test_invalid_text_error_lists_positions_and_caps_the_message():
    err = InvalidTextError(list(range(25)), ["empty string"] * 25, 100)
    assert err.positions == list(range(25))
    assert str(err).startswith("25 of 100 inputs are not embeddable text")
    assert "position 9: empty string; and 15 more" in str(err)
