"""The per-request flow of the gateway, with no HTTP in it.

For one prediction request of an authenticated client (DESIGN.md "Gateway"):

1. refuse before the model runs — admin block, policy block, quota — from the standing read
   with the API key (:meth:`Gateway.authenticate`; a key checked moments ago is reused); a
   refused request is never charged or logged;
2. run the victim's forward pass and the normal defense outside any lock, together with the
   other requests waiting in the worker (:mod:`stealproof.serve.pipeline`);
3. in one transaction for all those requests (:meth:`Gateway.decide_batch`): lock their
   clients (``SELECT … FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), check key
   revocation and the refusals again, bring each client's policy state up to date (a worker
   cache, checked against the database's version: :mod:`stealproof.serve.client_states`), run
   each client's policy in order (detectors, normal or deceptive answer, termination), write
   one journal row, the counters and one query-log row per request, and commit;
4. only then return the answers, so every answer a client received has its log row.

One client's requests are therefore decided in order across all workers, and a request's
database work does not grow with its client's history: the state is appended to, not
rewritten (a checkpoint every ``state.checkpoint_rows`` rows).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import torch
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from torch import Tensor, nn

from stealproof.detectors.base import Detector, dumps_state
from stealproof.errors import ClientBlockedError, ConfigError, StealproofError
from stealproof.metrics import l1_distance
from stealproof.oracle import apply_output_mode, input_dtype, victim_posteriors
from stealproof.policy import DetectionPolicy, PolicyConfig
from stealproof.serve.client_states import ClientStates, encode_rows, policy_key, restore
from stealproof.serve.db import ledger, repo
from stealproof.serve.db.ledger import Head
from stealproof.serve.db.models import Client, ClientModelState
from stealproof.serve.errors import (
    Forbidden,
    GatewayError,
    NotFound,
    QuotaExceeded,
    Unauthorized,
)
from stealproof.serve.protocol import InputSpec
from stealproof.serve.served import ServedModel as ServedModel
from stealproof.serve.settings import ModelSettings, ServeSettings

log = logging.getLogger(__name__)

#: PRADA parameters the gateway sets unless a config does (``null`` lifts a cap): what one
#: client can make a worker hold is bounded — ``max_growing`` stored queries (D floats each) and
#: ``max_distances`` distances per class — and so is the cost of each of its queries.
PRADA_SERVING_DEFAULTS: dict[str, Any] = {"max_growing": 2048, "max_distances": 5000}

#: Seconds a delivered mark may wait to be written with a later decision (or when idle).
DELIVERED_DELAY = 0.1

#: Cached authentications per worker at most (the cache is emptied when full).
AUTH_CACHE_SIZE = 10_000

#: What a client is told when it is blocked, whatever the reason (it must not learn it was
#: detected, nor by which detector).
BLOCKED_MESSAGE = "this client is blocked; contact the service's operator"


@dataclass(frozen=True)
class ClientRef:
    """An authenticated client (what the API key resolved to), with its standing as read with
    the key: the refusals before the model runs use it; the decision re-checks under the lock."""

    id: int
    name: str
    blocked: bool = False
    quota_rows: int | None = None
    rows_used: int = 0
    key_id: str = ""


@dataclass
class Answer:
    """What a served request releases: ``tensor`` is posteriors [B, K] or labels [B]."""

    tensor: Tensor
    rows: int
    log_id: int
    blocked_now: bool = False


@dataclass
class Decision:
    """A request whose model work is done, waiting for its client's policy decision."""

    client: ClientRef
    served: ServedModel
    x: Tensor
    clean: Tensor
    logits: Tensor
    normal: Tensor
    t_forward: float = 0.0


def row_hashes(x: Tensor) -> list[str]:
    """SHA-256 of each input row as float32 bytes (what the query log stores per row)."""
    flat = x.detach().to(torch.float32).contiguous().reshape(x.shape[0], -1).cpu().numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


