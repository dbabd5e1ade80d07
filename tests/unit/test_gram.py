"""The outer-product Gram engine equals explicit per-sample Jacobians, and falls back cleanly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from stealproof.defenses import gram as G
from stealproof.errors import ConfigError
from stealproof.models import Classifier, create_model


def _seeded(build: Callable[[], Classifier], seed: int) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        # running statistics away from (0, 1), so the batch-norm path is really exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


MODELS: dict[str, Callable[[], Classifier]] = {
    "mlp": lambda: create_model("mlp", image_size=(8, 8), hidden=(16, 12), num_classes=5),
    "lenet": lambda: create_model(
        "lenet", image_size=(8, 8), channels=(4, 6), fc=16, num_classes=5
    ),
    "resnet": lambda: create_model(
        "resnet18", in_channels=1, image_size=(8, 8), width=4, blocks=(1, 1), num_classes=5
    ),
}


def _images(n: int, seed: int) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _close(a: Tensor, b: Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("name", list(MODELS))
def test_outer_engine_equals_per_sample_jacobians(name: str) -> None:
    model = _seeded(MODELS[name], 3)
    x = _images(6, 4)
    outer = G.full_gram(model, x, engine="outer")
    ref = G.full_gram(model, x, engine="jacobian")
    assert outer.shape == (6, 5, 5) and outer.dtype == torch.float64
    assert _close(outer, ref), (outer - ref).abs().max()
    assert _close(G.full_gram(model, x), ref)  # auto picks the outer engine here


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("lenet", ("body.3.weight",)),  # a conv weight without its bias
        ("lenet", ("body.0.bias", "body.9")),
        ("resnet", ("body.1",)),  # batch norm only
        ("resnet", ("body.3.conv2", "body.3.bn2.bias")),
        ("mlp", ("body.3.bias",)),
    ],
)
def test_outer_engine_on_selected_parameters(name: str, layers: tuple[str, ...]) -> None:
    model = _seeded(MODELS[name], 5)
    x = _images(4, 6)
    outer = G.full_gram(model, x, layers, engine="outer")
    ref = G.full_gram(model, x, layers, engine="jacobian")
    assert _close(outer, ref), (outer - ref).abs().max()


def test_outer_engine_with_frozen_parameters_and_rows_independent() -> None:
    model = _seeded(MODELS["lenet"], 7)
    for p in model.parameters():
        p.requires_grad_(False)
    x = _images(5, 8)
    whole = G.full_gram(model, x, engine="outer")
    assert _close(whole, G.full_gram(model, x, engine="jacobian"))
    # a row's M does not depend on the other rows of its batch
    assert _close(G.full_gram(model, x[2:3], engine="outer")[0], whole[2])
    assert all(not p.requires_grad for p in model.parameters())


class _Shared(nn.Module):
    """One Linear applied twice (weight sharing) and a raw parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.scale = nn.Parameter(torch.ones(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.fc(x.flatten(1)[:, :5])) * self.scale


def test_unsupported_layers_fall_back_under_auto_and_are_refused_under_outer() -> None:
    torch.manual_seed(0)
    model = _Shared().eval()
    x = _images(3, 9)
    ref = G.full_gram(model, x, engine="jacobian")
    assert _close(G.full_gram(model, x), ref)  # a raw parameter: auto takes the Jacobian path
    with pytest.raises(ConfigError, match="engine 'outer' handles Linear"):
        G.full_gram(model, x, engine="outer")
    # only the shared Linear selected: the forward shows it runs twice
    assert _close(G.full_gram(model, x, ("fc",)), G.full_gram(model, x, ("fc",), "jacobian"))
    with pytest.raises(ConfigError, match="runs twice in one forward"):
        G.full_gram(model, x, ("fc",), engine="outer")


def test_training_mode_is_restored() -> None:
    model = MODELS["resnet"]().train()
    G.full_gram(model, _images(2, 1), engine="outer")
    assert model.training


def test_both_position_forms_give_the_same_gram() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 7, 5, generator=g)  # [B, I, P]
    d = torch.randn(4, 3, 6, 5, generator=g)  # [K, B, O, P]
    # the Jacobian written out: J_k = Σ_p d_k[:, p] u[:, p]ᵀ, flattened per row and class
    j = torch.einsum("kbop,bip->bkoi", d.double(), u.double()).flatten(2)
    ref = j @ j.transpose(1, 2)
    for form in ("jacobian", "kernel", "auto"):
        got = G._positions_gram(u, d, {"weight"}, form)
        assert _close(got, ref), form
    bias = G._positions_gram(u, d, {"bias"})
    jb = d.double().sum(dim=3).permute(1, 0, 2)
    assert _close(bias, jb @ jb.transpose(1, 2))
