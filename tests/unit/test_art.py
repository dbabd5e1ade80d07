"""stealproof ⇄ ART (``stealproof.integrations.art``): defenses served by ART classifiers answer as
``BlackBox`` does, stealproof's baselines agree with ART's postprocessors wherever the definitions
agree (and each difference is demonstrated), ART's extraction attacks spend exactly the rows a
metered black box grants them, and ``stealproof attack --attack art:...`` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import Tensor

pytest.importorskip("art")

from art.attacks.extraction import KnockoffNets as ArtKnockoffNets
from art.defences.postprocessor import (
    ClassLabels,
    ReverseSigmoid,
    Rounded,
)
from art.estimators.classification import PyTorchClassifier
from pydantic import ValidationError
from typer.testing import CliRunner, Result

from stealproof import defenses
from stealproof.attacks import KnockoffNets, clone_factory_like
from stealproof.attacks.knockoff import KnockoffConfig
from stealproof.cli import app
from stealproof.data import Pool
from stealproof.defenses.reverse_sigmoid import reverse_sigmoid
from stealproof.defenses.rounding import round_posteriors
from stealproof.errors import (
    BudgetExhaustedError,
    ClientBlockedError,
    InputValidationError,
    UnknownNameError,
)
from stealproof.http_box import HTTPBlackBox
from stealproof.integrations.art import (
    ArtExtraction,
    BoxPredict,
    art_attack,
    as_art_classifier,
    as_art_postprocessor,
    reads_inputs,
)
from stealproof.models import Classifier, create_model
from stealproof.oracle import BlackBox
from stealproof.serve.protocol import (
    HEADER_LENGTH,
    INPUT_NAME,
    OUTPUT_PROBS,
    InputSpec,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
)
from stealproof.train import TrainConfig

K = 10
SHAPE = (1, 8, 8)
FAST = TrainConfig(epochs=2, batch_size=32, lr=3e-3, schedule="none")


def small_victim(seed: int = 0) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("mlp", image_size=(8, 8), num_classes=K, hidden=(32,)).eval()


def images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def posteriors(n: int, k: int = K, seed: int = 0, scale: float = 3.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)


def random_pool(n: int = 300, seed: int = 1) -> Pool:
    return Pool("rand", images(n, seed), torch.arange(n) % 3)


def art_classifier(victim: torch.nn.Module, *, post: list[Any], pre: list[Any]) -> Any:
    return PyTorchClassifier(
        model=victim,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=SHAPE,
        nb_classes=K,
        clip_values=(0.0, 1.0),
        preprocessing_defences=pre or None,
        postprocessing_defences=post,
        device_type="cpu",
    )


@pytest.fixture(scope="module")
def victim() -> Classifier:
    return small_victim()


# ----------------------------------------------------------------------------- import, extra


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_stealproof_never_imports_art() -> None:
    code = (
        "import sys, stealproof, stealproof.defenses, stealproof.attacks, stealproof.oracle, "
        "stealproof.integrations, stealproof.cli\n"
        "assert not any(m == 'art' or m.startswith('art.') for m in sys.modules), 'art imported'\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr


def test_without_art_the_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['art'] = None  # as if ART were not installed\n"
        "from stealproof.errors import StealproofError\n"
        "try:\n"
        "    import stealproof.integrations.art\n"
        "except ImportError as e:\n"
        "    assert isinstance(e, StealproofError), type(e)\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "pip install 'stealproof[art]'" in done.stdout


# ----------------------------------------------------------------------------- postprocessor


def prepared(name: str, victim: Classifier, **params: Any) -> defenses.Defense:
    return defenses.get_defense_class(name).prepare(victim, images(200, seed=5), **params)


DEFENSES: list[tuple[str, dict[str, Any]]] = [
    ("mad_argmax", {"eps": 1.0}),
    ("mad", {"eps": 0.5}),
    ("reverse_sigmoid", {"beta": 0.7, "gamma": 0.2}),
    ("random", {"eps": 0.8}),  # keyed randomness: a hash of (salt, row pixels)
    ("noise", {"eps_z": 2.0}),
    ("rounding", {"decimals": 1}),
    ("top1", {}),
    ("none", {}),
]


@pytest.mark.parametrize(("name", "params"), DEFENSES, ids=[d[0] for d in DEFENSES])
def test_an_art_classifier_serving_a_defense_answers_as_the_black_box(
    victim: Classifier, name: str, params: dict[str, Any]
) -> None:
    defense = prepared(name, victim, **params)
    x = images(300, seed=2)
    pp = as_art_postprocessor(defense, batch_size=37)
    clf = art_classifier(victim, post=[pp], pre=[pp.input_tap])
    served = clf.predict(x.numpy(), batch_size=64)  # ART's own batching differs from the box's
    expected = BlackBox(victim, defense, batch_size=100).query(x).numpy()
    assert served.dtype == np.float32
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    assert reads_inputs(defense) == (name not in ("reverse_sigmoid", "rounding", "top1", "none"))


@pytest.mark.parametrize(("output", "top_k"), [("topk", 3), ("label", 1)])
def test_output_modes_match_the_black_box(victim: Classifier, output: Any, top_k: int) -> None:
    defense = prepared("mad_argmax", victim, eps=1.0)
    x = images(50, seed=3)
    pp = as_art_postprocessor(defense, output=output, top_k=top_k)
    served = art_classifier(victim, post=[pp], pre=[pp.input_tap]).predict(x.numpy())
    expected = BlackBox(victim, defense, output=output, top_k=top_k).query(x).numpy()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_keyed_randomness_is_batch_invariant_through_art(victim: Classifier) -> None:
    pp = as_art_postprocessor(defenses.create("random", eps=1.0))
    clf = art_classifier(victim, post=[pp], pre=[pp.input_tap])
    x = images(40, seed=4).numpy()
    whole = clf.predict(x, batch_size=40)
    one_by_one = np.concatenate([clf.predict(x[i : i + 1]) for i in range(len(x))])
    shuffled = clf.predict(x[::-1].copy())[::-1]
    # equal up to the victim's float rounding, which varies with the batch; a different random
    # receiver class would move 0.5 of probability mass
    np.testing.assert_allclose(whole, one_by_one, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole, shuffled, rtol=0, atol=1e-6)


def test_a_defense_that_reads_x_without_the_tap_is_a_clear_error(victim: Classifier) -> None:
    for defense in (prepared("mad_argmax", victim, eps=1.0), defenses.create("random")):
        pp = as_art_postprocessor(defense)
        clf = art_classifier(victim, post=[pp], pre=[])
        with pytest.raises(InputValidationError, match=r"preprocessing_defences=\[pp.input_tap\]"):
            clf.predict(images(5).numpy())


def test_posterior_only_defenses_need_no_tap(victim: Classifier) -> None:
    defense = defenses.create("reverse_sigmoid", beta=0.7)
    pp = as_art_postprocessor(defense)
    x = images(20)
    served = art_classifier(victim, post=[pp], pre=[]).predict(x.numpy())
    np.testing.assert_allclose(served, BlackBox(victim, defense).query(x).numpy(), atol=1e-6)


def test_the_tap_belongs_to_its_classifier(victim: Classifier) -> None:
    pp = as_art_postprocessor(defenses.create("random"))
    pp.input_tap.forward(images(3))  # a stray batch of another size
    with pytest.raises(InputValidationError, match="saw 3 rows but the predictions have 5"):
        pp(np.zeros((5, K), dtype=np.float32))
    with pytest.raises(InputValidationError, match="needs the inputs x"):
        pp(np.zeros((5, K), dtype=np.float32))  # a batch is used once, then forgotten


def test_probability_outputs_and_bad_arguments(victim: Classifier) -> None:
    softmax_victim = torch.nn.Sequential(victim, torch.nn.Softmax(dim=1)).eval()
    defense = defenses.create("rounding", decimals=2)
    pp = as_art_postprocessor(defense, preds="probs")
    x = images(30)
    served = art_classifier(softmax_victim, post=[pp], pre=[]).predict(x.numpy())
    np.testing.assert_allclose(served, BlackBox(victim, defense).query(x).numpy(), atol=1e-6)
    with pytest.raises(InputValidationError, match="preds"):
        as_art_postprocessor("none", preds="scores")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match="output"):
        as_art_postprocessor("none", output="logits")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match="batch_size"):
        as_art_postprocessor("none", batch_size=0)
    with pytest.raises(UnknownNameError, match="nope"):
        as_art_postprocessor("nope")


# ----------------------------------------------------------------------- vs ART's postprocessors


@pytest.mark.parametrize(("beta", "gamma"), [(0.5, 0.2), (1.0, 0.1), (0.3, 1.0), (1.0, 2.0)])
def test_reverse_sigmoid_equals_arts(beta: float, gamma: float) -> None:
    y = posteriors(500, seed=int(10 * gamma))
    ours = reverse_sigmoid(y, beta, gamma).numpy()
    theirs = ReverseSigmoid(beta=beta, gamma=gamma)(y.numpy())
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-12)


def test_reverse_sigmoid_differences_from_art() -> None:
    # (1) the same parameters, other defaults: ART β=1, γ=0.1; ours β=0.5, γ=0.2
    art_default = ReverseSigmoid()
    assert (art_default.beta, art_default.gamma) == (1.0, 0.1)
    assert defenses.create("reverse_sigmoid").params == {"beta": 0.5, "gamma": 0.2}
    # (2) ranges: ART refuses β=0 (ours: the identity) and takes β>1 (ours refuses)
    with pytest.raises(ValueError, match="positive"):
        ReverseSigmoid(beta=0.0)
    y = posteriors(20)
    np.testing.assert_allclose(reverse_sigmoid(y, 0.0, 0.2).numpy(), y.numpy(), atol=1e-15)
    ReverseSigmoid(beta=2.0)
    with pytest.raises(InputValidationError, match="beta"):
        defenses.create("reverse_sigmoid", beta=2.0)
    # (3) ART subtracts r from the *unclipped* y, ours from y clipped to [1e-9, 1-1e-9]:
    # rows with exact zeros (or ones) differ by ~1e-9, never more
    y0 = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.3, 0.0]], dtype=torch.float64)
    diff = np.abs(
        ReverseSigmoid(beta=0.5, gamma=0.2)(y0.numpy()) - reverse_sigmoid(y0, 0.5, 0.2).numpy()
    )
    assert 0 < diff.max() < 1e-8
    # (4) ART reads a one-column batch as binary p(class 1); ours needs K ≥ 2 — on [1-p, p]
    # it gives ART's answer
    p = torch.rand(100, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    binary = ReverseSigmoid(beta=0.5, gamma=0.2)(p.numpy())
    two_class = reverse_sigmoid(torch.cat([1 - p, p], dim=1), 0.5, 0.2).numpy()[:, 1:]
    np.testing.assert_allclose(binary, two_class, atol=1e-12)
    with pytest.raises(InputValidationError, match="at least 2 classes"):
        defenses.create("reverse_sigmoid")(None, p.float())


@pytest.mark.parametrize("decimals", [1, 2, 3])
def test_rounding_is_arts_rounded_renormalised(decimals: int) -> None:
    y = posteriors(500, seed=decimals)
    theirs = Rounded(decimals=decimals)(y.numpy())
    ours = round_posteriors(y, decimals).numpy()
    sums = theirs.sum(axis=1)
    # ART does not renormalise: many rows do not sum to 1
    assert (np.abs(sums - 1) > 1e-9).mean() > 0.2
    # where the rounded top class stays the unique maximum, ours = ART's divided by its sum
    top = y.numpy().argmax(axis=1)
    top_val = theirs[np.arange(len(y)), top]
    others = theirs.copy()
    others[np.arange(len(y)), top] = -1
    clean = (others.max(axis=1) < top_val) & (sums > 0)
    assert clean.mean() > 0.9
    np.testing.assert_allclose(ours[clean], (theirs / sums[:, None])[clean], rtol=0, atol=1e-12)


def test_rounding_differences_from_art() -> None:
    # (1) a tie after rounding: ART's argmax flips to the lower index, ours keeps the top class
    y = torch.tensor([[0.46, 0.54]], dtype=torch.float64)
    theirs = Rounded(decimals=1)(y.numpy())
    np.testing.assert_array_equal(theirs, [[0.5, 0.5]])
    assert theirs.argmax() == 0
    assert round_posteriors(y, 1).argmax() == 1
    # (2) a row that rounds to all zeros: ART returns zeros (no distribution), ours one-hot
    flat = torch.full((1, 30), 1 / 30, dtype=torch.float64)
    flat[0, 7] += 1e-3
    flat = flat / flat.sum()
    assert Rounded(decimals=1)(flat.numpy()).sum() == 0
    np.testing.assert_array_equal(round_posteriors(flat, 1).numpy(), np.eye(30)[[7]])
    # (3) decimals=0: ART refuses it, ours allows it
    with pytest.raises(ValueError, match="positive"):
        Rounded(decimals=0)
    assert (
        round_posteriors(posteriors(5), 0).sum(dim=1).allclose(torch.ones(5, dtype=torch.float64))
    )


def test_top1_equals_arts_class_labels_when_every_row_has_the_same_argmax() -> None:
    y = posteriors(200)
    same = y[y.argmax(dim=1) == 3]
    assert len(same) > 5
    np.testing.assert_array_equal(
        ClassLabels()(same.numpy()), defenses.create("top1")(None, same.float()).double().numpy()
    )


def test_arts_class_labels_is_not_batch_invariant(victim: Classifier) -> None:
    """ART 1.20.1 ``ClassLabels`` does ``class_labels[:, argmax(preds, axis=1)] = 1``: every row
    gets a one at *every* row's argmax (the bug named in ALGORITHMS.md); ours is row-wise."""
    y = posteriors(200)
    distinct = len(set(y.argmax(dim=1).tolist()))
    assert distinct > 1
    theirs = ClassLabels()(y.numpy())
    ours = defenses.create("top1")(None, y.float()).numpy()
    assert (theirs.sum(axis=1) == distinct).all()  # multi-hot rows
    assert (ours.sum(axis=1) == 1).all()
    assert (ours.argmax(axis=1) == y.numpy().argmax(axis=1)).all()
    # a row's answer depends on the other rows: alone, ART gets it right
    np.testing.assert_array_equal(ClassLabels()(y[:1].numpy()), ours[:1])
    assert not np.array_equal(theirs[:1], ours[:1])
    # served by a PyTorchClassifier, the postprocessor sees all rows of predict at once,
    # whatever predict's batch_size: the bug is not hidden by ART's internal batching
    x = images(100, seed=6).numpy()
    art_served = art_classifier(victim, post=[ClassLabels()], pre=[]).predict(x, batch_size=8)
    pp = as_art_postprocessor("top1")
    ours_served = art_classifier(victim, post=[pp], pre=[]).predict(x, batch_size=8)
    labels = len(set(ours_served.argmax(axis=1).tolist()))
    assert labels > 1 and (art_served.sum(axis=1) == labels).all()
    assert (ours_served.sum(axis=1) == 1).all()
    # one column: ART thresholds binary scores at 0.5; ours needs K ≥ 2
    scores = np.array([[0.2], [0.7]])
    np.testing.assert_array_equal(ClassLabels()(scores), [[0.0], [1.0]])
    with pytest.raises(InputValidationError, match="at least 2 classes"):
        defenses.create("top1")(None, torch.tensor([[1.0], [1.0]]))


