"""Query-stream detectors (PRADA, Model-Guardian's DFMS detector) behind one protocol."""

from pydantic import BaseModel

from stealproof.detectors.base import Detection, Detector, dumps_state, loads_state
from stealproof.detectors.guardian import (
    GuardianBundle,
    GuardianConfig,
    GuardianDetector,
    GuardianParams,
    GuardianReport,
    benign_fpr,
    calibrate_threshold,
    guardian_config,
    train_guardian,
)
from stealproof.detectors.prada import (
    PradaConfig,
    PradaDetector,
    StreamTrace,
    benign_streams,
    calibrate_delta,
    trace_stream,
)


def available() -> dict[str, tuple[str, type[BaseModel]]]:
    """What ``stealproof list detectors`` shows: name → (one-line description, config class).

    ``prada`` and ``guardian`` are the detectors (the guardian's parameters are the bundle it
    is loaded from), ``policy`` the detection policy that turns their flags into answers and
    blocks.
    """
    from stealproof.policy import PolicyConfig

    return {
        "prada": (
            "PRADA: flags a client whose query distances stop looking normal "
            "(Shapiro-Wilk W < delta)",
            PradaConfig,
        ),
        "guardian": (
            "Model-Guardian's DFMS detector: flags queries that look synthetic (data-free "
            "attacks); a bundle from `stealproof guardian train`",
            GuardianParams,
        ),
        "policy": (
            "Detection policy: flagged rows get deceptive answers; blocks a client after "
            "max_flagged flagged rows or a flagged share >= ratio over window rows",
            PolicyConfig,
        ),
    }


__all__ = [
    "Detection",
    "Detector",
    "GuardianBundle",
    "GuardianConfig",
    "GuardianDetector",
    "GuardianParams",
    "GuardianReport",
    "PradaConfig",
    "PradaDetector",
    "StreamTrace",
    "available",
    "benign_fpr",
    "benign_streams",
    "calibrate_delta",
    "calibrate_threshold",
    "dumps_state",
    "guardian_config",
    "loads_state",
    "trace_stream",
    "train_guardian",
]
