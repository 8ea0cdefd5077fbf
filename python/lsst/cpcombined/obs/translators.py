"""Header translators (`astro_metadata_translator`) for LATISS and LSSTComCam.

They turn the primary header of a raw file (merged with its first amplifier
extension, see `lsst.cpcombined.obs.raw.read_raw_header`) into an
`~astro_metadata_translator.ObservationInfo`, from which ingest builds the
butler's exposure records.  They handle the real headers' edge cases:
missing ``EXPTIME`` (reported as -1 s, with a warning), ``IMGTYPE`` absent
or ``UNKNOWN``, ``TESTTYPE`` differing from ``IMGTYPE``, null ``DATE-BEG``,
compressed amplifier HDUs, early-commissioning files without ``CCDSLOT``,
and the three ``INSTRUME`` spellings used by ComCam.

The translators are registered under the names ``CpLATISS`` and
``CpLSSTComCam`` so they can coexist with obs_lsst's own translators.
"""

from __future__ import annotations

__all__ = ("CpComCamTranslator", "CpLatissTranslator", "compute_exposure_id")

import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import astropy.units as u
from astro_metadata_translator import FitsTranslator, cache_translation
from astropy.coordinates import EarthLocation
from astropy.time import Time, TimeDelta

from .camera import load_camera_description

_LOG = logging.getLogger(__name__)

#: The summit, used when the header has no observatory coordinates.
RUBIN_LOCATION = EarthLocation.from_geodetic(-70.749417, -30.244639, 2663.0)

#: Observing day rolls over at 12:00 TAI (LSE-400).
DAY_OBS_OFFSET = TimeDelta(12 * 3600, format="sec", scale="tai")

_EMPTY_RE = re.compile(r"^empty(_?\d*)$", re.IGNORECASE)


def compute_exposure_id(day_obs: int | str, seq_num: int, controller: str | None) -> int:
    """Exposure id as Rubin defines it: ``YYYYMMDD`` × 10^5 + sequence number,
    with 1000 years added for the camera-control (``C``) controller.

    Parameters
    ----------
    day_obs
        Observing day, ``YYYYMMDD`` (or ``YYYY-MM-DD``).
    seq_num
        Sequence number within the day (< 100000).
    controller
        ``O`` (observatory control), ``C`` (camera control) or `None`.

    Raises
    ------
    ValueError
        For a malformed day, a too-large sequence number or an unsupported
        controller.
    """
    day = str(day_obs).split("T")[0].replace("-", "")
    if len(day) != 8 or not day.isdigit():
        raise ValueError(f"malformed day_obs {day_obs!r}")
    if not 0 <= int(seq_num) < 100_000:
        raise ValueError(f"sequence number {seq_num} out of range [0, 99999]")
    day_value = int(day)
    if controller in (None, "O"):
        pass
    elif controller == "C":
        day_value += 1000_00_00
    else:
        raise ValueError(f"unsupported controller {controller!r} (expected 'O' or 'C')")
    return day_value * 100_000 + int(seq_num)


