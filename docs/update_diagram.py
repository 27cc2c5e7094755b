"""Rewrite every generated state diagram in docs/*.md from the machines' tables.

A doc embeds a diagram between ``<!-- diagram:NAME:begin -->`` and
``<!-- diagram:NAME:end -->``; this script replaces what is between them with the
current drawing of NAME (see :data:`DIAGRAMS`), as a fenced ``mermaid`` block. A name
may be embedded in several docs. tests/test_docs.py fails when a block is stale or
names no diagram: run ``python docs/update_diagram.py`` and review the diff.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sansio_signal import client, negotiation, relay

DOCS = Path(__file__).resolve().parent

DIAGRAMS: dict[str, Callable[[], str]] = {
    "relay": relay.diagram,
    "client": client.diagram,
    **{name: partial(negotiation.diagram, name) for name in negotiation.DIAGRAMS},
}
"""Every diagram a doc can embed, by name: the relay's phases, the client's states, and
the negotiation's exchange and recovery for each role."""

BLOCK = re.compile(r"(<!-- diagram:([\w-]+):begin -->\n)(?:.*?\n)?(<!-- diagram:\2:end -->)", re.S)
"""One embedded diagram: its begin marker, its name, what is drawn now (nothing, in a
new block), its end marker."""


def _draw(match: re.Match[str]) -> str:
    name = match[2]
    if name not in DIAGRAMS:
        raise KeyError(f"no diagram named {name!r} (known: {', '.join(DIAGRAMS)})")
    return f"{match[1]}```mermaid\n{DIAGRAMS[name]()}\n```\n{match[3]}"


def embedded(text: str) -> list[str]:
    """The names of the diagram blocks in ``text``, in order."""
    return [match[2] for match in BLOCK.finditer(text)]


def rendered(text: str) -> str:
    """``text`` with each diagram block replaced by the current diagram of its name."""
    return BLOCK.sub(_draw, text)


def docs() -> list[Path]:
    """The docs that embed at least one diagram."""
    return [path for path in sorted(DOCS.glob("*.md")) if embedded(path.read_text())]


def main() -> int:
    """Rewrite the stale blocks; print which docs changed."""
    for path in docs():
        text = path.read_text()
        fresh = rendered(text)
        if fresh != text:
            path.write_text(fresh)
            print(f"updated {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
