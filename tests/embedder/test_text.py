"""The one text-validity rule: which values are embeddable, and the reasons users find in rejects tables."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from embedder import (
    EMPTY_TEXT,
    NOT_A_STRING,
    NULL_TEXT,
    UNDECODABLE_TEXT,
    WHITESPACE_ONLY_TEXT,
    InvalidTextError,
    check_texts,
    decode_text,
    find_invalid_texts,
    text_problem,
)


def test_reason_strings_are_the_ones_rejects_tables_hold():
    """Stored in users' rejects tables since the first release: changing one breaks their queries."""
    assert NULL_TEXT == "null text"
    assert EMPTY_TEXT == "empty text"
    assert WHITESPACE_ONLY_TEXT == "whitespace-only text"
    assert NOT_A_STRING == "text is not a string"
    assert UNDECODABLE_TEXT == "undecodable text (not UTF-8)"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null text"),
        ("", "empty text"),
        (" ", "whitespace-only text"),
        ("\n\t\r\x0b\x0c ", "whitespace-only text"),
        ("\u00a0\u2003\u3000", "whitespace-only text"),  # no-break, em and ideographic spaces
        (3, "text is not a string (int)"),
        (2.5, "text is not a string (float)"),
        (True, "text is not a string (bool)"),
        (b"bytes", "text is not a string (bytes)"),
        (["a list"], "text is not a string (list)"),
        ({"a": 1}, "text is not a string (dict)"),
    ],
)
def test_each_problem_has_its_reason(value, reason):
    assert text_problem(value) == reason


@pytest.mark.parametrize("value", ["a", " padded ", "\ta\n", "0", "None", "\u200b", np.str_("numpy text")])
def test_any_str_with_a_non_whitespace_character_is_text(value):
    """Surrounding whitespace is kept, not judged; a zero-width space is not whitespace; str subclasses are str."""
    assert text_problem(value) is None


def test_whitespace_is_what_strip_removes_for_every_character():
    """The samplers used ``not value.strip()``: the rule agrees with it on every Unicode character."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert (text_problem(char) is not None) == (not char.strip()), hex(code)


def test_find_invalid_texts_names_each_position_and_reason():
    texts = ["ok", None, "", "   \n\t", 5, b"bytes", "fine"]
    assert find_invalid_texts(texts) == [
        (1, NULL_TEXT),
        (2, EMPTY_TEXT),
        (3, WHITESPACE_ONLY_TEXT),
        (4, "text is not a string (int)"),
        (5, "text is not a string (bytes)"),
    ]
    assert find_invalid_texts(["a", " b "]) == []
    assert find_invalid_texts([]) == []


def test_check_texts_raises_with_every_position_and_reason():
    check_texts(["a", "b"])  # nothing to say: returns
    with pytest.raises(InvalidTextError) as info:
        check_texts(["a", None, " ", 7])
    err = info.value
    assert err.positions == [1, 2, 3] and err.total == 4
    assert err.reasons == [NULL_TEXT, WHITESPACE_ONLY_TEXT, "text is not a string (int)"]
    assert "position 2: whitespace-only text" in str(err)


def test_decode_text_reads_binary_cells_as_utf8():
    assert decode_text("déjà vu".encode()) == ("déjà vu", None)
    text, reason = decode_text(b"caf\xe9")  # Latin-1, not UTF-8
    assert reason == UNDECODABLE_TEXT
    assert text == "caf\\xe9"  # escaped: the bytes can be recovered from the rejects table
    for value in ("text", None, 3, ""):
        assert decode_text(value) == (value, None)
    # decoded bytes are judged like any text
    assert text_problem(decode_text(b"  ")[0]) == WHITESPACE_ONLY_TEXT
    assert text_problem(decode_text(b"")[0]) == EMPTY_TEXT
