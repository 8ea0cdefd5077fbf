"""Collection names and look-ups shared by the package (DMTN-222 conventions)."""

from __future__ import annotations

__all__ = ("RAW_COLLECTION_TEMPLATE", "collection_exists", "raw_collection")

from lsst.daf.butler import Butler, MissingCollectionError

#: RUN collection that ingested raws go to (DMTN-222 convention).
RAW_COLLECTION_TEMPLATE = "{instrument}/raw/all"


def raw_collection(instrument: str) -> str:
    """Name of the RUN collection holding an instrument's raws."""
    return RAW_COLLECTION_TEMPLATE.format(instrument=instrument)


def collection_exists(butler: Butler, name: str) -> bool:
    """Whether a collection called ``name`` exists."""
    try:
        butler.collections.get_info(name)
    except MissingCollectionError:
        return False
    return True
