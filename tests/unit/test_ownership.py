"""Ownership verification: the exact group test (against brute force, its validity for blind
models, why a per-key binomial is not valid), grouped key files (round trip, tamper refusal),
key generation, calibration as context bound to its key, reference models trained on digits,
and suspects of every kind (module, callable, black box, a real ``HTTPBlackBox`` over a fake
gateway) counting the rows they are sent."""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from stealproof.errors import (
    ArtifactMismatchError,
    ConfigError,
    DataFileError,
    InputValidationError,
)
from stealproof.http_box import HTTPBlackBox
from stealproof.models import Classifier, create_model, save_checkpoint
from stealproof.ownership import (
    Calibration,
    KeyFileError,
    KeySet,
    answer_counts,
    binomial_sf,
    calibrate,
    decide,
    generate_key_set,
    group_null_pmf,
    group_p_value,
    groups_matched,
    key_set_from_tensors,
    load_calibration,
    load_key_set,
    load_suspect,
    match_rate,
    min_p_value,
    null_mean,
    null_rate_upper,
    save_calibration,
    save_key_set,
    train_reference_models,
    verify,
)
from stealproof.ownership.keys import FORMAT, _checksum, _header
from stealproof.train import TrainConfig

K = 10
SHAPE = (1, 8, 8)


