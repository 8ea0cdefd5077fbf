"""The simulated camera: raw frames with known ground truth."""

from .truth import DetectorTruth, FaultSpec, SimulationTruth, TruthError

__all__ = ("DetectorTruth", "FaultSpec", "SimulationTruth", "TruthError")
