from __future__ import annotations

import pytest

from cumulo.domain.arch import Arch
from cumulo.domain.errors import Conflict, InvalidInput
from cumulo.domain.ids import is_id, new_id
from cumulo.domain.instance import Action, InstanceState, check_transition
from cumulo.domain.validation import dns_label, tags, user_data


@pytest.mark.parametrize("name", ["a", "web-1", "x" * 63, "0abc"])
def test_dns_labels_accepted(name: str) -> None:
    assert dns_label(name) == name


# "web\n": `$` also matches before a final newline: such a name was accepted, on its way to
# the guest's hostname and dnsmasq's files.
@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a.b", "x" * 64, "é", "a b",
                                  "web\n", "web\r\n"])
def test_dns_labels_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as e:
        dns_label(name)
    assert e.value.code == "invalid_name"


def test_arch_aliases_and_errors() -> None:
    assert Arch.parse("aarch64") is Arch.ARM64 and Arch.parse("amd64") is Arch.X86_64
    with pytest.raises(InvalidInput):
        Arch.parse("riscv64")


def test_ids_are_short_and_recognised() -> None:
    i = new_id("i")
    assert is_id(i) and len(i) == 19 and not is_id("i-../../etc") and not is_id(i + "\n")


def test_transitions() -> None:
    assert check_transition("v", InstanceState.STOPPED, Action.START) is InstanceState.STARTING
    assert check_transition("v", InstanceState.ERROR, Action.START) is InstanceState.STARTING
    with pytest.raises(Conflict, match="while it is running"):
        check_transition("v", InstanceState.RUNNING, Action.START)
    with pytest.raises(Conflict):
        check_transition("v", InstanceState.STOPPED, Action.REBOOT)
    with pytest.raises(Conflict):
        check_transition("v", InstanceState.DELETING, Action.DELETE)


def test_user_data_and_tags_limits() -> None:
    assert user_data(b"x" * 65536) is not None
    with pytest.raises(InvalidInput):
        user_data(b"x" * 65537)
    with pytest.raises(InvalidInput):
        tags({"bad key!": "v"})
