"""The simulated camera: takes exposures, writes raw files, ingests them.

`SimulatedCamera.take` is what ``cpcombined simulate`` and the procedure's
local camera call.  Each exposure gets the next sequence number of its
observing day in the repository, a simulated clock (exposure time plus
readout), a primary header like the camera's, and one raw file per detector,
written to a staging directory and moved into the repository by ingest.
"""

from __future__ import annotations

__all__ = ("SimulatedCamera", "primary_header")

import concurrent.futures
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astropy.time import Time, TimeDelta

from lsst.daf.butler import Butler

from ..obs.camera import DetectorDescription
from ..obs.ingest import ingest_raws
from ..obs.instrument import CpInstrument, get_instrument
from ..obs.raw import write_raw_file
from ..obs.translators import compute_exposure_id
from .sensor import simulate_raw_amps
from .truth import IMAGE_TYPES, SimulationTruth

_LOG = logging.getLogger(__name__)

#: Seconds between the end of one exposure and the start of the next.
READOUT_SECONDS = 2.3
#: Dark time minus exposure time (shutter and clear overheads).
DARK_OVERHEAD_SECONDS = 0.3


def _split_filter(instrument: CpInstrument, physical_filter: str) -> dict[str, str]:
    """Header filter keywords for a physical filter name."""
    if instrument.name == "LATISS":
        flt, _, grating = physical_filter.partition("~")
        to_hdr = {"empty": "empty_1"}
        return {
            "FILTER": to_hdr.get(flt, flt),
            "FILTBAND": instrument.filter_band(physical_filter).upper() if flt != "empty" else "EMPTY",
            "GRATING": to_hdr.get(grating or "empty", grating or "empty_1"),
        }
    return {"FILTER": physical_filter, "FILTBAND": instrument.filter_band(physical_filter)}


def primary_header(
    instrument: CpInstrument,
    detector: DetectorDescription,
    *,
    image_type: str,
    obs_id: str,
    day_obs: int,
    seq_num: int,
    controller: str,
    begin: Time,
    exposure_time: float,
    dark_time: float,
    physical_filter: str,
    group_id: str,
    note: str = "",
    program: str = "",
    reason: str = "",
    seed: int | None = None,
) -> dict[str, Any]:
    """Primary header of a simulated raw file, with the keywords the Rubin
    camera writes (times in TAI).

    The frames are calibration frames taken with the dome closed
    (``VIGN_MIN`` ``FULLY``: they cannot see the sky) and are flagged as
    simulated the way the camera flags simulated subsystems, with a
    ``SIMULATE <system>`` keyword.
    """
    end = begin + TimeDelta(dark_time, format="sec")
    now = end + TimeDelta(READOUT_SECONDS, format="sec")
    raft = "R00" if instrument.name == "LATISS" else detector.raft
    hdr: dict[str, Any] = {
        "DATE": now.isot,
        "MJD": now.mjd,
        "IMGTYPE": image_type.upper(),
        "TESTTYPE": image_type.upper(),
        "DATE-OBS": begin.isot,
        "MJD-OBS": begin.mjd,
        "DATE-BEG": begin.isot,
        "MJD-BEG": begin.mjd,
        "DATE-END": end.isot,
        "MJD-END": end.mjd,
        "OBSID": obs_id,
        "GROUPID": group_id,
        "BUNIT": "adu",
        "TIMESYS": "TAI",
        "INSTRUME": instrument.header_instrument,
        "TELESCOP": instrument.header_telescope,
        "OBS-LONG": -70.749417,
        "OBS-LAT": -30.244639,
        "OBS-ELEV": 2663.0,
        "FACILITY": "Vera C. Rubin Observatory",
        "OBJECT": image_type.upper(),
        "CAMCODE": instrument.camera_code,
        "CONTRLLR": controller,
        "DAYOBS": f"{day_obs:08d}",
        "SEQNUM": seq_num,
        "PROGRAM": program or None,
        "REASON": reason or None,
        "OBSANNOT": note,
        **_split_filter(instrument, physical_filter),
        "EXPTIME": float(exposure_time),
        "DARKTIME": float(dark_time),
        "SHUTTIME": float(exposure_time) if image_type == "flat" else 0.0,
        "VIGN_MIN": "FULLY",
        "ROTPA": 0.0,
        "RAFTBAY": raft,
        "CCDSLOT": detector.sensor,
        "LSST_NUM": detector.serial,
        "CCD_MANU": "ITL",
        "CCD_TYPE": "3800C",
        "FILENAME": f"{obs_id}_{raft}_{detector.sensor}.fits",
        "HEADVER": 2,
        "SIMULATE CPCOMBINED": 1,
        "CPSIM": True,
    }
    if seed is not None:
        hdr["CPSIMSD"] = seed
    return hdr


