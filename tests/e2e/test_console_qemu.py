"""The web console's whole journey on real VMs (QEMU, TCG): an x86_64 instance created through
the form, running without a reload, a login on its serial console (the guest's getty) and a
command's output read back, a volume created and attached, stop and delete. And closing the
console frees the VM's serial port: QEMU serves it to one client, and it answers us after."""

from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Tab, create_and_attach_volume, project_token
from tests.integration.conftest import Cloud

pytestmark = pytest.mark.qemu

BOOT_MS = 600_000  # TCG under the load of a shared machine
PASSWORD = "cumulo-test"


def _user_data() -> str:
    """A root password for the serial console's login (the image has none)."""
    digest = subprocess.run(["openssl", "passwd", "-1", "-salt", "cumulo", PASSWORD],
                            capture_output=True, text=True, check=True).stdout.strip()
    return f"#!/bin/sh\nsed -i 's|^root:[^:]*:|root:{digest}:|' /etc/shadow\n"


def _screen(page: Page) -> str:
    return page.inner_text("#serial .xterm-rows")


def _type_until(page: Page, keys: str, pattern: str, timeout_s: float) -> None:
    """Type `keys` (again every 10 s) until the terminal shows `pattern`."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.locator("#serial .xterm-helper-textarea").focus()
        page.keyboard.type(keys)
        try:
            expect(page.locator("#serial .xterm-rows")).to_contain_text(
                re.compile(pattern), timeout=10_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_console_journey_on_real_vms(qemu_cloud: Cloud, open_tab) -> None:  # type: ignore[no-untyped-def]
    cloud = qemu_cloud
    tab: Tab = open_tab(cloud)
    page = tab.page
    tab.sign_in(project_token(cloud, "alpha"))
    page.evaluate("window.__noReload = 1")

    page.click("a[href='#/create']")
    page.wait_for_selector("#create-form #zone-choices input:checked")
    page.check("input[name=arch][value=x86_64]")
    page.select_option("#type", "t1.nano")
    page.fill("#user-data", _user_data())
    page.fill("#name", "web-1")
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"#/instances/web-1$"))
    expect(page.locator("h1 .state")).to_have_text("running", timeout=BOOT_MS)
    assert page.evaluate("window.__noReload") == 1
    deadline = time.monotonic() + BOOT_MS / 1000
    log = ("--project", "alpha", "instance", "console-log", "web-1")
    while "user-data finished exit=0" not in cloud.cli(*log).stdout:
        assert time.monotonic() < deadline, "the user-data script did not run"
        time.sleep(2)

    # Log in on the serial console and run a command.
    page.click("#serial-toggle")
    expect(page.locator("#serial-state")).to_contain_text("connected", timeout=60_000)
    _type_until(page, "\r", r"login:", 120)
    page.keyboard.type("root\r")
    expect(page.locator("#serial .xterm-rows")).to_contain_text("Password:", timeout=60_000)
    page.keyboard.type(PASSWORD + "\r")
    _type_until(page, "echo $((6*7))-from-the-guest\r", r"42-from-the-guest", 120)
    assert "Login incorrect" not in _screen(page)

    # Closing the console frees the port: QEMU now answers another client (one at a time).
    page.click("#serial-toggle")
    vm_id = cloud.json("--project", "alpha", "instance", "show", "web-1")["id"]
    sock_path = next(cloud.state_dir.glob(f"hosts/*/run/{vm_id}/ser.sock"))
    _answers_directly(str(sock_path))

    # A volume, created and attached to the running VM.
    create_and_attach_volume(page, "data", "web-1", BOOT_MS)

    # Stop, then delete.
    page.goto(tab.base + "/#/instances/web-1")
    expect(page.locator("#instance-volumes")).to_contain_text("data", timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("h1 .state")).to_have_text("stopped", timeout=BOOT_MS)
    page.get_by_role("button", name="Delete").click()
    page.click("#confirm-ok")
    expect(page.locator("#facts")).to_contain_text("no longer exists", timeout=BOOT_MS)


def _answers_directly(path: str) -> None:
    """The guest answers a client of its serial socket: nobody else holds it any more."""
    deadline = time.monotonic() + 60
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"echo direct-$((40+2))\r")
            seen = b""
            try:
                while b"direct-42" not in seen:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    seen += chunk
            except TimeoutError:
                pass
            if b"direct-42" in seen:
                s.sendall(b"exit\r")
                return
        assert time.monotonic() < deadline, f"the serial port is still held: {seen!r}"
        time.sleep(1)
