"""Tests for the PRADA detector: the vectorised distance step against a slow per-query
reference, batch-split invariance, flags on synthetic vs natural-looking streams, state
round-trips through bytes, calibration of delta, and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import shapiro
from torch import Tensor

from stealproof.detectors import (
    Detector,
    PradaConfig,
    PradaDetector,
    benign_streams,
    calibrate_delta,
    dumps_state,
    loads_state,
    trace_stream,
)
from stealproof.errors import InputValidationError

K = 4


# ----------------------------------------------------------------------------- helpers


class NaivePrada:
    """ALGORITHMS §3.2 written as plainly as possible: one query at a time, numpy float64."""

    def __init__(self, delta: float = 0.9, class_scale: str = "median") -> None:
        self.delta = delta
        self.class_scale = class_scale
        self.growing: dict[int, list[np.ndarray]] = {}
        self.threshold: dict[int, float] = {}
        self.recorded: dict[int, list[float]] = {}
        self.distances: dict[int, list[float]] = {}
        self.n = 0
        self.flag = False
        self.w: float | None = None
        self.ws: list[tuple[int, float]] = []

    def query(self, x: np.ndarray, c: int) -> bool:
        g = self.growing.setdefault(c, [])
        self.distances.setdefault(c, [])
        if not g:
            g.append(x)
            self.threshold[c] = 0.0
            self.recorded[c] = []
        else:
            d = min(float(np.sqrt(((gi - x) ** 2).sum())) for gi in g)
            self.distances[c].append(d)
            if d > self.threshold[c]:
                g.append(x)
                self.recorded[c].append(d)
                rec = np.asarray(self.recorded[c])
                self.threshold[c] = max(self.threshold[c], float(rec.mean() - rec.std()))
        self.n += 1
        if self.n % 10 == 0:
            lists = [
                self.distances[k] for k in sorted(self.distances) if len(self.distances[k]) >= 10
            ]
            if lists:
                arrays = [np.asarray(v) for v in lists]
                if self.class_scale == "median":
                    arrays = [a / np.median(a) if np.median(a) > 0 else a for a in arrays]
                pooled = np.concatenate(arrays)
                pooled = pooled[np.abs(pooled - pooled.mean()) <= 3 * pooled.std()]
                if pooled.size > 100:
                    self.w = float(shapiro(pooled).statistic)
                    self.ws.append((self.n, self.w))
                    self.flag = self.w < self.delta
        return self.flag


def posteriors_for(classes: Tensor, k: int = K) -> Tensor:
    """Posteriors whose argmax is ``classes``."""
    y = torch.full((classes.shape[0], k), 0.1 / (k - 1), dtype=torch.float32)
    return y.scatter(1, classes[:, None], 0.9)


def natural_stream(n: int, seed: int = 0, dim: int = 16) -> tuple[Tensor, Tensor]:
    """Independent random images [n, 1, 4, dim/4] and random classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, dim // 4, generator=g)
    c = torch.randint(0, K, (n,), generator=g)
    return x, posteriors_for(c)


