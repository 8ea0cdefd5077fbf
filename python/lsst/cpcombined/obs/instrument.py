"""Butler instruments of cp_combined: LATISS and LSSTComCam.

Both are `lsst.pipe.base.Instrument` subclasses, so that
``butler register-instrument REPO lsst.cpcombined.LATISS`` registers the
instrument, its detectors and its physical filters.  The records written are
exactly obs_lsst's (`CpInstrument.registry_records`): a repository
registered by obs_lsst and one registered by cp_combined hold the same
records, and registering over either is a no-op.  The instrument record
names obs_lsst's class (``lsst.obs.lsst.Latiss``) because it describes
obs_lsst's instrument; the package itself never loads an instrument class
from the registry.
"""

from __future__ import annotations

__all__ = ("CpInstrument", "InstrumentConflictError", "LATISS", "LSSTComCam", "get_instrument", "instruments")

from collections.abc import Iterable
from typing import Any, ClassVar

from lsst.daf.butler import DataId, Registry
from lsst.daf.butler.registry import ConflictingDefinitionError
from lsst.images.cameras import Detector
from lsst.pipe.base import Instrument

from .camera import AmpLayout, CameraDescription, DetectorDescription, load_camera_description
from .filters import LATISS_FILTERS, LSSTCOMCAM_FILTERS, FilterDefinition
from .raw import LatissRawFormatter, LsstComCamRawFormatter, RawFormatter
from .translators import MAX_EXPOSURE_ID, CpComCamTranslator, CpLatissTranslator

#: How many differences a conflict message lists.
_MAX_LISTED = 3


class InstrumentConflictError(ConflictingDefinitionError):
    """The repository already holds records of the instrument that differ
    from obs_lsst's (nothing was changed)."""


class CpInstrument(Instrument):
    """Base class of the ITL-sensor instruments of cp_combined.

    Subclasses set the class attributes below; the detectors and their
    amplifiers come from the packaged camera description.
    """

    #: Short butler name of the instrument.
    name: ClassVar[str]
    #: Class obs_lsst registers the instrument with (``instrument.class_name``).
    obs_lsst_class_name: ClassVar[str]
    #: Header translator of the instrument's raws.
    translator_class: ClassVar[type[CpLatissTranslator] | type[CpComCamTranslator]]
    #: Camera code in observation ids (``AT``, ``CC``).
    camera_code: ClassVar[str]
    #: Physical filters registered with the instrument (obs_lsst's list).
    filters: ClassVar[tuple[FilterDefinition, ...]]
    #: Filter used for flats when none is given.
    default_flat_filter: ClassVar[str]
    #: Name the instrument writes in ``INSTRUME``.
    header_instrument: ClassVar[str]
    #: Telescope name written in ``TELESCOP``.
    header_telescope: ClassVar[str]
    #: Default values of the procedure's per-instrument settings.
    default_input_calib_collection: ClassVar[str]
    default_output_calib_collection: ClassVar[str]

    #: Registry ``detector_max``.
    detector_max: ClassVar[int]
    #: Registry ``visit_max`` and ``exposure_max`` (the translators' largest exposure id).
    visit_max: ClassVar[int] = MAX_EXPOSURE_ID
    exposure_max: ClassVar[int] = MAX_EXPOSURE_ID
    #: Registry ``visit_system``: 2, visits by sequence start/end (obs_base ``VisitSystem.BY_SEQ_START_END``).
    visit_system: ClassVar[int] = 2
    #: Raw formatter recorded for full-size raws (records obs_lsst's formatter name).
    full_size_raw_formatter: ClassVar[type[RawFormatter]]

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
        return self.full_size_raw_formatter

    def filter_band(self, physical_filter: str) -> str:
        """Band of a registered physical filter.

        Raises
        ------
        LookupError
            If ``physical_filter`` is not one of the instrument's filters.
        """
        band = _bands(type(self)).get(physical_filter)
        if band is None:
            raise LookupError(
                f"{self.name} has no physical filter {physical_filter!r} "
                f"(e.g. {self.default_flat_filter!r}; the {len(self.filters)} names are obs_lsst's)"
            )
        return band

    # -- registry records ------------------------------------------------------------

    def _detector_record(self, det: DetectorDescription) -> dict[str, Any]:
        return {
            "instrument": self.name,
            "id": det.id,
            "full_name": det.name,
            "name_in_raft": det.sensor,
            "raft": det.raft,
            "purpose": "SCIENCE",
        }

    def registry_records(self) -> dict[str, list[dict[str, Any]]]:
        """The records `register` writes, per dimension element, in order:
        the instrument, its detectors, its physical filters (obs_lsst's)."""
        return {
            "instrument": [
                {
                    "name": self.name,
                    "detector_max": self.detector_max,
                    "visit_max": self.visit_max,
                    "exposure_max": self.exposure_max,
                    "class_name": self.obs_lsst_class_name,
                    "visit_system": self.visit_system,
                }
            ],
            "detector": [self._detector_record(det) for det in self.camera_description.detectors],
            "physical_filter": [
                {"instrument": self.name, "name": f.physical_filter, "band": f.band} for f in self.filters
            ],
        }

    def register(self, registry: Registry, *, update: bool = False) -> None:
        """Write the instrument's records into ``registry``.

        Records already present and identical are left alone (registering
        twice, or over records written by obs_lsst, does nothing); missing
        records are added in one transaction.

        Parameters
        ----------
        registry
            Registry of the repository.
        update
            Overwrite records that differ from obs_lsst's instead of
            refusing.

        Raises
        ------
        InstrumentConflictError
            If a record of the repository differs from obs_lsst's (and
            ``update`` is false).  Nothing is written then.
        """
        wanted = self.registry_records()
        if update:
            with registry.transaction():
                for element, records in wanted.items():
                    for record in records:
                        registry.syncDimensionData(element, record, update=True)
            return
        missing, differences = self._compare(registry, wanted)
        if differences:
            listed = "; ".join(differences[:_MAX_LISTED])
            more = f" (and {len(differences) - _MAX_LISTED} more)" if len(differences) > _MAX_LISTED else ""
            raise InstrumentConflictError(
                f"{self.name} is registered in this repository with records that differ from obs_lsst's: "
                f"{listed}{more}. Nothing was changed. Use a repository whose {self.name} records were "
                f"written by obs_lsst or cp_combined, or overwrite them with "
                f"'butler register-instrument --update REPO lsst.cpcombined.{self.name}'."
            )
        if not any(missing.values()):
            return
        with registry.transaction():
            for element, records in missing.items():
                if records:
                    registry.insertDimensionData(element, *records)

    def _compare(
        self, registry: Registry, wanted: dict[str, list[dict[str, Any]]]
    ) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
        """Records of ``wanted`` missing from the registry, and a description
        of every field that differs from what the registry holds."""
        missing: dict[str, list[dict[str, Any]]] = {}
        differences: list[str] = []
        for element, records in wanted.items():
            existing = {
                _key(element, rec.toDict()): rec.toDict()
                for rec in registry.queryDimensionRecords(element, instrument=self.name)
            }
            missing[element] = []
            for record in records:
                have = existing.get(_key(element, record))
                if have is None:
                    missing[element].append(record)
                    continue
                for field, value in record.items():
                    if have.get(field) != value:
                        differences.append(
                            f"{_label(element, record)}: {field} is {have.get(field)!r} in the repository, "
                            f"obs_lsst's is {value!r}"
                        )
            if element == "detector":
                # A new detector must not take the name of an existing one.
                names = {rec["full_name"]: rec["id"] for rec in existing.values()}
                for record in missing[element]:
                    if record["full_name"] in names:
                        differences.append(
                            f"detector {record['id']}: name {record['full_name']} is detector "
                            f"{names[record['full_name']]} in the repository"
                        )
        return missing, differences

    # -- identity helpers ------------------------------------------------------------

    def make_obs_id(self, controller: str, day_obs: int, seq_num: int) -> str:
        """Observation id as the camera writes it (``AT_O_20261125_000012``)."""
        return f"{self.camera_code}_{controller}_{day_obs:08d}_{seq_num:06d}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())


