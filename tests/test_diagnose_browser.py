"""A browser's trace in ``sansio-signal diagnose``, mixed with Python clients' and the
relay's: real headless Chromium running the demo page against a real ``sansio-signal
serve``, and two aiortc peers, one of them behind a proxy that loses every offer on its
way to it (tests/faultproxy.py). The page's "Download trace" button gives the trace.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from diagnose_runs import ROOM, client
from faultproxy import drop, fault_proxy
from playwright.async_api import Browser
from test_browser import TIMEOUT, http_url, pytestmark, run, serving

from sansio_signal.adapters.cli import run_diagnose

__all__ = ["pytestmark"]  # skipped without chromium, as test_browser is


def diagnose(*files: Path) -> tuple[int, str]:
    out = io.StringIO()
    status = run_diagnose([str(f) for f in files], out)
    return status, out.getvalue()


def test_a_browser_trace_mixes_with_python_and_relay_traces(tmp_path: Path) -> None:
    relay_trace = tmp_path / "relay.jsonl"

    async def scenario(browser: Browser) -> None:
        with serving(tmp_path, "--trace", str(relay_trace)) as url:
            async with fault_proxy(url, drop("webrtc-offer", up=False)) as proxy:
                bob = client(proxy.url, tmp_path, "bob")
                carol = client(url, tmp_path, "carol")
                await bob.start()
                await carol.start()
                page = await browser.new_page()
                await page.goto(http_url(url))
                await page.fill("#room", ROOM)
                await page.fill("#name", "alice")
                await page.click("#join")
                await page.wait_for_function(
                    "() => window.sansioClient?.channel('carol') != null", timeout=TIMEOUT * 1000
                )
                await bob.wait_connected("carol", timeout=TIMEOUT)
                await proxy.wait_for(lambda: ("bob", False, "webrtc-offer") in proxy.dropped)
                async with page.expect_download() as info:
                    await page.click("#download-trace")
                download = await info.value
                assert download.suggested_filename == "alice.jsonl"
                saved = tmp_path / "alice.jsonl"
                await download.save_as(saved)
                read = await page.evaluate("() => window.sansioClient.trace()")
                await page.close()
                await bob.close()
                await carol.close()
                # the programmatic trace and the download are the same record stream
                downloaded = saved.read_text(encoding="utf-8").splitlines()
                assert read.splitlines()[: len(downloaded)] == downloaded
                records = [json.loads(line) for line in downloaded]
                assert {r["user"] for r in records} == {"alice"}
                # Unix seconds (JSON numbers: a whole second is written without a fraction)
                assert all(
                    isinstance(r["wall_time"], int | float) and r["wall_time"] > 1.7e9
                    for r in records
                )
                sent = [json.loads(r["text"]) for r in records if r["kind"] == "SendToServer"]
                assert {"bob", "carol"} <= {f.get("toUserId") for f in sent}

    run(scenario)  # on loopback: test_browser's pytestmark
    status, text = diagnose(tmp_path)
    assert status == 1
    lines = text.splitlines()
    assert len(lines) == 3, text
    assert lines[0].startswith(
        "alice ↔ bob: stopped at offer relay: alice's offer never reached bob "
        "(the relay forwarded it at +"
    ), text
    assert lines[0].endswith(
        "lost in transit between the relay and bob (the connections stayed up)"
    )
    # connected, over the pair each side reported (a browser's mDNS-hidden host is a
    # peer-reflexive candidate to aiortc: "srflx" from its side)
    assert [line.partition(" (over a ")[0] for line in lines[1:]] == [
        "alice ↔ carol: connected",
        "bob ↔ carol: connected",
    ], text
    # the browser's trace alone
    status, text = diagnose(tmp_path / "alice.jsonl")
    assert status == 1
    lines = text.splitlines()
    assert lines[0].startswith("alice ↔ bob: stopped at answer: no answer from bob: alice's offer")
    assert lines[1].startswith("alice ↔ carol: connected (from alice's side"), text
