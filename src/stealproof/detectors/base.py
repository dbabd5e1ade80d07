"""The detector protocol: observe a client's queries, keep per-client state, score each row.

A detector sees ``(client_id, x, y)`` for every answered batch — the images and the victim's
clean posteriors — and returns a :class:`Detection`: a score per row (higher = more suspicious)
and a flag per row. Stateless detectors (Model-Guardian's DFMS detector) flag rows on their own;
stateful ones (PRADA) flag the *client* from the stream so far, reported on every row answered
while the client is flagged.

Per-client state is what the gateway persists between requests: :meth:`Detector.client_state`
returns plain Python values and tensors, :meth:`Detector.load_client_state` restores them, and
decisions after a restore are identical to decisions without one. :func:`dumps_state` /
:func:`loads_state` turn such a state into bytes and back (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from stealproof.errors import InputValidationError


@dataclass(frozen=True)
class Detection:
    """Per-row result of :meth:`Detector.observe`: ``scores`` [B] float, ``flags`` [B] bool."""

    scores: Tensor
    flags: Tensor

    def __post_init__(self) -> None:
        if self.scores.shape != self.flags.shape or self.scores.ndim != 1:
            raise InputValidationError(
                f"Detection: scores {tuple(self.scores.shape)} and flags "
                f"{tuple(self.flags.shape)} must be matching 1-d tensors"
            )


class Detector(ABC):
    """Base class: subclasses set ``name`` and implement :meth:`observe` and the state methods."""

    name: ClassVar[str]

    @abstractmethod
    def observe(self, client_id: str, x: Tensor, y: Tensor) -> Detection:
        """Update ``client_id``'s state with the batch (images ``x`` [B,C,H,W] in [0,1], clean
        posteriors ``y`` [B,K]) in row order, and return a score and flag per row."""

    @abstractmethod
    def client_state(self, client_id: str) -> dict[str, Any]:
        """A copy of the client's state (empty for stateless detectors)."""

    @abstractmethod
    def load_client_state(self, client_id: str, state: dict[str, Any]) -> None:
        """Replace the client's state with ``state`` (from :meth:`client_state`)."""

    def reset_client(self, client_id: str) -> None:
        """Forget everything about ``client_id``."""
        self.load_client_state(client_id, {})

    def clients(self) -> list[str]:
        """Clients with state (empty for stateless detectors)."""
        return []


def dumps_state(state: dict[str, Any]) -> bytes:
    """Serialise a client state (tensors, numbers, strings, lists, dicts) to bytes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def loads_state(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`dumps_state`; refuses anything but tensors and plain containers."""
    try:
        out = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or hostile bytes
        raise InputValidationError(
            f"state: not a readable client state ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(out, dict):
        raise InputValidationError("state: the bytes do not hold a state dict")
    return out
