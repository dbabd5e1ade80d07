"""The pipeline thread: concurrent requests share one forward pass and one transaction and get
what they would get alone; a lone request never waits; ``max_rows=1`` turns batching off; a
refusal or a failure stays with its requests and the thread keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway_fixtures import create_clients, write_config
from serve_db_fixtures import db_kind, db_url, temp_database  # noqa: F401  (fixtures)
from stealproof.models import create_model, save_checkpoint
from stealproof.serve.app import build_gateway
from stealproof.serve.db import repo
from stealproof.serve.db.engine import make_engine, make_sessionmaker
from stealproof.serve.errors import QuotaExceeded
from stealproof.serve.gateway import Answer, ClientRef, Gateway
from stealproof.serve.pipeline import Pipeline
from stealproof.serve.settings import load_settings

PRADA = {"detectors": [{"kind": "prada", "params": {"delta": 0.9}}], "max_flagged": None}


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pl") / "v.pt"
    torch.manual_seed(0)
    save_checkpoint(create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10), path)
    return path


def _gateway(victim: Path, url: str, directory: Path) -> tuple[Gateway, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    return build_gateway(load_settings(write_config(directory, victim, url, policy=PRADA)))


@pytest.fixture
def two(victim: Path, db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A gateway and the clients alice, bob (no quota) and tiny (quota 2)."""
    keys = create_clients(db_url, "alice", "bob")
    keys.update(create_clients(db_url, "tiny", quota=2))
    gw, engine = _gateway(victim, db_url, tmp_path / "a")
    refs = {n: gw.authenticate(f"Bearer {k}") for n, k in keys.items()}
    try:
        yield {"gw": gw, "refs": refs, "url": db_url, "victim": victim, "tmp": tmp_path}
    finally:
        engine.dispose()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _results(futures: list[Future[Answer]]) -> list[Answer | BaseException]:
    out: list[Answer | BaseException] = []
    for f in futures:
        e = f.exception(timeout=60)
        out.append(e if e is not None else f.result())
    return out


def test_a_turn_shares_the_model_and_answers_as_one_at_a_time(two: dict[str, Any]) -> None:
    gw, refs = two["gw"], two["refs"]
    served = gw.models[0]
    calls: list[int] = []
    forward = Gateway.forward

    def counted(s: Any, x: torch.Tensor) -> Any:
        calls.append(int(x.shape[0]))
        return forward(s, x)

    jobs = [("alice" if i % 3 else "bob", images(1 + i % 2, seed=i)) for i in range(9)]
    rows = sum(int(x.shape[0]) for _, x in jobs)
    pipe = Pipeline(gw, max_wait=30.0, max_rows=rows)
    Gateway.forward = staticmethod(counted)  # type: ignore[method-assign]
    try:
        with pipe.receiving():  # a request is "on its way": the turn waits for all of them
            futures = [pipe.submit(refs[n], served, x) for n, x in jobs]
        batched = _results(futures)
    finally:
        Gateway.forward = staticmethod(forward)  # type: ignore[method-assign]
        pipe.close()
    assert calls == [rows] and pipe.batches == 1

    # the same requests one per turn, on a fresh database, give the same answers
    cmp_dir = two["tmp"] / "cmp"
    cmp_dir.mkdir()
    with temp_database("sqlite", cmp_dir) as url2:
        keys2 = create_clients(url2, "alice", "bob")
        gw2, engine2 = _gateway(two["victim"], url2, cmp_dir / "b")
        alone = Pipeline(gw2, max_wait=0.0, max_rows=1)
        try:
            refs2 = {n: gw2.authenticate(f"Bearer {k}") for n, k in keys2.items()}
            single = _results([alone.submit(refs2[n], gw2.models[0], x) for n, x in jobs])
        finally:
            alone.close()
            engine2.dispose()
    assert alone.batches == len(jobs)
    for a, b in zip(batched, single, strict=True):
        assert isinstance(a, Answer) and isinstance(b, Answer)
        torch.testing.assert_close(a.tensor, b.tensor, rtol=0, atol=1e-6)


