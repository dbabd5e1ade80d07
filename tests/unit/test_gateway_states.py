"""Client policy states kept as a checkpoint plus a journal, cached per worker: two workers that
alternate on one client, a tiny checkpoint interval, a one-client cache and a cold start all
hold exactly the state one in-process policy reaches serially; a key revoked or a client blocked
behind a cached authentication is refused when decided; the 0003 migration keeps old states."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select, text

from gateway_fixtures import create_clients, digits_victim, write_config
from serve_db_fixtures import db_kind, db_url, temp_database  # noqa: F401  (fixtures)
from stealproof import defenses
from stealproof.data import load_dataset
from stealproof.detectors import PradaDetector
from stealproof.models import load_checkpoint
from stealproof.oracle import victim_posteriors
from stealproof.policy import DetectionPolicy
from stealproof.serve.app import build_gateway
from stealproof.serve.client_states import policy_key
from stealproof.serve.db import repo
from stealproof.serve.db.engine import make_engine, make_sessionmaker
from stealproof.serve.db.models import ClientModelState, StateJournal
from stealproof.serve.errors import Forbidden, Unauthorized
from stealproof.serve.gateway import PRADA_SERVING_DEFAULTS, Gateway
from stealproof.serve.settings import load_settings

DELTA = 0.95
MAX_FLAGGED = 40
# tests every 5 queries on a few distances: short streams get flagged
PRADA = {"delta": DELTA, "check_every": 5, "min_pooled": 8, "min_class_distances": 3}
POLICY = {
    "detectors": [{"kind": "prada", "params": PRADA}],
    "max_flagged": MAX_FLAGGED,
}


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_victim(tmp_path_factory.mktemp("states"))


def thief_stream(n: int, seed: int = 0) -> torch.Tensor:
    """Small perturbations of 5 digits: PRADA flags them after a while."""
    ds = load_dataset("digits")
    g = torch.Generator().manual_seed(seed)
    base = ds.test.images[torch.randint(0, ds.test.images.shape[0], (5,), generator=g)]
    pick = base[torch.randint(0, 5, (n,), generator=g)]
    return (pick + 0.05 * torch.randn(pick.shape, generator=g)).clamp(0, 1)


def reference(victim: Path) -> tuple[DetectionPolicy, Any]:
    model, _ = load_checkpoint(victim)
    pol = DetectionPolicy(
        [PradaDetector(**{**PRADA_SERVING_DEFAULTS, **PRADA})],  # as the gateway builds it
        defense=defenses.create("reverse_sigmoid", beta=0.7, gamma=0.2),
        max_flagged=MAX_FLAGGED,
    )
    return pol, model.eval()


def same_state(a: Any, b: Any, where: str = "state") -> None:
    """Recursive equality of two client states (tensors exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, float) and a != a:  # NaN
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, (where, a, b)


def gateway(victim: Path, url: str, directory: Path, **top: Any) -> tuple[Gateway, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, victim, url, policy=POLICY, **top)
    return build_gateway(load_settings(config))


