"""Dynamic batching: concurrent submissions share one forward + defense call and get the rows
they would get alone; a full batch does not wait; failures reach every waiting request."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from stealproof import defenses
from stealproof.models import create_model
from stealproof.policy import DetectionPolicy
from stealproof.serve.batching import ForwardBatcher
from stealproof.serve.gateway import Gateway, ServedModel
from stealproof.serve.protocol import InputSpec


def served() -> ServedModel:
    torch.manual_seed(0)
    victim = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10).eval()
    policy = DetectionPolicy([], defense=defenses.create("reverse_sigmoid", beta=0.7, gamma=0.2))
    return ServedModel("m", "1", victim, policy, InputSpec("input", (1, 8, 8)), 10)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


async def _submit_all(batcher: ForwardBatcher, xs: list[torch.Tensor]) -> list[object]:
    return list(await asyncio.gather(*(batcher.submit(x) for x in xs)))


def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    m = served()
    calls: list[int] = []

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        calls.append(int(x.shape[0]))
        return Gateway.forward(m, x)

    batcher = ForwardBatcher(run, max_wait=0.05, max_rows=1000)
    xs = [images(1 + i % 3, seed=i) for i in range(10)]
    out = asyncio.run(_submit_all(batcher, xs))
    assert calls == [sum(int(x.shape[0]) for x in xs)] and batcher.batches == 1
    for x, ((clean, logits, normal), seconds) in zip(xs, out, strict=True):  # type: ignore[misc]
        alone = Gateway.forward(m, x)
        for got, want in zip((clean, logits, normal), alone, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert seconds >= 0
        # the policy given the batched normal answers releases what it computes itself
        ref = m.policy.respond("a", x, alone[0], alone[1]).released
        via = m.policy.respond("b", x, clean, logits, normal=normal).released
        torch.testing.assert_close(via, ref, rtol=0, atol=1e-6)


def test_a_full_batch_runs_at_once_and_zero_wait_runs_each_alone() -> None:
    m = served()
    batcher = ForwardBatcher(lambda x: Gateway.forward(m, x), max_wait=30.0, max_rows=4)
    start = time.monotonic()
    asyncio.run(asyncio.wait_for(_submit_all(batcher, [images(2), images(2, 1)]), timeout=10))
    assert time.monotonic() - start < 10 and batcher.batches == 1
    alone = ForwardBatcher(lambda x: Gateway.forward(m, x), max_wait=0.0)
    asyncio.run(_submit_all(alone, [images(1, s) for s in range(5)]))
    assert alone.batches == 5


def test_a_failure_reaches_every_waiting_request() -> None:
    def boom(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise RuntimeError("forward failed")

    batcher = ForwardBatcher(boom, max_wait=0.02)

    async def go() -> list[object]:
        return list(
            await asyncio.gather(
                *(batcher.submit(images(1, s)) for s in range(3)), return_exceptions=True
            )
        )

    out = asyncio.run(go())
    assert len(out) == 3 and all(isinstance(e, RuntimeError) for e in out)


def test_policy_refuses_normal_answers_of_another_shape() -> None:
    m = served()
    x = images(3)
    clean, logits, normal = Gateway.forward(m, x)
    from stealproof.errors import InputValidationError

    with pytest.raises(InputValidationError, match=r"normal: expected \(3, 10\)"):
        m.policy.respond("c", x, clean, logits, normal=normal[:2])
