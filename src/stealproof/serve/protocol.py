"""Open Inference Protocol (KServe V2) codec with Triton's binary tensor data extension.

A pure codec, no HTTP framework in it: the gateway's routes hand it the raw body and the
``Inference-Header-Content-Length`` header and get back a validated batch of images, or a
:class:`ProtocolError` that carries the HTTP status to answer with. Responses are encoded as
JSON tensors or as a JSON header followed by raw little-endian tensor bytes, so that
``tritonclient.http``, KServe's client and plain ``curl`` all work unchanged.

Request rules (statuses): body or batch over the limit → 413; not JSON, not an object, a bad
header length, a binary section whose size does not match, a missing field or a known field of
the wrong JSON type → 400; wrong input name, shape, datatype, NaN/inf, pixels outside [0, 1],
a data length that does not match the shape, an unknown or unsupported output → 422.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stealproof._validate import PIXEL_TOLERANCE
from stealproof.errors import InputValidationError

INPUT_NAME = "input"
OUTPUT_PROBS = "probabilities"
OUTPUT_LABELS = "labels"
HEADER_LENGTH = "Inference-Header-Content-Length"

#: Input datatypes the gateway accepts, with their little-endian numpy dtype.
INPUT_DTYPES: dict[str, str] = {"FP32": "<f4", "UINT8": "u1"}
#: Datatypes a response may carry (what :func:`decode_infer_response` reads).
RESPONSE_DTYPES: dict[str, str] = {
    "FP32": "<f4",
    "FP64": "<f8",
    "INT64": "<i8",
    "INT32": "<i4",
    "UINT8": "u1",
}
_JSON_SEPARATORS = (",", ":")
_SHOWN = 60  # characters of a client's value echoed in a message


class ProtocolError(InputValidationError):
    """A request (or response) that breaks the protocol; ``status`` is the HTTP status to send.

    400: malformed (not JSON, bad header length, binary size mismatch, missing field, wrong JSON
    type); 413: too large (body bytes or rows); 422: semantically invalid (input name, shape,
    datatype, NaN/inf, pixel range, data length, unknown output). 502: a malformed *response*
    (raised by :func:`decode_infer_response`).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    """The one input a model takes: its protocol name and per-row shape (C, H, W)."""

    name: str
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request.

    ``x`` is float32 [B, C, H, W], finite, in [0, 1] (UINT8 inputs divided by 255);
    ``binary_output`` says whether the client asked for the output as binary data;
    ``outputs`` are the requested output names (``()``: all).
    """

    x: Tensor
    request_id: str | None
    binary_output: bool
    outputs: tuple[str, ...]


def _show(value: object) -> str:
    """A client's value for a one-line message, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _one_line(err: BaseException) -> str:
    lines = str(err).splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header_length(value: int | str | None, total: int) -> int | None:
    """The JSON header's byte count from ``Inference-Header-Content-Length`` (``None``: all)."""
    if value is None:
        return None
    n: int
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 19:
            raise ProtocolError(f"{HEADER_LENGTH}: expected a byte count, got {_show(value)}")
        n = int(text)
    elif _is_int(value):
        n = value
    else:
        raise ProtocolError(f"{HEADER_LENGTH}: expected a byte count, got {_show(value)}")
    if n < 1 or n > total:
        raise ProtocolError(
            f"{HEADER_LENGTH}: expected 1 to {total} (the body's size in bytes), got {n}"
        )
    return n


def _load_json(raw: bytes, what: str, status: int = 400) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, depth
        raise ProtocolError(f"{what}: not valid JSON ({_one_line(err)})", status) from None


