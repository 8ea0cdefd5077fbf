"""Ingest of raw camera files into a butler repository.

What is written is what obs_base's raw ingest writes for the same files:

- the header is translated as obs_base translates it (the primary header,
  merged with the first extension only when no translator recognises the
  primary alone; the properties obs_base requires, non-pedantically);
- per exposure, from its first file: the ``group`` and ``day_obs``
  records, then the ``exposure`` record, every field computed as obs_base
  computes it (``exposure_time`` is the requested exposure time, an end
  before the begin is clamped to the begin, the day's timespan starts at
  the day's offset...);
- the ``raw`` dataset (instrument, exposure, detector; storage class
  ``Exposure``) in ``<INSTRUMENT>/raw/all``, with obs_base's deterministic
  dataset ids.

The formatter recorded for a file of the real, full-size ITL layout is
obs_lsst's raw formatter, so that a Science Pipelines user reads the raw
with ``butler.get``; simulated raws at a reduced scale record
`lsst.cpcombined.obs.raw.RawFormatter` (read them with
`~lsst.cpcombined.obs.raw.read_raw_file`).

Ingest only needs the instrument's records, whoever registered them
(obs_lsst or cp_combined).  It validates every file first (readable FITS,
a raw file of one of the instruments, translatable header, registered
instrument/detector/filter, readable pixels), then registers everything in
one transaction per RUN.  Re-ingesting the same file is a no-op; a
*different* file for an already-ingested (exposure, detector) is an error.
When any file is bad, nothing at all is registered (unless ``skip_bad`` is
set, in which case only the good files are ingested and the bad ones
reported).
"""

from __future__ import annotations

__all__ = (
    "OPTIONAL_PROPERTIES",
    "REQUIRED_PROPERTIES",
    "IngestError",
    "IngestResult",
    "RawFileInfo",
    "day_obs_record",
    "exposure_record",
    "ingest_raws",
    "inspect_raw_file",
    "raw_dataset_type",
    "translate_header",
    "translate_raw_header",
)

import dataclasses
import glob
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import astropy.units as u
from astro_metadata_translator import ObservationInfo

from lsst.daf.butler import (
    Butler,
    DatasetIdGenEnum,
    DatasetRef,
    DatasetType,
    DimensionRecord,
    DimensionUniverse,
    FileDataset,
    Timespan,
)
from lsst.daf.butler.registry import ConflictingDefinitionError

from ..repo.collections import collection_exists, raw_collection
from .camera import AmpLayout
from .instrument import get_instrument
from .raw import (
    RawFormatError,
    RawFormatter,
    read_hdu_header,
    read_primary_header,
    read_raw_file,
    read_raw_layout,
)
from .translators import CpComCamTranslator, CpLatissTranslator

_LOG = logging.getLogger(__name__)

#: Our translator of each instrument.
_TRANSLATORS = {"LATISS": CpLatissTranslator, "LSSTComCam": CpComCamTranslator}

#: Properties obs_base's ingest requires of a header translation.
REQUIRED_PROPERTIES = frozenset(
    {
        "datetime_begin",
        "datetime_end",
        "detector_num",
        "exposure_group",
        "exposure_id",
        "exposure_time_requested",
        "group_counter_end",
        "group_counter_start",
        "has_simulated_content",
        "instrument",
        "observation_id",
        "observation_type",
        "observing_day",
        "physical_filter",
    }
)
#: Properties obs_base's ingest also uses when they translate (left `None` otherwise).
OPTIONAL_PROPERTIES = frozenset(
    {
        "altaz_begin",
        "boresight_rotation_coord",
        "boresight_rotation_angle",
        "dark_time",
        "tracking_radec",
        "object",
        "observation_counter",
        "observation_reason",
        "observing_day_offset",
        "science_program",
        "visit_id",
        "can_see_sky",
    }
)


class IngestError(RuntimeError):
    """One or more files could not be ingested (nothing was registered)."""


def raw_dataset_type(universe: Butler | DimensionUniverse) -> DatasetType:
    """The ``raw`` dataset type as obs_base registers it (instrument,
    exposure, detector; storage class ``Exposure``)."""
    if isinstance(universe, Butler):
        universe = universe.dimensions
    return DatasetType(
        "raw",
        dimensions=("instrument", "exposure", "detector"),
        storageClass="Exposure",
        universe=universe,
    )


