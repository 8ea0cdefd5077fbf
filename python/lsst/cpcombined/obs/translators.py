"""Header translators (`astro_metadata_translator`) for LATISS and LSSTComCam.

They give the same `~astro_metadata_translator.ObservationInfo` as obs_lsst's
translators for every header the camera has written: exposure ids built from
the observing day, the sequence number and the controller (with the dates
at which the controllers' counters were unified), ``day_obs`` and its offset
(12 h on the mountain, US Pacific time for ComCam in the lab), observation
type and reason, physical filter, detector identity and serial, exposure and
dark times, pointing, and the packed ``detector_exposure_id``.

Header corrections are applied first, through astro_metadata_translator's
``fix_header`` mechanism:

- per-observation correction files ``<instrument>-<obsid>.yaml`` (keywords
  that overwrite the header), searched in ``$METADATA_CORRECTIONS_PATH``,
  then in obs_lsst's corrections directory when obs_lsst is installed, then
  in the package's ``resources/corrections``;
- then each translator's ``fix_header`` rules for the known defects of the
  camera's headers over the years (see `CpLatissTranslator.fix_header` and
  `CpComCamTranslator.fix_header`).

The translators are registered under the names ``CpLATISS`` and
``CpLSSTComCam`` so that they coexist with obs_lsst's own translators.
"""

from __future__ import annotations

__all__ = (
    "CONTROLLERS",
    "DAY_OBS_OFFSET",
    "MAX_EXPOSURE_ID",
    "CpComCamTranslator",
    "CpLatissTranslator",
    "compute_detector_exposure_id",
    "compute_exposure_id",
    "group_name_to_id",
    "unpack_exposure_id",
    "us_pacific_utc_offset",
)

import datetime
import functools
import hashlib
import importlib.util
import logging
import math
import numbers
import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar

import astropy.units as u
from astro_metadata_translator import FitsTranslator, cache_translation
from astro_metadata_translator.translators.helpers import (
    altaz_from_degree_headers,
    is_non_science,
    tracking_from_degree_headers,
)
from astropy.coordinates import ICRS, AltAz, EarthLocation, SkyCoord
from astropy.time import Time, TimeDelta

from .camera import load_camera_description

_LOG = logging.getLogger(__name__)

# -- exposure ids ---------------------------------------------------------------

#: Controller codes in the order that defines their exposure-id offset:
#: observatory control, camera control, phosim, then the simulated
#: observatory control, camera control and image controllers.
CONTROLLERS = "OCHPQS"

#: Controllers whose data are simulated.
SIMULATED_CONTROLLERS = "HPQS"

#: Largest exposure id any translator produces (day_obs 2050-12-31 with the
#: last controller's offset and five digits of sequence number).
MAX_EXPOSURE_ID = 7050123199999

_SEQ_DIGITS = 5
_CONTROLLER_STEP = 10_000_000  # added to YYYYMMDD per controller index: 1000 years

#: Last observing day on which each controller still had a counter of its
#: own; later ids of these controllers carry no offset.
_CONTROLLER_UNIFIED_AFTER = {"C": 20231004, "P": 20250417, "Q": 20250417, "S": 20250417}


def _day_obs_int(day_obs: int | str) -> int:
    """``YYYYMMDD`` as an integer from an int, ``YYYYMMDD``, ``YYYY-MM-DD`` or
    an ISO date-time string."""
    text = str(day_obs).split("T", 1)[0].replace("-", "")
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"malformed day_obs {day_obs!r}: expected YYYYMMDD or YYYY-MM-DD")
    return int(text)


def compute_exposure_id(day_obs: int | str, seq_num: int | str, controller: str | None = None) -> int:
    """Exposure id as the Rubin cameras define it.

    The id is the observing day followed by the five-digit sequence number,
    ``YYYYMMDDnnnnn``.  Controllers other than ``O`` add 1000 years per
    position in `CONTROLLERS` (``C`` +1000, ``H`` +2000, ``P`` +3000...),
    except for ``C`` after 2023-10-04 and ``P``/``Q``/``S`` after
    2025-04-17, whose counters were unified with the observatory's.

    Parameters
    ----------
    day_obs
        Observing day: an integer ``YYYYMMDD`` or a ``YYYYMMDD``,
        ``YYYY-MM-DD`` or ISO date-time string.
    seq_num
        Sequence number within the day (below 100000).
    controller
        Controller code (``CONTRLLR``), or `None` when unknown.

    Raises
    ------
    ValueError
        For a malformed day, an out-of-range sequence number or an
        unknown controller.
    """
    day = _day_obs_int(day_obs)
    seq = int(seq_num)
    if not 0 <= seq < 10**_SEQ_DIGITS:
        raise ValueError(f"sequence number {seq} out of range [0, {10**_SEQ_DIGITS - 1}]")
    if controller is not None and day > _CONTROLLER_UNIFIED_AFTER.get(controller, day):
        controller = None
    if controller is not None:
        index = CONTROLLERS.find(controller) if len(controller) == 1 else -1
        if index < 0:
            raise ValueError(f"unknown controller {controller!r}; expected one of {', '.join(CONTROLLERS)}")
        day += index * _CONTROLLER_STEP
    return day * 10**_SEQ_DIGITS + seq


