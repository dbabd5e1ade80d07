"""``GET /metrics``: Prometheus' text exposition of the gateway's metrics (open, no key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from stealproof.serve.metrics import CONTENT_TYPE_LATEST, Metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text format): requests, rows, latencies, detector flags, clients."""
    m: Metrics = request.app.state.metrics
    body = await run_in_threadpool(m.scrape)  # the client gauges query the database
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
