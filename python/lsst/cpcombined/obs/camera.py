"""Camera descriptions of the ITL-sensor cameras (LATISS, LSSTComCam).

The geometry of every detector follows the ITL 3800C template of the real
camera: 16 amplifiers (2 rows of 8), each read out through a raw array of
``prescan + data_width + serial_overscan`` columns and
``data_height + parallel_overscan`` rows, in the raw HDU order
``C10..C17, C07..C00``.  Per-amplifier nominal gains and read noise come from
the packaged ``resources/<instrument>.yaml`` (facts of the real camera).

A geometry *scale* shrinks the imaging area of every amplifier (same layout,
fewer pixels) for fast tests; the prescan and overscan keep their real sizes
so that overscan statistics (and the noise they add) stay realistic.

Coordinates follow the `lsst.images` conventions: boxes are ``(y, x)``,
0-based, half-open.
"""

from __future__ import annotations

__all__ = (
    "AMP_NAMES",
    "AmpLayout",
    "AmpGeometry",
    "CameraDescription",
    "DetectorDescription",
    "load_camera_description",
)

import dataclasses
import functools
from collections.abc import Sequence
from importlib import resources

import numpy as np
import yaml

from lsst.images import Box
from lsst.images._transforms import _ast as ast
from lsst.images.cameras import (
    Amplifier,
    AmplifierCalibrations,
    AmplifierRawGeometry,
    CameraFrameSet,
    Detector,
    DetectorAttributes,
    DetectorType,
    Orientation,
    ReadoutCorner,
)

#: Amplifier names in raw HDU order (HDU 1..16).
AMP_NAMES: tuple[str, ...] = tuple(f"C1{i}" for i in range(8)) + tuple(f"C0{i}" for i in range(7, -1, -1))

#: Nominal ITL pixel size in mm.
PIXEL_SIZE_MM = 0.010

#: Nominal plate scales (arcsec/mm) used only to give the focal plane an
#: approximate field-angle frame.
_PLATE_SCALE_ARCSEC_PER_MM = {"LATISS": 9.5, "LSSTComCam": 20.0}


def _box(x0: int, y0: int, width: int, height: int) -> Box:
    """Make a `lsst.images.Box` from ``x0, y0, width, height``."""
    return Box.factory[y0 : y0 + height, x0 : x0 + width]


