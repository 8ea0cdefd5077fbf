"""Ingest of raw camera files into a butler repository.

`ingest_raws` validates every file first (readable FITS, a raw file of one
of our instruments, translatable header, registered instrument/detector/
filter, readable pixels), then registers exposures and datasets in a single
transaction.  Re-ingesting the same file is a no-op; a *different* file for
an already-ingested (exposure, detector) is an error.  When any file is
bad, nothing at all is registered (unless ``skip_bad`` is set, in which case
only the good files are ingested and the bad ones reported).
"""

from __future__ import annotations

__all__ = ("IngestError", "IngestResult", "RawFileInfo", "ingest_raws", "inspect_raw_file", "raw_dataset_type")

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable
from typing import Any

import astropy.units as u
from astro_metadata_translator import ObservationInfo
from astropy.time import Time, TimeDelta

from lsst.daf.butler import (
    Butler,
    DatasetRef,
    DatasetType,
    DimensionRecord,
    FileDataset,
    Timespan,
)
from lsst.daf.butler.registry import ConflictingDefinitionError

from ..repo.collections import collection_exists, raw_collection
from . import translators  # noqa: F401  (registers the translators)
from .instrument import get_instrument
from .raw import RawFormatError, read_primary_header, read_raw_file, read_raw_header

_LOG = logging.getLogger(__name__)

_OUR_TRANSLATORS = {
    translators.CpLatissTranslator.name: "LATISS",
    translators.CpComCamTranslator.name: "LSSTComCam",
}


class IngestError(RuntimeError):
    """One or more files could not be ingested (nothing was registered)."""


def raw_dataset_type(butler: Butler) -> DatasetType:
    """The ``raw`` dataset type as obs_base registers it (instrument,
    exposure, detector; storage class ``Exposure``)."""
    return DatasetType(
        "raw",
        dimensions=("instrument", "exposure", "detector"),
        storageClass="Exposure",
        universe=butler.dimensions,
    )


@dataclasses.dataclass
class RawFileInfo:
    """What ingest learned about one file."""

    path: str
    obs_info: ObservationInfo
    instrument: str
    detector: int
    exposure: int

    @property
    def data_id(self) -> dict[str, object]:
        """Butler data ID of the file's raw dataset."""
        return {"instrument": self.instrument, "exposure": self.exposure, "detector": self.detector}


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


def inspect_raw_file(path: str, *, instrument: str | None = None, check_pixels: bool = True) -> RawFileInfo:
    """Read and translate one raw file's header, checking it is ingestible.

    Parameters
    ----------
    path
        File to inspect.
    instrument
        Expected instrument; a file of another instrument is an error.
    check_pixels
        Also read every amplifier's pixels (catches truncated/corrupt data).

    Raises
    ------
    RawFormatError
        Not a readable raw camera file.
    ValueError
        A raw file of another (or unknown) instrument, or an untranslatable
        header.
    """
    primary = read_primary_header(path)
    translator = next(
        (
            t
            for t in (translators.CpLatissTranslator, translators.CpComCamTranslator)
            if t.can_translate(primary, filename=path)
        ),
        None,
    )
    if translator is None:
        instrume = primary.get("INSTRUME", "<no INSTRUME>")
        raise ValueError(
            f"{path}: not a LATISS or LSSTComCam raw file (INSTRUME={instrume!r}, OBSID={primary.get('OBSID')!r})"
        )
    header = read_raw_header(path)
    file_instrument = _OUR_TRANSLATORS[translator.name]
    if instrument is not None and file_instrument != instrument:
        raise ValueError(f"{path}: a {file_instrument} file, but ingest was asked for {instrument}")
    try:
        obs_info = ObservationInfo(header, translator_class=translator, filename=path, pedantic=True)
    except Exception as err:  # translators raise KeyError/ValueError on bad headers
        raise ValueError(f"{path}: cannot translate header: {err}") from err
    if check_pixels:
        read_raw_file(path)
    return RawFileInfo(
        path=path,
        obs_info=obs_info,
        instrument=file_instrument,
        detector=int(obs_info.detector_num),
        exposure=int(obs_info.exposure_id),
    )


def _day_obs_record(butler: Butler, info: ObservationInfo) -> DimensionRecord:
    day = str(info.observing_day)
    start = Time(f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00", scale="tai") + (
        info.observing_day_offset or TimeDelta(0, format="sec")
    )
    return butler.dimensions["day_obs"].RecordClass(
        instrument=info.instrument,
        id=int(info.observing_day),
        timespan=Timespan(start, start + TimeDelta(1, format="jd")),
    )


