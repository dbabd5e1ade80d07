"""Query-stream detectors (PRADA, Model-Guardian's DFMS detector) behind one protocol."""

from stealproof.detectors.base import Detection, Detector, dumps_state, loads_state
from stealproof.detectors.prada import (
    PradaConfig,
    PradaDetector,
    StreamTrace,
    calibrate_delta,
    trace_stream,
)

__all__ = [
    "Detection",
    "Detector",
    "PradaConfig",
    "PradaDetector",
    "StreamTrace",
    "calibrate_delta",
    "dumps_state",
    "loads_state",
    "trace_stream",
]
