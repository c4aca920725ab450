"""Errors a user (or an operator) can cause, each with a stable code.

The API maps these to problem+json with the HTTP status given here; the CLI prints
`error[<code>]: <message>` on one line. Codes are part of the public contract: never rename one.
"""

from __future__ import annotations


class CumuloError(Exception):
    """Base of every error that reaches a user."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(CumuloError):
    code = "invalid_input"
    status = 400


class Unauthorized(CumuloError):
    code = "unauthorized"
    status = 401


class Forbidden(CumuloError):
    code = "forbidden"
    status = 403


class NotFound(CumuloError):
    code = "not_found"
    status = 404


class Conflict(CumuloError):
    """The request is valid but contradicts the current state (wrong state, name taken)."""

    code = "conflict"
    status = 409


class InsufficientCapacity(CumuloError):
    code = "insufficient_capacity"
    status = 409


class QuotaExceeded(CumuloError):
    """A create (or a resize) would take the project past one of its limits. 403: the request
    is refused by policy, not by the cloud's state; the detail says which limit and by how
    much. `project_id` and `resource` say what was refused (the refusal becomes an event)."""

    code = "quota_exceeded"
    status = 403

    def __init__(self, message: str, *, project_id: str, resource: tuple[str, str, str]
                 ) -> None:
        super().__init__(message)
        self.project_id = project_id
        self.resource = resource  # (type, id, name) of what was refused
