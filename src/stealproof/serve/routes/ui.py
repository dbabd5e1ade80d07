"""The admin console: the page at ``/admin`` and the two read-only admin routes it needs.

The page is a static shell (HTML, CSS and JS from ``serve/static``; no build step, no network):
it holds no data and asks for the admin key, which it keeps in ``sessionStorage`` and sends as
``Authorization: Bearer`` to the admin API. Everything it shows comes from ``/v1/admin/...``,
so the data stays behind the admin key. A strict Content-Security-Policy allows only this
origin's scripts and styles (no inline code), and the script writes text, never HTML.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from stealproof.serve.db import repo
from stealproof.serve.db.models import QueryLog
from stealproof.serve.deps import AdminDep, GatewayDep
from stealproof.serve.errors import NotFound
from stealproof.serve.gateway import _iso
from stealproof.serve.routes.v2 import ErrorBody

#: The console's files in ``stealproof/serve/static`` → their media types.
ASSETS = {
    "admin.html": "text/html; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
}

#: Only this origin's files; no inline script or style, no frames, no form posts elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

#: Most query-log rows one series request reads (a window this busy is reported as truncated).
MAX_SERIES_ROWS = 200_000

#: Rows this much older than the window's start are still read, then reading stops. Log ids
#: and timestamps can disagree by a transaction's duration when several workers write.
SERIES_GRACE = timedelta(seconds=5)

router = APIRouter(tags=["console"])

api = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)


class KeyInfo(BaseModel):
    """One API key of a client, without its secret (only the hash is stored)."""

    key_id: str
    created_at: str | None
    revoked_at: str | None


class SeriesPoint(BaseModel):
    """One time bucket of a client's answered requests."""

    start: str = Field(description="the bucket's start (ISO 8601, UTC)")
    requests: int = Field(ge=0)
    rows: int = Field(ge=0)
    flagged_rows: int = Field(ge=0, description="rows answered deceptively (flagged)")
    rows_per_min: float = Field(ge=0, description="query rate: rows per minute in the bucket")
    flagged_share: float | None = Field(
        None, ge=0, le=1, description="flagged_rows / rows; null for a bucket without rows"
    )


class Series(BaseModel):
    """A client's query rate and flagged share over the last ``points`` buckets, oldest first."""

    client: str
    bucket: int = Field(description="bucket width in seconds")
    start: str
    end: str
    truncated: bool = Field(
        description=f"true when the window held over {MAX_SERIES_ROWS} log rows (oldest skipped)"
    )
    points: list[SeriesPoint]


def _asset(name: str) -> Response:
    body = resources.files("stealproof.serve").joinpath("static", name).read_bytes()
    return Response(
        body,
        media_type=ASSETS[name],
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


@router.get("/admin", include_in_schema=False)
def console_page() -> Response:
    """The console's HTML shell (no data in it; the data needs the admin key)."""
    return _asset("admin.html")


@router.get("/admin/admin.js", include_in_schema=False)
def console_script() -> Response:
    """The console's script."""
    return _asset("admin.js")


@router.get("/admin/admin.css", include_in_schema=False)
def console_style() -> Response:
    """The console's style sheet."""
    return _asset("admin.css")


@api.get(
    "/clients/{name}/keys", response_model=list[KeyInfo], responses={404: {"model": ErrorBody}}
)
def client_keys(name: str, gateway: GatewayDep) -> list[dict[str, Any]]:
    """A client's API keys (live and revoked, oldest first): ids to revoke by, never secrets."""
    with gateway.read_session() as s:
        c = repo.get_client(s, name)
        if c is None:
            raise NotFound(f"unknown client {name!r}")
        return [
            {"key_id": k.key_id, "created_at": _iso(k.created_at), "revoked_at": _iso(k.revoked_at)}
            for k in repo.list_keys(s, c)
        ]


@api.get("/clients/{name}/series", response_model=Series, responses={404: {"model": ErrorBody}})
def client_series(
    name: str,
    gateway: GatewayDep,
    bucket: int = Query(60, ge=1, le=86_400, description="bucket width in seconds"),
    points: int = Query(60, ge=1, le=1_440, description="number of buckets, ending now"),
) -> dict[str, Any]:
    """A client's query rate and flagged share per time bucket, from the query log.

    Reads only the window's log rows (newest first over the ``(client_id, id)`` index, stopping
    just past the window's start) and counts deceptive rows in Python, which reads the per-row
    ``actions`` JSON the same way on SQLite and PostgreSQL.
    """
    now = datetime.now(UTC)
    end_s = math.floor(now.timestamp() / bucket) * bucket + bucket  # the current bucket's end
    start_s = end_s - points * bucket
    start = datetime.fromtimestamp(start_s, UTC)
    requests = [0] * points
    rows = [0] * points
    flagged = [0] * points
    truncated = False
    with gateway.read_session() as s:
        c = repo.get_client(s, name)
        if c is None:
            raise NotFound(f"unknown client {name!r}")
        stmt = (
            select(QueryLog.created_at, QueryLog.rows, QueryLog.actions)
            .where(QueryLog.client_id == c.id)
            .order_by(QueryLog.id.desc())
            .execution_options(yield_per=2_000)
        )
        result = s.execute(stmt)
        try:
            for read, (created, n, actions) in enumerate(result):
                if created < start - SERIES_GRACE:
                    break
                if read >= MAX_SERIES_ROWS:
                    truncated = True
                    break
                i = int((created.timestamp() - start_s) // bucket)
                if 0 <= i < points:
                    requests[i] += 1
                    rows[i] += int(n)
                    flagged[i] += sum(1 for a in actions if a == "deceptive")
        finally:
            result.close()
    return {
        "client": name,
        "bucket": bucket,
        "start": _iso(start),
        "end": _iso(datetime.fromtimestamp(end_s, UTC)),
        "truncated": truncated,
        "points": [
            {
                "start": _iso(datetime.fromtimestamp(start_s + i * bucket, UTC)),
                "requests": requests[i],
                "rows": rows[i],
                "flagged_rows": flagged[i],
                "rows_per_min": rows[i] * 60.0 / bucket,
                "flagged_share": flagged[i] / rows[i] if rows[i] else None,
            }
            for i in range(points)
        ],
    }


router.include_router(api)