class _CpLsstTranslator(FitsTranslator):
    """Shared translation of Rubin camera headers (not registered: no name)."""

    #: Instrument name reported in `ObservationInfo.instrument`.
    _instrument: ClassVar[str]
    #: ``INSTRUME`` values this translator accepts.
    _header_instruments: ClassVar[tuple[str, ...]]
    #: Camera code in the observation id.
    _camera_code: ClassVar[str]

    _const_map: ClassVar[dict[str, Any]] = {
        "boresight_rotation_coord": "unknown",
        "boresight_rotation_angle": None,
        "boresight_airmass": None,
        "tracking_radec": None,
        "altaz_begin": None,
        "altaz_end": None,
        "temperature": None,
        "pressure": None,
        "relative_humidity": None,
    }
    _trivial_map: ClassVar[dict[str, Any]] = {
        "observation_id": "OBSID",
        "object": ("OBJECT", {"default": "UNKNOWN"}),
        "science_program": ("PROGRAM", {"default": "unknown"}),
    }

    @classmethod
    def can_translate(cls, header: Mapping[str, Any], filename: str | None = None) -> bool:
        instrume = str(header.get("INSTRUME", "")).strip()
        if instrume not in cls._header_instruments:
            return False
        obsid = str(header.get("OBSID", ""))
        code = str(header.get("CAMCODE", header.get("TELCODE", ""))).strip()
        return obsid.startswith(cls._camera_code + "_") or code == cls._camera_code

    # -- helpers --------------------------------------------------------------

    def _get(self, key: str) -> Any:
        """Header value, or `None` when absent or undefined."""
        if self.is_key_ok(key):
            self._used_these_cards(key)
            value = self._header[key]
            return value.strip() if isinstance(value, str) else value
        return None

    def _camera(self):
        return load_camera_description(self._instrument)

    # -- identity ---------------------------------------------------------------

    @cache_translation
    def to_instrument(self) -> str:
        return self._instrument

    @cache_translation
    def to_location(self) -> EarthLocation:
        if all(self.is_key_ok(f"OBSGEO-{c}") for c in "XYZ"):
            return super().to_location()
        if all(self.is_key_ok(k) for k in ("OBS-LONG", "OBS-LAT", "OBS-ELEV")):
            self._used_these_cards("OBS-LONG", "OBS-LAT", "OBS-ELEV")
            return EarthLocation.from_geodetic(
                self._header["OBS-LONG"], self._header["OBS-LAT"], self._header["OBS-ELEV"]
            )
        return RUBIN_LOCATION

    @cache_translation
    def to_exposure_id(self) -> int:
        day_obs = self._get("DAYOBS")
        seq_num = self._get("SEQNUM")
        if day_obs is None or seq_num is None:
            raise KeyError(f"{self._log_prefix}: DAYOBS and SEQNUM are required to form the exposure id")
        return compute_exposure_id(day_obs, int(seq_num), self._get("CONTRLLR"))

    @cache_translation
    def to_visit_id(self) -> int:
        return self.to_exposure_id()

    @cache_translation
    def to_observing_day(self) -> int:
        day_obs = self._get("DAYOBS")
        if day_obs is not None:
            return int(str(day_obs).replace("-", ""))
        return int((self.to_datetime_begin().tai - DAY_OBS_OFFSET).strftime("%Y%m%d"))

    @cache_translation
    def to_observing_day_offset(self) -> TimeDelta:
        return DAY_OBS_OFFSET

    @cache_translation
    def to_observation_counter(self) -> int:
        seq_num = self._get("SEQNUM")
        if seq_num is None:
            _LOG.warning("%s: no SEQNUM; observation counter set to 0", self._log_prefix)
            return 0
        return int(seq_num)

    @cache_translation
    def to_group_counter_start(self) -> int:
        return self.to_observation_counter()

    @cache_translation
    def to_group_counter_end(self) -> int:
        return self.to_observation_counter()

    @cache_translation
    def to_exposure_group(self) -> str:
        group = self._get("GROUPID")
        return str(group) if group else str(self.to_exposure_id())

    @cache_translation
    def to_has_simulated_content(self) -> bool:
        return bool(self._get("CPSIM"))

    # -- observation type -------------------------------------------------------

    @cache_translation
    def to_observation_type(self) -> str:
        imgtype = self._get("IMGTYPE")
        if not imgtype:
            return "unknown"
        obstype = str(imgtype).lower()
        if obstype in ("object", "skyexp"):
            return "science"
        return obstype

    @cache_translation
    def to_observation_reason(self) -> str:
        for key in ("REASON", "TESTTYPE"):
            value = self._get(key)
            if value:
                return str(value).lower()
        return self.to_observation_type()

    @cache_translation
    def to_can_see_sky(self) -> bool | None:
        obstype = self.to_observation_type()
        if obstype in ("bias", "dark", "flat"):
            return False
        if obstype == "unknown":
            return None
        return True

    # -- times --------------------------------------------------------------------

    def _time(self, key: str) -> Time | None:
        value = self._get(key)
        if not value:
            return None
        scale = str(self._header.get("TIMESYS", "TAI")).strip().lower() or "tai"
        return Time(value, format="isot", scale=scale)

    @cache_translation
    def to_datetime_begin(self) -> Time:
        for key in ("DATE-BEG", "DATE-OBS"):
            t = self._time(key)
            if t is not None:
                return t
        if self.is_key_ok("MJD-OBS"):
            self._used_these_cards("MJD-OBS")
            return Time(self._header["MJD-OBS"], format="mjd", scale="tai")
        raise KeyError(f"{self._log_prefix}: no DATE-BEG, DATE-OBS or MJD-OBS")

    @cache_translation
    def to_datetime_end(self) -> Time:
        end = self._time("DATE-END")
        if end is not None:
            return end
        exptime = self.to_exposure_time().to_value(u.s)
        return self.to_datetime_begin() + TimeDelta(max(exptime, 0.0), format="sec")

    @cache_translation
    def to_exposure_time(self) -> u.Quantity:
        exptime = self._get("EXPTIME")
        if exptime is None:
            _LOG.warning("%s: no EXPTIME in header; exposure time set to -1 s", self._log_prefix)
            return -1.0 * u.s
        return float(exptime) * u.s

    @cache_translation
    def to_exposure_time_requested(self) -> u.Quantity:
        return self.to_exposure_time()

    @cache_translation
    def to_dark_time(self) -> u.Quantity:
        darktime = self._get("DARKTIME")
        if darktime is None:
            _LOG.warning("%s: no DARKTIME in header; using the exposure time", self._log_prefix)
            return self.to_exposure_time()
        return float(darktime) * u.s

    # -- detector -----------------------------------------------------------------

    @cache_translation
    def to_detector_group(self) -> str:
        raft = self._get("RAFTBAY")
        if raft:
            return str(raft)
        return self._camera().detectors[0].raft

    @cache_translation
    def to_detector_name(self) -> str:
        slot = self._get("CCDSLOT")
        if slot:
            return str(slot)
        camera = self._camera()
        if len(camera.detectors) == 1:
            return camera.detectors[0].sensor
        raise KeyError(f"{self._log_prefix}: no CCDSLOT: cannot tell which detector this is")

    @cache_translation
    def to_detector_unique_name(self) -> str:
        return f"{self.to_detector_group()}_{self.to_detector_name()}"

    @cache_translation
    def to_detector_num(self) -> int:
        name = self.to_detector_unique_name()
        try:
            return self._camera()[name].id
        except KeyError:
            raise KeyError(f"{self._log_prefix}: detector {name} is not a {self._instrument} detector") from None

    @cache_translation
    def to_detector_serial(self) -> str:
        serial = self._get("LSST_NUM")
        if serial:
            return str(serial)
        return self._camera()[self.to_detector_num()].serial

    @cache_translation
    def to_detector_exposure_id(self) -> int:
        return self.to_exposure_id() * 1000 + self.to_detector_num()

    @cache_translation
    def to_focus_z(self) -> u.Quantity:
        focus = self._get("FOCUSZ")
        return (float(focus) if focus is not None else 0.0) * u.mm

    @cache_translation
    def to_physical_filter(self) -> str:
        raise NotImplementedError


