"""The FastAPI app factory: ``create_app(settings)``; nothing is built at import time.

The lifespan opens the database (refusing an unmigrated one), loads every configured model with
its defense and policy, and puts the :class:`~stealproof.serve.gateway.Gateway` on
``app.state``. Errors become the protocol's ``{"error": "..."}`` body with their status.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stealproof import __version__
from stealproof.errors import InputValidationError
from stealproof.serve.db.engine import is_postgres, make_engine, make_sessionmaker
from stealproof.serve.db.migrate import check_migrated
from stealproof.serve.errors import GatewayError
from stealproof.serve.gateway import Gateway, load_model
from stealproof.serve.metrics import InferMetricsMiddleware, Metrics
from stealproof.serve.protocol import ProtocolError
from stealproof.serve.settings import ServeSettings, load_settings

log = logging.getLogger(__name__)

#: The environment variable ``stealproof serve --workers N`` passes the config path in.
CONFIG_ENV = "STEALPROOF_SERVE_CONFIG"
#: ... and the torch threads of each worker (a spawned worker starts with torch's default, one
#: thread per core: N workers would each use every core and spin against one another).
THREADS_ENV = "STEALPROOF_SERVE_THREADS"


def build_gateway(settings: ServeSettings, *, with_models: bool = True) -> tuple[Gateway, Any]:
    """Open the database (checked to be migrated) and load the models → (gateway, engine).

    ``with_models=False`` skips loading them, for administration that needs only the database.
    """
    engine = make_engine(
        settings.resolved_database_url(),
        sqlite_synchronous=settings.sqlite_synchronous,
        postgres_synchronous_commit=settings.postgres_synchronous_commit,
    )
    try:
        check_migrated(engine)
        models = (
            [load_model(ms, settings, i) for i, ms in enumerate(settings.models)]
            if with_models
            else []
        )
    except BaseException:
        engine.dispose()
        raise
    gateway = Gateway(
        settings,
        models,
        make_sessionmaker(engine),
        readers=make_sessionmaker(engine, write=False),
        is_postgres=is_postgres(engine),
    )
    return gateway, engine


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(settings: ServeSettings, *, gateway: Gateway | None = None) -> FastAPI:
    """The gateway app for ``settings`` (pass a ready ``gateway`` to skip loading in tests)."""
    from stealproof.serve.routes import admin, clients, metrics, ui, v2

    admin_key = settings.admin_key()  # a bad admin key fails here, before serving

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        if gateway is None:
            app.state.gateway, engine = build_gateway(settings)
        else:
            app.state.gateway = gateway
        app.state.metrics.attach(app.state.gateway)
        try:
            yield
        finally:
            pipeline = app.state.pipeline
            if pipeline is not None:
                app.state.pipeline = None
                pipeline.close()
            if engine is not None:
                engine.dispose()

    app = FastAPI(
        title="stealproof gateway",
        version=__version__,
        description="A defended classifier over the Open Inference Protocol (KServe V2).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.admin_key = admin_key
    app.state.pipeline = None  # the worker's Pipeline, started by the first prediction
    app.state.metrics = Metrics(lambda: _read_session(app))
    if gateway is not None:
        app.state.gateway = gateway  # usable without running the lifespan (schema tests)
        app.state.metrics.attach(gateway)
    app.add_middleware(InferMetricsMiddleware)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(ProtocolError)
    async def _protocol_error(_: Request, exc: ProtocolError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(InputValidationError)
    async def _input_error(_: Request, exc: InputValidationError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    app.include_router(v2.router)
    app.include_router(clients.router)
    app.include_router(admin.router)
    app.include_router(ui.router)
    app.include_router(metrics.router)
    return app


def _read_session(app: FastAPI) -> Any:
    """A read session of the app's gateway, None before the lifespan built it (metrics)."""
    gateway: Gateway | None = getattr(app.state, "gateway", None)
    return None if gateway is None else gateway.read_session()


def app_from_env() -> FastAPI:
    """The app for uvicorn's worker processes: settings from ``$STEALPROOF_SERVE_CONFIG``, torch
    threads from ``$STEALPROOF_SERVE_THREADS`` (when set)."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return create_app(load_settings(os.environ[CONFIG_ENV]))
