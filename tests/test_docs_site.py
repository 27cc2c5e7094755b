"""The documentation site builds with no warning, and documents the whole public API.

One ``mkdocs build --strict`` per run (the ``site`` fixture, a few seconds) serves every
test here: the strict build itself (a broken link, anchor or reference, a page missing
from the nav, a name mkdocstrings cannot find: each is a warning, and fails it), the
reference's completeness against the code (every public name has a docstring and an
entry on a reference page), and screenshots of the built site in headless Chromium.
"""

from __future__ import annotations

import asyncio
import html
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import griffe
import pytest

import sansio_signal

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
CHROMIUM = "/usr/bin/chromium"

DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:    .*\n)*)", re.M)
"""A mkdocstrings block in a reference page: the object's path, then its indented options."""

NOT_DOCUMENTED = {
    "sansio_signal.timers": "internal: the machines' deadline queue (so says the package)",
    "sansio_signal.__main__": "`python -m sansio_signal`: the command, documented by cli.main",
    "sansio_signal.adapters.chat": "the `chat` command's loop: the command is cli.main",
    "sansio_signal.adapters.demo": "the `demo` command's run: the command is cli.main",
    "sansio_signal.adapters.loglines": "the server's log line formatting, internal",
    "sansio_signal.adapters.onetimer": "the adapters' one-timer helper, internal",
}
"""Modules with no reference page of their own, each for its reason."""


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("site_hooks", DOCS / "site_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as ``make docs`` builds it (strict) into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def directives() -> dict[str, list[str] | None]:
    """Each object documented by a reference page: its path, and its ``members`` list
    (None: all of its public members; an empty list: ``members: false``)."""
    found: dict[str, list[str] | None] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text()):
            options = match[2]
            if "members: false" in options:
                found[match[1]] = []
            elif "members:" in options:
                found[match[1]] = re.findall(r"^\s+- (\w+)$", options, re.M)
            else:
                found[match[1]] = None
    return found


_package: list[griffe.Module] = []


