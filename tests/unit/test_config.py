"""The server's configuration file: every name in it is checked before it becomes a path, a
DNS name or a row (config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cumulo.config import MAX_CLOUD_DOMAIN, Settings, load_settings
from cumulo.domain.errors import InvalidInput


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "cumulo.toml"
    path.write_text(text)
    return load_settings(path)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[host]\nname = "../evil"', "host.name"),  # was: <state>/evil, outside hosts/
        ('[host]\nname = "a/b"', "host.name"),
        ('[host]\nname = ""', "host.name"),
        ('[host]\nname = "web\\n"', "host.name"),
        ('[host]\nzone = "../z"', "host.zone"),
        ('[host]\nzone = "local-9z"', "not in any region"),
        ("[host]\nvcpus = 0", "host.vcpus"),
        ("[host]\ntcg_tb_size_mib = -1", "host.tcg_tb_size_mib"),
        ("[host]\ntcg_tb_size_mib = 5000", "host.tcg_tb_size_mib"),
        ('[host]\ntcg_tb_size_mib = "32,x=1"', "host.tcg_tb_size_mib"),
        ("[host]\nram_mib = 2147483648", "host.ram_mib"),
        ("[host]\nstop_timeout_s = nan", "host.stop_timeout_s"),
        ("[host]\nstop_timeout_s = inf", "host.stop_timeout_s"),
        ('cloud_domain = "x\\nserver=8.8.8.8"', "cloud_domain"),
        ('cloud_domain = "bad..domain"', "cloud_domain"),
        ('cloud_domain = "-x.internal"', "cloud_domain"),
        (f'cloud_domain = "{"a." * 40}internal"', "cloud_domain"),
        ('[[regions]]\nname = "r 1"\nzones = ["z1"]', "regions.0.name"),
        ('[[instance_types]]\nname = "big; rm"\nvcpus = 1\nram_mib = 64\n'
         'bandwidth_mbps = 10\ndisk_gib = 1', "instance_types.0.name"),
        ('[[instance_types]]\nname = "t9"\nvcpus = 1\nram_mib = 64\n'
         'bandwidth_mbps = 1000000\ndisk_gib = 1', "instance_types.0.bandwidth_mbps"),
        ('[[instance_types]]\nname = "t9"\nvcpus = 99999999999\nram_mib = 64\n'
         'bandwidth_mbps = 10\ndisk_gib = 1', "instance_types.0.vcpus"),
        ('[[volume_types]]\nname = "Fast!"\niops = 1\nmbps = 1', "volume_types.0.name"),
        ('[[volume_types]]\nname = "f"\niops = 1\nmbps = 1\ndescription = "a\\u001b[2J"',
         "volume_types.0.description"),
        ("max_volume_gib = 9999999999999", "max_volume_gib"),
        ('default_zone = "local-9z"', "not in any region"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_place(tmp_path: Path, text: str,
                                                     where: str) -> None:
    with pytest.raises(InvalidInput) as e:
        _load(tmp_path, text)
    assert e.value.code == "invalid_config"
    assert where in e.value.message and "\n" not in e.value.message
    assert str(tmp_path / "cumulo.toml") in e.value.message


def test_the_defaults_and_dotted_names_load(tmp_path: Path) -> None:
    s = load_settings(None)
    assert s.instance_type("t1.nano") is not None and s.cloud_domain == "cumulo.internal"
    s = _load(tmp_path, 'cloud_domain = "cloud.example.org"\n'
                        '[host]\nname = "hv-01"\nzone = "local-1b"\nstop_timeout_s = 5\n'
                        '[[instance_types]]\nname = "c2.x-large"\nvcpus = 8\nram_mib = 8192\n'
                        'bandwidth_mbps = 10000\ndisk_gib = 80\n')
    assert (s.host.name, s.host.zone, s.cloud_domain) == ("hv-01", "local-1b",
                                                          "cloud.example.org")
    assert [t.name for t in s.instance_types] == ["c2.x-large"]
    longest = ".".join(["a" * 29, "b" * 31])
    assert len(longest) == MAX_CLOUD_DOMAIN
    assert _load(tmp_path, f'cloud_domain = "{longest}"').cloud_domain == longest


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [("hv01.example.org", "hv01"), ("Café_Host", "caf--host"), ("x" * 62 + "-yz", "x" * 62),
     ("___", "local")],
)
def test_the_default_host_name_is_a_label(monkeypatch: pytest.MonkeyPatch, hostname: str,
                                          expected: str) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: hostname)
    assert load_settings(None).host.name == expected


def test_the_default_zone_is_the_api_s_own_not_the_local_host_s(tmp_path: Path) -> None:
    assert load_settings(None).default_zone == "local-1a"  # the first zone of the first region
    s = _load(tmp_path, '[host]\nzone = "local-1b"\n')
    assert (s.default_zone, s.zone_or_default(None), s.zone_or_default("local-1b")) == (
        "local-1a", "local-1a", "local-1b")
    s = _load(tmp_path, 'default_zone = "local-1b"\n')
    assert s.zone_or_default(None) == "local-1b" and s.host.zone == "local-1a"


def test_placement_settings(tmp_path: Path) -> None:
    s = load_settings(None)
    assert (s.cpu_allocation_ratio, s.ram_allocation_ratio, s.placement_policy) == (
        4.0, 1.0, "spread")
    s = _load(tmp_path, 'cpu_allocation_ratio = 16.0\nram_allocation_ratio = 1.5\n'
                        'placement_policy = "pack"\n')
    assert (s.cpu_allocation_ratio, s.ram_allocation_ratio, s.placement_policy) == (
        16.0, 1.5, "pack")
    for bad in ("cpu_allocation_ratio = 0", "ram_allocation_ratio = nan",
                'placement_policy = "random"'):
        with pytest.raises(InvalidInput) as e:
            _load(tmp_path, bad)
        assert bad.split()[0] in e.value.message


def test_migration_time_limits(tmp_path: Path) -> None:
    s = load_settings(None)
    assert (s.migration.max_seconds, s.migration.prepare_seconds) == (600, 120)
    s = _load(tmp_path, "[migration]\nmax_seconds = 900\nprepare_seconds = 60\n")
    assert (s.migration.limits().max_s, s.migration.limits().prepare_s) == (900, 60)
    for bad in ("max_seconds = 0", "max_seconds = 5", "prepare_seconds = -1",
                'max_seconds = "10m"', "prepare_seconds = 700",  # longer than max_seconds
                "max_seconds = 1e9"):
        with pytest.raises(InvalidInput) as e:
            _load(tmp_path, f"[migration]\n{bad}\n")
        assert "migration" in e.value.message and "\n" not in e.value.message, bad
