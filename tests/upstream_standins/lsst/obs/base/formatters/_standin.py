"""The stand-in formatter base shared by the stand-in modules (tests only)."""

from __future__ import annotations

__all__ = ("StandInFormatter",)

from typing import Any, ClassVar

from lsst.daf.butler import FormatterV2
from lsst.resources import ResourcePath


class StandInFormatter(FormatterV2):
    """A formatter name that can be imported but neither reads nor writes.

    It exists so that ``butler.ingest`` records a Science Pipelines formatter
    name for a file; reading that file with ``butler.get`` needs the real
    formatter (and afw), exactly as in a repository made by the Science
    Pipelines.
    """

    default_extension: ClassVar[str] = ".fits"
    supported_extensions: ClassVar[frozenset[str]] = frozenset(
        {".fits", ".fits.gz", ".fits.fz", ".fz", ".fit"}
    )
    can_read_from_local_file: ClassVar[bool] = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} is a test stand-in: reading {path} needs the Science Pipelines (afw); "
            "read the file through butler.getURI instead"
        )

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        raise NotImplementedError(f"{type(self).__name__} is a test stand-in and cannot write {uri}")
