"""Stand-in for ``lsst.obs.lsst``: only its raw formatter module name (tests only)."""
