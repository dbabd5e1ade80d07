"""The Open Inference Protocol codec: tritonclient round trips, every refusal, fuzzing.

Requests are built with tritonclient's own request builder (``InferInput.set_data_from_numpy``
+ ``InferenceServerClient.generate_request_body``, no server needed) and responses decoded with
``InferenceServerClient.parse_response_body``, so the codec speaks what the client speaks.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.http import (  # type: ignore[import-untyped]
    InferenceServerClient,
    InferInput,
    InferRequestedOutput,
)

from stealproof.errors import InputValidationError
from stealproof.serve.protocol import (
    HEADER_LENGTH,
    INPUT_NAME,
    OUTPUT_LABELS,
    OUTPUT_PROBS,
    InputSpec,
    ProtocolError,
    decode_infer_response,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
    server_metadata,
)

SPEC = InputSpec(INPUT_NAME, (1, 4, 4))
ROW = 16  # values per row of SPEC
MAX_ROWS = 8


def images(b: int = 3, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).random((b, *SPEC.shape), dtype=np.float32)


def triton_body(
    x: np.ndarray[Any, Any],
    *,
    datatype: str = "FP32",
    binary_input: bool = True,
    outputs: list[InferRequestedOutput] | None = None,
    request_id: str = "",
) -> tuple[bytes, int | None]:
    """What ``tritonclient.http`` would POST for ``x`` (body, Inference-Header-Content-Length)."""
    inp = InferInput(INPUT_NAME, list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary_input)
    body, n = InferenceServerClient.generate_request_body(
        [inp], outputs=outputs, request_id=request_id
    )
    return bytes(body), n


def doc_body(doc: object, section: bytes | None = None) -> tuple[bytes, int | None]:
    """A hand-made request: JSON (and a binary section with its header length)."""
    header = json.dumps(doc).encode()
    if section is None:
        return header, None
    return header + section, len(header)


def good_doc(b: int = 2, **changes: Any) -> dict[str, Any]:
    """A valid JSON request; ``changes`` replace fields of its one input."""
    inp: dict[str, Any] = {
        "name": INPUT_NAME,
        "shape": [b, *SPEC.shape],
        "datatype": "FP32",
        "data": images(b).ravel().tolist(),
    }
    inp.update(changes)
    return {"inputs": [inp]}


def parse(body: bytes, n: int | str | None, **kw: Any) -> Any:
    kw.setdefault("max_rows", MAX_ROWS)
    return parse_infer_request(body, n, SPEC, **kw)


def refused(body: bytes, n: int | str | None, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(body, n, **kw)
    err = info.value
    assert isinstance(err, InputValidationError)
    assert "\n" not in str(err)
    return err


# -- round trips with tritonclient ------------------------------------------------------------


@pytest.mark.parametrize("binary_input", [True, False])
@pytest.mark.parametrize(
    ("outputs", "binary_output"),
    [
        (None, True),  # tritonclient asks for binary outputs when none are named
        ([InferRequestedOutput(OUTPUT_PROBS)], True),  # binary_data defaults to True
        ([InferRequestedOutput(OUTPUT_PROBS, binary_data=False)], False),
    ],
)
def test_tritonclient_fp32_round_trip(
    binary_input: bool, outputs: list[InferRequestedOutput] | None, binary_output: bool
) -> None:
    x = images(5)
    body, n = triton_body(x, binary_input=binary_input, outputs=outputs, request_id="req-7")
    assert (n is not None) == binary_input
    req = parse(body, n)
    assert req.x.dtype == torch.float32
    assert tuple(req.x.shape) == (5, *SPEC.shape)
    assert np.array_equal(req.x.numpy(), x)
    assert req.request_id == "req-7"
    assert req.binary_output is binary_output
    assert req.outputs == ((OUTPUT_PROBS,) if outputs else ())

    y = torch.softmax(torch.randn(5, 10, generator=torch.Generator().manual_seed(1)), dim=1)
    out, headers = encode_infer_response(
        model_name="digits",
        model_version="1",
        request_id=req.request_id,
        output_name=OUTPUT_PROBS,
        tensor=y,
        binary=req.binary_output,
    )
    n_out = headers.get(HEADER_LENGTH)
    assert (n_out is not None) == binary_output
    assert headers["Content-Type"] == (
        "application/octet-stream" if binary_output else "application/json"
    )
    result = InferenceServerClient.parse_response_body(
        out, header_length=None if n_out is None else int(n_out)
    )
    got = result.as_numpy(OUTPUT_PROBS)
    assert got.dtype == np.float32
    assert np.abs(got - y.numpy()).max() <= 1e-6
    response = result.get_response()
    assert response["model_name"] == "digits"
    assert response["model_version"] == "1"
    assert response["id"] == "req-7"


@pytest.mark.parametrize("binary_input", [True, False])
def test_tritonclient_uint8_is_scaled(binary_input: bool) -> None:
    raw = np.random.default_rng(3).integers(0, 256, size=(4, *SPEC.shape), dtype=np.uint8)
    raw[0, 0, 0, :2] = (0, 255)
    body, n = triton_body(raw, datatype="UINT8", binary_input=binary_input)
    req = parse(body, n)
    assert req.x.dtype == torch.float32
    expected = raw.astype(np.float32) / np.float32(255)
    assert np.array_equal(req.x.numpy(), expected)
    assert float(req.x.min()) >= 0.0 and float(req.x.max()) == 1.0


def test_labels_round_trip_as_int64() -> None:
    labels = torch.tensor([3, 0, 9])
    for binary in (True, False):
        out, headers = encode_infer_response(
            model_name="m",
            model_version="2",
            request_id=None,
            output_name=OUTPUT_LABELS,
            tensor=labels,
            binary=binary,
        )
        n = headers.get(HEADER_LENGTH)
        result = InferenceServerClient.parse_response_body(
            out, header_length=None if n is None else int(n)
        )
        got = result.as_numpy(OUTPUT_LABELS)
        assert got.dtype == np.int64
        assert got.tolist() == [3, 0, 9]
        assert result.get_output(OUTPUT_LABELS)["datatype"] == "INT64"
        assert "id" not in result.get_response()
        assert decode_infer_response(out, n)[OUTPUT_LABELS].tolist() == [3, 0, 9]


def test_nested_and_flat_json_data_agree() -> None:
    x = images(2)
    flat = parse(*doc_body(good_doc(2, data=x.ravel().tolist())))
    nested = parse(*doc_body(good_doc(2, data=x.tolist())))
    ints = parse(*doc_body(good_doc(2, data=[0, 1] * ROW)))
    assert np.array_equal(flat.x.numpy(), x)
    assert np.array_equal(nested.x.numpy(), x)
    assert ints.x.reshape(-1).tolist() == [0.0, 1.0] * ROW


def test_request_outputs_and_binary_flags() -> None:
    doc = good_doc(1)
    doc["parameters"] = {"binary_data_output": True, "priority": 3, "anything": "else"}
    doc["outputs"] = [{"name": OUTPUT_PROBS}, {"name": OUTPUT_PROBS}]
    req = parse(*doc_body(doc))
    assert req.outputs == (OUTPUT_PROBS,) and req.binary_output
    # an explicit per-output binary_data wins over the request's default (as in Triton)
    doc["outputs"] = [{"name": OUTPUT_PROBS, "parameters": {"binary_data": False}}]
    assert not parse(*doc_body(doc)).binary_output
    doc["outputs"] = []
    assert parse(*doc_body(doc)).outputs == ()
    del doc["parameters"]
    assert not parse(*doc_body(doc)).binary_output
    # a model that releases labels offers only that output
    doc["outputs"] = [{"name": OUTPUT_LABELS}]
    req = parse(*doc_body(doc), available_outputs=(OUTPUT_LABELS,))
    assert req.outputs == (OUTPUT_LABELS,)


def test_header_length_as_string_and_bytes_like() -> None:
    body, n = triton_body(images(2))
    assert n is not None
    for header in (str(n), f" {n} "):
        assert parse(body, header).x.shape[0] == 2
    assert parse(bytearray(body), n).x.shape[0] == 2  # type: ignore[arg-type]


def test_pixel_round_off_is_tolerated_like_the_black_box() -> None:
    data = [1.0 + 1e-7, -1e-7] + [0.5] * (ROW - 2)
    req = parse(*doc_body(good_doc(1, data=data)))
    assert req.x.shape == (1, *SPEC.shape)


# -- refusals ---------------------------------------------------------------------------------


def binary_doc(
    x: np.ndarray[Any, Any], *, size: int | None = None, datatype: str = "FP32"
) -> tuple[bytes, int]:
    raw = x.tobytes()
    doc = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "shape": list(x.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw) if size is None else size},
            }
        ]
    }
    header = json.dumps(doc).encode()
    return header + raw, len(header)


def with_outputs(outputs: object) -> dict[str, Any]:
    doc = good_doc(1)
    doc["outputs"] = outputs
    return doc


def with_params(params: object) -> dict[str, Any]:
    doc = good_doc(1)
    doc["parameters"] = params
    return doc


def uint8_doc(data: list[Any]) -> dict[str, Any]:
    return good_doc(1, datatype="UINT8", data=data)


def nan_body() -> tuple[bytes, None]:
    text = json.dumps(good_doc(1, data=[0.5] * (ROW - 1) + [float("nan")]))
    return text.encode(), None


def inf_body() -> tuple[bytes, None]:
    """Standard JSON's way to an infinity: a literal out of float range."""
    text = json.dumps(good_doc(1, data=[0.5] * ROW)).replace("0.5", "1e999", 1)
    return text.encode(), None