def _key(element: str, record: dict[str, Any]) -> tuple[Any, ...]:
    if element == "instrument":
        return (record["name"],)
    fields = ("instrument", "id") if element == "detector" else ("instrument", "name")
    return tuple(record[f] for f in fields)


def _label(element: str, record: dict[str, Any]) -> str:
    if element == "instrument":
        return f"instrument {record['name']}"
    if element == "detector":
        return f"detector {record['id']} ({record['full_name']})"
    return f"physical_filter {record['name']}"


_BANDS: dict[type, dict[str, str]] = {}


def _bands(cls: type[CpInstrument]) -> dict[str, str]:
    if cls not in _BANDS:
        _BANDS[cls] = {f.physical_filter: f.band for f in cls.filters}
    return _BANDS[cls]


class LATISS(CpInstrument):
    """The Rubin Auxiliary Telescope's imager and spectrograph (1 ITL detector)."""

    name = "LATISS"
    obs_lsst_class_name = "lsst.obs.lsst.Latiss"
    translator_class = CpLatissTranslator
    camera_code = "AT"
    header_instrument = "LATISS"
    header_telescope = "LSST AuxTelescope"
    filters = LATISS_FILTERS
    default_flat_filter = "SDSSr_65mm~empty"
    default_input_calib_collection = "LATISS/calib"
    default_output_calib_collection = "LATISS/calib/daily"
    detector_max = 1
    full_size_raw_formatter = LatissRawFormatter

    def _detector_record(self, det: DetectorDescription) -> dict[str, Any]:
        # One detector and no raft: obs_lsst records the full name as its name in the raft.
        return {**super()._detector_record(det), "raft": None, "name_in_raft": det.name}


class LSSTComCam(CpInstrument):
    """The commissioning camera: one 3 x 3 raft of ITL detectors (R22_S00..S22)."""

    name = "LSSTComCam"
    obs_lsst_class_name = "lsst.obs.lsst.LsstComCam"
    translator_class = CpComCamTranslator
    camera_code = "CC"
    header_instrument = "ComCam"
    header_telescope = "Simonyi Survey Telescope"
    filters = LSSTCOMCAM_FILTERS
    default_flat_filter = "r_03"
    default_input_calib_collection = "LSSTComCam/calib"
    default_output_calib_collection = "LSSTComCam/calib/daily"
    detector_max = 1000
    full_size_raw_formatter = LsstComCamRawFormatter


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


def instruments() -> Iterable[CpInstrument]:
    """One instance of each of cp_combined's instruments."""
    return [cls() for cls in _INSTRUMENTS.values()]
