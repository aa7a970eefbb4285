from __future__ import annotations

import dataclasses
import pickle

import pytest

from embedder import STARBUCKS, Granularity, GranularityError, parse_granularities, resolve_granularities


def test_str_column_and_parse_round_trip():
    g = Granularity(6, 128)
    assert str(g) == "l6_d128"
    assert g.column == "vec_l6_d128"
    assert Granularity.parse("l6_d128") == g
    assert Granularity.parse("vec_l6_d128") == g
    assert Granularity.parse(" L6_D128 ") == g
    assert Granularity.parse((6, 128)) == g
    assert Granularity.parse([6, 128]) == g
    assert Granularity.parse(g) is g


def test_frozen_and_ordered_by_layer_then_dim():
    g = Granularity(3, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.layer = 4  # type: ignore[misc]
    assert sorted([Granularity(6, 32), Granularity(3, 128), Granularity(3, 64)]) == [
        Granularity(3, 64),
        Granularity(3, 128),
        Granularity(6, 32),
    ]
    assert len({Granularity(3, 64), Granularity.parse("l3_d64")}) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("l6-d128", "is not of the form 'l<layer>_d<dim>'"),
        ("6_128", "is not of the form"),
        ((0, 64), "layer must be >= 1, got 0"),
        ((3, -1), "dim must be >= 1, got -1"),
        ((True, 64), "layer must be an int >= 1, got True"),
        ((3.0, 64), "layer must be an int >= 1, got 3.0"),
        ((1, 2, 3), "must be a string like 'l6_d128' or a (layer, dim) pair"),
        (42, "must be a string like"),
    ],
)
def test_parse_rejects_bad_values_by_name(value, message):
    with pytest.raises(GranularityError) as info:
        Granularity.parse(value)
    assert message in str(info.value)


def test_parse_granularities_forms():
    expected = (Granularity(3, 64), Granularity(6, 384))
    assert parse_granularities("l6_d384, l3_d64") == expected
    assert parse_granularities(["l6_d384", (3, 64)]) == expected
    assert parse_granularities([[6, 384], [3, 64]]) == expected  # Starbucks-style list of pairs
    assert parse_granularities((6, 384)) == (Granularity(6, 384),)  # one bare pair
    assert parse_granularities("starbucks") == tuple(Granularity(*p) for p in STARBUCKS)


def test_parse_granularities_rejects_empty_and_duplicates():
    with pytest.raises(GranularityError, match="at least one granularity is required"):
        parse_granularities([])
    with pytest.raises(GranularityError, match="at least one granularity is required"):
        parse_granularities(" , ")
    with pytest.raises(GranularityError, match="granularity l3_d64 is listed twice"):
        parse_granularities(["l3_d64", (3, 64)])
    with pytest.raises(GranularityError, match="must be a preset name"):
        parse_granularities(7)  # type: ignore[arg-type]


def test_starbucks_preset_is_clipped_to_the_model():
    assert resolve_granularities("starbucks", num_layers=6, hidden_size=384) == (
        Granularity(2, 32),
        Granularity(4, 64),
        Granularity(6, 128),
    )
    assert resolve_granularities("starbucks", num_layers=12, hidden_size=768) == parse_granularities("starbucks")


def test_starbucks_preset_that_nothing_fits_is_a_clear_error():
    with pytest.raises(GranularityError) as info:
        resolve_granularities("starbucks", num_layers=1, hidden_size=16, model_name="tiny")
    text = str(info.value)
    assert "preset 'starbucks' has no pair that tiny can serve" in text
    assert "layers 1..1 and dims 1..16" in text


def test_explicit_granularities_out_of_range_name_value_and_range():
    with pytest.raises(GranularityError) as info:
        resolve_granularities(["l7_d64"], num_layers=6, hidden_size=384, model_name="minilm")
    assert str(info.value) == "granularity l7_d64: layer 7 is out of range; minilm has layers 1..6"
    with pytest.raises(GranularityError) as info:
        resolve_granularities(["l6_d512"], num_layers=6, hidden_size=384, model_name="minilm")
    assert str(info.value) == "granularity l6_d512: dim 512 is out of range; minilm has dims 1..384"


def test_granularity_pickles():
    g = Granularity(2, 32)
    assert pickle.loads(pickle.dumps(g)) == g