def _detectors(
    ms: ModelSettings, settings: ServeSettings, victim: nn.Module
) -> dict[str, Detector]:
    from stealproof.detectors import GuardianDetector, PradaDetector

    out: dict[str, Detector] = {}
    for i, d in enumerate(ms.policy.detectors):
        key = d.kind if d.kind not in out else f"{d.kind}{i}"
        if d.kind == "prada":
            if d.bundle is not None:
                raise ConfigError(f"policy.detectors[{i}]: prada takes no bundle")
            out[key] = PradaDetector(**{**PRADA_SERVING_DEFAULTS, **d.params})
        else:
            if d.bundle is None:
                raise ConfigError(
                    f"policy.detectors[{i}]: guardian needs `bundle:` (the file "
                    "`stealproof guardian train` wrote)"
                )
            extra = sorted(set(d.params) - {"batch_size"})
            if extra:
                raise ConfigError(
                    f"policy.detectors[{i}].params: unknown parameter {extra[0]!r} for guardian "
                    "(valid names: batch_size; its threshold is calibrated in the bundle)"
                )
            det = GuardianDetector.load(settings.path(d.bundle), victim=victim)
            out[key] = GuardianDetector(det.bundle, batch_size=int(d.params.get("batch_size", 256)))
    return out


def load_model(ms: ModelSettings, settings: ServeSettings, index: int = 0) -> ServedModel:
    """Load a configured model: checkpoint, defense (from its models directory) and policy.

    Every problem is a :class:`ConfigError` naming the model (``models[i] (name): ...``).
    """
    from pydantic import ValidationError

    try:
        return _load_model(ms, settings)
    except ValidationError as e:  # the policy's own checks (window and ratio together)
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        where = f"policy.{loc}" if loc else "policy"
        raise ConfigError(f"models[{index}] ({ms.name}): {where}: {msg}") from None
    except StealproofError as e:
        raise ConfigError(f"models[{index}] ({ms.name}): {e}") from None


def _load_model(ms: ModelSettings, settings: ServeSettings) -> ServedModel:
    from stealproof import defenses
    from stealproof.defense_models import build_defense
    from stealproof.models import load_checkpoint

    victim, _meta = load_checkpoint(settings.path(ms.checkpoint))
    victim.eval()
    shape = getattr(victim, "input_shape", None)
    k = getattr(victim, "num_classes", None)
    if shape is None or k is None or len(tuple(shape)) != 3:
        raise ConfigError(f"checkpoint {ms.checkpoint} is not a stealproof classifier")
    cls = defenses.get_defense_class(ms.defense)
    params = dict(ms.params)
    if "seed" in type(cls.make_config()).model_fields and "seed" not in params:
        params["seed"] = ms.seed
    try:
        if ms.models_dir is not None:
            normal = build_defense(ms.defense, params, victim, None, settings.path(ms.models_dir))
        else:
            normal = defenses.create(ms.defense, **params)
    except StealproofError as e:
        raise ConfigError(
            f"{e}"
            + (
                f" (build its models with `stealproof prepare-defense --victim {ms.checkpoint} "
                f"--defense {ms.defense} --out DIR` and set models_dir: DIR)"
                if ms.models_dir is None and "needs" in str(e)
                else ""
            )
        ) from None
    pol = ms.policy
    if any(d.kind == "prada" for d in pol.detectors):
        import scipy.stats  # noqa: F401  # PRADA's first test would import it (~1 s) mid-request
    policy = DetectionPolicy(
        _detectors(ms, settings, victim),
        defense=normal,
        deceptive=pol.deceptive,
        config=PolicyConfig(max_flagged=pol.max_flagged, window=pol.window, ratio=pol.ratio),
    )
    c, h, w = (int(v) for v in tuple(shape))
    return ServedModel(
        name=ms.name,
        version=ms.version,
        victim=victim,
        policy=policy,
        spec=InputSpec(name="input", shape=(c, h, w)),
        num_classes=int(k),
        output=ms.output,
        top_k=ms.top_k,
    )


