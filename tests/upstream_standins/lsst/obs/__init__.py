"""Stand-in for the ``lsst.obs`` namespace (tests only)."""
