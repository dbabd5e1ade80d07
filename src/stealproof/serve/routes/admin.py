"""Admin API under ``/v1/admin`` (every route needs the admin key)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from stealproof.serve.db import repo
from stealproof.serve.db.models import Client
from stealproof.serve.deps import AdminDep, GatewayDep
from stealproof.serve.errors import GatewayError, NotFound
from stealproof.serve.gateway import _iso
from stealproof.serve.routes.v2 import ErrorBody
from stealproof.serve.security import parse_key
from stealproof.serve.settings import _NAME, MAX_QUOTA_ROWS

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)


class NewClient(BaseModel):
    name: str = Field(pattern=_NAME)
    quota_rows: int | None = Field(None, ge=0, le=MAX_QUOTA_ROWS)


class BlockRequest(BaseModel):
    reason: str = Field("blocked by an administrator", max_length=500)


class ClientInfo(BaseModel):
    name: str
    created_at: str | None
    last_seen: str | None
    rows_used: int
    requests: int
    flagged_rows: int
    quota_rows: int | None
    standing: Literal["ok", "blocked"]
    admin_blocked: bool
    block_reason: str | None
    policy_blocked: list[str]


class IssuedKey(BaseModel):
    client: str
    key_id: str
    key: str = Field(description="the API key; shown once, stored only as a hash")


class LogEntry(BaseModel):
    id: int
    created_at: str | None
    model: str
    model_version: str
    rows: int
    input_sha256: list[str]
    actions: list[str]
    l1: list[float]
    scores: dict[str, list[float | None]]
    delivered: bool = Field(description="the answer was handed to the client's connection")


def _issued(client: str, key: str) -> dict[str, Any]:
    parsed = parse_key(key)
    assert parsed is not None  # a key the repository just issued
    return {"client": client, "key_id": parsed[0], "key": key}


def _client(s: Any, name: str) -> Client:
    c = repo.get_client(s, name)
    if c is None:
        raise NotFound(f"unknown client {name!r}")
    return c


@router.post(
    "/clients", response_model=IssuedKey, status_code=201, responses={409: {"model": ErrorBody}}
)
def create_client(body: NewClient, gateway: GatewayDep) -> dict[str, Any]:
    """Create a client and its first API key (returned once)."""
    quota = (
        body.quota_rows if "quota_rows" in body.model_fields_set else gateway.settings.quota_rows
    )
    with gateway.sessions.begin() as s:
        if repo.get_client(s, body.name) is not None:
            raise GatewayError(f"client {body.name!r} exists", 409)
        c = repo.create_client(s, body.name, quota_rows=quota)
        key = repo.add_key(s, c)
    return _issued(body.name, key)


@router.get("/clients", response_model=list[ClientInfo])
def list_clients(gateway: GatewayDep) -> list[dict[str, Any]]:
    """Every client with usage, flagged rows and standing."""
    with gateway.read_session() as s:
        return [gateway.client_summary(s, c) for c in repo.list_clients(s)]


@router.get("/clients/{name}", response_model=ClientInfo, responses={404: {"model": ErrorBody}})
def get_client(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """One client's usage and standing."""
    with gateway.read_session() as s:
        return gateway.client_summary(s, _client(s, name))


@router.post(
    "/clients/{name}/block", response_model=ClientInfo, responses={404: {"model": ErrorBody}}
)
def block(name: str, gateway: GatewayDep, body: BlockRequest | None = None) -> dict[str, Any]:
    """Block a client: its next requests get 403."""
    reason = (body or BlockRequest()).reason
    with gateway.sessions.begin() as s:
        c = repo.lock_client(s, _client(s, name).id)
        repo.set_admin_block(s, c, True, reason)
        out = gateway.client_summary(s, c)
    gateway.forget_authentications()  # refused before the model runs, not only when decided
    return out


@router.post(
    "/clients/{name}/unblock", response_model=ClientInfo, responses={404: {"model": ErrorBody}}
)
def unblock(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Lift an administrator's block and every policy block of the client."""
    with gateway.exclusive(), gateway.sessions.begin() as s:
        c = repo.lock_client(s, _client(s, name).id)
        repo.set_admin_block(s, c, False, None)
        gateway.unblock_policy(s, c)
        out = gateway.client_summary(s, c)
    return out


@router.post(
    "/clients/{name}/keys",
    response_model=IssuedKey,
    status_code=201,
    responses={404: {"model": ErrorBody}},
)
def issue_key(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Issue another API key for a client (returned once)."""
    with gateway.sessions.begin() as s:
        c = _client(s, name)
        key = repo.add_key(s, c)
    return _issued(name, key)


@router.delete("/keys/{key_id}", status_code=204, responses={404: {"model": ErrorBody}})
def revoke_key(key_id: str, gateway: GatewayDep) -> None:
    """Revoke an API key by its visible id; requests with it get 401."""
    with gateway.sessions.begin() as s:
        if not repo.revoke_key(s, key_id):
            raise NotFound(f"no active key with id {key_id!r}")
    gateway.forget_authentications()


@router.get(
    "/clients/{name}/log", response_model=list[LogEntry], responses={404: {"model": ErrorBody}}
)
def client_log(
    name: str, gateway: GatewayDep, limit: int = Query(50, ge=1, le=1000)
) -> list[dict[str, Any]]:
    """The client's most recent query-log rows, newest first."""
    with gateway.read_session() as s:
        c = _client(s, name)
        return [
            {
                "id": e.id,
                "created_at": _iso(e.created_at),
                "model": e.model,
                "model_version": e.model_version,
                "rows": e.rows,
                "input_sha256": e.input_sha256,
                "actions": e.actions,
                "l1": e.l1,
                "scores": e.scores,
                "delivered": e.delivered,
            }
            for e in repo.recent_log(s, c.id, limit=limit)
        ]