@dataclasses.dataclass(frozen=True)
class AmpLayout:
    """Per-amplifier pixel layout shared by every amplifier of a detector.

    Attributes
    ----------
    data_width, data_height
        Size of the imaging (data) section.
    prescan
        Number of serial prescan columns before the data section.
    serial_overscan
        Number of serial overscan columns after the data section.
    parallel_overscan
        Number of parallel overscan rows after the data section.
    """

    data_width: int = 509
    data_height: int = 2000
    prescan: int = 3
    serial_overscan: int = 64
    parallel_overscan: int = 48

    #: Number of amplifiers along x and y in the assembled detector.
    n_x: int = 8
    n_y: int = 2

    @classmethod
    def scaled(cls, scale: float = 1.0) -> AmpLayout:
        """Return the ITL layout with its imaging area scaled per axis.

        Parameters
        ----------
        scale
            Fraction of the real imaging size per axis, ``0 < scale <= 1``.
            Prescan and overscan sizes are kept.
        """
        if not (0.0 < scale <= 1.0):
            raise ValueError(f"geometry scale must be in (0, 1], got {scale!r}")
        base = cls()
        return cls(
            data_width=max(16, int(round(base.data_width * scale))),
            data_height=max(16, int(round(base.data_height * scale))),
        )

    @classmethod
    def from_detector_shape(cls, shape: Sequence[int]) -> AmpLayout:
        """Layout of an assembled detector image of ``shape`` ``(ny, nx)``
        (prescan/overscan sizes are the real ones)."""
        ny, nx = int(shape[0]), int(shape[1])
        if ny % cls.n_y or nx % cls.n_x:
            raise ValueError(f"detector shape {shape} is not a {cls.n_y} x {cls.n_x} grid of amplifiers")
        return cls(data_width=nx // cls.n_x, data_height=ny // cls.n_y)

    @property
    def raw_width(self) -> int:
        """Width of one raw amplifier array."""
        return self.prescan + self.data_width + self.serial_overscan

    @property
    def raw_height(self) -> int:
        """Height of one raw amplifier array."""
        return self.data_height + self.parallel_overscan

    @property
    def detector_width(self) -> int:
        """Width of the trimmed, assembled detector."""
        return self.data_width * self.n_x

    @property
    def detector_height(self) -> int:
        """Height of the trimmed, assembled detector."""
        return self.data_height * self.n_y

    @property
    def scale(self) -> float:
        """Approximate geometry scale of this layout (1 for full size)."""
        return self.data_width / AmpLayout().data_width

    def geometry(self, amp_name: str) -> AmpGeometry:
        """Return the geometry of one amplifier of this layout."""
        return AmpGeometry(self, amp_name)


@dataclasses.dataclass(frozen=True)
class AmpGeometry:
    """Geometry of one amplifier: where its pixels are in each frame.

    Frames:

    - *raw amp*: the single-amplifier HDU array as the camera writes it
      (readout corner lower-left).
    - *untrimmed*: all amplifiers tiled on a ``n_y x n_x`` grid of raw
      arrays, each flipped into detector orientation (what `RawImage.image`
      holds).
    - *assembled*: the trimmed detector image (DM convention).
    """

    layout: AmpLayout
    name: str

    def __post_init__(self) -> None:
        if self.name not in AMP_NAMES:
            raise ValueError(f"Unknown ITL amplifier name {self.name!r}")

    @property
    def ix(self) -> int:
        """Amplifier column in the 2 x 8 grid."""
        return int(self.name[2])

    @property
    def iy(self) -> int:
        """Amplifier row in the 2 x 8 grid."""
        return int(self.name[1])

    @property
    def hdu(self) -> int:
        """1-based raw HDU index of this amplifier."""
        return AMP_NAMES.index(self.name) + 1

    @property
    def extname(self) -> str:
        """EXTNAME of this amplifier's raw HDU."""
        return "Segment" + self.name[1:]

    @property
    def flip_x(self) -> bool:
        """Whether the raw array is flipped in x during assembly."""
        return True

    @property
    def flip_y(self) -> bool:
        """Whether the raw array is flipped in y during assembly."""
        return self.iy == 1

    # -- raw amplifier frame (single HDU) ---------------------------------

    @property
    def raw_data(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of the data section in the raw amp array."""
        lay = self.layout
        return slice(0, lay.data_height), slice(lay.prescan, lay.prescan + lay.data_width)

    @property
    def raw_serial_overscan(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of the serial overscan (data rows only)."""
        lay = self.layout
        x0 = lay.prescan + lay.data_width
        return slice(0, lay.data_height), slice(x0, x0 + lay.serial_overscan)

    @property
    def raw_serial_overscan_all_rows(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of the serial overscan over all raw rows."""
        lay = self.layout
        x0 = lay.prescan + lay.data_width
        return slice(0, lay.raw_height), slice(x0, x0 + lay.serial_overscan)

    @property
    def raw_parallel_overscan(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of the parallel overscan (data columns only)."""
        lay = self.layout
        return (
            slice(lay.data_height, lay.raw_height),
            slice(lay.prescan, lay.prescan + lay.data_width),
        )

    @property
    def raw_prescan(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of the serial prescan."""
        return slice(0, self.layout.data_height), slice(0, self.layout.prescan)

    def to_detector_orientation(self, raw_amp: np.ndarray) -> np.ndarray:
        """Flip a raw amp array (or any array in raw amp orientation) into
        detector orientation (returns a view)."""
        out = raw_amp
        if self.flip_x:
            out = out[..., :, ::-1]
        if self.flip_y:
            out = out[..., ::-1, :]
        return out

    from_detector_orientation = to_detector_orientation  # flips are involutions

    # -- assembled (trimmed) frame -----------------------------------------

    @property
    def assembled_slices(self) -> tuple[slice, slice]:
        """``(y, x)`` slices of this amp's data in the assembled detector."""
        lay = self.layout
        return (
            slice(self.iy * lay.data_height, (self.iy + 1) * lay.data_height),
            slice(self.ix * lay.data_width, (self.ix + 1) * lay.data_width),
        )

    @property
    def assembled_bbox(self) -> Box:
        """`~lsst.images.Box` of this amp's data in the assembled detector."""
        ys, xs = self.assembled_slices
        return Box.factory[ys.start : ys.stop, xs.start : xs.stop]

    # -- untrimmed (tiled, flipped) frame ------------------------------------

    @property
    def untrimmed_origin(self) -> tuple[int, int]:
        """``(y0, x0)`` of this amp's raw tile in the untrimmed image."""
        return self.iy * self.layout.raw_height, self.ix * self.layout.raw_width

    def _flip_slices(self, sl: tuple[slice, slice]) -> tuple[slice, slice]:
        """Map raw-amp slices to slices within the flipped tile."""
        lay = self.layout
        ys, xs = sl
        if self.flip_x:
            xs = slice(lay.raw_width - xs.stop, lay.raw_width - xs.start)
        if self.flip_y:
            ys = slice(lay.raw_height - ys.stop, lay.raw_height - ys.start)
        return ys, xs

    def untrimmed_slices(self, raw_slices: tuple[slice, slice]) -> tuple[slice, slice]:
        """Slices in the untrimmed image of a region given in raw-amp slices."""
        y0, x0 = self.untrimmed_origin
        ys, xs = self._flip_slices(raw_slices)
        return slice(ys.start + y0, ys.stop + y0), slice(xs.start + x0, xs.stop + x0)

    @property
    def untrimmed_tile(self) -> tuple[slice, slice]:
        """Slices of this amp's whole raw tile in the untrimmed image."""
        lay = self.layout
        return self.untrimmed_slices((slice(0, lay.raw_height), slice(0, lay.raw_width)))

    # -- lsst.images descriptions -------------------------------------------

    def _raw_geometry(self, untrimmed: bool) -> AmplifierRawGeometry:
        lay = self.layout

        def box(sl: tuple[slice, slice]) -> Box:
            ys, xs = self.untrimmed_slices(sl) if untrimmed else sl
            return Box.factory[ys.start : ys.stop, xs.start : xs.stop]

        full = (slice(0, lay.raw_height), slice(0, lay.raw_width))
        data = box(self.raw_data)
        amp_bbox = self.assembled_bbox
        corner = ReadoutCorner.LL
        if untrimmed:
            corner = corner.apply_flips(y=self.flip_y, x=self.flip_x)
        return AmplifierRawGeometry(
            bbox=box(full),
            data_bbox=data,
            flip_x=False if untrimmed else self.flip_x,
            flip_y=False if untrimmed else self.flip_y,
            x_offset=amp_bbox.x.start - data.x.start,
            y_offset=amp_bbox.y.start - data.y.start,
            serial_overscan_bbox=box(self.raw_serial_overscan_all_rows),
            parallel_overscan_bbox=box(self.raw_parallel_overscan),
            prescan_bbox=box(self.raw_prescan),
            readout_corner=corner,
        )

    def to_amplifier(self, gain: float, read_noise: float, saturation: float) -> Amplifier:
        """Describe this amplifier as an `lsst.images.cameras.Amplifier`.

        ``assembled_raw_geometry`` refers to the untrimmed image of
        `RawImage`; ``unassembled_raw_geometry`` to the single-amp raw HDU.
        """
        return Amplifier(
            name=self.name,
            bbox=self.assembled_bbox,
            readout_corner=ReadoutCorner.LL.apply_flips(y=self.flip_y, x=self.flip_x),
            assembled_raw_geometry=self._raw_geometry(untrimmed=True),
            unassembled_raw_geometry=self._raw_geometry(untrimmed=False),
            nominal_calibrations=AmplifierCalibrations(
                gain=gain,
                read_noise=read_noise,
                saturation=saturation,
                suspect_level=float("nan"),
                linearity_coefficients=np.array([0.0, 1.0, np.nan, np.nan]),
                linearity_type="PROPORTIONAL",
            ),
        )

    def header_sections(self) -> dict[str, object]:
        """FITS geometry keywords the camera writes in this amp's HDU.

        DETSEC/DTV/DTM use the camera's header frame, which is the DM
        assembled frame flipped top-to-bottom.
        """
        lay = self.layout
        w, h = lay.data_width, lay.data_height
        x = self.ix
        if self.iy == 1:
            detsec = f"[{w * (x + 1)}:{w * x + 1},1:{h}]"
            dtv2, dtm22 = 0, 1.0
        else:
            detsec = f"[{w * (x + 1)}:{w * x + 1},{2 * h}:{h + 1}]"
            dtv2, dtm22 = 2 * h + 1, -1.0
        return {
            "EXTNAME": self.extname,
            "CHANNEL": self.hdu,
            "CCDSUM": "1 1",
            "DATASEC": f"[{lay.prescan + 1}:{lay.prescan + w},1:{h}]",
            "DETSEC": detsec,
            "DETSIZE": f"[1:{lay.n_x * w},1:{lay.n_y * h}]",
            "DTV1": w * (x + 1) + lay.prescan + 1,
            "DTV2": dtv2,
            "DTM1_1": -1.0,
            "DTM2_2": dtm22,
            "DTM1_2": 0.0,
            "DTM2_1": 0.0,
        }


@dataclasses.dataclass(frozen=True)
class AmplifierNominal:
    """Nominal per-amplifier values of the real camera."""

    name: str
    gain: float
    read_noise: float


@dataclasses.dataclass(frozen=True)
class DetectorDescription:
    """Identity and nominal amplifier values of one detector."""

    instrument: str
    name: str
    id: int
    serial: str
    physical_type: str
    offset_mm: tuple[float, float]
    amplifiers: tuple[AmplifierNominal, ...]
    saturation: float

    @property
    def raft(self) -> str:
        """Raft part of the detector name (``R22``)."""
        return self.name.split("_")[0]

    @property
    def sensor(self) -> str:
        """Sensor part of the detector name (``S11``)."""
        return self.name.split("_")[1]

    def amplifier(self, name: str) -> AmplifierNominal:
        """Return the nominal values of one amplifier."""
        for amp in self.amplifiers:
            if amp.name == name:
                return amp
        raise KeyError(f"Detector {self.name} has no amplifier {name!r}")


@dataclasses.dataclass(frozen=True)
class CameraDescription:
    """All detectors of one instrument."""

    instrument: str
    detectors: tuple[DetectorDescription, ...]

    def __getitem__(self, key: int | str) -> DetectorDescription:
        for det in self.detectors:
            if det.id == key or det.name == key:
                return det
        raise KeyError(f"{self.instrument} has no detector {key!r}")

    @property
    def ids(self) -> list[int]:
        """Detector ids, in order."""
        return [d.id for d in self.detectors]

    def resolve_detectors(self, detectors: Sequence[int | str] | str | None) -> list[DetectorDescription]:
        """Resolve a detector selection (``None``/``"all"``, ids or names)."""
        if detectors is None or detectors == "all":
            return list(self.detectors)
        if isinstance(detectors, (str, int)):
            detectors = [detectors]
        return [self[int(d) if isinstance(d, str) and d.isdigit() else d] for d in detectors]

    def frame_set(self, layout: AmpLayout | None = None) -> CameraFrameSet:
        """Focal-plane, field-angle and detector coordinate frames.

        Parameters
        ----------
        layout
            Pixel layout of the detectors (full size by default); a scaled
            layout has proportionally larger pixels.
        """
        return _make_frame_set(self, layout or AmpLayout())

    def detector(self, key: int | str, layout: AmpLayout | None = None) -> Detector:
        """Describe one detector as an `lsst.images.cameras.Detector`.

        Parameters
        ----------
        key
            Detector id or name.
        layout
            Pixel layout (defaults to the real, full-size one).
        """
        layout = layout or AmpLayout()
        det = self[key]
        amps = [
            layout.geometry(a.name).to_amplifier(a.gain, a.read_noise, det.saturation) for a in det.amplifiers
        ]
        attributes = DetectorAttributes(
            name=det.name,
            id=det.id,
            type=DetectorType.SCIENCE,
            serial=det.serial,
            bbox=Box.factory[0 : layout.detector_height, 0 : layout.detector_width],
            orientation=Orientation(
                focal_plane_x=det.offset_mm[0],
                focal_plane_y=det.offset_mm[1],
                focal_plane_z=0.0,
                pixel_reference_x=(layout.detector_width - 1) / 2,
                pixel_reference_y=(layout.detector_height - 1) / 2,
            ),
            pixel_size=PIXEL_SIZE_MM / layout.scale,
            physical_type=det.physical_type,
        )
        return Detector(attributes, amps, self.frame_set(layout))


@functools.cache
def _make_frame_set(camera: CameraDescription, full: AmpLayout) -> CameraFrameSet:
    """Build the AST frame set (FOCAL_PLANE in mm, FIELD_ANGLE in rad and
    one DETECTOR_<id> pixel frame per detector) of a camera whose detectors
    have the pixel layout ``full``."""
    fp = ast.Frame(2, "Ident=FOCAL_PLANE,Domain=FOCAL_PLANE,Unit(1)=mm,Unit(2)=mm")
    frame_set = ast.FrameSet(fp)
    rad_per_mm = _PLATE_SCALE_ARCSEC_PER_MM.get(camera.instrument, 20.0) * np.pi / (180 * 3600)
    frame_set.addFrame(
        1,
        ast.ZoomMap(2, rad_per_mm),
        ast.Frame(2, "Ident=FIELD_ANGLE,Domain=FIELD_ANGLE,Unit(1)=rad,Unit(2)=rad"),
    )
    for det in camera.detectors:
        center = ((full.detector_width - 1) / 2, (full.detector_height - 1) / 2)
        pix_to_fp = (
            ast.ShiftMap([-center[0], -center[1]])
            .then(ast.ZoomMap(2, PIXEL_SIZE_MM / full.scale))
            .then(ast.ShiftMap(list(det.offset_mm)))
        )
        frame = ast.Frame(
            2,
            f"Ident=DETECTOR_{det.id},Domain=DETECTOR_{det.id},"
            f"Bottom(1)=0,Top(1)={full.detector_width},Bottom(2)=0,Top(2)={full.detector_height}",
        )
        frame_set.addFrame(1, pix_to_fp.inverted(), frame)
    return CameraFrameSet(camera.instrument, frame_set)


@functools.cache
def load_camera_description(instrument: str) -> CameraDescription:
    """Load the packaged description of ``instrument``'s detectors."""
    try:
        text = resources.files("lsst.cpcombined").joinpath("resources", f"{instrument}.yaml").read_text()
    except FileNotFoundError:
        raise LookupError(f"No camera description for instrument {instrument!r}") from None
    doc = yaml.safe_load(text)
    detectors = []
    for det in doc["detectors"]:
        detectors.append(
            DetectorDescription(
                instrument=instrument,
                name=det["name"],
                id=int(det["id"]),
                serial=det["serial"],
                physical_type=det["physical_type"],
                offset_mm=tuple(det["offset_mm"]),
                amplifiers=tuple(
                    AmplifierNominal(a["name"], float(a["gain"]), float(a["read_noise"]))
                    for a in det["amplifiers"]
                ),
                saturation=float(doc["saturation_adu"]),
            )
        )
    return CameraDescription(instrument, tuple(detectors))
