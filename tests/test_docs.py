"""Every code snippet of docs/ and README.md, run as written; and the docs site builds with ``--strict``.

How a page says where its snippets run, and how a block says why it cannot run: docs/development.md, "The
docs". The cheap checks (markers, TOML job files, links, the site build, pages whose commands are quick) are in
the default suite; pages whose snippets run jobs are ``slow``, and run every block they have.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
RUNNABLE = ("python", "bash", "sh", "toml")
SETUPS = ("none", "demo-files", "demo-table")

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_SKIP = re.compile(r"^<!--\s*snippet:\s*skip\s*\((?P<reason>.*\S.*)\)\s*-->$")
_PAGE = re.compile(r"^<!--\s*snippets:(?P<words>.*)-->$")
_COMMENTED = re.compile(r"^#\s?(?P<line>\[[\w.-]+\].*|[A-Za-z_][\w-]*\s*=.*)$")
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repo root
    line: int  # the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # why it cannot run, when it is marked

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class Page:
    name: str
    setup: str
    slow: bool
    blocks: tuple[Block, ...]
    problems: tuple[str, ...]  # marker mistakes, each with its line

    def runnable(self, *langs: str) -> list[Block]:
        return [b for b in self.blocks if b.skip is None and b.lang in langs]


def read_page(path: Path) -> Page:
    name = str(path.relative_to(ROOT))
    blocks: list[Block] = []
    problems: list[str] = []
    setup, slow = "none", False
    skip: tuple[int, str] | None = None
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line, stripped = lines[i], lines[i].strip()
        fence = _FENCE.match(line)
        if fence:
            closing, indent = fence["fence"], len(fence["indent"])
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == closing), None)
            if end is None:
                problems.append(f"{name}:{i + 1}: a code block that is never closed")
                break
            code = "\n".join(raw[indent:] for raw in lines[i + 1 : end]) + "\n"
            blocks.append(Block(name, i + 1, fence["lang"].lower(), code, skip[1] if skip else None))
            skip, i = None, end + 1
            continue
        if stripped.startswith("<!--") and "snippet" in stripped:
            if (m := _SKIP.match(stripped)) is not None:
                if skip:
                    problems.append(f"{name}:{skip[0]}: a skip marker with no code block right below it")
                skip = (i + 1, m["reason"].strip())
            elif (m := _PAGE.match(stripped)) is not None:
                setup, slow = _page_words(m["words"].split(), f"{name}:{i + 1}", problems)
            else:
                problems.append(
                    f"{name}:{i + 1}: {stripped!r} is not a marker; "
                    "allowed: <!-- snippet: skip (REASON) --> and <!-- snippets: setup=... [slow] -->"
                )
        elif stripped and skip:
            problems.append(f"{name}:{skip[0]}: a skip marker with no code block right below it")
            skip = None
        i += 1
    if skip:
        problems.append(f"{name}:{skip[0]}: a skip marker with no code block right below it")
    return Page(name, setup, slow or setup == "demo-table", tuple(blocks), tuple(problems))


def _page_words(words: list[str], where: str, problems: list[str]) -> tuple[str, bool]:
    setup, slow = "none", False
    for word in words:
        if word == "slow":
            slow = True
        elif word.startswith("setup=") and word.removeprefix("setup=") in SETUPS:
            setup = word.removeprefix("setup=")
        else:
            problems.append(f"{where}: {word!r} in the page marker; allowed: setup={'|'.join(SETUPS)}, slow")
    return setup, slow


def commands(block: Block) -> list[str]:
    """The command lines of a shell block: comments and blank lines dropped, ``\\`` continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block.code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


ALL = tuple(read_page(p) for p in PAGES)
BLOCKS = tuple(b for page in ALL for b in page.blocks)


# ----------------------------------------------------------------------------------- fast: markers, TOML, links


def test_every_block_runs_or_says_why_not():
    problems = [p for page in ALL for p in page.problems]
    for block in BLOCKS:
        if block.skip is None and block.lang not in RUNNABLE:
            lang = block.lang or "no language"
            problems.append(
                f"{block.where}: a ```{lang} block, which the test cannot run: "
                f"give it one of {', '.join(RUNNABLE)}, or mark it <!-- snippet: skip (REASON) -->"
            )
        if block.skip is None and block.lang in ("bash", "sh"):
            problems += [
                f"{block.where}: {cmd!r} is not an embedjob command: the test runs only those; "
                "mark the block <!-- snippet: skip (REASON) -->"
                for cmd in commands(block)
                if not cmd.startswith("embedjob ")
            ]
    assert not problems, "\n".join(problems)
    # the parser found what is there: each kind the test runs, and the markers
    langs = {b.lang for b in BLOCKS if b.skip is None}
    assert {"python", "bash", "toml"} <= langs, langs
    assert any(b.skip for b in BLOCKS)
    assert {p.setup for p in ALL} == set(SETUPS)