class GatewayObserver(Protocol):
    """What the gateway reports per served request (``stealproof.serve.metrics`` implements it).

    Times are seconds; ``action`` is ``normal`` or ``deceptive``. Refused requests are counted
    by the HTTP layer, which sees every refusal (authentication, validation, block, quota).
    """

    def observe_forward(self, model: str, version: str, seconds: float) -> None: ...

    def observe_policy(self, model: str, version: str, seconds: float) -> None: ...

    def observe_database(self, model: str, version: str, seconds: float) -> None: ...

    def count_rows(self, model: str, version: str, action: str, rows: int) -> None: ...

    def count_detector_flags(self, model: str, version: str, detector: str, rows: int) -> None: ...


@dataclass
class Gateway:
    """Models, the database and the per-request flow (see the module doc)."""

    settings: ServeSettings
    models: list[ServedModel]
    sessions: sessionmaker[Session]
    readers: sessionmaker[Session] | None = None
    is_postgres: bool = False
    observer: GatewayObserver | None = None
    states: ClientStates = field(init=False)
    _decide_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _delivered: deque[int] = field(init=False, default_factory=deque)
    _auth_cache: dict[str, tuple[float, ClientRef]] = field(init=False, default_factory=dict)
    _marks_written: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.states = ClientStates(self.settings.state.cache_clients)

    @property
    def checkpoint_rows(self) -> int:
        """Journal rows of a client after which its whole state is written again."""
        return self.settings.state.checkpoint_rows

    def _bind(self, *, write: bool) -> Engine:
        """The engine behind the write (or read) sessions, for the request path's statements."""
        maker = self.sessions if write or self.readers is None else self.readers
        bind: Engine = maker.kw["bind"]
        return bind

    def read_session(self) -> Session:
        """A session for reads (on SQLite it neither waits for nor blocks a writer)."""
        return (self.readers or self.sessions)()

    # ------------------------------------------------------------------ lookups

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The served model ``name`` (its first configured version when ``version`` is None)."""
        matches = [m for m in self.models if m.name == name]
        if not matches:
            raise NotFound(f"unknown model {name!r} (served: {', '.join(self.model_names())})")
        if version is None:
            return matches[0]
        for m in matches:
            if m.version == version:
                return m
        versions = ", ".join(m.version for m in matches)
        raise NotFound(f"model {name!r} has no version {version!r} (versions: {versions})")

    def model_names(self) -> list[str]:
        """Served model names, each once."""
        return list(dict.fromkeys(m.name for m in self.models))

    def versions(self, name: str) -> list[str]:
        """The versions served under ``name``."""
        return [m.version for m in self.models if m.name == name]

    def authenticate(self, authorization: str | None) -> ClientRef:
        """The client an ``Authorization: Bearer <key>`` header belongs to (401 otherwise), with
        its standing (one read)."""
        if not authorization:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
        with self._bind(write=False).connect() as conn:
            found = ledger.key_owner(conn, key.strip())
        if found.status != "ok":
            raise Unauthorized(
                "revoked API key" if found.status == "revoked" else "invalid API key"
            )
        ref = ClientRef(
            found.client_id,
            found.name,
            found.blocked,
            found.quota_rows,
            found.rows_used,
            found.key_id,
        )
        ttl = self.settings.auth_cache_seconds
        if ttl > 0 and not ref.blocked:  # a blocked client is read again: unblocking is at once
            if len(self._auth_cache) >= AUTH_CACHE_SIZE:
                self._auth_cache.clear()
            self._auth_cache[authorization] = (time.monotonic() + ttl, ref)
        return ref

    def cached_client(self, authorization: str | None) -> ClientRef | None:
        """The client of an ``Authorization`` header :meth:`authenticate` accepted less than
        ``auth_cache_seconds`` ago (None: ask :meth:`authenticate`). Its standing may be that
        old; :meth:`decide_batch` checks block, quota and revocation again under the lock."""
        hit = self._auth_cache.get(authorization or "")
        if hit is None:
            return None
        if time.monotonic() > hit[0]:
            self._auth_cache.pop(authorization or "", None)
            return None
        return hit[1]

    def forget_authentications(self) -> None:
        """Drop cached authentications (after an administrator changed keys or standings)."""
        self._auth_cache.clear()

    # ------------------------------------------------------------------ prediction

    def _policy_blocked(self, s: Session, client_id: int) -> bool:
        q = select(ClientModelState.client_id).where(
            ClientModelState.client_id == client_id, ClientModelState.policy_blocked.is_(True)
        )
        return s.execute(q.limit(1)).first() is not None

    @staticmethod
    def _refusal(
        blocked: bool, quota_rows: int | None, rows_used: int, rows: int
    ) -> GatewayError | None:
        """403 for a blocked client, 429 past its quota, else None."""
        if blocked:
            return Forbidden(BLOCKED_MESSAGE)
        if quota_rows is not None and rows_used + rows > quota_rows:
            left = max(0, quota_rows - rows_used)
            return QuotaExceeded(
                f"quota exceeded: {left} of {quota_rows} rows left, this request has {rows}"
            )
        return None

    def infer(self, client: ClientRef, served: ServedModel, x: Tensor) -> Answer:
        """Answer a checked batch ``x`` [B, C, H, W] in [0, 1] for ``client`` (module doc):
        :meth:`precheck`, :meth:`forward` and :meth:`decide` in turn, unbatched."""
        self.precheck(client, int(x.shape[0]))
        t0 = time.perf_counter()
        clean, logits, normal = self.forward(served, x)
        return self.decide(client, served, x, clean, logits, normal, time.perf_counter() - t0)

    def precheck(self, client: ClientRef, rows: int) -> None:
        """Refuse (403, 429) before the model runs, from the standing read with the key."""
        refusal = self._refusal(client.blocked, client.quota_rows, client.rows_used, rows)
        if refusal is not None:
            raise refusal

    @staticmethod
    def forward(served: ServedModel, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Clean posteriors, logits and the normal defense's answers for a batch (of one or of
        several requests: the defense is batch-invariant)."""
        x = x.to(dtype=input_dtype(served.victim))
        clean, logits = victim_posteriors(served.victim, x)
        normal = served.policy.defense(x.to(clean.device), clean, logits)
        return clean, logits, normal

    def decide(
        self,
        client: ClientRef,
        served: ServedModel,
        x: Tensor,
        clean: Tensor,
        logits: Tensor,
        normal: Tensor,
        t_forward: float = 0.0,
    ) -> Answer:
        """:meth:`decide_batch` for one request; a refusal is raised."""
        (out,) = self.decide_batch([Decision(client, served, x, clean, logits, normal, t_forward)])
        if isinstance(out, BaseException):
            raise out
        return out

    def decide_batch(self, items: Sequence[Decision]) -> list[Answer | GatewayError]:
        """Decide requests in one transaction (module doc): lock their clients, bring their
        states up to date, run each client's policy in order, write journal, counters, state
        heads and log rows, commit. A refused request gets its error in its place; a failure of
        the transaction raises (nothing of the batch was answered or written)."""
        with self._decide_lock:
            return self._decide_batch(items)

    def _decide_batch(self, items: Sequence[Decision]) -> list[Answer | GatewayError]:
        out: list[Answer | GatewayError | None] = [None] * len(items)
        answers: list[tuple[int, Tensor, int, bool]] = []  # (item, tensor, rows, blocked now)
        reports: list[tuple[int, float, Any]] = []
        touched: dict[tuple[str, int], ServedModel] = {}
        # delivered marks ride along when enough are pending or they have waited a while
        due = time.monotonic() - self._marks_written >= DELIVERED_DELAY
        marks = self._take_delivered() if due or len(self._delivered) >= 32 else []
        t_policy_all = 0.0
        t1 = time.perf_counter()
        try:
            with self._bind(write=True).begin() as s:
                # with each client: whether its key was revoked since it was checked (cached)
                ledgers, heads, revoked = ledger.lock_clients(
                    s,
                    (it.client.id for it in items),
                    (it.client.key_id for it in items),
                    postgres=self.is_postgres,
                )
                journal: list[dict[str, Any]] = []
                logs: list[ledger.LogRow] = []
                for i, it in enumerate(items):
                    served, n = it.served, int(it.x.shape[0])
                    g = ledgers[it.client.id]
                    if it.client.key_id in revoked:
                        out[i] = Unauthorized("revoked API key")
                        continue
                    refusal = self._refusal(
                        g.admin_blocked or bool(g.policy_blocked), g.quota_rows, g.rows_used, n
                    )
                    if refusal is not None:
                        out[i] = refusal
                        continue
                    head = heads.setdefault((g.id, served.key), Head())
                    touched[(served.key, g.id)] = served
                    self.states.ensure(s, served, g.id, head)
                    t2 = time.perf_counter()
                    x = it.x.to(dtype=input_dtype(served.victim))
                    try:
                        resp = served.policy.respond(
                            policy_key(g.id),
                            x.to(it.clean.device),
                            it.clean,
                            it.logits,
                            normal=it.normal,
                        )
                    except ClientBlockedError:  # the state says blocked: the head did not
                        out[i] = Forbidden(BLOCKED_MESSAGE)
                        continue
                    released = apply_output_mode(resp.released, served.output, served.top_k)  # type: ignore[arg-type]
                    t_policy = time.perf_counter() - t2
                    t_policy_all += t_policy
                    flags = resp.flags.cpu()
                    flagged = int(flags.sum())
                    head.version += 1
                    head.journal_rows += n
                    head.policy_blocked = resp.blocked
                    head.reason = resp.reason
                    head.changed = True
                    if resp.blocked:
                        g.policy_blocked.add(served.key)
                    if resp.blocked or head.journal_rows >= self.checkpoint_rows:
                        head.checkpoint = dumps_state(served.policy.client_state(policy_key(g.id)))
                        head.checkpoint_version = head.version
                        head.journal_rows = 0
                    journal.append(
                        {
                            "client_id": g.id,
                            "model": served.key,
                            "version": head.version,
                            **encode_rows(x, it.clean),
                        }
                    )
                    self.states.advanced(served, g.id, head.version)
                    g.rows_used += n
                    g.requests += 1
                    g.flagged_rows += flagged
                    g.changed = True
                    logs.append(
                        ledger.LogRow(
                            g.id,
                            served.name,
                            served.version,
                            n,
                            row_hashes(x),
                            ["deceptive" if f else "normal" for f in flags.tolist()],
                            [round(float(v), 7) for v in l1_distance(released, it.clean).tolist()],
                            {
                                k: [round(float(v), 7) for v in t.tolist()]
                                for k, t in resp.scores.items()
                            },
                        )
                    )
                    out_t = released.argmax(dim=1) if served.output == "label" else released
                    answers.append((i, out_t.cpu(), n, resp.blocked))
                    reports.append((i, t_policy, resp))
                # journal rows a checkpoint of this batch already holds are not written
                kept = [
                    j
                    for j in journal
                    if j["version"] > heads[(j["client_id"], j["model"])].checkpoint_version
                ]
                ids = ledger.write_batch(
                    s, ledgers, heads, kept, logs, delivered=marks, postgres=self.is_postgres
                )
        except BaseException:
            # states in memory may be ahead of the database: read them again next time
            for (_, cid), served in touched.items():
                self.states.forget(served, cid)
            self._delivered.extend(marks)
            raise
        # committed: only now are the answers released
        t_db = time.perf_counter() - t1 - t_policy_all
        for (i, tensor, n, blocked_now), log_id in zip(answers, ids, strict=True):
            out[i] = Answer(tensor, n, log_id, blocked_now=blocked_now)
            if blocked_now:
                it = items[i]
                log.info("client %s blocked on %s", it.client.name, it.served.key)
        if self.observer is not None:
            for i, t_policy, resp in reports:
                it = items[i]
                self._report(it.served, it.t_forward, t_policy, t_db, resp)
        done = [o for o in out if o is not None]
        assert len(done) == len(items)
        return done

    def _report(
        self, served: ServedModel, forward: float, policy: float, database: float, resp: Any
    ) -> None:
        obs = self.observer
        assert obs is not None
        name, version = served.name, served.version
        obs.observe_forward(name, version, forward)
        obs.observe_policy(name, version, policy)
        obs.observe_database(name, version, database)
        flagged = int(resp.flags.sum())
        obs.count_rows(name, version, "normal", int(resp.flags.numel()) - flagged)
        obs.count_rows(name, version, "deceptive", flagged)
        for det, f in resp.detector_flags.items():
            obs.count_detector_flags(name, version, det, int(f.sum()))

    def mark_delivered(self, log_id: int) -> None:
        """Note that a logged answer was handed to the client's connection; the mark is written
        with a later decision within about ``DELIVERED_DELAY`` seconds (or by
        :meth:`flush_delivered`). A worker that dies first leaves the row marked undelivered —
        never the other way round."""
        self._delivered.append(log_id)

    def flush_delivered(self) -> int:
        """Write the pending delivered marks now (one statement) → how many."""
        marks = self._take_delivered()
        if not marks:
            return 0
        try:
            with self._bind(write=True).begin() as conn:
                ledger.mark_delivered(conn, marks)
        except BaseException:
            self._delivered.extend(marks)
            raise
        return len(marks)

    def _take_delivered(self) -> list[int]:
        self._marks_written = time.monotonic()
        marks: list[int] = []
        while self._delivered:
            try:
                marks.append(self._delivered.popleft())
            except IndexError:  # emptied by another thread
                break
        return marks

    # ------------------------------------------------------------------ clients

    def me(self, client: ClientRef) -> dict[str, Any]:
        """What a client may know about itself (never whether it was flagged)."""
        with self.read_session() as s:
            c = s.get(Client, client.id)
            if c is None:
                raise Unauthorized("invalid API key")
            blocked = c.admin_blocked or self._policy_blocked(s, c.id)
            return {
                "name": c.name,
                "rows_used": c.rows_used,
                "requests": c.requests,
                "quota_rows": c.quota_rows,
                "quota_left": None if c.quota_rows is None else max(0, c.quota_rows - c.rows_used),
                "standing": "blocked" if blocked else "ok",
            }

    def client_summary(self, s: Session, c: Client) -> dict[str, Any]:
        """An administrator's view of a client."""
        rows = s.execute(
            select(
                ClientModelState.model,
                ClientModelState.policy_blocked,
                ClientModelState.blocked_reason,
            ).where(ClientModelState.client_id == c.id)
        ).all()
        policy_blocks = {m: r for m, b, r in rows if b}
        blocked = c.admin_blocked or bool(policy_blocks)
        return {
            "name": c.name,
            "created_at": _iso(c.created_at),
            "last_seen": _iso(c.last_seen),
            "rows_used": c.rows_used,
            "requests": c.requests,
            "flagged_rows": c.flagged_rows,
            "quota_rows": c.quota_rows,
            "standing": "blocked" if blocked else "ok",
            "admin_blocked": c.admin_blocked,
            "block_reason": c.block_reason
            if c.admin_blocked
            else (next(iter(policy_blocks.values())) if policy_blocks else None),
            "policy_blocked": sorted(policy_blocks),
        }

    def exclusive(self) -> threading.Lock:
        """Held while this worker's policy objects are in use (by :meth:`decide_batch`). Take
        it *before* opening a transaction that locks clients, as :meth:`decide_batch` does: the
        same order everywhere, so no two holders wait for each other."""
        return self._decide_lock

    def unblock_policy(self, s: Session, c: Client) -> int:
        """Lift every policy block of ``c`` (the counters restart; history is kept). Call it
        under :meth:`exclusive` and the client's lock (:func:`repo.lock_client`), in that
        order: it rebuilds the state in the worker's policy objects."""
        lifted = 0
        for served in self.models:
            row = repo.load_state(s, c.id, served.key)
            if row is None or not row.policy_blocked:
                continue
            head = Head(row.version, row.checkpoint_version, row.journal_rows, True, exists=True)
            key = f"admin-{c.id}"
            try:
                restore(s, served, c.id, head, key)
                served.policy.unblock(key)
                repo.save_state(
                    s,
                    c.id,
                    served.key,
                    dumps_state(served.policy.client_state(key)),
                    policy_blocked=False,
                    reason=None,
                )
            finally:
                served.policy.reset_client(key)
            lifted += 1
        return lifted


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.isoformat()
