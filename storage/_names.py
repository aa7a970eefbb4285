"""Names embedjob accepts: table names (LanceDB's rule), and no control characters in any name."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["has_control_characters", "split_table_uri", "table_name_problem"]


def has_control_characters(text: str) -> bool:
    """True when ``text`` holds a control character (newline, tab, escape, ...) or a line/paragraph separator."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def split_table_uri(uri: str) -> tuple[str, str]:
    """``s3://b/db/articles.lance`` -> (``s3://b/db``, ``articles``): LanceDB's database and table name."""
    base = uri.rstrip("/")
    parent, _, leaf = base.rpartition("/")
    name = leaf[: -len(".lance")] if leaf.endswith(".lance") else leaf
    return (parent or "."), name


#: names LanceDB's validator accepts (ASCII letters and digits, ``_``, ``-``, ``.``; not ``.`` or ``..``), asked
#: first so that a good name costs no import of lancedb (~1 s); any other name goes to LanceDB's own validator,
#: which says what is wrong (tests/storage check that both agree)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def table_name_problem(uri: str) -> str | None:
    """Why LanceDB would refuse to open the table at ``uri`` by name, or None when it would not.

    The table is queried through LanceDB (``connect(folder).open_table(name)``), whose rule is checked here
    with LanceDB's own validator: letters, digits, ``_``, ``-`` and ``.``, not empty.
    """
    if has_control_characters(uri):
        return "holds a control character (a newline, tab or escape); remove it"
    _, name = split_table_uri(uri)
    if _PLAIN_NAME.fullmatch(name) and name not in (".", ".."):
        return None
    from lancedb.util import validate_table_name

    try:
        validate_table_name(name)
    except ValueError as exc:
        return (
            f"the table name {name!r} (the uri's last part, without .lance) would be refused by LanceDB "
            f"({exc}); use only letters, digits, '_', '-' and '.'"
        )
    return None
