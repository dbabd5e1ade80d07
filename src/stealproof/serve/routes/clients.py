"""``/v1/clients/me``: what a client may know about itself (never whether it was flagged)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from stealproof.serve.deps import ClientDep, GatewayDep
from stealproof.serve.routes.v2 import ErrorBody

router = APIRouter(prefix="/v1/clients", tags=["clients"])


class Me(BaseModel):
    name: str
    rows_used: int
    requests: int
    quota_rows: int | None
    quota_left: int | None
    standing: Literal["ok", "blocked"]


@router.get("/me", response_model=Me, responses={401: {"model": ErrorBody}})
def me(client: ClientDep, gateway: GatewayDep) -> dict[str, Any]:
    """Rows used, quota left and standing (ok / blocked) of the calling client."""
    return gateway.me(client)
