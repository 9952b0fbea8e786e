"""The live page (docs/operations.md, *The live page*) in Debian's Chromium, driven by Playwright, against the example
app as `make run` serves it: the repository's services.toml, copied to a temporary directory with its modules, ports
0 and its own data and cache directories, served by `micromono serve` in a subprocess (conftest's `Served`, stopped
by its PID) at the default tick of one second.

The page must show the app's services and call edges, a request the test makes in the rates, a hot swap (a new
echo.wasm dropped in place) in the reload history, and make no request anywhere but the daemon's admin listener.
A second test, with a daemon in process (a short tick) and the WAT fixtures, makes calls fail: the edge turns red
with its error ratio, the service shows quarantined, and the quarantine enters the history. Screenshots go to
tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import struct
from pathlib import Path
from typing import Final

import pytest
from playwright.async_api import Page, expect
from test_browser import PAGE_TIMEOUT_MS, artifact, chromium

from conftest import EXAMPLES_BUILD, ROOT, Served, fixture, http, make_config
from micromono.daemon import Daemon

MANIFEST: Final = ROOT / "services.toml"
EDGES: Final = ("ingress->gateway", "gateway->auth", "gateway->store", "gateway->audit", "likes->auth")
ALICE: Final = {"Authorization": "Bearer alice-secret"}

expect.set_options(timeout=PAGE_TIMEOUT_MS)


def example_app(directory: Path) -> tuple[Path, list[str]]:
    """services.toml with its modules copied into `directory`, ports 0 and its own data: the manifest and the
    names of its services."""
    text = MANIFEST.read_text()
    for wasm in sorted(set(re.findall(r'wasm = "examples/build/([\w.-]+\.wasm)"', text))):
        if not (EXAMPLES_BUILD / wasm).exists():
            pytest.skip(f"examples not built ({wasm} is missing): run `make examples` (make test does)")
        shutil.copy(EXAMPLES_BUILD / wasm, directory / wasm)
    text = text.replace('wasm = "examples/build/', f'wasm = "{directory}/')
    text = re.sub(r'^listen = ".*"$', 'listen = "127.0.0.1:0"', text, flags=re.M)
    text = re.sub(r'^metrics_listen = ".*"$', 'metrics_listen = "127.0.0.1:0"', text, flags=re.M)
    dirs = f'data_dir = "{directory / "data"}"\ncache_dir = "{directory / "cache"}"\n'
    text = text.replace("[daemon]\n", "[daemon]\n" + dirs)
    manifest = directory / "services.toml"
    manifest.write_text(text)
    return manifest, re.findall(r"^\[services\.([\w-]+)\]$", text, flags=re.M)


def address(text: object) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    return host, int(port)


async def requests_until(page: Page, predicate: str, ingress: tuple[str, int]) -> None:
    """Make notes requests (PUT through gateway -> auth, store and a send to audit) until `predicate` (JavaScript)
    holds on the page: a tick's rate needs requests during that tick."""
    stop = asyncio.Event()

    async def traffic() -> None:
        n = 0
        while not stop.is_set() and n < 2000:  # bounded: 2,000 requests at most
            response = await http(ingress, "PUT", f"/api/notes/n{n % 10}", b"from the browser test", ALICE)
            assert response.status in (200, 201), response.body
            n += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(traffic())
    try:
        await page.wait_for_function(predicate, timeout=PAGE_TIMEOUT_MS)
    finally:
        stop.set()
        await task


