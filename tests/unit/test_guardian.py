"""Tests for the Model-Guardian DFMS detector's parts: the LGrad gradient representation
against per-sample autograd, its normalisation, the threshold calibration rule, the bundle's
save/load round trip (with the generic scorers), the Detector protocol, the defender-data
splits, the generic corruptions, the local outlier ratio, the quantisation cue, the GAN / DDPM
samplers, the DFME query recorder and the ``guardian train`` CLI's argument handling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from stealproof.detectors import Detector
from stealproof.detectors.corruptions import KINDS, corrupt
from stealproof.detectors.ddpm import DDPM, DDPMConfig, train_ddpm
from stealproof.detectors.gan import GANConfig, train_gan
from stealproof.detectors.gradient import (
    TransformConfig,
    TransformNet,
    gradient_representation,
    normalize_per_sample,
    train_transformation_net,
)
from stealproof.detectors.guardian import (
    GuardianBundle,
    GuardianConfig,
    GuardianDetector,
    benign_fpr,
    calibrate_threshold,
    guardian_config,
    split_defender_data,
)
from stealproof.detectors.novelty import (
    knn_distances,
    local_outlier_ratio,
    reference_k_distance,
)
from stealproof.detectors.quantization import (
    detect_levels,
    quantization_residual,
    snap_to_grid,
)
from stealproof.detectors.sources import RecordingBlackBox, dfme_queries
from stealproof.errors import DataFileError, InputValidationError
from stealproof.models import create_model
from stealproof.oracle import BlackBox

SHAPE = (1, 8, 8)


def _images(n: int, seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _transform(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> TransformNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TransformNet(shape, width=4)
    return net.eval()


def _bundle(seed: int = 0, threshold: float = 0.5) -> GuardianBundle:
    dets = {}
    for i, src in enumerate(("dfme", "gan")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            dets[src] = create_model(
                "mlp", in_channels=1, image_size=(8, 8), num_classes=2, hidden=(16,)
            ).eval()
    return GuardianBundle(_transform(seed), dets, threshold, meta={"sources": ["dfme", "gan"]})


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("model_kind", ["transform", "mlp", "lenet"])
def test_gradient_matches_per_sample_autograd(model_kind: str) -> None:
    torch.manual_seed(0)
    if model_kind == "transform":
        model: nn.Module = _transform()
    else:
        model = create_model(model_kind, in_channels=1, image_size=(8, 8), num_classes=10).eval()
    x = _images(7)
    got = gradient_representation(model, x, batch_size=3, normalize=False)
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(model(xi).sum(), xi)
        torch.testing.assert_close(got[i : i + 1], gi, rtol=1e-5, atol=1e-6)
    normed = gradient_representation(model, x, batch_size=100)
    torch.testing.assert_close(normed, normalize_per_sample(got))


def test_gradient_is_batch_invariant_and_leaves_model_alone() -> None:
    model = _transform()
    model.train()
    x = _images(10)
    a = gradient_representation(model, x, batch_size=1)
    b = gradient_representation(model, x, batch_size=64)
    torch.testing.assert_close(a, b)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


def test_normalisation_range_and_constant_rows() -> None:
    g = torch.randn(5, 1, 4, 4)
    g[3] = 2.5  # constant row
    out = normalize_per_sample(g)
    assert out.shape == g.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    flat = out.reshape(5, -1)
    for i in (0, 1, 2, 4):
        assert float(flat[i].min()) == 0.0 and float(flat[i].max()) == pytest.approx(1.0)
    assert bool((flat[3] == 0).all())


def test_gradient_rejects_bad_input() -> None:
    with pytest.raises(InputValidationError, match="x"):
        gradient_representation(_transform(), torch.full((2, 1, 8, 8), 2.0))
    with pytest.raises(InputValidationError, match="batch_size"):
        gradient_representation(_transform(), _images(2), batch_size=0)


def test_transformation_net_trains_frozen_and_seeded() -> None:
    x = _images(32)
    cfg = TransformConfig(width=4, epochs=2, batch_size=16, seed=3)
    a, b = train_transformation_net(x, cfg), train_transformation_net(x, cfg)
    assert not a.training
    assert all(not p.requires_grad for p in a.parameters())
    torch.testing.assert_close(a(x), b(x))
    assert a(x).shape == (32, 1)


# ----------------------------------------------------------------------------- calibration


def test_calibration_rule_is_the_conformal_quantile() -> None:
    scores = torch.arange(1, 100, dtype=torch.float32)  # n = 99
    # k = ceil(100 * 0.95) = 95 → the 95th smallest score
    assert calibrate_threshold(scores, 0.05) == 95.0
    t = calibrate_threshold(scores[torch.randperm(99)], 0.05)
    assert float((scores > t).float().mean()) <= 0.05
    # k = ceil(100 * 0.99) = 99 = n → the largest score
    assert calibrate_threshold(scores, 0.01) == 99.0
    # n too small for the target: still the largest score
    assert calibrate_threshold(torch.tensor([0.3, 0.1, 0.2]), 0.01) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("scores", "fpr", "match"),
    [
        (torch.tensor([]), 0.01, "empty"),
        (torch.tensor([0.1, float("nan")]), 0.01, "non-finite"),
        (torch.tensor([0.1, 0.2]), 0.0, "target_fpr"),
        (torch.tensor([0.1, 0.2]), 1.0, "target_fpr"),
    ],
)
def test_calibration_rejects_bad_input(scores: Tensor, fpr: float, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        calibrate_threshold(scores, fpr)


# ----------------------------------------------------------------------------- bundle, detector


def test_bundle_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    bundle = _bundle(threshold=0.25)
    x = _images(9, seed=1)
    before = bundle.source_logits(x)
    path = bundle.save(tmp_path / "g" / "guardian.pt")
    payload = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert payload["format"] == "stealproof-guardian"
    loaded = GuardianBundle.load(path)
    assert loaded.sources == ["dfme", "gan"]
    assert loaded.threshold == 0.25
    assert loaded.meta == {"sources": ["dfme", "gan"]}
    assert loaded.image_shape == SHAPE
    torch.testing.assert_close(loaded.source_logits(x), before, rtol=0, atol=0)
    d1, d2 = GuardianDetector(bundle), GuardianDetector.load(path)
    y = torch.full((9, 10), 0.1)
    r1, r2 = d1.observe("a", x, y), d2.observe("a", x, y)
    assert torch.equal(r1.scores, r2.scores) and torch.equal(r1.flags, r2.flags)


def test_bundle_round_trip_keeps_image_channel_grid_and_standardisation(tmp_path: Path) -> None:
    dets = {}
    for i, src in enumerate(("dfme", "gan", "ddpm")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            dets[src] = create_model(
                "mlp", in_channels=3, image_size=(8, 8), num_classes=2, hidden=(8,)
            ).eval()
    bundle = GuardianBundle(
        _transform(),
        dets,
        0.5,
        detector_input="gradient+image",
        quantization_levels=16,
        score_offset=torch.tensor([1.0, -2.0, 0.5]),
        score_scale=torch.tensor([2.0, 0.5, 1.0]),
    )
    x = _images(7, seed=3)
    feats = bundle.features(x)
    assert feats.shape == (7, 3, 8, 8)
    torch.testing.assert_close(feats[:, 1:2], x)
    torch.testing.assert_close(feats[:, 2:3], quantization_residual(x, 16))
    raw = bundle.source_logits(x)
    std = bundle.column_scores(x)
    torch.testing.assert_close(
        std, (raw - torch.tensor([1.0, -2.0, 0.5])) / torch.tensor([2, 0.5, 1])
    )
    torch.testing.assert_close(bundle.fused_logits(x), std.max(dim=1).values)
    loaded = GuardianBundle.load(bundle.save(tmp_path / "g.pt"))
    assert loaded.detector_input == "gradient+image" and loaded.quantization_levels == 16
    torch.testing.assert_close(loaded.fused_logits(x), bundle.fused_logits(x), rtol=0, atol=0)


def test_bundle_generic_scorers_are_columns_after_the_sources(tmp_path: Path) -> None:
    base = _bundle()
    ref = _images(30, seed=5)
    kdist = reference_k_distance(ref, 2)
    bundle = GuardianBundle(
        base.transform,
        base.detectors,
        0.7,
        score_offset=torch.tensor([0.5, -1.0, 0.2, 1.0]),
        score_scale=torch.tensor([1.0, 2.0, 0.5, 0.25]),
        generic=("transform", "lof"),
        novelty_reference=ref.reshape(30, -1),
        novelty_kdist=kdist,
        novelty_neighbors=2,
    )
    assert bundle.score_names == ["dfme", "gan", "transform", "lof"]
    x = _images(6, seed=6)
    generic = bundle.generic_logits(x)
    assert generic.shape == (6, 2)
    with torch.no_grad():
        torch.testing.assert_close(generic[:, 0], -bundle.transform(x)[:, 0])
    torch.testing.assert_close(generic[:, 1], local_outlier_ratio(x, ref, kdist, 2))
    raw = bundle.raw_scores(x)
    torch.testing.assert_close(raw[:, :2], bundle.source_logits(x))
    torch.testing.assert_close(raw[:, 2:], generic)
    torch.testing.assert_close(bundle.fused_logits(x), bundle.standardize(raw).max(dim=1).values)
    loaded = GuardianBundle.load(bundle.save(tmp_path / "g.pt"))
    assert loaded.score_names == bundle.score_names and loaded.novelty_neighbors == 2
    torch.testing.assert_close(loaded.raw_scores(x), raw, rtol=0, atol=0)
    torch.testing.assert_close(loaded.fused_logits(x), bundle.fused_logits(x), rtol=0, atol=0)
    # without generic scorers the columns are the sub-detectors alone
    assert base.generic_logits(x).shape == (6, 0)
    torch.testing.assert_close(base.raw_scores(x), base.source_logits(x))


def test_local_outlier_ratio_flags_points_off_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 2, generator=g)
    d, idx = knn_distances(ref[:5], ref, 3, exclude_self=True)
    assert d.shape == (5, 3) and bool((d[:, 1:] >= d[:, :-1]).all())
    assert not bool((idx == torch.arange(5).view(-1, 1)).any())  # never its own neighbour
    full = torch.cdist(ref[:5], ref)
    full[torch.arange(5), torch.arange(5)] = float("inf")
    torch.testing.assert_close(d, full.topk(3, largest=False).values)
    kdist = reference_k_distance(ref, 3, batch_size=7)  # batching does not change it
    torch.testing.assert_close(kdist, reference_k_distance(ref, 3))
    inliers = torch.randn(50, 2, generator=g)
    outliers = torch.randn(50, 2, generator=g) + torch.tensor([6.0, 0.0])
    a, b = local_outlier_ratio(inliers, ref, kdist, 3), local_outlier_ratio(outliers, ref, kdist, 3)
    assert float(a.median()) < 1.5 < float(b.min())
    with pytest.raises(InputValidationError, match="k"):
        knn_distances(inliers, ref, 201)
    with pytest.raises(InputValidationError, match="values per row"):
        knn_distances(torch.zeros(3, 5), ref, 1)


def test_bundle_load_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not found"):
        GuardianBundle.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataFileError, match="readable"):
        GuardianBundle.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(DataFileError, match="guardian bundle"):
        GuardianBundle.load(other)


def test_detector_is_stateless_and_flags_per_row() -> None:
    bundle = _bundle()
    det = GuardianDetector(bundle)
    assert isinstance(det, Detector) and det.name == "guardian"
    x = _images(12, seed=2)
    y = torch.softmax(torch.randn(12, 10), dim=1)
    out = det.observe("client", x, y)
    assert out.scores.shape == (12,) and out.flags.shape == (12,)
    assert out.flags.dtype == torch.bool
    assert float(out.scores.min()) >= 0.0 and float(out.scores.max()) <= 1.0
    fused = bundle.fused_logits(x)
    assert torch.equal(out.flags, fused > bundle.threshold)
    torch.testing.assert_close(out.scores, torch.sigmoid(fused))
    assert torch.equal(out.flags, out.scores > det.threshold)
    # stateless: same answer for any client, any order, any batch split
    again = det.observe("other", x.flip(0), y.flip(0))
    assert torch.equal(again.flags, out.flags.flip(0))
    halves = [det.observe("client", x[i : i + 5], y[i : i + 5]).scores for i in (0, 5, 10)]
    torch.testing.assert_close(torch.cat(halves), out.scores)
    assert det.client_state("client") == {} and det.clients() == []
    det.load_client_state("client", {})
    det.reset_client("client")
    with pytest.raises(InputValidationError, match="stateless"):
        det.load_client_state("client", {"x": 1})


def test_detector_validates_input() -> None:
    det = GuardianDetector(_bundle())
    y = torch.full((3, 10), 0.1)
    with pytest.raises(InputValidationError, match="x"):
        det.observe("c", _images(3, shape=(1, 9, 9)), y)
    with pytest.raises(InputValidationError, match="y"):
        det.observe("c", _images(3), torch.full((4, 10), 0.1))


def test_threshold_controls_flags_and_benign_fpr() -> None:
    x = _images(20, seed=4)
    low, high = GuardianDetector(_bundle(threshold=-math.inf)), GuardianDetector(_bundle())
    high.bundle.threshold = math.inf
    assert benign_fpr(low, x) == 1.0 and benign_fpr(high, x) == 0.0


# ----------------------------------------------------------------------------- config, splits


def test_splits_are_disjoint_and_cover_everything() -> None:
    cfg = GuardianConfig(seed=5)
    sp = split_defender_data(1137, cfg)
    parts = [sp.fit, sp.train, sp.eval, sp.calibration]
    allidx = torch.cat(parts)
    assert allidx.numel() == 1137 and allidx.unique().numel() == 1137
    assert sp.sizes() == {"fit": 455, "train": 341, "eval": 171, "calibration": 170}
    assert torch.equal(split_defender_data(1137, cfg).fit, sp.fit)
    with pytest.raises(InputValidationError, match="too few"):
        split_defender_data(10, cfg)


def test_config_validation_and_scenario_defaults() -> None:
    with pytest.raises(ValueError, match="fit_fraction"):
        GuardianConfig(fit_fraction=0.5, train_fraction=0.4, eval_fraction=0.1)
    with pytest.raises(ValueError, match="duplicates"):
        GuardianConfig(sources=("gan", "gan"))
    with pytest.raises(ValueError):
        GuardianConfig(sources=())
    with pytest.raises(ValueError):
        GuardianConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="duplicates"):
        GuardianConfig(generic_scorers=("lof", "lof"))
    assert GuardianConfig().generic_scorers == ("transform", "lof")
    m = guardian_config("mnist5k", seed=3, transform={"epochs": 2})
    assert m.seed == 3 and m.transform.epochs == 2 and m.transform.width == 16
    assert m.ddpm.denoiser == "mlp"
    assert guardian_config("digits") == GuardianConfig()
    with pytest.raises(InputValidationError, match="scenario"):
        guardian_config("cifar")


# ----------------------------------------------------------------------------- sources


def test_corruptions_stay_in_range_and_are_seeded() -> None:
    x = _images(64)
    a = corrupt(x, torch.Generator().manual_seed(1))
    b = corrupt(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, x)
    for kinds in (1, 5, KINDS):  # every kind count works, also on images of other sizes
        c = corrupt(_images(32, shape=(1, 28, 28)), torch.Generator().manual_seed(2), kinds)
        assert c.shape == (32, 1, 28, 28) and float(c.min()) >= 0 and float(c.max()) <= 1
    with pytest.raises(InputValidationError, match="kinds"):
        corrupt(x, torch.Generator(), KINDS + 1)


def test_quantisation_grid_is_detected_snapped_and_measured() -> None:
    x = torch.randint(0, 17, (50, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 16
    assert detect_levels(x) == 16
    assert detect_levels(torch.randint(0, 256, (20, 1, 28, 28)) / 255) == 255
    assert detect_levels(_images(10)) == 0  # continuous pixels: no grid
    assert torch.equal(quantization_residual(x, 16), torch.zeros_like(x))
    y = _images(10)
    r = quantization_residual(y, 16)
    assert float(r.min()) >= 0 and float(r.max()) <= 1 and float(r.mean()) > 0.3
    snapped = snap_to_grid(y, 16)
    assert float((snapped - y).abs().max()) <= 1 / 32 + 1e-6
    assert float(quantization_residual(snapped, 16).max()) < 1e-4
    assert torch.equal(snap_to_grid(y, 0), y) and torch.equal(quantization_residual(y, 0), 0 * y)
    with pytest.raises(InputValidationError, match="levels"):
        snap_to_grid(y, -1)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16)])
def test_gan_and_ddpm_sample_seeded_images(shape: tuple[int, int, int]) -> None:
    x = _images(16, shape=shape)
    gan = train_gan(x, GANConfig(steps=3, batch_size=8, width=8, latent_dim=4))
    ddpm = train_ddpm(x, DDPMConfig(steps=3, batch_size=8, width=4, timesteps=10))
    for model in (gan, ddpm):
        s1 = model.sample(5, torch.Generator().manual_seed(0))
        s2 = model.sample(5, torch.Generator().manual_seed(0))
        assert s1.shape == (5, *shape) and torch.equal(s1, s2)
        assert float(s1.min()) >= 0.0 and float(s1.max()) <= 1.0
        with pytest.raises(InputValidationError, match="n"):
            model.sample(0, torch.Generator())


def test_gan_training_ignores_the_global_generator() -> None:
    x = _images(16)
    cfg = GANConfig(steps=4, batch_size=8, width=8, latent_dim=4, seed=2)
    torch.manual_seed(1)
    a = train_gan(x, cfg).sample(4, torch.Generator().manual_seed(0))
    torch.manual_seed(99)
    b = train_gan(x, cfg).sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_ddpm_respacing_keeps_the_forward_process() -> None:
    model = DDPM(SHAPE, DDPMConfig(timesteps=100, sample_steps=10))
    steps, betas = model._schedule()
    assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 99
    torch.testing.assert_close(
        torch.cumprod(1 - betas, dim=0), model.alpha_bars[torch.tensor(steps)]
    )
    full = DDPM(SHAPE, DDPMConfig(timesteps=20))
    assert full._schedule()[0] == list(range(20))
    with pytest.raises(InputValidationError, match="beta_end"):
        train_ddpm(_images(4), DDPMConfig(beta_start=0.1, beta_end=0.05))


class _Victim(nn.Module):
    input_shape = SHAPE
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))  # type: ignore[no-any-return]


def test_recording_black_box_passes_answers_and_samples_the_whole_stream() -> None:
    torch.manual_seed(0)
    victim = _Victim()
    box = BlackBox(victim, None, budget=1000)
    rec = RecordingBlackBox(box, 50, torch.Generator().manual_seed(0))
    batches = [torch.full((100, *SHAPE), i / 10) for i in range(10)]  # batch i: value i/10
    for b in batches:
        torch.testing.assert_close(rec.query(b), BlackBox(victim).query(b))
    assert rec.queries_used == 1000 and rec.budget_left == 0 and rec.seen == 1000
    kept = rec.recorded()
    assert kept.shape == (50, *SHAPE)
    assert len({round(float(v), 3) for v in kept[:, 0, 0, 0]}) >= 5  # spread over the run


def test_dfme_queries_records_an_attack_run() -> None:
    victim = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10, hidden=(16,))
    params = {"batch_size": 16, "trace_points": 1}
    out = dfme_queries(victim, 40, budget=16 * 7 * 3, seed=0, params=params)
    assert out.shape == (40, *SHAPE)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = dfme_queries(victim, 40, budget=16 * 7 * 3, seed=0, params=params)
    assert torch.equal(out, again)
    with pytest.raises(InputValidationError, match="dfme_budget"):
        dfme_queries(victim, 400, budget=100, params=params)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--scenario", "cifar"], "--scenario"),
        (["--target-fpr", "0"], "target_fpr"),
        (["--sources", "gan,vae"], "sources"),
    ],
)
def test_cli_rejects_bad_arguments_before_training(args: list[str], match: str) -> None:
    from typer.testing import CliRunner

    from stealproof.cli.guardian import app

    result = CliRunner().invoke(app, ["train", "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert match in result.stderr and "Traceback" not in result.output