def _float(value: Any) -> float | None:
    """A plain Python float (database drivers reject numpy scalars)."""
    return None if value is None else float(value)


def _exposure_record(butler: Butler, info: ObservationInfo) -> DimensionRecord:
    radec = info.tracking_radec
    altaz = info.altaz_begin
    return butler.dimensions["exposure"].RecordClass(
        instrument=info.instrument,
        id=int(info.exposure_id),
        obs_id=info.observation_id,
        physical_filter=info.physical_filter,
        exposure_time=_float(info.exposure_time.to_value(u.s)),
        dark_time=_float(info.dark_time.to_value(u.s)) if info.dark_time is not None else None,
        observation_type=info.observation_type,
        observation_reason=info.observation_reason,
        day_obs=int(info.observing_day),
        seq_num=int(info.observation_counter),
        seq_start=int(info.group_counter_start),
        seq_end=int(info.group_counter_end),
        group=info.exposure_group,
        target_name=info.object,
        science_program=info.science_program,
        tracking_ra=_float(radec.ra.degree) if radec is not None else None,
        tracking_dec=_float(radec.dec.degree) if radec is not None else None,
        sky_angle=_float(info.boresight_rotation_angle.degree) if info.boresight_rotation_angle is not None else None,
        azimuth=_float(altaz.az.degree) if altaz is not None else None,
        zenith_angle=_float(altaz.zen.degree) if altaz is not None else None,
        has_simulated=bool(info.has_simulated_content),
        can_see_sky=info.can_see_sky,
        timespan=Timespan(info.datetime_begin, info.datetime_end),
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
    flt = info.obs_info.physical_filter
    if not list(butler.registry.queryDimensionRecords("physical_filter", instrument=name, physical_filter=flt)):
        raise ValueError(f"{info.path}: physical filter {flt!r} is not registered for {name}")
    # Detector numbers come from our own camera description, so they exist
    # as soon as the instrument is registered.


def ingest_raws(
    butler: Butler,
    files: Iterable[str | os.PathLike],
    *,
    instrument: str | None = None,
    run: str | None = None,
    transfer: str | None = "copy",
    check_pixels: bool = True,
    skip_bad: bool = False,
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
        Datastore transfer mode (``copy``, ``move``, ``link``, ``direct``...).
    check_pixels
        Read every file's pixels before registering anything.
    skip_bad
        Ingest the good files even if some are bad (they are reported in
        `IngestResult.failed`); by default one bad file aborts the whole
        ingest before anything is registered.

    Raises
    ------
    IngestError
        If a file is bad (and ``skip_bad`` is false) or conflicts with what
        is already in the repository.  Nothing has been registered then.
    """
    result = IngestResult()
    dataset_type = raw_dataset_type(butler)
    have_type = dataset_type.name in {d.name for d in butler.registry.queryDatasetTypes(dataset_type.name)}
    to_ingest: list[RawFileInfo] = []
    seen: dict[tuple, str] = {}
    for f in files:
        path = os.fspath(f)
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file")
            info = inspect_raw_file(path, instrument=instrument, check_pixels=False)
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

    for run_name, run_infos in by_run.items():
        butler.registry.registerRun(run_name)
        datasets: list[FileDataset] = []
        with butler.transaction():
            for info in run_infos:
                butler.registry.syncDimensionData("day_obs", _day_obs_record(butler, info.obs_info))
                butler.registry.syncDimensionData(
                    "group", {"instrument": info.instrument, "name": info.obs_info.exposure_group}
                )
                try:
                    butler.registry.syncDimensionData("exposure", _exposure_record(butler, info.obs_info))
                except ConflictingDefinitionError as err:
                    raise IngestError(
                        f"{info.path}: exposure {info.exposure} is already registered with different "
                        f"metadata ({err}); nothing was ingested"
                    ) from err
                ref = DatasetRef(dataset_type, info.data_id, run=run_name)
                datasets.append(FileDataset(path=info.path, refs=[ref], formatter="lsst.cpcombined.obs.raw.RawFormatter"))
            butler.ingest(*datasets, transfer=transfer)
        result.ingested.extend(run_infos)
    for info in result.ingested:
        _LOG.info("Ingested %s (%s detector %d)", info.path, info.obs_info.observation_id, info.detector)
    for info in result.already_present:
        _LOG.info("Already ingested, skipped: %s", info.path)
    return result
