"""The user-data of a NoCloud seed: cumulo's own #cloud-config (the instance's hostname and
FQDN) together with the user's user-data, whatever it is, as cloud-init reads both.

cloud-init takes one user-data blob. To add settings without touching the user's document,
both go into one MIME multipart message (cloud-init's documented way to combine parts): ours
first, so that the user's own `hostname:`/`fqdn:` win (cloud-init merges cloud-config parts
with `dict(replace)`: a later part's keys replace an earlier one's), then the user's part
unchanged: a script still runs, a cloud-config still applies, a MIME message of the user's
keeps its parts (nested), gzip is unpacked first (cloud-init only unpacks the whole blob).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import zlib
from email.encoders import encode_base64
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

MAX_GUNZIP_BYTES = 1 << 20  # a gzip'd user-data may unpack to this much (no zip bombs)


def _yaml_str(value: str) -> str:
    """A YAML scalar for `value` (JSON strings are valid YAML double-quoted scalars)."""
    return json.dumps(value, ensure_ascii=False)


def instance_cloud_config(*, hostname: str, fqdn: str) -> str:
    """cumulo's part: the short name is the hostname, the FQDN goes to /etc/hosts (127.0.1.1,
    so `hostname -f` answers it), the rest of /etc/hosts is left as the image has it."""
    return (
        "#cloud-config\n"
        f"hostname: {_yaml_str(hostname)}\n"
        f"fqdn: {_yaml_str(fqdn)}\n"
        "prefer_fqdn_over_hostname: false\n"
        "manage_etc_hosts: localhost\n"
    )


def _gunzip(data: bytes) -> bytes | None:
    if not data.startswith(b"\x1f\x8b"):
        return None
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, MAX_GUNZIP_BYTES)
    except zlib.error:
        return None
    if d.unconsumed_tail or not d.eof:
        return None  # larger than the limit, or truncated: passed on as it is
    return out


def _is_mime(data: bytes) -> bool:
    return b"mime-version:" in data[:4096].lower()  # cloud-init's own test


def _user_part(user_data: bytes) -> Message:
    data = _gunzip(user_data)
    if data is None:
        data = user_data
    if _is_mime(data):
        return email.message_from_bytes(data, policy=email.policy.compat32)
    if data is user_data and data.startswith(b"\x1f\x8b"):
        part = MIMEBase("application", "gzip")  # too large to unpack here: cloud-init will
    else:
        # cloud-init sniffs text/x-not-multipart parts by their first line, as a whole blob
        part = MIMEBase("text", "x-not-multipart")
    part.set_payload(data)
    encode_base64(part)  # any bytes, and no line can look like a boundary
    part.add_header("Content-Disposition", "attachment", filename="user-data")
    return part


def compose_user_data(*, hostname: str, fqdn: str, user_data: bytes | None) -> bytes:
    """The seed's user-data: our #cloud-config alone, or a multipart of it and the user's."""
    ours = instance_cloud_config(hostname=hostname, fqdn=fqdn)
    if not user_data:
        return ours.encode()
    # A boundary made of a hash of the content cannot occur in it (the user's MIME parts are
    # the only ones not base64-encoded); the same input always gives the same bytes.
    digest = hashlib.sha256(ours.encode() + b"\0" + user_data).hexdigest()[:32]
    outer = MIMEMultipart(boundary=f"===============cumulo-{digest}==")
    mine = MIMEText(ours, "cloud-config", "us-ascii")
    mine.add_header("Content-Disposition", "attachment", filename="cumulo-instance.cfg")
    outer.attach(mine)
    outer.attach(_user_part(user_data))
    return outer.as_bytes()
