"""The header translators turn the real camera headers into what the
upstream translators produce (values in ../shared/data/real/README.md)."""

from __future__ import annotations

import astropy.units as u
import pytest
import yaml
from astro_metadata_translator import ObservationInfo
from lsst.cpcombined.obs import translators  # noqa: F401  (registers translators)
from lsst.cpcombined.obs.translators import compute_exposure_id

# file: (instrument, exposure_id, observation_type, observation_reason,
#        physical_filter, exposure_time, dark_time, group, name, num, serial,
#        observing_day, can_see_sky)
EXPECTED = {
    "latiss-AT_C_20220426_000004_R00_S00.yaml": (
        "LATISS", 3022042600004, "unknown", "unknown", "unknown~unknown", -1.0, 537.406,
        "RXX", "S00", 0, "ITL-3800C-068", 20220426, None,
    ),
    "latiss-AT_O_20230321_000053.yaml": (
        "LATISS", 2023032100053, "dark", "dark", "empty~empty", 30.0, 30.0126,
        "RXX", "S00", 0, "ITL-3800C-068", 20230321, False,
    ),
    "latiss-AT_O_20240624_000106_R00_S00.yaml": (
        "LATISS", 2024062400106, "cwfs", "intra", "SDSSr_65mm~empty", 30.0, 30.2407,
        "RXX", "S00", 0, "ITL-3800C-068", 20240624, True,
    ),
    "comCam-CC_C_20190530_000001_R22_S00.yaml": (
        "LSSTComCam", 3019053000001, "bias", "bias", "unknown", 0.0, 0.398,
        "R22", "S00", 0, "ITL-3800C-229", 20190530, False,
    ),
    "comCam-CC_C_20190526_000223_R22_S01.yaml": (
        "LSSTComCam", 3019052600223, "bias", "dark", "unknown", 0.0, 0.034,
        "R22", "S01", 1, "ITL-3800C-251", 20190526, False,
    ),
    "comCam-CC_O_20241108_000266_R22_S00.yaml": (
        "LSSTComCam", 2024110800266, "science", "science", "g_01", 30.0, 30.4306,
        "R22", "S00", 0, "ITL-3800C-229", 20241108, True,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_headers(real_data, name):
    header = yaml.safe_load((real_data / "headers" / name).read_text())
    info = ObservationInfo(header, filename=name, pedantic=True)
    (inst, exp_id, obstype, reason, flt, exptime, darktime, group, det_name, det_num, serial, day,
     sky) = EXPECTED[name]
    assert info.instrument == inst
    assert info.exposure_id == exp_id
    assert info.observation_type == obstype
    assert info.observation_reason == reason
    assert info.physical_filter == flt
    assert info.exposure_time.to_value(u.s) == pytest.approx(exptime)
    assert info.dark_time.to_value(u.s) == pytest.approx(darktime)
    assert (info.detector_group, info.detector_name, info.detector_num) == (group, det_name, det_num)
    assert info.detector_serial == serial
    assert info.observing_day == day
    assert info.can_see_sky is sky
    assert info.observation_id == header["OBSID"]
    assert info.datetime_end >= info.datetime_begin
    assert info.telescope == ("Rubin Auxiliary Telescope" if inst == "LATISS" else "Simonyi Survey Telescope")


def test_date_end_used_when_present(real_data):
    header = yaml.safe_load((real_data / "headers" / "latiss-AT_O_20240624_000106_R00_S00.yaml").read_text())
    info = ObservationInfo(header, pedantic=True)
    assert info.datetime_begin.isot == "2024-06-25T01:27:55.160"
    assert info.datetime_end.isot == "2024-06-25T01:28:25.400"
    assert info.datetime_begin.scale == "tai"


def test_exposure_id_rules():
    assert compute_exposure_id("20241108", 266, "O") == 2024110800266
    assert compute_exposure_id("2019-05-30", 1, "C") == 3019053000001
    with pytest.raises(ValueError, match="controller"):
        compute_exposure_id("20241108", 1, "X")
    with pytest.raises(ValueError, match="sequence number"):
        compute_exposure_id("20241108", 100000, "O")
    with pytest.raises(ValueError, match="day_obs"):
        compute_exposure_id("2024118", 1, "O")


def test_foreign_header_not_translated():
    from astro_metadata_translator import MetadataTranslator

    header = {"INSTRUME": "DECam", "OBSID": "ct4m20200101t000000"}
    assert not translators.CpLatissTranslator.can_translate(header)
    assert not translators.CpComCamTranslator.can_translate(header)
    # ComCam's LSST_CAMERA spelling is only ours with a CC observation id.
    assert translators.CpComCamTranslator.can_translate({"INSTRUME": "LSST_CAMERA", "OBSID": "CC_C_20190526_000223"})
    assert not translators.CpComCamTranslator.can_translate({"INSTRUME": "LSST_CAMERA", "OBSID": "MC_C_20190526_1"})
    assert MetadataTranslator.determine_translator(header).name not in ("CpLATISS", "CpLSSTComCam")