def unpack_exposure_id(exposure_id: int) -> tuple[int, int, str]:
    """Split an exposure id into ``(day_obs, seq_num, controller)``.

    Ids made without a controller offset come back with controller ``O``.
    """
    day, seq = divmod(int(exposure_id), 10**_SEQ_DIGITS)
    index = day // _CONTROLLER_STEP - 2
    if not 0 <= index < len(CONTROLLERS):
        raise ValueError(f"exposure id {exposure_id} has no valid controller offset")
    return day - index * _CONTROLLER_STEP, seq, CONTROLLERS[index]


# Rubin dimension packing of (exposure, detector), with every controller
# given its own slot (the packing the translators use).
_PACK_DETECTORS = 256
_PACK_SEQ_NUMS = 32768
_PACK_DAYS = 16384
_PACK_CONTROLLERS = 8
_PACK_FIRST_DAY = datetime.date(2010, 1, 1).toordinal()


def _day_ordinal(day_obs: int) -> int:
    year_month, day = divmod(day_obs, 100)
    year, month = divmod(year_month, 100)
    return datetime.date(year, month, day).toordinal()


def compute_detector_exposure_id(exposure_id: int, detector: int) -> int:
    """Pack an exposure id and a detector number into one integer.

    The value is
    ``detector + 256 * (seq_num + 32768 * (days + 16384 * controller))``
    where ``days`` counts from 2010-01-01 and ``controller`` is the index of
    the controller in `CONTROLLERS`; day, sequence number and controller
    come from `unpack_exposure_id`.

    Raises
    ------
    ValueError
        If a component is outside the packer's range.
    """
    day_obs, seq, controller = unpack_exposure_id(exposure_id)
    days = _day_ordinal(day_obs) - _PACK_FIRST_DAY
    if days < 0 or days > _PACK_DAYS:
        raise ValueError(f"day_obs {day_obs} is outside the packable range (2010-01-01 + {_PACK_DAYS} days)")
    if not 0 <= seq < _PACK_SEQ_NUMS:
        raise ValueError(f"seq_num {seq} is outside the packable range [0, {_PACK_SEQ_NUMS})")
    if detector is None or not 0 <= detector < _PACK_DETECTORS:
        raise ValueError(f"detector {detector} is outside the packable range [0, {_PACK_DETECTORS})")
    value = CONTROLLERS.index(controller)
    for size, part in ((_PACK_DAYS, days), (_PACK_SEQ_NUMS, seq), (_PACK_DETECTORS, detector)):
        value = value * size + part
    return value


# -- groups ------------------------------------------------------------------------