GOOD_BINARY, GOOD_N = binary_doc(images(2))

# (id, body, header length, status, words the message must contain)
CASES: list[tuple[str, bytes, int | str | None, int, str]] = [
    ("not-json", b"{", None, 400, "not valid JSON"),
    ("not-utf8", b"\xff\xfe\x00{", None, 400, "not valid JSON"),
    ("not-object", b"[1, 2]", None, 400, "expected a JSON object"),
    ("header-nan", GOOD_BINARY, "abc", 400, HEADER_LENGTH),
    ("header-negative", GOOD_BINARY, "-4", 400, HEADER_LENGTH),
    ("header-zero", GOOD_BINARY, 0, 400, HEADER_LENGTH),
    ("header-too-long", GOOD_BINARY, len(GOOD_BINARY) + 1, 400, HEADER_LENGTH),
    ("header-float", GOOD_BINARY, 1.5, 400, HEADER_LENGTH),  # type: ignore[list-item]
    ("header-cuts-json", GOOD_BINARY, GOOD_N - 1, 400, "not valid JSON"),
    ("binary-missing-bytes", GOOD_BINARY[:-1], GOOD_N, 400, "binary data"),
    ("binary-leftover", GOOD_BINARY + b"\0", GOOD_N, 400, "binary data"),
    ("missing-inputs", *doc_body({"id": "x"}), 400, "inputs: missing"),
    ("inputs-not-array", *doc_body({"inputs": {}}), 400, "inputs: expected an array"),
    ("input-not-object", *doc_body({"inputs": [3]}), 400, "inputs[0]: expected an object"),
    ("input-null", *doc_body({"inputs": [None]}), 400, "inputs[0]: expected an object"),
    ("missing-name", *doc_body(good_doc(name=None)), 400, "inputs[0].name: missing"),
    ("name-not-string", *doc_body(good_doc(name=5)), 400, "inputs[0].name"),
    ("missing-shape", *doc_body(good_doc(shape=None)), 400, "inputs[0].shape: missing"),
    ("shape-strings", *doc_body(good_doc(shape=["2", 1, 4, 4])), 400, "inputs[0].shape"),
    ("shape-bools", *doc_body(good_doc(shape=[True, 1, 4, 4])), 400, "inputs[0].shape"),
    ("missing-datatype", *doc_body(good_doc(datatype=None)), 400, "inputs[0].datatype"),
    ("datatype-number", *doc_body(good_doc(datatype=1)), 400, "inputs[0].datatype"),
    ("missing-data", *doc_body(good_doc(data=None)), 400, "inputs[0].data"),
    ("data-string", *doc_body(good_doc(data="0.5")), 400, "inputs[0].data"),
    ("id-number", *doc_body({**good_doc(), "id": 7}), 400, "id: expected a string"),
    ("parameters-array", *doc_body(with_params([1])), 400, "parameters: expected an object"),
    (
        "binary-output-string",
        *doc_body(with_params({"binary_data_output": "yes"})),
        400,
        "binary_data_output",
    ),
    ("outputs-object", *doc_body(with_outputs({})), 400, "outputs: expected an array"),
    ("output-not-object", *doc_body(with_outputs(["probabilities"])), 400, "outputs[0]"),
    ("output-no-name", *doc_body(with_outputs([{}])), 400, "outputs[0].name: missing"),
    (
        "output-binary-string",
        *doc_body(with_outputs([{"name": OUTPUT_PROBS, "parameters": {"binary_data": 1}}])),
        400,
        "binary_data",
    ),
    (
        "output-params-array",
        *doc_body(with_outputs([{"name": OUTPUT_PROBS, "parameters": []}])),
        400,
        "outputs[0].parameters",
    ),
    ("two-inputs", *doc_body({"inputs": good_doc()["inputs"] * 2}), 422, "exactly one input"),
    ("no-inputs", *doc_body({"inputs": []}), 422, "exactly one input"),
    ("wrong-name", *doc_body(good_doc(name="pixels")), 422, "inputs[0].name: expected 'input'"),
    ("wrong-shape", *doc_body(good_doc(shape=[2, 1, 4, 5])), 422, "[batch, 1, 4, 4]"),
    ("three-dims", *doc_body(good_doc(shape=[2, 16])), 422, "inputs[0].shape"),
    ("zero-rows", *doc_body(good_doc(shape=[0, 1, 4, 4], data=[])), 422, "at least 1 row"),
    ("negative-rows", *doc_body(good_doc(shape=[-1, 1, 4, 4])), 422, "at least 1 row"),
    ("datatype-int64", *doc_body(good_doc(datatype="INT64")), 422, "expected FP32 or UINT8"),
    ("nan", *nan_body(), 422, "non-finite"),
    ("inf", *inf_body(), 422, "non-finite"),
    ("above-one", *doc_body(good_doc(1, data=[2.0] * ROW)), 422, "[0, 1]"),
    ("below-zero", *doc_body(good_doc(1, data=[-0.5] * ROW)), 422, "[0, 1]"),
    ("short-data", *doc_body(good_doc(2, data=[0.5] * (2 * ROW - 1))), 422, "expected 32 values"),
    ("long-data", *doc_body(good_doc(1, data=[0.5] * (ROW + 1))), 422, "expected 16 values"),
    (
        "ragged-nested",
        *doc_body(good_doc(1, data=[[[[0.5] * 4] * 3 + [[0.5] * 5]]])),
        422,
        "inputs[0].data",
    ),
    ("wrong-nesting", *doc_body(good_doc(1, data=[[0.5] * 4] * 4)), 422, "nested as [1, 1, 4, 4]"),
    ("bool-in-data", *doc_body(good_doc(1, data=[True] + [0.5] * (ROW - 1))), 422, "boolean"),
    ("string-in-data", *doc_body(good_doc(1, data=["0.5"] + [0.5] * (ROW - 1))), 422, "string"),
    ("null-in-data", *doc_body(good_doc(1, data=[None] + [0.5] * (ROW - 1))), 422, "null"),
    ("list-in-flat-data", *doc_body(good_doc(1, data=[[0.5]] + [0.5] * (ROW - 1))), 422, "array"),
    ("uint8-256", *doc_body(uint8_doc([256] + [0] * (ROW - 1))), 422, "[0, 255]"),
    ("uint8-negative", *doc_body(uint8_doc([-1] + [0] * (ROW - 1))), 422, "[0, 255]"),
    ("uint8-float", *doc_body(uint8_doc([3.5] + [0] * (ROW - 1))), 422, "integers 0..255"),
    ("uint8-huge", *doc_body(uint8_doc([10**400] + [0] * (ROW - 1))), 422, "inputs[0].data"),
    ("binary-size-wrong", *binary_doc(images(1), size=ROW * 4 - 4), 422, "binary_data_size"),
    ("binary-size-negative", *binary_doc(images(1), size=-1), 400, "binary_data_size"),
    ("binary-nan", *binary_doc(np.full((1, *SPEC.shape), np.nan, np.float32)), 422, "non-finite"),
    ("binary-above-one", *binary_doc(np.full((1, *SPEC.shape), 2, np.float32)), 422, "[0, 1]"),
    (
        "unknown-output",
        *doc_body(with_outputs([{"name": "logits"}])),
        422,
        "available: probabilities, labels",
    ),
    (
        "classification",
        *doc_body(with_outputs([{"name": OUTPUT_PROBS, "parameters": {"classification": 3}}])),
        422,
        "classification",
    ),
    (
        "shared-memory",
        *doc_body(good_doc(parameters={"shared_memory_region": "r"})),
        422,
        "shared memory",
    ),
    ("too-many-rows", *doc_body(good_doc(MAX_ROWS + 1)), 413, "over the limit of 8"),
]


