"""The make-calibrations script (no SAL import here).

`MakeCalibrationsCore` implements the procedure against the `Camera`,
`RawWaiter` and `PipelineService` protocols; `local` provides the embedded
implementations and `runner` the ``cpcombined run`` command.  SAL adapters
live in `lsst.cpcombined.script.sal` and are only importable where
``lsst.ts.salobj`` and ``lsst.ts.observatory.control`` are installed.
"""

from .core import (
    CalibrationOutcome,
    CalibrationRejected,
    MakeCalibrationsCore,
    ProcedureError,
    RunSummary,
    StepRecord,
    check_pipeline_files,
    pipeline_path,
    procedure_pipelines,
)
from .protocols import Camera, JobResult, PipelineService, RawWaiter, ScriptState
from .schema import ConfigError, ScriptConfig, get_schema, validate_config

__all__ = (
    "CalibrationOutcome",
    "CalibrationRejected",
    "Camera",
    "ConfigError",
    "JobResult",
    "MakeCalibrationsCore",
    "PipelineService",
    "ProcedureError",
    "RawWaiter",
    "RunSummary",
    "ScriptConfig",
    "ScriptState",
    "StepRecord",
    "check_pipeline_files",
    "get_schema",
    "pipeline_path",
    "procedure_pipelines",
    "validate_config",
)
