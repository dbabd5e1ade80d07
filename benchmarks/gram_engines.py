"""Cost of GRAD²'s ``min_ip`` scores over the whole network: our two Gram engines against the
reference's one double backward.

The reference computes one batch-level target ``a = −(1/B) Σᵢ Gᵢᵀyᵢ`` (one backward) and scores
``s = G a`` with one double backward; ours gives every row its own ``a = −Gᵢᵀyᵢ`` (a row's
answer may not depend on the rest of its batch), which needs the per-row Gram ``M = G Gᵀ``:
``s = −M y``. ``outer`` builds M from per-layer activations × output gradients (one forward,
one backward batched over the K classes); ``jacobian`` from explicit per-sample Jacobians
(``vmap(jacrev)``). The mnist5k LeNet (28×28, 10 classes), random weights, one thread.

    python benchmarks/gram_engines.py --out gram_engines.json

Output: ``{batch, reference_ms, outer_ms, jacobian_ms, outer_vs_reference, jacobian_vs_reference}``
rows (milliseconds per batch, medians; ratios > 1 mean slower than the reference).
"""

from __future__ import annotations

import argparse

import torch
from _output import emit
from overhead import timed
from torch import Tensor, nn

from stealproof.defenses.grad2 import scores_double_backward
from stealproof.defenses.gram import full_gram
from stealproof.models import create_model


def reference_min_ip(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The reference's scores: a = −mean Gᵢᵀyᵢ (one backward), s = G a (double backward)."""
    named = list(model.named_parameters())
    with torch.enable_grad():
        params = [p.detach().requires_grad_(True) for _, p in named]
        pdict = {n: p for (n, _), p in zip(named, params, strict=True)}
        logp = torch.log_softmax(torch.func.functional_call(model, pdict, (x,)), dim=1)
        grads = torch.autograd.grad(-(logp * y).sum() / x.shape[0], params)
    direction = {n: g.detach() for (n, _), g in zip(named, grads, strict=True)}
    return scores_double_backward(model, x, direction)


def ours(model: nn.Module, x: Tensor, y: Tensor, engine: str) -> Tensor:
    m = full_gram(model, x, ("",), engine=engine)  # type: ignore[arg-type]
    return -(m @ y.double()[:, :, None])[:, :, 0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("lenet", image_size=(28, 28), num_classes=10).eval()
    rows = []
    for b in args.batches:
        x = torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(b))
        y = torch.softmax(3 * torch.randn(b, 10, generator=torch.Generator().manual_seed(b)), 1)
        # the engines agree with each other (the reference computes another quantity for B > 1)
        assert torch.allclose(ours(model, x, y, "outer"), ours(model, x, y, "jacobian"), rtol=1e-4)
        ref = timed(lambda x=x, y=y: reference_min_ip(model, x, y))
        outer = timed(lambda x=x, y=y: ours(model, x, y, "outer"))
        jac = timed(lambda x=x, y=y: ours(model, x, y, "jacobian"), min_time=0.2, max_reps=5)
        rows.append(
            {
                "batch": b,
                "reference_ms": round(1000 * ref, 3),
                "outer_ms": round(1000 * outer, 3),
                "jacobian_ms": round(1000 * jac, 3),
                "outer_vs_reference": round(outer / ref, 2),
                "jacobian_vs_reference": round(jac / ref, 2),
            }
        )
    emit(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
