"""Retention of intermediates: removing what a generation run no longer needs.

A generation run (``cpBias``, ``cpDark``, ``cpFlat``) writes one ISR-processed
image per exposure and detector (``cpcBiasProc``, ``cpcDarkProc``,
``cpcFlatProc``; with the flat also ``cpcFlatStatistics``, the per-exposure
levels its normalisation consumed) before combining them into its product.
Once the products of the run are certified, those intermediates are needed by
nothing: the product, its verification statistics and the decision that
certified it stay.  `prune_intermediates` removes them (registry entries and
files, through the butler) from given RUN collections:

* only datasets of `INTERMEDIATE_PATTERNS` are ever removed: never a product
  (`PRODUCT_TYPES`), a raw, a verification output, a decision, nor the
  pipelines' task metadata and logs;
* a run whose intermediates would go although one of its products is not
  certified in any CALIBRATION collection, or that holds no product at all
  (the intermediates are still needed to make it), is refused, with the
  reason, unless ``force`` (e.g. the intermediates of a rejected
  calibration);
* the report says what was removed, per run and dataset type, in files and
  bytes.

Crash safety: each run's removal is recorded in a `PruneJournal` before it
starts (the files and dataset ids about to go), and marked done after.  The
butler removes registry entries in one transaction and deletes the files
afterwards, so a process killed in between leaves files that no dataset
references; running the removal again (a resumed run, or the same
``cpcombined prune`` command) finishes the journal's unfinished entries
first: every recorded file whose dataset is gone from the registry is
deleted.  Nothing is left behind on disk that the registry does not know.

`resolve_runs` turns collection names into the RUN collections to prune: a
RUN as is; a CHAINED collection (a pipetask ``--output``) into the RUN
collections it holds *under its own name* (``<chain>/<timestamp>``), never
its inputs (raws, other days' calibrations).
"""

from __future__ import annotations

__all__ = (
    "INTERMEDIATE_PATTERNS",
    "PRODUCT_TYPES",
    "FileJournal",
    "PruneError",
    "PruneJournal",
    "PruneReport",
    "RunPrune",
    "intermediate_types",
    "prune_intermediates",
    "resolve_runs",
)

import dataclasses
import fnmatch
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from lsst.daf.butler import Butler, CollectionType, DatasetRef, MissingCollectionError

_LOG = logging.getLogger(__name__)

#: Dataset types (``fnmatch`` patterns) that are intermediates of a generation run.
INTERMEDIATE_PATTERNS: tuple[str, ...] = ("cpc*Proc", "cpcFlatStatistics")

#: Calibration products a generation run makes (shared with the Science Pipelines).
PRODUCT_TYPES: tuple[str, ...] = ("bias", "dark", "flat", "defects", "ptc")


class PruneError(ValueError):
    """The collections to prune cannot be resolved (nothing was removed)."""


class PruneJournal(Protocol):
    """Where the removal of each run is recorded (see the module docstring).

    Entries are JSON-compatible mappings: ``status`` (``removing`` or
    ``done``), ``files`` (``[[dataset id, path], ...]``), ``bytes``.
    """

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        """Every recorded run and its entry."""

    def record(self, run: str, entry: Mapping[str, Any]) -> None:
        """Record (replace) the entry of a run, durably."""


