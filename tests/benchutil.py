"""What the benchmark smoke tests share: their prerequisites and one ``--quick`` run.

A benchmark whose load generator is a Node script (``loadgen.mjs``, ``loadgen_multi.mjs``)
needs ``node`` and ``npm`` (``ws`` is installed with ``npm ci`` into
``benchmarks/.node``); a test is skipped without them, or when ``npm ci`` could not
install ``ws``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require_node(why: str) -> None:
    """Skip the test without ``node`` or ``npm``; ``why`` says what needs them."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(f"node/npm not installed: {why}")


def run_bench(script: Path, *options: str, timeout: float) -> dict[str, Any]:
    """``script`` run with ``options`` (``--json`` among them) from the project root,
    bounded by ``timeout`` s: its JSON results, once it exited 0. Skips the test when
    the Node package ``ws`` could not be installed."""
    done = subprocess.run(
        [sys.executable, str(script), *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if "could not be installed (npm ci)" in done.stderr:
        pytest.skip("the Node package ws could not be installed (no registry?)")
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(done.stdout)
    return results
