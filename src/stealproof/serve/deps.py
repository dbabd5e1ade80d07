"""Typed dependency aliases of the routes: the gateway, the authenticated client, the admin."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from stealproof.serve.errors import Unauthorized, Unavailable
from stealproof.serve.gateway import ClientRef, Gateway


async def get_gateway(request: Request) -> Gateway:
    """The app's gateway (built by the lifespan; async: no worker thread for a lookup)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_client(
    gateway: GatewayDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> ClientRef:
    """The client whose API key came in ``Authorization: Bearer <key>`` (401 otherwise)."""
    return gateway.authenticate(authorization)


ClientDep = Annotated[ClientRef, Depends(get_client)]


async def get_predicting_client(
    gateway: GatewayDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> ClientRef:
    """:func:`get_client` for predictions: a key checked moments ago is not read again (the
    decision re-checks block, quota and revocation under the client's lock)."""
    cached = gateway.cached_client(authorization)
    if cached is not None:
        return cached
    return await run_in_threadpool(gateway.authenticate, authorization)


PredictingClientDep = Annotated[ClientRef, Depends(get_predicting_client)]


def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header(description="Bearer <admin key>")] = None,
) -> None:
    """Refuse anyone without the admin key (compared in constant time)."""
    admin = request.app.state.admin_key
    if admin is None:
        raise Unavailable("the admin API is disabled: no admin key is configured")
    scheme, _, key = (authorization or "").strip().partition(" ")
    given = key.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, admin.get_secret_value().encode()):
        raise Unauthorized("admin key required: send `Authorization: Bearer <admin key>`")


AdminDep = Depends(require_admin)
