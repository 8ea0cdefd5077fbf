"""The front of the package: the ``cpcombined`` command and the HTML report.

Modules: `main` (the command and its subcommands), `report` (the report of a
run).
"""

from .main import main

__all__ = ("main",)
