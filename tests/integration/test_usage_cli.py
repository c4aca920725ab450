"""`cumulo price list` and `cumulo usage` against a real `cumulo up` (fake driver): usage
recorded while the cloud ran is still there after it restarts."""

from __future__ import annotations

import time

from tests.integration.conftest import Cloud


def test_prices_and_usage_through_the_cli_across_a_restart(fake_cloud: Cloud) -> None:
    c = fake_cloud
    prices = {(p["kind"], p["name"]): p for p in c.json("price", "list")}
    assert prices[("instance", "t1.nano")]["price"] == "0.005"
    assert prices[("volume", "volume")]["unit"] == "GiB-month"
    assert "t1.nano" in c.cli("price", "list").stdout
    vm = c.json("instance", "create", "web-1", "--image", "tiny", "--type", "t1.nano", "--wait")
    c.json("volume", "create", "data", "--size", "2", "--wait")  # metered once it exists
    expected = {("web-1", "instance"), ("web-1", "boot_disk"), (vm["public_ip"], "public_ip"),
                ("data", "volume")}
    # A line shows whole seconds used: a volume made within the last second has none yet.
    deadline = time.monotonic() + 30
    while True:
        before = {(x["resource"], x["kind"]): x for x in c.json("usage")["lines"]}
        if before.keys() >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert before.keys() >= expected
    assert before[("web-1", "instance")]["price_per_hour"] == "0.005"

    c.kill()
    c.start()
    after = c.json("usage", "--project", "default")
    lines = {(x["resource"], x["kind"]): x for x in after["lines"]}
    assert lines.keys() == before.keys()
    for key, line in lines.items():
        # Still metered from the same start: the restart lost nothing.
        assert line["seconds"] >= before[key]["seconds"], key
    table = c.cli("usage").stdout
    assert "web-1" in table and "total" in table and after["currency"] in table

    for args, code in ((["--from", "soon"], "invalid_date"),
                       (["--from", "2026-02-01", "--to", "2026-01-01"], "invalid_period")):
        r = c.cli("usage", *args, check=False)
        assert r.returncode != 0
        assert len(r.stderr.strip().splitlines()) == 1 and code in r.stderr, r.stderr
