"""MkDocs hooks for the documentation site (``hooks:`` in mkdocs.yml).

Three jobs, all at build time so that nothing generated lands in docs/:

* the API reference reads the checkout's sources laid out as installed: a temporary
  copy of the checkout's ``sansio_signal/`` with the top-level ``adapters/`` copied in
  as its ``adapters`` subpackage (setuptools' package-dir mapping, which griffe cannot
  follow; it resolves symbolic links, so they would not do); no install is needed, and
  a concurrent ``pip install -e`` rebuilding build/ cannot break a build;
* the benchmarks' README (``benchmarks/README.md``, beside the scripts it describes)
  becomes the page ``benchmarks.md``, its links into docs/ (``../docs/x``) rewritten to
  the site's own pages and pictures;
* the docstrings' Sphinx roles (``:class:`~.events.Name```), which mkdocstrings leaves
  as text, are dropped from the rendered HTML: the name stays, as code (``Name``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks" / "README.md"

ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|type):<code>(~?)\.?([\w.]+)</code>"
)
"""A Sphinx role left in front of its ``<code>`` span by the Markdown renderer, with its
target (``~`` first: shown by its last name only; a leading ``.``: relative)."""


def _name(role: re.Match[str]) -> str:
    name = role[2].rsplit(".", 1)[-1] if role[1] else role[2]
    return f"<code>{name}</code>"


_tree: tempfile.TemporaryDirectory[str] | None = None


def installed_layout(into: Path) -> Path:
    """Lay the checkout's package out under ``into`` as installed; return ``into``."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "sansio_signal", into / "sansio_signal", ignore=skip)
    shutil.copytree(ROOT / "adapters", into / "sansio_signal" / "adapters", ignore=skip)
    return into


@event_priority(100)  # before mkdocstrings' own on_config, which makes the handler
def on_config(config: MkDocsConfig, **_: Any) -> MkDocsConfig:
    """Point mkdocstrings' Python handler at the installed layout of the checkout."""
    global _tree
    if _tree is None:
        _tree = tempfile.TemporaryDirectory(prefix="sansio-signal-docs-")
        installed_layout(Path(_tree.name))
    handlers = config.plugins["mkdocstrings"].config["handlers"]
    handlers.setdefault("python", {})["paths"] = [_tree.name]
    return config


def on_shutdown(**_: Any) -> None:
    """Remove the temporary tree."""
    global _tree
    if _tree is not None:
        _tree.cleanup()
        _tree = None


def benchmarks_page(text: str) -> str:
    """The benchmarks' README as a page of the site: ``../docs/`` links made local."""
    return text.replace("](../docs/", "](")


def on_files(files: Files, config: MkDocsConfig, **_: Any) -> Files:
    """Add ``benchmarks.md``, generated from ``benchmarks/README.md``."""
    page = File.generated(config, "benchmarks.md", content=benchmarks_page(BENCHMARKS.read_text()))
    files.append(page)
    return files


def on_page_content(html: str, **_: Any) -> str:
    """Drop the Sphinx roles the docstrings use; the names stay as code."""
    return ROLE.sub(_name, html)
