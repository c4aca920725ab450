"""EC2's errors: a code, a message, an HTTP status; and cumulo's errors spelled as EC2's."""

from __future__ import annotations

from collections.abc import Mapping

from cumulo.domain.errors import CumuloError


class Ec2Error(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def invalid(message: str) -> Ec2Error:
    return Ec2Error("InvalidParameterValue", message)


def missing(name: str) -> Ec2Error:
    return Ec2Error("MissingParameter", f"The request must contain the parameter {name}")


# cumulo's stable codes as EC2's, where the meaning is the same whatever the resource.
_BY_CODE: dict[str, tuple[str, int]] = {
    "unknown_instance": ("InvalidInstanceID.NotFound", 400),
    "unknown_image": ("InvalidAMIID.NotFound", 400),
    "unknown_keypair": ("InvalidKeyPair.NotFound", 400),
    "unknown_security_group": ("InvalidGroup.NotFound", 400),
    "unknown_volume": ("InvalidVolume.NotFound", 400),
    "unknown_snapshot": ("InvalidSnapshot.NotFound", 400),
    "unknown_public_ip": ("InvalidAddress.NotFound", 400),
    "unknown_network": ("InvalidSubnetID.NotFound", 400),
    "unknown_zone": ("InvalidParameterValue", 400),
    "unknown_type": ("InvalidParameterValue", 400),
    "unknown_rule": ("InvalidPermission.NotFound", 400),
    "duplicate_rule": ("InvalidPermission.Duplicate", 400),
    "invalid_state": ("IncorrectInstanceState", 400),
    "instance_not_stopped": ("IncorrectInstanceState", 400),
    "volume_in_use": ("VolumeInUse", 400),
    "attached": ("InvalidIPAddress.InUse", 400),  # a public IP (volumes: volume_in_use)
    "not_attached": ("IncorrectState", 400),
    "group_in_use": ("DependencyViolation", 400),
    "snapshot_in_use": ("InvalidSnapshot.InUse", 400),
    "image_in_use": ("InvalidAMIID.InUse", 400),
    "ip_in_use": ("InvalidIPAddress.InUse", 400),
    "user_data_too_large": ("InvalidParameterValue", 400),
    "invalid_device": ("InvalidParameterValue", 400),
    "idempotent_parameter_mismatch": ("IdempotentParameterMismatch", 400),
    "invalid_client_token": ("InvalidParameterValue", 400),
    "insufficient_capacity": ("InsufficientInstanceCapacity", 500),  # a 5xx: SDKs retry it
    "no_host_fits": ("InsufficientInstanceCapacity", 500),  # placement's, with its reasons
    "unauthorized": ("AuthFailure", 401),
    "forbidden": ("UnauthorizedOperation", 403),
}


def from_cumulo(e: CumuloError, overrides: Mapping[str, str] | None = None) -> Ec2Error:
    """`e` as EC2 spells it; `overrides` maps a cumulo code to the EC2 code of the resource
    at hand (a taken name is InvalidKeyPair.Duplicate for a key pair, ...)."""
    if overrides and e.code in overrides:
        return Ec2Error(overrides[e.code], e.message)
    if e.code in _BY_CODE:
        code, status = _BY_CODE[e.code]
        return Ec2Error(code, e.message, status)
    if e.status == 409:
        return Ec2Error("IncorrectState", e.message)
    if e.status >= 500:
        return Ec2Error("InternalError", e.message, 500)
    return Ec2Error("InvalidParameterValue", e.message)
