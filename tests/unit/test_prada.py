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

    def __init__(
        self,
        delta: float = 0.9,
        class_scale: str = "median",
        max_growing: int | None = None,
        max_distances: int | None = None,
    ) -> None:
        self.delta = delta
        self.class_scale = class_scale
        self.max_growing = max_growing
        self.max_distances = max_distances
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
            if self.max_distances is not None:
                self.distances[c] = self.distances[c][-self.max_distances :]
            if d > self.threshold[c]:
                stored = sum(len(v) for v in self.growing.values())
                if self.max_growing is None or stored < self.max_growing:
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


def assert_welford_of(welford: Tensor, recorded: list[float]) -> None:
    """Welford's sums [count, mean, m2] in a state are those of the recorded distances."""
    rec = np.asarray(recorded, dtype=np.float64)
    n, mean, m2 = welford.tolist()
    assert n == rec.size
    assert mean == pytest.approx(rec.mean() if rec.size else 0.0, abs=1e-12)
    assert m2 == pytest.approx(((rec - rec.mean()) ** 2).sum() if rec.size else 0.0, abs=1e-9)


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
        ({"max_growing": 0}, r"prada: max_growing:"),
        ({"max_distances": 0}, r"prada: max_distances:"),
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
    # Welford's sums [count, mean, m2] of the recorded distances
    assert st["welford"].tolist() == [1.0, 0.5, 0.0]
    assert st["threshold"] == pytest.approx(0.5)
    assert st["growing"].shape == (2, 2)
    # a far point grows G and raises T to mean − std of the recorded distances
    far = torch.zeros(1, 1, 1, 2)
    far[0, 0, 0, 1] = 1.0
    det.observe("c", far, y[:1])
    st = det.client_state("c")["classes"][0]
    d = 1.0  # nearest is the origin ((0.5, 0) is sqrt(1.25) away)
    rec = np.array([0.5, d])
    assert st["threshold"] == pytest.approx(max(0.5, rec.mean() - rec.std()))
    n, mean, m2 = st["welford"].tolist()
    assert (n, mean, m2) == (2, pytest.approx(rec.mean()), pytest.approx(rec.var() * 2))
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
        assert_welford_of(cs["welford"], naive.recorded[c])
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