# ----------------------------------------------------------------------------- black box


@pytest.fixture
def numpy_seed() -> Iterator[None]:
    """ART's attacks draw from numpy's legacy global generator: seed it, restore it after."""
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002
    yield
    np.random.set_state(state)  # noqa: NPY002


def art_thief(victim: Classifier) -> Any:
    from stealproof.integrations.art import art_pytorch_classifier

    return art_pytorch_classifier(small_victim(seed=9), FAST, SHAPE, K)


def test_the_art_classifier_declares_the_box_and_meters_every_row(victim: Classifier) -> None:
    box = BlackBox(victim, "reverse_sigmoid", budget=500)
    clf = as_art_classifier(box)
    assert clf.input_shape == SHAPE and clf.nb_classes == K
    assert clf.clip_values is not None and tuple(map(float, clf.clip_values)) == (0.0, 1.0)
    x = images(130)
    out = clf.predict(x.numpy(), batch_size=50)
    assert box.queries_used == 130
    fresh = BlackBox(victim, "reverse_sigmoid").query(x).numpy()
    np.testing.assert_allclose(out, fresh, atol=1e-7)
    assert isinstance(clf.predict_fn, BoxPredict)


def test_arts_knockoffnets_spends_exactly_nb_stolen(victim: Classifier, numpy_seed: None) -> None:
    box = BlackBox(victim, "reverse_sigmoid", budget=1000)
    attack = ArtKnockoffNets(
        as_art_classifier(box), batch_size_query=32, nb_stolen=120, nb_epochs=1, verbose=False
    )
    attack.extract(images(300, seed=7).numpy(), thieved_classifier=art_thief(victim))
    assert box.queries_used == 120
    # ART quietly asks for fewer rows when the thief's data has fewer than nb_stolen
    small = BlackBox(victim, budget=1000)
    attack = ArtKnockoffNets(as_art_classifier(small), nb_stolen=120, nb_epochs=1, verbose=False)
    attack.extract(images(50, seed=7).numpy(), thieved_classifier=art_thief(victim))
    assert small.queries_used == 50


