"""cloud-init NoCloud seed ISOs (volume label `cidata`, files meta-data / user-data)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Required, TypedDict, Unpack

import pycdlib

from cumulo.agent.storage.user_data import compose_user_data
from cumulo.domain.errors import InvalidInput
from cumulo.domain.validation import dns_label

SEED_LABEL = "cidata"


def _is_fqdn_of(fqdn: str, hostname: str) -> bool:
    labels = fqdn.split(".")
    try:
        for label in labels:
            dns_label(label)
    except InvalidInput:
        return False
    return len(labels) > 1 and labels[0] == hostname and len(fqdn) <= 253


def _yaml_str(value: str) -> str:
    """A YAML scalar for `value` (JSON strings are valid YAML double-quoted scalars)."""
    return json.dumps(value, ensure_ascii=False)


def render_meta_data(
    *, instance_id: str, hostname: str, ssh_public_keys: Sequence[str] = ()
) -> str:
    """`hostname` is the instance's FQDN when it has one: like EC2's local-hostname, cloud-init
    then takes its first label as the hostname and the whole as the FQDN."""
    lines = [
        f"instance-id: {_yaml_str(instance_id)}",
        f"local-hostname: {_yaml_str(hostname)}",
    ]
    keys = [k.strip() for k in ssh_public_keys if k.strip()]
    if keys:
        lines.append("public-keys:")
        lines.extend(f"  - {_yaml_str(k)}" for k in keys)
    return "\n".join(lines) + "\n"


class SeedContent(TypedDict, total=False):
    """What a seed carries (the keyword arguments of `seed_iso_bytes`)."""

    instance_id: Required[str]
    hostname: Required[str]
    fqdn: str | None
    user_data: bytes | None
    ssh_public_keys: Sequence[str]
    network_config: str | None


def build_seed_iso(path: Path, **content: Unpack[SeedContent]) -> None:
    """Write the NoCloud seed ISO of this content (see `seed_iso_bytes`) to `path`; the file
    appears atomically (written to a temp file in the same directory, then renamed)."""
    data = seed_iso_bytes(**content)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def seed_iso_bytes(
    *,
    instance_id: str,
    hostname: str,
    fqdn: str | None = None,
    user_data: bytes | None = None,
    ssh_public_keys: Sequence[str] = (),
    network_config: str | None = None,
) -> bytes:
    """A NoCloud seed ISO (ISO9660 + Joliet + Rock Ridge, label `cidata`): a VM's (attached
    as a disk by its host's agent) and a bare-metal server's (written to a partition of its
    disk by the deploy ramdisk) are made here, from the same content.

    With `fqdn` (<name>.<project>.<zone>.<domain>), the meta-data's local-hostname is the FQDN
    and the user-data carries cumulo's #cloud-config (hostname, fqdn, /etc/hosts) next to the
    user's own user-data (see `user_data.compose_user_data`).
    """
    for name, value in (("instance_id", instance_id), ("hostname", hostname)):
        if not value or any(c in value for c in "\n\r\0"):
            raise ValueError(f"{name} must be a non-empty single line, got {value!r}")
    if fqdn is not None and not _is_fqdn_of(fqdn, hostname):
        raise ValueError(f"fqdn must be a DNS name whose first label is {hostname}, got {fqdn!r}")
    if fqdn is not None:
        user_data = compose_user_data(hostname=hostname, fqdn=fqdn, user_data=user_data)
    files: list[tuple[str, bytes]] = [
        (
            "meta-data",
            render_meta_data(
                instance_id=instance_id, hostname=fqdn or hostname,
                ssh_public_keys=ssh_public_keys,
            ).encode(),
        ),
        ("user-data", user_data if user_data is not None else b"#cloud-config\n"),
    ]
    if network_config is not None:
        files.append(("network-config", network_config.encode()))

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    try:
        for name, data in files:
            iso9660_name = "/" + name.replace("-", "_").upper() + ".;1"
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso9660_name,
                rr_name=name,
                joliet_path="/" + name,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()
