"""Which values are embeddable text: the one rule, with its reasons named once.

A value is embeddable when it is a non-empty ``str`` that is not all whitespace
(whitespace as ``str.isspace`` defines it; ``str.strip`` uses the same set).
The encoder refuses anything else, the pipeline routes it to the table's
rejects, and samplers skip it: all through :func:`text_problem`.

The reasons are the ones the pipeline has always written to rejects tables,
so users' queries on those tables keep working.

>>> text_problem("a passage") is None
True
>>> text_problem("  \\n")
'whitespace-only text'
>>> find_invalid_texts(["ok", None, 3])
[(1, 'null text'), (2, 'text is not a string (int)')]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._errors import InvalidTextError

__all__ = [
    "EMPTY_TEXT",
    "NOT_A_STRING",
    "NULL_TEXT",
    "UNDECODABLE_TEXT",
    "WHITESPACE_ONLY_TEXT",
    "check_texts",
    "decode_text",
    "embeddable_text",
    "find_invalid_texts",
    "text_problem",
]

#: The value is None (a null cell).
NULL_TEXT = "null text"
#: The value is ``""``.
EMPTY_TEXT = "empty text"
#: The value is a str of whitespace only (spaces, tabs, newlines, other Unicode whitespace).
WHITESPACE_ONLY_TEXT = "whitespace-only text"
#: The value is not a str; the reason names its type: ``"text is not a string (int)"``.
NOT_A_STRING = "text is not a string"
#: Bytes (a binary column) that are not UTF-8; see :func:`decode_text`.
UNDECODABLE_TEXT = "undecodable text (not UTF-8)"


def text_problem(value: Any) -> str | None:
    """Why ``value`` cannot be embedded, or None when it can.

    Bytes are not text here (``"text is not a string (bytes)"``); a reader of
    binary columns decodes them first with :func:`decode_text`.
    """
    if value is None:
        return NULL_TEXT
    if not isinstance(value, str):
        return f"{NOT_A_STRING} ({type(value).__name__})"
    if not value:
        return EMPTY_TEXT
    if value.isspace():
        return WHITESPACE_ONLY_TEXT
    return None


def find_invalid_texts(texts: Sequence[Any]) -> list[tuple[int, str]]:
    """Positions of inputs that are not embeddable text, each with its :func:`text_problem`.

    The job layer uses this to route rows to its rejects table; the encoder
    refuses a batch that has any.
    """
    bad: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        reason = text_problem(text)
        if reason is not None:
            bad.append((i, reason))
    return bad


def check_texts(texts: Sequence[Any]) -> None:
    """Raise :class:`InvalidTextError` naming every position of ``texts`` that is not embeddable text."""
    bad = find_invalid_texts(texts)
    if bad:
        raise InvalidTextError([p for p, _ in bad], [r for _, r in bad], len(texts))


def decode_text(value: Any) -> tuple[Any, str | None]:
    """A cell of a text or binary column as text: ``(value, None)``, with bytes decoded as UTF-8.

    Bytes that are not UTF-8 come back escaped (``backslashreplace``, so the
    bytes can be recovered from a rejects table) with :data:`UNDECODABLE_TEXT`.
    Anything else comes back unchanged; :func:`text_problem` judges it.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return value.decode("utf-8", "backslashreplace"), UNDECODABLE_TEXT
    return value, None


def embeddable_text(value: Any) -> str | None:
    """``value`` as the text to embed (bytes decoded), or None where the rule rejects it: what sampling,
    calibration and the quality map keep of a corpus."""
    text, undecodable = decode_text(value)
    return text if undecodable is None and text_problem(text) is None else None