@pytest.mark.parametrize(
    ("body", "header", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refusals(body: bytes, header: int | str | None, status: int, words: str) -> None:
    err = refused(body, header)
    assert err.status == status, str(err)
    assert words in str(err)


def test_binary_data_size_needs_the_header_and_no_data() -> None:
    body, n = binary_doc(images(1))
    header = body[:n]
    err = refused(header, None)
    assert err.status == 400 and HEADER_LENGTH in str(err)
    doc = json.loads(header)
    doc["inputs"][0]["data"] = [0.5] * ROW
    err = refused(*doc_body(doc, body[n:]))
    assert err.status == 400 and "not both" in str(err)


def test_binary_section_without_binary_input() -> None:
    err = refused(*doc_body(good_doc(1), b"\0" * 8))
    assert err.status == 400 and "no input declares binary_data_size" in str(err)


def test_body_over_max_bytes_is_413_before_parsing() -> None:
    err = refused(b"not even json" * 100, None, max_bytes=1000)
    assert err.status == 413 and "1300 bytes" in str(err)
    body, n = triton_body(images(2))
    assert parse(body, n, max_bytes=len(body)).x.shape[0] == 2


def test_rows_are_checked_before_the_data_is_read() -> None:
    # the row limit is refused (413) without looking at the (invalid) data
    doc = good_doc(1000, data="garbage")
    assert refused(*doc_body(doc)).status == 413
    body, n = binary_doc(images(1))
    doc = json.loads(body[:n])
    doc["inputs"][0]["shape"][0] = 10**6
    assert refused(*doc_body(doc, body[n:])).status == 413


def test_unknown_output_names_the_available_one() -> None:
    err = refused(
        *doc_body(with_outputs([{"name": OUTPUT_PROBS}])), available_outputs=(OUTPUT_LABELS,)
    )
    assert err.status == 422 and "available: labels" in str(err)


def test_deep_json_is_a_400_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert refused(deep, None).status == 400
    nested: Any = 0.5
    for _ in range(100):
        nested = [nested]
    err = refused(*doc_body(good_doc(1, data=nested)))
    assert err.status == 422


# -- fuzzing: only ProtocolError, never another exception ------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)

header_lengths = st.one_of(
    st.none(),
    st.integers(-3, 400),
    st.text(max_size=6),
    st.sampled_from(["", " 12", "1e3", "٣", "+5", "99999999999999999999999"]),
)


def only_protocol_errors(body: bytes, header: object) -> None:
    try:
        req = parse_infer_request(body, header, SPEC, max_rows=MAX_ROWS, max_bytes=4096)  # type: ignore[arg-type]
    except ProtocolError as err:
        assert err.status in (400, 413, 422)
        assert "\n" not in str(err)
        return
    assert req.x.dtype == torch.float32 and req.x.shape[1:] == SPEC.shape
    assert bool(torch.isfinite(req.x).all())


@FUZZ
@given(body=st.binary(max_size=300), header=header_lengths)
def test_fuzz_raw_bytes(body: bytes, header: object) -> None:
    only_protocol_errors(body, header)


@FUZZ
@given(doc=json_values)
def test_fuzz_json_documents(doc: object) -> None:
    only_protocol_errors(json.dumps(doc).encode(), None)


FIELDS = ["id", "parameters", "inputs", "outputs"]
INPUT_FIELDS = ["name", "shape", "datatype", "data", "parameters"]


@FUZZ
@given(
    top=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2),
    inp=st.dictionaries(st.sampled_from(INPUT_FIELDS), json_values, max_size=2),
    binary=st.booleans(),
)
def test_fuzz_fields_of_a_valid_request(
    top: dict[str, Any], inp: dict[str, Any], binary: bool
) -> None:
    """A valid request with some fields replaced by arbitrary JSON."""
    if binary:
        body, n = binary_doc(images(1))
        doc, section = json.loads(body[:n]), body[n:]
    else:
        doc, section = good_doc(1), None
    doc["inputs"][0].update(inp)
    doc.update(top)
    only_protocol_errors(*doc_body(doc, section))


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_binary_request(data: st.DataObject) -> None:
    body, n = triton_body(images(2), outputs=[InferRequestedOutput(OUTPUT_PROBS)])
    assert n is not None
    buf = bytearray(body)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    extra = data.draw(st.binary(max_size=8))
    header = data.draw(st.one_of(st.just(n), st.integers(0, len(buf) + 8), st.none()))
    only_protocol_errors(bytes(buf[:cut]) + extra, header)


# -- responses and metadata -------------------------------------------------------------------


def test_decode_refuses_malformed_responses_with_502() -> None:
    y = torch.full((2, 3), 1 / 3)
    out, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        output_name=OUTPUT_PROBS,
        tensor=y,
        binary=True,
    )
    n = int(headers[HEADER_LENGTH])
    bad = [
        (out[:-1], n),  # short binary section
        (out + b"\0\0\0\0", n),  # leftover bytes
        (b"[]", None),
        (b"{", None),
        (
            json.dumps({"outputs": [{"name": "p", "datatype": "BYTES", "shape": [1]}]}).encode(),
            None,
        ),
        (
            json.dumps(
                {"outputs": [{"name": "p", "datatype": "FP32", "shape": [2], "data": [1]}]}
            ).encode(),
            None,
        ),
        (out, "x"),
    ]
    for body, header in bad:
        with pytest.raises(ProtocolError) as info:
            decode_infer_response(body, header)
        assert info.value.status == 502


