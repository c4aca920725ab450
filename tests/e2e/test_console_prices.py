"""The create form shows the hourly price of the chosen size, from the API's price list."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import Tab, project_token
from tests.integration.conftest import Cloud


def test_create_form_shows_the_price_of_the_choice(fake_cloud: Cloud, open_tab) -> None:  # type: ignore[no-untyped-def]
    tab: Tab = open_tab(fake_cloud)
    tab.sign_in(project_token(fake_cloud, "alpha"))
    page = tab.page
    page.click("a[href='#/create']")
    page.wait_for_selector("#create-form #zone-choices input:checked")
    price = page.locator("#price")
    page.select_option("#type", "t1.nano")
    expect(price).to_have_text("0.005 USD per hour while running · boot disk 1 GiB at 0.08 USD "
                               "per GiB-month")
    page.select_option("#type", "m1.xlarge")
    expect(price).to_contain_text("0.18 USD per hour")
    # Bare-metal types are not offered here (the CLI and API create them).
    names = page.locator("#type option").evaluate_all("os => os.map(o => o.value)")
    assert "t1.nano" in names and not [n for n in names if n.startswith("bm1.")]
    # A custom size: 2 vCPUs x 0.02 + 0.5 GiB x 0.005 per hour.
    page.check("input[name=size-mode][value=custom]")
    page.fill("#vcpus", "2")
    page.fill("#ram", "512")
    expect(price).to_have_text("0.0425 USD per hour while running")
