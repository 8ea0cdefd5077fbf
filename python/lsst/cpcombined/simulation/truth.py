"""Ground truth of the simulated camera.

The truth is a mapping (a ``--truth`` YAML file, or the ``simulation:``
section of a run config) whose keys state what is simulated; everything is
optional and has a realistic per-instrument default.  `SimulationTruth`
validates it (unknown keys and bad values are errors naming the key) and
derives the fixed per-detector patterns deterministically from ``seed``, so
tests can compare recovered calibrations against exactly what was injected.

Keys (units): ``seed``; ``geometry_scale`` (fraction of the real amp size per
axis); ``gain`` (e-/ADU), ``read_noise`` (e-), ``bias_level`` (ADU) — a number
or a per-amp mapping ``{C10: ..., ...}``; ``bias_structure_adu`` (amplitude of
the fixed 2-d bias pattern); ``overscan`` (``row_jitter_adu``,
``level_drift_adu``); ``dark_current`` (e-/s); ``hot_pixels``
(``[[detector, x, y, e-/s], ...]``) or ``hot_pixel_density``;
``cold_pixels`` (``[[detector, x, y, relative response], ...]``) or
``cold_pixel_density``; ``bad_columns`` (``[[detector, x], ...]`` or
``[[detector, x, y0, y1], ...]``: dead over rows ``y0..y1-1``, default the
bottom amplifier row) or ``bad_columns_per_detector``; ``flat_flux`` (e-/s
per pixel at the centre); ``vignetting`` (fractional fall-off at the field
edge); ``detector_response`` (per-detector relative QE, or its rms);
``prnu`` (rms pixel response non-uniformity); ``a00`` (1/e-, brighter-fatter,
0 disables); ``full_well`` (e-); ``cosmic_ray_rate`` (per cm² per s);
``faults`` (list of fault mappings, see `FaultSpec`); ``compress``
(write lossless RICE tile-compressed amplifier HDUs as the camera does:
on by default; a full-size LATISS frame takes ~25 MB instead of 76 MB and
is written and read as fast, see `lsst.cpcombined.obs.raw.write_raw_file`;
``false`` writes plain amplifier HDUs).

Coordinates of hot/cold pixels and bad columns are in the *assembled*
detector frame of the simulated (possibly scaled) geometry.
"""

from __future__ import annotations

__all__ = ("DetectorTruth", "FaultSpec", "SimulationTruth", "TruthError")

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from ..obs.camera import AMP_NAMES, AmpLayout, DetectorDescription, load_camera_description

#: Physical pixel side in cm (10 µm), for cosmic-ray rates.
PIXEL_CM = 1.0e-3

IMAGE_TYPES = ("bias", "dark", "flat")


class TruthError(ValueError):
    """Invalid simulation truth."""