def _object(
    value: object, field: str, status: int = 400, *, optional: bool = True
) -> dict[str, Any]:
    """``value`` as a JSON object (``None`` → empty when ``optional``)."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{field}: expected an object, got {_json_type(value)}", status)
    return value


def _optional_bool(params: Mapping[str, Any], key: str, field: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(f"{field}.{key}: expected true or false, got {_show(value)}")
    return value


def _refuse_unsupported(params: Mapping[str, Any], field: str) -> None:
    """Refuse parameters of extensions the gateway does not offer (shared memory, classes)."""
    for key in params:
        if key.startswith("shared_memory"):
            raise ProtocolError(
                f"{field}.{key}: shared memory is not supported; send the tensor in the body",
                422,
            )
        if key == "classification":
            raise ProtocolError(
                f"{field}.classification: the classification extension is not supported", 422
            )


def _requested_outputs(
    doc: Mapping[str, Any], binary_default: bool, available: Sequence[str]
) -> tuple[tuple[str, ...], bool]:
    """(requested output names, whether any of them is to be sent as binary data).

    A per-output ``binary_data`` wins over the request's ``binary_data_output`` (as in Triton).
    """
    raw = doc.get("outputs")
    if raw is None:
        return (), binary_default
    if not isinstance(raw, list):
        raise ProtocolError(f"outputs: expected an array, got {_json_type(raw)}")
    names: list[str] = []
    binary = False
    for i, item in enumerate(raw):
        field = f"outputs[{i}]"
        out = _object(item, field, optional=False)
        name = out.get("name")
        if not isinstance(name, str):
            raise ProtocolError(
                f"{field}.name: expected a string, got {_json_type(name)}"
                if name is not None
                else f"{field}.name: missing"
            )
        if name not in available:
            raise ProtocolError(
                f"{field}.name: unknown output {_show(name)}; available: {', '.join(available)}",
                422,
            )
        params = _object(out.get("parameters"), f"{field}.parameters")
        flag = _optional_bool(params, "binary_data", f"{field}.parameters")
        _refuse_unsupported(params, f"{field}.parameters")
        binary = binary or (flag if flag is not None else binary_default)
        if name not in names:
            names.append(name)
    if not names:
        return (), binary_default
    return tuple(names), binary


def _check_shape(inp: Mapping[str, Any], spec: InputSpec, max_rows: int) -> tuple[int, ...]:
    shape = inp.get("shape")
    if shape is None:
        raise ProtocolError("inputs[0].shape: missing")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise ProtocolError(f"inputs[0].shape: expected an array of integers, got {_show(shape)}")
    c, h, w = spec.shape
    if len(shape) != 4 or tuple(shape[1:]) != spec.shape:
        raise ProtocolError(
            f"inputs[0].shape: expected [batch, {c}, {h}, {w}], got {_show(shape)}", 422
        )
    rows = shape[0]
    if rows < 1:
        raise ProtocolError(f"inputs[0].shape: expected at least 1 row, got {rows}", 422)
    if rows > max_rows:
        raise ProtocolError(
            f"inputs[0].shape: {rows} rows, over the limit of {max_rows} per request", 413
        )
    return (rows, c, h, w)


def _pixels_fp32(arr: np.ndarray[Any, Any], field: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Finite values in [0, 1] (within the library's round-off tolerance) as float32."""
    finite = np.isfinite(arr)
    if not bool(finite.all()):
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - int(finite.sum())) - n_nan
        raise ProtocolError(f"{field}: contains non-finite values ({n_nan} NaN, {n_inf} inf)", 422)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -PIXEL_TOLERANCE or hi > 1 + PIXEL_TOLERANCE:
        raise ProtocolError(
            f"{field}: FP32 pixels must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]", 422
        )
    return arr.astype(np.float32)


