"""The Open Inference Protocol (KServe V2) routes: thin wrappers of the gateway and the codec."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from stealproof import __version__
from stealproof.serve import protocol
from stealproof.serve.deps import GatewayDep, PredictingClientDep
from stealproof.serve.errors import TooLarge
from stealproof.serve.gateway import Gateway
from stealproof.serve.metrics import note_rows
from stealproof.serve.pipeline import Pipeline

router = APIRouter(prefix="/v2", tags=["inference"])


class ErrorBody(BaseModel):
    """The protocol's error body."""

    error: str


class TensorIn(BaseModel):
    """An input tensor (JSON data; with the binary extension, ``parameters.binary_data_size``)."""

    name: str
    shape: list[int]
    datatype: Literal["FP32", "UINT8"]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class OutputRequest(BaseModel):
    """A requested output; ``parameters.binary_data`` asks for binary data."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequestBody(BaseModel):
    """An inference request (one input named ``input``, shape ``[B, C, H, W]``)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorIn] = Field(min_length=1, max_length=1)
    outputs: list[OutputRequest] | None = None


class TensorOut(BaseModel):
    """An output tensor (``data`` absent when sent as binary)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    """An inference response."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[TensorOut]


class TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    parameters: dict[str, int] | None = Field(
        None, description="num_classes: K (a label-mode output's shape cannot carry it)"
    )


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class Live(BaseModel):
    live: bool


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


@router.get("", response_model=ServerMetadata)
def server_metadata() -> dict[str, Any]:
    """Server metadata, with the protocol extensions it speaks."""
    return protocol.server_metadata(__version__)


@router.get("/health/live", response_model=Live)
def live() -> dict[str, bool]:
    """The process answers."""
    return {"live": True}


@router.get("/health/ready", response_model=Ready)
def ready(gateway: GatewayDep) -> dict[str, bool]:
    """Models are loaded and the database is migrated (the app does not start otherwise)."""
    return {"ready": bool(gateway.models)}


def _metadata(gateway: GatewayDep, name: str, version: str | None) -> dict[str, Any]:
    m = gateway.model(name, version)
    return protocol.model_metadata(
        m.name,
        gateway.versions(m.name) if version is None else [m.version],
        m.spec,
        m.num_classes,
        m.output_name,
    )


@router.get("/models/{name}", response_model=ModelMetadata, responses=_errors(404))
def model_metadata(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """A model's metadata: input ``FP32 [-1, C, H, W]``, output ``[-1, K]``."""
    return _metadata(gateway, name, None)


@router.get(
    "/models/{name}/versions/{version}", response_model=ModelMetadata, responses=_errors(404)
)
def model_version_metadata(name: str, version: str, gateway: GatewayDep) -> dict[str, Any]:
    """Metadata of one version of a model."""
    return _metadata(gateway, name, version)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=_errors(404))
def model_ready(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Whether the model is ready (it is once the gateway started)."""
    return {"name": gateway.model(name).name, "ready": True}


@router.get(
    "/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=_errors(404)
)
def model_version_ready(name: str, version: str, gateway: GatewayDep) -> dict[str, Any]:
    """Whether one version of the model is ready."""
    return {"name": gateway.model(name, version).name, "ready": True}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/InferRequestBody"},
            },
        },
    },
}


def _pipeline(request: Request, gateway: Gateway) -> Pipeline:
    """The app's pipeline thread (started by the first prediction, stopped by the lifespan)."""
    pipeline: Pipeline | None = request.app.state.pipeline
    if pipeline is None:
        batching = gateway.settings.batching
        pipeline = request.app.state.pipeline = Pipeline(
            gateway, max_wait=batching.max_wait_ms / 1000, max_rows=batching.max_rows
        )
    return pipeline


async def _delivered(gateway: Gateway, log_id: int) -> None:
    """Note the delivery (async: the gateway only queues the mark, no thread is needed)."""
    gateway.mark_delivered(log_id)


async def _infer(
    request: Request,
    gateway: GatewayDep,
    client: PredictingClientDep,
    name: str,
    version: str | None,
    header_length: str | None,
) -> Response:
    served = gateway.model(name, version)
    settings = gateway.settings
    pipeline = _pipeline(request, gateway)
    with pipeline.receiving():  # a turn of the pipeline may wait for this request
        body = await _read_body(request, settings.max_body_bytes)
        parsed = protocol.parse_infer_request(
            body,
            header_length,
            served.spec,
            max_rows=settings.max_rows_per_request,
            max_bytes=settings.max_body_bytes,
            available_outputs=(served.output_name,),
        )
        note_rows(request, int(parsed.x.shape[0]))  # refused from here on: rows are known
        gateway.precheck(client, int(parsed.x.shape[0]))
    # no longer "arriving" once queued: a turn never waits for a request it already has
    answer = await asyncio.wrap_future(pipeline.submit(client, served, parsed.x))
    note_rows(request, answer.rows, served=True)
    content, headers = protocol.encode_infer_response(
        model_name=served.name,
        model_version=served.version,
        request_id=parsed.request_id,
        output_name=served.output_name,
        tensor=answer.tensor,
        binary=parsed.binary_output,
    )
    media = headers.pop("content-type", headers.pop("Content-Type", "application/json"))
    # runs once the response was sent: a worker that dies before leaves the row undelivered
    delivered = BackgroundTask(_delivered, gateway, answer.log_id)
    return Response(content=content, media_type=media, headers=headers, background=delivered)


_INFER_RESPONSES = {
    200: {"model": InferResponseBody},
    **_errors(400, 401, 403, 404, 413, 422, 429),
}


@router.post(
    "/models/{name}/infer",
    response_model=InferResponseBody,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_DOC,
)
async def infer(
    name: str,
    request: Request,
    gateway: GatewayDep,
    client: PredictingClientDep,
    inference_header_content_length: Annotated[
        str | None, Header(alias=protocol.HEADER_LENGTH, include_in_schema=False)
    ] = None,
) -> Response:
    """Run an inference request (JSON, or Triton's binary tensor extension)."""
    return await _infer(request, gateway, client, name, None, inference_header_content_length)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponseBody,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_DOC,
)
async def infer_version(
    name: str,
    version: str,
    request: Request,
    gateway: GatewayDep,
    client: PredictingClientDep,
    inference_header_content_length: Annotated[
        str | None, Header(alias=protocol.HEADER_LENGTH, include_in_schema=False)
    ] = None,
) -> Response:
    """Run an inference request on one version of a model."""
    return await _infer(request, gateway, client, name, version, inference_header_content_length)