@dataclasses.dataclass(frozen=True)
class FaultSpec:
    """A fault injected into chosen exposures of one image type.

    Attributes
    ----------
    image_type
        ``bias``, ``dark`` or ``flat``.
    exposures
        0-based indices in the acquired sequence of that image type (after
        discards), or `None` for all.
    detectors
        Detector ids (or names) or `None` for all.
    amplifiers
        Amplifier names or `None` for all.
    imaging_offset_adu
        Constant added to the imaging area only (not the overscan).
    extra_noise_e
        Extra Gaussian noise (e-) in the imaging area only.
    saturate
        Imaging area set to the saturation level.
    nan
        Imaging area written as NaN (float32 HDU).
    illumination_gradient
        Flats only: fractional illumination gradient across the detector in
        x (e.g. 0.2 = +/-10 %).
    """

    image_type: str
    exposures: tuple[int, ...] | None = None
    detectors: tuple[int | str, ...] | None = None
    amplifiers: tuple[str, ...] | None = None
    imaging_offset_adu: float = 0.0
    extra_noise_e: float = 0.0
    saturate: bool = False
    nan: bool = False
    illumination_gradient: float = 0.0

    _KEYS = (
        "image_type",
        "exposures",
        "detectors",
        "amplifiers",
        "imaging_offset_adu",
        "extra_noise_e",
        "saturate",
        "nan",
        "illumination_gradient",
    )

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], where: str) -> FaultSpec:
        """Validate and build a fault from its mapping."""
        if not isinstance(m, Mapping):
            raise TruthError(f"{where}: a fault must be a mapping, got {m!r}")
        unknown = set(m) - set(cls._KEYS)
        if unknown:
            raise TruthError(f"{where}: unknown fault keys {sorted(unknown)}; allowed: {list(cls._KEYS)}")
        image_type = m.get("image_type")
        if image_type not in IMAGE_TYPES:
            raise TruthError(f"{where}.image_type must be one of {IMAGE_TYPES}, got {image_type!r}")

        def selection(key: str, kind: type) -> tuple | None:
            value = m.get(key, "all")
            if value in ("all", None):
                return None
            if isinstance(value, (int, str)):
                value = [value]
            if not isinstance(value, Sequence) or not all(isinstance(v, (int, str)) for v in value):
                raise TruthError(f"{where}.{key} must be 'all' or a list, got {value!r}")
            if kind is int and not all(isinstance(v, int) and v >= 0 for v in value):
                raise TruthError(f"{where}.{key} must list non-negative integers, got {value!r}")
            return tuple(value)

        amps = selection("amplifiers", str)
        if amps is not None:
            bad = [a for a in amps if a not in AMP_NAMES]
            if bad:
                raise TruthError(f"{where}.amplifiers: unknown amplifier names {bad}")
        fault = cls(
            image_type=image_type,
            exposures=selection("exposures", int),
            detectors=selection("detectors", object),
            amplifiers=amps,
            imaging_offset_adu=_number(m, "imaging_offset_adu", 0.0, where),
            extra_noise_e=_number(m, "extra_noise_e", 0.0, where, minimum=0.0),
            saturate=bool(m.get("saturate", False)),
            nan=bool(m.get("nan", False)),
            illumination_gradient=_number(m, "illumination_gradient", 0.0, where),
        )
        return fault

    def applies(self, image_type: str, index: int | None, detector: DetectorDescription) -> bool:
        """Whether this fault applies to an exposure of ``image_type`` at
        sequence ``index`` (`None`: a discarded frame) on ``detector``."""
        if image_type != self.image_type or index is None:
            return False
        if self.exposures is not None and index not in self.exposures:
            return False
        if self.detectors is not None and not any(
            d == detector.id or str(d) == detector.name or str(d) == str(detector.id) for d in self.detectors
        ):
            return False
        return True

    def amp_selected(self, amp: str) -> bool:
        """Whether the fault applies to amplifier ``amp``."""
        return self.amplifiers is None or amp in self.amplifiers


