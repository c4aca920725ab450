"""Which bare-metal node a bm1 instance gets, and why none fits."""

from __future__ import annotations

from cumulo.domain.baremetal_fit import Candidate, Want, explain, pick

WANT = Want("bm1.tiny", "z", "x86_64", 1, 256, 1)


def node(name: str, state: str = "available", arch: str = "x86_64", vcpus: int = 1,
         ram: int = 256, disk: int = 2) -> Candidate:
    return Candidate(f"id-{name}", name, state, arch, vcpus, ram, disk)


def test_the_smallest_available_node_that_fits_is_taken() -> None:
    nodes = [node("big", vcpus=64, ram=262144, disk=1800), node("b"), node("a"),
             node("c", ram=512)]
    assert pick(nodes, WANT) == node("a")  # a and b tie on size: the name decides


def test_a_node_that_is_not_available_other_arch_or_too_small_is_never_taken() -> None:
    nodes = [node("dep", state="deploying"), node("err", state="error"),
             node("arm", arch="arm64"), node("small", ram=128),
             node("nodisk", disk=0), node("enr", state="enroll")]
    assert pick(nodes, WANT) is None
    assert explain(nodes, WANT) == (
        "no bare-metal node in zone z fits bm1.tiny (1 vCPUs, 256 MiB, 1 GiB disk, x86_64): "
        "6 nodes: 2 too small, 1 arm64, 1 deploying, 1 enroll, 1 error")


def test_a_zone_without_nodes_says_so() -> None:
    assert pick([], WANT) is None
    assert explain([], WANT).endswith(": the zone has no bare-metal node")
