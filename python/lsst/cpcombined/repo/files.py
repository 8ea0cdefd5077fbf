"""Reading stored datasets as files.

Datasets of the Science Pipelines' storage classes (``Exposure``,
``ExposureF``, ``Defects``, ``PhotonTransferCurveDataset``) cannot be read
with ``butler.get`` without afw and ip_isr: their storage classes name afw
and ip_isr types and the datastore records name obs_base/obs_lsst
formatters.  The package declares those inputs with ``deferLoad=True`` and
reads the file itself, through the dataset's URI: the same code reads files
written by the Science Pipelines and files written by cp_combined, since
both use the same layouts.
"""

from __future__ import annotations

__all__ = ("dataset_file", "read_dataset_file")

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_T = TypeVar("_T")


@contextlib.contextmanager
def dataset_file(handle: Any) -> Iterator[str]:
    """Local path of a stored dataset, for the duration of the context.

    Parameters
    ----------
    handle
        A `~lsst.daf.butler.DeferredDatasetHandle` (``deferLoad=True``
        connection) or anything with ``butler`` and ``ref`` attributes.

    Yields
    ------
    path
        A local file name (a temporary copy for a remote datastore).
    """
    uri = handle.butler.getURI(handle.ref)
    with uri.as_local() as local:
        yield local.ospath


def read_dataset_file(handle: Any, reader: Callable[[str], _T]) -> _T:
    """``reader(path)`` on the local file of a stored dataset (see
    `dataset_file`)."""
    with dataset_file(handle) as path:
        return reader(path)
