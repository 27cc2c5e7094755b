"""The pure half of the browser client (``adapters/static/machine.js``).

Runs its unit tests under node's built-in test runner (no npm packages) and checks that
its transition table lists exactly the ``(state, input)`` pairs of the Python one, so the
two implementations cannot drift apart silently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from sansio_signal.negotiation import TRANSITIONS, Deadline, Input

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "adapters" / "static" / "machine.js"


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


# The JS table is keyed ``state|input`` for both roles at once, expires every deadline as
# one ``timer`` input, and takes a restart or a newer epoch (and a failed attempt) inside
# its handlers rather than as inputs of the table: the Python keys, read that way.
_JS_INPUT: dict[Input, str | None] = {
    **{kind: kind.value for kind in Input},
    **{deadline.expired: Input.TIMER.value for deadline in Deadline},
    Input.PEER_RESTARTED: None,
    Input.NEWER_EPOCH: None,
    Input.ATTEMPT_FAILED: None,
}


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
    py_keys = {
        f"{state.value}|{_JS_INPUT[kind]}"
        for _, state, kind in TRANSITIONS
        if _JS_INPUT[kind] is not None
    }
    difference = {"only in JS": js_keys - py_keys, "only in Python": py_keys - js_keys}
    assert js_keys == py_keys, difference


def test_js_client_table_matches_python() -> None:
    """The client machine's table: the same (state, input) pairs leading to the same
    states in both languages."""
    from sansio_signal.client import TRANSITIONS as CLIENT_TRANSITIONS

    script = (
        f"import({json.dumps(MODULE.as_uri())})"
        ".then(m => console.log(JSON.stringify(m.clientTransitions())))"
    )
    out = subprocess.run(
        [_node(), "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    js_rows = {(state, kind, tuple(targets)) for state, kind, targets in json.loads(out)}
    py_rows = {
        (state.value, kind.value, tuple(sorted(s.value for s in entry.next_states)))
        for (state, kind), entry in CLIENT_TRANSITIONS.items()
    }
    assert js_rows == py_rows, {
        "only in JS": js_rows - py_rows,
        "only in Python": py_rows - js_rows,
    }
