"""The pure half of the browser client (``adapters/static/machine.js``).

Runs its unit tests under node's built-in test runner (no npm packages) and checks that
its transition tables list exactly the keys and next states of the Python ones (the
negotiation's ``(role, state, input)``, the client machine's ``(state, input)``), so the
two implementations cannot drift apart silently.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from conformance import node

from sansio_signal.negotiation import TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "adapters" / "static" / "machine.js"


def test_js_unit_tests_pass() -> None:
    result = subprocess.run(
        [node(), "--test", str(ROOT / "tests" / "js")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout


def _js_export(call: str) -> Any:
    """What ``call`` (a function the JS machines export, called without arguments)
    returns, as JSON."""
    script = (
        f"import({json.dumps(MODULE.as_uri())}).then(m => console.log(JSON.stringify(m.{call}())))"
    )
    out = subprocess.run(
        [node(), "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return json.loads(out)


def test_js_transition_table_matches_python() -> None:
    """The negotiation's table: the same (role, state, input) keys leading to the same
    states in both languages."""
    js_list = _js_export("negotiationTransitions")
    js_rows = {(role, state, kind, tuple(targets)) for role, state, kind, targets in js_list}
    assert len(js_rows) == len(js_list), "a key listed twice in the JS table"
    py_rows = {
        (role.value, state.value, kind.value, tuple(sorted(s.value for s in next_states)))
        for (role, state, kind), (_, next_states) in TRANSITIONS.items()
    }
    assert js_rows == py_rows, {
        "only in JS": js_rows - py_rows,
        "only in Python": py_rows - js_rows,
    }


def test_js_client_table_matches_python() -> None:
    """The client machine's table: the same (state, input) pairs leading to the same
    states in both languages."""
    from sansio_signal.client import TRANSITIONS as CLIENT_TRANSITIONS

    js_rows = {(state, kind, tuple(t)) for state, kind, t in _js_export("clientTransitions")}
    py_rows = {
        (state.value, kind.value, tuple(sorted(s.value for s in entry.next_states)))
        for (state, kind), entry in CLIENT_TRANSITIONS.items()
    }
    assert js_rows == py_rows, {
        "only in JS": js_rows - py_rows,
        "only in Python": py_rows - js_rows,
    }
