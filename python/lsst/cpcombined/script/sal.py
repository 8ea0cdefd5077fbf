"""ScriptQueue (SAL) adapters: only importable at the summit.

Needs ``lsst.ts.salobj`` and ``lsst.ts.observatory.control``.  The
`BaseScript` subclasses delegate everything to `MakeCalibrationsCore`; the
adapters turn the observatory-control camera and the OCPS remote into the
core's `Camera` and `PipelineService` protocols.  Raws are awaited in the
butler repository (`ButlerRawWaiter`), which the OODS ingests into.

What is tested where: the core, schema and local implementations are tested
anywhere; this module needs a summit-like environment (SAL, Kafka, OCPS,
a camera CSC) and is not exercised by the test suite when SAL is absent.
"""

from __future__ import annotations

__all__ = ("MakeComCamCalibrations", "MakeLATISSCalibrations", "ObservatoryCamera", "OcpsPipelineService")

import json
import time
import types
from typing import Any

from lsst.ts import salobj  # noqa: F401 - fails early where SAL is absent
from lsst.ts.observatory.control.auxtel.latiss import LATISS as LatissControl
from lsst.ts.observatory.control.maintel.comcam import ComCam as ComCamControl

from .core import MakeCalibrationsCore
from .local import ButlerRawWaiter
from .protocols import JobResult


class ObservatoryCamera:
    """`Camera` over an observatory-control camera (``take_imgtype``)."""

    def __init__(self, control: Any, instrument: str) -> None:
        self._control = control
        self._instrument = instrument
        self.read_out_time = float(getattr(control, "read_out_time", 2.3))

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
        kwargs: dict[str, Any] = dict(group_id=group_id, note=note, program=program, reason=reason)
        if imgtype.upper() == "FLAT" and filter:
            if self._instrument == "LATISS":
                flt, _, grating = filter.partition("~")
                kwargs.update(filter=flt, grating=grating or "empty")
            else:
                kwargs["filter"] = filter
        return list(await self._control.take_imgtype(imgtype.upper(), exptime, n, **kwargs))


class OcpsPipelineService:
    """`PipelineService` over the OCPS remote: ``cmd_execute`` with
    ``wait_done=False``, the job id from the in-progress acknowledgement,
    and the ``job_result`` event matched by ``jobId``."""

    def __init__(self, ocps: Any) -> None:
        self._ocps = ocps
        self._results: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}

    async def execute(self, pipeline: str, version: str, config: str, data_query: str) -> str:
        # OCPS chooses the output collection (u/ocps/<job id>): drop -o.
        tokens = config.split()
        cleaned: list[str] = []
        skip = False
        for tok in tokens:
            if skip:
                skip = False
                continue
            if tok in ("-o", "--output"):
                skip = True
                continue
            cleaned.append(tok)
        ack = await self._ocps.cmd_execute.set_start(
            wait_done=False,
            pipeline=pipeline,
            version=version,
            config=" ".join(cleaned),
            data_query=data_query,
        )
        ack = await self._ocps.cmd_execute.next_ackcmd(ack, wait_done=False)
        job_id = str(json.loads(ack.result)["job_id"])
        self._started[job_id] = time.monotonic()
        return job_id

    async def wait_result(self, job_id: str, timeout: float) -> JobResult:
        deadline = time.monotonic() + timeout
        while job_id not in self._results:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return JobResult(
                    jobId=job_id, phase="aborted", exit_code=-1, errors=[f"no job_result after {timeout:g} s"]
                )
            try:
                msg = await self._ocps.evt_job_result.next(flush=False, timeout=remaining)
            except TimeoutError:
                continue
            payload = json.loads(msg.result)
            self._results[str(payload.get("jobId"))] = payload
        payload = dict(self._results.pop(job_id))
        payload.setdefault("output_collection", f"u/ocps/{job_id}")
        payload.setdefault("seconds", time.monotonic() - self._started.get(job_id, time.monotonic()))
        return JobResult.from_ocps(payload)


class _BaseMakeCalibrations(salobj.BaseScript):
    """ScriptQueue script delegating to `MakeCalibrationsCore`."""

    instrument_name: str
    ocps_index: int
    control_class: type

    def __init__(self, index: int) -> None:
        super().__init__(index=index, descr=f"Make {self.instrument_name} combined calibrations.")
        self.ocps = salobj.Remote(self.domain, "OCPS", self.ocps_index)
        self.control = self.control_class(self.domain, log=self.log)
        self.core: MakeCalibrationsCore | None = None

    @classmethod
    def get_schema(cls) -> dict[str, Any]:
        return MakeCalibrationsCore.get_schema(cls.instrument_name)

    async def configure(self, config: types.SimpleNamespace) -> None:
        values = {k: v for k, v in vars(config).items()}
        self.core = MakeCalibrationsCore(
            self.instrument_name,
            camera=ObservatoryCamera(self.control, self.instrument_name),
            raw_waiter=ButlerRawWaiter(
                values.get("repo", f"/repo/{self.instrument_name}"), self.instrument_name
            ),
            pipelines=OcpsPipelineService(self.ocps),
            checkpoint=self.checkpoint,
            pipelines_dir="${CPCOMBINED_DIR}/pipelines",
            progress=self.log.info,
            # OCPS resolves the pipelines' ${...} paths on its own hosts.
            check_pipelines=False,
        )
        await self.core.configure(values)

    def set_metadata(self, metadata: Any) -> None:
        assert self.core is not None
        self.core.set_metadata(metadata)

    async def run(self) -> None:
        assert self.core is not None
        summary = await self.core.run()
        self.log.info("Summary: %s", json.dumps(summary.as_dict(), default=str))
        if not summary.success:
            raise RuntimeError(summary.error or "not every calibration was certified")

    async def cleanup(self) -> None:
        if self.core is not None:
            await self.core.cleanup()


class MakeLATISSCalibrations(_BaseMakeCalibrations):
    """Make LATISS combined calibrations (OCPS index 1)."""

    instrument_name = "LATISS"
    ocps_index = 1
    control_class = LatissControl


class MakeComCamCalibrations(_BaseMakeCalibrations):
    """Make LSSTComCam combined calibrations (OCPS index 2)."""

    instrument_name = "LSSTComCam"
    ocps_index = 2
    control_class = ComCamControl
