"""Detection policies: detectors decide per row, a defense answers, termination blocks a client.

:class:`DetectionPolicy` is the per-client state machine of ALGORITHMS.md §3 (Model-Guardian,
PRADA): for every batch of a client it

1. refuses the batch with :class:`~stealproof.errors.ClientBlockedError` if the client is
   blocked (before any detector or model sees it);
2. runs every detector's ``observe`` on the batch; a row is *flagged* if any detector flags it;
3. answers unflagged rows with the normal ``defense`` (default: none) and flagged rows with the
   ``deceptive`` defense (default: :class:`~stealproof.defenses.deceptive.Deceptive`, DPreds);
4. counts flagged rows and blocks the client once ``max_flagged`` rows were flagged, or once
   the flagged share of the last ``window`` rows reaches ``ratio``.

The batch that crosses a termination threshold is still answered (deceptively where flagged);
the client's *next* call is refused. A batch is atomic — refusing half of it would leak which
row tipped the balance — and every answer the client got was decided by the same rules. The
crossing row is recorded (``blocked_at``): with one-row calls the block takes effect exactly
there.

The window rule counts only once ``window`` rows were seen since the counters were last reset,
so a short burst at the start of a session does not block a client on a few rows. Both rules
are evaluated at every row in order, so where a client is blocked does not depend on how its
stream was split into batches (only when the refusal starts does).

All state is per client and can be saved and restored (:meth:`DetectionPolicy.client_state`,
:meth:`DetectionPolicy.load_client_state`) with identical decisions afterwards; the gateway
persists it between requests. :meth:`DetectionPolicy.replay` brings a restored state forward
over batches that were answered after it was saved (their images and clean posteriors): the
state ends exactly where ``respond`` left it when the batches are replayed as they came, and
also when they are concatenated if every detector decides the same whatever the batching
(PRADA does). A policy is not thread-safe: serialise calls per client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from stealproof._validate import check_images, check_logits, check_posteriors
from stealproof.defenses.base import Defense, format_validation_error
from stealproof.defenses.deceptive import Deceptive
from stealproof.defenses.identity import NoDefense
from stealproof.defenses.registry import resolve_defense
from stealproof.detectors.base import Detector
from stealproof.errors import ClientBlockedError, InputValidationError

STATE_VERSION = 1


class PolicyConfig(BaseModel):
    """Termination rules of a :class:`DetectionPolicy` (``None`` disables a rule)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_flagged: int | None = Field(
        1000, ge=1, description="block a client after this many flagged rows"
    )
    window: int | None = Field(
        None, ge=1, description="sliding window (rows) of the flagged-ratio rule"
    )
    ratio: float | None = Field(
        None, gt=0.0, le=1.0, description="block when the window's flagged share is ≥ this"
    )

    @model_validator(mode="after")
    def _window_and_ratio(self) -> PolicyConfig:
        if (self.window is None) != (self.ratio is None):
            raise ValueError(
                f"window and ratio: set both or neither (got window={self.window}, "
                f"ratio={self.ratio})"
            )
        return self


@dataclass(frozen=True)
class PolicyResponse:
    """What :meth:`DetectionPolicy.respond` decided for one batch."""

    #: released posteriors [B, K] (before the black box's output mode)
    released: Tensor
    #: [B] bool: the row was flagged by at least one detector (and answered deceptively)
    flags: Tensor
    #: per detector: [B] scores (higher = more suspicious)
    scores: dict[str, Tensor]
    #: per detector: [B] bool flags
    detector_flags: dict[str, Tensor]
    #: the client is blocked after this batch (its next call is refused)
    blocked: bool
    #: why the client is blocked (``None`` while it is not)
    reason: str | None


@dataclass(frozen=True)
class ClientStatus:
    """A client's standing with the policy."""

    client_id: str
    rows: int
    flagged_rows: int
    blocked: bool
    reason: str | None
    #: 1-based row (counted over ``rows``) at which a termination rule fired
    blocked_at: int | None


@dataclass
class _PolicyClient:
    rows: int = 0
    flagged: int = 0  # flagged rows since the termination counters were last reset
    flagged_total: int = 0
    window: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    window_rows: int = 0  # rows seen since the termination counters were last reset
    blocked: bool = False
    reason: str = ""
    blocked_at: int | None = None


