"""Human-judged similarity sets for the quality map: the built-in Lee set and a user's own pairs file.

The Lee set (Lee, Pincombe & Welsh 2005: 50 news documents, the mean of
human similarity ratings for each of their 1,225 pairs) ships inside the
gensim wheel (``gensim/test/test_data/lee.cor`` and ``similarities0-1.txt``).
It is located with ``importlib`` without importing gensim, so embedjob does
not depend on it: without gensim the set is simply not available.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LEE_INSTALL_HINT",
    "PairsFileError",
    "ScoredPairs",
    "gensim_data_dir",
    "lee_scored",
    "lee_set",
    "read_pairs",
    "read_text_lines",
]

LEE_INSTALL_HINT = "built-in Lee set not available: pip install gensim"
PAIR_COLUMNS = ("text_a", "text_b", "score")


class PairsFileError(ValueError):
    """A pairs file that cannot be read; the message names the file, the row and what is allowed."""


@dataclass(frozen=True, eq=False)
class ScoredPairs:
    """Texts with human similarity scores for some of their pairs.

    ``texts`` are distinct; ``pairs`` is (m, 2) indices into them, ``scores`` (m,).
    """

    name: str
    texts: tuple[str, ...]
    pairs: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def gensim_data_dir() -> Path | None:
    """gensim's bundled test data folder, found without importing gensim; None when gensim is not installed."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"


def read_text_lines(path: Path) -> tuple[str, ...]:
    """Non-blank lines, stripped; UTF-8, else latin-1 (``lee.cor`` has a few latin-1 bytes, e.g. the pound sign)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def lee_scored(data_dir: Path | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """The 50 Lee documents and their symmetric 50x50 matrix of mean human similarity ratings (0..1).

    Raises FileNotFoundError with the install hint when gensim is not installed.
    """
    folder = data_dir or gensim_data_dir()
    if folder is None:
        raise FileNotFoundError(LEE_INSTALL_HINT)
    docs = read_text_lines(folder / "lee.cor")
    sims = np.loadtxt(folder / "similarities0-1.txt")
    sims = np.triu(sims) + np.triu(sims, 1).T  # the file holds the upper triangle
    return docs, sims


def lee_set() -> ScoredPairs | None:
    """The built-in Lee set as scored pairs (every pair of the 50 documents once); None without gensim."""
    try:
        docs, sims = lee_scored()
    except FileNotFoundError:
        return None
    iu = np.triu_indices(len(docs), 1)
    return ScoredPairs("lee", docs, np.stack(iu, axis=1), sims[iu])


def read_pairs(path: str | Path) -> ScoredPairs:
    """A user's pairs file: CSV, TSV (by suffix ``.tsv``/``.tab``) or JSON lines (``.jsonl``/``.ndjson``/``.json``),
    with columns ``text_a``, ``text_b``, ``score`` (any other columns are ignored).

    Every row needs two non-empty texts and a finite numeric score; otherwise
    :class:`PairsFileError` names the file, the line and what is allowed.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PairsFileError(f"pairs file {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PairsFileError(f"pairs file {str(path)!r}: not UTF-8 text (byte {exc.start})") from None
    suffix = p.suffix.lower()
    rows = _json_rows(p, content) if suffix in (".jsonl", ".ndjson", ".json") else _table_rows(p, content, suffix)
    texts: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    scores: list[float] = []
    for where, row in rows:
        a, b = (_text(p, where, row, col) for col in ("text_a", "text_b"))
        scores.append(_score(p, where, row))
        pairs.append((texts.setdefault(a, len(texts)), texts.setdefault(b, len(texts))))
    if len(pairs) < 3:
        raise PairsFileError(
            f"pairs file {str(path)!r} has {len(pairs)} scored pair(s); a rank correlation needs at least 3"
        )
    return ScoredPairs(p.name, tuple(texts), np.asarray(pairs, dtype=np.int64), np.asarray(scores, dtype=np.float64))


def _table_rows(path: Path, content: str, suffix: str):
    delimiter = "\t" if suffix in (".tsv", ".tab") else ","
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [c for c in PAIR_COLUMNS if c not in header]
    if missing:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise PairsFileError(
            f"pairs file {str(path)!r}: its {kind} header ({', '.join(header) or 'empty'}) lacks "
            f"{', '.join(missing)}; the header must name text_a, text_b and score"
        )
    for row in reader:
        # the header is line 1; csv's line_num counts physical lines, so quoted newlines are accounted for
        if None in row:
            raise PairsFileError(f"pairs file {str(path)!r}, line {reader.line_num}: more fields than the header")
        yield f"line {reader.line_num}", row


def _json_rows(path: Path, content: str):
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise PairsFileError(f"pairs file {str(path)!r}, line {number}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise PairsFileError(
                f"pairs file {str(path)!r}, line {number}: expected a JSON object with text_a, text_b and score"
            )
        yield f"line {number}", row


def _text(path: Path, where: str, row: dict, column: str) -> str:
    if column not in row or row[column] is None:
        raise PairsFileError(f"pairs file {str(path)!r}, {where}: no {column}; every row needs text_a, text_b, score")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise PairsFileError(f"pairs file {str(path)!r}, {where}: {column} is {value!r}; texts must be non-empty")
    return value


def _score(path: Path, where: str, row: dict) -> float:
    value = row.get("score")
    try:
        if isinstance(value, bool):
            raise TypeError
        score = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise PairsFileError(
            f"pairs file {str(path)!r}, {where}: score {value!r} is not a number; scores must be finite numbers"
        )
    return score
