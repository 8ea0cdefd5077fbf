"""The front of the package: the ``cpcombined`` command, the HTML report and
the history across days.

Modules: `main` (the command and its subcommands), `report` (the report of a
run), `history` (certified calibrations over time).
"""

from typing import Any

__all__ = ("main",)


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m lsst.cpcombined.cli.main`` does not import
    # the module twice.
    if name == "main":
        from .main import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