class SimulatedCamera:
    """A camera whose frames are simulated with known truth.

    Parameters
    ----------
    butler
        Writeable butler of the repository raws are ingested into.
    truth
        Simulation truth (instrument, geometry, faults...).
    detectors
        Detector ids/names to read out (all by default).
    staging_dir
        Where files are written before ingest moves them into the repo
        (a temporary directory by default).
    controller
        Controller code in the observation ids (``O``: observatory control).
    wait_between_exposures
        Extra simulated seconds between exposures.
    n_threads
        Frames simulated in parallel (numpy releases the GIL in the random
        generators and array arithmetic).
    """

    def __init__(
        self,
        butler: Butler,
        truth: SimulationTruth,
        *,
        detectors: Sequence[int | str] | str | None = None,
        staging_dir: str | os.PathLike | None = None,
        controller: str = "O",
        wait_between_exposures: float = 0.0,
        n_threads: int | None = None,
    ) -> None:
        self.butler = butler
        self.truth = truth
        self.instrument = get_instrument(truth.instrument)
        self.detectors = self.instrument.camera_description.resolve_detectors(detectors)
        self.staging_dir = Path(staging_dir) if staging_dir else None
        self.controller = controller
        self.wait_between_exposures = wait_between_exposures
        self.n_threads = n_threads or min(4, os.cpu_count() or 1)
        self._sequence = dict.fromkeys(IMAGE_TYPES, 0)
        self._clock: Time | None = None

    # -- bookkeeping ----------------------------------------------------------

    def _latest_exposure(self) -> tuple[int, int, Time | None]:
        """(day_obs, max seq_num, end time) of the latest exposure in the repo."""
        records = list(self.butler.registry.queryDimensionRecords("exposure", instrument=self.instrument.name))
        if not records:
            return 0, 0, None
        latest = max(records, key=lambda r: (r.day_obs, r.seq_num))
        return latest.day_obs, latest.seq_num, latest.timespan.end

    def _n_exposures(self) -> int:
        """Number of exposures of this instrument already in the repo."""
        records = self.butler.registry.queryDimensionRecords("exposure", instrument=self.instrument.name)
        return len(list(records))

    def _next_start(self) -> Time:
        if self._clock is None:
            now = Time.now().tai
            _, _, last_end = self._latest_exposure()
            if last_end is not None and last_end + TimeDelta(READOUT_SECONDS, format="sec") > now:
                now = last_end + TimeDelta(READOUT_SECONDS, format="sec")
            self._clock = now
        return self._clock

    def _day_obs(self, t: Time) -> int:
        """Observing day of an exposure starting at ``t``, by the
        instrument's rule (rollover at 12:00 TAI on the mountain)."""
        translator = self.instrument.translator_class
        return translator.observing_date_to_observing_day(t, translator.observing_date_to_offset(t))

    def _next_seq_num(self, day_obs: int) -> int:
        records = self.butler.registry.queryDimensionRecords(
            "exposure", instrument=self.instrument.name, where=f"exposure.day_obs = {day_obs}"
        )
        return max((r.seq_num for r in records), default=0) + 1

    # -- acquisition ------------------------------------------------------------

    def _write_frame(
        self,
        staging: Path,
        image_type: str,
        hdr: dict[str, Any],
        detector: int,
        exposure_time: float,
        dark_time: float,
        index: int | None,
        noise: tuple[str, int, bool] | int,
    ) -> str:
        """Simulate one (exposure, detector) and write its raw file.

        ``noise`` seeds the frame's noise: the exposure's rank among the
        repo's exposures of this instrument, or the frame's place
        ``(image type, index, discard)`` in a procedure's sequence.
        """
        rng = (
            self.truth.exposure_rng(noise, detector)
            if isinstance(noise, int)
            else self.truth.frame_rng(*noise, detector)
        )
        amps = simulate_raw_amps(self.truth, detector, image_type, exposure_time, dark_time, index, rng)
        path = staging / hdr["FILENAME"]
        write_raw_file(path, hdr, amps, self.truth.layout, compress=self.truth.compress)
        return str(path)

    def take(
        self,
        image_type: str,
        exposure_times: Sequence[float],
        *,
        physical_filter: str | None = None,
        group_id: str | None = None,
        note: str = "",
        program: str = "",
        reason: str = "",
        discard: bool = False,
        first_index: int | None = None,
    ) -> list[int]:
        """Take exposures (one per exposure time) and ingest them.

        Parameters
        ----------
        image_type
            ``bias``, ``dark`` or ``flat``.
        exposure_times
            One entry per exposure (seconds; biases must be 0).
        physical_filter
            Physical filter (flats default to the instrument's default flat
            filter, bias/dark to the empty position).
        group_id
            Group id written in ``GROUPID`` (default: the first exposure's
            start time).
        note, program, reason
            Written to ``OBSANNOT``, ``PROGRAM`` and ``REASON``.
        discard
            These are frames to throw away: they do not advance the image
            type's sequence index (so they never receive injected faults).
        first_index
            Place of the first frame in a procedure's sequence of kept (or,
            with ``discard``, discarded) frames of this image type.  When
            given, each frame's noise and faults depend only on the truth and
            that place (a resumed procedure re-takes identical frames);
            otherwise on the frame's rank among the repository's exposures
            and on the frames this camera took before.

        Returns
        -------
        exposure_ids
            Ids of the new exposures, in acquisition order.
        """
        if image_type not in IMAGE_TYPES:
            raise ValueError(f"image type must be one of {IMAGE_TYPES}, got {image_type!r}")
        times = [float(t) for t in exposure_times]
        if any(t < 0 for t in times):
            raise ValueError(f"negative exposure time in {times}")
        if image_type == "bias" and any(t != 0 for t in times):
            raise ValueError("biases have zero exposure time")
        if physical_filter is None:
            physical_filter = (
                self.instrument.default_flat_filter
                if image_type == "flat"
                else ("empty~empty" if self.instrument.name == "LATISS" else "empty")
            )
        self.instrument.filter_band(physical_filter)  # validates the name
        staging = self.staging_dir or Path(tempfile.mkdtemp(prefix="cpsim-"))
        staging.mkdir(parents=True, exist_ok=True)
        frames: list[tuple] = []
        exposure_ids: list[int] = []
        last_day, seq_num = None, 0
        # Noise realisations are keyed by the frame's place in a procedure's
        # sequence, or else by the exposure's rank in the repo — never by its
        # id (which holds the date): the same truth and seed give the same
        # pixels whatever day the simulation runs.
        serial = self._n_exposures() if first_index is None else 0
        try:
            for exptime in times:
                begin = self._next_start()
                day_obs = self._day_obs(begin)
                seq_num = self._next_seq_num(day_obs) if day_obs != last_day else seq_num + 1
                last_day = day_obs
                obs_id = self.instrument.make_obs_id(self.controller, day_obs, seq_num)
                exposure_id = compute_exposure_id(day_obs, seq_num, self.controller)
                dark_time = exptime + DARK_OVERHEAD_SECONDS
                if first_index is None:
                    index = None if discard else self._sequence[image_type]
                    noise: tuple[str, int, bool] | int = serial
                else:
                    position = first_index + len(exposure_ids)
                    index = None if discard else position
                    noise = (image_type, position, discard)
                group = group_id or begin.isot
                for det in self.detectors:
                    hdr = primary_header(
                        self.instrument,
                        det,
                        image_type=image_type,
                        obs_id=obs_id,
                        day_obs=day_obs,
                        seq_num=seq_num,
                        controller=self.controller,
                        begin=begin,
                        exposure_time=exptime,
                        dark_time=dark_time,
                        physical_filter=physical_filter,
                        group_id=group,
                        note=note,
                        program=program,
                        reason=reason,
                        seed=self.truth.seed,
                    )
                    frames.append((hdr, det.id, exptime, dark_time, index, noise))
                exposure_ids.append(exposure_id)
                serial += 1
                if not discard and first_index is None:
                    self._sequence[image_type] += 1
                self._clock = begin + TimeDelta(
                    dark_time + READOUT_SECONDS + self.wait_between_exposures, format="sec"
                )
            with concurrent.futures.ThreadPoolExecutor(max_workers=self.n_threads) as pool:
                files = list(pool.map(lambda frame: self._write_frame(staging, image_type, *frame), frames))
            ingest_raws(
                self.butler, files, instrument=self.instrument.name, transfer="move", check_pixels=False
            )
        finally:
            if self.staging_dir is None:
                shutil.rmtree(staging, ignore_errors=True)
        _LOG.info(
            "Simulated %d %s exposure(s)%s: %s",
            len(exposure_ids),
            image_type,
            " (discarded)" if discard else "",
            ", ".join(map(str, exposure_ids)),
        )
        return exposure_ids