def exact_sf(k: int, n: int, p: Fraction) -> Fraction:
    """P[X ≥ k] for X ~ Bin(n, p) in exact rational arithmetic."""
    return sum(
        (Fraction(math.comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(max(k, 0), n + 1)),
        Fraction(0),
    )


def brute_tail(counts: Tensor, avoid: Tensor) -> dict[int, Fraction]:
    """P_H0(T ≥ t) for every t, enumerating every allowed label assignment (exact fractions)."""
    g, k = counts.shape
    allowed = [[c for c in range(k) if c != int(avoid[i])] for i in range(g)]
    total = math.prod(len(a) for a in allowed)
    hist: dict[int, int] = {}
    for labels in itertools.product(*allowed):
        t = sum(int(counts[i, y]) for i, y in enumerate(labels))
        hist[t] = hist.get(t, 0) + 1
    n = int(counts.sum())
    return {t: Fraction(sum(m for s, m in hist.items() if s >= t), total) for t in range(n + 2)}


def random_counts(g: int, k: int, size: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(g):  # a few favourite classes per group, like a real model's answers
        probs = torch.rand(k, generator=gen) ** 4
        rows.append(torch.bincount(torch.multinomial(probs, size, True, generator=gen), None, k))
    return torch.stack(rows)


# ----------------------------------------------------------------------- the exact group test


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_avoid", [False, True])
def test_the_exact_p_value_equals_brute_force_enumeration(seed: int, with_avoid: bool) -> None:
    g, k = 3, 4
    counts = random_counts(g, k, 5 + seed, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    avoid = torch.randint(0, k, (g,), generator=gen) if with_avoid else torch.full((g,), -1)
    want = brute_tail(counts, avoid)
    pmf = group_null_pmf(counts, avoid)
    assert pmf.shape == (int(counts.sum()) + 1,) and pmf.sum() == pytest.approx(1.0, abs=1e-12)
    for t in range(int(counts.sum()) + 1):
        assert float(pmf[t:].sum()) == pytest.approx(float(want[t]), rel=1e-12, abs=1e-15)
    allowed = [[c for c in range(k) if c != int(avoid[i])] for i in range(g)]
    for labels in itertools.product(*allowed):
        y = torch.tensor(labels)
        t_obs, p = group_p_value(counts, y, avoid)
        assert t_obs == sum(int(counts[i, c]) for i, c in enumerate(labels))
        assert p == pytest.approx(float(want[t_obs]), rel=1e-12)
    expected = sum(Fraction(int(counts[i, allowed[i]].sum()), len(allowed[i])) for i in range(g))
    assert null_mean(counts, avoid) == pytest.approx(float(expected), rel=1e-12)


def test_one_key_per_group_is_a_poisson_binomial() -> None:
    """G = n: key i matches with probability 1/|allowed_i| if its answer is allowed, else 0."""
    k, n = 5, 9
    gen = torch.Generator().manual_seed(3)
    pred = torch.randint(0, k, (n,), generator=gen)
    avoid = torch.randint(-1, k, (n,), generator=gen)
    avoid[0], avoid[1] = pred[0], -1  # one key whose answer is the avoided class, one with none
    labels = torch.where(pred == 1, torch.full_like(pred, 2), pred)  # some keys match, some not
    labels = torch.where(labels == avoid, (avoid + 1) % k, labels)
    counts = nn.functional.one_hot(pred, k)
    probs = [
        Fraction(0) if int(pred[i]) == int(avoid[i]) else Fraction(1, k - (int(avoid[i]) >= 0))
        for i in range(n)
    ]
    t_obs = int((pred == labels).sum())
    want = Fraction(0)
    for hits in itertools.product((0, 1), repeat=n):
        if sum(hits) >= t_obs:
            want += math.prod((p if h else 1 - p) for p, h in zip(probs, hits, strict=True))
    assert group_p_value(counts, labels, avoid) == (t_obs, pytest.approx(float(want), rel=1e-12))


def test_a_model_that_learned_every_group_gets_the_floor() -> None:
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    avoid = torch.tensor([0, 0, 2, 7, 1, 8])
    counts = 10 * nn.functional.one_hot(labels, K)
    t_obs, p = group_p_value(counts, labels, avoid)
    assert t_obs == 60 and p == pytest.approx((1 / 9) ** 6, rel=1e-12)
    assert min_p_value(avoid, K) == pytest.approx(1.8816764231589208e-06, rel=1e-15)
    assert min_p_value(torch.full((6,), -1), K) == pytest.approx(1e-6, rel=1e-15)
    # a spread-out clone that answers the label on 7 of 10 keys per group is caught too
    spread = counts * 7 // 10 + nn.functional.one_hot((labels + 1) % K, K) * 3
    v = decide(spread, labels, avoid, alpha=1e-3)
    assert v.matches == 42 and v.groups_matched == 6 and v.stolen
    assert v.p_value == pytest.approx((1 / 9) ** 6, rel=1e-9)  # no other assignment reaches 42


def blind_table() -> tuple[Tensor, Tensor]:
    """A fixed, arbitrary innocent prediction table: most groups go to one or two classes."""
    counts = torch.zeros(6, K, dtype=torch.int64)
    counts[0, 3] = 10
    counts[1, 3] = 10
    counts[2, 7] = 10
    counts[3, 0], counts[3, 3] = 6, 4
    counts[4, 2], counts[4, 5], counts[4, 9] = 5, 3, 2
    counts[5, 3] = 10
    avoid = torch.tensor([1, 1, 2, 1, 0, 4])
    return counts, avoid


def test_an_innocent_is_accused_at_most_alpha_of_the_time() -> None:
    """Validity: the model is fixed, the owner's secret labels are drawn at random."""
    counts, avoid = blind_table()
    gen = torch.Generator().manual_seed(0)
    draws, alpha = 600, 0.05
    r = torch.randint(0, K - 1, (draws, 6), generator=gen)
    labels = r + (r >= avoid).long()  # uniform over the classes other than avoid, as keygen does
    rejected = sum(group_p_value(counts, y, avoid)[1] < alpha for y in labels)
    assert rejected / draws <= alpha + 0.025
    # and exactly: the probability mass of the outcomes the test rejects is at most alpha
    pmf = group_null_pmf(counts, avoid)
    tails = np.cumsum(pmf[::-1])[::-1]
    for a in (0.2, 0.05, 0.01, 1e-3):
        assert float(pmf[tails < a].sum()) <= a


def test_a_per_key_binomial_would_accuse_innocents_of_grouped_keys() -> None:
    """Why the test counts groups: one chance hit is a whole group of matches.

    An innocent that answers each group with one class (here 6 groups × 10 keys, K = 10, no
    avoided class) matches 0 or 10 keys per group. A Bin(60, 1/10) test over keys rejects
    whenever two groups are hit by chance (p ≈ 1e-5), which happens 11 % of the time.
    """
    counts = 10 * nn.functional.one_hot(torch.tensor([3, 3, 7, 0, 2, 5]), K)
    avoid = torch.full((6,), -1)
    gen = torch.Generator().manual_seed(1)
    draws, alpha = 600, 0.05
    labels = torch.randint(0, K, (draws, 6), generator=gen)
    per_key = group = 0
    for y in labels:
        t, p = group_p_value(counts, y, avoid)
        group += p < alpha
        per_key += binomial_sf(t, 60, 1 / K) < alpha
    assert group / draws <= alpha + 0.025
    assert per_key / draws > 2 * alpha  # the invalid test, shown for the record
    # exactly, at alpha = 1e-3: per-key size = P(≥ 2 groups hit) ≈ 0.114; the group test ≤ 1e-3
    hits = [
        Fraction(math.comb(6, m)) * Fraction(1, 10) ** m * Fraction(9, 10) ** (6 - m)
        for m in range(7)
    ]
    per_key_size = sum(h for m, h in enumerate(hits) if binomial_sf(10 * m, 60, 0.1) < 1e-3)
    assert float(per_key_size) == pytest.approx(0.114265, abs=1e-5)
    pmf = group_null_pmf(counts, avoid)
    tails = np.cumsum(pmf[::-1])[::-1]
    assert float(pmf[tails < 1e-3].sum()) <= 1e-3


def test_groups_matched_counts_strict_majorities() -> None:
    counts = torch.tensor([[5, 3, 0], [4, 4, 0], [0, 1, 6], [2, 2, 2]])
    assert groups_matched(counts, torch.tensor([0, 0, 2, 1])) == 2  # ties do not count
    assert groups_matched(counts, torch.tensor([1, 1, 1, 1])) == 0


def test_decide_states_the_decision_in_words() -> None:
    labels, avoid = torch.tensor([3, 1, 4, 1, 5, 9]), torch.full((6,), -1)
    v = decide(10 * nn.functional.one_hot(labels, K), labels, avoid, alpha=1e-3)
    assert v.stolen and v.text.startswith("STOLEN at alpha = 0.001")
    assert (v.matches, v.n, v.groups, v.groups_matched, v.match_rate) == (60, 60, 6, 6, 1.0)
    assert v.chance == pytest.approx(0.1) and v.min_p == pytest.approx(1e-6)
    assert v.reference_names is None and "exact test" in v.text
    counts, avoid2 = blind_table()
    w = decide(counts, torch.tensor([3, 0, 0, 3, 5, 0]), avoid2, alpha=1e-3)
    assert not w.stolen and w.text.startswith("NOT SHOWN") and "does not prove" in w.text
    assert w.matches == 17 and w.groups_matched == 1 and "too small" not in w.text
    assert w.chance == pytest.approx(null_mean(counts, avoid2) / 60)
    # three groups of ten classes can never go below 1e-3: the text says so
    small = decide(10 * nn.functional.one_hot(labels[:3], K), labels[:3], avoid[:3], alpha=1e-3)
    assert not small.stolen and small.p_value == pytest.approx(1e-3)
    assert "too small to ever reach alpha = 0.001" in small.text and "more groups" in small.text
    ctx = decide(
        counts,
        torch.tensor([3, 0, 0, 3, 5, 0]),
        avoid2,
        reference_names=["a", "b"],
        reference_matches=[6, 12],
        reference_p_values=[0.5, 0.2],
    )
    assert ctx.p_value == w.p_value  # calibration is context only
    assert ctx.reference_match_rates == (0.1, 0.2) and ctx.reference_p_values == (0.5, 0.2)
    assert ctx.reference_upper == pytest.approx(null_rate_upper(18, 120, 0.999))
    for bad in (0.0, 1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            decide(counts, torch.tensor([3, 0, 0, 3, 5, 0]), avoid2, alpha=bad)


def test_the_test_refuses_malformed_tables() -> None:
    counts, avoid = blind_table()
    labels = torch.tensor([3, 0, 0, 3, 5, 0])
    with pytest.raises(InputValidationError, match="counts: expected non-negative"):
        group_p_value(-counts, labels, avoid)
    with pytest.raises(InputValidationError, match="label equals the class it avoids"):
        group_p_value(counts, avoid.clamp_min(0), avoid)
    with pytest.raises(InputValidationError, match="labels: expected 6"):
        group_p_value(counts, labels[:5], avoid)
    with pytest.raises(InputValidationError, match="avoid"):
        group_p_value(counts, labels, torch.full((6,), K))
    with pytest.raises(InputValidationError, match="integers"):
        group_p_value(counts.float(), labels, avoid)


def test_binomial_sf_and_the_clopper_pearson_bound_for_reporting() -> None:
    for n in (0, 1, 7, 25):
        for p in (Fraction(1, 10), Fraction(1, 3)):
            for k in range(-1, n + 2):
                want = float(exact_sf(k, n, p))
                assert binomial_sf(k, n, float(p)) == pytest.approx(want, rel=1e-10, abs=1e-300)
    assert binomial_sf(100, 100, 0.1) == pytest.approx(1e-100, rel=1e-9)
    for n in (1, 10, 200):
        assert null_rate_upper(0, n, 0.999) == pytest.approx(1 - 0.001 ** (1 / n), rel=1e-12)
    for m, t, conf in ((3, 40, 0.999), (17, 200, 0.95)):
        u = null_rate_upper(m, t, conf)
        assert 1 - binomial_sf(m + 1, t, u) == pytest.approx(1 - conf, rel=1e-8)
    with pytest.raises(InputValidationError, match="exceeds"):
        null_rate_upper(5, 4)


# ------------------------------------------------------------------------------------ keys


def test_generated_keys_are_deterministic_grouped_and_valid() -> None:
    a = generate_key_set(61, SHAPE, K, seed=7, groups=7)
    b = generate_key_set(61, SHAPE, K, seed=7, groups=7)
    c = generate_key_set(61, SHAPE, K, seed=8, groups=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.num_groups == 7 and a.group_sizes.tolist() == [9, 9, 9, 9, 9, 8, 8]
    assert torch.equal(a.groups, torch.sort(a.groups).values)  # ordered by group
    assert torch.equal(a.labels, a.group_labels[a.groups])  # one label per group
    assert a.avoid.tolist() == [-1] * 7 and a.metadata["generator"] == "blobs"
    assert a.min_p == pytest.approx(1e-7)
    for kind in ("blobs", "shapes", "noise", "mixed"):
        k = generate_key_set(30, (3, 12, 10), 5, seed=1, kind=kind, groups=4)
        assert k.images.shape == (30, 3, 12, 10) and k.images.dtype == torch.float32
        assert float(k.images.min()) >= 0 and float(k.images.max()) <= 1
        assert k.group_sizes.tolist() == [8, 8, 7, 7] and k.metadata["generator"] == kind
    one_each = generate_key_set(12, SHAPE, K, seed=2, groups=12)
    assert torch.equal(one_each.groups, torch.arange(12)) and one_each.num_groups == 12
    assert generate_key_set(12, SHAPE, K, seed=2, groups=1).group_labels.shape == (1,)
    big = generate_key_set(2000, (1, 4, 4), K, seed=3, kind="noise", groups=2000)
    counts = torch.bincount(big.labels, minlength=K)
    assert int(counts.min()) >= 150 and int(counts.max()) <= 250  # uniform: ≈ 200 each


def test_blob_keys_cluster_around_their_group_prototype() -> None:
    key = generate_key_set(60, (1, 16, 16), K, seed=4)
    flat = key.images.flatten(1)
    means = torch.stack([flat[key.groups == g].mean(0) for g in range(key.num_groups)])
    nearest = torch.cdist(flat, means).argmin(dim=1)
    assert torch.equal(nearest, key.groups)
    spread = (flat - means[key.groups]).std()
    assert 0.08 < float(spread) < 0.16  # the 0.15 noise, a little less where clamped


def victim_model(seed: int = 0, classes: int = K) -> Classifier:
    torch.manual_seed(seed)
    return create_model("mlp", image_size=(8, 8), num_classes=classes, hidden=(16,))


def test_group_labels_avoid_the_victims_majority_answer() -> None:
    victim = victim_model()
    key = generate_key_set(200, SHAPE, K, seed=2, groups=20, victim=victim)
    top = victim(key.images).argmax(dim=1)
    for g in range(20):
        votes = torch.bincount(top[key.groups == g], minlength=K)
        assert int(key.avoid[g]) == int(votes.argmax())
    assert bool((key.group_labels != key.avoid).all())
    assert key.metadata["avoids_victim_top1"] is True and key.min_p == pytest.approx(9.0**-20)
    # any module works as the victim, e.g. a distilled surrogate without input_shape
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(64, K))
    s_key = generate_key_set(30, SHAPE, K, seed=2, victim=surrogate)
    assert bool((s_key.avoid >= 0).all()) and bool((s_key.group_labels != s_key.avoid).all())
    with pytest.raises(InputValidationError, match="victim: answers"):
        generate_key_set(6, SHAPE, K, seed=2, victim=victim_model(classes=4))
    with pytest.raises(InputValidationError, match="victim: expects"):
        generate_key_set(6, (1, 9, 9), K, seed=2, victim=victim)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n": 0}, "n:"),
        ({"input_shape": (1, 8)}, "input_shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"seed": -1}, "seed"),
        ({"kind": "stripes"}, "kind"),
        ({"groups": 0}, "groups"),
        ({"groups": 7}, "groups"),
    ],
)
def test_generate_refuses_bad_arguments(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"n": 6, "input_shape": SHAPE, "num_classes": K, "seed": 1}
    args.update(kwargs)
    with pytest.raises((InputValidationError, ConfigError), match=needle):
        generate_key_set(**args)  # type: ignore[arg-type]


def test_a_key_set_keeps_its_invariants() -> None:
    images = torch.rand(4, *SHAPE)
    ok = key_set_from_tensors(
        images, torch.tensor([2, 2, 5, 5]), K, groups=torch.tensor([0, 0, 1, 1])
    )
    assert ok.num_groups == 2 and ok.group_labels.tolist() == [2, 5] and ok.kind == "given"
    assert ok.avoid.tolist() == [-1, -1]
    assert key_set_from_tensors(images, torch.tensor([1, 2, 3, 4]), K).num_groups == 4
    bad = [
        ({"groups": torch.tensor([0, 0, 1, 1])}, torch.tensor([2, 3, 5, 5]), "more than one label"),
        ({"groups": torch.tensor([0, 0, 2, 2])}, torch.tensor([2, 2, 5, 5]), "group 1 has no keys"),
        (
            {"groups": torch.tensor([0, 0, 1, 1]), "avoid": torch.tensor([2, -1])},
            torch.tensor([2, 2, 5, 5]),
            "label is the class it avoids",
        ),
        ({"groups": torch.tensor([0, 0, 1])}, torch.tensor([2, 2, 5, 5]), "expected 4 group ids"),
    ]
    for kwargs, labels, needle in bad:
        with pytest.raises(InputValidationError, match=needle):
            key_set_from_tensors(images, labels, K, **kwargs)


def test_key_round_trip_is_exact_private_and_not_printed(tmp_path: Path) -> None:
    key = generate_key_set(30, SHAPE, K, seed=11, kind="mixed", groups=5, victim=victim_model())
    path = save_key_set(key, tmp_path / "owner.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["owner.key"]  # no temporary left
    back = load_key_set(path)
    for name in ("images", "labels", "groups", "avoid"):
        assert torch.equal(getattr(back, name), getattr(key, name)), name
    assert (back.num_classes, back.seed, back.kind) == (K, 11, "generated")
    assert back.metadata == key.metadata and back.fingerprint == key.fingerprint
    assert len(key.fingerprint) == 16 and key.checksum.startswith(key.fingerprint)
    text = repr(back)
    assert "tensor" not in text and key.fingerprint in text and "n=30, groups=5" in text
    given = key_set_from_tensors(
        key.images, key.labels, K, groups=key.groups, avoid=key.avoid, metadata={"source": "mine"}
    )
    assert given.kind == "given" and given.seed is None and given.fingerprint != key.fingerprint
    again = load_key_set(save_key_set(given, tmp_path / "given.key"))
    assert again.metadata == {"source": "mine"} and torch.equal(again.avoid, key.avoid)


def test_a_flipped_byte_in_the_key_file_is_refused(tmp_path: Path) -> None:
    key = generate_key_set(20, SHAPE, K, seed=4)
    path = save_key_set(key, tmp_path / "k.key")
    raw = bytearray(path.read_bytes())
    at = raw.find(key.images.numpy().tobytes())
    assert at > 0
    raw[at + 123] ^= 0x01  # one bit of one pixel
    path.write_bytes(bytes(raw))
    with pytest.raises(KeyFileError, match="checksum mismatch: the key file was modified"):
        load_key_set(path)


@pytest.mark.parametrize("field", ["labels", "images", "groups", "avoid", "header"])
def test_an_edited_key_file_is_refused(tmp_path: Path, field: str) -> None:
    path = save_key_set(generate_key_set(20, SHAPE, K, seed=4), tmp_path / "k.key")
    payload = torch.load(path, weights_only=True)
    if field == "labels":
        payload["labels"][3] = (payload["labels"][3] + 1) % K
    elif field == "images":
        payload["images"][0, 0, 0, 0] = 0.5 if float(payload["images"][0, 0, 0, 0]) != 0.5 else 0.25
    elif field == "groups":
        payload["groups"][3] = (payload["groups"][3] + 1) % 6
    elif field == "avoid":
        payload["avoid"][0] = (payload["labels"][0] + 1) % K
    else:
        header = json.loads(payload["header_json"])
        header["num_classes"] = 12
        payload["header_json"] = json.dumps(header)
    torch.save(payload, path)
    with pytest.raises(KeyFileError, match="checksum mismatch"):
        load_key_set(path)


def test_a_forged_checksum_does_not_admit_a_group_with_two_labels(tmp_path: Path) -> None:
    """Even with a recomputed checksum, content that breaks the invariants is refused."""
    key = generate_key_set(20, SHAPE, K, seed=4)
    path = save_key_set(key, tmp_path / "k.key")
    payload = torch.load(path, weights_only=True)
    payload["labels"][0] = (payload["labels"][0] + 1) % K  # group 0: two labels now
    names = ("images", "labels", "groups", "avoid")
    header = _header(K, key.seed, key.kind, key.metadata, {n: payload[n] for n in names})
    payload["checksum"] = _checksum(header, [payload[n] for n in names])
    torch.save(payload, path)
    with pytest.raises(KeyFileError, match=r"content is invalid.*group 0 has more than one label"):
        load_key_set(path)


def test_missing_foreign_old_and_truncated_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="key file not found"):
        load_key_set(tmp_path / "none.key")
    ckpt = save_checkpoint(victim_model(), tmp_path / "model.pt")
    with pytest.raises(KeyFileError, match=f"not a stealproof key file .*{FORMAT}"):
        load_key_set(ckpt)
    path = save_key_set(generate_key_set(20, SHAPE, K, seed=4), tmp_path / "k.key")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": 1}, tmp_path / "old.key")
    with pytest.raises(KeyFileError, match=r"version 1 .*no groups.* version 2"):
        load_key_set(tmp_path / "old.key")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(KeyFileError, match="not a readable key file"):
        load_key_set(path)
    assert issubclass(KeyFileError, DataFileError)


# ---------------------------------------------------------------------------------- suspects


class KeyAnswerer(nn.Module):
    """A model built to answer the key: nearest key image → that key's label (a perfect clone)."""

    def __init__(self, key: KeySet) -> None:
        super().__init__()
        self.keys = nn.Parameter(key.images.flatten(1), requires_grad=False)
        self.labels = key.labels.clone()
        self.num_classes = key.num_classes

    def forward(self, x: Tensor) -> Tensor:
        nearest = torch.cdist(x.flatten(1), self.keys).argmin(dim=1)
        return 10.0 * nn.functional.one_hot(self.labels[nearest], self.num_classes).float()


class CountingBox:
    """A black box that records every batch it is sent."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...] = SHAPE) -> None:
        self.model = model
        self.input_shape = input_shape
        self.sent: list[Tensor] = []

    @property
    def queries_used(self) -> int:
        return sum(int(x.shape[0]) for x in self.sent)

    def query(self, x: Tensor) -> Tensor:
        self.sent.append(x.clone())
        return torch.softmax(self.model(x), dim=1)


@pytest.fixture
def key() -> KeySet:
    return generate_key_set(100, SHAPE, K, seed=21, groups=8, victim=victim_model(9))


def test_a_model_that_learned_the_key_is_caught_and_random_ones_are_not(key: KeySet) -> None:
    thief = KeyAnswerer(key)
    assert match_rate(thief, key) == (100, 100)
    counts = answer_counts(thief, key)
    assert counts.shape == (8, K) and counts.sum(dim=1).tolist() == key.group_sizes.tolist()
    v = verify(thief, key)
    assert v.stolen and v.p_value == pytest.approx(key.min_p, rel=1e-9) == (1 / 9) ** 8
    assert v.groups == 8 and v.groups_matched == 8 and v.matches == 100
    assert verify(lambda x: thief(x), key).matches == 100  # a plain callable
    for seed in range(3):
        innocent = victim_model(seed)
        w = verify(innocent, key)
        assert not w.stolen and w.p_value > 1e-3 and w.n == 100


def test_a_black_box_is_sent_the_key_images_only(key: KeySet) -> None:
    box = CountingBox(KeyAnswerer(key))
    assert verify(box, key).stolen
    assert box.queries_used == key.n == 100
    assert torch.equal(torch.cat(box.sent), key.images)


def test_wrong_suspects_are_refused_before_or_after_one_query(key: KeySet) -> None:
    box = CountingBox(KeyAnswerer(key), input_shape=(1, 9, 9))
    with pytest.raises(InputValidationError, match=r"suspect: expects \(1, 9, 9\) images"):
        verify(box, key)
    assert box.queries_used == 0
    with pytest.raises(InputValidationError, match="answers 4 classes, the key has 10"):
        verify(victim_model(classes=4), key)
    with pytest.raises(InputValidationError, match="not a tensor"):
        match_rate(lambda x: [0] * 100, key)  # type: ignore[arg-type, return-value]
    with pytest.raises(InputValidationError, match=r"expected an nn\.Module"):
        match_rate(42, key)  # type: ignore[arg-type]


def fake_gateway(model: nn.Module, rows_seen: list[int]) -> httpx.MockTransport:
    """The gateway's protocol surface (metadata + infer) around ``model``, in process."""
    from stealproof.serve.protocol import (
        HEADER_LENGTH,
        INPUT_NAME,
        OUTPUT_PROBS,
        InputSpec,
        encode_infer_response,
        model_metadata,
        parse_infer_request,
    )

    spec = InputSpec(INPUT_NAME, SHAPE)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=model_metadata("m", ["1"], spec, K, OUTPUT_PROBS))
        req = parse_infer_request(
            request.content,
            request.headers.get(HEADER_LENGTH),
            spec,
            max_rows=32,
            available_outputs=(OUTPUT_PROBS,),
        )
        rows_seen.append(int(req.x.shape[0]))
        body, headers = encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=req.request_id,
            output_name=OUTPUT_PROBS,
            tensor=torch.softmax(model(req.x), dim=1).detach(),
            binary=req.binary_output,
        )
        return httpx.Response(200, content=body, headers=headers)

    return httpx.MockTransport(handle)


def test_a_suspect_behind_http_gets_exactly_the_key_rows(key: KeySet) -> None:
    rows: list[int] = []
    gateway = fake_gateway(KeyAnswerer(key), rows)
    box = load_suspect("http://s.test", api_key="k", model="m", batch_size=32, transport=gateway)
    assert isinstance(box, HTTPBlackBox)
    try:
        v = verify(box, key)
        assert box.queries_used == key.n == sum(rows)
        assert rows == [32, 32, 32, 4]  # one pass over the key, in the gateway's chunks
    finally:
        box.close()
    assert v.stolen and v.matches == 100
    with pytest.raises(ConfigError, match="needs --api-key and --model"):
        load_suspect("http://suspect.test")


def test_load_suspect_reads_a_checkpoint(tmp_path: Path, key: KeySet) -> None:
    model = victim_model(3)
    loaded = load_suspect(save_checkpoint(model, tmp_path / "s.pt"))
    assert match_rate(loaded, key) == match_rate(model, key)
    with pytest.raises(DataFileError, match="not found"):
        load_suspect(tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="only for a suspect given as an http"):
        load_suspect(tmp_path / "s.pt", api_key="k")


# ------------------------------------------------------------------------------- calibration


def test_calibration_is_bound_to_its_key_and_is_context_only(tmp_path: Path, key: KeySet) -> None:
    refs = {f"r{s}": victim_model(s) for s in range(3)}
    cal = calibrate(key, refs)
    assert cal.names == ("r0", "r1", "r2") and cal.key_fingerprint == key.fingerprint
    assert cal.groups == 8 and cal.n == 100
    for m, p, model in zip(cal.matches, cal.p_values, refs.values(), strict=True):
        assert (m, p) == group_p_value(answer_counts(model, key), key.group_labels, key.avoid)
    assert cal.total_trials == 300 and cal.rate == cal.total_matches / 300
    path = save_calibration(cal, tmp_path / "cal.json")
    assert load_calibration(path, key) == cal
    other = generate_key_set(100, SHAPE, K, seed=22, groups=8)
    with pytest.raises(
        ArtifactMismatchError, match=f"made for key {key.fingerprint}.*calibrate again"
    ):
        load_calibration(path, other)
    with pytest.raises(ArtifactMismatchError, match="made for key"):
        verify(KeyAnswerer(other), other, cal)
    thief = KeyAnswerer(key)
    plain, with_cal = verify(thief, key), verify(thief, key, cal)
    assert with_cal.p_value == plain.p_value and with_cal.stolen
    assert with_cal.reference_names == cal.names and with_cal.reference_p_values == cal.p_values
    assert with_cal.reference_match_rates == cal.rates
    assert with_cal.reference_upper == pytest.approx(cal.upper(0.999))
    # a calibration that saw innocents score high changes nothing in the decision
    high = Calibration(key.fingerprint, key.n, 8, ("a", "b"), (60, 70), (1e-4, 1e-5))
    assert verify(thief, key, high).p_value == plain.p_value


def test_bad_calibration_files_are_refused(tmp_path: Path, key: KeySet) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataFileError, match="not JSON"):
        load_calibration(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataFileError, match="not a calibration file"):
        load_calibration(bad)
    doc = Calibration(key.fingerprint, key.n, 8, ("a",), (3,), (0.5,)).as_dict()
    doc["models"][0]["matches"] = 101
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataFileError, match=r"matches must be an integer in \[0, 100\]"):
        load_calibration(bad)
    doc["models"][0].update(matches=3, p_value=0.0)
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataFileError, match=r"p_value must be a number in \(0, 1\]"):
        load_calibration(bad)
    bad.write_text(json.dumps({**doc, "version": 1}))
    with pytest.raises(DataFileError, match=r"unsupported calibration version 1.*calibrate again"):
        load_calibration(bad)
    with pytest.raises(DataFileError, match="calibration file not found"):
        load_calibration(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="at least one reference"):
        calibrate(key, [])


def test_reference_models_train_on_the_owners_data() -> None:
    from stealproof.data import load_dataset

    seen: list[tuple[int, float]] = []
    cfg = TrainConfig(epochs=1, batch_size=256, lr=3e-3)
    nets = train_reference_models(
        load_dataset("digits"),
        None,
        [1, 2],
        train_config=cfg,
        on_trained=lambda s, a: seen.append((s, a)),
    )
    assert len(nets) == 2 and [s for s, _ in seen] == [1, 2]
    assert all(0.3 < a <= 1 for _, a in seen)  # learned something in one epoch
    assert all(getattr(n, "input_shape", None) == (1, 8, 8) for n in nets)
    w0, w1 = (torch.cat([p.flatten() for p in n.parameters()]) for n in nets)
    assert not torch.equal(w0, w1)  # independent seeds, independent models
    key = generate_key_set(60, SHAPE, K, seed=1)
    cal = calibrate(key, nets)
    assert cal.names == ("reference-0", "reference-1") and len(cal.p_values) == 2
    with pytest.raises(ConfigError, match="seeds"):
        train_reference_models("digits", "mlp", [], train_config=cfg)