def test_a_block_without_a_reason_or_a_marker_is_refused(tmp_path, monkeypatch):
    """The checker itself: a diagram with no marker, a reasonless marker, a marker with nothing below it."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- snippets: setup=elsewhere -->\n\n```mermaid\nflowchart LR\n```\n\n<!-- snippet: skip () -->\n"
        "```bash\nmake demo\n```\n\n<!-- snippet: skip (dangling) -->\n\nsome prose\n\n<!-- snippet: skip (ok) -->\n"
        "```text\nfine\n```\n"
    )
    read = read_page(page)
    assert [b.skip for b in read.blocks] == [None, None, "ok"]
    problems = "\n".join(read.problems)
    assert "p.md:1: 'setup=elsewhere' in the page marker" in problems
    assert "p.md:7: '<!-- snippet: skip () -->' is not a marker" in problems
    assert "p.md:12: a skip marker with no code block right below it" in problems


# a minimal whole job: a TOML fragment (a few sections) is checked on top of it
_BASE_JOB = {
    "granularities": ["l6_d384"],
    "input": {"uri": "corpus.parquet"},
    "model": {"path": "all-MiniLM-L6-v2"},
    "output": {"uri": "tables/t.lance"},
}


def _as_job(data: dict) -> dict:
    if all(key in data for key in _BASE_JOB):
        return data
    job = {key: dict(value) if isinstance(value, dict) else value for key, value in _BASE_JOB.items()}
    for key, value in data.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) and isinstance(job.get(key), dict) else value
    return job


TOML_BLOCKS = [b for b in BLOCKS if b.lang == "toml" and b.skip is None]


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.where for b in TOML_BLOCKS])
def test_toml_blocks_are_job_files_the_parser_takes(block):
    from jobs import parse_job

    as_written = tomllib.loads(block.code)
    parse_job(_as_job(as_written), source=block.where)
    # every key the docs name but comment out is one the job file takes
    uncommented = "\n".join(m["line"] if (m := _COMMENTED.match(line)) else line for line in block.code.splitlines())
    if uncommented != block.code.rstrip("\n"):
        parse_job(_as_job(tomllib.loads(uncommented)), source=f"{block.where} (commented keys uncommented)")


def test_the_toml_check_refuses_an_unknown_key_and_a_commented_one():
    """The check above can fail: an unknown key, as written or behind a comment, is an error."""
    from jobs import JobSpecError, parse_job

    with pytest.raises(JobSpecError, match="colour"):
        parse_job(_as_job(tomllib.loads('[output]\ncolour = "blue"\n')))
    code = "[output]\n# colour = 'blue'   # a key the parser does not have\n"
    uncommented = "\n".join(m["line"] if (m := _COMMENTED.match(line)) else line for line in code.splitlines())
    with pytest.raises(JobSpecError, match="colour"):
        parse_job(_as_job(tomllib.loads(uncommented)))


def test_readme_links_lead_to_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [m["target"] for m in _LINK.finditer(text)]
    local = [t.split("#")[0] for t in targets if "://" not in t and not t.startswith("#")]
    assert len(local) >= 9, local  # the table of docs pages, at least
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= set(local), f"README.md does not link to {sorted(pages - set(local))}"


def test_the_docs_site_builds_strict(tmp_path):
    """`make docs`'s build: --strict turns a broken link, a missing anchor or a page left out of nav into a failure."""
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = {p.parent.name for p in site.glob("*/index.html")} | {"index"}
    assert built == {p.stem for p in (ROOT / "docs").glob("*.md")}, built
    assert (site / "figures" / "quality_map_all-MiniLM-L6-v2.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------------- running the snippets


@pytest.fixture(scope="session")
def _demo_files(tmp_path_factory) -> Path:
    """What `make demo` writes before it runs anything: out/demo/{lee.parquet, job.toml, nightly.toml}."""
    from examples.demo import write_files

    root = tmp_path_factory.mktemp("demo-files")
    write_files(root / "out" / "demo")
    return root


@pytest.fixture(scope="session")
def _demo_table(tmp_path_factory, _demo_files, ray_local) -> Path:
    """The demo's files plus the table its first run makes (out/demo/tables/lee.lance), built once."""
    from jobs import run_job

    root = tmp_path_factory.mktemp("demo-table")
    shutil.copytree(_demo_files / "out", root / "out")
    summary = run_job(root / "out" / "demo" / "job.toml", progress=False)
    assert summary.status == "committed" and summary.rows_embedded == 300, summary
    return root


def _run_command(cmd: str, block: Block) -> str:
    from typer.testing import CliRunner

    from jobs.cli import app

    result = CliRunner().invoke(app, shlex.split(cmd)[1:])
    assert result.exit_code == 0, f"{block.where}: `{cmd}` exited {result.exit_code}:\n{result.output}"
    return result.output


def run_page(page: Page) -> tuple[dict, list[tuple[str, str]]]:
    """Run a page's Python and shell blocks in order, in the current folder: one namespace for its Python,
    each `embedjob` line through the CLI. Returns the namespace and each command with its output."""
    namespace: dict = {"__name__": "__snippets__"}
    outputs: list[tuple[str, str]] = []
    for block in page.runnable("python", "bash", "sh"):
        if block.lang == "python":
            exec(compile(block.code, block.where, "exec"), namespace)
        else:
            outputs += [(cmd, _run_command(cmd, block)) for cmd in commands(block)]
    return namespace, outputs


def _check_readme(ns: dict, outputs: list[tuple[str, str]]) -> None:
    from storage import open_table

    assert open_table("out/demo/tables/lee.lance").to_arrow(["id"]).num_rows == 300
    assert "lee-" in outputs[-1][1]  # the query's hits


def _check_index(ns: dict, outputs: list[tuple[str, str]]) -> None:
    from jobs import __version__

    assert outputs[0][1].strip() == f"embedjob {__version__}"


def _check_jobs(ns: dict, outputs: list[tuple[str, str]]) -> None:
    from jobs import load_job

    assert load_job("lee.toml").input.text_column == "text"
    assert '"rows": 303' in dict(outputs)["embedjob plan out/demo/job.toml --json --no-measure"]


def _check_querying(ns: dict, outputs: list[tuple[str, str]]) -> None:
    plain = ns["table"].search(ns["vector"], vector_column_name="vec_l6_d128").distance_type("cosine").limit(3)
    assert plain.to_arrow().num_rows == 3
    assert ns["hits"].num_rows == 10 and "score_l6_d384" in ns["hits"].column_names


def _check_python(ns: dict, outputs: list[tuple[str, str]]) -> None:
    assert ns["night"].table_version == ns["summary"].table_version + 1


def _check_calibration(ns: dict, outputs: list[tuple[str, str]]) -> None:
    from embedder import Granularity

    assert ns["vectors"][Granularity(3, 64)].shape == (2, 64)
    assert Path("minilm.safetensors").is_file() and Path("quality_map/quality_map.json").is_file()


def _check_compatible(ns: dict, outputs: list[tuple[str, str]]) -> None:
    maps = ns["maps"]
    assert maps.info.rows == 2000 and maps.fit("to_old", "l4_d32", "l6_d48").heldout_r2 > 0.5


def _check_nights(ns: dict, outputs: list[tuple[str, str]]) -> None:
    from storage import LATEST_GOOD, open_table

    rolled = dict(outputs)["embedjob rollback out/demo/tables/lee.lance --to latest-good"]
    assert "version 2 (300 rows) -> version 3 (300 rows), the contents of version 1 (tag latest-good)" in rolled
    table = open_table("out/demo/tables/lee.lance")
    assert (table.version, ns["report"].version, table.tags()[LATEST_GOOD]) == (4, 4, 4)
    assert open_table(table.uri, version=3).indexes() == []  # version 1's contents: no index yet
    assert [i["column"] for i in table.indexes()] == ["vec_l6_d128"]  # version 2's, restored


# what a page's snippets leave behind, beyond running without an error
CHECKS: dict[str, Callable[[dict, list[tuple[str, str]]], None]] = {
    "README.md": _check_readme,
    "docs/index.md": _check_index,
    "docs/jobs.md": _check_jobs,
    "docs/querying.md": _check_querying,
    "docs/python.md": _check_python,
    "docs/calibration.md": _check_calibration,
    "docs/nights.md": _check_nights,
    "docs/compatible.md": _check_compatible,
}
RUN_PAGES = [p for p in ALL if p.runnable("python", "bash", "sh")]


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=[pytest.mark.slow] if p.slow else [], id=p.name) for p in RUN_PAGES]
)
def test_page_snippets_run_as_written(page, request, tmp_path, monkeypatch):
    if page.setup != "none":
        source = request.getfixturevalue("_demo_table" if page.setup == "demo-table" else "_demo_files")
        shutil.copytree(source / "out", tmp_path / "out")
    if page.slow:
        request.getfixturevalue("ray_local")  # a run joins the session's Ray
    monkeypatch.chdir(tmp_path)
    # what the CLI sets for its process, restored after; machine state in the test's own folder
    for name in ("LANCE_LOG", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, os.environ.get(name, "error" if name == "LANCE_LOG" else "1"))
    monkeypatch.setenv("EMBEDJOB_STATE_DIR", str(tmp_path / "state"))
    namespace, outputs = run_page(page)
    blocks = page.runnable("python", "bash", "sh")
    assert len(outputs) == sum(len(commands(b)) for b in blocks if b.lang != "python")
    CHECKS[page.name](namespace, outputs)


def test_every_page_that_runs_snippets_has_a_check():
    assert {p.name for p in RUN_PAGES} == set(CHECKS)