def test_a_budget_below_what_art_asks_for_raises_out_of_extract(
    victim: Classifier, numpy_seed: None
) -> None:
    """ART's predict calls the box once per batch_size_query rows: the chunks that fit are
    answered and charged, the first that does not fit is refused (nothing charged) and the
    error leaves ART's ``extract``, which keeps nothing."""
    box = BlackBox(victim, budget=100)
    attack = ArtKnockoffNets(
        as_art_classifier(box), batch_size_query=32, nb_stolen=120, nb_epochs=1, verbose=False
    )
    with pytest.raises(BudgetExhaustedError, match="96 of 100 rows used"):
        attack.extract(images(300, seed=7).numpy(), thieved_classifier=art_thief(victim))
    assert box.queries_used == 96


# ----------------------------------------------------------------------------- art_attack


@pytest.mark.parametrize("method", ["knockoffnets", "copycat"])
def test_art_attack_spends_its_budget_exactly(victim: Classifier, method: str) -> None:
    box = BlackBox(victim, "random", budget=250)
    attack = art_attack(method, train=FAST, query_batch=64)
    assert attack.name == f"art:{method}"
    before = state(small_victim(seed=0))
    result = attack.run(box, random_pool(), 200, clone_factory_like(victim))
    assert result.queries_used == box.queries_used == 200
    assert len(result.transfer) == 200
    assert result.stopped is None
    assert not result.clone.training
    assert not same(before, state(result.clone))  # trained by ART
    # the transfer set holds exactly what the box released for those images
    again = BlackBox(victim, "random").query(result.transfer.images)
    torch.testing.assert_close(result.transfer.answers, again)