@dataclasses.dataclass
class RawFileInfo:
    """What ingest learned about one file."""

    path: str
    obs_info: ObservationInfo
    instrument: str
    detector: int
    exposure: int
    layout: AmpLayout

    @property
    def data_id(self) -> dict[str, object]:
        """Butler data ID of the file's raw dataset."""
        return {"instrument": self.instrument, "exposure": self.exposure, "detector": self.detector}

    @property
    def formatter(self) -> type[RawFormatter]:
        """Formatter recorded in the datastore: obs_lsst's for the real
        full-size layout, `RawFormatter` for a reduced-scale simulation."""
        if self.layout == AmpLayout():
            return get_instrument(self.instrument).full_size_raw_formatter
        return RawFormatter


@dataclasses.dataclass
class IngestResult:
    """Outcome of an ingest."""

    ingested: list[RawFileInfo] = dataclasses.field(default_factory=list)
    already_present: list[RawFileInfo] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def exposures(self) -> list[int]:
        """Exposure ids of the ingested and already-present files, sorted."""
        return sorted({f.exposure for f in self.ingested + self.already_present})


def _our_translator(
    header: Mapping[str, Any], filename: str | None
) -> type[CpLatissTranslator] | type[CpComCamTranslator] | None:
    for translator in _TRANSLATORS.values():
        if translator.can_translate(header, filename=filename):
            return translator
    return None


def translate_header(header: Mapping[str, Any], filename: str | None = None) -> tuple[str, ObservationInfo]:
    """Translate a raw header with the package's translators, as obs_base's
    raw ingest translates it (non-pedantic, the properties ingest uses).

    Parameters
    ----------
    header
        Raw header (not modified; header corrections apply to a copy).
    filename
        File the header comes from, for messages.

    Returns
    -------
    instrument, obs_info
        The instrument whose translator recognised the header, and the
        translation (`REQUIRED_PROPERTIES` and `OPTIONAL_PROPERTIES` only).

    Raises
    ------
    ValueError
        Not a LATISS or LSSTComCam header, or an untranslatable one.
    """
    where = filename or "header"
    translator = _our_translator(header, filename)
    if translator is None:
        raise ValueError(
            f"{where}: not a LATISS or LSSTComCam raw file "
            f"(INSTRUME={header.get('INSTRUME')!r}, OBSID={header.get('OBSID')!r})"
        )
    instrument = translator.supported_instrument
    try:
        obs_info = ObservationInfo(
            dict(header),
            translator_class=translator,
            filename=filename,
            pedantic=False,
            required=set(REQUIRED_PROPERTIES),
            subset=set(REQUIRED_PROPERTIES | OPTIONAL_PROPERTIES),
        )
    except Exception as err:  # translators raise KeyError/ValueError... on bad headers
        raise ValueError(f"{where}: cannot translate the {instrument} header: {err}") from err
    return instrument, obs_info


def translate_raw_header(path: str | os.PathLike) -> tuple[str, ObservationInfo]:
    """Translate a raw file's header as obs_base's raw ingest does: the
    primary header, merged with the first extension's only when no
    translator recognises the primary alone (see `translate_header`).

    Raises
    ------
    RawFormatError
        Not a readable FITS file.
    ValueError
        Not a LATISS or LSSTComCam raw, or an untranslatable header.
    """
    path = os.fspath(path)
    return translate_header(_ingest_header(path), path)


def _ingest_header(path: str) -> dict[str, Any]:
    """The header obs_base's ingest translates: the primary, merged with
    the first extension's when no translator recognises the primary alone."""
    header = read_primary_header(path)
    if _our_translator(header, path) is None:
        header = {**header, **read_hdu_header(path, 1)}
    return header


#: Observation types of Rubin camera raws (obs_lsst's translations of IMGTYPE).
KNOWN_OBSERVATION_TYPES = frozenset(
    {
        "bias", "dark", "flat", "science", "engtest", "acq", "focus", "cwfs", "spot", "stuttered",
        "labobject", "flat_sky", "sflat", "dflat", "dome_flat", "twilight",
    }
)

#: Transfer modes of `ingest_raws` (those of ``butler.ingest`` that place a
#: file in or point to it from the datastore).
TRANSFER_MODES = ("copy", "move", "link", "hardlink", "symlink", "relsymlink", "direct", "auto")