# ----------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_caps_equal_the_naive_reference(batch: int) -> None:
    x, y = natural_stream(360, seed=3)
    x[200:260] = (x[100:160] + 0.01).clamp(0, 1)
    naive = NaivePrada(delta=0.985, max_growing=25, max_distances=30)
    expected = torch.tensor(
        [naive.query(x[i].reshape(-1).double().numpy(), int(y[i].argmax())) for i in range(len(x))]
    )
    det = PradaDetector(delta=0.985, max_growing=25, max_distances=30)
    out = [det.observe("c", x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    assert torch.equal(torch.cat([o.flags for o in out]), expected)
    assert naive.ws and det.tests_run("c") == len(naive.ws)
    assert det.last_w("c") == pytest.approx(naive.w, abs=1e-12)
    st = det.client_state("c")
    for c, cs in st["classes"].items():
        assert cs["growing"].shape[0] == len(naive.growing[c])
        np.testing.assert_allclose(cs["distances"].numpy(), naive.distances[c], rtol=0, atol=1e-12)
        assert_welford_of(cs["welford"], naive.recorded[c])
        assert cs["threshold"] == pytest.approx(naive.threshold[c], abs=1e-12)
    # the caps bind on this stream: distances recorded past the cap, windows full
    assert sum(cs["growing"].shape[0] for cs in st["classes"].values()) == 25
    assert any(cs["welford"][0] > cs["growing"].shape[0] for cs in st["classes"].values())
    assert all(cs["distances"].numel() == 30 for cs in st["classes"].values())


@pytest.mark.parametrize("batch", [1, 9, 200])
def test_growing_sets_stay_within_the_cap_plus_the_classes(batch: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(600, 1, 4, 4, generator=g) * torch.rand(600, 1, 1, 1, generator=g)
    classes = torch.randint(0, K, (600,), generator=g)
    classes[:300] = 0  # the cap is reached before classes 1..3 show up
    y = posteriors_for(classes)
    det = PradaDetector(max_growing=12)
    for i in range(0, 600, batch):
        det.observe("c", x[i : i + batch], y[i : i + batch])
        st = det.client_state("c")["classes"]
        sizes = {c: int(cs["growing"].shape[0]) for c, cs in st.items()}
        assert sum(sizes.values()) <= 12 + len(sizes)
    # class 0 filled the cap; every later class stored its first row only, yet T_c and the
    # recorded distances kept updating
    assert sizes == {0: 12, 1: 1, 2: 1, 3: 1}
    assert all(cs["welford"][0] > 1 for cs in st.values())
    assert all(cs["threshold"] > 0 for cs in st.values())
    free = PradaDetector()
    free.observe("c", x, y)
    assert free.client_state("c")["classes"][0]["growing"].shape[0] > 12


def test_distance_window_w_is_shapiro_of_the_last_n_per_class() -> None:
    x, y = natural_stream(400, seed=6)
    full = PradaDetector(min_pooled=20)
    window = PradaDetector(min_pooled=20, max_distances=12)
    for i in range(0, 400, 37):
        full.observe("c", x[i : i + 37], y[i : i + 37])
        window.observe("c", x[i : i + 37], y[i : i + 37])
        for c, cs in window.client_state("c")["classes"].items():
            everything = full.client_state("c")["classes"][c]["distances"]
            assert cs["distances"].numel() <= 12
            assert torch.equal(cs["distances"], everything[-12:])
    lists = [
        cs["distances"].numpy()[-12:] for _, cs in sorted(full.client_state("c")["classes"].items())
    ]
    pooled = np.concatenate([a / np.median(a) for a in lists])
    pooled = pooled[np.abs(pooled - pooled.mean()) <= 3 * pooled.std()]
    np.testing.assert_array_equal(window.pooled_distances("c"), pooled)
    assert window.last_w("c") == float(shapiro(pooled).statistic)
    assert window.last_w("c") != full.last_w("c")


def test_distance_buffer_keeps_the_latest_values_in_bounded_memory() -> None:
    from stealproof.detectors.prada import _Distances

    for limit in (1, 5, 16, 100):
        buf = _Distances(limit)
        for i in range(500):
            buf.append(float(i))
            kept = np.arange(max(0, i + 1 - limit), i + 1, dtype=np.float64)
            np.testing.assert_array_equal(buf.values(), kept)
            assert len(buf) == kept.size and buf.buf.shape[0] <= max(16, 2 * limit)
        np.testing.assert_array_equal(_Distances.of(np.arange(500.0), limit).values(), kept)
    free = _Distances()
    for i in range(500):
        free.append(float(i))
    np.testing.assert_array_equal(free.values(), np.arange(500.0))
    assert free.buf.shape[0] < 1000


def test_float64_copies_are_bounded_and_do_not_change_decisions() -> None:
    """With no room for float64 working copies only the client being observed keeps them;
    the others rebuild theirs at their next query, with the same decisions."""
    streams = {f"c{k}": natural_stream(300, seed=10 + k) for k in range(3)}
    roomy, tight = PradaDetector(delta=0.985), PradaDetector(delta=0.985)
    tight.hot_bytes = 0
    for i in range(0, 300, 11):
        for cid, (x, y) in streams.items():
            a = roomy.observe(cid, x[i : i + 11], y[i : i + 11])
            b = tight.observe(cid, x[i : i + 11], y[i : i + 11])
            assert torch.equal(a.flags, b.flags) and torch.equal(a.scores, b.scores)
            assert list(tight._hot) in ([], [cid])
            held = {c for c, st in tight._clients.items() if st.work_bytes() > 0}
            assert held <= {cid}
    assert held == {cid}
    assert all(st.work_bytes() > 0 for st in roomy._clients.values())
    for cid in streams:
        assert_same_state(roomy.client_state(cid), tight.client_state(cid))


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


@pytest.mark.parametrize("batch", [1, 23])
def test_state_round_trip_with_caps(batch: int) -> None:
    x = synthetic_stream(500, seed=2)
    y = class_of_first_pixels(x)
    caps = {"max_growing": 16, "max_distances": 40}
    a = PradaDetector(**caps)
    a.observe("c", x[:97], y[:97])
    assert not a.is_flagged("c")
    state = loads_state(dumps_state(a.client_state("c")))
    assert state["version"] == 2 and "recorded" not in state["classes"][0]
    b = PradaDetector(**caps)
    b.load_client_state("c", state)
    assert_same_state(b.client_state("c"), a.client_state("c"))
    flags = []
    for i in range(97, 500, batch):
        oa, ob = (
            a.observe("c", x[i : i + batch], y[i : i + batch]),
            b.observe("c", x[i : i + batch], y[i : i + batch]),
        )
        assert torch.equal(oa.flags, ob.flags) and torch.equal(oa.scores, ob.scores)
        flags.append(oa.flags)
    assert_same_state(b.client_state("c"), a.client_state("c"))
    c = PradaDetector(**caps)
    c.observe("c", x, y)
    assert_same_state(c.client_state("c"), a.client_state("c"))
    assert bool(torch.cat(flags).any())  # the flag goes on after the restore
    classes = a.client_state("c")["classes"].values()
    assert sum(cs["growing"].shape[0] for cs in classes) == 16  # the caps bind
    assert all(cs["distances"].numel() == 40 for cs in classes)


def version_1_state(state: dict) -> dict:
    """A version-2 state written the way version 1 wrote it: the recorded distances as a list.

    The recorded distances are the ones that passed the threshold when they arrived, so they
    are read off D_c by replaying the threshold rule (Welford's update, as the detector does).
    """
    old = {k: v for k, v in state.items() if k != "classes"}
    old["version"] = 1
    old["classes"] = {}
    for c, cs in state["classes"].items():
        n, mean, m2, threshold, recorded = 0, 0.0, 0.0, 0.0, []
        for d in cs["distances"].tolist():
            if d > threshold:
                recorded.append(d)
                n += 1
                delta = d - mean
                mean += delta / n
                m2 += delta * (d - mean)
                threshold = max(threshold, mean - math.sqrt(max(m2, 0.0) / n))
        assert [n, mean, m2] == cs["welford"].tolist() and threshold == cs["threshold"]
        old["classes"][c] = {
            "growing": cs["growing"].clone(),
            "threshold": threshold,
            "recorded": torch.tensor(recorded, dtype=torch.float64),
            "distances": cs["distances"].clone(),
        }
    return old


def test_version_1_state_loads_with_identical_later_decisions() -> None:
    x = synthetic_stream(400, seed=2)
    y = class_of_first_pixels(x)
    a = PradaDetector(delta=0.8)
    a.observe("c", x[:170], y[:170])
    v1 = loads_state(dumps_state(version_1_state(a.client_state("c"))))
    b = PradaDetector(delta=0.8)
    b.load_client_state("c", v1)
    # loaded, the state is the version-2 state the detector would have written itself
    assert_same_state(b.client_state("c"), a.client_state("c"))
    assert b.client_state("c")["version"] == 2
    for i in range(170, 400, 23):
        oa, ob = (
            a.observe("c", x[i : i + 23], y[i : i + 23]),
            b.observe("c", x[i : i + 23], y[i : i + 23]),
        )
        assert torch.equal(oa.flags, ob.flags) and torch.equal(oa.scores, ob.scores)
    assert_same_state(b.client_state("c"), a.client_state("c"))
    assert a.is_flagged("c")


def test_state_saved_without_caps_loads_into_a_capped_detector() -> None:
    x, y = natural_stream(300, seed=1)
    free = PradaDetector()
    free.observe("c", x, y)
    capped = PradaDetector(max_distances=20, max_growing=5)
    capped.load_client_state("c", free.client_state("c"))
    for c, cs in capped.client_state("c")["classes"].items():
        kept = free.client_state("c")["classes"][c]
        assert torch.equal(cs["distances"], kept["distances"][-20:])
        assert torch.equal(cs["growing"], kept["growing"])  # kept whole, grows no further
    capped.observe("c", x[:50], y[:50])
    for c, cs in capped.client_state("c")["classes"].items():
        assert torch.equal(cs["growing"], free.client_state("c")["classes"][c]["growing"])
        assert cs["distances"].numel() == 20


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
    det.observe("b", x, y)
    good = det.client_state("b")
    for version, welford in ((3, [1.0, 0.0, 0.0]), (2, [1.5, 0.0, 0.0]), (2, [1.0, 0.0])):
        bad = {**good, "version": version, "classes": {**good["classes"]}}
        bad["classes"][0] = {**good["classes"][0], "welford": torch.tensor(welford)}
        with pytest.raises(InputValidationError, match="state: not a PRADA client state"):
            det.load_client_state("b", bad)
    assert_same_state(det.client_state("b"), good)  # a refused state changes nothing


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