def synthetic_stream(n: int, seed: int = 0, seeds: int = 60, dim: int = 64) -> Tensor:
    """JBDA-like: a seed set, then rounds of ±0.1 sign steps from every point so far."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(seeds, 1, 8, dim // 8, generator=g)
    while pts.shape[0] < n:
        step = 0.1 * torch.sign(torch.randn(pts.shape, generator=g))
        pts = torch.cat([pts, (pts + step).clamp(0.0, 1.0)])
    return pts[:n]


def class_of_first_pixels(x: Tensor) -> Tensor:
    """A fixed 'victim': the class is decided by the first K pixels."""
    return torch.softmax(8.0 * x.reshape(x.shape[0], -1)[:, :K], dim=1)


def run_batches(det: PradaDetector, cid: str, x: Tensor, y: Tensor, size: int) -> Tensor:
    flags = [
        det.observe(cid, x[i : i + size], y[i : i + size]).flags for i in range(0, len(x), size)
    ]
    return torch.cat(flags)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "classes":
            assert a[key].keys() == b[key].keys()
            for c in a[key]:
                for field, va in a[key][c].items():
                    vb = b[key][c][field]
                    if isinstance(va, Tensor):
                        assert torch.equal(va, vb), (c, field)
                    else:
                        assert va == vb, (c, field)
        elif isinstance(a[key], float) and math.isnan(a[key]):
            assert math.isnan(b[key])
        else:
            assert a[key] == b[key], key


# ----------------------------------------------------------------------------- construction


def test_delta_keyword_is_delta() -> None:
    """The reference demo server passes ``delta=`` to a constructor expecting another name."""
    det = PradaDetector(delta=0.95)
    assert det.delta == 0.95
    assert det.config.delta == 0.95
    assert PradaDetector().delta == 0.9
    assert PradaDetector(PradaConfig(delta=0.8)).delta == 0.8
    assert isinstance(det, Detector) and det.name == "prada"


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"threshold": 0.9}, r"prada: unknown parameter 'threshold' \(valid names: delta"),
        ({"delta": 1.5}, r"prada: delta: .*less than or equal to 1"),
        ({"delta": -0.1}, r"prada: delta:"),
        ({"check_every": 0}, r"prada: check_every:"),
        ({"min_pooled": 2}, r"prada: min_pooled:"),
        ({"storage_dtype": "float16"}, r"prada: storage_dtype:"),
    ],
)
def test_bad_config_names_the_field(params: dict, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        PradaDetector(**params)


def test_config_and_keywords_are_exclusive() -> None:
    with pytest.raises(InputValidationError, match="either a config or keyword"):
        PradaDetector(PradaConfig(), delta=0.5)
    with pytest.raises(InputValidationError, match="expected a PradaConfig"):
        PradaDetector({"delta": 0.5})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the algorithm


def test_hand_computed_thresholds_and_growing_set() -> None:
    """One class, 1-D-like inputs: distances, T_c and G_c follow §3.2 by hand."""
    det = PradaDetector()
    vals = [0.0, 0.5, 0.1, 1.0, 0.9]
    x = torch.zeros(len(vals), 1, 1, 2)
    x[:, 0, 0, 0] = torch.tensor(vals)
    y = posteriors_for(torch.zeros(len(vals), dtype=torch.long))
    det.observe("c", x, y)
    st = det.client_state("c")["classes"][0]
    # 0.0: first → G={0}, T=0, no distance
    # 0.5: d=0.5 > 0 → G={0,.5}, rec=[.5], T=max(0, .5-0)=.5
    # 0.1: d=0.1 ≤ .5 → not added
    # 1.0: d=0.5 ≤ .5 → not added (strictly greater is needed)
    # 0.9: d=0.4 ≤ .5 → not added
    torch.testing.assert_close(
        st["distances"], torch.tensor([0.5, 0.1, 0.5, 0.4], dtype=torch.float64)
    )
    torch.testing.assert_close(st["recorded"], torch.tensor([0.5], dtype=torch.float64))
    assert st["threshold"] == pytest.approx(0.5)
    assert st["growing"].shape == (2, 2)
    # a far point grows G and raises T to mean − std of the recorded distances
    far = torch.zeros(1, 1, 1, 2)
    far[0, 0, 0, 1] = 1.0
    det.observe("c", far, y[:1])
    st = det.client_state("c")["classes"][0]
    d = math.sqrt(0.5**2 + 1.0)  # nearest is (0.5, 0)
    rec = np.array([0.5, d])
    assert st["threshold"] == pytest.approx(max(0.5, rec.mean() - rec.std()))
    assert st["growing"].shape == (3, 2)


@pytest.mark.parametrize("class_scale", ["median", "none"])
@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_vectorised_equals_naive_reference(batch: int, class_scale: str) -> None:
    # 3 fresh classes, near-duplicates mixed in so that intra-batch additions matter
    x, y = natural_stream(360, seed=3)
    x[200:260] = (x[100:160] + 0.01).clamp(0, 1)
    naive = NaivePrada(delta=0.985, class_scale=class_scale)
    expected = torch.tensor(
        [naive.query(x[i].reshape(-1).double().numpy(), int(y[i].argmax())) for i in range(len(x))]
    )
    det = PradaDetector(delta=0.985, class_scale=class_scale)
    out = [det.observe("c", x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    flags = torch.cat([o.flags for o in out])
    scores = torch.cat([o.scores for o in out])
    assert torch.equal(flags, expected)
    # the flag goes on and off again on this stream, so the comparison is not vacuous
    assert bool(expected.any()) and not bool(expected[-1])
    assert det.last_w("c") == pytest.approx(naive.w, abs=1e-12)
    assert det.tests_run("c") == len(naive.ws)
    st = det.client_state("c")
    for c, cs in st["classes"].items():
        assert cs["growing"].shape[0] == len(naive.growing[c])
        torch.testing.assert_close(
            cs["growing"].double(), torch.from_numpy(np.stack(naive.growing[c])).reshape(-1, 16)
        )
        np.testing.assert_allclose(cs["distances"].numpy(), naive.distances[c], rtol=0, atol=1e-12)
        np.testing.assert_allclose(cs["recorded"].numpy(), naive.recorded[c], rtol=0, atol=1e-12)
        assert cs["threshold"] == pytest.approx(naive.threshold[c], abs=1e-12)
    # scores are 1 − W from the first test on, 0 before
    first = naive.ws[0][0]
    assert bool((scores[: first - 1] == 0).all())
    assert float(scores[-1]) == pytest.approx(1 - naive.w, abs=1e-12)


def test_batch_split_does_not_change_anything() -> None:
    x = synthetic_stream(400, seed=1)
    y = class_of_first_pixels(x)
    states, flags = [], []
    for size in (1, 13, 128, 400):
        det = PradaDetector()
        flags.append(run_batches(det, "c", x, y, size))
        states.append(det.client_state("c"))
    for f, s in zip(flags[1:], states[1:], strict=True):
        assert torch.equal(f, flags[0])
        assert_same_state(s, states[0])


def test_flags_a_synthetic_stream_but_not_a_natural_one() -> None:
    det = PradaDetector()
    xs = synthetic_stream(400, seed=0)
    fs = run_batches(det, "thief", xs, class_of_first_pixels(xs), 50)
    assert bool(fs[-1]) and det.is_flagged("thief")
    assert int(fs.int().argmax()) < 250  # flagged early
    assert det.last_w("thief") < 0.9
    xn = torch.rand(600, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    fn = run_batches(det, "user", xn, class_of_first_pixels(xn), 50)
    assert not bool(fn.any())
    w = det.last_w("user")
    assert w is not None and w > 0.95
    # clients are independent
    assert det.clients() == ["thief", "user"]
    assert det.is_flagged("thief") and not det.is_flagged("user")


def test_no_test_before_more_than_min_pooled_distances() -> None:
    """The first W needs > 100 pooled distances from classes with ≥ 10 each."""
    x, y = natural_stream(300, seed=2)
    det = PradaDetector()
    naive = NaivePrada()
    for i in range(300):
        det.observe("c", x[i : i + 1], y[i : i + 1])
        naive.query(x[i].reshape(-1).double().numpy(), int(y[i].argmax()))
        pooled = det.pooled_distances("c")
        if det.tests_run("c") == 0:
            assert det.last_w("c") is None
    first = naive.ws[0][0]
    assert first % 10 == 0 and first > 100
    # one class only: with a threshold of ≥ 10 per class small classes are left out
    assert pooled.size > 100
    det2 = PradaDetector(min_class_distances=1000)
    det2.observe("c", x, y)
    assert det2.tests_run("c") == 0 and det2.pooled_distances("c").size == 0


def test_outlier_cut_and_its_switch() -> None:
    x, y = natural_stream(300, seed=4)
    det = PradaDetector()
    det.observe("c", x, y)
    cut = det.pooled_distances("c")
    det2 = PradaDetector(outlier_sigma=None)
    det2.observe("c", x, y)
    full = det2.pooled_distances("c")
    assert cut.size <= full.size
    mu, sd = full.mean(), full.std()
    np.testing.assert_array_equal(cut, full[np.abs(full - mu) <= 3 * sd])


# ----------------------------------------------------------------------------- state


def test_state_round_trip_gives_identical_decisions() -> None:
    x = synthetic_stream(400, seed=2)
    y = class_of_first_pixels(x)
    a = PradaDetector(delta=0.8)
    a.observe("c", x[:170], y[:170])
    blob = dumps_state(a.client_state("c"))
    assert isinstance(blob, bytes)
    b = PradaDetector(delta=0.8)
    b.load_client_state("c", loads_state(blob))
    assert_same_state(b.client_state("c"), a.client_state("c"))
    for i in range(170, 400, 23):
        oa, ob = (
            a.observe("c", x[i : i + 23], y[i : i + 23]),
            b.observe("c", x[i : i + 23], y[i : i + 23]),
        )
        assert torch.equal(oa.flags, ob.flags)
        assert torch.equal(oa.scores, ob.scores)
    assert_same_state(b.client_state("c"), a.client_state("c"))
    # and the same as never having stopped
    c = PradaDetector(delta=0.8)
    c.observe("c", x, y)
    assert_same_state(c.client_state("c"), a.client_state("c"))


def test_state_of_unknown_client_and_reset() -> None:
    det = PradaDetector()
    assert det.client_state("nobody") == {}
    x, y = natural_stream(20)
    det.observe("a", x, y)
    det.observe("b", x, y)
    assert det.clients() == ["a", "b"]
    det.reset_client("a")
    assert det.clients() == ["b"]
    det.load_client_state("b", {})
    assert det.clients() == [] and det.queries_seen("b") == 0
    with pytest.raises(InputValidationError, match="state: not a PRADA client state"):
        det.load_client_state("b", {"version": 1})


def test_float64_storage_keeps_float64_inputs_exact() -> None:
    x = torch.rand(30, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = posteriors_for(torch.zeros(30, dtype=torch.long))
    det = PradaDetector(storage_dtype="float64")
    det.observe("c", x, y)
    g = det.client_state("c")["classes"][0]["growing"]
    assert g.dtype == torch.float64
    assert torch.equal(g[0], x[0].reshape(-1))


# ----------------------------------------------------------------------------- validation


def test_bad_input_is_rejected_before_any_update() -> None:
    det = PradaDetector()
    x, y = natural_stream(10)
    with pytest.raises(InputValidationError, match="x: expected 10 rows"):
        det.observe("c", x[:5], y)
    with pytest.raises(InputValidationError, match="x: pixels must lie in"):
        det.observe("c", x + 2.0, y)
    with pytest.raises(InputValidationError, match="y: rows must sum to 1"):
        det.observe("c", x, y * 2)
    assert det.clients() == []
    det.observe("c", x, y)
    with pytest.raises(InputValidationError, match="x: client 'c' sent inputs of 16 values"):
        det.observe("c", torch.rand(2, 1, 3, 3), y[:2])


# ----------------------------------------------------------------------------- streams, calibration


def test_trace_stream_matches_the_detector() -> None:
    xs = synthetic_stream(300, seed=3)
    det = PradaDetector(delta=0.9)
    tr = trace_stream(xs, class_of_first_pixels, detector=det, batch_size=64)
    flags = PradaDetector(delta=0.9).observe("c", xs, class_of_first_pixels(xs)).flags
    assert tr.queries == 300
    assert tr.first_flag == int(flags.int().argmax()) + 1
    assert tr.first_flag_at(0.9) == tr.first_flag
    assert all(q % 10 == 0 for q, _ in tr.checks)
    assert tr.min_w == min(w for _, w in tr.checks)
    assert det.clients() == []  # the stream's client is not left behind
    # same numbers whatever the batch size
    tr2 = trace_stream(xs, class_of_first_pixels, batch_size=7)
    assert tr2.checks == tr.checks


def test_trace_stream_accepts_a_victim_module() -> None:
    victim = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, K))
    xs = synthetic_stream(150, seed=0)
    tr = trace_stream(xs, victim)
    with torch.no_grad():
        expected = trace_stream(xs, lambda z: torch.softmax(victim(z), dim=1))
    assert tr.checks == expected.checks


def test_calibrate_delta_is_the_smallest_benign_w() -> None:
    streams = [
        torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)
    ]
    delta = calibrate_delta(streams, class_of_first_pixels)
    traces = [trace_stream(s, class_of_first_pixels) for s in streams]
    assert delta == min(t.min_w for t in traces if t.min_w is not None)
    # at delta itself nothing is flagged (the rule is W < delta) ...
    det = PradaDetector(delta=delta)
    for i, s in enumerate(streams):
        assert not bool(det.observe(str(i), s, class_of_first_pixels(s)).flags.any())
    # ... and any larger delta flags at least one of the benign streams
    above = math.nextafter(delta, 1.0)
    det = PradaDetector(delta=above)
    assert any(
        bool(det.observe(str(i), s, class_of_first_pixels(s)).flags.any())
        for i, s in enumerate(streams)
    )


def test_calibrate_delta_uses_the_config_and_rejects_short_streams() -> None:
    streams = [torch.rand(90, 1, 8, 8, generator=torch.Generator().manual_seed(0))]
    with pytest.raises(InputValidationError, match="no Shapiro–Wilk test ran"):
        calibrate_delta(streams, class_of_first_pixels)
    with pytest.raises(InputValidationError, match="at least one"):
        calibrate_delta([], class_of_first_pixels)
    # with a smaller pool requirement the same stream calibrates
    delta = calibrate_delta(streams, class_of_first_pixels, config=PradaConfig(min_pooled=20))
    assert 0.0 < delta <= 1.0


def test_calibrate_delta_margin_lowers_delta_and_is_validated() -> None:
    streams = [
        torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(2)
    ]
    delta = calibrate_delta(streams, class_of_first_pixels)
    assert calibrate_delta(streams, class_of_first_pixels, margin=0.02) == pytest.approx(
        delta - 0.02, abs=1e-15
    )
    assert calibrate_delta(streams, class_of_first_pixels, margin=0.999) == 0.0
    for bad in (-0.1, 1.0):
        with pytest.raises(InputValidationError, match="margin"):
            calibrate_delta(streams, class_of_first_pixels, margin=bad)


def two_scale_stream(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Natural-like queries of two classes whose typical distances differ fivefold."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 2, (n,), generator=g)
    scale = torch.where(c == 0, 1.0, 0.2)[:, None, None, None]
    x = 0.5 + scale * (torch.rand(n, 1, 4, 4, generator=g) - 0.5)
    return x, posteriors_for(c)


def test_median_scaling_removes_the_mixture_of_class_scales() -> None:
    """Raw pooling sees two clusters of distances (one per class scale) and flags a benign
    stream; per-class median scaling keeps each class's shape and does not."""
    x, y = two_scale_stream(400, seed=0)
    paper = PradaDetector(class_scale="none")
    paper.observe("c", x, y)
    ours = PradaDetector(class_scale="median")
    ours.observe("c", x, y)
    w_paper, w_ours = paper.last_w("c"), ours.last_w("c")
    assert w_paper is not None and w_ours is not None
    assert w_paper < 0.9 < 0.95 < w_ours, (w_paper, w_ours)
    # scaling keeps each class's distances up to one factor
    raw = paper.client_state("c")["classes"]
    pooled = ours.pooled_distances("c")
    expected = np.concatenate(
        [cs["distances"].numpy() / np.median(cs["distances"].numpy()) for cs in raw.values()]
    )
    expected = expected[np.abs(expected - expected.mean()) <= 3 * expected.std()]
    np.testing.assert_allclose(np.sort(pooled), np.sort(expected), rtol=1e-12)


def test_median_scaling_leaves_a_zero_median_class_unscaled() -> None:
    x = torch.zeros(150, 1, 2, 2)  # one image, repeated: every distance is 0
    y = posteriors_for(torch.zeros(150, dtype=torch.long))
    det = PradaDetector()
    det.observe("c", x, y)
    pooled = det.pooled_distances("c")
    assert pooled.size == 149 and bool(np.all(pooled == 0))


def test_benign_streams_permute_then_augment() -> None:
    images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = benign_streams(images, 3, 100, seed=7)
    b = benign_streams(images, 3, 100, seed=7)
    assert len(a) == 3 and all(s.shape == (100, 1, 8, 8) for s in a)
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))  # seeded
    assert not torch.equal(a[0], a[1])  # stream i is seeded with seed + i
    # the first pass is a permutation of the images; the repeats are jittered copies
    match = torch.cdist(a[0][:40].reshape(40, -1), images.reshape(40, -1)).argmin(dim=1)
    assert torch.equal(a[0][:40], images[match]) and match.unique().numel() == 40
    assert bool((a[0] >= 0).all() and (a[0] <= 1).all())
    with pytest.raises(InputValidationError):
        benign_streams(images, 0, 100, seed=0)
