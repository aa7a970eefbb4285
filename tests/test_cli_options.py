"""The CLI's options mean one thing each, across every command (walked, not listed by hand)."""

from __future__ import annotations

import re
import typing

import typer
from typer.testing import CliRunner

from jobs.cli import app
from storage import VERSION


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _options():
    """(command path, option) for every option of every command."""
    root = typer.main.get_command(app)
    for path, command in _commands(root):
        for param in command.params:
            if param.param_type_name == "option":
                yield path, param


def _kind(annotation) -> str:
    """An option's value type; a repeatable option (``list[T]``) counts as ``T``, an optional one as its type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list or (args and len(args) == 1):
        return _kind(args[0])
    return getattr(annotation, "__name__", str(annotation))


def test_every_option_name_has_one_meaning_and_every_short_flag_one_long_name():
    kinds: dict[str, set[str]] = {}
    shorts: dict[str, set[str]] = {}
    for _path, opt in _options():
        longs = [o for o in [*opt.opts, *opt.secondary_opts] if o.startswith("--")]
        kind = "flag" if opt.is_flag else _kind(opt.type_descriptor.annotation)
        for name in longs:
            kinds.setdefault(name, set()).add(kind)
        for short in (o for o in opt.opts if re.fullmatch(r"-[A-Za-z]", o)):
            shorts.setdefault(short, set()).add(longs[0] if longs else "(none)")
    mixed = {name: k for name, k in kinds.items() if len(k) > 1}
    assert mixed == {}, mixed
    assert kinds["--wait"] == {"flag"}  # "until it ends", wherever it is
    assert kinds["--lock-timeout"] == {"float"}  # seconds for a table's lock: its own name
    ambiguous = {s: n for s, n in shorts.items() if len(n) > 1}
    assert ambiguous == {}, ambiguous
    assert shorts["-k"] == {"--k"} and shorts["-g"] == {"--granularity"}


def test_commands_that_wait_for_a_lock_all_take_lock_timeout():
    takers = {path for path, opt in _options() if "--lock-timeout" in opt.opts}
    assert {("run",), ("resume",), ("index",), ("gc",), ("upgrade",), ("rollback",)} <= takers


def test_help_texts_keep_their_brackets():
    runner = CliRunner()
    for path, command in _commands(typer.main.get_command(app)):
        written = " ".join([command.help or "", *(getattr(p, "help", "") or "" for p in command.params)])
        sections = set(re.findall(r"\\\[(\w+)\]", written))
        if not sections:
            continue
        shown = runner.invoke(app, [*path, "--help"], terminal_width=200).output
        for section in sections:
            assert f"[{section}]" in shown, (path, section)


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"embedjob {VERSION}"
