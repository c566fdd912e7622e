"""Browser tests' helpers: Debian's Chromium driven by Playwright, and loops in threads.

Playwright's sync API must not share a thread with a running asyncio loop, so every server
under test runs its own loop in a background thread (:class:`LoopThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

T = TypeVar("T")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    """``$BZGW_CHROMIUM``, Debian's ``/usr/bin/chromium``, or ``chromium`` on the PATH."""
    for candidate in (os.environ.get("BZGW_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def chromium_page(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium page; skips the test where no browser can run."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (install Debian's chromium or set BZGW_CHROMIUM)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=LAUNCH_ARGS, headless=True)
        except Error as err:
            pytest.skip(f"Chromium at {exe} does not start: {err.message.splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` executes in it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run a coroutine in the loop and return its result."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Call a plain function in the loop's thread (to touch state the loop owns)."""
        async def wrap() -> T:
            return fn()

        return self.run(wrap(), timeout)

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class ServedApp:
    """An aiohttp application served on 127.0.0.1 from a :class:`LoopThread`."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self.thread = LoopThread()
        self._runner: web.AppRunner | None = None

        async def start() -> int:
            runner = web.AppRunner(make_app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._runner = runner
            return int(runner.addresses[0][1])

        self.port = self.thread.run(start())
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            self.thread.run(self._runner.cleanup())
        self.thread.close()

    def __enter__(self) -> ServedApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
