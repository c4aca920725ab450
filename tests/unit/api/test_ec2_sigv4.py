"""SigV4 as botocore signs it, both forms: accepted when right, refused when anything is off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cumulo.api.ec2 import sigv4
from cumulo.api.ec2.errors import Ec2Error

KEY, SECRET = "AKIAEXAMPLE000000000", "s" * 40
REGIONS = {"local-1"}
URL = "http://127.0.0.1:8750/"


def _request(aws: AWSRequest) -> sigv4.Request:
    prepared = aws.prepare()
    parts = urlsplit(prepared.url)
    body = prepared.body or b""
    return sigv4.Request(method=prepared.method, path=parts.path,
                         query=parse_qsl(parts.query, keep_blank_values=True),
                         headers={k.lower(): v for k, v in prepared.headers.items()} |
                         {"host": parts.netloc},
                         body=body if isinstance(body, bytes) else body.encode())


def header_signed(body: str = "Action=DescribeInstances&Version=2016-11-15") -> sigv4.Request:
    aws = AWSRequest(method="POST", url=URL, data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    SigV4Auth(Credentials(KEY, SECRET), "ec2", "local-1").add_auth(aws)
    return _request(aws)


def query_signed(expires: int = 60) -> sigv4.Request:
    aws = AWSRequest(method="GET", url=URL + "?Action=DescribeRegions&Version=2016-11-15")
    SigV4QueryAuth(Credentials(KEY, SECRET), "ec2", "local-1", expires=expires).add_auth(aws)
    return _request(aws)


@pytest.mark.parametrize("make", [header_signed, query_signed])
def test_botocores_signatures_verify(make: object) -> None:
    req = make()  # type: ignore[operator]
    signed = sigv4.parse(req, datetime.now(UTC), REGIONS)
    assert (signed.access_key_id, signed.region) == (KEY, "local-1")
    sigv4.verify(req, signed, SECRET)
    with pytest.raises(Ec2Error) as exc:
        sigv4.verify(req, signed, SECRET[:-1] + "t")
    assert (exc.value.code, exc.value.status) == ("SignatureDoesNotMatch", 403)


def test_a_changed_body_or_query_does_not_verify() -> None:
    req = header_signed()
    tampered = sigv4.Request(req.method, req.path, req.query, req.headers,
                             b"Action=TerminateInstances&Version=2016-11-15")
    with pytest.raises(Ec2Error) as exc:
        sigv4.verify(tampered, sigv4.parse(tampered, datetime.now(UTC), REGIONS), SECRET)
    assert exc.value.code == "SignatureDoesNotMatch"
    q = query_signed()
    moved = sigv4.Request(q.method, q.path, [(k, "DescribeImages" if k == "Action" else v)
                                             for k, v in q.query], q.headers, q.body)
    with pytest.raises(Ec2Error):
        sigv4.verify(moved, sigv4.parse(moved, datetime.now(UTC), REGIONS), SECRET)


def test_clock_skew_and_expiry_are_refused() -> None:
    later = datetime.now(UTC) + timedelta(minutes=6)
    with pytest.raises(Ec2Error) as exc:
        sigv4.parse(header_signed(), later, REGIONS)
    assert exc.value.code == "RequestExpired"
    sigv4.parse(header_signed(), datetime.now(UTC) + timedelta(minutes=4), REGIONS)
    with pytest.raises(Ec2Error) as exc:
        sigv4.parse(query_signed(expires=30), datetime.now(UTC) + timedelta(seconds=40), REGIONS)
    assert exc.value.code == "RequestExpired"


def test_unsigned_or_foreign_region_is_an_auth_failure() -> None:
    req = header_signed()
    bare = sigv4.Request(req.method, req.path, req.query,
                         {k: v for k, v in req.headers.items() if k != "authorization"}, req.body)
    for bad, regions in ((bare, REGIONS), (req, {"other-1"})):
        with pytest.raises(Ec2Error) as exc:
            sigv4.parse(bad, datetime.now(UTC), regions)
        assert (exc.value.code, exc.value.status) == ("AuthFailure", 401)
