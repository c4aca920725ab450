"""The web console in a real browser: Playwright driving Debian's chromium (never a
downloaded one) against a real `cumulo up` (the fake driver, or QEMU for the `qemu` tests).

Every page records the browser's console errors and uncaught exceptions; a test fails if
there was any (checked at the end of each test). One kind is expected, not an error of the
console: Chromium logs every 4xx answer of the API ("Failed to load resource: ... 400"),
and the console shows those answers next to their fields, on purpose. A 5xx still counts.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, expect, sync_playwright

from tests.integration.conftest import Cloud, fake_cloud, qemu_cloud

__all__ = ["fake_cloud", "qemu_cloud"]

CHROMIUM = Path("/usr/bin/chromium")
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
_API_REFUSAL = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")
PHONE: ViewportSize = {"width": 390, "height": 844}


# Per module, not per session: Playwright's sync API runs an event loop in this thread while
# it is open, and pytest-asyncio cannot run the async tests of later modules meanwhile.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (./bootstrap test installs it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


class Tab:
    """A browser tab on the console, with what went wrong in it."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        self.refusals: list[str] = []  # the API's 4xx answers (shown by the console)
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        url = msg.location.get("url", "")
        if _API_REFUSAL.match(msg.text) and url.startswith(self.base + "/v1/"):
            self.refusals.append(url)
            return
        self.errors.append(f"console: {msg.text} ({url})")

    def sign_in(self, token: str) -> None:
        self.page.goto(self.base + "/")
        self.page.fill("#token", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_selector("#who button")


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[object]:
    """open_tab(cloud, viewport=DESKTOP) -> Tab; every tab's errors are checked at the end."""
    tabs: list[Tab] = []
    contexts = []

    def _open(cloud: Cloud, viewport: ViewportSize | None = None) -> Tab:
        ctx = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
        contexts.append(ctx)
        tab = Tab(ctx.new_page(), f"http://127.0.0.1:{cloud.port}")
        tabs.append(tab)
        return tab

    yield _open
    for ctx in contexts:
        ctx.close()
    errors = [e for t in tabs for e in t.errors]
    assert not errors, f"browser console errors: {errors}"


def admin_token(cloud: Cloud) -> str:
    token: str = tomllib.loads((cloud.state_dir / "client.toml").read_text())["token"]
    return token


def project_token(cloud: Cloud, project: str) -> str:
    cloud.cli("project", "create", project)
    token: str = cloud.json("project", "token", project)["token"]
    return token


def create_and_attach_volume(page: Page, name: str, instance: str, timeout_ms: float) -> None:
    """On the Volumes page: create volume `name` (1 GiB), attach it to `instance`."""
    page.click("a[href='#/volumes']")
    page.fill("#volume-name", name)
    page.fill("#volume-size", "1")
    page.click("#volume-create button[type=submit]")
    row = page.locator("#volume-list tr", has_text=name)
    expect(row).to_contain_text("available", timeout=timeout_ms)
    row.get_by_role("button", name="Attach").click()
    expect(row).to_contain_text("in-use", timeout=timeout_ms)
    expect(row).to_contain_text(instance)
