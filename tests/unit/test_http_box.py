"""HTTPBlackBox against a fake gateway built from the protocol codec (no FastAPI, no network).

The fake server (``httpx.MockTransport``) parses requests with ``parse_infer_request``, answers
with an in-process ``BlackBox`` and encodes with ``encode_infer_response``; refusals of that box
become the gateway's statuses (403 blocked, 429 quota). So the client is tested against the
same codec the real gateway uses.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from torch import Tensor

from stealproof.attacks import KnockoffNets, clone_factory_like
from stealproof.data import Dataset, Pool, load_dataset
from stealproof.detectors.base import Detection, Detector
from stealproof.errors import (
    BudgetExhaustedError,
    ClientBlockedError,
    ConfigError,
    InputValidationError,
    StealproofError,
)
from stealproof.experiment import SCENARIOS, train_victim
from stealproof.http_box import GatewayResponseError, HTTPBlackBox
from stealproof.models import Classifier, create_model
from stealproof.oracle import BlackBox, MeterReading
from stealproof.policy import DetectionPolicy
from stealproof.serve.protocol import (
    HEADER_LENGTH,
    INPUT_NAME,
    OUTPUT_LABELS,
    OUTPUT_PROBS,
    InputSpec,
    ProtocolError,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
)
from stealproof.train import TrainConfig

URL = "http://gateway.test"
KEY = "sp_test_0123456789abcdef0123456789abcdef"
MODEL = "digits"
K = 10


class FakeGateway:
    """The gateway's protocol surface around one in-process black box."""

    def __init__(
        self,
        box: BlackBox,
        *,
        output: str = OUTPUT_PROBS,
        max_rows: int = 64,
        fail_with: int | None = None,
    ) -> None:
        assert box.input_shape is not None and box.num_classes is not None
        c, h, w = box.input_shape
        self.box = box
        self.spec = InputSpec(INPUT_NAME, (c, h, w))
        self.output = output
        self.max_rows = max_rows
        self.fail_with = fail_with
        self.infer_requests: list[httpx.Request] = []
        self.rows_seen: list[int] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def error(self, status: int, message: str) -> httpx.Response:
        return httpx.Response(status, json=error_body(message))

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return self.error(401, "missing or invalid API key")
        path = request.url.path
        assert self.box.num_classes is not None
        if request.method == "GET" and path == f"/v2/models/{MODEL}":
            meta = model_metadata(MODEL, ["1"], self.spec, self.box.num_classes, self.output)
            return httpx.Response(200, json=meta)
        if request.method == "GET" and path == "/v1/clients/me":
            return httpx.Response(200, json={"rows": self.box.queries_used, "standing": "ok"})
        if request.method == "POST" and path == f"/v2/models/{MODEL}/infer":
            return self.infer(request)
        return self.error(404, f"no route {path}")

    def infer(self, request: httpx.Request) -> httpx.Response:
        self.infer_requests.append(request)
        if self.fail_with is not None:
            return self.error(self.fail_with, "the model crashed")
        try:
            req = parse_infer_request(
                request.content,
                request.headers.get(HEADER_LENGTH),
                self.spec,
                max_rows=self.max_rows,
                available_outputs=(self.output,),
            )
        except ProtocolError as err:
            return self.error(err.status, str(err))
        self.rows_seen.append(int(req.x.shape[0]))
        try:
            released = self.box.query(req.x)
        except ClientBlockedError as err:
            return self.error(403, f"client is blocked: {err.reason}")
        except BudgetExhaustedError:
            return self.error(429, "quota spent")
        tensor = released.argmax(dim=1) if self.output == OUTPUT_LABELS else released
        body, headers = encode_infer_response(
            model_name=MODEL,
            model_version="1",
            request_id=req.request_id,
            output_name=self.output,
            tensor=tensor,
            binary=req.binary_output,
        )
        return httpx.Response(200, content=body, headers=headers)


class FlagEverything(Detector):
    """A detector that flags every row: the policy blocks the client after ``max_flagged``."""

    name = "flag-all"

    def observe(self, client_id: str, x: Tensor, y: Tensor) -> Detection:
        n = int(x.shape[0])
        return Detection(torch.ones(n), torch.ones(n, dtype=torch.bool))

    def client_state(self, client_id: str) -> dict[str, Any]:
        return {}

    def load_client_state(self, client_id: str, state: dict[str, Any]) -> None:
        return None


def small_victim(seed: int = 0) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("mlp", image_size=(8, 8), num_classes=K, hidden=(32,))


