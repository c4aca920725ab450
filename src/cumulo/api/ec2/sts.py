"""STS's GetCallerIdentity, the one STS call EC2 tools make (Ansible's amazon.aws asks who
it is before it compares security group owners): the account is the key's project."""

from __future__ import annotations

from xml.sax.saxutils import escape

from cumulo.api.ec2.errors import Ec2Error

SERVICE = "sts"
NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"


def get_caller_identity(action: str | None, project: str, key_id: str, request_id: str) -> str:
    if action != "GetCallerIdentity":
        raise Ec2Error("UnsupportedOperation", f"cumulo does not support the STS action "
                       f"{action!r}")
    arn = f"arn:aws:iam::{project}:user/{key_id}"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<GetCallerIdentityResponse '
            f'xmlns="{NAMESPACE}"><GetCallerIdentityResult><Arn>{escape(arn)}</Arn>'
            f"<UserId>{escape(key_id)}</UserId><Account>{escape(project)}</Account>"
            f"</GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId>"
            f"</ResponseMetadata></GetCallerIdentityResponse>")


def error(code: str, message: str, request_id: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{NAMESPACE}">'
            f"<Error><Type>Sender</Type><Code>{escape(code)}</Code>"
            f"<Message>{escape(message)}</Message></Error><RequestId>{request_id}</RequestId>"
            f"</ErrorResponse>")