def test_art_attack_queries_the_images_stealproofs_knockoff_draws(victim: Classifier) -> None:
    pool = random_pool(120)
    ours = KnockoffNets(KnockoffConfig(train=FAST, seed=3)).collect(BlackBox(victim), pool, 200)
    art = art_attack("knockoffnets", train=FAST, seed=3).run(
        BlackBox(victim), pool, 200, clone_factory_like(victim)
    )

    def rows(t: Tensor) -> list[bytes]:
        return sorted(r.numpy().tobytes() for r in t)

    assert rows(art.transfer.images) == rows(ours.images)  # the same rows, ART's order


def test_art_attack_is_seeded_and_leaves_global_rngs_alone(victim: Classifier) -> None:
    np_state = np.random.get_state()  # noqa: NPY002  (the global state ART draws from)
    torch_state = torch.get_rng_state()
    runs = [
        art_attack("copycat", train=FAST, seed=4).run(
            BlackBox(victim), random_pool(), 100, clone_factory_like(victim)
        )
        for _ in range(2)
    ]
    assert same(state(runs[0].clone), state(runs[1].clone))
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_adaptive_knockoffnets_one_row_per_query(victim: Classifier) -> None:
    box = BlackBox(victim, budget=30)
    attack = art_attack("knockoffnets", policy="adaptive", train=FAST, reward="cert")
    result = attack.run(box, random_pool(60), 30, clone_factory_like(victim))
    assert result.queries_used == box.queries_used == 30
    assert result.stopped is None


