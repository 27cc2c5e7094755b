"""The package as a user installs it, and as a checkout runs it.

The ``network`` tests build the wheel from the sources, install it plain (no extra) into
a fresh venv, whose dependencies come from PyPI, and run the console script there:
``serve``, ``token`` and ``diagnose`` work without aiortc; ``chat`` and ``demo`` exit 2
with one line naming the ``rtc`` extra. One venv serves the whole module.

The last tests run ``python -m sansio_signal`` and a script from the repository root,
where the checkout's ``sansio_signal/`` (without ``adapters/`` inside) comes first on
``sys.path``.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_INPUTS = [
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "MANIFEST.in",
    "sansio_signal",
    "adapters",
]
"""What the wheel is built from: copied out of the checkout, so that no stale build/
or egg-info of the checkout can leak into the wheel (and the checkout stays untouched)."""

RTC_HINT = "pip install 'sansio-signal[rtc]'"
TIMEOUT = 20.0
"""Seconds for one command of the installed package (the serve line, a --help)."""

# Python's own variables would point the fresh venv at the dev venv's modules.
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
}


class Installed:
    """A fresh venv with the wheel installed plain, and a place to run it from."""

    def __init__(self, venv: Path, cwd: Path, build_log: str) -> None:
        self.bin = venv / "bin"
        self.cwd = cwd
        self.build_log = build_log

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd or self.cwd,
            env=CLEAN_ENV,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels), str(src)],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("sansio_signal-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    yield Installed(venv, cwd, build.stdout + build.stderr)


pytestmark = pytest.mark.timeout(300)  # the module's fixture builds and installs, once

network = pytest.mark.network


@network
def test_the_build_warns_of_nothing(installed: Installed) -> None:
    # setuptools' deprecations (the license table, static/ looking like a package) are
    # Python warnings in the backend's output; 'warning: ... byte-compiling is disabled'
    # is a log line, not one of them.
    warnings = re.findall(r"\w*Warning: .*|Package would be ignored", installed.build_log)
    assert [w for w in warnings if "Editable installation" not in w] == []


@network
def test_the_plain_install_has_no_aiortc_and_the_package_is_installed(
    installed: Installed,
) -> None:
    code = (
        "import importlib.util, sys, sansio_signal.adapters as a;"
        "print(importlib.util.find_spec('aiortc') is None);"
        "print(a.__file__);"
        "print([type(f).__name__ for f in sys.meta_path if hasattr(f, 'answers')])"
    )
    out = installed.run("python", "-c", code)
    assert out.returncode == 0, out.stderr
    no_aiortc, adapters, finders = out.stdout.splitlines()
    assert no_aiortc == "True"
    assert "site-packages" in adapters
    assert finders == "[]"  # the checkout's finder stays out of an installed layout


@network
@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["token", "--help"], ["diagnose", "--help"]]
)
def test_the_commands_answer_without_aiortc(installed: Installed, args: list[str]) -> None:
    out = installed.run("sansio-signal", *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout
    assert out.stderr == ""


@network
def test_serve_runs_from_the_plain_install(installed: Installed) -> None:
    proc = subprocess.Popen(
        [str(installed.bin / "sansio-signal"), "serve", "--port", "0"],
        cwd=installed.cwd,
        env=CLEAN_ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for text in stdout:
            lines.put(text)

    threading.Thread(target=read, daemon=True).start()
    try:
        line = lines.get(timeout=TIMEOUT)
        assert line.startswith("listening on ws://127.0.0.1:"), line
        url = line.removeprefix("listening on ws://").strip()
        with urllib.request.urlopen(f"http://{url}healthz", timeout=TIMEOUT) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://{url}metrics", timeout=TIMEOUT) as response:
            assert response.status == 200  # prometheus_client, a base dependency now
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err


@network
@pytest.mark.parametrize("args", [["chat", "--room", "demo", "--user", "alice"], ["demo"]])
def test_chat_and_demo_name_the_rtc_extra(installed: Installed, args: list[str]) -> None:
    out = installed.run("sansio-signal", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"sansio-signal {args[0]}: ") and line.endswith(RTC_HINT), line


def run_at_root(*args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` (this venv's) run from the repository root."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_python_m_runs_the_cli_from_the_repository_root() -> None:
    out = run_at_root("-m", "sansio_signal", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: sansio-signal")


def test_code_run_at_the_repository_root_imports_the_adapters() -> None:
    # `python -c`, like a script kept at the root, puts the root first on sys.path: the
    # checkout's sansio_signal/ is imported, and with it the checkout's adapters/,
    # static files included.
    code = (
        "from importlib import resources;"
        "import sansio_signal, sansio_signal.adapters.server as server;"
        "print(sansio_signal.__file__);"
        "print(server.__file__);"
        "print(resources.files('sansio_signal.adapters').joinpath('static/index.html')"
        ".is_file())"
    )
    out = run_at_root("-c", code)
    assert out.returncode == 0, out.stderr
    package, server, static = out.stdout.splitlines()
    assert Path(package) == ROOT / "sansio_signal" / "__init__.py"
    assert Path(server) == ROOT / "adapters" / "server.py"
    assert static == "True"


def test_only_a_missing_rtc_module_gets_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    from sansio_signal.adapters.cli import _without_rtc

    assert _without_rtc("chat", ModuleNotFoundError("x", name="aiortc.rtcpeerconnection")) == 2
    assert capsys.readouterr().err.rstrip("\n").endswith(RTC_HINT)
    other = ModuleNotFoundError("x", name="websockets")  # a broken install: no hint, a traceback
    with pytest.raises(ModuleNotFoundError):
        _without_rtc("demo", other)
