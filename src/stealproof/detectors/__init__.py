"""Query-stream detectors (PRADA, Model-Guardian's DFMS detector) behind one protocol."""

from stealproof.detectors.base import Detection, Detector, dumps_state, loads_state
from stealproof.detectors.guardian import (
    GuardianBundle,
    GuardianConfig,
    GuardianDetector,
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

__all__ = [
    "Detection",
    "Detector",
    "GuardianBundle",
    "GuardianConfig",
    "GuardianDetector",
    "GuardianReport",
    "PradaConfig",
    "PradaDetector",
    "StreamTrace",
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
