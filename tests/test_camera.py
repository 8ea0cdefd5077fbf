"""The instruments' camera descriptions agree with the real camera."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from lsst.cpcombined import LATISS, LSSTComCam
from lsst.cpcombined.obs.camera import AMP_NAMES, AmpLayout


def _rows(real_data, name):
    with open(real_data / name) as f:
        return list(csv.DictReader(f))


def _box(text):
    (x0, y0), (nx, ny) = json.loads(text)
    return x0, y0, nx, ny


def _xywh(box):
    return box.x.start, box.y.start, box.x.size, box.y.size


@pytest.mark.parametrize("instrument", [LATISS(), LSSTComCam()])
def test_instrument_matches_amplifiers_csv(real_data, instrument):
    rows = [r for r in _rows(real_data, "amplifiers.csv") if r["instrument"] == instrument.getName()]
    assert rows, "no rows for instrument"
    camera = instrument.camera_description
    assert len(camera.detectors) == len({r["detector_name"] for r in rows})
    for r in rows:
        det = instrument.get_detector(r["detector_name"])
        assert det.id == int(r["detector_id"])
        assert det.serial == r["ccd_serial"]
        amp = det.amplifiers[int(r["hdu"]) - 1]
        assert amp.name == r["amp_name"]
        cal = amp.nominal_calibrations
        assert cal.gain == pytest.approx(float(r["gain_e_per_adu"]))
        assert cal.read_noise == pytest.approx(float(r["read_noise_e"]))
        assert cal.saturation == pytest.approx(float(r["saturation_adu"]))
        raw = amp.unassembled_raw_geometry
        assert _xywh(raw.bbox) == _box(r["raw_bbox"])
        assert _xywh(raw.data_bbox) == _box(r["raw_data_bbox"])
        assert _xywh(raw.prescan_bbox) == _box(r["raw_serial_prescan_bbox"])
        assert _xywh(raw.serial_overscan_bbox)[0] == _box(r["raw_serial_overscan_bbox"])[0]
        assert _xywh(raw.serial_overscan_bbox)[2] == _box(r["raw_serial_overscan_bbox"])[2]
        assert _xywh(raw.parallel_overscan_bbox) == _box(r["raw_parallel_overscan_bbox"])
        assert raw.flip_x == (r["flip_x"] == "True")
        assert raw.flip_y == (r["flip_y"] == "True")
        assert raw.readout_corner.value == r["readout_corner"]
        assert _xywh(amp.bbox) == _box(r["assembled_bbox"])
        layout = AmpLayout()
        g = layout.geometry(amp.name)
        assert (g.ix, g.iy) == (int(r["ix"]), int(r["iy"]))
        assert [layout.raw_width * g.ix, layout.raw_height * g.iy] == json.loads(r["raw_xy_offset"])
        offset = json.loads(r["detector_offset_mm"])
        assert (det.orientation.focal_plane_x, det.orientation.focal_plane_y) == pytest.approx(offset)


def test_header_sections_match_real_segments(real_data):
    layout = AmpLayout()
    for r in _rows(real_data, "segment_sections.csv"):
        sec = layout.geometry(r["amp_name"]).header_sections()
        assert sec["EXTNAME"] == r["extname"]
        assert sec["CHANNEL"] == int(r["channel"])
        for key in ("datasec", "detsec", "detsize"):
            assert sec[key.upper()] == r[key], key
        for key in ("dtv1", "dtv2"):
            assert sec[key.upper()] == int(r[key])
        for key in ("dtm1_1", "dtm2_2", "dtm1_2", "dtm2_1"):
            assert sec[key.upper()] == float(r[key])
        assert layout.raw_width == int(r["naxis1"]) and layout.raw_height == int(r["naxis2"])


def test_amp_order_and_names():
    assert AMP_NAMES == ("C10", "C11", "C12", "C13", "C14", "C15", "C16", "C17",
                         "C07", "C06", "C05", "C04", "C03", "C02", "C01", "C00")
    comcam = LSSTComCam().camera_description
    assert [d.name for d in comcam.detectors] == [f"R22_S{i}{j}" for i in range(3) for j in range(3)]
    assert comcam.ids == list(range(9))


def test_nominal_ranges():
    """The nominal gains/read noise agree with the ranges SPEC.md quotes."""
    for inst, (glo, ghi), (nlo, nhi) in [
        (LATISS(), (1.04, 1.11), (8.0, 10.3)),
        (LSSTComCam(), (1.17, 1.46), (5.0, 11.2)),
    ]:
        gains = [a.gain for d in inst.camera_description.detectors for a in d.amplifiers]
        noise = [a.read_noise for d in inst.camera_description.detectors for a in d.amplifiers]
        assert glo <= min(gains) and max(gains) <= ghi
        assert nlo <= min(noise) and max(noise) <= nhi


def test_scaled_layout_keeps_overscan():
    small = AmpLayout.scaled(0.125)
    assert (small.data_width, small.data_height) == (64, 250)
    assert (small.prescan, small.serial_overscan, small.parallel_overscan) == (3, 64, 48)
    det = LATISS().get_detector(0, small)
    assert det.bbox.shape == (500, 512)
    # Amp data boxes tile the detector exactly once.
    cover = np.zeros((500, 512), int)
    for amp in det.amplifiers:
        cover[amp.bbox.y.start:amp.bbox.y.stop, amp.bbox.x.start:amp.bbox.x.stop] += 1
    assert (cover == 1).all()
    with pytest.raises(ValueError):
        AmpLayout.scaled(0)
