"""The instruments as the package sees them (the role obs_lsst plays in the
Science Pipelines): camera descriptions, instrument classes and their
registry records, raw files, header translators and raw ingest.

Modules: `camera` (detector and amplifier geometry, nominal values),
`instrument` (``LATISS``, ``LSSTComCam``), `raw` (raw camera files),
`translators` (header translation), `ingest` (raw ingest).
"""
