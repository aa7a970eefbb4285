"""The vocabulary: the output-mode decision table, and each closed set named once."""

from __future__ import annotations

from typing import get_args

import pytest

from embedder import Pooling
from storage import vocab
from storage.vocab import (
    OUTPUT_MODES,
    keeps_existing_rows,
    replaces_table,
    resolve_mode,
    updates_rows,
)

# (requested, table exists) -> the mode the run uses
DECISIONS = {
    (None, False): "create",
    (None, True): "incremental",
    ("create", False): "create",
    ("create", True): "create",  # kept: the job checks refuse it, naming the other modes
    ("overwrite", False): "overwrite",
    ("overwrite", True): "overwrite",
    ("append", False): "create",
    ("append", True): "append",
    ("incremental", False): "create",
    ("incremental", True): "incremental",
    ("migrate", False): "create",  # nothing to migrate yet: the first run makes the table
    ("migrate", True): "migrate",
}


def test_the_decision_table_covers_every_requested_mode():
    assert {requested for requested, _ in DECISIONS} == {None, *OUTPUT_MODES}
    assert len(DECISIONS) == 2 * (len(OUTPUT_MODES) + 1)


@pytest.mark.parametrize(("requested", "exists"), list(DECISIONS))
def test_resolve_mode(requested, exists):
    assert resolve_mode(requested, table_exists=exists) == DECISIONS[requested, exists]


@pytest.mark.parametrize(
    ("mode", "replaces", "keeps", "updates"),
    [
        ("create", True, False, False),
        ("overwrite", True, False, False),
        ("append", False, True, False),
        ("incremental", False, True, True),
        ("migrate", False, True, True),
    ],
)
def test_what_each_mode_does_to_the_table(mode, replaces, keeps, updates):
    assert (replaces_table(mode), keeps_existing_rows(mode), updates_rows(mode)) == (replaces, keeps, updates)


def test_with_no_table_a_run_never_keeps_rows():
    for requested in (None, *OUTPUT_MODES):
        assert replaces_table(resolve_mode(requested, table_exists=False))


@pytest.mark.parametrize(
    ("names", "literal"),
    [
        (vocab.OUTPUT_MODES, vocab.OutputMode),
        (vocab.INPUT_FORMATS, vocab.InputFormat),
        (vocab.INDEX_TYPES, vocab.IndexType),
        (vocab.VECTOR_DTYPE_NAMES, vocab.VectorDtype),
        (vocab.TOKENIZE_CHOICES, vocab.TokenizeChoice),
        (vocab.CALIBRATE_LAYER_CHOICES, vocab.CalibrateLayerChoice),
        (vocab.MODEL_DTYPES, vocab.ModelDtype),
        (vocab.POOLINGS, vocab.PoolingName),
    ],
)
def test_each_tuple_is_its_literal(names, literal):
    assert names == get_args(literal)
    assert len(set(names)) == len(names)


def test_the_pooling_names_are_the_encoders():
    assert vocab.POOLINGS == ("mean", "cls", "max", "lasttoken")
    assert all(Pooling.parse(name).value == name for name in vocab.POOLINGS)


@pytest.mark.parametrize(
    "name",
    ["docs", "a", "-a", "_", ".", "..", "...", "a.b", "A-Z.9_x", "a" * 300, "", "a b", "é", "a:b", "a*", "ü1"],
)
def test_table_names_are_judged_as_lancedb_judges_them(name):
    """The plain-name fast path (no lancedb import) never accepts a name LanceDB's own validator refuses, and
    every name it hands on gets LanceDB's verdict."""
    from lancedb.util import validate_table_name

    from storage._names import table_name_problem

    try:
        validate_table_name(name)
        lancedb_ok = True
    except ValueError:
        lancedb_ok = False
    assert (table_name_problem(f"/data/{name}.lance") is None) == lancedb_ok, name
