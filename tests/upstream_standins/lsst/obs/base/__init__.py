"""Stand-in for ``lsst.obs.base``: only its formatter module names (tests only)."""
