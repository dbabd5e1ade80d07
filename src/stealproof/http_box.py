"""A black box behind a stealproof gateway: the ``BlackBox`` interface over HTTP.

:class:`HTTPBlackBox` speaks the Open Inference Protocol (KServe V2) with httpx, so every
attack that runs against an in-process :class:`~stealproof.oracle.BlackBox` also runs against a
live gateway. Refusals map to the same exceptions the attacks already stop on: 403 →
:class:`~stealproof.errors.ClientBlockedError`, 429 →
:class:`~stealproof.errors.BudgetExhaustedError`.
"""

from __future__ import annotations

import json
import logging
import numbers
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stealproof._validate import check_images
from stealproof.errors import (
    BudgetExhaustedError,
    ClientBlockedError,
    ConfigError,
    InputValidationError,
    StealproofError,
)
from stealproof.oracle import MeterReading
from stealproof.serve.protocol import (
    HEADER_LENGTH,
    OUTPUT_LABELS,
    OUTPUT_PROBS,
    ProtocolError,
    decode_infer_response,
)

log = logging.getLogger(__name__)

_SHOWN = 200  # characters of a server's non-JSON error body quoted in a message


class GatewayResponseError(StealproofError):
    """The gateway answered with an error (or not at all); ``status`` is ``None`` then."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _count(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InputValidationError(f"{name}: expected an int ≥ {low}, got {value!r}")
    return int(value)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputValidationError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def _server_message(response: httpx.Response) -> str:
    """The ``error`` text of an error response (or the start of its body)."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    text = response.text.strip().replace("\n", " ")
    return text[:_SHOWN] if text else f"HTTP {response.status_code}"


