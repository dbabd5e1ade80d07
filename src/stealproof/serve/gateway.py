"""The per-request flow of the gateway, with no HTTP in it.

For one prediction request of an authenticated client (DESIGN.md "Gateway"):

1. refuse before the model runs — admin block, policy block, quota — reading the database
   without taking the client's lock (a refused request is never charged or logged);
2. run the victim's forward pass outside any lock;
3. under the client's lock (``SELECT … FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
   SQLite): check the refusals again, load the client's policy state, run the policy (detectors,
   normal or deceptive answer, termination), write state, counters and one query-log row, and
   commit;
4. only then return the answer, so every answer a client received has its log row.

One client's requests are therefore decided in order across all workers; different clients
lock different rows and never wait for each other on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from torch import Tensor, nn

from stealproof.detectors.base import Detector, dumps_state, loads_state
from stealproof.errors import ClientBlockedError, ConfigError, StealproofError
from stealproof.metrics import l1_distance
from stealproof.oracle import apply_output_mode, input_dtype, victim_posteriors
from stealproof.policy import DetectionPolicy, PolicyConfig
from stealproof.serve.db import repo
from stealproof.serve.db.models import Client, ClientModelState
from stealproof.serve.errors import Forbidden, NotFound, QuotaExceeded, Unauthorized
from stealproof.serve.protocol import OUTPUT_LABELS, OUTPUT_PROBS, InputSpec
from stealproof.serve.settings import ModelSettings, ServeSettings

log = logging.getLogger(__name__)

#: What a client is told when it is blocked, whatever the reason (it must not learn it was
#: detected, nor by which detector).
BLOCKED_MESSAGE = "this client is blocked; contact the service's operator"


@dataclass
class ServedModel:
    """A loaded model: victim, its policy (detectors + defense) and how answers are released."""

    name: str
    version: str
    victim: nn.Module
    policy: DetectionPolicy
    spec: InputSpec
    num_classes: int
    output: str = "probs"
    top_k: int = 1

    @property
    def key(self) -> str:
        """The key of this model's per-client state (``name@version``)."""
        return f"{self.name}@{self.version}"

    @property
    def output_name(self) -> str:
        """The released output tensor's name."""
        return OUTPUT_LABELS if self.output == "label" else OUTPUT_PROBS


@dataclass(frozen=True)
class ClientRef:
    """An authenticated client (what the API key resolved to)."""

    id: int
    name: str


@dataclass
class Answer:
    """What a served request releases: ``tensor`` is posteriors [B, K] or labels [B]."""

    tensor: Tensor
    rows: int
    log_id: int
    blocked_now: bool = False


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
            out[key] = PradaDetector(**d.params)
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
        """The client an ``Authorization: Bearer <key>`` header belongs to (401 otherwise)."""
        if not authorization:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
        with self.read_session() as s:
            found = repo.authenticate(s, key.strip())
            if not found.ok or found.client is None:
                raise Unauthorized(
                    "revoked API key" if found.status == "revoked" else "invalid API key"
                )
            return ClientRef(found.client.id, found.client.name)

    # ------------------------------------------------------------------ prediction

    def _policy_blocked(self, s: Session, client_id: int) -> bool:
        q = select(ClientModelState.client_id).where(
            ClientModelState.client_id == client_id, ClientModelState.policy_blocked.is_(True)
        )
        return s.execute(q.limit(1)).first() is not None

    def _refuse(self, s: Session, c: Client, rows: int) -> None:
        if c.admin_blocked or self._policy_blocked(s, c.id):
            raise Forbidden(BLOCKED_MESSAGE)
        if c.quota_rows is not None and c.rows_used + rows > c.quota_rows:
            left = max(0, c.quota_rows - c.rows_used)
            raise QuotaExceeded(
                f"quota exceeded: {left} of {c.quota_rows} rows left, this request has {rows}"
            )

    def infer(self, client: ClientRef, served: ServedModel, x: Tensor) -> Answer:
        """Answer a checked batch ``x`` [B, C, H, W] in [0, 1] for ``client`` (module doc):
        :meth:`precheck`, :meth:`forward` and :meth:`decide` in turn, unbatched."""
        self.precheck(client, int(x.shape[0]))
        x = x.to(dtype=input_dtype(served.victim))
        t0 = time.perf_counter()
        clean, logits, normal = self.forward(served, x)
        return self.decide(client, served, x, clean, logits, normal, time.perf_counter() - t0)

    def precheck(self, client: ClientRef, rows: int) -> None:
        """Refuse (403, 429) before the model runs, without taking the client's lock."""
        with self.read_session() as s:
            c = s.get(Client, client.id)
            if c is None:
                raise Unauthorized("invalid API key")
            self._refuse(s, c, rows)

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
        """Under the client's lock: its policy state, detectors, deceptive answers, termination,
        state + counters + log, commit (module doc). ``t_forward`` is reported to the observer."""
        n = int(x.shape[0])
        x = x.to(dtype=input_dtype(served.victim))
        hashes = row_hashes(x)
        key = str(client.id)
        policy = served.policy
        t1 = time.perf_counter()
        with self.sessions.begin() as s:
            c = repo.lock_client(s, client.id)
            self._refuse(s, c, n)
            row = repo.load_state(s, c.id, served.key)
            t2 = time.perf_counter()
            # The policy object is shared by the worker's threads; the client's state lives in it
            # only while this transaction holds the client's lock, so another request of the
            # same client never sees it half-updated.
            try:
                policy.load_client_state(key, loads_state(row.state) if row is not None else {})
                try:
                    resp = policy.respond(key, x.to(clean.device), clean, logits, normal=normal)
                except ClientBlockedError:
                    raise Forbidden(BLOCKED_MESSAGE) from None
                state = dumps_state(policy.client_state(key))
            finally:
                policy.reset_client(key)
            released = apply_output_mode(resp.released, served.output, served.top_k)  # type: ignore[arg-type]
            t_policy = time.perf_counter() - t2
            flags = resp.flags.cpu()
            flagged = int(flags.sum())
            repo.save_state(
                s, c.id, served.key, state, policy_blocked=resp.blocked, reason=resp.reason
            )
            repo.charge(s, c, n, flagged)
            entry = repo.append_log(
                s,
                c.id,
                served.name,
                served.version,
                n,
                hashes,
                ["deceptive" if f else "normal" for f in flags.tolist()],
                [round(float(v), 7) for v in l1_distance(released, clean).tolist()],
                {k: [round(float(v), 7) for v in t.tolist()] for k, t in resp.scores.items()},
            )
            s.flush()
            log_id = int(entry.id)
        # committed: only now is the answer released
        if self.observer is not None:
            self._report(served, t_forward, t_policy, time.perf_counter() - t1 - t_policy, resp)
        out = released.argmax(dim=1) if served.output == "label" else released
        if resp.blocked:
            log.info("client %s blocked on %s: %s", client.name, served.key, resp.reason)
        return Answer(out.cpu(), n, log_id, blocked_now=resp.blocked)

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
        """Mark a logged answer as handed to the client's connection (after the response)."""
        with self.sessions.begin() as s:
            repo.mark_delivered(s, log_id)

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

    def unblock_policy(self, s: Session, c: Client) -> int:
        """Lift every policy block of ``c`` (the counters restart; history is kept)."""
        lifted = 0
        for served in self.models:
            row = repo.load_state(s, c.id, served.key)
            if row is None or not row.policy_blocked:
                continue
            key = f"admin-{c.id}"
            try:
                served.policy.load_client_state(key, loads_state(row.state))
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