def test_a_lone_request_does_not_wait(two: dict[str, Any]) -> None:
    gw, refs = two["gw"], two["refs"]
    pipe = Pipeline(gw, max_wait=30.0, max_rows=64)  # nothing else arriving: no wait at all
    try:
        for i in range(3):
            answer = pipe.submit(refs["alice"], gw.models[0], images(1, i)).result(timeout=20)
            assert answer.rows == 1
    finally:
        pipe.close()
    assert pipe.batches == 3 and pipe.waits == 0


def test_a_refusal_stays_with_its_request(two: dict[str, Any]) -> None:
    gw, refs = two["gw"], two["refs"]
    served = gw.models[0]
    pipe = Pipeline(gw, max_wait=30.0, max_rows=4)
    try:
        with pipe.receiving():
            futures = [
                pipe.submit(refs["tiny"], served, images(2, 0)),
                pipe.submit(refs["tiny"], served, images(1, 1)),  # over tiny's quota of 2
                pipe.submit(refs["alice"], served, images(1, 2)),
            ]
        out = _results(futures)
    finally:
        pipe.close()
    assert pipe.batches == 1
    assert isinstance(out[0], Answer) and isinstance(out[2], Answer)
    assert isinstance(out[1], QuotaExceeded)
    engine = make_engine(two["url"])
    try:
        with make_sessionmaker(engine)() as s:
            tiny = repo.get_client(s, "tiny")
            assert (tiny.rows_used, tiny.requests) == (2, 1)
            assert repo.count_log(s) == 2
    finally:
        engine.dispose()


def test_a_failure_reaches_its_turn_and_the_thread_goes_on(two: dict[str, Any]) -> None:
    gw, refs = two["gw"], two["refs"]
    served = gw.models[0]
    pipe = Pipeline(gw, max_wait=30.0, max_rows=3)
    forward = Gateway.forward

    def boom(s: Any, x: torch.Tensor) -> Any:
        raise RuntimeError("forward failed")

    Gateway.forward = staticmethod(boom)  # type: ignore[method-assign]
    try:
        with pipe.receiving():
            futures = [pipe.submit(refs["alice"], served, images(1, s)) for s in range(3)]
        out = _results(futures)
    finally:
        Gateway.forward = staticmethod(forward)  # type: ignore[method-assign]
    try:
        assert all(isinstance(e, RuntimeError) for e in out)
        assert pipe.submit(refs["alice"], served, images(1, 9)).result(timeout=20).rows == 1
    finally:
        pipe.close()


def test_closed_pipeline_refuses_and_writes_delivered_marks(two: dict[str, Any]) -> None:
    gw, refs = two["gw"], two["refs"]
    pipe = Pipeline(gw, max_wait=0.0)
    answer = pipe.submit(refs["bob"], gw.models[0], images(1)).result(timeout=20)
    gw.mark_delivered(answer.log_id)
    pipe.close()
    with pytest.raises(RuntimeError, match="closed"):
        pipe.submit(refs["bob"], gw.models[0], images(1))
    engine = make_engine(two["url"])
    try:
        with make_sessionmaker(engine)() as s:
            assert [e.delivered for e in repo.recent_log(s, refs["bob"].id)] == [True]
    finally:
        engine.dispose()


def test_policy_refuses_normal_answers_of_another_shape(two: dict[str, Any]) -> None:
    from stealproof.errors import InputValidationError

    m = two["gw"].models[0]
    x = images(3)
    clean, logits, normal = Gateway.forward(m, x)
    with pytest.raises(InputValidationError, match=r"normal: expected \(3, 10\)"):
        m.policy.respond("c", x, clean, logits, normal=normal[:2])


def test_pipeline_arguments_are_checked(two: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        Pipeline(two["gw"], max_rows=0)
    assert ClientRef(1, "x").key_id == ""
