"""Real text for demos, tests and benchmarks, read from the installed gensim wheel.

Nothing here is copied into the repository: gensim ships the Lee news corpus
(300 background articles; 50 documents with human similarity ratings) and an
excerpt of English Wikipedia under ``gensim/test/test_data``.
"""

from __future__ import annotations

import bz2
import importlib.util
import re
from functools import cache
from pathlib import Path

from jobs.quality import gensim_data_dir, lee_scored, read_text_lines

__all__ = [
    "data_dir",
    "docstring_passages",
    "large_corpus",
    "lee_background",
    "lee_passages",
    "lee_scored",
    "passages",
    "wiki_passages",
]

_WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def data_dir() -> Path:
    folder = gensim_data_dir()
    if folder is None:
        raise RuntimeError("the real-text corpora come from the gensim wheel: pip install gensim")
    return folder


@cache
def lee_background() -> tuple[str, ...]:
    """The 300 news articles of the Lee background corpus, one string each."""
    return read_text_lines(data_dir() / "lee_background.cor")


@cache
def wiki_passages(words: int = 80) -> tuple[str, ...]:
    """Plain-text passages of about ``words`` words from gensim's English Wikipedia excerpt."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    out: list[str] = []
    with bz2.open(data_dir() / _WIKI, "rb") as fh:
        for _title, markup, _pageid in extract_pages(fh):
            if not markup or markup.lstrip().lower().startswith("#redirect"):
                continue
            text = filter_wiki(markup)
            for para in re.split(r"\n\s*\n", text):
                para = re.sub(r"\s+", " ", para).strip()
                tokens = para.split(" ")
                if len(tokens) < 12 or para.startswith(("Category:", "|", "!", "*")):
                    continue
                for i in range(0, len(tokens), words):
                    chunk = tokens[i : i + words]
                    if len(chunk) >= 12:
                        out.append(" ".join(chunk))
    return tuple(out)


def lee_passages(words: int = 80) -> list[str]:
    """The Lee articles' sentences grouped into passages of about ``words`` words (in order, with repeats)."""
    out: list[str] = []
    for article in lee_background():
        chunk: list[str] = []
        for sentence in re.split(r"(?<=[.!?])\s+", article):
            chunk.append(sentence)
            if sum(len(s.split()) for s in chunk) >= words:
                out.append(" ".join(chunk))
                chunk = []
        if chunk:
            out.append(" ".join(chunk))
    return out


def passages(n: int, *, words: int = 80) -> list[str]:
    """``n`` distinct real passages: the Lee articles' sentences grouped to about ``words`` words,
    then Wikipedia passages. Raises when the corpora hold fewer than ``n``."""
    pool = lee_passages(words)
    pool.extend(wiki_passages(words))
    unique = list(dict.fromkeys(pool))
    if len(unique) < n:
        raise ValueError(f"asked for {n} passages; the bundled real corpora hold {len(unique)}")
    return unique[:n]


@cache
def docstring_passages(
    words: int = 80, packages: tuple[str, ...] = ("torch", "transformers", "ray", "numpy")
) -> tuple[str, ...]:
    """Passages of about ``words`` words from the docstrings of installed packages (real technical English).

    Read with ``ast`` from the installed sources, in a fixed order, so the same
    machine gives the same passages.
    """
    import ast

    out: list[str] = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            if "test" in path.parts or "tests" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                tokens = re.sub(r"\s+", " ", doc).strip().split(" ")
                for i in range(0, len(tokens), words):
                    chunk = tokens[i : i + words]
                    if len(chunk) >= words // 2:
                        out.append(" ".join(chunk))
    return tuple(dict.fromkeys(out))


def large_corpus(n: int, *, words: int = 80) -> list[str]:
    """``n`` distinct real passages: :func:`passages` (news, Wikipedia), then installed packages' docstrings."""
    pool = list(dict.fromkeys([*lee_passages(words), *wiki_passages(words), *docstring_passages(words)]))
    if len(pool) < n:
        raise ValueError(f"asked for {n} passages, the corpora hold {len(pool)} distinct ones of ~{words} words")
    return pool[:n]
