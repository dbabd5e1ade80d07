"""The ``label_watermark`` defense: its class map, its answers, its records and its key set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stealproof import defenses
from stealproof.defenses.label_watermark import (
    RECORD_GLOB,
    LabelWatermark,
    relabel,
    relabel_mask,
    save_record,
    secret_label_map,
)
from stealproof.errors import ConfigError, DataFileError, InputValidationError
from stealproof.models import create_model
from stealproof.oracle import victim_posteriors
from stealproof.ownership import key_set_from_records, verify


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10).eval()


def batch(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    y, logits = victim_posteriors(tiny(), x)
    return x, y, logits


def by_rows(images: torch.Tensor) -> torch.Tensor:
    """A canonical order of distinct random images (their pixel sums differ)."""
    return images.reshape(images.shape[0], -1).double().sum(1).argsort()


def test_label_map_avoids_each_class_and_is_uniform_over_the_others() -> None:
    maps = torch.stack([secret_label_map(10, s) for s in range(3000)])
    assert bool((maps != torch.arange(10)).all())  # never a class's own label
    assert torch.equal(secret_label_map(10, 7), secret_label_map(10, 7))  # a function of the seed
    counts = torch.bincount(maps[:, 3], minlength=10)
    assert int(counts[3]) == 0
    others = counts[torch.arange(10) != 3].double()
    # 3000 draws over 9 classes: 333 expected each, sd ≈ 17; 6 sd is a bug, not chance
    assert float((others - 3000 / 9).abs().max()) < 6 * (3000 / 9 * 8 / 9) ** 0.5
    with pytest.raises(InputValidationError, match="at least 2 classes"):
        secret_label_map(1, 0)


def test_relabel_swaps_top1_with_the_map_in_masked_rows_only() -> None:
    _, y, _ = batch()
    label_map = secret_label_map(10, 1)
    mask = torch.arange(y.shape[0]) % 3 == 0
    out = relabel(y, mask, label_map)
    top = y.argmax(1)
    assert torch.equal(out[~mask], y[~mask])
    assert torch.equal(out[mask].argmax(1), label_map[top[mask]])
    # the same probabilities, two of them swapped: the answer looks like any other
    torch.testing.assert_close(out[mask].sort(1).values, y[mask].sort(1).values)
    assert torch.equal(out[mask].gather(1, label_map[top[mask]][:, None]), y[mask].amax(1, True))
    torch.testing.assert_close(out.sum(1), torch.ones(y.shape[0]))
    assert not torch.equal(out, y) and torch.equal(y, batch()[1])  # input untouched
    # min_top raises the secret label's probability, scaling the others down to make room
    raised = relabel(y, mask, label_map, min_top=0.9)
    torch.testing.assert_close(raised.sum(1), torch.ones(y.shape[0]))
    assert torch.equal(raised[~mask], y[~mask])
    new = label_map[top[mask]][:, None]
    assert bool((raised[mask].gather(1, new) >= 0.9 - 1e-6).all())
    assert torch.equal(raised[mask].argmax(1), label_map[top[mask]])
    others = raised[mask].scatter(1, new, 0.0) / out[mask].scatter(1, new, 0.0).clamp_min(1e-30)
    low = out[mask].gather(1, new)[:, 0] < 0.9  # rows that were raised: others scaled alike
    assert bool(low.any())
    ratio = others[low].max(1).values / others[low].masked_fill(others[low] == 0, 9).min(1).values
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=1e-4, atol=1e-4)


def test_relabel_makes_the_new_label_strict_on_ties() -> None:
    y = torch.full((2, 4), 0.25)
    out = relabel(y, torch.tensor([True, False]), torch.tensor([2, 0, 0, 0]))
    assert int(out[0].argmax()) == 2 and float(out[0, 2]) > float(out[0].sort().values[-2])
    assert torch.equal(out[1], y[1])


def test_relabel_mask_is_the_largest_logit_below_the_threshold() -> None:
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.5, 2.5]])
    assert relabel_mask(logits, 2.5).tolist() == [True, False, False]


def test_needs_a_threshold_and_logits() -> None:
    assert "label_watermark" in defenses.available()
    with pytest.raises(ConfigError, match="needs a threshold"):
        LabelWatermark()
    x, y, _ = batch(4)
    with pytest.raises(InputValidationError, match="needs the victim's logits"):
        LabelWatermark(threshold=1.0)(x, y)
    with pytest.raises(InputValidationError, match="fpr"):
        LabelWatermark(threshold=1.0, fpr=0.7)


def test_prepare_sets_the_threshold_at_the_fpr_quantile() -> None:
    x, y, logits = batch(2000)
    d = LabelWatermark.prepare(tiny(), x, fpr=0.05)
    assert isinstance(d, LabelWatermark)
    share = float(relabel_mask(logits, d.threshold).float().mean())
    assert share == pytest.approx(0.05, abs=0.002)
    out = d(x, y, logits)
    assert float((out.argmax(1) != y.argmax(1)).float().mean()) == pytest.approx(share)
    assert LabelWatermark.prepare(tiny(), x, threshold=-3.0).threshold == -3.0  # given: kept
    # batch-invariant and deterministic: a row's answer does not depend on its batch
    torch.testing.assert_close(d(x[:7], y[:7], logits[:7]), out[:7], rtol=0, atol=0)


def test_records_become_the_key_set(tmp_path: Path) -> None:
    x, y, logits = batch(400)
    victim = tiny()
    d = LabelWatermark.prepare(victim, x, fpr=0.2, seed=5, record_dir=str(tmp_path / "rec"))
    assert isinstance(d, LabelWatermark)
    out = torch.cat([d(x[:200], y[:200], logits[:200]), d(x[200:], y[200:], logits[200:])])
    d(x[:200], y[:200], logits[:200])  # a repeated batch rewrites its file, adds no key
    files = sorted((tmp_path / "rec").glob(RECORD_GLOB))
    assert len(files) == 2
    key = key_set_from_records(tmp_path / "rec")
    relabelled = out.argmax(1) != y.argmax(1)
    assert key.n == int(relabelled.sum())
    # files are read in name (hash) order: compare in a canonical row order
    k, r = by_rows(key.images), by_rows(x[relabelled])
    assert torch.equal(key.images[k], x[relabelled][r])
    assert torch.equal(key.labels[k], out[relabelled].argmax(1)[r])  # what the thief was given
    # one group per victim class, avoiding it; the same key as the owner's own recomputation
    assert torch.equal(key.avoid, torch.unique(y[relabelled].argmax(1)))
    assert torch.equal(key.avoid[key.groups][k], y[relabelled].argmax(1)[r])
    again = d.key_set(victim, x)
    a = by_rows(again.images)
    assert torch.equal(again.images[a], key.images[k])
    assert torch.equal(again.labels[a], key.labels[k])
    assert key_set_from_records(tmp_path / "rec", max_keys=3).n == 3
    # a suspect answering the map is caught at the floor; the victim itself is innocent
    label_map = secret_label_map(10, 5)

    class Clone(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(label_map[victim(t).argmax(1)], 10).float()

    assert verify(Clone(), key).p_value == pytest.approx(key.min_p)
    assert verify(victim, key).p_value == 1.0


def test_bad_record_directories_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not a directory"):
        key_set_from_records(tmp_path / "missing")
    with pytest.raises(DataFileError, match="holds no label_watermark records"):
        key_set_from_records(tmp_path)
    x = torch.rand(3, 1, 8, 8)
    save_record(tmp_path, x, torch.tensor([0, 1, 2]), secret_label_map(10, 1))
    save_record(tmp_path, x[:1], torch.tensor([0]), secret_label_map(10, 2))
    with pytest.raises(DataFileError, match="two secrets"):
        key_set_from_records(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / RECORD_GLOB.replace("*", "0")).write_bytes(b"not a record")
    with pytest.raises(DataFileError, match="not a label_watermark record"):
        key_set_from_records(bad)
    damaged = tmp_path / "damaged"
    save_record(damaged, x, torch.tensor([0, 1, 12]), secret_label_map(10, 1))
    with pytest.raises(DataFileError, match="damaged"):
        key_set_from_records(damaged)


def test_recording_needs_the_images(tmp_path: Path) -> None:
    _, y, logits = batch(50)
    d = LabelWatermark(threshold=1e9, record_dir=str(tmp_path))  # relabels every row
    with pytest.raises(InputValidationError, match="needs the query images"):
        d(None, y, logits)