class DetectionPolicy:
    """Detectors → per-row response (normal or deceptive) → termination, per client.

    Parameters
    ----------
    detectors: the detectors, as one detector, a sequence (keyed by their ``name``, which must
        then be unique) or a mapping ``{key: detector}``.
    defense: the answer for unflagged rows: a Defense, a registered defense name (built with
        its defaults) or ``None`` (the clean posteriors).
    deceptive: the answer for flagged rows, given the same ways (``None``: ``Deceptive()``,
        top-1 kept, soft information replaced by keyed noise).
    config: a :class:`PolicyConfig`, or its fields as keywords (``max_flagged``, ``window``,
        ``ratio``).
    """

    def __init__(
        self,
        detectors: Detector | Sequence[Detector] | Mapping[str, Detector],
        *,
        defense: Defense | str | None = None,
        deceptive: Defense | str | None = None,
        config: PolicyConfig | None = None,
        **params: Any,
    ) -> None:
        if config is not None and params:
            raise InputValidationError("policy: pass either a config or keyword parameters")
        if config is None:
            try:
                config = PolicyConfig(**params)
            except ValidationError as e:
                raise InputValidationError(
                    format_validation_error("policy", e, PolicyConfig)
                ) from None
        elif not isinstance(config, PolicyConfig):
            raise InputValidationError(
                f"config: expected a PolicyConfig, got {type(config).__name__}"
            )
        self.config = config
        given: object = [detectors] if isinstance(detectors, Detector) else detectors
        named: dict[Any, object] = {}
        if isinstance(given, Mapping):
            named = dict(given)
        elif isinstance(given, str | bytes) or not isinstance(given, Sequence):
            raise InputValidationError(
                "detectors: expected a Detector, a sequence of Detectors or a mapping "
                f"{{key: Detector}}, got {type(given).__name__}"
            )
        else:
            for d in given:
                if not isinstance(d, Detector):
                    raise InputValidationError(
                        f"detectors: expected Detector objects, got a {type(d).__name__}"
                    )
                if d.name in named:
                    raise InputValidationError(
                        f"detectors: two detectors named {d.name!r}; pass a mapping "
                        "{key: detector} to tell them apart"
                    )
                named[d.name] = d
        checked: dict[str, Detector] = {}
        for key, d in named.items():
            if not isinstance(key, str):
                raise InputValidationError(
                    f"detectors: keys must be strings, got {type(key).__name__} {key!r}"
                )
            if not isinstance(d, Detector):
                raise InputValidationError(
                    f"detectors: {key!r} is a {type(d).__name__}, not a Detector"
                )
            checked[key] = d
        self.detectors: dict[str, Detector] = checked
        normal = resolve_defense(defense, "defense")
        flagged = resolve_defense(deceptive, "deceptive")
        self.defense: Defense = normal if normal is not None else NoDefense()
        self.deceptive: Defense = flagged if flagged is not None else Deceptive()
        self._clients: dict[str, _PolicyClient] = {}

    # ------------------------------------------------------------------ answering

    def ensure_allowed(self, client_id: str) -> None:
        """Raise :class:`~stealproof.errors.ClientBlockedError` if the client is blocked."""
        st = self._clients.get(client_id)
        if st is not None and st.blocked:
            raise ClientBlockedError(client_id, st.reason)

    def respond(
        self,
        client_id: str,
        x: Tensor,
        y: Tensor,
        logits: Tensor | None = None,
        *,
        normal: Tensor | None = None,
    ) -> PolicyResponse:
        """Decide one batch of ``client_id``: images ``x`` [B,C,H,W], clean posteriors ``y``
        [B,K] and optionally the victim's logits; update the client's state; return the answers.

        ``normal`` is this batch's answer from the normal defense when the caller already has
        it (the gateway runs the defense once for requests batched together: defenses are
        batch-invariant, so the rows are the same as a call here would give).

        Raises :class:`~stealproof.errors.ClientBlockedError` before anything else when the
        client is blocked (nothing is observed or counted then).
        """
        self.ensure_allowed(client_id)
        y = check_posteriors(y, "y")
        x = check_images(x, "x", batch=y.shape[0])
        if logits is not None:
            logits = check_logits(logits, "logits", like=y)
        scores, det_flags, flags = self._observe(client_id, x, y)
        if normal is None:
            released = self.defense(x, y, logits)
        else:
            released = check_posteriors(normal, "normal")
            if released.shape != y.shape:
                raise InputValidationError(
                    f"normal: expected {tuple(y.shape)} answers, got {tuple(released.shape)}"
                )
        if bool(flags.any()):
            rows = flags.to(y.device)
            fake = self.deceptive(x[rows], y[rows], None if logits is None else logits[rows])
            released = released.clone()
            released[rows] = fake.to(released.dtype)
        st = self._client(client_id)
        self._terminate(st, flags)
        return PolicyResponse(
            released=released,
            flags=flags,
            scores=scores,
            detector_flags=det_flags,
            blocked=st.blocked,
            reason=st.reason if st.blocked else None,
        )

    def replay(self, client_id: str, x: Tensor, y: Tensor) -> None:
        """Update the client's state exactly as ``respond(client_id, x, y)`` would, without
        answering: the detectors observe the rows in order and the termination counters (and
        a block, with its ``blocked_at``) follow, but no defense runs.

        For rebuilding a client's state from a journal of the requests (images and clean
        posteriors) answered after a saved state. Like :meth:`respond` it raises
        :class:`~stealproof.errors.ClientBlockedError` before anything else when the client is
        blocked before the batch.
        """
        self.ensure_allowed(client_id)
        y = check_posteriors(y, "y")
        x = check_images(x, "x", batch=y.shape[0])
        flags = self._observe(client_id, x, y)[2]
        self._terminate(self._client(client_id), flags)

    def _observe(
        self, client_id: str, x: Tensor, y: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """Run every detector on the (validated) batch: scores and flags per detector, and the
        rows any of them flagged."""
        b = int(y.shape[0])
        scores: dict[str, Tensor] = {}
        det_flags: dict[str, Tensor] = {}
        flags = torch.zeros(b, dtype=torch.bool)
        for key, det in self.detectors.items():
            out = det.observe(client_id, x, y)
            if out.flags.shape != (b,):
                raise InputValidationError(
                    f"detector {key!r}: returned {tuple(out.flags.shape)} flags for {b} rows"
                )
            scores[key] = out.scores.detach().cpu()
            det_flags[key] = out.flags.detach().cpu().bool()
            flags |= det_flags[key]
        return scores, det_flags, flags

    def _client(self, client_id: str) -> _PolicyClient:
        st = self._clients.get(client_id)
        if st is None:
            st = self._clients[client_id] = _PolicyClient()
        return st

    def _terminate(self, st: _PolicyClient, flags: Tensor) -> None:
        """Count the batch's flags and block the client at the first row that crosses a rule."""
        cfg = self.config
        b = int(flags.shape[0])
        f = flags.to(torch.int64)
        crossing: list[tuple[int, str]] = []  # (row index in batch, reason)
        if cfg.max_flagged is not None:
            running = st.flagged + torch.cumsum(f, 0)
            hit = (running >= cfg.max_flagged).nonzero()
            if hit.numel():
                i = int(hit[0, 0])
                crossing.append(
                    (i, f"{int(running[i])} flagged rows reached max_flagged={cfg.max_flagged}")
                )
        window = st.window
        if cfg.window is not None and cfg.ratio is not None:
            w = cfg.window
            seq = torch.cat([st.window.to(torch.int64), f])
            csum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(seq, 0)])
            start = int(st.window.shape[0])
            pos = torch.arange(start, start + b)  # indices in seq of the batch rows
            seen = st.window_rows + torch.arange(1, b + 1)
            full = seen >= w
            counts = csum[pos + 1] - csum[(pos + 1 - w).clamp_min(0)]
            hit = (full & (counts.double() / w >= cfg.ratio)).nonzero()
            if hit.numel():
                i = int(hit[0, 0])
                crossing.append(
                    (
                        i,
                        f"{int(counts[i])} of the last {w} rows flagged "
                        f"(ratio {int(counts[i]) / w:.3g} ≥ {cfg.ratio})",
                    )
                )
            window = seq[-w:].bool()
        n_flagged = int(f.sum())
        if crossing and not st.blocked:
            i, reason = min(crossing)
            st.blocked = True
            st.reason = reason
            st.blocked_at = st.rows + i + 1
        st.rows += b
        st.window_rows += b
        st.flagged += n_flagged
        st.flagged_total += n_flagged
        st.window = window.clone()

    # ------------------------------------------------------------------ clients

    def status(self, client_id: str) -> ClientStatus:
        """Rows answered, rows flagged, whether (and why, and where) the client is blocked."""
        st = self._clients.get(client_id) or _PolicyClient()
        return ClientStatus(
            client_id=client_id,
            rows=st.rows,
            flagged_rows=st.flagged_total,
            blocked=st.blocked,
            reason=st.reason if st.blocked else None,
            blocked_at=st.blocked_at,
        )

    def is_blocked(self, client_id: str) -> bool:
        """Whether the client's queries are refused."""
        st = self._clients.get(client_id)
        return bool(st is not None and st.blocked)

    def clients(self) -> list[str]:
        """Clients the policy or any detector holds state for."""
        names = set(self._clients)
        for det in self.detectors.values():
            names.update(det.clients())
        return sorted(names)

    def block(self, client_id: str, reason: str = "blocked by an administrator") -> None:
        """Block a client by hand."""
        st = self._client(client_id)
        st.blocked = True
        st.reason = reason
        st.blocked_at = st.rows

    def unblock(self, client_id: str) -> None:
        """Let a blocked client query again.

        The termination counters (flagged rows, window) start afresh, so the client is not
        blocked again by its old rows; the detectors keep their state (a client PRADA still
        flags gets deceptive answers and can be blocked again). Lifetime counts are kept.
        """
        st = self._clients.get(client_id)
        if st is None:
            return
        st.blocked = False
        st.reason = ""
        st.blocked_at = None
        st.flagged = 0
        st.window = torch.zeros(0, dtype=torch.bool)
        st.window_rows = 0

    def reset_client(self, client_id: str) -> None:
        """Forget everything about the client, in the policy and in every detector."""
        self._clients.pop(client_id, None)
        for det in self.detectors.values():
            det.reset_client(client_id)

    def client_state(self, client_id: str) -> dict[str, Any]:
        """The client's policy state and every detector's client state (see ``dumps_state``)."""
        st = self._clients.get(client_id) or _PolicyClient()
        return {
            "version": STATE_VERSION,
            "policy": {
                "rows": st.rows,
                "flagged": st.flagged,
                "flagged_total": st.flagged_total,
                "window": st.window.clone(),
                "window_rows": st.window_rows,
                "blocked": st.blocked,
                "reason": st.reason,
                "blocked_at": -1 if st.blocked_at is None else st.blocked_at,
            },
            "detectors": {k: d.client_state(client_id) for k, d in self.detectors.items()},
        }

    def load_client_state(self, client_id: str, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`client_state` (``{}`` forgets the client)."""
        if not state:
            self.reset_client(client_id)
            return
        try:
            if int(state["version"]) != STATE_VERSION:
                raise ValueError(f"version {state['version']} (expected {STATE_VERSION})")
            p = state["policy"]
            blocked_at = int(p["blocked_at"])
            st = _PolicyClient(
                rows=int(p["rows"]),
                flagged=int(p["flagged"]),
                flagged_total=int(p["flagged_total"]),
                window=torch.as_tensor(p["window"]).bool().flatten().clone(),
                window_rows=int(p["window_rows"]),
                blocked=bool(p["blocked"]),
                reason=str(p["reason"]),
                blocked_at=None if blocked_at < 0 else blocked_at,
            )
            dets = state["detectors"]
            missing = set(self.detectors) - set(dets)
            if missing:
                raise ValueError(f"no state for detectors {sorted(missing)}")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputValidationError(f"state: not a policy client state ({e})") from None
        for key, det in self.detectors.items():
            det.load_client_state(client_id, dets[key])
        self._clients[client_id] = st

    def __repr__(self) -> str:
        return (
            f"DetectionPolicy(detectors={list(self.detectors)}, defense={self.defense!r}, "
            f"deceptive={self.deceptive!r}, config={self.config!r})"
        )
