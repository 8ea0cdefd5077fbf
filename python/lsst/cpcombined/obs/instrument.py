"""Butler instruments of cp_combined: LATISS and LSSTComCam.

Both are `lsst.pipe.base.Instrument` subclasses, so that
``butler register-instrument REPO lsst.cpcombined.LATISS`` registers the
instrument, its detectors and the physical filters used for flats.
"""

from __future__ import annotations

__all__ = ("CpInstrument", "LATISS", "LSSTComCam", "get_instrument")

import dataclasses
from typing import Any, ClassVar

from lsst.daf.butler import DataId, Registry
from lsst.images.cameras import Detector
from lsst.pipe.base import Instrument

from .camera import AmpLayout, CameraDescription, load_camera_description
from .raw import RawFormatter


@dataclasses.dataclass(frozen=True)
class FilterDefinition:
    """A physical filter and the band it belongs to."""

    physical_filter: str
    band: str


class CpInstrument(Instrument):
    """Base class of the ITL-sensor instruments of cp_combined.

    Subclasses set the class attributes below; the detectors and their
    amplifiers come from the packaged camera description.
    """

    #: Short butler name of the instrument.
    name: ClassVar[str]
    #: Camera code in observation ids (``AT``, ``CC``).
    camera_code: ClassVar[str]
    #: Physical filters registered with the instrument.
    filters: ClassVar[tuple[FilterDefinition, ...]]
    #: Filter used for flats when none is given.
    default_flat_filter: ClassVar[str]
    #: Observing-day offset from UTC midnight, in seconds (day_obs rolls over at this UTC time).
    day_obs_offset_seconds: ClassVar[int] = 12 * 3600
    #: Name the instrument writes in ``INSTRUME``.
    header_instrument: ClassVar[str]
    #: Telescope name written in ``TELESCOP``.
    header_telescope: ClassVar[str]
    #: Default values of the procedure's per-instrument settings.
    default_input_calib_collection: ClassVar[str]
    default_output_calib_collection: ClassVar[str]

    visit_max: ClassVar[int] = 2**31
    exposure_max: ClassVar[int] = 2**42

    @classmethod
    def getName(cls) -> str:
        return cls.name

    @property
    def camera_description(self) -> CameraDescription:
        """Detectors and nominal amplifier values of this instrument."""
        return load_camera_description(self.name)

    def get_detector(self, detector: int | str, layout: AmpLayout | None = None) -> Detector:
        """Describe one detector with `lsst.images.cameras`.

        Parameters
        ----------
        detector
            Detector id or name.
        layout
            Pixel layout (real, full-size layout by default).
        """
        return self.camera_description.detector(detector, layout)

    def getRawFormatter(self, dataId: DataId) -> type[RawFormatter]:
        return RawFormatter

    def filter_band(self, physical_filter: str) -> str:
        """Band of a registered physical filter."""
        for f in self.filters:
            if f.physical_filter == physical_filter:
                return f.band
        raise LookupError(
            f"{self.name} has no physical filter {physical_filter!r}; known: "
            + ", ".join(f.physical_filter for f in self.filters)
        )

    def register(self, registry: Registry, *, update: bool = False) -> None:
        camera = self.camera_description
        detector_max = max(camera.ids) + 1
        with registry.transaction():
            registry.syncDimensionData(
                "instrument",
                {
                    "name": self.name,
                    "detector_max": detector_max,
                    "visit_max": self.visit_max,
                    "exposure_max": self.exposure_max,
                    "class_name": f"{type(self).__module__}.{type(self).__qualname__}",
                },
                update=update,
            )
            for det in camera.detectors:
                registry.syncDimensionData(
                    "detector",
                    {
                        "instrument": self.name,
                        "id": det.id,
                        "full_name": det.name,
                        "name_in_raft": det.sensor,
                        "raft": det.raft,
                        "purpose": "SCIENCE",
                    },
                    update=update,
                )
            for f in self.filters:
                registry.syncDimensionData(
                    "physical_filter",
                    {"instrument": self.name, "name": f.physical_filter, "band": f.band},
                    update=update,
                )

    def make_obs_id(self, controller: str, day_obs: int, seq_num: int) -> str:
        """Observation id as the camera writes it (``AT_O_20261125_000012``)."""
        return f"{self.camera_code}_{controller}_{day_obs:08d}_{seq_num:06d}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())


_LATISS_FILTERS = tuple(
    FilterDefinition(f"{flt}~{grating}", band)
    for flt, band in [
        ("empty", "white"),
        ("SDSSg_65mm", "g"),
        ("SDSSr_65mm", "r"),
        ("SDSSi_65mm", "i"),
        ("SDSSz_65mm", "z"),
        ("SDSSy_65mm", "y"),
        ("BG40_65mm", "g"),
        ("OG550_65mm", "r"),
    ]
    for grating in ("empty", "holo4_003")
) + (FilterDefinition("unknown~unknown", "unknown"),)


class LATISS(CpInstrument):
    """The Rubin Auxiliary Telescope's imager and spectrograph (1 ITL detector)."""

    name = "LATISS"
    camera_code = "AT"
    header_instrument = "LATISS"
    header_telescope = "LSST AuxTelescope"
    filters = _LATISS_FILTERS
    default_flat_filter = "SDSSr_65mm~empty"
    default_input_calib_collection = "LATISS/calib"
    default_output_calib_collection = "LATISS/calib/daily"


class LSSTComCam(CpInstrument):
    """The commissioning camera: one 3 x 3 raft of ITL detectors (R22_S00..S22)."""

    name = "LSSTComCam"
    camera_code = "CC"
    header_instrument = "ComCam"
    header_telescope = "Simonyi Survey Telescope"
    filters = (
        FilterDefinition("u_02", "u"),
        FilterDefinition("g_01", "g"),
        FilterDefinition("r_03", "r"),
        FilterDefinition("i_06", "i"),
        FilterDefinition("z_03", "z"),
        FilterDefinition("y_04", "y"),
        FilterDefinition("empty", "white"),
        FilterDefinition("unknown", "unknown"),
    )
    default_flat_filter = "r_03"
    default_input_calib_collection = "LSSTComCam/calib"
    default_output_calib_collection = "LSSTComCam/calib/daily"


_INSTRUMENTS: dict[str, type[CpInstrument]] = {cls.name: cls for cls in (LATISS, LSSTComCam)}


def get_instrument(name: str) -> CpInstrument:
    """Return the instrument called ``name`` (``LATISS`` or ``LSSTComCam``).

    Raises
    ------
    LookupError
        If the name is not one of cp_combined's instruments.
    """
    try:
        return _INSTRUMENTS[name]()
    except KeyError:
        raise LookupError(f"Unknown instrument {name!r}; expected one of {sorted(_INSTRUMENTS)}") from None
