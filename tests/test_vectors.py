"""The conformance vectors in tests/vectors/ are what the Python machines do today.

tests/js/vectors.test.mjs replays them on the browser client's machine (run by
tests/test_browser_js.py); this test re-records them (tests/make_vectors.py) and fails
when the committed files differ, as the diagram check does for docs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_vectors_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(HERE / "make_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "vectors are current" in result.stdout


def test_every_vector_file_has_vectors() -> None:
    files = sorted((HERE / "vectors").glob("*.jsonl"))
    assert [f.name for f in files] == [
        "client-scripted.jsonl",
        "client-sim.jsonl",
        "negotiation-scripted.jsonl",
    ]
    for path in files:
        assert len(path.read_text().splitlines()) >= 20, path
