"""The web console in Debian's chromium against a real `cumulo up` with the fake driver:
every page, the create form's errors by their fields, live states, the serial console, and
what another project's token sees. (The same journey on real VMs: test_console_qemu.py.)"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import PHONE, Tab, admin_token, create_and_attach_volume, project_token
from tests.integration.conftest import Cloud

WAIT_MS = 30_000


def _mark(page: Page) -> None:
    """A mark that a full page reload would erase."""
    page.evaluate("window.__noReload = 1")


def _not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__noReload") == 1, "the page was reloaded"


def test_console_journey_on_the_fake_cloud(fake_cloud: Cloud, open_tab) -> None:  # type: ignore[no-untyped-def]
    cloud = fake_cloud
    alpha = project_token(cloud, "alpha")
    tab: Tab = open_tab(cloud)
    page = tab.page
    page.goto(tab.base + "/")
    # Keyboard only: the token field has the focus, Enter signs in.
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(alpha)
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_contain_text("project alpha")
    assert alpha not in page.url
    assert page.evaluate("sessionStorage.getItem('cumulo.token')") == alpha
    _mark(page)

    # The create form: a key pair made there, its private key offered once as a download.
    page.click("a[href='#/create']")
    page.wait_for_selector("#create-form #zone-choices input:checked")
    page.click("#key-import summary")
    page.fill("#key-name", "mykey")
    with page.expect_download() as dl:
        page.click("#key-add")
    assert dl.value.suggested_filename == "mykey.pem"
    assert "PRIVATE KEY" in open(dl.value.path()).read()  # noqa: SIM115
    expect(page.locator("#key")).to_have_value("mykey")

    # A bad choice is explained by its field, with the API's message, before submitting...
    page.check("input[name=size-mode][value=custom]")
    page.fill("#vcpus", "65")  # the host allocates 16 x 4.0 (cpu_allocation_ratio)
    size_error = page.locator("[data-error-for=size-custom]")
    expect(size_error).to_contain_text("larger than any x86_64 host", timeout=WAIT_MS)
    expect(page.locator("#vcpus")).to_have_attribute("aria-invalid", "true")
    page.fill("#name", "Bad Name")
    expect(page.locator("[data-error-for=name]")).to_contain_text("instance name")
    # ... and after.
    page.click("#create-submit")
    expect(page.locator("[data-error-for=name]")).to_contain_text("invalid instance name")
    assert page.evaluate("location.hash") == "#/create"
    page.fill("#vcpus", "1")
    page.fill("#ram", "128")
    expect(size_error).to_be_empty()
    page.fill("#name", "web-1")
    page.fill("#user-data", "#!/bin/sh\necho hi")
    page.press("#name", "Enter")

    # The instance's page: live facts, running without a reload.
    page.wait_for_url(re.compile(r"#/instances/web-1$"))
    expect(page.locator("h1 .state")).to_have_text("running", timeout=WAIT_MS)
    expect(page.locator("#facts")).to_contain_text("web-1.alpha.local-1a.cumulo.internal")
    expect(page.locator("#facts")).to_contain_text("mykey")
    _not_reloaded(page)

    # The serial console: typing reaches the guest, its output comes back.
    page.click("#serial-toggle")
    expect(page.locator("#serial-state")).to_contain_text("connected", timeout=WAIT_MS)
    page.locator("#serial .xterm-helper-textarea").focus()
    page.keyboard.type("echo hello-from-the-browser\r")
    expect(page.locator("#serial .xterm-rows")).to_contain_text(
        re.compile(r"echo hello-from-the-browser\s*hello-from-the-browser"), timeout=WAIT_MS)

    # A volume, created and attached; the instance's page shows it.
    page.click("a[href='#/volumes']")
    page.fill("#volume-name", "data")
    page.fill("#volume-size", "0")
    page.click("#volume-create button[type=submit]")
    size_error = page.locator("#volume-create [data-error-for=size_gib]")
    expect(size_error).to_contain_text("greater than 0")
    create_and_attach_volume(page, "data", "web-1", WAIT_MS)
    page.click("a[href='#/instances']")
    page.click("#instance-list a:text('web-1')")
    expect(page.locator("#instance-volumes")).to_contain_text("data", timeout=WAIT_MS)
    page.click("#serial-toggle")  # leaving the page closed it: open it again
    expect(page.locator("#serial-state")).to_contain_text("connected", timeout=WAIT_MS)

    # Another project's token sees none of it.
    beta = open_tab(cloud)
    beta.sign_in(project_token(cloud, "beta"))
    expect(beta.page.locator("#instance-list")).to_contain_text("No instances yet")
    beta.page.goto(beta.base + "/#/volumes")
    expect(beta.page.locator("#volume-list")).to_contain_text("No volumes yet")
    beta.page.goto(beta.base + "/#/instances/web-1")
    expect(beta.page.locator("#facts")).to_contain_text("no longer exists", timeout=WAIT_MS)

    # Stop, then delete (confirmed), and the list follows without a reload.
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("h1 .state")).to_have_text("stopped", timeout=WAIT_MS)
    expect(page.locator("#serial-state")).to_contain_text("closed")
    page.get_by_role("button", name="Delete").click()
    page.click("#confirm-ok")
    expect(page.locator("#facts")).to_contain_text("no longer exists", timeout=WAIT_MS)
    page.click("a[href='#/instances']")
    expect(page.locator("#instance-list")).to_contain_text("No instances yet", timeout=WAIT_MS)
    _not_reloaded(page)


def test_live_list_follows_changes_made_elsewhere(fake_cloud: Cloud, open_tab) -> None:  # type: ignore[no-untyped-def]
    tab: Tab = open_tab(fake_cloud)
    tab.sign_in(admin_token(fake_cloud))
    page = tab.page
    _mark(page)
    fake_cloud.cli("instance", "create", "cli-made", "--image", "tiny", "--type", "t1.nano")
    row = page.locator("#instance-list tr", has_text="cli-made")
    expect(row).to_contain_text("running", timeout=WAIT_MS)
    fake_cloud.cli("instance", "stop", "cli-made")
    expect(row).to_contain_text("stopped", timeout=WAIT_MS)
    page.select_option("#filter-state", "running")
    expect(page.locator("#instance-list")).to_contain_text("No instance matches")
    _not_reloaded(page)


def test_every_page_on_a_phone_and_for_an_admin(fake_cloud: Cloud, open_tab) -> None:  # type: ignore[no-untyped-def]
    fake_cloud.cli("instance", "create", "web-1", "--image", "tiny", "--type", "t1.nano", "--wait")
    fake_cloud.cli("volume", "create", "data", "--size", "1")
    tab: Tab = open_tab(fake_cloud, PHONE)
    tab.sign_in(admin_token(fake_cloud))
    page = tab.page
    for path, ready in [
        ("instances", "#instance-list table"), ("create", "#create-form"),
        ("volumes", "#volume-list table"), ("snapshots", "#snapshot-list"),
        ("ips", "#ip-list table"), ("security-groups", "#group-list table"),
        ("networks", "#network-list table"), ("keys", "#key-list"),
        ("images", "#image-list table"), ("zones", "#zone-list table"),
        ("projects", "#project-list table"), ("instances/web-1", "#facts dt"),
    ]:
        page.click(".menu-toggle")
        expect(page.locator("#nav")).to_be_visible()
        if "/" in path:
            page.goto(f"{tab.base}/#/{path}")
        else:
            page.click(f"#nav a[href='#/{path}']")
        page.wait_for_selector(ready)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"#/{path} is {width}px wide on a 390px screen"
        if path == "zones":  # the admin's page: the host and its capacity
            expect(page.locator("#zone-list")).to_contain_text("local")
            # [host] vcpus = 16 under the default cpu_allocation_ratio (4.0)
            expect(page.locator("#zone-list")).to_contain_text("/ 64")


def test_create_on_a_dedicated_host(fake_cloud: Cloud, open_tab) -> None:  # type: ignore[no-untyped-def]
    """The tenancy choice: a shared create is refused on the only host once it is dedicated
    to the project, a dedicated one lands on it; the price shows the host's own rate."""
    token = project_token(fake_cloud, "solo")
    dh = fake_cloud.json("--project", "solo", "dedicated-host", "allocate", "--zone", "local-1a")
    tab: Tab = open_tab(fake_cloud)
    tab.sign_in(token)
    page = tab.page
    page.click("a[href='#/create']")
    page.wait_for_selector("#create-form #zone-choices input:checked")
    expect(page.locator("#dedicated-host")).to_be_hidden()
    page.fill("#name", "solo-1")
    # Shared tenancy never lands on a dedicated host, and this zone has no other.
    expect(page.locator("[data-error-for=zone]")).to_contain_text("dedicated", timeout=WAIT_MS)
    page.check("input[name=tenancy][value=dedicated]")
    expect(page.locator("#dedicated-host")).to_be_visible()
    expect(page.locator("#dedicated-host option")).to_have_count(2)
    page.select_option("#dedicated-host", dh["id"])
    expect(page.locator("#price")).to_contain_text("dedicated host itself")
    expect(page.locator("[data-error-for=zone]")).to_be_empty(timeout=WAIT_MS)
    page.click("#create-submit")
    page.wait_for_url(re.compile(r"#/instances/solo-1$"))
    expect(page.locator("#facts")).to_contain_text(f"dedicated host {dh['id']}", timeout=WAIT_MS)
    made = fake_cloud.json("--project", "solo", "instance", "show", "solo-1")
    assert (made["tenancy"], made["dedicated_host"]) == ("dedicated", dh["id"])
