"""EC2's ids for cumulo's. cumulo's ids are EC2-shaped already (`i-<17 hex>`); where EC2 uses
another prefix (an image is an `ami-`), only the prefix changes."""

from __future__ import annotations

import re

from cumulo.api.ec2.errors import Ec2Error

_ID = re.compile(r"^([a-z]+)-([0-9a-f]{17})\Z")
# EC2 prefix -> (cumulo prefix, the EC2 error code's resource part)
_KINDS = {
    "i": ("i", "InvalidInstanceID"),
    "ami": ("img", "InvalidAMIID"),
    "vol": ("vol", "InvalidVolume"),
    "snap": ("snap", "InvalidSnapshot"),
    "sg": ("sg", "InvalidGroupId"),
    "subnet": ("net", "InvalidSubnetID"),
    "vpc": ("prj", "InvalidVpcID"),
    "eipalloc": ("pip", "InvalidAllocationID"),
    "key": ("key", "InvalidKeyPair"),
    "h": ("h", "InvalidHostID"),
}
_TO_EC2 = {cumulo: ec2 for ec2, (cumulo, _) in _KINDS.items()}


def to_ec2(cumulo_id: str) -> str:
    prefix, _, rest = cumulo_id.partition("-")
    return f"{_TO_EC2.get(prefix, prefix)}-{rest}"


def from_ec2(ec2_id: str, kind: str) -> str:
    """cumulo's id for EC2 id `ec2_id` of `kind` (an EC2 prefix); Malformed if it is not."""
    cumulo, error = _KINDS[kind]
    m = _ID.match(ec2_id)
    if m is None or m.group(1) != kind:
        raise Ec2Error(f"{error}.Malformed", f"Invalid id: {ec2_id!r} (expecting '{kind}-...')")
    return f"{cumulo}-{m.group(2)}"


def not_found(kind: str, ec2_id: str) -> Ec2Error:
    return Ec2Error(f"{_KINDS[kind][1]}.NotFound", f"The ID {ec2_id!r} does not exist")


def require_known(wanted: list[str], known: set[str], kind: str) -> None:
    """Each of `wanted` (ids of `kind` a request names) is well-formed and one of `known`."""
    for w in wanted:
        from_ec2(w, kind)
        if w not in known:
            raise not_found(kind, w)


def reservation(instance_id: str) -> str:
    """One reservation per instance (cumulo keeps no launch groups)."""
    return "r-" + instance_id.partition("-")[2]
