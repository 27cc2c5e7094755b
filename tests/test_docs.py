"""The docs say what the code does: the diagram is fresh and the examples run."""

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


def test_the_state_diagram_is_generated_from_the_table() -> None:
    updater = load(DOCS / "update_diagram.py")
    text = (DOCS / "negotiation.md").read_text()
    assert updater.rendered(text) == text, "run: python docs/update_diagram.py"


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