def _number(m: Mapping[str, Any], key: str, default: float, where: str, minimum: float | None = None) -> float:
    value = m.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise TruthError(f"{where}.{key} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise TruthError(f"{where}.{key} must be >= {minimum}, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class DetectorTruth:
    """Ground truth of one simulated detector (arrays in the assembled frame
    of the simulated layout)."""

    detector: DetectorDescription
    layout: AmpLayout
    gain: dict[str, float]
    read_noise: dict[str, float]
    bias_level: dict[str, float]
    #: Fixed 2-d bias pattern (ADU) in the imaging area, after overscan correction.
    bias_structure: np.ndarray
    #: Dark current per pixel including hot pixels (e-/s).
    dark_current: np.ndarray
    #: Relative response per pixel (detector response × PRNU × cold/dead), mean ≈ detector response.
    response: np.ndarray
    #: Illumination pattern (vignetting) relative to the field centre.
    illumination: np.ndarray
    #: True defects: hot pixels, cold pixels, bad columns (bool).
    hot_mask: np.ndarray
    cold_mask: np.ndarray
    full_well: float
    a00: float

    @functools.cached_property
    def dark_decomposition(self) -> tuple[float, np.ndarray, np.ndarray]:
        """The dark current as a uniform base rate plus a sparse excess:
        ``(base, flat indices of the pixels above it, their excess)`` (e-/s),
        so that a dark's Poisson charge can be drawn as a uniform-mean
        draw plus draws in the few hot pixels."""
        dark = self.dark_current.reshape(-1)
        base = float(dark.min())
        idx = np.flatnonzero(dark > base)
        return base, idx, dark[idx] - base

    @property
    def flat_field(self) -> np.ndarray:
        """Expected flat-field signal shape: illumination × response."""
        return self.illumination * self.response

    def amp_value(self, values: dict[str, float]) -> np.ndarray:
        """Broadcast a per-amp value to the assembled frame."""
        out = np.empty((self.layout.detector_height, self.layout.detector_width))
        for amp, v in values.items():
            out[self.layout.geometry(amp).assembled_slices] = v
        return out


class SimulationTruth:
    """Validated simulation truth for one instrument.

    Parameters
    ----------
    instrument
        ``LATISS`` or ``LSSTComCam``.
    mapping
        Truth keys (see module docstring); missing keys take defaults.
    """

    KEYS = (
        "seed",
        "geometry_scale",
        "gain",
        "read_noise",
        "bias_level",
        "bias_structure_adu",
        "overscan",
        "dark_current",
        "hot_pixels",
        "hot_pixel_density",
        "cold_pixels",
        "cold_pixel_density",
        "bad_columns",
        "bad_columns_per_detector",
        "flat_flux",
        "vignetting",
        "detector_response",
        "prnu",
        "a00",
        "full_well",
        "cosmic_ray_rate",
        "faults",
        "compress",
    )

    def __init__(self, instrument: str, mapping: Mapping[str, Any] | None = None) -> None:
        mapping = dict(mapping or {})
        unknown = set(mapping) - set(self.KEYS)
        if unknown:
            raise TruthError(f"simulation: unknown keys {sorted(unknown)}; allowed: {list(self.KEYS)}")
        self.instrument = instrument
        self.camera = load_camera_description(instrument)
        self.raw = mapping
        w = "simulation"
        seed = mapping.get("seed", 20261125)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise TruthError(f"{w}.seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        scale = _number(mapping, "geometry_scale", 1.0, w)
        try:
            self.layout = AmpLayout.scaled(scale)
        except ValueError as err:
            raise TruthError(f"{w}.geometry_scale: {err}") from None
        self.geometry_scale = scale
        self.bias_structure_adu = _number(mapping, "bias_structure_adu", 2.0, w, minimum=0.0)
        overscan = mapping.get("overscan", {}) or {}
        if not isinstance(overscan, Mapping) or set(overscan) - {"row_jitter_adu", "level_drift_adu"}:
            raise TruthError(f"{w}.overscan must be a mapping with row_jitter_adu and/or level_drift_adu")
        self.row_jitter_adu = _number(overscan, "row_jitter_adu", 1.0, f"{w}.overscan", minimum=0.0)
        self.level_drift_adu = _number(overscan, "level_drift_adu", 3.0, f"{w}.overscan", minimum=0.0)
        self.dark_current = _number(mapping, "dark_current", 0.02, w, minimum=0.0)
        self.hot_pixel_density = _number(mapping, "hot_pixel_density", 5e-6, w, minimum=0.0)
        self.cold_pixel_density = _number(mapping, "cold_pixel_density", 5e-6, w, minimum=0.0)
        self.bad_columns_per_detector = int(_number(mapping, "bad_columns_per_detector", 1, w, minimum=0))
        self.flat_flux = _number(mapping, "flat_flux", 2000.0, w, minimum=0.0)
        self.vignetting = _number(mapping, "vignetting", 0.05, w, minimum=0.0)
        self.prnu = _number(mapping, "prnu", 0.01, w, minimum=0.0)
        self.a00 = _number(mapping, "a00", -2.0e-6, w)
        if self.a00 > 0 or self.a00 < -1e-4:
            raise TruthError(f"{w}.a00 must be in [-1e-4, 0], got {self.a00}")
        self.full_well = _number(mapping, "full_well", 150000.0, w, minimum=1.0)
        self.cosmic_ray_rate = _number(mapping, "cosmic_ray_rate", 0.02, w, minimum=0.0)
        self.compress = bool(mapping.get("compress", True))
        self.hot_pixels = self._pixel_list("hot_pixels", 4)
        self.cold_pixels = self._pixel_list("cold_pixels", 4)
        self.bad_columns = self._bad_columns()
        faults = mapping.get("faults", []) or []
        if not isinstance(faults, list):
            raise TruthError(f"{w}.faults must be a list")
        self.faults = tuple(FaultSpec.from_mapping(f, f"{w}.faults[{i}]") for i, f in enumerate(faults))
        # Validate per-amp keys eagerly (errors at configure time, not mid-run).
        for det in self.camera.detectors:
            self._per_amp("gain", det, minimum=1e-3)
            self._per_amp("read_noise", det, minimum=0.0)
            self._per_amp("bias_level", det, minimum=0.0)
        self._detector_response_spec = mapping.get("detector_response", 0.02)
        if not isinstance(self._detector_response_spec, (int, float, Mapping)) or isinstance(
            self._detector_response_spec, bool
        ):
            raise TruthError(
                f"{w}.detector_response must be a number (rms) or a mapping detector -> response"
            )

    # -- construction helpers -------------------------------------------------

    @classmethod
    def from_file(cls, instrument: str, path: str | os.PathLike) -> SimulationTruth:
        """Read a truth YAML file (either the mapping itself or a run config
        with a ``simulation:`` section)."""
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        if not isinstance(doc, Mapping):
            raise TruthError(f"{path}: truth file must hold a mapping")
        if "simulation" in doc and isinstance(doc["simulation"], Mapping):
            doc = doc["simulation"]
        return cls(instrument, doc)

    def with_overrides(self, **kwargs: Any) -> SimulationTruth:
        """Return a copy with some keys replaced."""
        return SimulationTruth(self.instrument, {**self.raw, **kwargs})

    def _pixel_list(self, key: str, n: int) -> tuple[tuple[float, ...], ...]:
        value = self.raw.get(key, [])
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
            isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v) for v in value
        ):
            raise TruthError(f"simulation.{key} must be a list of [detector, x, y, value] lists")
        for v in value:
            self._check_xy(key, v)
        return tuple(tuple(v) for v in value)

    def _bad_columns(self) -> tuple[tuple[int, ...], ...]:
        value = self.raw.get("bad_columns", [])
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
            isinstance(v, list) and len(v) in (2, 4) and all(isinstance(x, int) for x in v) for v in value
        ):
            raise TruthError(
                "simulation.bad_columns must be a list of [detector, x] or [detector, x, y0, y1]"
            )
        out = []
        for v in value:
            self._check_xy("bad_columns", [v[0], v[1], 0])
            if len(v) == 2:
                v = [v[0], v[1], 0, self.layout.data_height]
            out.append(tuple(v))
        return tuple(out)

    def _check_xy(self, key: str, v: Sequence[float]) -> None:
        det, x, y = v[0], v[1], v[2]
        if int(det) not in self.camera.ids:
            raise TruthError(f"simulation.{key}: no detector {det} in {self.instrument}")
        if not (0 <= x < self.layout.detector_width and 0 <= y < self.layout.detector_height):
            raise TruthError(
                f"simulation.{key}: pixel ({x}, {y}) outside the {self.layout.detector_width}x"
                f"{self.layout.detector_height} detector"
            )

    def _per_amp(self, key: str, det: DetectorDescription, minimum: float) -> dict[str, float]:
        """Per-amp value of ``gain``, ``read_noise`` or ``bias_level``: the
        instrument default, overridden by a number or a per-amp mapping."""
        if key == "gain":
            values = {a.name: a.gain for a in det.amplifiers}
        elif key == "read_noise":
            values = {a.name: a.read_noise for a in det.amplifiers}
        else:
            rng = self._rng("bias_level", det.id)
            values = {a: float(15000.0 + np.round(rng.uniform(-800, 800))) for a in AMP_NAMES}
        value = self.raw.get(key)
        if value is None:
            return values
        if isinstance(value, Mapping):
            unknown = set(value) - set(AMP_NAMES)
            if unknown:
                raise TruthError(f"simulation.{key}: unknown amplifier names {sorted(unknown)}")
            for amp in value:
                values[amp] = _number(value, amp, 0.0, f"simulation.{key}", minimum=minimum)
            return values
        v = _number(self.raw, key, 0.0, "simulation", minimum=minimum)
        return dict.fromkeys(AMP_NAMES, v)

    def _rng(self, tag: str, *ids: int) -> np.random.Generator:
        """Deterministic generator for a fixed pattern."""
        tag_id = int.from_bytes(tag.encode()[:8].ljust(8, b"\0"), "little")
        return np.random.default_rng([self.seed, tag_id, *ids])

    def exposure_rng(self, serial: int, detector_id: int) -> np.random.Generator:
        """Generator of the per-exposure noise of one (exposure, detector).

        ``serial`` numbers the exposures of a repo (0, 1, ...), so that a
        simulation is reproducible whatever day it runs on.
        """
        return np.random.default_rng([self.seed, 1, int(serial), int(detector_id)])

    def frame_rng(self, image_type: str, index: int, discard: bool, detector_id: int) -> np.random.Generator:
        """Generator of the noise of one frame of a procedure's sequence.

        The frame is named by its place in the sequence (image type, kept or
        discarded, index), not by anything the repository holds, so a
        procedure resumed after a kill re-takes exactly the frames it would
        have taken.
        """
        code = IMAGE_TYPES.index(image_type)
        return np.random.default_rng([self.seed, 2, code, int(discard), int(index), int(detector_id)])

    # -- truth per detector -----------------------------------------------------

    def detector_response(self, det: DetectorDescription) -> float:
        """Relative QE of a detector (1 for single-detector cameras by default)."""
        spec = self._detector_response_spec
        if isinstance(spec, Mapping):
            for key in (det.id, str(det.id), det.name):
                if key in spec:
                    return float(spec[key])
            return 1.0
        if len(self.camera.detectors) == 1:
            return 1.0
        return float(1.0 + spec * self._rng("detresp", det.id).standard_normal())

    @functools.cache
    def detector_truth(self, detector: int | str) -> DetectorTruth:
        """Fixed ground truth of one detector (cached)."""
        det = self.camera[detector]
        lay = self.layout
        ny, nx = lay.detector_height, lay.detector_width
        gain = self._per_amp("gain", det, 1e-3)
        read_noise = self._per_amp("read_noise", det, 0.0)
        bias_level = self._per_amp("bias_level", det, 0.0)

        # Fixed 2-d bias structure (imaging area only), built per amp in
        # readout orientation: a decaying ramp from the start of the serial
        # register, a gentle gradient along the columns and a faint column
        # pattern.
        rng = self._rng("biasstruct", det.id)
        bias_structure = np.zeros((ny, nx))
        a = self.bias_structure_adu
        for amp in AMP_NAMES:
            g = lay.geometry(amp)
            xr = np.arange(lay.data_width)
            yr = np.arange(lay.data_height)
            ramp = np.exp(-xr / max(2.0, 20.0 * lay.scale))[np.newaxis, :]
            grad = (yr / lay.data_height - 0.5)[:, np.newaxis]
            cols = rng.standard_normal(lay.data_width)[np.newaxis, :] * 0.15
            pattern_ro = a * (ramp + 0.3 * grad + cols) * rng.uniform(0.8, 1.2)
            bias_structure[g.assembled_slices] = g.to_detector_orientation(pattern_ro)

        # Dark current with hot pixels.
        rng = self._rng("dark", det.id)
        dark = np.full((ny, nx), self.dark_current)
        hot = np.zeros((ny, nx), dtype=bool)
        hot_list = [(int(x), int(y), r) for d, x, y, r in self.hot_pixels if int(d) == det.id]
        if "hot_pixels" not in self.raw:
            n_hot = rng.poisson(self.hot_pixel_density * nx * ny)
            xs = rng.integers(0, nx, n_hot)
            ys = rng.integers(0, ny, n_hot)
            rates = np.exp(rng.uniform(np.log(5.0), np.log(100.0), n_hot))
            hot_list += list(zip(xs.tolist(), ys.tolist(), rates.tolist(), strict=False))
        for x, y, r in hot_list:
            dark[y, x] = r
            hot[y, x] = True

        # Response: detector QE × PRNU × cold pixels × dead columns.
        rng = self._rng("response", det.id)
        response = self.detector_response(det) * (1.0 + self.prnu * rng.standard_normal((ny, nx)))
        cold = np.zeros((ny, nx), dtype=bool)
        cold_list = [(int(x), int(y), r) for d, x, y, r in self.cold_pixels if int(d) == det.id]
        if "cold_pixels" not in self.raw:
            n_cold = rng.poisson(self.cold_pixel_density * nx * ny)
            xs = rng.integers(0, nx, n_cold)
            ys = rng.integers(0, ny, n_cold)
            rel = rng.uniform(0.2, 0.8, n_cold)
            cold_list += list(zip(xs.tolist(), ys.tolist(), rel.tolist(), strict=False))
        for x, y, r in cold_list:
            response[y, x] *= r
            cold[y, x] = True
        columns = [(x, y0, y1) for d, x, y0, y1 in self.bad_columns if d == det.id]
        if "bad_columns" not in self.raw:
            for _ in range(self.bad_columns_per_detector):
                columns.append((int(rng.integers(8, nx - 8)), 0, lay.data_height))
        for x, y0, y1 in columns:
            response[y0:y1, x] *= 0.05
            cold[y0:y1, x] = True

        # Illumination: radial vignetting over the focal plane (mm).
        pix_mm = 0.010 / lay.scale
        fx = det.offset_mm[0] + (np.arange(nx) - (nx - 1) / 2) * pix_mm
        fy = det.offset_mm[1] + (np.arange(ny) - (ny - 1) / 2) * pix_mm
        r_edge = 65.0 if len(self.camera.detectors) > 1 else 30.0
        illumination = 1.0 - self.vignetting * (fx[np.newaxis, :] ** 2 + fy[:, np.newaxis] ** 2) / r_edge**2
        return DetectorTruth(
            detector=det,
            layout=lay,
            gain=gain,
            read_noise=read_noise,
            bias_level=bias_level,
            bias_structure=bias_structure,
            dark_current=dark,
            response=response,
            illumination=illumination,
            hot_mask=hot,
            cold_mask=cold,
            full_well=self.full_well,
            a00=self.a00,
        )

    def resolved(self) -> dict[str, Any]:
        """The truth with every default filled in (for provenance/logging)."""
        return {
            "instrument": self.instrument,
            "seed": self.seed,
            "geometry_scale": self.geometry_scale,
            "bias_structure_adu": self.bias_structure_adu,
            "overscan": {"row_jitter_adu": self.row_jitter_adu, "level_drift_adu": self.level_drift_adu},
            "dark_current": self.dark_current,
            "flat_flux": self.flat_flux,
            "vignetting": self.vignetting,
            "prnu": self.prnu,
            "a00": self.a00,
            "full_well": self.full_well,
            "cosmic_ray_rate": self.cosmic_ray_rate,
            "faults": [dataclasses.asdict(f) for f in self.faults],
            **{k: self.raw[k] for k in ("gain", "read_noise", "bias_level") if k in self.raw},
        }
