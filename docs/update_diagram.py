"""Rewrite the state diagrams in docs/negotiation.md from the transition table."""

from __future__ import annotations

import re
from pathlib import Path

from sansio_signal.negotiation import diagram

DOC = Path(__file__).with_name("negotiation.md")
BLOCK = re.compile(r"(<!-- diagram:([\w-]+):begin -->\n).*?(\n<!-- diagram:\2:end -->)", re.S)


def rendered(text: str) -> str:
    """``text`` with each diagram block replaced by the current diagram of its name."""
    return BLOCK.sub(lambda m: f"{m[1]}```mermaid\n{diagram(m[2])}\n```{m[3]}", text)


if __name__ == "__main__":
    DOC.write_text(rendered(DOC.read_text()))