def check_metadata(info: ObservationInfo, header: Mapping[str, Any], path: str, *, allow_odd: bool = False) -> None:
    """Refuse a raw whose header cannot describe a usable exposure.

    Always refused: an explicitly negative ``EXPTIME``, a ``DATE-OBS`` or
    ``DATE-BEG`` that is not a date.  Refused unless ``allow_odd`` (known
    odd real headers, which obs_lsst's translator accepts the same way): no
    or an unknown image type (observation type ``unknown`` or not a Rubin
    image type) and a missing ``EXPTIME`` (exposure time -1 s).

    Raises
    ------
    ValueError
        One line naming the file, the problem and the fix.
    """
    import astropy.time

    for key in ("DATE-OBS", "DATE-BEG"):
        value = header.get(key)
        if value not in (None, ""):
            try:
                astropy.time.Time(str(value), format="isot")
            except ValueError:
                raise ValueError(f"{path}: {key} {value!r} is not a date (YYYY-MM-DDThh:mm:ss)") from None
    exptime = header.get("EXPTIME")
    if exptime is not None:
        try:
            bad = float(exptime) < 0
        except (TypeError, ValueError):
            raise ValueError(f"{path}: EXPTIME {exptime!r} is not a number") from None
        if bad:
            raise ValueError(f"{path}: EXPTIME {exptime} is negative")
    odd = []
    obstype = str(info.observation_type or "unknown")
    declared = next((header.get(k) for k in ("IMGTYPE", "OBSTYPE") if header.get(k) not in (None, "")), None)
    if declared is None or str(declared).strip().upper() == "UNKNOWN" or obstype == "unknown":
        # (obs_lsst's LATISS translator guesses 'bias' for a zero-length
        # exposure without an image type: a guess, not the camera's word.)
        odd.append("no image type (IMGTYPE missing or UNKNOWN)")
    elif obstype not in KNOWN_OBSERVATION_TYPES:
        odd.append(f"unknown image type {header.get('IMGTYPE', obstype)!r}")
    if exptime is None:
        odd.append("no EXPTIME (exposure time -1 s)")
    if odd and not allow_odd:
        raise ValueError(
            f"{path}: {'; '.join(odd)}; ingest it with --allow-odd-headers if this raw is known to be so "
            "(as obs_lsst's translator accepts it)"
        )


def inspect_raw_file(
    path: str, *, instrument: str | None = None, check_pixels: bool = True, allow_odd: bool = False
) -> RawFileInfo:
    """Read and translate one raw file's header, checking it is ingestible.

    Parameters
    ----------
    path
        File to inspect.
    instrument
        Expected instrument; a file of another instrument is an error.
    check_pixels
        Also read every amplifier's pixels (catches truncated/corrupt data).
    allow_odd
        Accept known-odd headers (see `check_metadata`).

    Raises
    ------
    RawFormatError
        Not a readable raw camera file.
    ValueError
        A raw file of another (or unknown) instrument, an untranslatable
        header, or metadata that cannot describe a usable exposure.
    """
    header = _ingest_header(path)
    file_instrument, obs_info = translate_header(header, path)
    check_metadata(obs_info, header, path, allow_odd=allow_odd)
    if instrument is not None and file_instrument != instrument:
        raise ValueError(f"{path}: a {file_instrument} file, but ingest was asked for {instrument}")
    layout = read_raw_layout(path)
    if check_pixels:
        read_raw_file(path)
    return RawFileInfo(
        path=path,
        obs_info=obs_info,
        instrument=file_instrument,
        detector=int(obs_info.detector_num),
        exposure=int(obs_info.exposure_id),
        layout=layout,
    )


def day_obs_record(universe: DimensionUniverse, info: ObservationInfo) -> DimensionRecord:
    """The ``day_obs`` record obs_base writes for an observation: its
    timespan starts at the day's offset (TAI) and lasts one day; without an
    offset it has no timespan."""
    offset = info.observing_day_offset
    timespan = None
    if offset is not None:
        timespan = Timespan.from_day_obs(int(info.observing_day), round(offset.to_value(u.s)))
    return universe["day_obs"].RecordClass(
        instrument=info.instrument, id=int(info.observing_day), timespan=timespan
    )


def _float(value: Any) -> float | None:
    """A plain Python float (database drivers reject numpy scalars)."""
    return None if value is None else float(value)


