"""Prometheus metrics of the gateway, in a registry of their own (never prometheus' global one).

Names follow the model servers people already monitor (Triton's ``nv_inference_*``, MLServer's
``model_infer_*``), prefixed ``stealproof_``. Labels are ``model`` and ``version`` (the served
``name`` / ``version``; ``""`` / ``""`` for a request to a model that is not served, so a caller
cannot create series) plus the one named below. There are no per-client labels.

============================================  =========  ==========================================
metric                                        labels     meaning
============================================  =========  ==========================================
``stealproof_inference_requests_total``       ``code``   infer requests answered, by HTTP status
                                                         (200, and every refusal: 400, 401, 403,
                                                         404, 413, 422, 429, 5xx)
``stealproof_inference_rows_total``           ``action`` input rows: ``normal`` / ``deceptive``
                                                         (served and charged) or ``refused`` (rows
                                                         of a refused request whose body was read
                                                         and checked: 403, 429; else 0)
``stealproof_request_duration_seconds``                  histogram: whole served (200) request
``stealproof_model_forward_duration_seconds``            histogram: the victim's forward pass
``stealproof_policy_duration_seconds``                   histogram: detectors + defense (policy)
``stealproof_database_duration_seconds``                 histogram: the locked transaction, less
                                                         the policy (lock, state, counters, log,
                                                         commit)
``stealproof_detector_flags_total``           ``detector`` rows each detector flagged (served)
``stealproof_clients_blocked``                (none)     gauge: clients refused now (admin block
                                                         or a policy block on any model)
``stealproof_clients_flagged``                (none)     gauge: clients with at least one flagged
                                                         row
============================================  =========  ==========================================

The histograms count served requests only. The two gauges are read from the database at scrape
time, so they are right whichever worker answers the scrape. With ``--workers N > 1`` the
counters and histograms use prometheus-client's multiprocess mode: every worker writes its
values to files in ``$PROMETHEUS_MULTIPROC_DIR`` (see :func:`prepare_multiprocess`) and a scrape
sums them.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_dead
from prometheus_client.registry import Collector
from sqlalchemy import exists, func, or_, select

from stealproof.serve.db.models import Client, ClientModelState
from stealproof.serve.errors import NotFound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from stealproof.serve.gateway import Gateway

log = logging.getLogger(__name__)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROC_ENV",
    "InferMetricsMiddleware",
    "Metrics",
    "mark_process_dead",
    "note_rows",
    "prepare_multiprocess",
]

#: prometheus-client's multiprocess directory variable.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Latency buckets (seconds): sub-millisecond forward passes up to slow database commits.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Actions of ``stealproof_inference_rows_total``.
ACTIONS = ("normal", "deceptive", "refused")

_MODEL = ("model", "version")
_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_SCOPE_KEY = "stealproof.infer"
_STALE = re.compile(r"^(counter|gauge|histogram|summary)_.*\.db$")


def multiprocess_active() -> bool:
    """True when prometheus-client writes values to files (it decides once, at its import)."""
    return values.ValueClass is not values.MutexValue and bool(os.environ.get(MULTIPROC_ENV))


class _ClientGauges(Collector):
    """``stealproof_clients_blocked`` / ``_flagged``, counted in the database at each scrape."""

    def __init__(self, sessions: Callable[[], Session | None]) -> None:
        self._sessions = sessions

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        session = self._sessions()
        if session is None:
            return
        policy_blocked = exists().where(
            ClientModelState.client_id == Client.id, ClientModelState.policy_blocked.is_(True)
        )
        try:
            with session as s:
                blocked = s.scalar(
                    select(func.count(Client.id)).where(
                        or_(Client.admin_blocked.is_(True), policy_blocked)
                    )
                )
                flagged = s.scalar(select(func.count(Client.id)).where(Client.flagged_rows > 0))
        except Exception as err:  # a scrape must not fail because the database is down
            log.warning("metrics: cannot count clients in the database: %s", err)
            return
        yield GaugeMetricFamily(
            "stealproof_clients_blocked",
            "Clients refused now (an administrator's block or a policy block on any model).",
            value=int(blocked or 0),
        )
        yield GaugeMetricFamily(
            "stealproof_clients_flagged",
            "Clients with at least one row flagged by a detector.",
            value=int(flagged or 0),
        )


class Metrics:
    """The gateway's metrics (module doc): a :class:`~stealproof.serve.gateway.GatewayObserver`
    plus what the HTTP layer counts, and the exposition of a scrape.

    ``sessions`` opens a read session for the client gauges (``None`` while no database is
    open). In multiprocess mode a scrape sums every worker's files instead of this process's
    values.
    """

    def __init__(self, sessions: Callable[[], Session | None] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        self.requests = Counter(
            "stealproof_inference_requests",
            "Inference requests answered, by HTTP status code (refusals included).",
            [*_MODEL, "code"],
            registry=reg,
        )
        self.rows = Counter(
            "stealproof_inference_rows",
            "Input rows by action: normal / deceptive (served) or refused.",
            [*_MODEL, "action"],
            registry=reg,
        )
        self.request_seconds = self._histogram(
            "stealproof_request_duration_seconds", "Whole served inference request (seconds)."
        )
        self.forward_seconds = self._histogram(
            "stealproof_model_forward_duration_seconds", "Victim forward pass (seconds)."
        )
        self.policy_seconds = self._histogram(
            "stealproof_policy_duration_seconds", "Policy: detectors and defense (seconds)."
        )
        self.database_seconds = self._histogram(
            "stealproof_database_duration_seconds",
            "Locked database transaction, less the policy (seconds).",
        )
        self.detector_flags = Counter(
            "stealproof_detector_flags",
            "Served rows flagged, by detector.",
            [*_MODEL, "detector"],
            registry=reg,
        )
        self.multiprocess = multiprocess_active()
        if os.environ.get(MULTIPROC_ENV) and not self.multiprocess:
            log.warning(
                "metrics: $%s is set but prometheus_client was imported before it; "
                "this process reports only its own values",
                MULTIPROC_ENV,
            )
        if self.multiprocess:
            self.exposition = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        else:
            self.exposition = reg
        if sessions is not None:
            self.exposition.register(_ClientGauges(sessions))

    def _histogram(self, name: str, doc: str) -> Histogram:
        return Histogram(name, doc, _MODEL, buckets=BUCKETS, registry=self.registry)

    # ------------------------------------------------------------------ GatewayObserver

    def observe_forward(self, model: str, version: str, seconds: float) -> None:
        """One served request's victim forward pass."""
        self.forward_seconds.labels(model, version).observe(seconds)

    def observe_policy(self, model: str, version: str, seconds: float) -> None:
        """One served request's policy time."""
        self.policy_seconds.labels(model, version).observe(seconds)

    def observe_database(self, model: str, version: str, seconds: float) -> None:
        """One served request's database time."""
        self.database_seconds.labels(model, version).observe(seconds)

    def count_rows(self, model: str, version: str, action: str, rows: int) -> None:
        """Served rows answered with ``action`` (``normal`` / ``deceptive``)."""
        if action not in ACTIONS:
            raise ValueError(f"action: expected one of {ACTIONS}, got {action!r}")
        self.rows.labels(model, version, action).inc(rows)

    def count_detector_flags(self, model: str, version: str, detector: str, rows: int) -> None:
        """Served rows ``detector`` flagged."""
        self.detector_flags.labels(model, version, detector).inc(rows)

    # ------------------------------------------------------------------ HTTP layer

    def count_request(self, model: str, version: str, code: int | str) -> None:
        """One answered infer request with HTTP status ``code``."""
        self.requests.labels(model, version, str(code)).inc()

    def count_refused_rows(self, model: str, version: str, rows: int) -> None:
        """Rows of a refused request (0 when its body was not read and checked)."""
        self.rows.labels(model, version, "refused").inc(rows)

    def observe_request(self, model: str, version: str, seconds: float) -> None:
        """One served request's whole time."""
        self.request_seconds.labels(model, version).observe(seconds)

    # ------------------------------------------------------------------ set-up and scrape

    def declare_model(self, model: str, version: str, detectors: Iterable[str] = ()) -> None:
        """Create a served model's series at 0, so they exist before its first request."""
        for action in ACTIONS:
            self.rows.labels(model, version, action)
        for h in (
            self.request_seconds,
            self.forward_seconds,
            self.policy_seconds,
            self.database_seconds,
        ):
            h.labels(model, version)
        for det in detectors:
            self.detector_flags.labels(model, version, det)

    def attach(self, gateway: Gateway) -> None:
        """Observe ``gateway``'s served requests and declare its models' series."""
        gateway.observer = self
        for m in gateway.models:
            self.declare_model(m.name, m.version, m.policy.detectors)

    def scrape(self) -> bytes:
        """The text exposition (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.exposition)


# ----------------------------------------------------------------------------- HTTP middleware


def note_rows(request: Request, rows: int, *, served: bool = False) -> None:
    """Tell the metrics middleware a request's row count (``served``: answered and charged)."""
    holder = request.scope.get(_SCOPE_KEY)
    if isinstance(holder, dict):
        holder["rows"] = rows
        holder["served"] = served


