"""CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair."""

from __future__ import annotations

import base64
import binascii

from cumulo.api.ec2 import filters
from cumulo.api.ec2.errors import Ec2Error, invalid
from cumulo.api.ec2.registry import Body, Call, action
from cumulo.domain.errors import Conflict
from cumulo.services import keypairs
from cumulo.services.views import KeyPairView

FILTERS = frozenset({"key-name", "fingerprint", "key-pair-id"})


def _id(kp: KeyPairView) -> str:
    return "key-" + kp.fingerprint.encode().hex()[-17:]


def _duplicate(call: Call, name: str) -> None:
    if any(k.name == name for k in keypairs.list_all(call.svc, call.who, None)):
        raise Ec2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.")


def _body(kp: KeyPairView) -> Body:
    return {"keyName": kp.name, "keyFingerprint": kp.fingerprint, "keyPairId": _id(kp)}


@action("CreateKeyPair")
def create_key_pair(call: Call) -> Body:
    name = call.params.req("KeyName")
    if call.params.text("KeyType") not in (None, "ed25519"):
        raise invalid("cumulo makes ed25519 key pairs (KeyType=ed25519); import an RSA key "
                      "with ImportKeyPair")
    _duplicate(call, name)
    try:
        kp = keypairs.create(call.svc, call.who, None, name)
    except Conflict as e:
        raise Ec2Error("InvalidKeyPair.Duplicate", e.message) from e
    return _body(kp) | {"keyMaterial": kp.private_key}


@action("ImportKeyPair")
def import_key_pair(call: Call) -> Body:
    name = call.params.req("KeyName")
    raw = call.params.req("PublicKeyMaterial")
    try:
        public = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, ValueError):
        raise invalid("PublicKeyMaterial must be base64 of an OpenSSH public key") from None
    _duplicate(call, name)
    return _body(keypairs.import_key(call.svc, call.who, None, name, public))


@action("DescribeKeyPairs")
def describe_key_pairs(call: Call) -> Body:
    every = keypairs.list_all(call.svc, call.who, None)
    names = call.params.items("KeyName")
    by_name = {k.name: k for k in every}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{missing[0]}' does not exist")
    wanted = filters.parse(call.params, FILTERS)
    key_ids = call.params.items("KeyPairId")
    chosen = [k for k in every if (not names or k.name in names)
              and (not key_ids or _id(k) in key_ids)
              and filters.matches(wanted, {"key-name": k.name, "fingerprint": k.fingerprint,
                                           "key-pair-id": _id(k)}, {})]
    return {"keySet": [_body(k) | {"keyType": k.public_key.split()[0].removeprefix("ssh-"),
                                   "publicKey": k.public_key, "createTime": k.created_at,
                                   "tagSet": []} for k in chosen]}


@action("DeleteKeyPair")
def delete_key_pair(call: Call) -> Body:
    name = call.params.text("KeyName")
    if name is None:
        key_id = call.params.req("KeyPairId")
        found = [k for k in keypairs.list_all(call.svc, call.who, None) if _id(k) == key_id]
        if not found:
            return {"return": True}
        name = found[0].name
    if any(k.name == name for k in keypairs.list_all(call.svc, call.who, None)):
        keypairs.delete(call.svc, call.who, None, name)
    return {"return": True}  # EC2: deleting a key pair that does not exist succeeds
