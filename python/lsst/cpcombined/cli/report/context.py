"""What the report sections read: the run's summary and configuration, its
products (read once, through their files), the verification tables, the
previously certified calibrations, and the simulated truth."""

from __future__ import annotations

__all__ = ("IMAGE_TYPES", "PreviousCalibration", "ReportContext", "finite")

import dataclasses
import datetime
import logging
import math
from collections.abc import Callable
from typing import Any

import astropy.time
import numpy as np

from ...algorithms.isr import amp_regions
from ...obs.camera import AmpLayout, DetectorDescription
from ...obs.instrument import get_instrument
from ...repo.calib_tables import ptc_amp_results, read_defects, read_ptc
from ...repo.exposure_fits import read_exposure_fits
from ...repo.files import read_dataset_file
from .page import Finding

_LOG = logging.getLogger(__name__)

#: Calibration types with an image product.
IMAGE_TYPES = ("bias", "dark", "flat")


@dataclasses.dataclass(frozen=True)
class PreviousCalibration:
    """The calibration the collection served before this run's.

    Attributes
    ----------
    ref
        Its dataset.
    begin, end
        Its stored validity (ISO TAI, ``-inf``/``+inf`` when unbounded).
    collection
        Where it was found.
    """

    ref: Any
    begin: str
    end: str
    collection: str

    @property
    def label(self) -> str:
        """``run [begin, end)``."""
        return f"{self.ref.run} [{self.begin}, {self.end})"


def _time_text(t: Any, unbounded: str) -> str:
    return unbounded if t is None else t.tai.isot