def _metadata_dims(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise GatewayResponseError(f"model metadata: {what}: expected a shape, got {value!r}")
    return value


class HTTPBlackBox:
    """The black box of a model served by a stealproof gateway (Open Inference Protocol).

    Parameters
    ----------
    url: the gateway's base URL, e.g. ``http://127.0.0.1:8000``.
    api_key: the client's API key (sent as ``Authorization: Bearer``; never logged).
    model: the served model's name; ``version`` pins a version (``None``: the server's choice).
    budget: rows this box may ask for (``None``: unlimited; the gateway's quota still applies).
    batch_size: rows per HTTP request (keep it at or below the gateway's per-request limit).
    binary: send FP32 pixels and receive outputs with Triton's binary tensor extension
        (``False``: plain JSON both ways).
    timeout: seconds per HTTP request.
    client_id: how this box names its client in errors and meter readings.
    transport: an httpx transport (tests pass ``httpx.MockTransport``).

    The model's metadata is read at construction: ``input_shape`` (C, H, W), ``num_classes``
    and the released output (``probabilities`` FP32 [B, K] or ``labels`` INT64 [B], the latter
    answered one-hot like an in-process label-mode ``BlackBox``).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        model: str,
        *,
        version: str | None = None,
        budget: int | None = None,
        batch_size: int = 256,
        binary: bool = True,
        timeout: float = 30.0,
        client_id: str = "remote",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = _text(url, "url").rstrip("/")
        key = _text(api_key, "api_key")
        self.model = _text(model, "model")
        self.version = None if version is None else _text(version, "version")
        self.budget = None if budget is None else _count(budget, "budget", 0)
        self.batch_size = _count(batch_size, "batch_size", 1)
        if not isinstance(binary, bool):
            raise InputValidationError(f"binary: expected true or false, got {binary!r}")
        self.binary = binary
        given: object = timeout
        if isinstance(given, bool) or not isinstance(given, int | float) or not given > 0:
            raise InputValidationError(f"timeout: expected seconds > 0, got {timeout!r}")
        self.client_id = _text(client_id, "client_id")
        self._rows = 0
        path = f"/v2/models/{quote(self.model, safe='')}"
        if self.version is not None:
            path += f"/versions/{quote(self.version, safe='')}"
        self._model_path = path
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=float(timeout),
            transport=transport,
        )
        try:
            self._read_metadata()
        except BaseException:
            self._client.close()
            raise

    # -- metadata ---------------------------------------------------------------------------

    def _read_metadata(self) -> None:
        response = self._send("GET", self._model_path)
        if response.status_code == 404:
            raise ConfigError(
                f"model: the gateway at {self.url} has no model {self.model!r}"
                + (f" version {self.version!r}" if self.version is not None else "")
                + f" (the server said: {_server_message(response)})"
            )
        self._raise_for_status(response, 0)
        try:
            meta = response.json()
        except ValueError:
            raise GatewayResponseError("model metadata: not valid JSON") from None
        if not isinstance(meta, dict):
            raise GatewayResponseError("model metadata: expected a JSON object")
        inputs, outputs = meta.get("inputs"), meta.get("outputs")
        if not (isinstance(inputs, list) and len(inputs) == 1 and isinstance(inputs[0], dict)):
            raise GatewayResponseError("model metadata: expected exactly one input")
        if not (isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], dict)):
            raise GatewayResponseError("model metadata: expected exactly one output")
        inp, out = inputs[0], outputs[0]
        dims = _metadata_dims(inp.get("shape"), "inputs[0].shape")
        if len(dims) != 4 or any(d < 1 for d in dims[1:]):
            raise GatewayResponseError(
                f"model metadata: inputs[0].shape: expected [-1, C, H, W], got {dims}"
            )
        name = out.get("name")
        if name not in (OUTPUT_PROBS, OUTPUT_LABELS):
            raise GatewayResponseError(f"model metadata: unknown output {name!r}")
        out_dims = _metadata_dims(out.get("shape"), "outputs[0].shape")
        params = meta.get("parameters")
        k: object = params.get("num_classes") if isinstance(params, dict) else None
        if name == OUTPUT_PROBS and len(out_dims) == 2:
            k = out_dims[1]
        if not isinstance(k, int) or isinstance(k, bool) or k < 2:
            raise GatewayResponseError(
                f"model metadata: cannot tell the number of classes of output {name!r}"
            )
        self.input_name = str(inp.get("name", "input"))
        self.output_name: str = name
        self.input_shape: tuple[int, ...] | None = (dims[1], dims[2], dims[3])
        self.num_classes: int | None = k

    # -- the BlackBox interface -----------------------------------------------------------

    @property
    def queries_used(self) -> int:
        """Rows the gateway answered through this box."""
        return self._rows

    @property
    def budget_left(self) -> int | None:
        """Rows left in this box's own budget (``None`` when unlimited)."""
        return None if self.budget is None else self.budget - self._rows

    @property
    def flagged_rows(self) -> int:
        """Always 0: the gateway never tells a client that its rows were flagged."""
        return 0

    def policy_status(self) -> None:
        """``None``: the policy's view of a client stays on the server."""
        return None

    def meter(self) -> MeterReading:
        """Rows answered; distortion is measured by the gateway, not the client, so 0.0 here."""
        return MeterReading(self.client_id, self._rows, self.budget, 0.0, 0.0)

    def query(self, x: Tensor) -> Tensor:
        """Answer images [B, C, H, W] in [0, 1] with the released posteriors [B, K] (float32).

        Sent in chunks of ``batch_size`` rows; a chunk the gateway answered stays counted even
        when a later one is refused. Raises ``BudgetExhaustedError`` before sending when the
        batch does not fit this box's budget, and on HTTP 429 (quota spent);
        ``ClientBlockedError`` on 403; ``ConfigError`` on 401 (the key); ``GatewayResponseError``
        on any other error status, a malformed answer or an unreachable gateway.
        """
        x = check_images(x, "x", shape=self.input_shape)
        n = int(x.shape[0])
        if self.budget is not None and self._rows + n > self.budget:
            raise BudgetExhaustedError(self._rows, self.budget, n)
        pixels = x.detach().cpu().to(torch.float32).contiguous()
        parts = []
        for start in range(0, n, self.batch_size):
            chunk = pixels[start : start + self.batch_size]
            parts.append(self._infer(chunk, n - start))
            self._rows += int(chunk.shape[0])
        return torch.cat(parts)

    def me(self) -> dict[str, Any]:
        """This client's usage, quota and standing (``GET /v1/clients/me``)."""
        response = self._send("GET", "/v1/clients/me")
        self._raise_for_status(response, 0)
        try:
            doc = response.json()
        except ValueError:
            raise GatewayResponseError("/v1/clients/me: not valid JSON") from None
        if not isinstance(doc, dict):
            raise GatewayResponseError("/v1/clients/me: expected a JSON object")
        return doc

    # -- HTTP -------------------------------------------------------------------------------

    def _request(self, chunk: Tensor) -> tuple[bytes, dict[str, str]]:
        """Body and headers of an infer request for ``chunk`` (binary extension or JSON)."""
        arr = np.ascontiguousarray(chunk.numpy(), dtype="<f4")
        tensor: dict[str, Any] = {
            "name": self.input_name,
            "shape": list(arr.shape),
            "datatype": "FP32",
        }
        doc = {
            "inputs": [tensor],
            "outputs": [{"name": self.output_name, "parameters": {"binary_data": self.binary}}],
        }
        if self.binary:
            raw = arr.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps(doc, separators=(",", ":")).encode()
            return header + raw, {
                HEADER_LENGTH: str(len(header)),
                "Content-Type": "application/octet-stream",
            }
        tensor["data"] = arr.ravel().tolist()
        body = json.dumps(doc, separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json"}

    def _infer(self, chunk: Tensor, remaining: int) -> Tensor:
        body, headers = self._request(chunk)
        response = self._send("POST", f"{self._model_path}/infer", content=body, headers=headers)
        self._raise_for_status(response, remaining)
        try:
            outputs = decode_infer_response(response.content, response.headers.get(HEADER_LENGTH))
        except ProtocolError as err:
            raise GatewayResponseError(f"malformed infer response: {err}", 502) from None
        b = int(chunk.shape[0])
        arr = outputs.get(self.output_name)
        if arr is None:
            raise GatewayResponseError(
                f"malformed infer response: no output {self.output_name!r}", 502
            )
        k = self.num_classes
        assert k is not None  # set from the metadata
        if self.output_name == OUTPUT_LABELS:
            labels = arr.reshape(-1) if arr.ndim == 2 and arr.shape[1] == 1 else arr
            if labels.shape != (b,) or labels.dtype.kind not in "iu":
                raise GatewayResponseError(
                    f"malformed infer response: expected {b} labels, got shape {list(arr.shape)}",
                    502,
                )
            if b and (int(labels.min()) < 0 or int(labels.max()) >= k):
                raise GatewayResponseError(
                    f"malformed infer response: labels outside [0, {k - 1}]", 502
                )
            return F.one_hot(torch.from_numpy(labels.astype(np.int64)), k).to(torch.float32)
        if arr.shape != (b, k):
            raise GatewayResponseError(
                f"malformed infer response: expected shape [{b}, {k}], got {list(arr.shape)}",
                502,
            )
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise GatewayResponseError(
                f"cannot reach the gateway at {self.url}: {type(err).__name__}: {err}"
            ) from None

    def _raise_for_status(self, response: httpx.Response, remaining: int) -> None:
        """Map an error status to the exception an attack (or a user) understands."""
        status = response.status_code
        if status < 400:
            return
        message = _server_message(response)
        log.debug("gateway %s answered %d: %s", self.url, status, message)
        if status == 401:
            raise ConfigError(
                f"api key: the gateway at {self.url} refused it (the server said: {message})"
            )
        if status == 403:
            raise ClientBlockedError(self.client_id, message)
        if status == 429:
            raise BudgetExhaustedError(self._rows, self._rows, remaining)
        raise GatewayResponseError(f"gateway answered HTTP {status}: {message}", status)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> HTTPBlackBox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"HTTPBlackBox(url={self.url!r}, model={self.model!r}, used={self._rows}, "
            f"budget={self.budget}, client_id={self.client_id!r})"
        )
