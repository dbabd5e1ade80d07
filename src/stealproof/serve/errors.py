"""Gateway errors carry their HTTP status; the app turns them into ``{"error": message}``."""

from __future__ import annotations

from stealproof.errors import StealproofError


class GatewayError(StealproofError):
    """A refused request: ``status`` is the HTTP status, the message goes to the client."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class Unauthorized(GatewayError):
    """No key, a malformed, unknown or revoked key (401)."""

    status = 401


class Forbidden(GatewayError):
    """The client is blocked (403)."""

    status = 403


class NotFound(GatewayError):
    """Unknown model, version or client (404)."""

    status = 404


class TooLarge(GatewayError):
    """Body or batch over the configured limit (413)."""

    status = 413


class QuotaExceeded(GatewayError):
    """The client's row quota would be exceeded (429)."""

    status = 429


class Unavailable(GatewayError):
    """The gateway cannot serve right now (the admin API without an admin key: 503)."""

    status = 503