class FileJournal:
    """A `PruneJournal` in a JSON file, written atomically on every change
    (``cpcombined prune`` keeps it in ``REPO/cpcombined/prune.json``).

    Parameters
    ----------
    path
        The journal file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def entries(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise PruneError(f"cannot read the prune journal {self.path} ({err}); move it away") from None
        return data if isinstance(data, dict) else {}

    def record(self, run: str, entry: Mapping[str, Any]) -> None:
        data = self.entries()
        data[run] = dict(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


@dataclasses.dataclass
class RunPrune:
    """What happened to one RUN collection.

    Attributes
    ----------
    run
        The RUN collection.
    removed
        ``{dataset type: number of datasets removed}`` (would be removed,
        for a dry run).
    files, nbytes
        Files removed and their total size.
    refused
        Why nothing was removed from this run, or `None`.
    """

    run: str
    removed: dict[str, int] = dataclasses.field(default_factory=dict)
    files: int = 0
    nbytes: int = 0
    refused: str | None = None


@dataclasses.dataclass
class PruneReport:
    """What `prune_intermediates` did."""

    runs: list[RunPrune] = dataclasses.field(default_factory=list)
    dry_run: bool = False
    #: Files left over by an interrupted earlier removal, deleted first.
    recovered_files: int = 0

    @property
    def files(self) -> int:
        """Files removed."""
        return sum(r.files for r in self.runs)

    @property
    def nbytes(self) -> int:
        """Bytes removed."""
        return sum(r.nbytes for r in self.runs)

    @property
    def refused(self) -> list[RunPrune]:
        """The runs that were refused."""
        return [r for r in self.runs if r.refused]

    def lines(self) -> list[str]:
        """Human-readable lines: one per run, then the total."""
        verb = "would remove" if self.dry_run else "removed"
        out = []
        if self.recovered_files:
            out.append(f"finished an interrupted removal: {self.recovered_files} leftover file(s) deleted")
        for r in self.runs:
            if r.refused:
                out.append(f"{r.run}: refused: {r.refused}")
            elif not r.files:
                out.append(f"{r.run}: no intermediates")
            else:
                kinds = ", ".join(f"{n} {t}" for t, n in sorted(r.removed.items()))
                out.append(f"{r.run}: {verb} {kinds} ({r.files} files, {_size(r.nbytes)})")
        out.append(f"total: {verb} {self.files} files, {self.nbytes} bytes ({_size(self.nbytes)})")
        return out


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def intermediate_types(butler: Butler, patterns: Iterable[str] = INTERMEDIATE_PATTERNS) -> list[str]:
    """Registered dataset types that are intermediates (match ``patterns``)."""
    return _matching([dt.name for dt in butler.registry.queryDatasetTypes()], patterns)


def _matching(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    patterns = tuple(patterns)
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def resolve_runs(butler: Butler, *, runs: Iterable[str] = (), collections: Iterable[str] = ()) -> list[str]:
    """The RUN collections to prune.

    Parameters
    ----------
    butler
        The repository.
    runs
        RUN collections (each must exist and be a RUN).
    collections
        RUN or CHAINED collections; a CHAINED one contributes the RUN
        collections it holds (at any depth) whose names start with its own
        name and a ``/`` (its own outputs).

    Returns
    -------
    runs
        Unique RUN collection names, in the order given.

    Raises
    ------
    PruneError
        A collection does not exist, ``runs`` names a non-RUN collection,
        or a collection is neither RUN nor CHAINED.
    """
    out: list[str] = []

    def add(name: str) -> None:
        if name not in out:
            out.append(name)

    def info(name: str) -> Any:
        try:
            return butler.collections.get_info(name)
        except MissingCollectionError:
            raise PruneError(f"collection {name!r} does not exist in this repository") from None

    for name in runs:
        if info(name).type is not CollectionType.RUN:
            raise PruneError(f"{name} is a {info(name).type.name} collection, not a RUN: use --collection")
        add(name)
    for name in collections:
        kind = info(name).type
        if kind is CollectionType.RUN:
            add(name)
        elif kind is CollectionType.CHAINED:
            own = [
                child
                for child in butler.collections.query(
                    name, collection_types={CollectionType.RUN}, flatten_chains=True
                )
                if child.startswith(f"{name}/")
            ]
            for child in own:
                add(child)
        else:
            raise PruneError(
                f"{name} is a {kind.name} collection: give RUN or CHAINED (pipetask output) ones"
            )
    return out


def _certified_ids(butler: Butler, dataset_types: Iterable[str]) -> set[Any]:
    """Ids of the datasets of ``dataset_types`` (registered ones) certified
    in any CALIBRATION collection."""
    calibs = list(butler.collections.query("*", collection_types={CollectionType.CALIBRATION}))
    ids: set[Any] = set()
    if not calibs:
        return ids
    for name in dataset_types:
        for assoc in butler.registry.queryDatasetAssociations(
            name, collections=calibs, collectionTypes={CollectionType.CALIBRATION}, flattenChains=False
        ):
            ids.add(assoc.ref.id)
    return ids


def _refs(butler: Butler, dataset_types: Iterable[str], run: str) -> list[DatasetRef]:
    refs: list[DatasetRef] = []
    for name in dataset_types:
        refs.extend(butler.query_datasets(name, collections=run, find_first=False, explain=False, limit=None))
    return refs


def _local_path(butler: Butler, ref: DatasetRef) -> tuple[str, int]:
    uri = butler.getURI(ref)
    try:
        size = uri.size()
    except FileNotFoundError:
        size = 0
    return (uri.ospath if uri.isLocal else str(uri)), int(size)


def _delete_leftovers(butler: Butler, files: Iterable[tuple[str, str]]) -> int:
    """Delete recorded files whose datasets are no longer in the registry."""
    deleted = 0
    for dataset_id, path in files:
        if butler.get_dataset(dataset_id) is not None:
            continue  # still a dataset: the butler removes it (or it was kept)
        if os.path.isabs(path) and os.path.lexists(path):
            os.remove(path)
            deleted += 1
    return deleted


def _finish_journal(butler: Butler, journal: PruneJournal) -> int:
    """Complete the unfinished entries of ``journal``; return files deleted."""
    deleted = 0
    for run, entry in journal.entries().items():
        if entry.get("status") != "removing":
            continue
        n = _delete_leftovers(butler, [tuple(f) for f in entry.get("files", [])])
        if n:
            _LOG.info("%s: deleted %d file(s) left by an interrupted removal.", run, n)
        deleted += n
        journal.record(run, {**entry, "status": "done"})
    return deleted


def prune_intermediates(
    butler: Butler,
    runs: Iterable[str],
    *,
    dry_run: bool = False,
    force: bool = False,
    journal: PruneJournal | None = None,
    patterns: Iterable[str] = INTERMEDIATE_PATTERNS,
    after_run: Callable[[RunPrune], None] | None = None,
) -> PruneReport:
    """Remove the intermediates of RUN collections whose products are
    certified (see the module docstring).

    Parameters
    ----------
    butler
        A writeable butler.
    runs
        RUN collections (`resolve_runs`).
    dry_run
        Say what would be removed; remove nothing.
    force
        Also remove intermediates of runs whose products are not (all)
        certified.
    journal
        Where removals are recorded, for completing an interrupted one;
        its unfinished entries are completed first.
    patterns
        Dataset types that are intermediates.
    after_run
        Called with each run's outcome once it is done (progress).

    Returns
    -------
    report
        What was removed (or would be) and what was refused.
    """
    report = PruneReport(dry_run=dry_run)
    if journal is not None and not dry_run:
        report.recovered_files = _finish_journal(butler, journal)
    runs = list(runs)
    if not runs:
        return report
    registered = [dt.name for dt in butler.registry.queryDatasetTypes()]
    kinds = _matching(registered, patterns)
    products = [p for p in PRODUCT_TYPES if p in registered]
    certified = _certified_ids(butler, products)
    for run in runs:
        outcome = RunPrune(run)
        report.runs.append(outcome)
        refs = _refs(butler, kinds, run)
        if not refs:
            if after_run:
                after_run(outcome)
            continue
        made = _refs(butler, products, run)
        uncertified = sorted({f"{r.datasetType.name} {_data_id(r)}" for r in made if r.id not in certified})
        if not force and (not made or uncertified):
            outcome.refused = (
                "no product made from its intermediates yet (they are still needed to make one)"
                if not made
                else f"not certified: {', '.join(uncertified)} (certify, or --force to remove anyway)"
            )
            if after_run:
                after_run(outcome)
            continue
        files = []
        for ref in refs:
            path, size = _local_path(butler, ref)
            files.append((str(ref.id), path))
            outcome.nbytes += size
            outcome.removed[ref.datasetType.name] = outcome.removed.get(ref.datasetType.name, 0) + 1
        outcome.files = len(files)
        if not dry_run:
            if journal is not None:
                journal.record(run, {"status": "removing", "files": files, "bytes": outcome.nbytes})
            butler.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)
            leftovers = _delete_leftovers(butler, files)
            if leftovers:
                _LOG.warning(
                    "%s: %d file(s) were still on disk after their removal; deleted.", run, leftovers
                )
            if journal is not None:
                journal.record(run, {"status": "done", "files": [], "bytes": outcome.nbytes})
            _LOG.debug("%s: removed %d intermediate file(s), %s.", run, outcome.files, _size(outcome.nbytes))
        if after_run:
            after_run(outcome)
    return report


def _data_id(ref: DatasetRef) -> str:
    values = {k: v for k, v in ref.dataId.required.items() if k != "instrument"}
    return "(" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")" if values else ""