def batch(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def remote(gateway: FakeGateway, **kw: Any) -> HTTPBlackBox:
    kw.setdefault("transport", gateway.transport())
    return HTTPBlackBox(URL, kw.pop("api_key", KEY), MODEL, **kw)


@pytest.fixture
def victim() -> Classifier:
    return small_victim()


# -- answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_answers_equal_the_in_process_black_box(victim: Classifier, binary: bool) -> None:
    gateway = FakeGateway(BlackBox(victim, "reverse_sigmoid"))
    reference = BlackBox(victim, "reverse_sigmoid")
    x = batch(40)
    with remote(gateway, binary=binary) as box:
        assert box.input_shape == (1, 8, 8)
        assert box.num_classes == K
        got = box.query(x)
    want = reference.query(x)
    assert got.dtype == torch.float32 and got.shape == (40, K)
    assert float((got - want).abs().max()) <= 1e-6
    sent = gateway.infer_requests[0]
    assert (HEADER_LENGTH in sent.headers) is binary
    doc = json.loads(sent.content[: int(sent.headers[HEADER_LENGTH])] if binary else sent.content)
    assert doc["outputs"] == [{"name": OUTPUT_PROBS, "parameters": {"binary_data": binary}}]
    assert doc["inputs"][0]["datatype"] == "FP32"
    assert ("binary_data_size" in doc["inputs"][0].get("parameters", {})) is binary


def test_chunks_of_batch_size(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    with remote(gateway, batch_size=16) as box:
        y = box.query(batch(40))
        assert y.shape == (40, K)
        assert gateway.rows_seen == [16, 16, 8]
        assert box.queries_used == 40
        assert box.budget_left is None
        assert box.meter() == MeterReading("remote", 40, None, 0.0, 0.0)


def test_float64_images_are_sent_as_fp32(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    x = batch(4)
    with remote(gateway) as box:
        got = box.query(x.double())
    assert float((got - BlackBox(victim).query(x)).abs().max()) <= 1e-6


def test_label_mode_answers_one_hot(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim), output=OUTPUT_LABELS)
    x = batch(24)
    with remote(gateway, batch_size=10) as box:
        assert box.num_classes == K
        got = box.query(x)
    want = BlackBox(victim, output="label").query(x)
    assert torch.equal(got, want)
    assert got.dtype == torch.float32


def test_me(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    with remote(gateway) as box:
        box.query(batch(3))
        assert box.me() == {"rows": 3, "standing": "ok"}


def test_interface_of_a_remote_box(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    box = remote(gateway, client_id="thief-7", budget=100)
    assert box.flagged_rows == 0
    assert box.policy_status() is None  # type: ignore[func-returns-value]
    assert box.client_id == "thief-7"
    assert KEY not in repr(box)
    box.close()


# -- budget and refusals -----------------------------------------------------------------------


def test_budget_is_checked_before_sending(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    with remote(gateway, budget=30) as box:
        box.query(batch(20))
        assert box.budget_left == 10
        with pytest.raises(BudgetExhaustedError) as info:
            box.query(batch(20))
        assert (info.value.used, info.value.budget, info.value.requested) == (20, 30, 20)
        assert gateway.rows_seen == [20]
        assert box.queries_used == 20


def test_403_blocks_and_answered_chunks_stay_counted(victim: Classifier) -> None:
    policy = DetectionPolicy([FlagEverything()], max_flagged=16)
    gateway = FakeGateway(BlackBox(victim, policy=policy, client_id="thief"))
    with remote(gateway, batch_size=16, client_id="thief") as box:
        with pytest.raises(ClientBlockedError) as info:
            box.query(batch(48))
        assert info.value.client_id == "thief"
        assert "client is blocked" in info.value.reason
        assert box.queries_used == 16  # the first chunk was answered and stays counted
        assert box.flagged_rows == 0  # the gateway never reveals flags
        with pytest.raises(ClientBlockedError):
            box.query(batch(1))
        assert box.queries_used == 16


def test_429_is_budget_exhausted(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim, budget=20))
    with remote(gateway, batch_size=16) as box:
        with pytest.raises(BudgetExhaustedError) as info:
            box.query(batch(32))
        assert box.queries_used == 16
        assert (info.value.used, info.value.budget, info.value.requested) == (16, 16, 16)


def test_401_is_a_config_error_without_the_key(victim: Classifier, caplog: Any) -> None:
    gateway = FakeGateway(BlackBox(victim))
    caplog.set_level(logging.DEBUG)
    wrong = "sp_wrong_key_that_must_not_leak_000000000000"
    with pytest.raises(ConfigError) as info:
        remote(gateway, api_key=wrong)
    message = str(info.value)
    assert message.startswith("api key:") and "missing or invalid API key" in message
    assert wrong not in message and wrong not in caplog.text


def test_other_errors_are_gateway_response_errors(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    with remote(gateway) as box:
        gateway.fail_with = 500
        with pytest.raises(GatewayResponseError) as info:
            box.query(batch(2))
        assert info.value.status == 500 and "the model crashed" in str(info.value)
        assert isinstance(info.value, StealproofError)
        gateway.fail_with = None
        gateway.max_rows = 4
        with pytest.raises(GatewayResponseError) as info:
            box.query(batch(5))
        assert info.value.status == 413 and "over the limit of 4" in str(info.value)
        assert box.queries_used == 0


def test_non_json_error_bodies_are_quoted(victim: Classifier) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return FakeGateway(BlackBox(victim)).handle(request)
        return httpx.Response(502, text="<html>bad gateway</html>")

    with remote(FakeGateway(BlackBox(victim)), transport=httpx.MockTransport(handler)) as box:
        with pytest.raises(GatewayResponseError, match="bad gateway") as info:
            box.query(batch(1))
        assert info.value.status == 502


def test_malformed_answers_are_gateway_response_errors(victim: Classifier) -> None:
    answers: Iterator[httpx.Response] = iter(
        [
            httpx.Response(200, content=b"{not json"),
            httpx.Response(200, json={"outputs": []}),
            httpx.Response(
                200,
                json={
                    "outputs": [
                        {
                            "name": OUTPUT_PROBS,
                            "datatype": "FP32",
                            "shape": [1, 3],
                            "data": [0.2, 0.3, 0.5],
                        }
                    ]
                },
            ),
        ]
    )
    fake = FakeGateway(BlackBox(victim))

    def handler(request: httpx.Request) -> httpx.Response:
        return fake.handle(request) if request.method == "GET" else next(answers)

    with remote(fake, transport=httpx.MockTransport(handler)) as box:
        for words in ("not valid JSON", "no output", "expected shape [1, 10]"):
            with pytest.raises(GatewayResponseError, match="malformed infer response") as info:
                box.query(batch(1))
            assert words in str(info.value)
        assert box.queries_used == 0


def test_connection_errors_name_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(GatewayResponseError, match=re.escape(URL)) as info:
        HTTPBlackBox(URL, KEY, MODEL, transport=httpx.MockTransport(handler))
    assert info.value.status is None
    assert KEY not in str(info.value)


def test_unknown_model_is_a_config_error(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    with pytest.raises(ConfigError, match="no model 'cifar'"):
        HTTPBlackBox(URL, KEY, "cifar", transport=gateway.transport())
    with pytest.raises(ConfigError, match="version '7'"):
        HTTPBlackBox(URL, KEY, MODEL, version="7", transport=gateway.transport())


def test_bad_arguments_and_inputs(victim: Classifier) -> None:
    gateway = FakeGateway(BlackBox(victim))
    for kw in ({"batch_size": 0}, {"budget": -1}, {"timeout": 0}, {"binary": "yes"}):
        with pytest.raises(InputValidationError):
            remote(gateway, **kw)
    with pytest.raises(InputValidationError, match="api_key"):
        HTTPBlackBox(URL, "", MODEL, transport=gateway.transport())
    with remote(gateway) as box:
        with pytest.raises(InputValidationError, match="pixels"):
            box.query(batch(2) * 3)
        with pytest.raises(InputValidationError, match="shape"):
            box.query(torch.rand(2, 1, 4, 4))
        assert gateway.infer_requests == []


# -- an attack through the remote box -----------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Classifier]:
    scenario = SCENARIOS["digits"]
    ds = load_dataset("digits")
    victim, _ = train_victim(ds, scenario.model, scenario.victim_training, seed=0)
    return ds, victim


def digits_pool(ds: Dataset) -> Pool:
    n = ds.train.images.shape[0]
    return Pool("digits", ds.train.images, torch.arange(n) % 2)


ONE_EPOCH = TrainConfig(epochs=1, batch_size=64)


def test_knockoff_through_http_matches_in_process(digits: tuple[Dataset, Classifier]) -> None:
    ds, victim = digits
    attack = KnockoffNets(policy="random", query_batch=64, train=ONE_EPOCH)
    local = attack.run(BlackBox(victim), digits_pool(ds), 200, clone_factory_like(victim))
    gateway = FakeGateway(BlackBox(victim))
    with remote(gateway, batch_size=50) as box:
        result = attack.run(box, digits_pool(ds), 200, clone_factory_like(victim))
    assert result.stopped is None and result.queries_used == 200
    assert torch.equal(result.transfer.images, local.transfer.images)
    assert float((result.transfer.answers - local.transfer.answers).abs().max()) <= 1e-6


def test_knockoff_stops_cleanly_on_403(digits: tuple[Dataset, Classifier]) -> None:
    ds, victim = digits
    policy = DetectionPolicy([FlagEverything()], max_flagged=100)
    gateway = FakeGateway(BlackBox(victim, policy=policy, client_id="thief"))
    attack = KnockoffNets(policy="random", query_batch=64, train=ONE_EPOCH)
    with remote(gateway, client_id="thief") as box:
        result = attack.run(box, digits_pool(ds), 200, clone_factory_like(victim))
        # 64 + 64 rows answered (the second batch crosses 100 flagged rows), the third refused
        assert result.stopped == "blocked"
        assert result.blocked_at == 128 == box.queries_used == result.queries_used
        assert len(result.transfer) == 128
        assert result.stop_message is not None and "blocked" in result.stop_message
        assert result.flagged_rows == 0
        assert result.train_result is not None
