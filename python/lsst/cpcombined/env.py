"""Print shell ``export`` lines for what an eups install would provide.

``ctrl_bps`` configuration refers to ``${CTRL_MPEXEC_DIR}``,
``${DAF_BUTLER_DIR}`` and friends; a pip install has no such variables.
``eval "$(python -m lsst.cpcombined.env)"`` sets them to the installed
packages' locations (only those not already set).
"""

from __future__ import annotations

__all__ = ("package_root", "product_dirs")

import importlib
import os
import shlex
from pathlib import Path


def package_root() -> Path:
    """Root of the cp_combined source tree (``$CPCOMBINED_DIR`` when set).

    Pipelines are found under ``<root>/pipelines`` and butler configuration
    under ``<root>/config``.
    """
    env = os.environ.get("CPCOMBINED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3]


#: eups product directory variables and a module inside each product.
_PRODUCTS = {
    "CTRL_MPEXEC_DIR": "lsst.ctrl.mpexec",
    "CTRL_BPS_DIR": "lsst.ctrl.bps",
    "CTRL_BPS_PARSL_DIR": "lsst.ctrl.bps.parsl",
    "DAF_BUTLER_DIR": "lsst.daf.butler",
    "PIPE_BASE_DIR": "lsst.pipe.base",
}


def product_dirs() -> dict[str, str]:
    """Return ``{VARIABLE: directory}`` for the installed LSST products.

    For a pip install the "product directory" is the package directory
    itself (where its ``configs/`` live); ctrl_bps only uses it to find
    ``${CTRL_MPEXEC_DIR}/bin/pipetask``-style paths and config files, which
    we override in our bps configs.
    """
    out: dict[str, str] = {}
    for var, module in _PRODUCTS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        out[var] = str(Path(mod.__file__).parent)
    return out


def main() -> None:
    """Print ``export`` lines for variables not already set."""
    for var, value in product_dirs().items():
        if not os.environ.get(var):
            print(f"export {var}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