def test_arts_adaptive_loss_reward_reads_answers_as_logits(victim: Classifier) -> None:
    """ART's adaptive KnockoffNets scores the "loss" reward with softmax(answer), i.e. it takes
    the victim's released probabilities for logits (its docstring assumes logit outputs);
    stealproof's adaptive KnockoffNets uses the answer as the target distribution."""
    attack = ArtKnockoffNets(as_art_classifier(BlackBox(victim)), verbose=False)
    answer = np.eye(K)[[2]]  # a confident answer: all mass on class 2
    clone = torch.softmax(torch.randn(1, K, generator=torch.Generator().manual_seed(0)), 1)
    theirs = attack._reward_loss(answer, clone.numpy())
    as_logits = -(torch.softmax(torch.tensor(answer), 1) * torch.log(torch.softmax(clone, 1)))
    assert theirs == pytest.approx(float(as_logits.sum()), rel=1e-6)
    as_target = -float(torch.log(torch.softmax(clone, 1))[0, 2])
    assert theirs != pytest.approx(as_target, rel=1e-3)


class QuotaBox:
    """A box whose owner's quota (unknown to the thief: no ``budget_left``) ends after
    ``quota`` rows — like a gateway's 429 — or whose client is blocked there."""

    def __init__(self, box: BlackBox, quota: int, block: bool = False) -> None:
        self.box, self.quota, self.block = box, quota, block

    queries_used = property(lambda self: self.box.queries_used)
    input_shape = property(lambda self: self.box.input_shape)
    num_classes = property(lambda self: self.box.num_classes)
    budget_left = None

    def query(self, x: Tensor) -> Tensor:
        if self.box.queries_used + x.shape[0] > self.quota:
            if self.block:
                raise ClientBlockedError("thief", "flagged")
            raise BudgetExhaustedError(self.box.queries_used, self.quota, int(x.shape[0]))
        return self.box.query(x)


