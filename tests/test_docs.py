"""The docs say what the code does: the diagrams are fresh and the examples run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parent.parent / "docs"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


STALE = "run: python docs/update_diagram.py (and review the diff)"


def test_every_diagram_in_the_docs_is_generated_from_its_table() -> None:
    updater = load(DOCS / "update_diagram.py")
    assert updater.docs(), "no doc embeds a diagram"
    for path in updater.docs():
        text = path.read_text()
        assert updater.rendered(text) == text, f"{path.name} is stale; {STALE}"


def test_every_diagram_marker_opens_or_closes_a_block_of_a_known_diagram() -> None:
    updater = load(DOCS / "update_diagram.py")
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        names = updater.embedded(text)
        markers = [line for line in text.splitlines() if line.startswith("<!-- diagram:")]
        assert len(markers) == 2 * len(names), f"{path.name}: a marker without its pair"
        unknown = set(names) - set(updater.DIAGRAMS)
        assert not unknown, f"{path.name}: no diagram named {unknown}; known: {updater.DIAGRAMS}"


def test_each_machine_is_drawn_in_the_architecture_and_every_diagram_somewhere() -> None:
    updater = load(DOCS / "update_diagram.py")
    shown = set(updater.embedded((DOCS / "architecture.md").read_text()))
    assert {"relay", "client", "initiator", "polite"} <= shown
    everywhere = {name for path in updater.docs() for name in updater.embedded(path.read_text())}
    assert everywhere == set(updater.DIAGRAMS)


def test_every_diagram_is_legible() -> None:
    """No hairball: a machine that outgrows this groups its edges in its ``diagram``
    (as the negotiation does with ``ANY`` and ``UNDER_WAY``)."""
    updater = load(DOCS / "update_diagram.py")
    for name, draw in updater.DIAGRAMS.items():
        chart = draw()
        assert chart.startswith("stateDiagram-v2\n"), name
        assert chart.count("-->") <= 30, f"{name}: {chart.count('-->')} edges"


def test_the_property_test_example_passes() -> None:
    example = load(DOCS / "examples" / "property_test_mesh.py")
    example.test_everyone_meets_everyone()


def test_the_testing_guide_relay_snippet() -> None:
    from sansio_signal.testing import RelayHarness

    h = RelayHarness()
    a, b = h.connect(), h.connect()
    h.join(a, "demo", "alice")
    h.join(b, "demo", "bob")
    h.send(a, {"channel": "webrtc-signaling", "type": "webrtc-renegotiate", "toUserId": "bob"})
    assert h.take(b)[-1]["fromUserId"] == "alice"
