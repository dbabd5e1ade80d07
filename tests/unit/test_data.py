"""Tests for stealproof.data: built-in datasets, splits, thief pools, transforms, synthetic."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from stealproof.data.datasets import (
    Dataset,
    available_datasets,
    digits_images,
    load_dataset,
    mnist5k_images,
    stratified_split,
)
from stealproof.data.pools import SYNTHETIC_SIZE, Pool, available_pools, load_pool
from stealproof.data.synthetic import make_noise, make_shapes
from stealproof.data.transforms import fit_glyphs, match_channels, random_affine, resize
from stealproof.errors import ConfigError, DataFileError, UnknownNameError


def row_hashes(images: Tensor) -> list[str]:
    """One digest per image of its float32 bytes."""
    flat = images.detach().to(torch.float32).reshape(images.shape[0], -1).contiguous().numpy()
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in flat]


def in_unit_range(t: Tensor) -> bool:
    return float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- built-in datasets

_SPECS = {
    # name: (train, unlabeled, test, (C, H, W), all images)
    "digits": (1137, 300, 360, (1, 8, 8), digits_images),
    "mnist5k": (3500, 500, 1000, (1, 28, 28), mnist5k_images),
}


@functools.cache
def cached_dataset(name: str) -> Dataset:
    """One load per test module (tests must not mutate it)."""
    return load_dataset(name)


@pytest.fixture(params=sorted(_SPECS))
def builtin(request: pytest.FixtureRequest) -> Dataset:
    return cached_dataset(request.param)


def test_builtin_shapes_dtypes_and_range(builtin: Dataset) -> None:
    n_train, n_unl, n_test, shape, _ = _SPECS[builtin.name]
    assert builtin.unlabeled is not None
    assert builtin.num_classes == 10
    assert builtin.input_shape == shape
    assert builtin.image_size == shape[1:]
    for split, n in [(builtin.train, n_train), (builtin.unlabeled, n_unl), (builtin.test, n_test)]:
        assert split.images.shape == (n, *shape)
        assert split.labels.shape == (n,)
        assert split.images.dtype == torch.float32
        assert split.labels.dtype == torch.int64
        assert float(split.images.min()) == 0.0
        assert float(split.images.max()) == 1.0
        assert set(split.labels.tolist()) == set(range(10))


def test_builtin_classes_are_balanced(builtin: Dataset) -> None:
    assert builtin.unlabeled is not None
    n_train, n_unl, n_test, _, _ = _SPECS[builtin.name]
    _, all_labels = _SPECS[builtin.name][4]()
    share = torch.bincount(all_labels, minlength=10).double() / len(all_labels)
    for split, n in [(builtin.train, n_train), (builtin.unlabeled, n_unl), (builtin.test, n_test)]:
        counts = torch.bincount(split.labels, minlength=10)
        assert int(counts.sum()) == n
        # stratified: every class within one example of its share of the source data
        assert float((counts - n * share).abs().max()) <= 1.0, counts.tolist()


def test_mnist5k_classes_are_exactly_balanced() -> None:
    ds = cached_dataset("mnist5k")
    assert ds.unlabeled is not None
    assert torch.bincount(ds.train.labels).tolist() == [350] * 10
    assert torch.bincount(ds.unlabeled.labels).tolist() == [50] * 10
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10


def test_builtin_splits_partition_the_source_data(builtin: Dataset) -> None:
    assert builtin.unlabeled is not None
    all_images, all_labels = _SPECS[builtin.name][4]()
    train = row_hashes(builtin.train.images)
    unl = row_hashes(builtin.unlabeled.images)
    test = row_hashes(builtin.test.images)
    # pairwise disjoint ...
    assert not set(train) & set(unl)
    assert not set(train) & set(test)
    assert not set(unl) & set(test)
    # ... and together exactly the source images (as a multiset), with their own labels
    assert Counter(train + unl + test) == Counter(row_hashes(all_images))
    label_of = dict(zip(row_hashes(all_images), all_labels.tolist(), strict=True))
    for split in (builtin.train, builtin.unlabeled, builtin.test):
        assert [label_of[h] for h in row_hashes(split.images)] == split.labels.tolist()


def test_builtin_loading_is_deterministic(builtin: Dataset) -> None:
    again = load_dataset(builtin.name)
    assert builtin.unlabeled is not None and again.unlabeled is not None
    for a, b in [
        (builtin.train, again.train),
        (builtin.unlabeled, again.unlabeled),
        (builtin.test, again.test),
    ]:
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)
    # a fresh copy: mutating one load does not leak into the next
    again.train.images[0] = 0.5
    assert not torch.equal(load_dataset(builtin.name).train.images[0], again.train.images[0])


def test_digits_images_are_copies() -> None:
    x, _ = digits_images()
    x[:] = -1.0
    assert float(digits_images()[0].min()) == 0.0


def test_available_datasets_names_sources() -> None:
    names = available_datasets()
    assert names["digits"] == "built-in" and names["mnist5k"] == "built-in"
    assert names["mnist"] == "files" and names["cifar10"] == "files"


def test_unknown_dataset_raises_with_suggestion() -> None:
    with pytest.raises(UnknownNameError, match="did you mean digits"):
        load_dataset("digit")


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "kmnist", "cifar10", "cifar100"])
def test_file_dataset_without_data_dir_raises(name: str) -> None:
    with pytest.raises(DataFileError, match="data_dir"):
        load_dataset(name)


def test_file_dataset_with_missing_dir_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(DataFileError) as info:
        load_dataset("mnist", missing)
    assert str(missing) in str(info.value)


# ---------------------------------------------------------------- stratified_split


def test_stratified_split_sizes_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(4), 25)  # 100 examples, 25 per class
    sizes = (20, 40, 20)
    parts = stratified_split(labels, sizes, seed=3)
    assert [len(p) for p in parts] == list(sizes)
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union) == 80  # pairwise disjoint
    assert union.min() >= 0 and union.max() < 100
    for p, size in zip(parts, sizes, strict=True):
        counts = np.bincount(labels[p], minlength=4)
        assert counts.tolist() == [size // 4] * 4


def test_stratified_split_exhausting_all_examples() -> None:
    labels = np.arange(60) % 3
    parts = stratified_split(labels, (15, 45))
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))
    assert [len(p) for p in parts] == [15, 45]


def test_stratified_split_is_seeded() -> None:
    labels = np.arange(200) % 5
    a = stratified_split(labels, (50, 50), seed=1)
    b = stratified_split(labels, (50, 50), seed=1)
    c = stratified_split(labels, (50, 50), seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_stratified_split_rejects_too_large_sizes() -> None:
    with pytest.raises(ValueError, match="exceed"):
        stratified_split(np.zeros(10, dtype=np.int64), (6, 5))


# ---------------------------------------------------------------- pools

# name: (image size, len, number of groups)
_POOLS = {
    "digits28": ((28, 28), 1797, 10),
    "mnist8": ((8, 8), 5000, 10),
    "noise": ((8, 8), SYNTHETIC_SIZE, 3),
    "shapes": ((8, 8), SYNTHETIC_SIZE, 3),
    "mnist5k-unlabeled": ((28, 28), 500, 10),
    "digits-unlabeled": ((8, 8), 300, 10),
}


@pytest.fixture(scope="module", params=sorted(_POOLS))
def pool(request: pytest.FixtureRequest) -> Pool:
    size, _, _ = _POOLS[request.param]
    return load_pool(request.param, channels=1, image_size=size, seed=0)


def test_pool_shape_range_and_groups(pool: Pool) -> None:
    size, n, n_groups = _POOLS[pool.name]
    assert pool.images.shape == (n, 1, *size)
    assert len(pool) == n
    assert pool.images.dtype == torch.float32
    assert float(pool.images.min()) >= 0.0
    assert float(pool.images.max()) <= 1.0
    assert float(pool.images.max()) > 0.5  # not blank
    assert pool.groups.shape == (n,)
    assert pool.num_groups == n_groups
    counts = torch.bincount(pool.groups, minlength=n_groups)
    assert bool((counts > 0).all())
    assert int(counts.sum()) == n


def test_unlabeled_pool_groups_are_exactly_the_held_out_labels() -> None:
    p = load_pool("mnist5k-unlabeled", channels=1, image_size=(28, 28))
    ds = cached_dataset("mnist5k")
    assert ds.unlabeled is not None
    assert torch.equal(p.images, ds.unlabeled.images)
    assert torch.equal(p.groups, ds.unlabeled.labels)
    assert torch.bincount(p.groups).tolist() == [50] * 10


def test_pool_resized_to_other_victim_size() -> None:
    p = load_pool("digits-unlabeled", channels=1, image_size=(28, 28))
    assert p.images.shape == (300, 1, 28, 28)
    assert in_unit_range(p.images)


def test_digits28_is_framed_like_mnist() -> None:
    p = load_pool("digits28", channels=1, image_size=(28, 28))
    # a 4-pixel empty border, as in MNIST
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False
    assert float(p.images[:, :, border].abs().max()) == 0.0
    assert float(p.images[:, :, 4:24, 4:24].max()) > 0.9


def test_pool_draw_within_size_is_a_permutation(pool: Pool) -> None:
    n = min(len(pool), 257)
    images, idx = pool.draw(n, gen(1))
    assert images.shape == (n, *pool.images.shape[1:])
    assert idx.shape == (n,)
    assert len(set(idx.tolist())) == n  # no repeated index
    assert int(idx.min()) >= 0 and int(idx.max()) < len(pool)
    # within the first pass the images are the pool's own, unaugmented
    assert torch.equal(images, pool.images[idx])


def test_pool_draw_whole_pool_covers_every_index() -> None:
    p = load_pool("digits-unlabeled", channels=1, image_size=(8, 8))
    _, idx = p.draw(len(p), gen(2))
    assert sorted(idx.tolist()) == list(range(len(p)))


def test_pool_draw_more_than_pool_augments_the_extra_images() -> None:
    p = load_pool("digits-unlabeled", channels=1, image_size=(8, 8))
    n = 2 * len(p) + 50
    images, idx = p.draw(n, gen(3))
    assert images.shape == (n, 1, 8, 8)
    assert sorted(idx[: len(p)].tolist()) == list(range(len(p)))  # first pass: permutation
    assert sorted(idx[len(p) : 2 * len(p)].tolist()) == list(range(len(p)))  # second too
    assert torch.equal(images[: len(p)], p.images[idx[: len(p)]])
    extra = images[len(p) :]
    assert in_unit_range(extra)
    pool_hashes = set(row_hashes(p.images))
    novel = [h not in pool_hashes for h in row_hashes(extra)]
    assert sum(novel) > 0.9 * len(novel)
    # the pool itself is not modified by drawing
    assert set(row_hashes(p.images)) == pool_hashes


def test_pool_draw_more_than_pool_without_augment_repeats_images() -> None:
    p = load_pool("digits-unlabeled", channels=1, image_size=(8, 8))
    images, idx = p.draw(len(p) + 10, gen(3), augment=False)
    assert torch.equal(images, p.images[idx])


def test_pool_draw_same_seed_same_draw(pool: Pool) -> None:
    n = len(pool) + 5 if len(pool) <= 500 else 100
    a_img, a_idx = pool.draw(n, gen(7))
    b_img, b_idx = pool.draw(n, gen(7))
    c_img, c_idx = pool.draw(n, gen(8))
    assert torch.equal(a_idx, b_idx) and torch.equal(a_img, b_img)
    assert not torch.equal(a_idx, c_idx)
    assert not torch.equal(a_img, c_img)


def test_pool_draw_zero_and_negative() -> None:
    p = load_pool("digits-unlabeled", channels=1, image_size=(8, 8))
    images, idx = p.draw(0, gen(0))
    assert images.shape == (0, 1, 8, 8) and idx.shape == (0,)
    with pytest.raises(ValueError, match="n must be"):
        p.draw(-1, gen(0))


@pytest.mark.parametrize("augment", [True, False])
def test_draw_from_groups_returns_requested_groups(pool: Pool, augment: bool) -> None:
    _, _, n_groups = _POOLS[pool.name]
    groups = torch.arange(60) % n_groups
    images, idx = pool.draw_from_groups(groups, gen(4), augment=augment)
    assert images.shape == (60, *pool.images.shape[1:])
    assert torch.equal(pool.groups[idx], groups)
    assert in_unit_range(images)
    if augment:
        assert not torch.equal(images, pool.images[idx])
    else:
        assert torch.equal(images, pool.images[idx])


def test_draw_from_groups_samples_across_each_group() -> None:
    p = load_pool("digits-unlabeled", channels=1, image_size=(8, 8))
    groups = torch.full((400,), 3, dtype=torch.long)
    _, idx = p.draw_from_groups(groups, gen(5), augment=False)
    assert bool((p.groups[idx] == 3).all())
    members = set(torch.nonzero(p.groups == 3).flatten().tolist())
    # 400 uniform draws over ~30 members hit (almost) all of them
    assert len(set(idx.tolist())) >= len(members) - 1
    assert set(idx.tolist()) <= members


def test_draw_from_groups_rejects_empty_group() -> None:
    p = Pool("tiny", torch.rand(4, 1, 2, 2), torch.tensor([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="empty group"):
        p.draw_from_groups(torch.tensor([0, 1]), gen(0))


def test_pool_rejects_malformed_tensors() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Pool("bad", torch.rand(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="one entry per image"):
        Pool("bad", torch.rand(3, 1, 2, 2), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("name", "size"),
    [("digits28", (28, 28)), ("mnist8", (8, 8)), ("digits-unlabeled", (8, 8))],
)
def test_three_channel_request_repeats_grayscale(name: str, size: tuple[int, int]) -> None:
    gray = load_pool(name, channels=1, image_size=size)
    rgb = load_pool(name, channels=3, image_size=size)
    assert rgb.images.shape == (len(gray), 3, *size)
    for c in range(3):
        assert torch.equal(rgb.images[:, c], gray.images[:, 0])
    assert torch.equal(rgb.groups, gray.groups)


@pytest.mark.parametrize("name", ["noise", "shapes"])
def test_synthetic_pool_three_channels(name: str) -> None:
    p = load_pool(name, channels=3, image_size=(6, 6), seed=0)
    assert p.images.shape == (SYNTHETIC_SIZE, 3, 6, 6)
    # colour channels are drawn independently, not a repeated grayscale
    assert not torch.equal(p.images[:, 0], p.images[:, 1])
    assert in_unit_range(p.images)


def test_unknown_pool_raises_with_suggestion() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_pool("digits29", channels=1, image_size=(8, 8))
    assert "did you mean digits28" in str(info.value)
    assert "file:PATH" in str(info.value)


def test_unlabeled_pool_of_file_dataset_needs_data_dir() -> None:
    with pytest.raises(DataFileError):
        load_pool("mnist-unlabeled", channels=1, image_size=(28, 28))


def test_available_pools_describes_the_builtins() -> None:
    assert set(_POOLS) <= set(available_pools())


@pytest.mark.parametrize("name", ["noise", "shapes"])
def test_synthetic_pools_deterministic_per_seed(name: str) -> None:
    a = load_pool(name, channels=1, image_size=(5, 5), seed=11)
    b = load_pool(name, channels=1, image_size=(5, 5), seed=11)
    c = load_pool(name, channels=1, image_size=(5, 5), seed=12)
    assert torch.equal(a.images, b.images) and torch.equal(a.groups, b.groups)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.groups, c.groups)
    # the seed changes almost every image, not just a few
    same = (a.images == c.images).flatten(1).all(dim=1)
    assert float(same.float().mean()) < 0.01


def test_dataset_pools_ignore_seed() -> None:
    a = load_pool("digits-unlabeled", channels=1, image_size=(8, 8), seed=0)
    b = load_pool("digits-unlabeled", channels=1, image_size=(8, 8), seed=99)
    assert torch.equal(a.images, b.images)


# ---------------------------------------------------------------- synthetic generators


@pytest.mark.parametrize("make", [make_noise, make_shapes])
def test_synthetic_generators_kinds_and_range(make: object) -> None:
    images, kind = make(300, 2, (6, 10), gen(0))  # type: ignore[operator]
    assert images.shape == (300, 2, 6, 10)
    assert kind.shape == (300,) and kind.dtype == torch.int64
    assert set(kind.tolist()) == {0, 1, 2}
    assert in_unit_range(images)


def test_noise_kinds_differ_in_character() -> None:
    images, kind = make_noise(200, 1, (8, 8), gen(0))
    zeros = (images == 0).flatten(1).float().mean(dim=1)
    # sparse images are mostly exactly zero; uniform ones practically never
    assert float(zeros[kind == 2].mean()) > 0.5
    assert float(zeros[kind == 0].mean()) < 0.01
    # smoothed images are min-max normalised to [0, 1]
    smooth = images[kind == 1].flatten(1)
    torch.testing.assert_close(smooth.amin(dim=1), torch.zeros(len(smooth)))
    torch.testing.assert_close(smooth.amax(dim=1), torch.ones(len(smooth)))


# ---------------------------------------------------------------- transforms


def test_resize_output_size_and_range() -> None:
    x = torch.rand(5, 2, 28, 28, generator=gen(0))
    for size in [(8, 8), (32, 32), (10, 14)]:
        out = resize(x, size)
        assert out.shape == (5, 2, *size)
        assert in_unit_range(out)
    assert resize(x, (28, 28)) is x
    # a constant image stays constant
    const = torch.full((1, 1, 28, 28), 0.3)
    torch.testing.assert_close(resize(const, (8, 8)), torch.full((1, 1, 8, 8), 0.3))


def test_resize_clamps_overshoot() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., ::2, ::2] = 1.0  # high-frequency pattern makes bilinear/antialias overshoot
    out = resize(x, (29, 29))
    assert in_unit_range(out)


def test_match_channels() -> None:
    gray = torch.rand(3, 1, 4, 4, generator=gen(0))
    rgb = match_channels(gray, 3)
    assert rgb.shape == (3, 3, 4, 4)
    assert rgb.is_contiguous()
    for c in range(3):
        assert torch.equal(rgb[:, c], gray[:, 0])
    assert match_channels(gray, 1) is gray
    colour = torch.rand(3, 3, 4, 4, generator=gen(1))
    torch.testing.assert_close(match_channels(colour, 1), colour.mean(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="cannot convert"):
        match_channels(colour, 2)


def test_random_affine_shape_range_and_determinism() -> None:
    x = torch.rand(16, 3, 12, 12, generator=gen(0))
    a = random_affine(x, gen(5))
    b = random_affine(x, gen(5))
    c = random_affine(x, gen(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert in_unit_range(a)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    # every image gets its own transform: identical inputs give different outputs
    same = x[:1].expand(8, -1, -1, -1).contiguous()
    out = random_affine(same, gen(5))
    assert not torch.equal(out[0], out[1])
    assert random_affine(x[:0], gen(0)).shape == (0, 3, 12, 12)


def test_random_affine_identity_when_ranges_are_zero() -> None:
    x = torch.rand(4, 1, 8, 8, generator=gen(0))
    out = random_affine(x, gen(1), degrees=0.0, translate=0.0, scale=(1.0, 1.0), brightness=0.0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_fit_glyphs_output_size_and_framing() -> None:
    x = torch.rand(4, 1, 8, 8, generator=gen(0))
    out = fit_glyphs(x, (28, 28), 0.0, 4 / 28)
    assert out.shape == (4, 1, 28, 28)
    assert float(out[..., :4, :].abs().max()) == 0.0
    assert float(out[..., :, 24:].abs().max()) == 0.0
    big = torch.rand(4, 1, 28, 28, generator=gen(1))
    small = fit_glyphs(big, (8, 8), 4 / 28, 0.0)
    assert small.shape == (4, 1, 8, 8)
    assert in_unit_range(small)
    # cropping the 4-pixel margin first: the margin does not influence the output
    framed = big.clone()
    framed[..., :4, :] = 0
    framed[..., 24:, :] = 0
    framed[..., :, :4] = 0
    framed[..., :, 24:] = 0
    torch.testing.assert_close(fit_glyphs(framed, (8, 8), 4 / 28, 0.0), small)


def test_mixture_pool_holds_every_image_of_each_part_with_groups_kept_apart() -> None:
    shapes = load_pool("shapes", channels=1, image_size=(28, 28), seed=3)
    digits = load_pool("digits28", channels=1, image_size=(28, 28), seed=3)
    mix = load_pool("shapes+digits28", channels=1, image_size=(28, 28), seed=3)
    assert mix.name == "shapes+digits28" and len(mix) == len(shapes) + len(digits)
    assert torch.equal(mix.images[: len(shapes)], shapes.images)
    assert torch.equal(mix.images[len(shapes) :], digits.images)
    assert torch.equal(mix.groups[len(shapes) :], digits.groups + shapes.num_groups)
    assert mix.num_groups == shapes.num_groups + digits.num_groups


@pytest.mark.parametrize("name", ["shapes+shapes", "shapes+", "+noise"])
def test_mixture_pool_refuses_a_repeated_or_empty_part(name: str) -> None:
    with pytest.raises(ConfigError, match="joined by '\\+'"):
        load_pool(name, channels=1, image_size=(28, 28))


def test_mixture_pool_names_an_unknown_part() -> None:
    with pytest.raises(UnknownNameError, match="unknown pool 'nois'; did you mean noise"):
        load_pool("shapes+nois", channels=1, image_size=(28, 28))