@pytest.mark.parametrize(("block", "reason"), [(False, "budget"), (True, "blocked")])
def test_art_attack_trains_on_what_was_answered_when_refused(
    victim: Classifier, block: bool, reason: str
) -> None:
    box = QuotaBox(BlackBox(victim), quota=100, block=block)
    result = art_attack("knockoffnets", train=FAST, query_batch=32).run(
        box, random_pool(), 200, clone_factory_like(victim)
    )
    assert result.stopped == reason
    assert result.queries_used == box.queries_used == 96  # three chunks of 32 fit in 100
    assert len(result.transfer) == 96
    assert not same(state(small_victim(seed=0)), state(result.clone))
    assert (result.blocked_at == 96) if block else (result.blocked_at is None)


def test_art_attack_refused_from_the_first_query_returns_the_untrained_clone(
    victim: Classifier,
) -> None:
    box = QuotaBox(BlackBox(victim), quota=0, block=True)
    result = art_attack("copycat", train=FAST).run(
        box, random_pool(), 50, clone_factory_like(victim)
    )
    assert result.stopped == "blocked" and result.queries_used == 0 and len(result.transfer) == 0


def test_art_attack_bad_arguments(victim: Classifier) -> None:
    with pytest.raises(UnknownNameError, match=r"'art:nonsense'.*knockoffnets, copycat"):
        art_attack("art:nonsense")
    with pytest.raises(ValidationError, match="adaptive"):
        art_attack("copycat", policy="adaptive")
    with pytest.raises(ValidationError, match=r"train\.schedule"):
        art_attack("knockoffnets", train=TrainConfig())  # cosine: ART's fit has no schedule
    box = BlackBox(victim, budget=50)
    with pytest.raises(InputValidationError, match="50 rows left"):
        art_attack("copycat").run(box, random_pool(), 100, clone_factory_like(victim))
    wrong = Pool("big", torch.rand(20, 1, 9, 9), torch.zeros(20, dtype=torch.long))
    with pytest.raises(InputValidationError, match="pool 'big'"):
        art_attack("copycat").run(box, wrong, 10, clone_factory_like(victim))
    assert isinstance(art_attack("copycat"), ArtExtraction)


