"""Rewrite the state diagram in docs/negotiation.md from the transition table."""

from __future__ import annotations

import re
from pathlib import Path

from sansio_signal.negotiation import diagram

DOC = Path(__file__).with_name("negotiation.md")
BLOCK = re.compile(r"(<!-- diagram:begin -->\n).*?(\n<!-- diagram:end -->)", re.S)


def rendered(text: str) -> str:
    """``text`` with its diagram block replaced by the current diagram."""
    return BLOCK.sub(lambda m: f"{m[1]}```mermaid\n{diagram()}\n```{m[2]}", text)


if __name__ == "__main__":
    DOC.write_text(rendered(DOC.read_text()))
