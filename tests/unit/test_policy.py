"""Tests for DetectionPolicy (detectors → normal / deceptive answers → termination), the
``deceptive`` defense, and the policy inside BlackBox (blocking before charging, clients kept
apart)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from stealproof import defenses
from stealproof.defenses.deceptive import Deceptive
from stealproof.defenses.identity import NoDefense
from stealproof.detectors import Detection, Detector, PradaDetector, dumps_state, loads_state
from stealproof.errors import BudgetExhaustedError, ClientBlockedError, InputValidationError
from stealproof.models import Classifier, create_model
from stealproof.oracle import BlackBox, victim_posteriors
from stealproof.policy import DetectionPolicy, PolicyConfig

K = 10


class BrightDetector(Detector):
    """Stateless: flags rows whose mean pixel is above ``level`` (score = the mean pixel)."""

    name: ClassVar[str] = "bright"

    def __init__(self, level: float = 0.5) -> None:
        self.level = level
        self.seen: dict[str, int] = {}

    def observe(self, client_id: str, x: Tensor, y: Tensor) -> Detection:
        self.seen[client_id] = self.seen.get(client_id, 0) + int(x.shape[0])
        m = x.reshape(x.shape[0], -1).mean(dim=1)
        return Detection(scores=m, flags=m > self.level)

    def client_state(self, client_id: str) -> dict[str, Any]:
        return {}

    def load_client_state(self, client_id: str, state: dict[str, Any]) -> None:
        return None


def make_victim(seed: int = 0) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("mlp", image_size=(8, 8), num_classes=K, hidden=(32,))


@pytest.fixture(scope="module")
def victim() -> Classifier:
    return make_victim()


def dark(n: int, seed: int = 0) -> Tensor:
    """Images with mean pixel ≈ 0.2 (never flagged by BrightDetector)."""
    return 0.4 * torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def bright(n: int, seed: int = 1) -> Tensor:
    """Images with mean pixel ≈ 0.8 (always flagged by BrightDetector)."""
    return 1.0 - dark(n, seed)


def mixed(pattern: str, seed: int = 0) -> Tensor:
    """One image per character: ``b`` bright (flagged), ``d`` dark."""
    d, b = dark(len(pattern), seed), bright(len(pattern), seed + 100)
    return torch.stack([b[i] if ch == "b" else d[i] for i, ch in enumerate(pattern)])


def answer(policy: DetectionPolicy, cid: str, x: Tensor, victim: Classifier) -> Any:
    y, logits = victim_posteriors(victim, x)
    return policy.respond(cid, x, y, logits)


# ----------------------------------------------------------------------------- config


def test_policy_config_defaults_and_validation() -> None:
    cfg = PolicyConfig()
    assert cfg.max_flagged == 1000 and cfg.window is None and cfg.ratio is None
    with pytest.raises(InputValidationError, match="window and ratio: set both or neither"):
        DetectionPolicy([BrightDetector()], window=10)
    with pytest.raises(InputValidationError, match="policy: max_flagged"):
        DetectionPolicy([BrightDetector()], max_flagged=0)
    with pytest.raises(InputValidationError, match="policy: ratio"):
        DetectionPolicy([BrightDetector()], window=10, ratio=1.5)
    with pytest.raises(InputValidationError, match=r"policy: unknown parameter .windw. \(valid"):
        DetectionPolicy([BrightDetector()], windw=10)
    with pytest.raises(InputValidationError, match="two detectors named 'bright'"):
        DetectionPolicy([BrightDetector(), BrightDetector()])
    with pytest.raises(InputValidationError, match="defense: expected a Defense"):
        DetectionPolicy([BrightDetector()], defense=3)  # type: ignore[arg-type]
    # a registered name is built with its defaults
    assert isinstance(DetectionPolicy([BrightDetector()], defense="none").defense, NoDefense)
    # a mapping gives two detectors of one kind their own keys
    p = DetectionPolicy({"a": BrightDetector(0.3), "b": BrightDetector(0.6)}, config=cfg)
    assert list(p.detectors) == ["a", "b"]


# ----------------------------------------------------------------------------- answers


def test_unflagged_rows_get_the_normal_defense_and_flagged_rows_deceptive(
    victim: Classifier,
) -> None:
    normal = defenses.create("reverse_sigmoid", beta=0.7, gamma=0.2)
    policy = DetectionPolicy([BrightDetector()], defense=normal, max_flagged=None)
    x = mixed("dbdbbddbdd")
    y, logits = victim_posteriors(victim, x)
    r = policy.respond("c", x, y, logits)
    flagged = torch.tensor([ch == "b" for ch in "dbdbbddbdd"])
    assert torch.equal(r.flags, flagged)
    assert torch.equal(r.detector_flags["bright"], flagged)
    assert r.scores["bright"].shape == (10,)
    # unflagged rows: exactly what the normal defense gives
    assert torch.equal(r.released[~flagged], normal(x[~flagged], y[~flagged], logits[~flagged]))
    # flagged rows: the deceptive answer — top-1 kept, the rest changed
    dec = r.released[flagged]
    assert torch.equal(dec, Deceptive()(x[flagged], y[flagged]))
    assert torch.equal(dec.argmax(dim=1), y[flagged].argmax(dim=1))
    assert bool(((dec - y[flagged]).abs().sum(dim=1) > 0.05).all())
    assert torch.allclose(r.released.sum(dim=1), torch.ones(10), atol=1e-5)
    assert not r.blocked and r.reason is None


def test_no_flag_means_the_plain_defense_and_default_is_none(victim: Classifier) -> None:
    policy = DetectionPolicy([BrightDetector()])
    x = dark(6)
    y, logits = victim_posteriors(victim, x)
    r = policy.respond("c", x, y, logits)
    assert not bool(r.flags.any())
    assert torch.equal(r.released, y)


def test_any_detector_flags_a_row(victim: Classifier) -> None:
    policy = DetectionPolicy({"low": BrightDetector(0.45), "high": BrightDetector(0.7)})
    x = torch.stack([torch.full((1, 8, 8), v) for v in (0.3, 0.5, 0.8)])
    r = answer(policy, "c", x, victim)
    assert r.detector_flags["low"].tolist() == [False, True, True]
    assert r.detector_flags["high"].tolist() == [False, False, True]
    assert r.flags.tolist() == [False, True, True]


def test_bad_input_is_rejected_before_detectors_see_it(victim: Classifier) -> None:
    det = BrightDetector()
    policy = DetectionPolicy([det])
    x = dark(4)
    y, logits = victim_posteriors(victim, x)
    with pytest.raises(InputValidationError, match="x: expected 4 rows"):
        policy.respond("c", x[:3], y)
    with pytest.raises(InputValidationError, match="logits: expected shape"):
        policy.respond("c", x, y, logits[:, :3])
    assert det.seen == {} and policy.clients() == []


# ----------------------------------------------------------------------------- deceptive


def test_deceptive_defense_values() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.softmax(3 * torch.randn(2000, K, generator=g, dtype=torch.float64), dim=1)
    d = defenses.create("deceptive", top_min=0.6, top_max=0.8, seed=3)
    out = d(None, y)
    top = out.gather(1, y.argmax(dim=1, keepdim=True))[:, 0]
    assert bool((top >= 0.6).all()) and bool((top <= 0.8).all())
    assert float(top.std()) > 0.04  # spread over the range, not a constant
    assert torch.equal(out.argmax(dim=1), y.argmax(dim=1))
    # the order of the other classes carries nothing about y's: the runner-up matches by chance
    second = lambda t: t.scatter(1, t.argmax(dim=1, keepdim=True), -1.0).argmax(dim=1)  # noqa: E731
    agree = float((second(out) == second(y)).double().mean())
    assert abs(agree - 1 / (K - 1)) < 0.05, agree
    # different y, same top class: no information in the non-top values about which y it was
    flat = torch.full((1, K), 0.5 / (K - 1), dtype=torch.float64).scatter(
        1, torch.tensor([[0]]), 0.5
    )
    peaked = torch.tensor([[0.5, 0.45] + [0.05 / (K - 2)] * (K - 2)], dtype=torch.float64)
    assert d(None, flat).argmax() == d(None, peaked).argmax() == 0
    assert defenses.get_defense_class("deceptive").in_demo is False


def test_deceptive_bad_params_name_the_field() -> None:
    with pytest.raises(InputValidationError, match=r"deceptive: top_max: .*≥ top_min"):
        defenses.create("deceptive", top_min=0.8, top_max=0.7)
    with pytest.raises(InputValidationError, match=r"deceptive: top_min: .*greater than 0.5"):
        defenses.create("deceptive", top_min=0.5)


# ----------------------------------------------------------------------------- termination


def test_blocked_by_count_after_the_crossing_batch(victim: Classifier) -> None:
    policy = DetectionPolicy([BrightDetector()], max_flagged=5)
    r1 = answer(policy, "c", mixed("bbbdd"), victim)
    assert not r1.blocked and policy.status("c").flagged_rows == 3
    # the batch that crosses 5 flagged rows is answered in full ...
    r2 = answer(policy, "c", mixed("dbbbd", seed=1), victim)
    assert r2.released.shape == (5, K)
    assert r2.blocked and "max_flagged=5" in (r2.reason or "")
    status = policy.status("c")
    assert status.blocked and status.blocked_at == 5 + 3  # row 8 was the 5th flagged row
    assert status.rows == 10 and status.flagged_rows == 6
    # ... and the next call is refused before any detector sees it
    det = policy.detectors["bright"]
    assert isinstance(det, BrightDetector)
    seen = det.seen["c"]
    with pytest.raises(ClientBlockedError, match=r"client 'c' is blocked: .*max_flagged") as info:
        answer(policy, "c", dark(2), victim)
    assert info.value.client_id == "c"
    assert det.seen["c"] == seen and policy.status("c").rows == 10


def test_blocked_by_ratio_over_a_full_window(victim: Classifier) -> None:
    policy = DetectionPolicy([BrightDetector()], max_flagged=None, window=10, ratio=0.5)
    # a burst of flagged rows before the window is full does not block
    r = answer(policy, "c", mixed("bbbbb"), victim)
    assert not r.blocked
    r = answer(policy, "c", mixed("ddddd"), victim)  # 5 of 10 → ratio 0.5 at row 10
    assert r.blocked and "5 of the last 10 rows flagged" in (r.reason or "")
    assert policy.status("c").blocked_at == 10
    with pytest.raises(ClientBlockedError):
        answer(policy, "c", dark(1), victim)


def test_ratio_below_threshold_never_blocks(victim: Classifier) -> None:
    policy = DetectionPolicy([BrightDetector()], max_flagged=None, window=10, ratio=0.5)
    for i in range(6):
        r = answer(policy, "c", mixed("bddbdddddb", seed=i), victim)  # ≤ 4 of any 10
        assert not r.blocked
    assert policy.status("c").flagged_rows == 18


@pytest.mark.parametrize("size", [1, 3, 7, 40])
def test_where_a_client_is_blocked_does_not_depend_on_batching(
    victim: Classifier, size: int
) -> None:
    pattern = "dddbdbbddbbbdbdbbbbdddbbbbbbddbbbdbdbbbb"
    x = mixed(pattern, seed=4)
    for cfg in ({"max_flagged": 12}, {"max_flagged": None, "window": 8, "ratio": 0.75}):
        policy = DetectionPolicy([BrightDetector()], **cfg)
        answered = 0
        for i in range(0, len(pattern), size):
            try:
                answer(policy, "c", x[i : i + size], victim)
            except ClientBlockedError:
                break
            answered += min(size, len(pattern) - i)
        ref = DetectionPolicy([BrightDetector()], **cfg)
        for i in range(len(pattern)):
            if answer(ref, "c", x[i : i + 1], victim).blocked:
                break
        at = ref.status("c").blocked_at
        assert at is not None
        assert policy.status("c").blocked_at == at
        # the crossing batch was answered, nothing after it
        assert answered == min(len(pattern), -(-at // size) * size)


def test_unblock_and_reset(victim: Classifier) -> None:
    policy = DetectionPolicy([BrightDetector()], max_flagged=2)
    answer(policy, "c", bright(3), victim)
    assert policy.is_blocked("c")
    policy.unblock("c")
    assert not policy.is_blocked("c")
    r = answer(policy, "c", mixed("bd"), victim)  # the count starts afresh: 1 of 2
    assert not r.blocked
    assert policy.status("c").flagged_rows == 4  # lifetime count kept
    policy.block("c", "manual")
    with pytest.raises(ClientBlockedError, match="manual"):
        answer(policy, "c", dark(1), victim)
    assert policy.clients() == ["c"]
    policy.reset_client("c")
    assert policy.clients() == [] and policy.status("c").rows == 0
    answer(policy, "c", dark(1), victim)


# ----------------------------------------------------------------------------- state


def jbda_like(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(40, 1, 8, 8, generator=g)
    while pts.shape[0] < n:
        pts = torch.cat(
            [pts, (pts + 0.1 * torch.sign(torch.randn(pts.shape, generator=g))).clamp(0, 1)]
        )
    return pts[:n]


def test_state_round_trip_gives_identical_decisions(victim: Classifier) -> None:
    def make() -> DetectionPolicy:
        return DetectionPolicy(
            [PradaDetector(), BrightDetector(0.9)], max_flagged=150, window=50, ratio=0.9
        )

    x = jbda_like(400)
    a = make()
    for i in range(0, 125, 25):
        answer(a, "thief", x[i : i + 25], victim)
    state = loads_state(dumps_state(a.client_state("thief")))
    b = make()
    b.load_client_state("thief", state)
    assert b.status("thief") == a.status("thief")
    outcomes = []
    for i in range(125, 400, 25):
        ra = rb = None
        try:
            ra = answer(a, "thief", x[i : i + 25], victim)
        except ClientBlockedError as e:
            ra = e.reason
        try:
            rb = answer(b, "thief", x[i : i + 25], victim)
        except ClientBlockedError as e:
            rb = e.reason
        if isinstance(ra, str):
            assert ra == rb
            outcomes.append("refused")
            continue
        assert not isinstance(rb, str) and rb is not None
        assert torch.equal(ra.flags, rb.flags)
        assert torch.equal(ra.released, rb.released)
        assert ra.blocked == rb.blocked and ra.reason == rb.reason
        outcomes.append("blocked" if ra.blocked else "answered")
    # PRADA flags the stream after the restore and the client ends up blocked
    assert outcomes[0] == "answered" and "blocked" in outcomes and outcomes[-1] == "refused"
    assert a.status("thief") == b.status("thief")
    # an empty state forgets the client everywhere
    b.load_client_state("thief", {})
    assert b.clients() == []
    with pytest.raises(InputValidationError, match="not a policy client state"):
        b.load_client_state("thief", {"version": 1, "policy": {}})


# ----------------------------------------------------------------------------- black box


def test_blackbox_with_policy_blocks_before_charging(victim: Classifier) -> None:
    policy = DetectionPolicy([BrightDetector()], max_flagged=4)
    box = BlackBox(victim, policy=policy, budget=100, client_id="thief")
    out = box.query(mixed("bbddd"))
    assert out.shape == (5, K)
    assert box.flagged_rows == 2 and box.queries_used == 5
    box.query(mixed("bbd", seed=3))  # crosses 4 flagged rows: answered
    assert box.queries_used == 8 and box.flagged_rows == 4
    status = box.policy_status()
    assert status is not None and status.blocked
    before = box.meter()
    with pytest.raises(ClientBlockedError):
        box.query(dark(2))
    assert box.queries_used == 8 and box.budget_left == 92
    assert box.meter() == before
    # another client of the same policy is unaffected
    other = BlackBox(victim, policy=policy, client_id="user")
    other.query(bright(2))
    assert other.queries_used == 2 and other.flagged_rows == 2
    assert not policy.is_blocked("user") and policy.is_blocked("thief")
    # a second box of the blocked client is refused too
    with pytest.raises(ClientBlockedError):
        BlackBox(victim, policy=policy, client_id="thief").query(dark(1))


def test_blackbox_policy_answers_match_the_policy_and_output_modes(victim: Classifier) -> None:
    x = mixed("bdbdd")
    normal = defenses.create("rounding", decimals=1)
    box = BlackBox(victim, policy=DetectionPolicy([BrightDetector()], defense=normal))
    ref = DetectionPolicy([BrightDetector()], defense=normal)
    expected = answer(ref, "default", x, victim).released
    assert torch.allclose(box.query(x), expected, atol=0, rtol=0)
    assert box.meter().mean_l1 > 0
    labels = BlackBox(victim, policy=DetectionPolicy([BrightDetector()]), output="label")
    out = labels.query(x)
    y, _ = victim_posteriors(victim, x)
    assert torch.equal(out.argmax(dim=1), y.argmax(dim=1))
    assert torch.equal(out.sum(dim=1), torch.ones(5))


def test_blackbox_without_policy_is_unchanged(victim: Classifier) -> None:
    box = BlackBox(victim, budget=3)
    assert box.policy is None and box.flagged_rows == 0 and box.policy_status() is None
    box.query(dark(3))
    with pytest.raises(BudgetExhaustedError):
        box.query(dark(1))
    assert "defense=None" in repr(box)


def test_blackbox_policy_and_defense_are_exclusive(victim: Classifier) -> None:
    with pytest.raises(InputValidationError, match="policy: a policy carries its own defense"):
        BlackBox(victim, defenses.create("top1"), policy=DetectionPolicy([BrightDetector()]))
    with pytest.raises(InputValidationError, match="policy: expected a DetectionPolicy"):
        BlackBox(victim, policy=BrightDetector())  # type: ignore[arg-type]
    box = BlackBox(victim, policy=DetectionPolicy([BrightDetector()]))
    assert "policy=DetectionPolicy" in repr(box)


# ----------------------------------------------------------------------------- replay


def assert_same_policy_state(a: Any, b: Any, where: str = "state") -> None:
    """Two client states are equal field by field (tensors with torch.equal, NaN equal)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_policy_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where
    else:
        assert type(a) is type(b) and a == b, where