# ----------------------------------------------------------------------------- over HTTP


URL, KEY, MODEL = "http://gateway.test", "sp_test_0123456789abcdef0123456789abcdef", "digits"


def fake_gateway(box: BlackBox, quota: int) -> httpx.MockTransport:
    """The gateway's protocol surface around ``box``; 429 once ``quota`` rows are spent."""
    spec = InputSpec(INPUT_NAME, SHAPE)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=model_metadata(MODEL, ["1"], spec, K, OUTPUT_PROBS))
        req = parse_infer_request(
            request.content,
            request.headers.get(HEADER_LENGTH),
            spec,
            max_rows=256,
            available_outputs=(OUTPUT_PROBS,),
        )
        if box.queries_used + req.x.shape[0] > quota:
            return httpx.Response(429, json=error_body("quota spent"))
        body, headers = encode_infer_response(
            model_name=MODEL,
            model_version="1",
            request_id=req.request_id,
            output_name=OUTPUT_PROBS,
            tensor=box.query(req.x),
            binary=req.binary_output,
        )
        return httpx.Response(200, content=body, headers=headers)

    return httpx.MockTransport(handle)


def test_an_http_black_box_as_an_art_classifier_and_attack_target(victim: Classifier) -> None:
    served = BlackBox(victim, "reverse_sigmoid")
    with HTTPBlackBox(URL, KEY, MODEL, transport=fake_gateway(served, quota=150)) as remote:
        clf = as_art_classifier(remote)
        assert clf.input_shape == SHAPE and clf.nb_classes == K
        x = images(40)
        np.testing.assert_allclose(
            clf.predict(x.numpy(), batch_size=16),
            BlackBox(victim, "reverse_sigmoid").query(x).numpy(),
            atol=1e-6,
        )
        result = art_attack("copycat", train=FAST, query_batch=50).run(
            remote, random_pool(), 200, clone_factory_like(victim)
        )
        assert result.stopped == "budget"  # the gateway's quota (429), not the client's budget
        assert result.queries_used == remote.queries_used - 40 == 100


# ----------------------------------------------------------------------------- CLI


runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def victim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art-cli") / "v.pt"
    result = invoke(
        "train-victim", "--dataset", "digits", "--model", "mlp", "--epochs", "2",
        "--out", str(out), "--quiet", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def attack_args(victim_path: Path, *extra: str) -> list[str]:
    return [
        "attack", "--victim", str(victim_path), "--dataset", "digits", "--pool", "mnist8",
        "--budget", "150", "--epochs", "1", "--threads", "1", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["art:knockoffnets", "art:copycat"])
def test_cli_attack_with_an_art_attack(victim_path: Path, name: str) -> None:
    result = invoke(*attack_args(victim_path, "--attack", name, "--json"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    row = json.loads(lines[0])
    assert row["attack"] == name
    assert row["queries_used"] == row["rows_charged"] == row["budget"] == 150
    assert 0.0 <= row["clone_acc"] <= 1.0
    assert row["clone_training"]["schedule"] == "none"


def test_cli_attack_art_prints_a_table(victim_path: Path) -> None:
    result = invoke(
        *attack_args(victim_path, "--attack", "art:knockoffnets", "--defense", "reverse_sigmoid")
    )
    assert result.exit_code == 0, result.output
    assert "art:knockoffnets vs reverse_sigmoid" in result.stdout
    assert "clone_acc" in result.stdout


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--attack", "art:nonsense"], ["'art:nonsense'", "art:knockoffnets", "art:copycat"]),
        (["--attack", "art:copycat", "--policy", "adaptive"], ["--policy adaptive"]),
    ],
)
def test_cli_attack_art_bad_input(victim_path: Path, extra: list[str], needles: list[str]) -> None:
    result = invoke(*attack_args(victim_path, *extra))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


# ----------------------------------------------------------------------------- benchmark grid


def art_grid(**attacks: Any) -> dict[str, Any]:
    return {
        "name": "art",
        "scenarios": [
            {"name": "digits", "victim_training": {"epochs": 2}, "clone_training": {"epochs": 1}}
        ],
        "attacks": attacks,
        "defenses": {"none": [{}], "reverse_sigmoid": {"beta": [0.7]}},
        "budgets": [200],
        "seeds": [0],
    }


def test_the_benchmark_grid_names_the_art_attacks() -> None:
    from stealproof.bench.config import BenchConfigError, expand, parse_config

    cells = expand(
        parse_config(
            art_grid(
                **{
                    "art:knockoffnets": {"policy": ["random", "adaptive"]},
                    "art:copycat": {"label_only": [False, True], "average": [1, 2]},
                }
            )
        )
    )
    knock = [c for c in cells if c.attack == "art:knockoffnets"]
    copy = [c for c in cells if c.attack == "art:copycat"]
    assert len(knock) == 2 * 2 and len(copy) == 2 * 2 * 2  # × 2 defenses
    assert {c.label_only for c in copy} == {(False,), (True,)}  # one cell per value
    assert {c.attack_label for c in knock} == {
        "art:knockoffnets-random",
        "art:knockoffnets-adaptive",
    }
    assert {c.attack_label for c in copy} == {"art:copycat", "art:copycat avg2"}
    assert knock[0].attack_params == {"policy": "random", "query_batch": 128, "augment": True}
    with pytest.raises(BenchConfigError, match="policy"):  # CopycatCNN samples at random only
        parse_config(art_grid(**{"art:copycat": {"policy": ["adaptive"]}}))
    with pytest.raises(BenchConfigError, match="art:copycat"):
        parse_config(art_grid(**{"art:nonsense": {}}))


def test_a_benchmark_cell_runs_an_art_attack(tmp_path: Path) -> None:
    import yaml

    from stealproof.bench.store import ResultStore

    config = tmp_path / "art.yaml"
    config.write_text(yaml.safe_dump(art_grid(**{"art:copycat": {"query_batch": 64}})))
    out = tmp_path / "run"
    result = invoke("bench", "run", str(config), "--out", str(out), "--threads", "1")
    assert result.exit_code == 0, result.output
    rows = ResultStore(out).rows()
    assert len(rows) == 2
    for r in rows:
        assert r["attack"] == "art:copycat" and r["queries_used"] == 200
        assert 0.0 <= r["clone_acc"] <= 1.0


# ----------------------------------------------------------------------------- helpers


def state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