def _labels(gateway: Gateway | None, name: str, version: str | None) -> tuple[str, str]:
    if gateway is None:
        return "", ""
    try:
        m = gateway.model(name, version)
    except NotFound:
        return "", ""  # never a series named by the caller
    return m.name, m.version


class InferMetricsMiddleware:
    """Counts every ``POST /v2/models/{name}[/versions/{v}]/infer`` by status, its refused
    rows and (when served) its whole time, in ``app.state.metrics``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _INFER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        state = getattr(scope.get("app"), "state", None)
        metrics: Metrics | None = getattr(state, "metrics", None)
        if match is None or scope.get("method") != "POST" or metrics is None:
            await self.app(scope, receive, send)
            return
        holder: dict[str, Any] = {"rows": 0, "served": False}
        scope[_SCOPE_KEY] = holder
        status = 500
        counted = False
        t0 = time.perf_counter()

        def count() -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            model, version = _labels(getattr(state, "gateway", None), *match.groups())
            metrics.count_request(model, version, status)
            if status == 200 and holder["served"]:
                metrics.observe_request(model, version, time.perf_counter() - t0)
            elif not holder["served"]:
                metrics.count_refused_rows(model, version, int(holder["rows"]))

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # counted before the last byte leaves: a client that sees the answer and then
                # scrapes /metrics finds it counted (background work runs after this)
                count()
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            count()  # a request that ended without a complete response


# ----------------------------------------------------------------------------- multiprocess


def prepare_multiprocess(workers: int) -> Path | None:
    """Set up prometheus-client's multiprocess mode before ``workers`` processes start.

    When ``$PROMETHEUS_MULTIPROC_DIR`` is already set (an operator's choice; prometheus-client
    then uses it even with one worker), that directory is used, created if missing and emptied
    of an earlier run's metric files, and None is returned. Otherwise, for ``workers > 1``, a
    fresh private temporary directory is created, the variable set to it, and the directory
    returned (remove it when the server stops); for one worker nothing is done (None).
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        stale = [p for p in path.iterdir() if _STALE.match(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.info("metrics: removed %d metric files of an earlier run from %s", len(stale), path)
        return None
    if workers <= 1:
        return None
    created = Path(tempfile.mkdtemp(prefix="stealproof-metrics-"))
    os.environ[MULTIPROC_ENV] = str(created)
    return created


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (none of ours are; its counters are kept, as they
    must be: they count requests that were answered)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        _mark_dead(pid, path)  # type: ignore[no-untyped-call]
