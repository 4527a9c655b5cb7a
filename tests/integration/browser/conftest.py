"""The console in a real browser: the system's chromium driven by Playwright, against a
fleet started as tests/integration starts one (the same `fleet` fixture: the bundled sample,
loaded and trained).

Every test fails on a console error, an uncaught exception, a request that failed, or an
answer of 500 or more; a 4xx only where the test says it expects one.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RunningFleet

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "artifacts" / "console"
VIEWPORT = {"width": 1366, "height": 768}
# Chromium reports every 4xx/5xx answer as this console error; answers are judged on their
# own (below), so this message is not counted twice.
RESOURCE_ERROR = "Failed to load resource: the server responded with a status of"


def chromium_path() -> str | None:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


# Module, not session: Playwright's sync API runs an event loop in the main thread while it
# is open, and every asyncio test after it would find a loop already running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no chromium found (/usr/bin/chromium): install Debian's `chromium` package "
            "(.ci/run does) to run the console's browser tests"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """A browser tab on the fleet's console, and what went wrong in it."""

    page: Any
    fleet: RunningFleet
    problems: list[str] = field(default_factory=list)
    pending: set[Any] = field(default_factory=set)
    expected: list[tuple[int, str, re.Pattern[str]]] = field(default_factory=list)

    def expect_status(self, status: int, method: str, path: str) -> None:
        """Allow answers of `status` to `method` on paths matching the regex `path`."""
        self.expected.append((status, method, re.compile(path)))

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.fleet.url}/console#/{route}")

    def sign_in(self, key: str) -> None:
        self.open("overview")
        self.page.get_by_label("Access key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.locator("#nav:not([hidden])").wait_for()

    def nav(self, name: str) -> None:
        self.page.get_by_role("navigation", name="Pages").get_by_role("link", name=name).click()

    def settle(self, quiet_ms: int = 300, timeout_s: float = 15) -> None:
        """Wait until no request of the page has been in flight for `quiet_ms` (what the
        console asked has come back and been drawn)."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while quiet < quiet_ms and time.monotonic() < deadline:
            self.page.wait_for_timeout(50)
            quiet = 0 if self.pending else quiet + 50
        assert not self.pending, f"requests still in flight: {[r.url for r in self.pending]}"

    def shot(self, name: str, also: Path | None = None) -> None:
        self.settle()
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        if also is not None:
            self.page.screenshot(path=str(also), full_page=True)

    def _answered(self, response: Any) -> None:
        status = response.status
        if status < 400:
            return
        method = response.request.method
        path = response.url.split("?", 1)[0].removeprefix(self.fleet.url)
        if status >= 500:
            self.problems.append(f"{status} for {method} {path}")
            return
        if any(s == status and m == method and p.search(path) for s, m, p in self.expected):
            return
        self.problems.append(f"unexpected {status} for {method} {path}")

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith(RESOURCE_ERROR):
            self.problems.append(f"console error: {message.text}")

    def _failed(self, request: Any) -> None:
        self.pending.discard(request)
        self.problems.append(f"request failed: {request.method} {request.url} ({request.failure})")


@pytest.fixture
def console(browser: Any, fleet: RunningFleet) -> Iterator[Console]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    tab = Console(page, fleet)
    page.on("console", tab._console)
    page.on("pageerror", lambda error: tab.problems.append(f"page error: {error}"))
    page.on("request", lambda request: tab.pending.add(request))
    page.on("requestfinished", lambda request: tab.pending.discard(request))
    page.on("requestfailed", tab._failed)
    page.on("response", tab._answered)
    try:
        yield tab
        tab.settle()
        assert not tab.problems, "the console went wrong:\n" + "\n".join(tab.problems)
    finally:
        context.close()