_GROUP_DATE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{3})(?:[+#](\d+))?$")
_GROUP_EPOCH = datetime.datetime(2015, 1, 1)


def group_name_to_id(group: str) -> int:
    """Integer id of an exposure group (the ``visit_id`` of the translators).

    - A group that is an integer (the exposure id, when there is no
      ``GROUPID``) is that integer.
    - A group of the form ``YYYY-MM-DDTHH:MM:SS.fff[#N]`` becomes the whole
      seconds since 2015-01-01T00:00 followed by the three digits of the
      fraction and four digits of ``N`` (0 when absent).
    - Any other string becomes the first 14 hex digits of its BLAKE2b
      digest, as an integer, followed by its length on two digits.
    """
    try:
        return int(group)
    except ValueError:
        pass
    match = _GROUP_DATE_RE.match(group)
    if match:
        stamp, fraction, counter = match.groups()
        seconds = int((datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S") - _GROUP_EPOCH).total_seconds())
        return int(f"{seconds}{fraction}{int(counter or 0):04d}")
    digest = int(hashlib.blake2b(group.encode("us-ascii")).hexdigest()[:14], 16)
    return int(f"{digest}{len(group):02d}")


# -- observing day -------------------------------------------------------------

#: Observing day rolls over at 12:00 TAI on the mountain (LSE-400).
DAY_OBS_OFFSET = TimeDelta(12 * 3600, format="sec", scale="tai")


def _nth_sunday(year: int, month: int, n: int) -> datetime.date:
    """The ``n``-th Sunday of a month (``n = -1``: the last one)."""
    if n > 0:
        first = datetime.date(year, month, 1)
        return first + datetime.timedelta(days=(6 - first.weekday()) % 7 + 7 * (n - 1))
    last = datetime.date(year + month // 12, month % 12 + 1, 1) - datetime.timedelta(days=1)
    return last - datetime.timedelta(days=(last.weekday() + 1) % 7)


def us_pacific_utc_offset(when: Time) -> int:
    """Seconds by which US Pacific time is behind UTC at ``when``.

    28800 (PST) or 25200 (PDT).  Daylight time starts at 02:00 PST on the
    second Sunday of March and ends at 02:00 PDT on the first Sunday of
    November (US rules since 2007; before 2007 the first Sunday of April
    and the last Sunday of October).
    """
    utc = when.utc.to_datetime()
    year = utc.year
    if year >= 2007:
        start, end = _nth_sunday(year, 3, 2), _nth_sunday(year, 11, 1)
    else:
        start, end = _nth_sunday(year, 4, 1), _nth_sunday(year, 10, -1)
    two_am = datetime.time(2)
    dst_start = datetime.datetime.combine(start, two_am) + datetime.timedelta(hours=8)
    dst_end = datetime.datetime.combine(end, two_am) + datetime.timedelta(hours=7)
    return 25200 if dst_start <= utc < dst_end else 28800


# -- header corrections ----------------------------------------------------------


@functools.cache
def _obs_lsst_corrections() -> tuple[str, ...]:
    """obs_lsst's directory of per-observation corrections, when obs_lsst is
    installed (located without importing it)."""
    try:
        spec = importlib.util.find_spec("lsst.obs.lsst")
    except (ImportError, ValueError):
        return ()
    if spec is None or not spec.submodule_search_locations:
        return ()
    paths = [os.path.join(p, "resources", "corrections") for p in spec.submodule_search_locations]
    return tuple(p for p in paths if os.path.isdir(p))


# -- translators -----------------------------------------------------------------

#: Where the Simonyi Survey Telescope is, for headers without OBSGEO.
SIMONYI_LOCATION = EarthLocation.from_geodetic(-70.749417, -30.244639, 2663.0)
#: Where the Auxiliary Telescope is, for headers without OBSGEO.
AUXTEL_LOCATION = EarthLocation.from_geodetic(-70.747698, -30.244728, 2663.0)


def _utc(iso: str) -> Time:
    return Time(iso, format="isot", scale="utc")


def _lab_or_non_science(translator: _CpRubinTranslator) -> None:
    """Checker of header defaults: a default is allowed unless this is a
    science observation taken on the mountain (raises `KeyError` then)."""
    try:
        is_non_science(translator)
        return
    except KeyError:
        pass
    if translator.on_mountain():
        raise KeyError(f"{translator._log_prefix}: keyword missing in a science observation on the mountain")


class _CpRubinTranslator(FitsTranslator):
    """What the LATISS and LSSTComCam headers have in common (not registered:
    it has no name)."""

    default_resource_package = "lsst.cpcombined"
    default_resource_root = "resources/corrections/"

    _non_sky_observation_types: ClassVar[tuple[str, ...]] = ("bias", "dark", "flat")
    #: Whether `to_can_see_sky` may fall back on the observation type.
    _can_see_sky_from_obstype: ClassVar[bool] = True
    #: Location used when the header has no usable OBSGEO keywords.
    _fallback_location: ClassVar[EarthLocation] = SIMONYI_LOCATION

    # -- class-level rules --------------------------------------------------------

    def search_paths(self) -> list[str]:
        return [*super().search_paths(), *_obs_lsst_corrections()]

    @classmethod
    def observing_date_to_offset(cls, observing_date: Time) -> TimeDelta | None:
        return DAY_OBS_OFFSET

    @classmethod
    def max_exposure_id(cls) -> int:
        """Largest exposure id of the instrument (registry ``exposure_max``)."""
        return MAX_EXPOSURE_ID

    @classmethod
    def compute_exposure_id(
        cls, day_obs: int | str, seq_num: int | str, controller: str | None = None
    ) -> int:
        """See `lsst.cpcombined.obs.translators.compute_exposure_id`."""
        return compute_exposure_id(day_obs, seq_num, controller)

    @classmethod
    def compute_detector_exposure_id(cls, exposure_id: int, detector_num: int) -> int:
        """See `lsst.cpcombined.obs.translators.compute_detector_exposure_id`."""
        return compute_detector_exposure_id(exposure_id, detector_num)

    # -- helpers -----------------------------------------------------------------

    def _card(self, key: str) -> Any:
        """Value of a defined keyword (marked as used), else `None`."""
        if self.is_key_ok(key):
            self._used_these_cards(key)
            return self._header[key]
        return None

    def _controller(self) -> str | None:
        return self._card("CONTRLLR")

    def on_mountain(self) -> bool:
        """Whether the instrument was on the telescope when this was taken."""
        raise NotImplementedError

    def on_sky(self) -> bool:
        """Whether this is an on-sky observation from the mountain."""
        tracksys = self._card("TRACKSYS")
        if tracksys is not None and str(tracksys).lower() == "local":
            return False
        if self.to_observation_type() in self._non_sky_observation_types:
            return False
        return self.on_mountain()

    # -- identity -----------------------------------------------------------------

    @cache_translation
    def to_exposure_id(self) -> int | None:
        if "CALIB_ID" in self._header:
            self._used_these_cards("CALIB_ID")
            return None
        day_obs, seq_num = self._header["DAYOBS"], self._header["SEQNUM"]
        self._used_these_cards("DAYOBS", "SEQNUM")
        return compute_exposure_id(day_obs, seq_num, self._controller())

    @cache_translation
    def to_exposure_group(self) -> str | None:
        group = self._card("GROUPID")
        if group is None:
            return super().to_exposure_group()
        if isinstance(group, datetime.datetime):  # an unquoted date in a YAML correction
            return group.isoformat(timespec="milliseconds")
        return group

    @cache_translation
    def to_visit_id(self) -> int:
        return group_name_to_id(self.to_exposure_group())

    @cache_translation
    def to_observing_day(self) -> int | None:
        day_obs = self._card("DAYOBS")
        if day_obs is not None:
            return int(day_obs)
        return super().to_observing_day()

    @cache_translation
    def to_observation_counter(self) -> int:
        seq_num = self._card("SEQNUM")
        if seq_num is None:
            _LOG.warning("%s: no SEQNUM; observation counter set to 0", self._log_prefix)
            return 0
        return int(seq_num)

    def _counter_fallback(self) -> int:
        counter = self.to_observation_counter()
        # A zero counter would merge every such exposure into one sequence.
        return counter if counter != 0 else self.to_exposure_id()

    @cache_translation
    def to_group_counter_start(self) -> int:
        current = self._card("CURINDEX")
        if current is None:
            return self._counter_fallback()
        return self.to_observation_counter() - current + 1

    @cache_translation
    def to_group_counter_end(self) -> int:
        if not self.are_keys_ok(["CURINDEX", "MAXINDEX"]):
            return self._counter_fallback()
        self._used_these_cards("CURINDEX", "MAXINDEX")
        return self.to_observation_counter() + self._header["MAXINDEX"] - self._header["CURINDEX"]

    @cache_translation
    def to_has_simulated_content(self) -> bool:
        for key, value in self._header.items():
            if "SIMULATE" in key and value:
                self._used_these_cards(key)
                return True
        controller = self._controller()
        return bool(controller) and controller in SIMULATED_CONTROLLERS

    @cache_translation
    def to_observation_reason(self) -> str:
        for key in ("REASON", "TESTTYPE"):
            value = self._card(key)
            if value is not None:
                return value.lower()
        return super().to_observation_reason()

    # -- detector -------------------------------------------------------------------

    @cache_translation
    def to_detector_exposure_id(self) -> int:
        return self.compute_detector_exposure_id(self.to_exposure_id(), self.to_detector_num())

    # -- times ----------------------------------------------------------------------

    @cache_translation
    def to_datetime_begin(self) -> Time:
        # Always TAI, whatever TIMESYS says; -BEG before -OBS, MJD before ISO.
        for key in ("MJD-BEG", "DATE-BEG", "MJD-OBS", "DATE-OBS"):
            if self.is_key_ok(key):
                self._used_these_cards(key)
                fmt = "mjd" if key.startswith("MJD") else "fits"
                return Time(self._header[key], format=fmt, scale="tai")
        raise KeyError(f"{self._log_prefix}: no MJD-BEG, DATE-BEG, MJD-OBS or DATE-OBS in header")

    @cache_translation
    def to_datetime_end(self) -> Time:
        if self.is_key_ok("DATE-END"):
            # DATE-END is read in the TIMESYS scale (UTC when absent).
            return super().to_datetime_end()
        exposure_time = self.to_exposure_time()
        if exposure_time.to_value(u.s) < 0:
            # An unknown exposure time (-1 s) gives an instantaneous exposure.
            return self.to_datetime_begin()
        return self.to_datetime_begin() + exposure_time

    @cache_translation
    def to_focus_z(self) -> u.Quantity:
        focus = self._card("FOCUSZ")
        if focus is None:
            return super().to_focus_z()
        return float(focus) * u.mm

    # -- environment ----------------------------------------------------------------

    @cache_translation
    def to_temperature(self) -> u.Quantity | None:
        value = self._card("AIRTEMP")
        return None if value is None else value * u.deg_C

    @cache_translation
    def to_pressure(self) -> u.Quantity | None:
        value = self._card("PRESSURE")
        if value is None:
            return None
        # Recorded in Pa at times and hPa at others.
        return value * (u.Pa if value > 10_000 else u.hPa)

    @cache_translation
    def to_relative_humidity(self) -> float | None:
        return self._card("HUMIDITY")

    # -- sky and pointing -------------------------------------------------------------

    @cache_translation
    def to_location(self) -> EarthLocation | None:
        if not self.on_mountain():
            return None
        try:
            return super().to_location()
        except (KeyError, TypeError):
            return self._fallback_location

    @cache_translation
    def to_can_see_sky(self) -> bool | None:
        shuttime = self._card("SHUTTIME")
        if shuttime is not None and shuttime == 0.0:
            return False  # the shutter never opened
        vignetting = self._card("VIGN_MIN")
        if vignetting is not None:
            return {"FULLY": False, "UNKNOWN": None}.get(vignetting, True)
        if self._can_see_sky_from_obstype or self._controller() == "H":
            return super().to_can_see_sky()
        return None

    def _altaz(self, az_key: str, el_key: str) -> AltAz | None:
        if not self.on_mountain():
            return None
        if self._controller() == "H" and not self.are_keys_ok([el_key, az_key]):
            return None
        return altaz_from_degree_headers(
            self, ((el_key, az_key),), self.to_datetime_begin(), max_alt=95.55, min_alt=-5.55
        )

    @cache_translation
    def to_altaz_begin(self) -> AltAz | None:
        return self._altaz("AZSTART", "ELSTART")

    @cache_translation
    def to_altaz_end(self) -> AltAz | None:
        return self._altaz("AZEND", "ELEND")

    @cache_translation
    def to_tracking_radec(self) -> SkyCoord | None:
        # Dark frames may be taken while tracking; biases and flats are not.
        if self.to_observation_type() in set(self._non_sky_observation_types) - {"dark"}:
            return None
        if self.are_keys_ok(["TRACKSYS"]) and self._header["TRACKSYS"] != "RADEC":
            return None
        try:
            if self._header.get("DATE-OBS") == self._header["DATE"]:
                # Dates were repaired from DATE: the RA/Dec keywords are not
                # trustworthy, the AltAz ones are.
                altaz = self.to_altaz_begin()
                return SkyCoord(altaz.transform_to(ICRS()), obstime=altaz.obstime, location=altaz.location)
            return tracking_from_degree_headers(self, ("RADESYS",), (("RASTART", "DECSTART"), ("RA", "DEC")))
        except Exception:
            if self.on_sky():
                raise
            return None

    @cache_translation
    def to_boresight_rotation_coord(self) -> str:
        if not self.on_sky():
            return "unknown"
        self._used_these_cards("ROTCOORD")
        coord = self._header.get("ROTCOORD")
        return "unknown" if coord is None else coord

    @cache_translation
    def to_boresight_airmass(self) -> float | None:
        if not self.on_sky():
            return None
        airmass = self._card("AMSTART")
        if airmass is not None:
            return airmass
        altaz = self.to_altaz_begin()
        if altaz is not None:
            return altaz.secz.to_value()
        _LOG.warning("%s: no airmass for a science observation; using 1", self._log_prefix)
        return 1.0


class CpLatissTranslator(_CpRubinTranslator):
    """Translator for LATISS raw headers (all header conventions since 2018)."""

    name = "CpLATISS"
    supported_instrument = "LATISS"

    _const_map: ClassVar[dict[str, Any]] = {
        "instrument": "LATISS",
        "telescope": "Rubin Auxiliary Telescope",
        # One detector; the header's RAFTBAY (R00) is not used.
        "detector_group": "RXX",
        "detector_name": "S00",
        "detector_num": 0,
    }
    _trivial_map: ClassVar[dict[str, Any]] = {
        "observation_id": (["OBSID", "IMGNAME"], {"default": None, "checker": is_non_science}),
        "detector_serial": ["LSST_NUM", "DETSER"],
        "object": ("OBJECT", {"checker": _lab_or_non_science, "default": "UNKNOWN"}),
        "boresight_rotation_angle": (
            ["ROTPA", "ROTANGLE"],
            {"checker": _lab_or_non_science, "default": float("nan"), "unit": u.deg},
        ),
        "science_program": ("PROGRAM", {"default": "unknown"}),
    }
    _fallback_location = AUXTEL_LOCATION

    #: LATISS was on the telescope from this date.
    ON_TELESCOPE = _utc("2020-01-01T00:00")
    #: The detector was replaced by ITL-3800C-068 on this date.
    DETECTOR_068_SINCE = _utc("2019-06-24T00:00")
    #: Until then the image type was written in GROUPID.
    IMGTYPE_RELIABLE_SINCE = _utc("2019-11-07T00:00")
    #: Until then ``OBJECT`` images were engineering tests.
    OBJECT_IS_SCIENCE_SINCE = _utc("2020-01-27T20:00")
    #: Until then RA and DEC were in radians.
    RADEC_IN_DEGREES_SINCE = _utc("2020-01-28T22:00")
    #: Until then DATE-END could not be trusted.
    DATE_END_RELIABLE_SINCE = _utc("2020-02-01T00:00")
    #: Until then RASTART/DECSTART/RAEND/DECEND used a wrong telescope position.
    RASTART_POSITION_FIXED = _utc("2020-05-01T00:00")
    #: Until then RASTART/RAEND were in hours.
    RASTART_IN_DEGREES_SINCE = _utc("2021-02-11T18:45")
    #: Until then RASTART/RAEND were 37 s (TAI - UTC) late.
    RASTART_CORRECT_SINCE = _utc("2021-02-12T00:00")
    #: Between these dates ROTPA was reported 180 degrees off.
    ROTPA_OFF_BY_180 = (_utc("2020-11-19T00:00"), _utc("2021-10-29T00:00"))
    #: Until then the target of dispersed images started with ``spec:``.
    OBJECT_SPEC_PREFIX_UNTIL = _utc("2022-07-10T00:00")

    @classmethod
    def can_translate(cls, header: Mapping[str, Any], filename: str | None = None) -> bool:
        if header.get("INSTRUME") in ("LSST_ATISS", "LATISS"):
            return True
        # Calibration products keep little more than the detector name.
        return header.get("DETNAME") == "RXX_S00"

    @classmethod
    def fix_header(
        cls, header: MutableMapping[str, Any], instrument: str, obsid: str, filename: str | None = None
    ) -> bool:
        """Repair the known defects of LATISS headers, in place.

        In order:

        - identity of very old files (only ``IMGNAME``): OBSID from the
          observation id, DAYOBS from it (or ``OBS-NITE``), SEQNUM from it;
        - 1970 ``DATE-OBS`` (late 2019): dates copied from ``DATE``/``MJD``
          and the end dates cleared;
        - from 2019-06-24 the detector serial is ITL-3800C-068;
        - before 2020-02-01 ``DATE-END`` is cleared (the end comes from the
          exposure time);
        - before 2019-11-07 the image type is taken from ``GROUPID``;
        - before 2020-01-27T20:00 ``OBJECT`` images are ``ENGTEST``;
        - before 2020-01-28T22:00 ``RA``/``DEC`` are converted from radians;
        - a non-zero ``SHUTTIME`` is cleared (it duplicates ``EXPTIME``);
        - ``OBJECT`` filled in for object images without it, ``spec:``
          removed from targets before 2022-07-10;
        - blank ``RADESYS`` is ICRS, blank ``TRACKSYS`` undefined,
          ``SIDEREAL`` is ``RADEC``;
        - ``RASTART``/``RAEND`` unusable before 2020-05-01, in hours until
          2021-02-11T18:45 and 37 s late until 2021-02-12;
        - ``ROTPA`` 180 degrees off between 2020-11-19 and 2021-10-29;
        - a positive ``OBSGEO-Z`` (the site is in the southern hemisphere)
          is negated.

        Returns
        -------
        modified
            Whether the header was changed.
        """
        label = cls._construct_log_prefix(obsid, filename)
        changed = False

        def set_key(key: str, value: Any, why: str) -> None:
            nonlocal changed
            header[key] = value
            changed = True
            _LOG.debug("%s: %s (%s = %r)", label, why, key, value)

        parts = obsid.split("_", 3) if isinstance(obsid, str) else []
        if "OBSID" not in header:
            set_key("OBSID", obsid, "observation id from IMGNAME")
        if "DAYOBS" not in header:
            day_obs = parts[2] if len(parts) > 2 else None
            if day_obs is None or len(day_obs) != 8:
                day_obs = header.get("OBS-NITE")
            if day_obs:
                set_key("DAYOBS", day_obs, "observing day from the observation id")
        if "SEQNUM" not in header and len(parts) > 3:
            set_key("SEQNUM", int(parts[3]), "sequence number from the observation id")

        date_obs = header.get("DATE-OBS")
        if isinstance(date_obs, str) and date_obs.startswith("1970"):
            header["DATE-OBS"] = header["DATE-BEG"] = header["DATE"]
            header["MJD-OBS"] = header["MJD-BEG"] = header["MJD"]
            header["DATE-END"] = header["MJD-END"] = None
            set_key("DATE-OBS", header["DATE-OBS"], "1970 dates replaced by the file date")

        date = cls(header).to_datetime_begin()

        if date > cls.DETECTOR_068_SINCE:
            set_key("LSST_NUM", "ITL-3800C-068", "detector serial")
        if date < cls.DATE_END_RELIABLE_SINCE and header.get("DATE-END"):
            header["MJD-END"] = None
            set_key("DATE-END", None, "untrustworthy end date cleared")

        if date < cls.IMGTYPE_RELIABLE_SINCE:
            group = header.get("GROUPID")
            if group and not group.startswith("test"):
                imgtype = header.get("IMGTYPE")
                if imgtype:
                    if imgtype == group:
                        header["GROUPID"] = None  # the group was only the image type
                else:
                    if "_" in group:
                        # e.g. dark_0001_0002: the type is the first word, the group stays.
                        imgtype = group.split("_", 1)[0]
                    elif group.upper().startswith("FOCUS") and group.upper() != "FOCUS":
                        imgtype = "FOCUS"
                    else:
                        imgtype = group
                        header["GROUPID"] = None
                    set_key("IMGTYPE", imgtype, "image type from GROUPID")

        if date < cls.OBJECT_IS_SCIENCE_SINCE and header.get("IMGTYPE") == "OBJECT":
            set_key("IMGTYPE", "ENGTEST", "early OBJECT images are engineering tests")

        if date < cls.RADEC_IN_DEGREES_SINCE:
            for key in ("RA", "DEC"):
                if header.get(key) is not None:
                    set_key(key, math.degrees(header[key]), "radians to degrees")

        if header.get("SHUTTIME"):
            set_key("SHUTTIME", None, "SHUTTIME duplicates EXPTIME")

        if "OBJECT" not in header and header.get("IMGTYPE") == "OBJECT":
            set_key("OBJECT", "NOTSET", "object image without OBJECT")
        if date < cls.OBJECT_SPEC_PREFIX_UNTIL and header.get("OBJECT") is not None:
            set_key("OBJECT", header["OBJECT"].replace("spec:", ""), "target prefix removed")

        if header.get("RADESYS", None) == "":
            set_key("RADESYS", "ICRS", "blank RADESYS")
        if "TRACKSYS" in header:
            if header["TRACKSYS"] == "":
                set_key("TRACKSYS", None, "blank TRACKSYS")
            elif header["TRACKSYS"] == "SIDEREAL":
                set_key("TRACKSYS", "RADEC", "SIDEREAL tracking is RADEC")

        # The keywords below are indexed directly: a header of those periods
        # without them stops the repairs here (obs_lsst behaves the same).
        if date < cls.RASTART_POSITION_FIXED:
            for key in ("RASTART", "DECSTART", "RAEND", "DECEND"):
                header[key] = None
            changed = True
        elif date < cls.RASTART_IN_DEGREES_SINCE:
            for key in ("RASTART", "RAEND"):
                if header[key]:
                    header[key] *= 15.0
            changed = True
        if cls.RASTART_POSITION_FIXED < date < cls.RASTART_CORRECT_SINCE:
            for key in ("RASTART", "RAEND"):
                if header[key]:
                    header[key] += 37.0 * 15.0 / 3600.0
            changed = True
        if cls.ROTPA_OFF_BY_180[0] < date < cls.ROTPA_OFF_BY_180[1]:
            set_key("ROTPA", header["ROTPA"] - 180, "rotation angle convention")

        obsgeo_z = header.get("OBSGEO-Z")
        if obsgeo_z and isinstance(obsgeo_z, numbers.Real) and obsgeo_z > 0:
            set_key("OBSGEO-Z", -obsgeo_z, "southern hemisphere")
        return changed

    def on_mountain(self) -> bool:
        return self.to_datetime_begin() > self.ON_TELESCOPE

    @classmethod
    def compute_detector_exposure_id(cls, exposure_id: int, detector_num: int) -> int:
        if detector_num != 0:
            _LOG.warning("LATISS has one detector (0), got detector %s", detector_num)
        return compute_detector_exposure_id(exposure_id, detector_num)

    @cache_translation
    def to_exposure_time(self) -> u.Quantity:
        if self.is_key_ok("EXPTIME"):
            return self.quantity_from_card("EXPTIME", u.s)
        _LOG.warning("%s: no EXPTIME; exposure time set to -1 s", self._log_prefix)
        return -1.0 * u.s

    @cache_translation
    def to_dark_time(self) -> u.Quantity:
        exposure_time = self.to_exposure_time()
        if self.is_key_ok("DARKTIME"):
            dark_time = self.quantity_from_card("DARKTIME", u.s)
            if dark_time >= exposure_time:
                return dark_time
            why = "DARKTIME is shorter than the exposure time"
        else:
            why = "no DARKTIME"
        _LOG.warning("%s: %s; dark time set to the exposure time", self._log_prefix, why)
        return exposure_time

    @cache_translation
    def to_observation_type(self) -> str:
        # OBSTYPE is the documented keyword; IMGTYPE is what was written.
        for key in ("OBSTYPE", "IMGTYPE"):
            if self.is_key_ok(key):
                self._used_these_cards(key)
                obstype = self._header[key].lower()
                if obstype == "object" and not self.on_mountain():
                    return "labobject"  # no sky coordinates in the lab
                return "science" if obstype in ("object", "skyexp") else obstype
        guess = "bias" if self.to_exposure_time() == 0 else "unknown"
        _LOG.warning("%s: no observation type in header; guessing %r", self._log_prefix, guess)
        return guess

    @cache_translation
    def to_physical_filter(self) -> str:
        """``FILTER~GRATING``: each part ``unknown`` when its keyword is not
        defined, ``empty`` for an empty slot (``empty``, ``empty_2``...)."""
        flt = self._card("FILTER")
        if flt is None:
            flt = "unknown"
            if self.to_observation_type() not in ("bias", "dark"):
                _LOG.warning("%s: no FILTER in header", self._log_prefix)
        elif re.match(r"empty_?\d*$", flt.lower()):
            flt = "empty"
        grating = self._card("GRATING")
        if grating is None:
            grating = "unknown"
        elif not grating or grating.lower().startswith("empty"):
            grating = "empty"
        return f"{flt}~{grating}"

    @cache_translation
    def to_altaz_end(self) -> AltAz | None:
        # For a while the end position was written as AAZEND/AELEND, blank.
        if "AELEND" in self._header and "ELEND" not in self._header:
            return None
        return super().to_altaz_end()


class CpComCamTranslator(_CpRubinTranslator):
    """Translator for LSSTComCam raw headers (``INSTRUME`` COMCAM or ComCam
    on the Simonyi or LSST telescope, or LSST_CAMERA with ``TELCODE`` CC)."""

    name = "CpLSSTComCam"
    supported_instrument = "LSSTComCam"

    _const_map: ClassVar[dict[str, Any]] = {
        "instrument": "LSSTComCam",
        "telescope": "Simonyi Survey Telescope",
    }
    _trivial_map: ClassVar[dict[str, Any]] = {
        "detector_group": "RAFTBAY",
        "detector_name": "CCDSLOT",
        "observation_id": "OBSID",
        "exposure_time_requested": ("EXPTIME", {"unit": u.s}),
        "detector_serial": "LSST_NUM",
        "object": ("OBJECT", {"default": "UNKNOWN"}),
        "science_program": (["PROGRAM", "RUNNUM"], {"default": "unknown"}),
        "boresight_rotation_angle": (
            ["ROTPA", "ROTANGLE"],
            {"checker": _lab_or_non_science, "default": 0.0, "unit": u.deg},
        ),
    }
    _can_see_sky_from_obstype = False
    _fallback_location = SIMONYI_LOCATION

    #: The camera left the lab (Tucson) for Chile on this date.
    TO_CHILE = _utc("2020-03-13T00:00")
    #: From this month (YYYYMM) day_obs rolls over at 12:00 TAI, before it
    #: rolled over at midnight US Pacific time.
    CAMERA_SHIP_MONTH = 202003
    #: The camera was on the telescope after this date.
    ON_TELESCOPE = _utc("2024-08-24T00:00")

    @classmethod
    def _detectors(cls):
        return load_camera_description("LSSTComCam")

    @classmethod
    def can_translate(cls, header: Mapping[str, Any], filename: str | None = None) -> bool:
        if "INSTRUME" not in header or "TELESCOP" not in header:
            return False
        instrume = str(header["INSTRUME"]).lower()
        if instrume == "comcam" and header["TELESCOP"] in ("Simonyi Survey Telescope", "LSST"):
            return True
        # Lab data of 2019 call the camera LSST_CAMERA.
        return instrume == "lsst_camera" and header.get("TELCODE") == "CC"

    @classmethod
    def fix_header(
        cls, header: MutableMapping[str, Any], instrument: str, obsid: str, filename: str | None = None
    ) -> bool:
        """Repair the known defects of ComCam headers, in place.

        - no ``FILTER``: ``unknown``; a band (``r``) or blank ``FILTER``:
          ``empty`` once the camera was in Chile, ``r_03`` before;
        - ``INSTRUME`` LSST_CAMERA becomes ComCam;
        - a missing ``LSST_NUM`` comes from the detector slot;
        - a missing or non-numeric ``ROTPA`` is 0.

        Returns
        -------
        modified
            Whether the header was changed.
        """
        label = cls._construct_log_prefix(obsid, filename)
        changed = False
        flt = header.get("FILTER")
        if flt in (None, "r", ""):
            if flt is None:
                header["FILTER"] = "unknown"
            else:
                in_chile = cls(header).to_datetime_begin() > cls.TO_CHILE
                header["FILTER"] = "empty" if in_chile else "r_03"
            _LOG.warning("%s: FILTER %r replaced by %r", label, flt, header["FILTER"])
            changed = True
        if header.get("INSTRUME") == "LSST_CAMERA":
            header["INSTRUME"] = "ComCam"
            changed = True
        if "LSST_NUM" not in header:
            slot = header.get("CCDSLOT")
            serials = {d.sensor: d.serial for d in cls._detectors().detectors}
            if slot in serials:
                header["LSST_NUM"] = serials[slot]
                changed = True
        if not isinstance(header.get("ROTPA"), numbers.Number):
            header["ROTPA"] = 0.0
            _LOG.warning("%s: no numeric ROTPA; set to 0", label)
            changed = True
        return changed

    @classmethod
    def observing_date_to_offset(cls, observing_date: Time) -> TimeDelta | None:
        if int(observing_date.strftime("%Y%m")) >= cls.CAMERA_SHIP_MONTH:
            return DAY_OBS_OFFSET
        return TimeDelta(us_pacific_utc_offset(observing_date), format="sec", scale="tai")

    def on_mountain(self) -> bool:
        if self._controller() == "H":
            return True
        return self.to_datetime_begin() > self.ON_TELESCOPE

    @cache_translation
    def to_detector_num(self) -> int | None:
        name = f"{self.to_detector_group()}_{self.to_detector_name()}"
        try:
            return self._detectors()[name].id
        except KeyError:
            _LOG.warning("%s: %s is not a LSSTComCam detector", self._log_prefix, name)
            return None

    @cache_translation
    def to_observation_type(self) -> str:
        obstype = self._header["IMGTYPE"].lower()
        self._used_these_cards("IMGTYPE")
        return "science" if obstype in ("object", "skyexp") else obstype

    @cache_translation
    def to_physical_filter(self) -> str:
        """Defined ``FILTER``, ``FILTER1``, ``FILTER2`` joined with ``~``
        (``unknown`` when none), ``NONE`` as ``none``, trailing ``~empty``
        parts removed."""
        joined = self._join_keyword_values(["FILTER", "FILTER1", "FILTER2"], delim="~") or "unknown"
        joined = joined.replace("NONE", "none")
        while joined.endswith("~empty"):
            joined = joined.removesuffix("~empty")
        return joined

    @cache_translation
    def to_exposure_time(self) -> u.Quantity:
        # The shutter's open time when it opened; the request otherwise.
        shuttime = self._card("SHUTTIME")
        if shuttime is not None and shuttime > 0.0:
            return shuttime * u.s
        return self.to_exposure_time_requested()

    @cache_translation
    def to_dark_time(self) -> u.Quantity:
        dark_time = self._card("DARKTIME")
        if dark_time is None:
            _LOG.warning("%s: no DARKTIME; dark time set to the exposure time", self._log_prefix)
            return self.to_exposure_time()
        return dark_time * u.s

    @cache_translation
    def to_can_see_sky(self) -> bool | None:
        if not self.on_mountain():
            return False  # lab data
        return super().to_can_see_sky()
