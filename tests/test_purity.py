"""The core stays pure: no I/O, clocks, randomness or threads under ``sansio_signal/``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sansio_signal

FORBIDDEN = {
    "asyncio",
    "socket",
    "websockets",
    "picows",
    "uvloop",
    "aiortc",
    "aioice",
    "time",
    "random",
    "threading",
    "redis",
    "selectors",
    "subprocess",
    "trio",
}
CORE = Path(sansio_signal.__file__).resolve().parent


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_import_nothing_impure() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 8, files
    offenders = {str(f.relative_to(CORE)): sorted(imported_roots(f) & FORBIDDEN) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_core_loads_no_io_library() -> None:
    # attrs itself imports threading, so the transitive check is about I/O libraries.
    code = (
        "import sys, sansio_signal, sansio_signal.testing, sansio_signal.trace;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'asyncio', 'socket', 'websockets', 'picows', 'uvloop', 'aiortc', 'trio', 'selectors',"
        " 'redis'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=CORE.parent.parent,
    )
    assert out.stdout.strip() == "[]"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import json\nfrom time import monotonic\nimport asyncio.events\n")
    assert imported_roots(bad) & FORBIDDEN == {"time", "asyncio"}


def package_imports(path: Path) -> set[str]:
    """The modules of the package that ``path`` imports (relative imports, by name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level > 0 or (node.module or "").startswith("sansio_signal"):
            names.add(node.module or "")
    return names


def test_the_bottom_modules_import_nothing_of_the_package() -> None:
    # codes.py (channels, error and close codes) is what everything else may import
    # without a cycle, limits.py (WireLimits, Limits) what the codec and the relay read;
    # errors.py names error codes and needs nothing of the codec.
    assert package_imports(CORE / "codes.py") == set()
    assert package_imports(CORE / "errors.py") == {"codes"}
    assert package_imports(CORE / "limits.py") == set()
