"""Run every Python example of the README and the docs (see ``doc_examples.py`` for the rules).

An example that stops working fails here, with its file and line in the test id and the
traceback. Examples that talk to a gateway get one from a fixture below, started on a free port;
``127.0.0.1:8000`` in their source is replaced by that server's address.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from doc_examples import (
    ROOT,
    Example,
    blocks_in,
    examples,
    markdown_files,
    parse_options,
    shell_commands,
)
from gateway_fixtures import Server, create_clients, start_server

DOCS_PORT = "127.0.0.1:8000"


def _params() -> list[object]:
    out = []
    for ex in examples():
        marks = [pytest.mark.slow] if ex.slow else []
        out.append(pytest.param(ex, id=ex.block.name, marks=marks))
    return out


@pytest.fixture
def docs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and a plotting backend that needs no display."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


@pytest.mark.parametrize("example", _params())
def test_example_runs(example: Example, docs_env: Path, request: pytest.FixtureRequest) -> None:
    replace: dict[str, str] = {}
    for name in example.fixtures:
        value = request.getfixturevalue(f"docs_{name}")
        replace.update(value or {})
    namespace: dict[str, object] = {"__name__": "__main__"}
    for block in example.chain:
        source = block.source
        for old, new in replace.items():
            source = source.replace(old, new)
        exec(compile(source, block.name, "exec"), namespace)


def _demo_gateway(workdir: Path) -> tuple[Path, str]:
    """The ``serve --demo`` files in ``workdir``: config path and database URL."""
    from stealproof.cli.serve import prepare_demo

    config = prepare_demo(workdir, quiet=True)
    return config, f"sqlite:///{workdir / 'stealproof.db'}"


@pytest.fixture
def docs_gateway_demo(docs_env: Path) -> Iterator[dict[str, str]]:
    """``stealproof serve --demo`` in the working directory (its key files there)."""
    config, _ = _demo_gateway(docs_env)
    server = start_server(config)
    try:
        yield {DOCS_PORT: server.url.removeprefix("http://")}
    finally:
        server.stop()


@pytest.fixture
def docs_gateway_calibrated(docs_env: Path) -> Iterator[dict[str, str]]:
    """The demo gateway with the calibrated δ of docs/gateway.md and clients alice and mallory."""
    config, db_url = _demo_gateway(docs_env)
    doc = yaml.safe_load(config.read_text())
    policy = doc["models"][0]["policy"]
    policy["detectors"][0]["params"]["delta"] = 0.949
    policy["max_flagged"] = 40
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    for name, key in create_clients(db_url, "alice", "mallory").items():
        (docs_env / f"{name}.key").write_text(key + "\n")
    server: Server = start_server(config)
    try:
        yield {DOCS_PORT: server.url.removeprefix("http://")}
    finally:
        server.stop()


# ------------------------------------------------------------------------- the rules themselves


def test_every_markdown_file_is_read_and_has_examples() -> None:
    files = markdown_files()
    assert ROOT / "README.md" in files
    assert sum(1 for ex in examples()) >= len([f for f in files if "```python" in f.read_text()])


def test_options_are_parsed_and_unknown_ones_refused() -> None:
    assert parse_options(" slow fixture=a,b ", "x") == {
        "slow": True, "continue": False, "fixture": ("a", "b")}  # fmt: skip
    with pytest.raises(ValueError, match="unknown test option 'slwo'"):
        parse_options("slwo", "x.md:3")


def test_blocks_options_and_continuations(tmp_path: Path) -> None:
    page = tmp_path / "probe.md"
    text = textwrap.dedent(
        """\
        # probe
        ```python
        a = 1
        ```
        ```text
        output, not run
        ```
        <!-- test: continue slow -->
        ```python
        b = a + 1
        ```
        - in a list:

          ```py
          c = 3
          ```
        """
    )
    page.write_text(text)
    found = blocks_in(page)
    assert [(b.line, b.source, b.slow, b.cont) for b in found] == [
        (2, "a = 1\n", False, False),
        (9, "b = a + 1\n", True, True),
        (14, "c = 3\n", False, False),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- test: slow -->\ntext between\n```python\nx = 1\n```\n", "right before a fence"),
        ("<!-- test: slow -->\n```bash\nls\n```\n", "before a bash block"),
        ("<!-- test: continue -->\n```python\nx = 1\n```\n", "'continue' on the first"),
    ],
    ids=["text-between", "bash-block", "continue-first"],
)
def test_misplaced_options_are_errors(text: str, message: str, tmp_path: Path) -> None:
    page = tmp_path / "probe.md"
    page.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        blocks_in(page)


# ------------------------------------------------------------------ the shell commands, parsed


#: typer ships its own copy of click; its usage error is the base of ``typer.BadParameter``
USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


def _parse(args: list[str]) -> None:
    """Resolve ``args`` through the CLI's commands and parse their options, running nothing."""
    import typer.main

    from stealproof.cli import app

    command: Any = typer.main.get_command(app)
    ctx = command.make_context("stealproof", list(args))
    while hasattr(command, "resolve_command"):  # a group
        # click keeps a group's subcommand and its arguments apart from the group's own
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)  # UsageError: no such command
        assert name is not None and sub is not None
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)


def _commands() -> list[object]:
    return [pytest.param(args, id=where) for where, args in shell_commands()]


@pytest.mark.parametrize("args", _commands())
def test_shell_command_names_real_commands_and_options(args: list[str]) -> None:
    """Every ``stealproof …`` line of the docs parses: its command and options exist and take
    the values shown. (They are not run: servers, long benchmarks.)"""
    if any(a in ("--help", "-h") for a in args):
        return
    try:
        _parse(args)
    except USAGE_ERROR as e:
        if type(e).__name__ == "MissingParameter":
            return  # a fragment showing some options only (the page says what else it needs)
        pytest.fail(f"stealproof {' '.join(args)}: {e}")


def test_the_command_check_catches_wrong_commands_and_options() -> None:
    _parse(["bench", "run", "smoke", "--out", "x", "--limit", "3"])
    for wrong in (
        ["bench", "run", "smoke", "--out", "x", "--limitt", "3"],
        ["bench", "runn", "smoke"],
        ["attack", "--budget", "many"],
        ["nosuch"],
    ):
        with pytest.raises(USAGE_ERROR):
            _parse(wrong)
    assert len(shell_commands()) >= 40  # the docs' commands are found
    assert ["demo"] in [args for _, args in shell_commands()]
