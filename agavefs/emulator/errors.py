"""Service errors of the embedded Agave server.

Design note: Agave's own resources throw ``ResourceException(Status, message)``; the
status code is part of each rule the reference documents ("rename 400 if the target
exists"), so the domain layer raises :class:`AgaveError` carrying the status and the
message text, and the HTTP layer (``responses.py``) only serialises it into Agave's
error envelope.  Nothing here knows about HTTP beyond the number.  stdlib only.
"""

from __future__ import annotations


class AgaveError(Exception):
    """An Agave error answer: HTTP ``status`` and the envelope's ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class BodyReadError(AgaveError):
    """The request body could not be read: malformed chunking, or the client went away."""

    def __init__(self, message: str = "The request body is malformed or was interrupted"):
        super().__init__(400, message)


def bad_request(message: str) -> AgaveError:
    return AgaveError(400, message)


def forbidden(message: str = "User does not have access to view the requested resource") -> AgaveError:
    return AgaveError(403, message)


def not_found(message: str = "File/folder does not exist") -> AgaveError:
    return AgaveError(404, message)


class FaultError(Exception):
    """The API gateway's 401: ``{"fault": {code, message, description}}`` (not an Agave envelope)."""

    def __init__(self, code: int, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


class OAuthError(Exception):
    """An OAuth2 token-endpoint error: bare ``{"error", "error_description"}`` JSON."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