@pytest.fixture(scope="module", autouse=True)
def griffe_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Load the package once per run, from the checkout laid out as installed."""
    tree = hooks().installed_layout(tmp_path_factory.mktemp("griffe"))
    loaded = griffe.load(
        "sansio_signal", search_paths=[str(tree)], resolve_aliases=True, try_relative_path=False
    )
    assert isinstance(loaded, griffe.Module)
    _package.append(loaded)
    yield
    _package.clear()


def package() -> griffe.Module:
    """The package as the reference sees it (see :func:`griffe_tree`)."""
    return _package[0]


def hidden() -> list[re.Pattern[str]]:
    """The names mkdocs.yml's ``filters`` hide from the reference (``"!^_"`` and so on)."""
    found = re.search(r"^\s+filters: \[(.*)\]$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert found is not None, "mkdocs.yml: no mkdocstrings filters"
    return [re.compile(f.strip().strip('"')[1:]) for f in found[1].split(",")]


def shown(name: str) -> bool:
    return not any(pattern.search(name) for pattern in hidden())


def documented_members(
    path: str, members: list[str] | None
) -> Iterator[griffe.Object | griffe.Alias]:
    """What the reference shows of the module at ``path``: its public classes,
    functions and attributes (and theirs, for classes), as mkdocstrings lists them."""
    module = package()[path.removeprefix("sansio_signal.")] if path != "sansio_signal" else None
    assert isinstance(module, griffe.Module), path
    for name, member in module.members.items():
        if members is not None and name not in members:
            continue
        if member.is_alias or member.is_module or not member.is_public or not shown(name):
            continue
        yield member
        if isinstance(member, griffe.Class):
            for inner in member.members.values():
                public = not inner.is_alias and inner.is_public and shown(inner.name)
                if public and isinstance(inner, griffe.Function | griffe.Class):
                    yield inner


def anchors(site: Path) -> set[str]:
    """Every object's anchor on the site's reference pages."""
    found: set[str] = set()
    for page in (site / "reference").rglob("index.html"):
        found |= {html.unescape(a) for a in re.findall(r'id="([\w.]+)"', page.read_text())}
    return found


def test_the_site_builds_strict_with_every_page(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "search" / "search_index.json").is_file()
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n")[1].split("\n\n")[0]
    for page in sorted(DOCS.rglob("*.md")):
        name = page.relative_to(DOCS).as_posix()
        assert re.search(rf"(: |- ){re.escape(name)}$", nav, re.M), f"{name} not in the nav"
        assert (site / name.removesuffix(".md").removesuffix("index") / "index.html").is_file()
    # Pages that do not live in docs/: the benchmarks' README, generated by the hooks.
    assert "benchmarks.md" in nav
    assert "bench_relay.py" in (site / "benchmarks" / "index.html").read_text()


def test_the_diagrams_and_plots_are_pictures(site: Path) -> None:
    architecture = (site / "architecture" / "index.html").read_text()
    assert architecture.count('class="mermaid"') >= 4  # Material renders these as SVG
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    for plot in ("bench-relay.png", "mesh-time.png"):
        assert f'src="../{plot}"' in benchmarks
        assert (site / plot).stat().st_size > 10_000


def test_every_public_module_has_a_reference_page() -> None:
    documented = set(directives())
    modules = [
        "sansio_signal." + path.relative_to(ROOT / "sansio_signal").with_suffix("").as_posix()
        for path in (ROOT / "sansio_signal").rglob("*.py")
    ] + ["sansio_signal.adapters." + path.stem for path in (ROOT / "adapters").glob("*.py")]
    for module in sorted(modules):
        module = module.replace("/", ".").removesuffix(".__init__")
        if module.rsplit(".", 1)[-1].startswith("_") and not module.endswith("__main__"):
            continue
        assert module in documented or module in NOT_DOCUMENTED, (
            f"{module}: add it to a page in docs/reference/ (or to NOT_DOCUMENTED, with why)"
        )


def test_every_public_name_has_a_docstring_and_a_reference_entry(site: Path) -> None:
    ids = anchors(site)
    missing_doc: list[str] = []
    missing_entry: list[str] = []
    for path, members in directives().items():
        if members == [] or path in ("sansio_signal",):
            continue
        for member in documented_members(path, members):
            if not (member.docstring and member.docstring.value.strip()):
                missing_doc.append(member.path)
            if member.path not in ids:
                missing_entry.append(member.path)
    assert not missing_doc, f"no docstring: {missing_doc}"
    assert not missing_entry, f"not on a reference page: {missing_entry}"


def test_everything_the_package_exports_is_in_the_reference(site: Path) -> None:
    """``sansio_signal.__all__`` (and ``sansio_signal.testing.__all__``): each name is
    documented on the page of the module that defines it."""
    ids = anchors(site)
    root = package()
    for exports, module in ((sansio_signal.__all__, root), (None, root["testing"])):
        names = exports if exports is not None else module.exports
        assert names
        for name in map(str, names):
            if name == "__version__":
                continue
            target = module[name].final_target if module[name].is_alias else module[name]
            assert target.docstring and target.docstring.value.strip(), f"{name}: no docstring"
            assert target.path in ids, f"{name} ({target.path}) is not on a reference page"


SHOTS = {"site-front.png": "index.html", "site-api.png": "reference/relay/index.html"}
"""The committed screenshots (docs/, shown in the README) and the page each shows."""


async def screenshots(site: Path, into: Path) -> dict[str, str]:
    """Each page of :data:`SHOTS` in headless Chromium, as PNGs into ``into``; returns
    each page's title."""
    from playwright.async_api import async_playwright

    titles: dict[str, str] = {}
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            for shot, path in SHOTS.items():
                await page.goto((site / path).as_uri())
                await page.wait_for_load_state("networkidle")
                titles[shot] = await page.title()
                await page.screenshot(path=str(into / shot))
        finally:
            await browser.close()
    return titles


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_screenshots_of_the_front_page_and_an_api_page(site: Path, tmp_path: Path) -> None:
    """Regenerated here; the committed ones are docs/site-front.png and docs/site-api.png
    (``SANSIO_SIGNAL_SHOTS=docs`` writes them there instead)."""
    into = Path(os.environ.get("SANSIO_SIGNAL_SHOTS", tmp_path))
    titles = asyncio.run(asyncio.wait_for(screenshots(site, into), 60))
    assert titles["site-front.png"].startswith("sansio-signal"), titles
    assert titles["site-api.png"].startswith("relay"), titles
    for shot in SHOTS:
        data = (into / shot).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, shot
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1280, 800), shot
        assert (DOCS / shot).is_file(), f"docs/{shot} is not committed"
