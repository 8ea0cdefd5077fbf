"""Physical filters of LATISS and LSSTComCam, as obs_lsst registers them.

The butler's ``physical_filter`` records of a Science Pipelines repository
come from obs_lsst's filter definitions.  The lists here are built from the
same facts so that the package writes identical records (same names, same
bands, same order) and recognises a repository registered by obs_lsst as its
own.

LATISS names combine the filter wheel and the grating wheel,
``FILTER~GRATING``:

- the 26 filters are registered on their own first;
- then every filter except ``diffuser`` is combined with each of the 27
  grating-wheel positions (the band is the filter's);
- the six ``SDSSx_65mm`` filters can also sit in the grating wheel; they are
  combined with the ``empty`` filter only (``empty~SDSSr_65mm``) and take
  their own band.

That gives 26 + 25 x 27 + 6 = 707 names.  ``diffuser~<grating>`` is never
registered.

LSSTComCam names are ``<band>_<serial>`` for the science filters plus a few
special positions: 15 names.
"""

from __future__ import annotations

__all__ = (
    "FilterDefinition",
    "LATISS_FILTERS",
    "LSSTCOMCAM_FILTERS",
    "latiss_filters",
    "lsstcomcam_filters",
)

import dataclasses

#: Separator of the filter and grating parts of a LATISS physical filter.
FILTER_DELIMITER = "~"


@dataclasses.dataclass(frozen=True)
class FilterDefinition:
    """A physical filter and the band it belongs to (one registry record)."""

    physical_filter: str
    band: str


#: LATISS filter wheel, in obs_lsst's registration order.
_LATISS_WHEEL: tuple[tuple[str, str], ...] = (
    ("empty", "white"),
    ("blank_bk7_wg05", "white"),
    ("KPNO_1111_436nm", "g"),
    ("KPNO_373A_677nm", "r"),
    ("KPNO_406_828nm", "z"),
    ("diffuser", "diffuser"),
    ("unknown", "unknown"),
    ("BG40", "g"),
    ("BG40_65mm_1", "g"),
    ("BG40_65mm_2", "g"),
    ("quadnotch1", "notch"),
    ("RG610", "r"),
    ("OG550_65mm_1", "g"),  # band g, as registered upstream
    ("OG550_65mm_2", "g"),
    ("FELH0600", "r"),
    ("SDSSg", "g"),
    ("SDSSr", "r"),
    ("SDSSi", "i"),
    ("collimator", "white"),
    ("cyl_lens", "white"),
    ("SDSSu_65mm", "u"),
    ("SDSSg_65mm", "g"),
    ("SDSSr_65mm", "r"),
    ("SDSSi_65mm", "i"),
    ("SDSSz_65mm", "z"),
    ("SDSSy_65mm", "y"),
)

#: Filters that never appear combined with a grating.
_LATISS_UNCOMBINED = frozenset({"diffuser"})


def _latiss_gratings() -> list[str]:
    """Grating-wheel positions that hold a disperser, an empty slot or a
    pinhole mask (in registration order)."""
    positions = [
        "ronchi90lpmm",
        "ronchi170lpmm",
        "empty",
        "unknown",
        "holo4_003",
        "blue300lpmm_qn1",
        "holo4_001",
    ]
    positions += [f"pinhole_1_{size}" for size in ("1000", "0500", "0200", "0100")]
    positions += [
        f"pinhole_2_{mask}_{size}" for mask in range(1, 5) for size in ("1000", "0500", "0200", "0100")
    ]
    return positions


#: Filters that can also be mounted in the grating wheel (name, band).
_LATISS_GRATING_WHEEL_FILTERS: tuple[tuple[str, str], ...] = tuple(
    (f"SDSS{band}_65mm", band) for band in "ugrizy"
)


def latiss_filters() -> tuple[FilterDefinition, ...]:
    """All 707 LATISS physical filters, in obs_lsst's registration order."""
    out = [FilterDefinition(name, band) for name, band in _LATISS_WHEEL]
    gratings = _latiss_gratings()
    for name, band in _LATISS_WHEEL:
        if name in _LATISS_UNCOMBINED:
            continue
        out.extend(FilterDefinition(f"{name}{FILTER_DELIMITER}{grating}", band) for grating in gratings)
        if name == "empty":
            out.extend(
                FilterDefinition(f"{name}{FILTER_DELIMITER}{grating}", grating_band)
                for grating, grating_band in _LATISS_GRATING_WHEEL_FILTERS
            )
    return tuple(out)


#: ComCam science filters: (band, manufacturer's serial number ``SN-NN``),
#: in the order obs_lsst lists them.
_COMCAM_SCIENCE: tuple[tuple[str, str], ...] = (
    ("u", "SN-05"),
    ("u", "SN-02"),
    ("u", "SN-06"),
    ("g", "SN-07"),
    ("g", "SN-01"),
    ("r", "SN-03"),
    ("i", "SN-06"),
    ("z", "SN-03"),
    ("z", "SN-02"),
    ("y", "SN-04"),
)


def lsstcomcam_filters() -> tuple[FilterDefinition, ...]:
    """All 15 LSSTComCam physical filters, in obs_lsst's registration order.

    The science filters are named ``<band>_<NN>`` from their serial number
    ``SN-NN`` and are grouped by band in the order the bands first appear.
    """
    out = [
        FilterDefinition("empty", "white"),
        FilterDefinition("none", "white"),
        FilterDefinition("unknown", "unknown"),
        FilterDefinition("pinhole", "white"),
        FilterDefinition("OG590_2_5mm", "OG590"),
    ]
    by_band: dict[str, list[str]] = {}
    for band, serial in _COMCAM_SCIENCE:
        by_band.setdefault(band, []).append(f"{band}_{serial.removeprefix('SN-')}")
    for band, names in by_band.items():
        out.extend(FilterDefinition(name, band) for name in names)
    return tuple(out)


#: LATISS physical filters (707).
LATISS_FILTERS: tuple[FilterDefinition, ...] = latiss_filters()

#: LSSTComCam physical filters (15).
LSSTCOMCAM_FILTERS: tuple[FilterDefinition, ...] = lsstcomcam_filters()
