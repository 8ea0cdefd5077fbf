"""Memory hygiene shared by the pixel-handling tasks."""

from __future__ import annotations

__all__ = ["collect_garbage_after"]

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])


def collect_garbage_after(run_quantum: _F) -> _F:
    """Decorate ``runQuantum`` to run a full garbage collection afterwards.

    Reading an `lsst.images` dataset whose unit astropy's VOUnit parser does
    not know (``electron``) raises and catches exceptions inside astropy; their
    tracebacks form reference cycles that keep the calling frames alive, and
    with them every array those frames hold (inputs, blocks, results).  Python
    collects such cycles only when enough *objects* have been allocated, not
    bytes, so in a process that runs many quanta (in-process ``pipetask``, a
    clustered BPS job) hundreds of MB per quantum piled up.  A collection at
    the end of each quantum bounds the memory to one quantum's worth.

    A full collection scans every object of the process (~0.25 s with a
    butler and its registry loaded, paid for every quantum); the objects that
    existed before the quantum are therefore frozen (`gc.freeze`) while it
    runs, so that the collection only scans what the quantum created, and
    unfrozen afterwards so that they are collected normally later.
    """

    @functools.wraps(run_quantum)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        gc.freeze()
        try:
            return run_quantum(*args, **kwargs)
        finally:
            try:
                gc.collect()
            finally:
                gc.unfreeze()

    return wrapper  # type: ignore[return-value]