def _filter_name(value: Any) -> str | None:
    """Normalise one filter/grating header value (``empty_1`` → ``empty``)."""
    if value is None or str(value).strip() == "":
        return None
    value = str(value).strip()
    return "empty" if _EMPTY_RE.match(value) else value


class CpLatissTranslator(_CpLsstTranslator):
    """Translator for LATISS raw headers."""

    name = "CpLATISS"
    supported_instrument = "LATISS"
    _instrument = "LATISS"
    _header_instruments = ("LATISS", "LSST_ATISS")
    _camera_code = "AT"
    _const_map = dict(_CpLsstTranslator._const_map, telescope="Rubin Auxiliary Telescope")

    @cache_translation
    def to_detector_group(self) -> str:
        # The header says RAFTBAY R00, but the single LATISS raft is RXX.
        return "RXX"

    @cache_translation
    def to_physical_filter(self) -> str:
        flt = _filter_name(self._get("FILTER"))
        grating = _filter_name(self._get("GRATING"))
        if flt is None and grating is None:
            if self.to_observation_type() not in ("bias", "dark", "unknown"):
                _LOG.warning("%s: no FILTER/GRATING in header", self._log_prefix)
            return "unknown~unknown"
        return f"{flt or 'unknown'}~{grating or 'unknown'}"


class CpComCamTranslator(_CpLsstTranslator):
    """Translator for LSSTComCam raw headers (``INSTRUME`` COMCAM, ComCam or
    LSST_CAMERA with a ``CC`` observation id)."""

    name = "CpLSSTComCam"
    supported_instrument = "LSSTComCam"
    _instrument = "LSSTComCam"
    _header_instruments = ("COMCAM", "ComCam", "LSSTComCam", "LSST_CAMERA")
    _camera_code = "CC"
    _const_map = dict(_CpLsstTranslator._const_map, telescope="Simonyi Survey Telescope")

    @cache_translation
    def to_physical_filter(self) -> str:
        flt = _filter_name(self._get("FILTER"))
        if flt is None:
            if self.to_observation_type() not in ("bias", "dark", "unknown"):
                _LOG.warning("%s: no FILTER in header", self._log_prefix)
            return "unknown"
        return flt