def make_replay_policy(**cfg: Any) -> DetectionPolicy:
    return DetectionPolicy(
        {"prada": PradaDetector(max_growing=50, max_distances=60), "bright": BrightDetector(0.7)},
        **cfg,
    )


def answered_batches(
    policy: DetectionPolicy, x: Tensor, sizes: list[int], victim: Classifier
) -> list[tuple[Tensor, Tensor]]:
    """Answer ``x`` in batches of ``sizes`` (cycled) until the client is refused; return the
    answered batches as (images, clean posteriors), as a gateway's journal holds them."""
    done, i, k = [], 0, 0
    while i < x.shape[0]:
        xb = x[i : i + sizes[k % len(sizes)]]
        y, logits = victim_posteriors(victim, xb)
        try:
            policy.respond("thief", xb, y, logits)
        except ClientBlockedError:
            break
        done.append((xb, y))
        i, k = i + xb.shape[0], k + 1
    return done


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        ({"max_flagged": None}, None),  # never blocked
        ({"max_flagged": 40, "window": 50, "ratio": 1.0}, "max_flagged=40"),
        ({"max_flagged": None, "window": 30, "ratio": 0.8}, "of the last 30 rows"),
    ],
)
def test_replay_rebuilds_the_state_respond_left(
    victim: Classifier, cfg: dict, reason: str | None
) -> None:
    x = jbda_like(360, seed=3)
    x[:10] = 1.0 - x[:10] * 0.2  # bright rows: the second detector flags them
    live = make_replay_policy(**cfg)
    journal = answered_batches(live, x, [17, 40, 3, 1, 29], victim)
    expected = live.client_state("thief")
    blocked_at = live.status("thief").blocked_at
    if reason is None:
        assert blocked_at is None and sum(b.shape[0] for b, _ in journal) == 360
    else:
        assert reason in (live.status("thief").reason or "")
        assert blocked_at is not None and 40 < blocked_at < 360  # blocked part-way
        assert sum(b.shape[0] for b, _ in journal) < 360  # later requests were refused
    # (a) the same batches, (b) one concatenated batch, (c) from a checkpoint part-way
    same = make_replay_policy(**cfg)
    for xb, y in journal:
        same.replay("thief", xb, y)
    assert_same_policy_state(same.client_state("thief"), expected)
    joined = make_replay_policy(**cfg)
    joined.replay("thief", torch.cat([b for b, _ in journal]), torch.cat([y for _, y in journal]))
    assert_same_policy_state(joined.client_state("thief"), expected)
    checkpoint = make_replay_policy(**cfg)
    for xb, y in journal[:3]:
        checkpoint.respond("thief", xb, y)
    resumed = make_replay_policy(**cfg)
    resumed.load_client_state("thief", loads_state(dumps_state(checkpoint.client_state("thief"))))
    rest = journal[3:]
    resumed.replay("thief", torch.cat([b for b, _ in rest]), torch.cat([y for _, y in rest]))
    assert_same_policy_state(resumed.client_state("thief"), expected)
    for p in (same, joined, resumed):
        assert p.status("thief") == live.status("thief")
    # the PRADA part is not trivial: it flagged the stream
    assert expected["detectors"]["prada"]["flagged"]


def test_replay_runs_no_defense_and_refuses_a_blocked_client(
    victim: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any) -> Tensor:
        raise AssertionError("replay must not answer")

    policy = DetectionPolicy([BrightDetector()], max_flagged=3)
    monkeypatch.setattr(policy.defense, "perturb", boom)
    monkeypatch.setattr(policy.deceptive, "perturb", boom)
    x = mixed("dbdbbd")
    y, _ = victim_posteriors(victim, x)
    policy.replay("c", x, y)
    st = policy.status("c")
    assert st.rows == 6 and st.flagged_rows == 3 and st.blocked and st.blocked_at == 5
    det = policy.detectors["bright"]
    assert isinstance(det, BrightDetector) and det.seen == {"c": 6}
    with pytest.raises(ClientBlockedError):
        policy.replay("c", x, y)
    assert det.seen == {"c": 6} and policy.status("c").rows == 6  # nothing observed
    with pytest.raises(InputValidationError, match="x: expected 6 rows"):
        policy.replay("d", x[:5], y)
    assert "d" not in policy.clients()