def exposure_record(universe: DimensionUniverse, info: ObservationInfo) -> DimensionRecord:
    """The ``exposure`` record obs_base writes for an observation."""
    begin, end = info.datetime_begin, info.datetime_end
    if end < begin:
        _LOG.warning("%s: end time %s before begin %s; using the begin", info.observation_id, end, begin)
        end = begin
    tracking_ra = tracking_dec = sky_angle = None
    if info.tracking_radec is not None:
        icrs = info.tracking_radec.icrs
        tracking_ra, tracking_dec = float(icrs.ra.degree), float(icrs.dec.degree)
        if info.boresight_rotation_coord == "sky" and info.boresight_rotation_angle is not None:
            sky_angle = float(info.boresight_rotation_angle.degree)
    azimuth = zenith_angle = None
    if info.altaz_begin is not None:
        azimuth, zenith_angle = float(info.altaz_begin.az.degree), float(info.altaz_begin.zen.degree)
    return universe["exposure"].RecordClass(
        instrument=info.instrument,
        id=int(info.exposure_id),
        obs_id=info.observation_id,
        timespan=Timespan(begin, end),
        # obs_base records the requested exposure time.
        exposure_time=_float(info.exposure_time_requested.to_value(u.s)),
        dark_time=_float(info.dark_time.to_value(u.s)) if info.dark_time is not None else None,
        observation_type=info.observation_type,
        observation_reason=info.observation_reason,
        day_obs=int(info.observing_day),
        seq_num=info.observation_counter,
        physical_filter=info.physical_filter,
        group=info.exposure_group,
        science_program=info.science_program,
        target_name=info.object,
        tracking_ra=tracking_ra,
        tracking_dec=tracking_dec,
        sky_angle=sky_angle,
        azimuth=azimuth,
        zenith_angle=zenith_angle,
        has_simulated=info.has_simulated_content,
        seq_start=info.group_counter_start,
        seq_end=info.group_counter_end,
        can_see_sky=info.can_see_sky,
    )


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_registered(butler: Butler, info: RawFileInfo) -> None:
    """Raise `ValueError` if the file's instrument, detector or filter is not
    registered in the repository."""
    name = info.instrument
    if not list(butler.registry.queryDimensionRecords("instrument", instrument=name)):
        raise ValueError(
            f"{info.path}: instrument {name} is not registered in this repository "
            f"(run: butler register-instrument REPO lsst.cpcombined.{name})"
        )
    registry = butler.registry
    if not list(registry.queryDimensionRecords("detector", instrument=name, detector=info.detector)):
        raise ValueError(f"{info.path}: {name} detector {info.detector} is not registered in the repository")
    flt = info.obs_info.physical_filter
    if not list(registry.queryDimensionRecords("physical_filter", instrument=name, physical_filter=flt)):
        raise ValueError(
            f"{info.path}: physical filter {flt!r} is not one of {name}'s registered filters "
            f"(obs_lsst's list); it cannot be ingested"
        )


