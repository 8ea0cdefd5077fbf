"""Pure numpy/numba algorithms of cp_combined (no butler, no tasks).

Every function here works on plain `numpy.ndarray` objects so it can be
tested and benchmarked without a repository; the PipelineTasks in
`lsst.cpcombined.tasks` only move data between the butler and these.
"""