@pytest.fixture
def setup(victim: Path, db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    keys = create_clients(db_url, "thief", "other")
    yield {"victim": victim, "url": db_url, "tmp": tmp_path, "keys": keys}


def _serve(gw: Gateway, key: str, x: torch.Tensor) -> Any:
    ref = gw.authenticate(f"Bearer {key}")
    return gw.infer(ref, gw.models[0], x)


def _actions(url: str, name: str) -> list[str]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as s:
            c = repo.get_client(s, name)
            assert c is not None
            entries = list(reversed(repo.recent_log(s, c.id, limit=10_000)))
            return [a for e in entries for a in e.actions]
    finally:
        engine.dispose()


def test_two_workers_alternating_hold_the_serial_state(setup: dict[str, Any]) -> None:
    a, ea = gateway(setup["victim"], setup["url"], setup["tmp"] / "a")
    b, eb = gateway(setup["victim"], setup["url"], setup["tmp"] / "b")
    pol, model = reference(setup["victim"])
    x = thief_stream(60)
    want: list[str] = []
    last = a
    try:
        for i in range(0, 60, 3):  # requests of 1 or 2 rows, alternating between the workers
            rows = x[i : i + (1 if i % 2 else 2)]
            gw = a if (i // 3) % 2 == 0 else b
            _serve(gw, setup["keys"]["thief"], rows)
            y, _ = victim_posteriors(model, rows)
            flags = pol.respond("thief", rows, y).flags.tolist()
            want += ["deceptive" if f else "normal" for f in flags]
            last = gw
        assert _actions(setup["url"], "thief") == want
        assert "deceptive" in want, "the stream was never flagged: the test lost its point"
        cid = a.authenticate(f"Bearer {setup['keys']['thief']}").id
        for gw in (a, b):  # each worker caught up from the journal, never reloaded the state
            assert gw.states.loads == 1 and gw.states.catch_ups >= 9
        # the worker that decided last holds the serial state
        same_state(last.models[0].policy.client_state(policy_key(cid)), pol.client_state("thief"))
    finally:
        ea.dispose()
        eb.dispose()


def test_checkpoints_bound_the_journal_and_a_cold_worker_continues(setup: dict[str, Any]) -> None:
    url = setup["url"]
    a, ea = gateway(setup["victim"], url, setup["tmp"] / "a", state={"checkpoint_rows": 4})
    pol, model = reference(setup["victim"])
    x = thief_stream(40, seed=1)
    try:
        for i in range(30):
            _serve(a, setup["keys"]["thief"], x[i : i + 1])
            pol.respond("thief", x[i : i + 1], victim_posteriors(model, x[i : i + 1])[0])
        with make_sessionmaker(ea)() as s:
            head = s.scalars(select(ClientModelState)).one()
            journal = s.scalar(select(func.count()).select_from(StateJournal))
        assert head.version == 30 and head.checkpoint_version == 28 and journal == 2
        assert head.journal_rows == 2
    finally:
        ea.dispose()
    # a new worker (cold cache) reads checkpoint + journal and decides as the serial policy
    b, eb = gateway(setup["victim"], url, setup["tmp"] / "b", state={"checkpoint_rows": 4})
    try:
        for i in range(30, 40):
            _serve(b, setup["keys"]["thief"], x[i : i + 1])
            pol.respond("thief", x[i : i + 1], victim_posteriors(model, x[i : i + 1])[0])
        cid = b.authenticate(f"Bearer {setup['keys']['thief']}").id
        assert b.states.loads == 1
        same_state(b.models[0].policy.client_state(policy_key(cid)), pol.client_state("thief"))
    finally:
        eb.dispose()


def test_a_one_client_cache_evicts_and_reloads(setup: dict[str, Any]) -> None:
    gw, engine = gateway(
        setup["victim"], setup["url"], setup["tmp"] / "a", state={"cache_clients": 1}
    )
    pol, model = reference(setup["victim"])
    x = thief_stream(20, seed=2)
    try:
        for i in range(20):
            name = "thief" if i % 2 else "other"
            _serve(gw, setup["keys"][name], x[i : i + 1])
            pol.respond(name, x[i : i + 1], victim_posteriors(model, x[i : i + 1])[0])
        assert len(gw.states) == 1 and gw.states.loads == 20
        cid = gw.authenticate(f"Bearer {setup['keys']['other']}").id
        assert policy_key(cid) not in gw.models[0].policy.clients()  # evicted
        cid = gw.authenticate(f"Bearer {setup['keys']['thief']}").id
        same_state(gw.models[0].policy.client_state(policy_key(cid)), pol.client_state("thief"))
    finally:
        engine.dispose()


def test_cached_authentication_is_checked_again_when_decided(setup: dict[str, Any]) -> None:
    gw, engine = gateway(setup["victim"], setup["url"], setup["tmp"] / "a")
    x = thief_stream(3)
    try:
        key = setup["keys"]["thief"]
        ref = gw.authenticate(f"Bearer {key}")
        assert gw.cached_client(f"Bearer {key}") == ref
        # another process revokes the key: the cached authentication still names the client,
        # the decision refuses it
        with make_sessionmaker(engine).begin() as s:
            assert repo.revoke_key(s, ref.key_id)
        with pytest.raises(Unauthorized, match="revoked"):
            gw.infer(gw.cached_client(f"Bearer {key}") or ref, gw.models[0], x[:1])
        other = gw.authenticate(f"Bearer {setup['keys']['other']}")
        with make_sessionmaker(engine).begin() as s:
            c = repo.get_client(s, "other")
            assert c is not None
            repo.set_admin_block(s, c, True, "test")
        with pytest.raises(Forbidden):
            gw.infer(other, gw.models[0], x[:1])
        # nothing was charged or logged for either
        with make_sessionmaker(engine)() as s:
            assert repo.count_log(s) == 0
    finally:
        engine.dispose()


def test_migration_0003_keeps_states_written_before(tmp_path: Path) -> None:
    from alembic import command

    from stealproof.serve.db.migrate import alembic_config, upgrade

    with temp_database("sqlite", tmp_path, migrate=False) as url:
        engine = make_engine(url)
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
            conn.execute(
                text("INSERT INTO clients (id, name, created_at) VALUES (1, 'c', '2026-01-01')")
            )
            conn.execute(
                text(
                    "INSERT INTO client_model_state (client_id, model, state, policy_blocked, "
                    "version, updated_at) VALUES (1, 'digits@1', :b, 0, 7, '2026-01-01')"
                ),
                {"b": b"old"},
            )
        upgrade(url)
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT version, checkpoint_version, journal_rows, state "
                    "FROM client_model_state"
                )
            ).one()
        engine.dispose()
    assert tuple(row) == (7, 7, 0, b"old")


def test_served_prada_is_capped_unless_the_config_lifts_it(victim: Path, tmp_path: Path) -> None:
    with temp_database("sqlite", tmp_path) as url:
        gw, engine = gateway(victim, url, tmp_path / "a")
        det = gw.models[0].policy.detectors["prada"]
        engine.dispose()
        assert isinstance(det, PradaDetector)
        assert det.config.max_growing == PRADA_SERVING_DEFAULTS["max_growing"]
        assert det.config.max_distances == PRADA_SERVING_DEFAULTS["max_distances"]
        lifted = {**POLICY, "detectors": [{"kind": "prada", "params": {"max_growing": None}}]}
        (tmp_path / "b").mkdir()
        config = write_config(tmp_path / "b", victim, url, policy=lifted)
        gw2, engine2 = build_gateway(load_settings(config))
        engine2.dispose()
        det2 = gw2.models[0].policy.detectors["prada"]
        assert isinstance(det2, PradaDetector) and det2.config.max_growing is None
