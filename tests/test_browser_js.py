"""The pure half of the browser client (``adapters/static/sansio-signal.js``).

Runs its unit tests under node's built-in test runner (no npm packages) and checks that
its transition table lists exactly the ``(state, input)`` pairs of the Python one, so the
two implementations cannot drift apart silently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from sansio_signal.negotiation import TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "adapters" / "static" / "sansio-signal.js"


def _node() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    assert node is not None, "node is needed for the JS client's tests (.ci/run installs it)"
    return node


def test_js_unit_tests_pass() -> None:
    result = subprocess.run(
        [_node(), "--test", str(ROOT / "tests" / "js")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout


def test_js_transition_table_matches_python() -> None:
    script = (
        f"import({json.dumps(MODULE.as_uri())})"
        ".then(m => console.log(JSON.stringify(m.transitionKeys())))"
    )
    out = subprocess.run(
        [_node(), "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    js_keys = set(json.loads(out))
    py_keys = {f"{state.value}|{kind.value}" for state, kind in TRANSITIONS}
    difference = {"only in JS": js_keys - py_keys, "only in Python": py_keys - js_keys}
    assert js_keys == py_keys, difference