class ReportContext:
    """The data of one run's report, read lazily and cached.

    Parameters
    ----------
    butler
        Butler of the repository.
    summary
        `lsst.cpcombined.script.RunSummary` of the run.
    config
        The validated `lsst.cpcombined.script.ScriptConfig` (or `None`).
    truth
        `lsst.cpcombined.simulation.SimulationTruth` of a simulated run, or
        `None`.
    sessions
        The invocations of a resumed run (each ``{"started": ISO time}``),
        from the run's state.
    """

    def __init__(
        self, butler: Any, summary: Any, config: Any = None, truth: Any = None, sessions: Any = None
    ) -> None:
        self.butler = butler
        #: The invocations of the run (the run state's ``sessions``).
        self.sessions: list[Any] = list(sessions or [])
        self.summary = summary
        self.config = config
        self.truth = truth
        self.instrument: str = summary.instrument
        self.camera = get_instrument(self.instrument).camera_description
        detectors = list(getattr(config, "detectors", None) or [])
        self.detectors: list[int] = [int(d) for d in detectors] or list(self.camera.ids)[:1]
        self.physical_filter: str | None = getattr(config, "filter", None)
        self.calib_collection: str = (
            getattr(config, "calib_collection", None)
            or next((o.calib_collection for o in summary.calibrations.values() if o.calib_collection), None)
            or f"{self.instrument}/calib/daily"
        )
        self.findings: list[Finding] = []
        self._cache: dict[tuple, Any] = {}

    #: Cache entries that stay true for the rest of a run once they exist: a
    #: dataset found in this run's output collection, the pixels of a
    #: stored file, the simulated truth.
    _LASTING = ("ref", "product", "truth")

    def renew(self, summary: Any, config: Any = None, truth: Any = None, sessions: Any = None) -> None:
        """Describe the same run at a later moment (a newer summary):
        keep what was read that cannot have changed since (`_LASTING`
        entries that exist), forget the rest and the findings."""
        kept = {k: v for k, v in self._cache.items() if k[0] in self._LASTING and v is not None}
        self.__init__(self.butler, summary, config, truth, sessions)  # type: ignore[misc]
        self._cache.update(kept)

    # -- helpers -------------------------------------------------------------------

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = make()
            except Exception as err:  # a missing product is reported, not fatal
                _LOG.info("Report: %s not available: %s", key, err)
                self._cache[key] = None
        return self._cache[key]

    def add(self, severity: str, text: str, anchor: str = "") -> None:
        """Record a finding for the summary at the top."""
        self.findings.append(Finding(severity, text, anchor))

    def outcome(self, calib_type: str) -> Any:
        """The run's `CalibrationOutcome` of a type, or `None`."""
        return self.summary.calibrations.get(calib_type)

    def detector(self, det: int) -> DetectorDescription:
        """Nominal description of a detector."""
        return self.camera[det]

    def data_id(self, calib_type: str, det: int) -> dict[str, Any]:
        """Data ID of a calibration of one detector."""
        data_id: dict[str, Any] = {"instrument": self.instrument, "detector": det}
        if calib_type == "flat" and self.physical_filter:
            data_id["physical_filter"] = self.physical_filter
        return data_id

    def read(self, ref: Any, reader: Callable[[str], Any]) -> Any:
        """Read a dataset through its file."""
        return read_dataset_file(self.butler.getDeferred(ref), reader)

    @staticmethod
    def regions(shape: tuple[int, ...]) -> dict[str, tuple[slice, slice]]:
        """Amplifier regions of an assembled image of this shape."""
        return amp_regions(AmpLayout.from_detector_shape(tuple(shape[-2:])))

    # -- this run's products ----------------------------------------------------------

    def ref(self, calib_type: str, det: int) -> Any:
        """This run's dataset of a calibration (in its generation
        collection), or `None`."""
        out = self.outcome(calib_type)
        if out is None or not out.generated_collection:
            return None

        def find() -> Any:
            return self.butler.find_dataset(
                calib_type, collections=out.generated_collection, **self.data_id(calib_type, det)
            )

        return self._cached(("ref", calib_type, det), find)

    def product(self, calib_type: str, det: int) -> Any:
        """This run's bias, dark or flat (`lsst.images.MaskedImage`)."""
        ref = self.ref(calib_type, det)
        if ref is None:
            return None
        return self._cached(("product", calib_type, det), lambda: self.read(ref, read_exposure_fits))

    def ptc(self, det: int) -> Any:
        """Per-amp PTC results (`ptc_amp_results`) of this run."""
        ref = self.ref("ptc", det)
        if ref is None:
            return None
        return self._cached(("ptc", det), lambda: ptc_amp_results(self.read(ref, read_ptc)))

    def defects(self, det: int) -> Any:
        """This run's defects table."""
        ref = self.ref("defects", det)
        if ref is None:
            return None
        return self._cached(("defects", det), lambda: self.read(ref, read_defects))

    def defect_sources(self, det: int) -> dict[str, Any]:
        """The defects found in the dark and in the flat
        (``cpcDefectsFromDark``/``cpcDefectsFromFlat`` of this run), when
        they exist."""
        out = self.outcome("defects")
        if out is None or not out.generated_collection:
            return {}

        def get(name: str) -> Any:
            return self.butler.get(
                name, collections=out.generated_collection, instrument=self.instrument, detector=det
            )

        result = {}
        for source, name in (("dark", "cpcDefectsFromDark"), ("flat", "cpcDefectsFromFlat")):
            table = self._cached(("defect_source", name, det), lambda name=name: get(name))
            if table is not None:
                result[source] = table
        return result

    def verify_results(self, calib_type: str) -> Any:
        """The run's ``verify<Type>Results`` table."""
        out = self.outcome(calib_type)
        if out is None or not out.verification_collection:
            return None
        data_id: dict[str, Any] = {"instrument": self.instrument}
        if calib_type == "flat" and self.physical_filter:
            data_id["physical_filter"] = self.physical_filter

        def get() -> Any:
            return self.butler.get(
                f"verify{calib_type.capitalize()}Results", collections=out.verification_collection, **data_id
            )

        return self._cached(("verify", calib_type), get)

    def run_time(self) -> astropy.time.Time:
        """When the run took its data: the run id's time, else now."""
        try:
            stamp = datetime.datetime.strptime(self.summary.run_id[:16], "%Y%m%dT%H%M%SZ")
            return astropy.time.Time(stamp.replace(tzinfo=datetime.UTC)).tai
        except (ValueError, TypeError):
            return astropy.time.Time.now().tai

    def product_time(self, calib_type: str, det: int) -> astropy.time.Time:
        """Mid-time of a product's inputs (``DATE-AVG``), else the run's."""
        if calib_type in IMAGE_TYPES:
            mi = self.product(calib_type, det)
            value = None if mi is None else mi.metadata.get("DATE-AVG")
            if value:
                try:
                    return astropy.time.Time(str(value), format="isot", scale="tai")
                except ValueError:
                    pass
        return self.run_time()

    # -- certification ------------------------------------------------------------------

    def own_runs(self, calib_type: str) -> str | None:
        """Prefix of this run's generation RUN collections of a type."""
        out = self.outcome(calib_type)
        return out.generated_collection if out is not None else None

    def associations(self, calib_type: str, collection: str) -> list[Any]:
        """Certifications (`DatasetAssociation`) of a type in a
        CALIBRATION collection, or the CALIBRATION collections of a chain."""

        def query() -> list[Any]:
            from lsst.daf.butler import CollectionType

            return list(
                self.butler.registry.queryDatasetAssociations(
                    calib_type,
                    collections=[collection],
                    collectionTypes={CollectionType.CALIBRATION},
                    flattenChains=True,
                )
            )

        return self._cached(("assoc", calib_type, collection), query) or []

    def _matches(self, ref: Any, calib_type: str, det: int) -> bool:
        data_id = ref.dataId
        if int(data_id["detector"]) != int(det):
            return False
        if calib_type == "flat" and self.physical_filter:
            return data_id.get("physical_filter") == self.physical_filter
        return True

    def stored_validity(self, calib_type: str, det: int) -> tuple[str, str] | None:
        """The validity range stored for this run's dataset in the
        calibration collection (``-inf``/``+inf`` when unbounded)."""
        ref = self.ref(calib_type, det)
        if ref is None:
            return None
        for assoc in self.associations(calib_type, self.calib_collection):
            if assoc.ref.id == ref.id and assoc.timespan is not None:
                return _time_text(assoc.timespan.begin, "-inf"), _time_text(assoc.timespan.end, "+inf")
        return None

    def previous(self, calib_type: str, det: int) -> PreviousCalibration | None:
        """The calibration the calibration collection served for this run's
        data before this run's certification: excluding this run's datasets,
        the one whose validity contains the time of this run's data, else
        the latest one that began before it.  Looked up in the run's
        calibration collection, then in ``<INSTR>/calib``."""
        own = self.own_runs(calib_type)
        when = self.product_time(calib_type, det)
        for collection in dict.fromkeys([self.calib_collection, f"{self.instrument}/calib"]):
            candidates = []
            for assoc in self.associations(calib_type, collection):
                ref = assoc.ref
                if own and (ref.run == own or ref.run.startswith(own + "/")):
                    continue
                if not self._matches(ref, calib_type, det) or assoc.timespan is None:
                    continue
                candidates.append(assoc)
            if not candidates:
                continue
            containing = [a for a in candidates if a.timespan.contains(when)]

            def began(a: Any) -> float:
                b = a.timespan.begin
                return -math.inf if b is None else float(b.tai.mjd)

            if containing:
                best = max(containing, key=began)
            else:
                before = [a for a in candidates if began(a) <= float(when.mjd)]
                if not before:
                    continue
                best = max(before, key=began)
            return PreviousCalibration(
                best.ref,
                _time_text(best.timespan.begin, "-inf"),
                _time_text(best.timespan.end, "+inf"),
                collection,
            )
        return None

    def previous_product(self, calib_type: str, det: int) -> tuple[PreviousCalibration | None, Any]:
        """The previous calibration (`previous`) and its content: a
        `lsst.images.MaskedImage`, the `ptc_amp_results` table or the
        defects table."""
        prev = self._cached(("previous", calib_type, det), lambda: self.previous(calib_type, det))
        if prev is None:
            return None, None

        def load() -> Any:
            if calib_type in IMAGE_TYPES:
                return self.read(prev.ref, read_exposure_fits)
            if calib_type == "ptc":
                return ptc_amp_results(self.read(prev.ref, read_ptc))
            return self.read(prev.ref, read_defects)

        return prev, self._cached(("previous_product", calib_type, det), load)

    # -- truth ----------------------------------------------------------------------------

    def detector_truth(self, det: int) -> Any:
        """Simulated truth of a detector (`None` for a real run)."""
        if self.truth is None:
            return None
        return self._cached(("truth", det), lambda: self.truth.detector_truth(det))

    def truth_matches(self, shape: tuple[int, ...], det: int) -> bool:
        """Whether the truth describes images of this shape."""
        dt = self.detector_truth(det)
        return dt is not None and tuple(dt.hot_mask.shape) == tuple(shape[-2:])


def finite(values: Any) -> np.ndarray:
    """The finite values of an array, flattened."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]
