"""The screenshots of docs/console/, taken by Playwright in Debian's chromium:

    .venv/bin/python -m tests.e2e.screenshots [--driver qemu|fake] [OUT_DIR]

It starts a throwaway `cumulo up` (as the tests do), fills it with a few resources and
photographs the main pages at 1280x800 and two on a 390-wide phone.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from tests.e2e.conftest import CHROMIUM, DESKTOP, PHONE, admin_token
from tests.integration.conftest import Cloud, _make

LONG_MS = 600_000


def _populate(cloud: Cloud) -> None:
    cloud.cli("keypair", "create", "laptop")
    cloud.cli("security-group", "create", "web")
    cloud.cli("security-group", "rule-add", "web", "--proto", "tcp", "--port", "443")
    cloud.cli("instance", "create", "web-1", "--image", "tiny", "--type", "t1.nano",
              "--key", "laptop", "--security-group", "default", "--security-group", "web")
    cloud.cli("instance", "create", "arm-1", "--image", "tiny", "--arch", "arm64",
              "--vcpus", "1", "--ram", "128")
    cloud.cli("volume", "create", "data", "--size", "1", "--wait")
    cloud.cli("ip", "allocate")
    cloud.wait_state("web-1", "running", LONG_MS / 1000)
    cloud.wait_state("arm-1", "running", LONG_MS / 1000)
    cloud.cli("volume", "attach", "data", "web-1", "--wait")


def _shoot(page: Page, out: Path, name: str, full: bool = False) -> None:
    time.sleep(0.8)  # fonts and the last poll settle
    page.screenshot(path=str(out / f"{name}.png"), full_page=full)
    print(f"{out / name}.png")


def take(out: Path, driver: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for cloud in _make(driver):
        cloud.start()
        _populate(cloud)
        token = admin_token(cloud)
        base = f"http://127.0.0.1:{cloud.port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport=DESKTOP)
            page.goto(base + "/")
            _shoot(page, out, "sign-in")
            page.fill("#token", token)
            page.press("#token", "Enter")
            page.wait_for_selector("#instance-list table")
            _shoot(page, out, "instances")
            page.goto(base + "/#/create")
            page.wait_for_selector("#create-form #zone-choices input:checked")
            page.check("input[name=size-mode][value=custom]")
            page.fill("#vcpus", "65")  # [host] vcpus 16 x cpu_allocation_ratio 4.0 = 64
            expect(page.locator("[data-error-for=size-custom]")).not_to_be_empty()
            page.fill("#name", "web-2")
            _shoot(page, out, "create", full=True)
            page.click("a[href='#/instances']")
            page.click("#instance-list a:text('web-1')")
            page.wait_for_selector("#facts dt")
            page.click("#serial-toggle")
            expect(page.locator("#serial-state")).to_contain_text("connected", timeout=60_000)
            page.locator("#serial").scroll_into_view_if_needed()
            page.locator("#serial .xterm-helper-textarea").focus()
            page.keyboard.type("\r")
            expect(page.locator("#serial .xterm-rows")).to_contain_text(
                re.compile(r"login:|fake#"), timeout=60_000)
            page.keyboard.type("root\r" if driver == "qemu" else "echo hello\r")
            _shoot(page, out, "instance", full=True)
            for path, ready, name in [("volumes", "#volume-list table", "volumes"),
                                      ("security-groups", "#group-list table", "security-groups"),
                                      ("zones", "#zone-list table", "zones")]:
                page.goto(f"{base}/#/{path}")
                page.wait_for_selector(ready)
                _shoot(page, out, name)
            phone = browser.new_page(viewport=PHONE)
            phone.goto(base + "/")
            phone.fill("#token", token)
            phone.press("#token", "Enter")
            phone.wait_for_selector("#instance-list table")
            _shoot(phone, out, "phone-instances", full=True)
            phone.click(".menu-toggle")
            _shoot(phone, out, "phone-menu")
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="docs/console", type=Path)
    parser.add_argument("--driver", choices=["qemu", "fake"], default="qemu")
    args = parser.parse_args()
    take(args.out, args.driver)


if __name__ == "__main__":
    main()