def test_json_response_refuses_non_finite_values() -> None:
    with pytest.raises(ValueError):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            output_name=OUTPUT_PROBS,
            tensor=torch.tensor([[math.nan, 1.0]]),
            binary=False,
        )


def test_metadata_documents() -> None:
    meta = server_metadata("1.2.3")
    assert meta["name"] == "stealproof" and meta["version"] == "1.2.3"
    assert "binary_tensor_data" in meta["extensions"]
    probs = model_metadata("digits", ["1"], SPEC, 10, OUTPUT_PROBS)
    assert probs["inputs"] == [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
    assert probs["outputs"] == [{"name": OUTPUT_PROBS, "datatype": "FP32", "shape": [-1, 10]}]
    assert probs["versions"] == ["1"] and probs["name"] == "digits"
    labels = model_metadata("digits", ["1", "2"], SPEC, 10, OUTPUT_LABELS, platform="x")
    assert labels["outputs"] == [{"name": OUTPUT_LABELS, "datatype": "INT64", "shape": [-1]}]
    assert labels["parameters"] == {"num_classes": 10} and labels["platform"] == "x"
    with pytest.raises(InputValidationError, match="output"):
        model_metadata("digits", ["1"], SPEC, 10, "logits")
    assert error_body("bad shape") == {"error": "bad shape"}
    json.dumps([meta, probs, labels])  # all JSON-serialisable
