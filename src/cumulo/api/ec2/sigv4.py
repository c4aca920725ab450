"""AWS Signature Version 4, checked: the Authorization header form and the query-string
(presigned) form, the credential scope (a cumulo region, service ec2), the clock (5 minutes
either way), the signature compared in constant time.

Pure: the caller looks the access key up and passes its secret to `verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from cumulo.api.ec2.errors import Ec2Error

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICES = ("ec2", "sts")  # sts: GetCallerIdentity only (see api.ec2.sts)
MAX_SKEW = timedelta(minutes=5)
MAX_EXPIRES_S = 7 * 24 * 3600
_AUTH_PARTS = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders",
               "X-Amz-Signature")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # decoded
    query: Sequence[tuple[str, str]]  # decoded, in order
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Signed:
    """A request's signature, parsed and in date: `verify` it with the key's secret."""

    access_key_id: str
    region: str
    service: str
    amz_date: str
    scope: str
    signed_headers: tuple[str, ...]
    signature: str
    canonical_query: str
    payload_hash: str


def _auth_failure(message: str) -> Ec2Error:
    return Ec2Error("AuthFailure", message, 401)


def _quote(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    # Sorted as encoded, as the specification says (the order of raw names may differ).
    return "&".join(f"{k}={v}" for k, v in sorted((_quote(k), _quote(v)) for k, v in pairs))


def _parse_date(amz_date: str) -> datetime:
    try:
        return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _auth_failure(f"X-Amz-Date {amz_date!r} is not of the form YYYYMMDDTHHMMSSZ") \
            from None


def _scope(credential: str, amz_date: str, regions: set[str]) -> tuple[str, str, str]:
    """(access key id, region, scope) of a `KEY/DATE/REGION/ec2/aws4_request` credential."""
    parts = credential.split("/")
    if len(parts) != 5 or parts[3] not in SERVICES or parts[4] != "aws4_request":
        raise _auth_failure(f"credential {credential!r} must be "
                            "ACCESS_KEY/YYYYMMDD/REGION/ec2/aws4_request")
    key_id, day, region = parts[0], parts[1], parts[2]
    if day != amz_date[:8]:
        raise Ec2Error("SignatureDoesNotMatch", "the credential's date is not the request's",
                       403)
    if region not in regions:
        raise _auth_failure(f"unknown region {region!r} in the credential "
                            f"(this cloud's: {', '.join(sorted(regions))})")
    return key_id, region, "/".join(parts[1:])


def parse(req: Request, now: datetime, regions: set[str]) -> Signed:
    """The request's signature, or an Ec2Error: none, malformed, out of date."""
    query = dict(req.query)
    auth = req.headers.get("authorization")
    if auth is not None:
        if not auth.startswith(ALGORITHM + " "):
            raise _auth_failure(f"only {ALGORITHM} signatures are accepted")
        parts = dict(_AUTH_PARTS.findall(auth))
        if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
            raise _auth_failure("the Authorization header needs Credential, SignedHeaders "
                                "and Signature")
        amz_date = req.headers.get("x-amz-date", "")
        credential, signed, signature = (parts["Credential"], parts["SignedHeaders"],
                                         parts["Signature"])
        when = _parse_date(amz_date)
        if abs(now - when) > MAX_SKEW:
            raise Ec2Error("RequestExpired", f"the request's time {amz_date} is more than "
                           "5 minutes away from the server's", 400)
        payload = req.headers.get("x-amz-content-sha256") or hashlib.sha256(req.body).hexdigest()
        pairs = list(req.query)
    elif "X-Amz-Signature" in query:
        absent = [k for k in _QUERY_AUTH if k not in query]
        if absent:
            raise _auth_failure(f"the presigned request lacks {', '.join(absent)}")
        if query["X-Amz-Algorithm"] != ALGORITHM:
            raise _auth_failure(f"only {ALGORITHM} signatures are accepted")
        amz_date, credential = query["X-Amz-Date"], query["X-Amz-Credential"]
        signed, signature = query["X-Amz-SignedHeaders"], query["X-Amz-Signature"]
        when = _parse_date(amz_date)
        try:
            expires = int(query.get("X-Amz-Expires", "900"))
        except ValueError:
            raise _auth_failure("X-Amz-Expires must be a number of seconds") from None
        if not 0 < expires <= MAX_EXPIRES_S:
            raise _auth_failure(f"X-Amz-Expires must be 1 to {MAX_EXPIRES_S} seconds")
        if when - now > MAX_SKEW or now > when + timedelta(seconds=expires):
            raise Ec2Error("RequestExpired", f"the presigned request (signed {amz_date}, "
                           f"valid {expires} s) has expired or is not valid yet", 400)
        # The body's hash, as botocore's SigV4QueryAuth signs (S3 alone uses UNSIGNED-PAYLOAD).
        payload = req.headers.get("x-amz-content-sha256") or hashlib.sha256(req.body).hexdigest()
        pairs = [(k, v) for k, v in req.query if k != "X-Amz-Signature"]
    else:
        raise _auth_failure("the request is not signed (AWS Signature Version 4)")
    key_id, region, scope = _scope(credential, amz_date, regions)
    service = scope.split("/")[2]
    headers = tuple(signed.split(";"))
    if "host" not in headers or any(h not in req.headers for h in headers):
        raise Ec2Error("SignatureDoesNotMatch",
                       "SignedHeaders must include host and name only headers sent", 403)
    if not _HEX64.match(signature):
        raise Ec2Error("SignatureDoesNotMatch", "the signature is not 64 hex digits", 403)
    return Signed(access_key_id=key_id, region=region, service=service, amz_date=amz_date,
                  scope=scope,
                  signed_headers=headers, signature=signature,
                  canonical_query=canonical_query(pairs), payload_hash=payload)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _canonical_path(path: str) -> str:
    return quote(path or "/", safe="/~")


def expected_signature(req: Request, signed: Signed, secret: str) -> str:
    headers = "".join(f"{h}:{' '.join(req.headers[h].split())}\n" for h in signed.signed_headers)
    canonical = "\n".join([req.method, _canonical_path(req.path), signed.canonical_query,
                           headers, ";".join(signed.signed_headers), signed.payload_hash])
    to_sign = "\n".join([ALGORITHM, signed.amz_date, signed.scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    day, region, service, end = signed.scope.split("/")
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), service), end)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def verify(req: Request, signed: Signed, secret: str) -> None:
    expected = expected_signature(req, signed, secret)
    if not hmac.compare_digest(expected.encode(), signed.signature.encode()):
        raise Ec2Error("SignatureDoesNotMatch", "The request signature we calculated does not "
                       "match the signature you provided. Check your secret access key and "
                       "signing method.", 403)
