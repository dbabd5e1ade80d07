"""The README is the front door and the documentation site holds the rest.

The README stays short, starts with the two setup commands and links every page of ``docs/``;
every page is in the site's navigation (``mkdocs.yml``) and every navigation entry exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)
LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?:#[^)\s]*)?\)")


def _pages() -> set[str]:
    """Every Markdown page under docs/, as a path relative to docs/."""
    return {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}


def _nav_pages() -> list[str]:
    """Every page the navigation of mkdocs.yml names, in order."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            if not re.match(r"^[a-z]+://", node):
                out.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return out


def test_readme_is_under_200_lines() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < 200, f"README.md has {n} lines; move detail into docs/"


def test_readme_links_every_docs_page() -> None:
    readme = README.read_text(encoding="utf-8")
    linked = {m.group("target") for m in LINK.finditer(readme)}
    pages = {p for p in _pages() if not p.startswith("reference/")}
    assert pages, "docs/ has no pages"
    missing = sorted(p for p in pages if f"docs/{p}" not in linked)
    assert not missing, f"README.md does not link: {missing}"
    # and every docs/ link of the README points at a page that exists
    dangling = sorted(
        t for t in linked if t.startswith("docs/") and not (ROOT / t).resolve().is_file()
    )
    assert not dangling, f"README.md links to missing files: {dangling}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = _nav_pages()
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    not_in_nav = sorted(_pages() - set(nav))
    assert not not_in_nav, f"pages missing from mkdocs.yml's nav: {not_in_nav}"
    missing = sorted(p for p in nav if not (DOCS / p).is_file())
    assert not missing, f"nav entries without a page: {missing}"
    assert any(p.startswith("reference/") for p in nav), "the API reference is not in the nav"


def test_readme_starts_with_the_two_setup_commands() -> None:
    blocks = [(m.group("lang"), m.group("body")) for m in FENCE.finditer(README.read_text())]
    assert len(blocks) >= 2
    (lang1, demo), (lang2, tests) = blocks[0], blocks[1]
    assert lang1 == lang2 == "bash"
    venv = "python3.11 -m venv .venv && . .venv/bin/activate && "
    assert demo.strip() == venv + "pip install -c constraints.txt -e . && stealproof demo"
    assert tests.strip() == venv + "pip install -c constraints.txt -e '.[test,ray]' && pytest"


def test_mkdocs_config_has_the_theme_and_the_api_reference() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "material"
    plugins = {next(iter(p)) if isinstance(p, dict) else p: p for p in config["plugins"]}
    assert {"search", "mkdocstrings"} <= set(plugins)
    python = plugins["mkdocstrings"]["mkdocstrings"]["handlers"]["python"]
    assert python["paths"] == ["src"]
    reference = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    assert "::: stealproof.defenses" in reference and "::: stealproof.attacks" in reference
