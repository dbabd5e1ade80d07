"""A served model: what the gateway loaded for one ``name@version`` (its own module, so that the
gateway and the client-state cache both use it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from stealproof.policy import DetectionPolicy
from stealproof.serve.protocol import OUTPUT_LABELS, OUTPUT_PROBS, InputSpec


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
