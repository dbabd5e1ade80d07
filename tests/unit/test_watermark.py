"""The ``watermark`` defense: its target direction, its answers' guarantees and its key set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stealproof import defenses
from stealproof.defenses.grad2 import watermark_direction
from stealproof.defenses.watermark import Watermark, key_direction
from stealproof.errors import ConfigError, DataFileError
from stealproof.models import create_model
from stealproof.ownership import generate_key_set, save_key_set


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10).eval()


def norm(d: dict[str, torch.Tensor]) -> float:
    return sum(float((t.double() ** 2).sum()) for t in d.values()) ** 0.5


def test_key_direction_is_the_sum_of_unit_group_directions() -> None:
    model = tiny()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    labels = torch.tensor([3, 3, 3, 7, 7, 7])
    one = key_direction(model, x[:3], labels[:3], groups[:3])
    assert norm(one) == pytest.approx(1.0, rel=1e-6)
    raw = watermark_direction(model, x[:3], 3)
    cos = sum(float((one[n] * raw[n]).sum()) for n in raw) / norm(raw)
    assert cos == pytest.approx(1.0, rel=1e-6)  # the same direction, unit length
    both = key_direction(model, x, labels, groups)
    other = key_direction(model, x[3:], labels[3:], groups[3:])
    for n in both:
        torch.testing.assert_close(both[n], one[n] + other[n], rtol=1e-5, atol=1e-7)
    # the log-probability of each group's label rises along its own direction
    with torch.no_grad():
        before = torch.log_softmax(model(x[:3]), 1)[:, 3].sum()
        for name, p in model.named_parameters():
            p.add_(one[name], alpha=1e-2)
        after = torch.log_softmax(model(x[:3]), 1)[:, 3].sum()
    assert after > before


def test_key_direction_refuses_a_group_with_two_labels() -> None:
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ConfigError, match="more than one label"):
        key_direction(tiny(), x, torch.tensor([1, 2]), torch.tensor([0, 0]))


def test_watermark_is_registered_and_needs_a_surrogate() -> None:
    assert "watermark" in defenses.available()
    with pytest.raises(ConfigError, match="needs a surrogate"):
        Watermark()


def test_answers_keep_top1_stay_in_the_l1_budget_and_do_not_depend_on_the_batch() -> None:
    victim, surrogate = tiny(0), tiny(1)
    d = Watermark(surrogate=surrogate, eps=1.5, keys=24, groups=4, key_seed=5)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = torch.softmax(victim(x) * 3, 1)
    out = d(x, y)
    torch.testing.assert_close(out.sum(1), torch.ones(40, dtype=out.dtype))
    assert bool((out >= 0).all())
    assert bool((out.argmax(1) == y.argmax(1)).all())
    assert float((out - y).abs().sum(1).max()) <= 1.5 + 1e-5
    assert float((out - y).abs().sum(1).mean()) > 0.1  # it does move the answers
    torch.testing.assert_close(d(x[:7], y[:7]), out[:7])  # batch-invariant
    free = Watermark(surrogate=surrogate, eps=1.5, keys=24, groups=4, key_seed=5,
                     preserve_argmax=False)  # fmt: skip
    assert float((free(x, y) - y).abs().sum(1).max()) <= 1.5 + 1e-5


def test_a_generated_key_is_fixed_by_its_seed_and_differs_across_seeds() -> None:
    surrogate = tiny(1)
    a = Watermark(surrogate=surrogate, keys=24, groups=4, key_seed=5).key
    b = Watermark(surrogate=surrogate, keys=24, groups=4, key_seed=5).key
    c = Watermark(surrogate=surrogate, keys=24, groups=4, key_seed=6).key
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert (a.n, a.num_groups, a.input_shape, a.num_classes) == (24, 4, (1, 8, 8), 10)
    # each group's secret label avoids the surrogate's own majority answer on it
    with torch.no_grad():
        top = surrogate(a.images).argmax(1)
    for g in range(a.num_groups):
        rows = a.groups == g
        assert int(a.group_labels[g]) != int(torch.bincount(top[rows], minlength=10).argmax())


def test_a_key_file_is_read_and_checked(tmp_path: Path) -> None:
    surrogate = tiny(1)
    key = generate_key_set(30, (1, 8, 8), 10, 9, groups=3, victim=surrogate)
    path = save_key_set(key, tmp_path / "owner.key")
    d = Watermark(surrogate=surrogate, key_file=str(path))
    assert d.key.fingerprint == key.fingerprint
    assert d.models() == {"surrogate": surrogate}  # the key stays on the owner's disk
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFileError):
        Watermark(surrogate=surrogate, key_file=str(path))
    wrong = generate_key_set(12, (1, 28, 28), 10, 9, groups=2)
    with pytest.raises(ConfigError, match="takes"):
        Watermark(surrogate=surrogate, key=wrong)
