"""What the script needs from the observatory: a camera, a way to know the
images are in the repository, and a pipeline service (OCPS-shaped).

The script core only talks to these protocols; `lsst.cpcombined.script.local`
implements them with the simulated camera and in-process pipelines, and
`lsst.cpcombined.script.sal` with the summit's camera and OCPS.
"""

from __future__ import annotations

__all__ = ("Camera", "JobResult", "PipelineService", "ProgressReporter", "RawWaiter", "ScriptState")

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

#: Receives human-readable progress lines (one line each, no trailing
#: newline), e.g. a pipeline service's per-job quantum counts.
type ProgressReporter = Callable[[str], None]


class ScriptState(enum.IntEnum):
    """Script states as the ScriptQueue knows them (``ScriptState`` of the
    SAL Script interface)."""

    UNKNOWN = 0
    UNCONFIGURED = 1
    CONFIGURED = 2
    RUNNING = 3
    PAUSED = 4
    ENDING = 5
    STOPPING = 6
    FAILING = 7
    DONE = 8
    STOPPED = 9
    FAILED = 10
    CONFIGURE_FAILED = 11


@runtime_checkable
class Camera(Protocol):
    """Takes exposures (``take_imgtype``-style, as the observatory-control
    camera classes do)."""

    #: Seconds to read out one exposure (for duration estimates).
    read_out_time: float

    async def take_imgtype(
        self,
        imgtype: str,
        exptime: float,
        n: int,
        *,
        group_id: str,
        note: str = "",
        program: str = "",
        reason: str = "",
        filter: str | None = None,
        discard: bool = False,
        index: int | None = None,
    ) -> list[int]:
        """Take ``n`` exposures of ``imgtype`` (``BIAS``, ``DARK``,
        ``FLAT``) of ``exptime`` seconds; return their exposure ids.
        ``filter`` is the physical filter for flats. ``discard`` marks
        frames the script will throw away (a simulated camera uses it to
        keep injected faults off them).  ``index`` is the place of the first
        frame among the procedure's kept (or, with ``discard``, discarded)
        frames of this image type: a simulated camera derives the frames'
        noise from it, so that a procedure resumed after a kill re-takes
        identical frames; a real camera ignores it."""
        ...


@runtime_checkable
class RawWaiter(Protocol):
    """Waits until raws are in the repository (the OODS role)."""

    async def wait_for_raws(self, exposures: list[int], detectors: list[int], timeout: float) -> None:
        """Return when every (exposure, detector) raw is ingested; raise
        `TimeoutError` naming the missing ones after ``timeout`` seconds."""
        ...


@dataclasses.dataclass
class JobResult:
    """Outcome of a pipeline job, shaped like an OCPS ``job_result``.

    Attributes
    ----------
    jobId
        Job identifier returned by ``execute``.
    phase
        ``completed``, ``error`` or ``aborted``.
    exit_code
        Exit code of the pipeline run (0 on success).
    output_collection
        Output (CHAINED) collection the job wrote.
    errors
        Error messages (causes) when the job failed.
    seconds
        Wall time of the job.
    """

    jobId: str
    phase: str
    exit_code: int
    output_collection: str | None = None
    errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the job completed successfully."""
        return self.phase == "completed" and self.exit_code == 0

    def as_ocps(self) -> dict[str, Any]:
        """The OCPS ``job_result`` event payload."""
        return dataclasses.asdict(self)

    @classmethod
    def from_ocps(cls, payload: dict[str, Any]) -> JobResult:
        """Build from an OCPS ``job_result`` payload (unknown keys ignored)."""
        return cls(
            jobId=str(payload["jobId"]),
            phase=str(payload.get("phase", "error")),
            exit_code=int(payload.get("exit_code", 0 if payload.get("phase") == "completed" else 1)),
            output_collection=payload.get("output_collection"),
            errors=list(payload.get("errors", [])),
            seconds=float(payload.get("seconds", 0.0)),
        )


@runtime_checkable
class PipelineService(Protocol):
    """Runs pipelines like OCPS: ``execute`` returns a job id, the result
    comes later.

    A service that can follow its jobs' progress (the local and BPS ones)
    has a ``progress`` attribute (a `ProgressReporter` or None) that the
    caller may set; it is not part of the protocol (OCPS reports no
    progress).
    """

    async def execute(self, pipeline: str, version: str, config: str, data_query: str) -> str:
        """Submit ``pipetask run -p pipeline`` with extra arguments
        ``config`` (e.g. ``-j 8 -i COLLECTIONS -o OUTPUT``) and data query;
        return the job id."""
        ...

    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        """Wait for the job's result; a job still running after ``timeout``
        seconds gives phase ``aborted`` with a timeout error."""
        ...
