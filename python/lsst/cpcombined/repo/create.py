"""Creating butler repositories ready for cp_combined."""

from __future__ import annotations

__all__ = (
    "config_dir",
    "create_repo",
    "ensure_postgres_extensions",
    "package_seed_config",
    "postgres_driver_url",
    "prepare_existing_repo",
    "RepositoryExistsError",
)

import logging
import os
from pathlib import Path

from lsst.daf.butler import Butler, CollectionType, Config

from ..env import package_root
from ..obs.instrument import instruments

_LOG = logging.getLogger(__name__)


class RepositoryExistsError(FileExistsError):
    """The directory already holds a butler repository."""

def config_dir() -> Path:
    """The package's butler ``config/`` directory.

    ``$CPCOMBINED_DIR/config`` when set (eups / bootstrap), otherwise the
    directory next to the source tree.
    """
    return package_root() / "config"


def package_seed_config() -> Config:
    """Butler configuration the package needs in every repository: its
    storage classes and their formatters."""
    cdir = config_dir()
    seed = Config()
    seed["storageClasses"] = Config(str(cdir / "storageClasses.yaml"))["storageClasses"]
    seed["datastore", "formatters"] = Config(str(cdir / "datastores" / "formatters.yaml"))
    return seed


def postgres_driver_url(db_url: str) -> str:
    """Name the installed driver in a plain ``postgresql://`` URL.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, which is not a
    dependency; cp_combined pins psycopg2, so such URLs become
    ``postgresql+psycopg2://``.  Other URLs are returned unchanged.
    """
    if db_url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + db_url.removeprefix("postgresql://")
    return db_url


def ensure_postgres_extensions(db_url: str) -> None:
    """Create the ``btree_gist`` extension the butler registry needs on a
    PostgreSQL database (for calibration validity-range exclusion
    constraints).  Needs a role allowed to create extensions."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_driver_url(db_url))
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
    finally:
        engine.dispose()


def create_repo(
    root: str | os.PathLike,
    *,
    registry_db: str | None = None,
    seed_config: str | os.PathLike | None = None,
    register_instruments: bool = True,
) -> Butler:
    """Create a butler repository ready for cp_combined.

    Parameters
    ----------
    root
        Repository root directory.
    registry_db
        Registry database URL (e.g. ``postgresql://user@host:5432/db``);
        SQLite inside the repo when `None`.
    seed_config
        Extra butler seed configuration file (merged before ``registry_db``).
    register_instruments
        Register LATISS and LSSTComCam (instrument, detectors, filters):
        obs_lsst's records, written as ``butler register-instrument`` writes
        them.

    Returns
    -------
    butler
        A writeable butler for the new repository.
    """
    root = Path(root).expanduser().absolute()
    if root.is_file():
        raise ValueError(f"{root} is a file: give a directory for the new repository")
    if (root / "butler.yaml").exists():
        raise RepositoryExistsError(f"{root} is already a butler repository; nothing was changed")
    seed = package_seed_config()
    if seed_config is not None:
        seed.update(Config(os.fspath(seed_config)))
    if registry_db is not None:
        seed["registry", "db"] = postgres_driver_url(registry_db)
    db = seed.get(("registry", "db"))
    if db is not None and str(db).startswith("postgresql"):
        ensure_postgres_extensions(str(db))
    # An explicit butler.yaml (a directory name with a dot, daily_repo.v2,
    # would otherwise be taken for a configuration file format), without
    # the absolute root daf_butler then writes into it, so that the
    # repository can be moved.
    config_file = root / "butler.yaml"
    Butler.makeRepo(os.fspath(root), config=seed, outfile=os.fspath(config_file))
    written = Config(os.fspath(config_file))
    del written["root"]
    written.dumpToUri(os.fspath(config_file), overwrite=True)
    butler = Butler.from_config(os.fspath(root), writeable=True)
    if register_instruments:
        for instrument in instruments():
            instrument.register(butler.registry)
            # DMTN-222: the instrument's calibration chain, empty until
            # something is certified and chained (opt-in, see certify_chain).
            butler.collections.register(f"{instrument.getName()}/calib", CollectionType.CHAINED)
    _LOG.debug("Created butler repository %s", root)
    return butler


def prepare_existing_repo(butler: Butler) -> list[str]:
    """Make an existing repository usable by cp_combined without changing
    what it already holds.

    The package's instruments the repository already has are checked
    against obs_lsst's records (identical records: nothing is written,
    whoever wrote them; differing ones: refused).  Instruments it does not
    have are not added: a repository populated by the Science Pipelines
    (the summit's ``/repo/LATISS`` holds LATISS only) is left as it is.
    Only a repository holding none of them (made by ``butler create``) gets
    both, as `create_repo` registers them.

    Parameters
    ----------
    butler
        Writeable butler of the repository.

    Returns
    -------
    names : `list` [`str`]
        The package's instruments registered in the repository afterwards.

    Raises
    ------
    lsst.cpcombined.obs.instrument.InstrumentConflictError
        An instrument's records differ from obs_lsst's (nothing was changed).
    """
    present = {record.name for record in butler.registry.queryDimensionRecords("instrument")}
    ours = list(instruments())
    have = [instrument for instrument in ours if instrument.getName() in present]
    for instrument in have or ours:
        instrument.register(butler.registry)
    return [instrument.getName() for instrument in (have or ours)]
