"""Stand-in for ``lsst.obs.base.formatters`` (tests only)."""