def _scale_uint8(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    return arr.astype(np.float32) / np.float32(255.0)


def _leaves(data: list[Any], shape: tuple[int, ...], field: str) -> list[Any]:
    """The values of ``data``, flat or nested exactly as ``shape``, in row-major order.

    Nesting is checked level by level with C-speed passes (no per-value Python loop).
    """
    count = math.prod(shape)
    if not data or type(data[0]) is not list:
        if len(data) != count:
            raise ProtocolError(
                f"{field}: expected {count} values, flat or nested as {list(shape)}, "
                f"got {len(data)}",
                422,
            )
        return data
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        if set(map(type, level)) != {list} or set(map(len, level)) != {size}:
            raise ProtocolError(
                f"{field}: expected {count} values, flat or nested as {list(shape)}; "
                f"the arrays at depth {depth} do not all hold {size} entries",
                422,
            )
        level = list(chain.from_iterable(level))
    return level


def _json_data(
    data: object, shape: tuple[int, ...], datatype: str
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Pixels from a JSON ``data`` array, flat or nested to ``shape``; numbers only."""
    field = "inputs[0].data"
    if not isinstance(data, list):
        raise ProtocolError(f"{field}: expected an array of numbers, got {_json_type(data)}")
    values = _leaves(data, shape, field)
    kinds = set(map(type, values))
    allowed = {int} if datatype == "UINT8" else {int, float}
    odd = kinds - allowed
    if odd:
        got = ", ".join(sorted({_json_type(next(v for v in values if type(v) is k)) for k in odd}))
        want = "integers 0..255" if datatype == "UINT8" else "numbers"
        raise ProtocolError(f"{field}: {datatype} data must hold {want} only, got {got}", 422)
    try:
        arr = np.array(values, dtype=np.float64).reshape(shape)
    except OverflowError:
        raise ProtocolError(f"{field}: a value is too large for {datatype}", 422) from None
    if datatype == "FP32":
        return _pixels_fp32(arr, field)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 255:
        raise ProtocolError(
            f"{field}: UINT8 values must lie in [0, 255], got values in [{lo:.6g}, {hi:.6g}]",
            422,
        )
    return _scale_uint8(arr)


def _binary_data(
    section: memoryview,
    size: int,
    shape: tuple[int, ...],
    datatype: str,
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Pixels from the binary section (little-endian, row major), without Python lists."""
    itemsize = np.dtype(INPUT_DTYPES[datatype]).itemsize
    count = math.prod(shape)
    expected = count * itemsize
    if size != expected:
        raise ProtocolError(
            f"inputs[0].parameters.binary_data_size: expected {expected} bytes "
            f"({count} values of {datatype}), got {size}",
            422,
        )
    if section.nbytes != size:
        raise ProtocolError(
            f"binary data: {section.nbytes} bytes follow the JSON header, inputs[0] declares {size}"
        )
    arr = np.frombuffer(section, dtype=INPUT_DTYPES[datatype]).reshape(shape)
    if datatype == "FP32":
        return _pixels_fp32(arr, "inputs[0] (binary data)")
    return _scale_uint8(arr)


def parse_infer_request(
    body: bytes,
    header_length: int | str | None,
    spec: InputSpec,
    *,
    max_rows: int,
    max_bytes: int | None = None,
    available_outputs: Sequence[str] = (OUTPUT_PROBS, OUTPUT_LABELS),
) -> InferRequest:
    """Validate an infer request body (JSON, or JSON header + binary section) into a batch.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (``None`` when absent:
    the whole body is JSON). ``available_outputs`` are the output names the model offers (pass
    the model's one output; requests naming others are refused with 422). Cheap checks run
    first: the body size, the header, the JSON structure and the row count are checked before
    any tensor data is decoded. Raises :class:`ProtocolError` and nothing else.
    """
    view = memoryview(body)
    total = view.nbytes
    if max_bytes is not None and total > max_bytes:
        raise ProtocolError(
            f"request body: {total} bytes, over the limit of {max_bytes} bytes", 413
        )
    n_header = _header_length(header_length, total)
    header = view if n_header is None else view[:n_header]
    section = view[n_header:] if n_header is not None else view[total:]
    raw = body if n_header is None and isinstance(body, bytes) else header.tobytes()
    doc = _load_json(raw, "request body")
    if not isinstance(doc, dict):
        raise ProtocolError(f"request body: expected a JSON object, got {_json_type(doc)}")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id: expected a string, got {_json_type(request_id)}")
    params = _object(doc.get("parameters"), "parameters")
    binary_default = bool(_optional_bool(params, "binary_data_output", "parameters"))

    inputs = doc.get("inputs")
    if inputs is None:
        raise ProtocolError("inputs: missing")
    if not isinstance(inputs, list):
        raise ProtocolError(f"inputs: expected an array, got {_json_type(inputs)}")
    if len(inputs) != 1:
        raise ProtocolError(
            f"inputs: expected exactly one input named {spec.name!r}, got {len(inputs)}", 422
        )
    inp = _object(inputs[0], "inputs[0]", optional=False)
    name = inp.get("name")
    if name is None:
        raise ProtocolError("inputs[0].name: missing")
    if not isinstance(name, str):
        raise ProtocolError(f"inputs[0].name: expected a string, got {_json_type(name)}")
    if name != spec.name:
        raise ProtocolError(f"inputs[0].name: expected {spec.name!r}, got {_show(name)}", 422)
    shape = _check_shape(inp, spec, max_rows)
    datatype = inp.get("datatype")
    if datatype is None:
        raise ProtocolError("inputs[0].datatype: missing")
    if not isinstance(datatype, str):
        raise ProtocolError(f"inputs[0].datatype: expected a string, got {_json_type(datatype)}")
    if datatype not in INPUT_DTYPES:
        raise ProtocolError(
            f"inputs[0].datatype: expected FP32 or UINT8, got {_show(datatype)}", 422
        )
    in_params = _object(inp.get("parameters"), "inputs[0].parameters")
    _refuse_unsupported(in_params, "inputs[0].parameters")
    outputs, binary_output = _requested_outputs(doc, binary_default, available_outputs)

    size = in_params.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size < 0:
            raise ProtocolError(
                f"inputs[0].parameters.binary_data_size: expected a byte count, got {_show(size)}"
            )
        if "data" in inp:
            raise ProtocolError(
                "inputs[0]: give either data or parameters.binary_data_size, not both"
            )
        if n_header is None:
            raise ProtocolError(
                f"inputs[0].parameters.binary_data_size: binary data needs the {HEADER_LENGTH} "
                "header"
            )
        pixels = _binary_data(section, size, shape, datatype)
    else:
        if "data" not in inp:
            raise ProtocolError("inputs[0].data: missing (or parameters.binary_data_size)")
        if section.nbytes:
            raise ProtocolError(
                f"binary data: {section.nbytes} bytes follow the JSON header "
                "but no input declares binary_data_size"
            )
        pixels = _json_data(inp["data"], shape, datatype)
    return InferRequest(
        x=torch.from_numpy(np.ascontiguousarray(pixels)),
        request_id=request_id,
        binary_output=binary_output,
        outputs=outputs,
    )


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    output_name: str,
    tensor: Tensor,
    binary: bool,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer response carrying ``tensor`` as output ``output_name``.

    Floating tensors go out as FP32, integer ones (labels) as INT64. With ``binary`` the body
    is a JSON header followed by the raw little-endian bytes and the headers include
    ``Inference-Header-Content-Length``; otherwise it is one JSON document.
    """
    t = tensor.detach().cpu()
    if t.is_complex():
        raise ValueError(f"tensor: cannot send dtype {t.dtype} over the protocol")
    if t.is_floating_point():
        datatype, arr = "FP32", np.ascontiguousarray(t.float().numpy(), dtype="<f4")
    else:
        datatype, arr = "INT64", np.ascontiguousarray(t.long().numpy(), dtype="<i8")
    output: dict[str, Any] = {"name": output_name, "datatype": datatype, "shape": list(arr.shape)}
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = [output]
    if binary:
        raw = arr.tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps(doc, separators=_JSON_SEPARATORS).encode()
        headers = {
            HEADER_LENGTH: str(len(header)),
            "Content-Type": "application/octet-stream",
        }
        return header + raw, headers
    output["data"] = arr.ravel().tolist()
    body = json.dumps(doc, separators=_JSON_SEPARATORS, allow_nan=False).encode()
    return body, {"Content-Type": "application/json"}


def _response_shape(value: object, field: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(d) and d >= 0 for d in value):
        raise ProtocolError(f"{field}.shape: expected an array of sizes, got {_show(value)}", 502)
    return tuple(value)


def decode_infer_response(
    body: bytes, header_length: int | str | None
) -> dict[str, np.ndarray[Any, Any]]:
    """The outputs of an infer response by name, as numpy arrays of their declared shape.

    The client side of :func:`encode_infer_response` (JSON or binary extension). A malformed
    response raises :class:`ProtocolError` with status 502.
    """
    view = memoryview(body)
    try:
        n_header = _header_length(header_length, view.nbytes)
    except ProtocolError as err:
        raise ProtocolError(f"response: {err}", 502) from None
    header = view if n_header is None else view[:n_header]
    section = view[n_header:] if n_header is not None else view[view.nbytes :]
    doc = _load_json(header.tobytes(), "response", 502)
    if not isinstance(doc, dict):
        raise ProtocolError(f"response: expected a JSON object, got {_json_type(doc)}", 502)
    raw_outputs = doc.get("outputs")
    if not isinstance(raw_outputs, list):
        raise ProtocolError(f"response.outputs: expected an array, got {_show(raw_outputs)}", 502)
    result: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for i, item in enumerate(raw_outputs):
        field = f"response.outputs[{i}]"
        out = _object(item, field, 502, optional=False)
        name, datatype = out.get("name"), out.get("datatype")
        if not isinstance(name, str):
            raise ProtocolError(f"{field}.name: expected a string, got {_show(name)}", 502)
        if not isinstance(datatype, str) or datatype not in RESPONSE_DTYPES:
            raise ProtocolError(f"{field}.datatype: unsupported {_show(datatype)}", 502)
        shape = _response_shape(out.get("shape"), field)
        dtype = np.dtype(RESPONSE_DTYPES[datatype])
        count = math.prod(shape)
        size = _object(out.get("parameters"), f"{field}.parameters", 502).get("binary_data_size")
        if size is not None:
            if not _is_int(size) or size != count * dtype.itemsize:
                raise ProtocolError(
                    f"{field}.parameters.binary_data_size: expected {count * dtype.itemsize}, "
                    f"got {_show(size)}",
                    502,
                )
            if offset + size > section.nbytes:
                raise ProtocolError(f"{field}: the binary section is too short", 502)
            arr = np.frombuffer(section[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
        else:
            try:
                arr = np.asarray(out.get("data"), dtype=dtype).reshape(shape)
            except (ValueError, TypeError, OverflowError) as err:
                raise ProtocolError(f"{field}.data: {_one_line(err)}", 502) from None
        result[name] = arr.astype(dtype.newbyteorder("="))
    if offset != section.nbytes:
        raise ProtocolError(
            f"response: {section.nbytes - offset} bytes of binary data left over", 502
        )
    return result


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``: the server's name, version and the protocol extensions it offers."""
    return {"name": "stealproof", "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(
    name: str,
    versions: list[str],
    spec: InputSpec,
    num_classes: int,
    output: str,
    *,
    platform: str = "pytorch",
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the input FP32 [-1, C, H, W] and the released output.

    ``output`` is :data:`OUTPUT_PROBS` (FP32 [-1, K]) or :data:`OUTPUT_LABELS` (INT64 [-1]);
    ``parameters.num_classes`` carries K for both, since a label output's shape cannot.
    """
    if output == OUTPUT_PROBS:
        out = {"name": output, "datatype": "FP32", "shape": [-1, num_classes]}
    elif output == OUTPUT_LABELS:
        out = {"name": output, "datatype": "INT64", "shape": [-1]}
    else:
        raise InputValidationError(
            f"output: expected {OUTPUT_PROBS!r} or {OUTPUT_LABELS!r}, got {output!r}"
        )
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [{"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.shape]}],
        "outputs": [out],
        "parameters": {"num_classes": num_classes},
    }


def error_body(message: str) -> dict[str, str]:
    """The protocol's error body."""
    return {"error": message}