def ingest_raws(
    butler: Butler,
    files: Iterable[str | os.PathLike],
    *,
    instrument: str | None = None,
    run: str | None = None,
    transfer: str | None = "copy",
    check_pixels: bool = True,
    skip_bad: bool = False,
    allow_odd: bool = False,
) -> IngestResult:
    """Ingest raw files into ``butler``.

    Parameters
    ----------
    butler
        Writeable butler.
    files
        Raw files to ingest.
    instrument
        If given, every file must be of this instrument.
    run
        RUN collection (default ``<instrument>/raw/all``).
    transfer
        Datastore transfer mode, one of `TRANSFER_MODES`.  Relative file
        names are relative to the current directory.
    check_pixels
        Read every file's pixels before registering anything.
    skip_bad
        Ingest the good files even if some are bad (they are reported in
        `IngestResult.failed`); by default one bad file aborts the whole
        ingest before anything is registered.
    allow_odd
        Accept known-odd headers (no image type, no EXPTIME; see
        `check_metadata`).

    Raises
    ------
    IngestError
        If a file is bad (and ``skip_bad`` is false) or conflicts with what
        is already in the repository.  Nothing has been registered then.
    """
    if transfer not in TRANSFER_MODES:
        raise ValueError(f"unknown transfer mode {transfer!r}; use one of {', '.join(TRANSFER_MODES)}")
    result = IngestResult()
    dataset_type = raw_dataset_type(butler)
    have_type = bool(list(butler.registry.queryDatasetTypes(dataset_type.name)))
    to_ingest: list[RawFileInfo] = []
    seen: dict[tuple, str] = {}
    for f in files:
        # Relative names are relative to the current directory, not to the
        # datastore root (butler.ingest's convention).
        path = os.path.abspath(os.fspath(f))
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{os.fspath(f)}: no such file")
            info = inspect_raw_file(path, instrument=instrument, check_pixels=False, allow_odd=allow_odd)
            _check_registered(butler, info)
            key = (info.instrument, info.exposure, info.detector)
            if key in seen:
                raise ValueError(f"{path}: same exposure/detector as {seen[key]}")
            seen[key] = path
            run_name = run or raw_collection(info.instrument)
            existing = (
                butler.find_dataset(dataset_type, info.data_id, collections=run_name)
                if have_type and collection_exists(butler, run_name)
                else None
            )
            if existing is not None:
                stored = butler.getURI(existing)
                if not (stored.isLocal and _sha256(stored.ospath) == _sha256(path)):
                    raise ValueError(
                        f"{path}: a different file is already ingested for {info.obs_info.observation_id} "
                        f"detector {info.detector} ({stored})"
                    )
                result.already_present.append(info)
                continue
            if check_pixels:
                read_raw_file(path)
            to_ingest.append(info)
        except (RawFormatError, ValueError, FileNotFoundError) as err:
            result.failed[path] = str(err)
        except Exception as err:  # noqa: BLE001 - e.g. CFITSIO errors on corrupt compressed tiles
            result.failed[path] = f"{path}: unreadable ({type(err).__name__}: {err})"
    if result.failed and not skip_bad:
        raise IngestError(
            "Nothing was ingested; bad input:\n" + "\n".join(f"  {msg}" for msg in result.failed.values())
        )
    if not to_ingest:
        return result
    butler.registry.registerDatasetType(dataset_type)

    by_run: dict[str, list[RawFileInfo]] = {}
    for info in to_ingest:
        by_run.setdefault(run or raw_collection(info.instrument), []).append(info)

    universe = butler.dimensions
    for run_name, run_infos in by_run.items():
        # The first file of each exposure describes the exposure (as in obs_base).
        first_of_exposure: dict[tuple[str, int], RawFileInfo] = {}
        for info in run_infos:
            first_of_exposure.setdefault((info.instrument, info.exposure), info)
        # One transaction: a failure leaves no RUN, record or file behind.
        with butler.transaction():
            butler.registry.registerRun(run_name)
            for info in first_of_exposure.values():
                obs = info.obs_info
                butler.registry.syncDimensionData(
                    "group", {"instrument": obs.instrument, "name": obs.exposure_group}
                )
                butler.registry.syncDimensionData("day_obs", day_obs_record(universe, obs))
                try:
                    butler.registry.syncDimensionData("exposure", exposure_record(universe, obs))
                except ConflictingDefinitionError as err:
                    raise IngestError(
                        f"{info.path}: exposure {info.exposure} is already registered with different "
                        f"metadata ({err}); nothing was ingested"
                    ) from err
            datasets = [
                FileDataset(
                    path=info.path,
                    refs=[
                        DatasetRef(
                            dataset_type,
                            info.data_id,
                            run=run_name,
                            id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN,
                        )
                    ],
                    formatter=info.formatter,
                )
                for info in run_infos
            ]
            if transfer not in ("direct", "auto"):
                _remove_orphans(butler, datasets)
            butler.ingest(*datasets, transfer=transfer)
        result.ingested.extend(run_infos)
    for info in result.ingested:
        _LOG.debug("Ingested %s (%s detector %d)", info.path, info.obs_info.observation_id, info.detector)
    for info in result.already_present:
        _LOG.debug("Already ingested, skipped: %s", info.path)
    return result


def _remove_orphans(butler: Butler, datasets: list[FileDataset]) -> None:
    """Remove files left in the datastore, where these datasets are about to
    go, by an ingest that was killed after copying them and before its
    registry transaction committed (files no registry record points to)."""
    try:
        datastore = butler._datastore  # the file template gives where ingest puts each file
        root = datastore.root
        templates = datastore.templates
    except AttributeError:
        return
    if not root.isLocal:
        return
    for dataset in datasets:
        for ref in dataset.refs:
            ref = ref.expanded(butler.registry.expandDataId(ref.dataId))
            target = Path(root.ospath) / templates.getTemplate(ref).format(ref)
            if not target.parent.is_dir():
                continue
            # The template has no extension; ingest keeps the file's own.
            for leftover in target.parent.glob(f"{glob.escape(target.name)}.*"):
                _LOG.warning("Removing %s, left in the datastore by an interrupted ingest", leftover)
                leftover.unlink()