async def test_the_live_page_shows_the_example_app(tmp_path: Path) -> None:
    manifest, services = example_app(tmp_path)
    served = Served(manifest)
    try:
        ingress = address(served.ready["ingress"][0])  # type: ignore[index]
        admin = address(served.ready["metrics"])
        origin = f"http://{admin[0]}:{admin[1]}/"
        requested: list[str] = []
        errors: list[str] = []
        async with chromium() as browser:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            page = await context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            await page.goto(origin)
            await expect(page.locator("#status")).to_have_attribute("data-state", "live")

            # The graph: every service of the manifest and the call edges it allows.
            for name in services:
                await expect(page.locator(f'#graph g.node[data-service="{name}"]')).to_be_visible()
                await expect(page.locator(f'#services tr[data-service="{name}"]')).to_be_visible()
            for edge in EDGES:
                await expect(page.locator(f'#graph g.edge[data-edge="{edge}"]')).to_have_count(1)
            await expect(page.locator('#services tr[data-service="room"] td[data-field="actors"]')).to_have_text(
                re.compile(r"^\d+ / \d+$")
            )

            # A request through the chain shows in the rates of its edges and of gateway's row.
            store = '#graph g.edge[data-edge="gateway->store"]'
            await requests_until(
                page,
                f"""() => {{
                    const edge = document.querySelector('{store}');
                    const row = document.querySelector('#services tr[data-service="gateway"] td[data-field="rate"]');
                    return edge && Number(edge.dataset.rate) > 0 && row && row.textContent !== "0";
                }}""",
                ingress,
            )
            assert int(await page.locator(store).get_attribute("data-calls") or 0) >= 1
            await expect(page.locator(store)).to_have_class(re.compile(r"\bbusy\b"))
            await expect(page.locator(f"{store} text")).to_have_text(re.compile(r"^[\d.]+/s"))
            await page.screenshot(path=artifact("console-live.png"), full_page=True)

            # A hot swap: another echo (Rust) dropped over echo.wasm, as a deploy would.
            echo = page.locator('#graph g.node[data-service="echo"] text.version')
            before = await echo.text_content()
            staged = tmp_path / "echo.wasm.new"
            shutil.copy(EXAMPLES_BUILD / "echo_rust.wasm", staged)
            os.replace(staged, tmp_path / "echo.wasm")
            swap = page.locator('#reloads li[data-service="echo"][data-outcome="swapped"]')
            await expect(swap).to_have_count(1)
            await expect(swap).to_contain_text(f"{before} →")
            await expect(echo).not_to_have_text(before or "")
            await page.screenshot(path=artifact("console-swap.png"), full_page=True)
            await page.emulate_media(color_scheme="dark")
            await page.screenshot(path=artifact("console-dark.png"), full_page=True)
            await context.close()

        assert requested and all(url.startswith(origin) for url in requested), requested
        assert not errors, errors
        code, events = served.stop(signal.SIGTERM)
        assert code == 0
        assert any(e["event"] == "reload.swap.complete" and e.get("service") == "echo" for e in events)
    finally:
        served.kill()


async def test_failing_calls_turn_the_edge_red_and_quarantine_shows(tmp_path: Path) -> None:
    services = {
        "front": {"wasm": fixture("caller.wat"), "routes": ["/front"], "calls": ["hostile"]},
        "hostile": {"wasm": fixture("hostile.wat"), "max_failures": 2, "failure_window": 60.0},
    }
    daemon = Daemon(make_config(tmp_path, services), console_tick=0.1)
    await daemon.startup()
    try:
        assert daemon.metrics_address is not None
        admin = daemon.metrics_address
        trap = struct.pack("<iII", 1, 64, len(b"hostile")) + b"hostile" + b"u"  # one call to hostile: a trap
        stop = asyncio.Event()

        async def traffic() -> None:
            for _ in range(2000):  # bounded
                if stop.is_set():
                    return
                await http(daemon.addresses[0], "POST", "/front", trap)
                await asyncio.sleep(0.01)

        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1200, "height": 800})
            await page.goto(f"http://{admin[0]}:{admin[1]}/")
            await expect(page.locator("#status")).to_have_attribute("data-state", "live")
            task = asyncio.create_task(traffic())
            try:
                edge = page.locator('#graph g.edge[data-edge="front->hostile"]')
                await expect(edge).to_have_class(re.compile(r"\berr\b"))
                await expect(edge.locator("text")).to_contain_text("% err")
                await expect(page.locator('#services tr[data-service="hostile"]')).to_contain_text("quarantined")
                await expect(page.locator('#graph g.node.quarantined[data-service="hostile"]')).to_have_count(1)
                await page.screenshot(path=artifact("console-errors.png"), full_page=True)
            finally:
                stop.set()
                await task
            quarantine = page.locator('#reloads li[data-service="hostile"][data-outcome="quarantined"]')
            await expect(quarantine.first).to_contain_text("max_failures = 2")
    finally:
        await daemon.shutdown()
