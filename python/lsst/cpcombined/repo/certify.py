"""Certification of generated calibrations into a CALIBRATION collection.

`certify_calibration` associates the ``bias``, ``dark`` or ``flat``
datasets of a RUN collection (a generation run) with a CALIBRATION
collection over a validity range ``[begin, end)`` — only when the
verification decision (``cpcVerifyBiasDecision`` and
``cpcVerifyDarkDecision`` per instrument, ``cpcVerifyFlatDecision`` per
instrument and physical filter, written by
`lsst.cpcombined.tasks.verify_decision.CpVerifyDecisionTask`) says so.
``defects``, ``ptc`` and any other calibration dataset type are certified
directly (they are not verified).

Rules
-----
- A "no" decision, a missing decision, or a decision about other datasets
  than the ones being certified raises `CertificationRefused`; nothing is
  certified.  Flats of several physical filters need a "yes" for each
  filter.  A decision that lists no calibration (its verification did not
  record them, e.g. cp_verify's outputs without ISR header provenance) is
  accepted with a warning that the datasets could not be checked.
- A validity range that overlaps an existing one for the same dataset type
  and data ID, held by a different dataset or with a different range, raises
  `CertificationConflict` naming each clash; nothing is certified (all data
  IDs are checked first, and the certification itself is one transaction,
  so a conflict found by the registry also leaves the collection as it
  was).  The butler registry enforces the same rule
  (``ConflictingDefinitionError``); checking first gives a clear message.
- Certifying exactly the same dataset with exactly the same range again is
  a no-op (reported in `CertifyResult.already_certified`), so a procedure
  can be re-run.
- Optionally the CALIBRATION collection is prepended to a CHAINED
  collection (created if needed; left alone if it already contains it), in
  the same transaction.
"""

from __future__ import annotations

__all__ = (
    "VERIFIED_TYPES",
    "CertificationConflict",
    "CertificationError",
    "CertificationRefused",
    "CertifiedDataset",
    "CertifyResult",
    "certify_calibration",
    "decision_dataset_type",
    "read_decision",
    "resolve_run",
)

import dataclasses
import datetime
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import astropy.time

from lsst.daf.butler import (
    Butler,
    CollectionType,
    DatasetRef,
    InvalidQueryError,
    MissingCollectionError,
    MissingDatasetTypeError,
    Timespan,
)
from lsst.daf.butler.registry import ConflictingDefinitionError

from .validity import validity_range

_LOG = logging.getLogger(__name__)

#: Calibration types that need a verification decision before certification.
VERIFIED_TYPES: tuple[str, ...] = ("bias", "dark", "flat")


class CertificationError(RuntimeError):
    """Certification could not be done (nothing was certified)."""


class CertificationRefused(CertificationError):
    """The verification decision does not allow certification (it says no,
    is missing, or concerns other datasets).  Nothing was certified.

    Attributes
    ----------
    decision : `dict` or `None`
        The decision dataset, when one was read.
    """

    def __init__(self, message: str, decision: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.decision = dict(decision) if decision is not None else None


class CertificationConflict(CertificationError):
    """A validity range overlaps an existing one for the same dataset type
    and data ID.  Nothing was certified.

    Attributes
    ----------
    conflicts : `list` [`dict`]
        One entry per clash: ``data_id``, ``new_id``, ``existing_id``,
        ``existing_run``, ``existing_begin``, ``existing_end``.
    """

    def __init__(self, message: str, conflicts: Iterable[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.conflicts = [dict(c) for c in conflicts]


@dataclasses.dataclass(frozen=True)
class CertifiedDataset:
    """One dataset handled by `certify_calibration`.

    Attributes
    ----------
    data_id : `dict`
        Required data ID values (``instrument``, ``detector``...).
    id : `str`
        Dataset UUID.
    run : `str`
        RUN collection holding it.
    """

    data_id: dict[str, Any]
    id: str
    run: str


@dataclasses.dataclass(frozen=True)
class CertifyResult:
    """Outcome of `certify_calibration`.

    Attributes
    ----------
    dataset_type : `str`
        Dataset type certified.
    run : `str`
        RUN collection the datasets came from.
    calib_collection : `str`
        CALIBRATION collection.
    begin, end : `str`
        Validity range ``[begin, end)`` as stored, ISO TAI; ``"-inf"`` /
        ``"+inf"`` when unbounded (the butler stores times from 1970 on, so
        an earlier begin, such as the customary 1950-01-01, is unbounded).
    certified : `tuple` [`CertifiedDataset`, ...]
        Datasets newly certified by this call.
    already_certified : `tuple` [`CertifiedDataset`, ...]
        Datasets that were already certified with exactly this range
        (left as they were).
    decision : `dict` or `None`
        The verification decision that allowed it (`None` for types
        certified directly or when no decision was required; when the
        datasets need several decisions — several instruments, or flats of
        several physical filters — a mapping ``"<instrument>"`` or
        ``"<instrument> <physical_filter>"`` → decision).
    chain : `str` or `None`
        CHAINED collection the calibration collection was to be prepended to.
    chain_updated : `bool`
        Whether the chain was changed (created or prepended to).
    """

    dataset_type: str
    run: str
    calib_collection: str
    begin: str
    end: str
    certified: tuple[CertifiedDataset, ...]
    already_certified: tuple[CertifiedDataset, ...]
    decision: dict[str, Any] | None = None
    chain: str | None = None
    chain_updated: bool = False

    @property
    def n_certified(self) -> int:
        """Number of datasets newly certified."""
        return len(self.certified)

    def summary(self) -> str:
        """One-line human-readable summary."""
        text = (
            f"{self.dataset_type}: {len(self.certified)} dataset(s) from {self.run} certified into "
            f"{self.calib_collection} for [{self.begin}, {self.end})"
        )
        if self.already_certified:
            text += f"; {len(self.already_certified)} already certified with this range"
        if self.chain:
            how = "prepended to" if self.chain_updated else "already in"
            text += f"; {self.calib_collection} {how} {self.chain}"
        return text


def decision_dataset_type(calib_type: str) -> str:
    """Name of the decision dataset type of a verified calibration type
    (``"bias"`` → ``"cpcVerifyBiasDecision"``)."""
    if calib_type not in VERIFIED_TYPES:
        raise ValueError(f"{calib_type!r} is not verified; expected one of {VERIFIED_TYPES}")
    return f"cpcVerify{calib_type.capitalize()}Decision"


TimeLike = str | astropy.time.Time | datetime.datetime | datetime.date


def resolve_run(butler: Butler, collection: str) -> str:
    """The RUN collection to take calibrations from.

    A RUN is returned as is; a CHAINED collection (such as the output of
    ``pipetask run -o``) resolves to its first child, recursively — the
    latest RUN of a pipetask output, as ``butler certify-calibrations``
    does.

    Raises
    ------
    CertificationError
        If the collection does not exist or is neither RUN nor CHAINED.
    """
    seen: list[str] = []
    name = collection
    while True:
        try:
            info = butler.collections.get_info(name)
        except MissingCollectionError:
            raise CertificationError(f"collection {name!r} does not exist") from None
        if info.type is CollectionType.RUN:
            return name
        if info.type is CollectionType.CHAINED and info.children and name not in seen:
            seen.append(name)
            name = info.children[0]
            continue
        raise CertificationError(
            f"cannot certify from {collection!r}: {name!r} is a {info.type.name} collection, "
            "expected a RUN (or a CHAINED collection whose first child is one)"
        )


def read_decision(
    butler: Butler,
    calib_type: str,
    collection: str | Iterable[str],
    instrument: str,
    physical_filter: str | None = None,
) -> dict[str, Any]:
    """Read the verification decision of ``calib_type`` for ``instrument``
    (and, for a flat, ``physical_filter``).

    Raises
    ------
    CertificationRefused
        If no decision is found.
    """
    name = decision_dataset_type(calib_type)
    collections = [collection] if isinstance(collection, str) else list(collection)
    data_id: dict[str, Any] = {"instrument": instrument}
    if calib_type == "flat":
        if physical_filter is None:
            raise ValueError("a flat decision is per physical filter: give physical_filter")
        data_id["physical_filter"] = physical_filter
    what = _fmt_group(instrument, physical_filter if calib_type == "flat" else None)
    try:
        ref = butler.find_dataset(name, collections=collections, **data_id)
    except (MissingCollectionError, MissingDatasetTypeError) as err:
        raise CertificationRefused(
            f"no {name} for {what} in {collections}: {err}; run the {calib_type} verification first "
            "(or certify without a decision explicitly)"
        ) from None
    if ref is None:
        raise CertificationRefused(
            f"no {name} for {what} in {collections}: run the {calib_type} verification first "
            "(or certify without a decision explicitly)"
        )
    return dict(butler.get(ref))


def _fmt_group(instrument: str, physical_filter: str | None) -> str:
    """``"LATISS"`` or ``"LATISS SDSSr_65mm~empty"``: what one decision is about."""
    return instrument if physical_filter is None else f"{instrument} {physical_filter}"


def _fmt_time(t: astropy.time.Time | None, unbounded: str) -> str:
    return unbounded if t is None else t.tai.isot


def _data_id(ref: DatasetRef) -> dict[str, Any]:
    return {str(k): v for k, v in ref.dataId.required.items()}


def _fmt_data_id(data_id: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in data_id.items())


def _check_decision(
    decision: Mapping[str, Any], calib_type: str, refs: list[DatasetRef], instrument: str, match: bool
) -> None:
    """Refuse unless the decision allows certifying ``refs``
    (``instrument`` names what the decision is about, in messages)."""
    dtype = decision_dataset_type(calib_type)
    found_type = decision.get("CALIB_TYPE")
    if found_type not in (None, calib_type):
        raise CertificationRefused(
            f"{dtype} of {instrument} is about a {found_type!r}, not a {calib_type!r}", decision
        )
    if not decision.get("CERTIFY", False):
        report = decision.get("REPORT", "")
        raise CertificationRefused(
            f"the {calib_type} verification decision for {instrument} is NO: nothing certified."
            + (f"\n{report}" if report else ""),
            decision,
        )
    if not match:
        return
    verified = (decision.get("CALIBRATIONS") or {}).get(calib_type)
    if verified is None:
        _LOG.warning(
            "%s of %s does not list the calibration datasets it verified (its verification results did not "
            "record them, e.g. cp_verify's outputs without ISR header provenance); the %d dataset(s) certified "
            "are not checked against it.",
            dtype,
            instrument,
            len(refs),
        )
        return
    ids = {str(r["id"]) for r in verified}
    unverified = [ref for ref in refs if str(ref.id) not in ids]
    if unverified:
        shown = "; ".join(f"{_fmt_data_id(_data_id(r))} ({r.id}, run {r.run})" for r in unverified[:5])
        used = "; ".join(
            f"{_fmt_data_id(r.get('data_id', {}))} ({r['id']}, run {r.get('run')})" for r in verified[:5]
        )
        raise CertificationRefused(
            f"the {calib_type} verification decision for {instrument} does not concern "
            f"{len(unverified)} of the {len(refs)} dataset(s) to certify: {shown}. "
            f"It verified: {used}. Verify these datasets (their run among the verification inputs) "
            "before certifying them.",
            decision,
        )


def certify_calibration(
    butler: Butler,
    *,
    dataset_type: str,
    run: str,
    calib_collection: str,
    begin: TimeLike,
    end: TimeLike,
    decision_collection: str | Iterable[str] | None = None,
    require_decision: bool = True,
    match_decision: bool = True,
    where: str = "",
    chain: str | None = None,
    what: tuple[str, str] = ("begin", "end"),
) -> CertifyResult:
    """Certify the calibrations of a RUN collection into a CALIBRATION
    collection over ``[begin, end)``.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler.
    dataset_type : `str`
        ``bias``, ``dark``, ``flat`` (need a decision), ``defects``, ``ptc``
        or another calibration dataset type (certified directly).
    run : `str`
        RUN collection of the generation (a CHAINED collection resolves to
        its first child, see `resolve_run`).
    calib_collection : `str`
        CALIBRATION collection (registered if it does not exist).
    begin, end
        Validity range, ISO-8601 strings (TAI), `astropy.time.Time` or
        `datetime`; ``begin < end``.
    decision_collection : `str` or `list` [`str`], optional
        Collection(s) holding ``cpcVerify<Type>Decision`` (the verification
        output; for flats one per physical filter certified).  Required for
        bias/dark/flat unless ``require_decision`` is false; when given, the
        decision is always enforced.
    require_decision : `bool`
        Refuse a bias/dark/flat without a decision (default).  False
        certifies it directly when no ``decision_collection`` is given
        (logged as a warning).
    match_decision : `bool`
        Also require that the decision lists, among the calibrations it
        verified, every dataset being certified (by dataset id), so that a
        decision about another calibration (e.g. the previously certified
        one, in external verification) never certifies a new one.
    where : `str`, optional
        Butler query expression restricting the datasets (e.g.
        ``"instrument = 'LSSTComCam' AND detector IN (0, 4)"``; the
        butler needs the instrument constrained).
    chain : `str`, optional
        CHAINED collection to prepend ``calib_collection`` to (created when
        missing; unchanged when it already contains it).
    what : `tuple` [`str`, `str`]
        Names of the begin and end settings in messages (the CLI's
        ``--begin``/``--end``, the script's ``certify_calib_*_date``).

    Returns
    -------
    result : `CertifyResult`

    Raises
    ------
    CertificationRefused
        The decision is "no", missing, or about other datasets.
    CertificationConflict
        A validity range overlaps an existing one for the same dataset type
        and data ID (with a different dataset or range).
    CertificationError
        Other failures (no datasets, bad collections, not a calibration
        dataset type).  In every case nothing is certified.
    """
    validity = validity_range(begin, end, what=what)
    # A begin before 1970 is stored unbounded (the butler's times start there).
    timespan = Timespan(begin=None if validity.unbounded_begin else validity.begin, end=validity.end)
    span = f"[{_fmt_time(timespan.begin, '-inf')}, {_fmt_time(timespan.end, '+inf')})"

    try:
        dtype = butler.get_dataset_type(dataset_type)
    except MissingDatasetTypeError:
        raise CertificationError(f"unknown dataset type {dataset_type!r} in this repository") from None
    if not dtype.isCalibration():
        raise CertificationError(f"{dataset_type!r} is not a calibration dataset type")

    run_name = resolve_run(butler, run)
    try:
        refs = list(
            butler.query_datasets(dtype, collections=run_name, find_first=True, where=where, explain=False)
        )
    except InvalidQueryError as err:
        raise CertificationError(f"invalid dataset query {where!r}: {err}") from None
    if not refs:
        raise CertificationError(
            f"no {dataset_type} datasets in {run_name}" + (f" matching {where!r}" if where else "")
        )
    refs.sort(key=lambda r: tuple(str(v) for v in r.dataId.required.values()))

    # -- decision ------------------------------------------------------------------
    decision: dict[str, Any] | None = None
    if dataset_type in VERIFIED_TYPES:
        if decision_collection is None:
            if require_decision:
                raise CertificationRefused(
                    f"certifying a {dataset_type} needs its verification decision "
                    f"({decision_dataset_type(dataset_type)}): name the verification output that holds it "
                    "(--decision-collection; decision_collection= in Python), or certify without verification "
                    "(--no-decision; require_decision=False)"
                )
            _LOG.warning("Certifying %s from %s WITHOUT a verification decision.", dataset_type, run_name)
        else:
            # One decision per instrument (and per physical filter for flats).
            groups: dict[tuple[str, str | None], list[DatasetRef]] = {}
            for ref in refs:
                band = str(ref.dataId["physical_filter"]) if dataset_type == "flat" else None
                groups.setdefault((str(ref.dataId["instrument"]), band), []).append(ref)
            decisions: dict[str, dict[str, Any]] = {}
            for (instrument, band), group_refs in groups.items():
                key = _fmt_group(instrument, band)
                decisions[key] = read_decision(butler, dataset_type, decision_collection, instrument, band)
                _check_decision(decisions[key], dataset_type, group_refs, key, match_decision)
            # One decision (the usual case): the decision itself; several: by group.
            decision = next(iter(decisions.values())) if len(decisions) == 1 else decisions

    # -- conflicts and repeats -----------------------------------------------------------
    new_refs, already, conflicts = _classify(butler, dtype, refs, calib_collection, timespan)
    if conflicts:
        lines = [
            f"  {_fmt_data_id(c['data_id'])}: new {c['new_id']} vs existing {c['existing_id']} "
            f"(run {c['existing_run']}) valid [{c['existing_begin']}, {c['existing_end']})"
            for c in conflicts
        ]
        raise CertificationConflict(
            f"cannot certify {dataset_type} into {calib_collection} for {span}: {len(conflicts)} "
            "overlapping validity range(s) for the same data ID; nothing was certified "
            "(decertify the existing ones or choose a non-overlapping range):\n" + "\n".join(lines),
            conflicts,
        )

    # -- write -------------------------------------------------------------------------
    chain_updated = False
    butler.collections.register(calib_collection, CollectionType.CALIBRATION)
    if chain is not None:
        _check_chain(butler, chain, calib_collection)
    try:
        with butler.transaction():
            if new_refs:
                butler.registry.certify(calib_collection, new_refs, timespan)
            if chain is not None:
                chain_updated = _prepend(butler, chain, calib_collection)
    except ConflictingDefinitionError as err:
        raise CertificationConflict(
            f"cannot certify {dataset_type} into {calib_collection} for {span}: the registry reports an "
            f"overlapping validity range ({err}); nothing was certified"
        ) from err

    def described(rs: list[DatasetRef]) -> tuple[CertifiedDataset, ...]:
        return tuple(CertifiedDataset(_data_id(r), str(r.id), str(r.run)) for r in rs)

    result = CertifyResult(
        dataset_type=dataset_type,
        run=run_name,
        calib_collection=calib_collection,
        begin=_fmt_time(timespan.begin, "-inf"),
        end=_fmt_time(timespan.end, "+inf"),
        certified=described(new_refs),
        already_certified=described(already),
        decision=decision,
        chain=chain,
        chain_updated=chain_updated,
    )
    _LOG.debug("%s", result.summary())
    return result


def _classify(
    butler: Butler, dtype: Any, refs: list[DatasetRef], calib_collection: str, timespan: Timespan
) -> tuple[list[DatasetRef], list[DatasetRef], list[dict[str, Any]]]:
    """Split ``refs`` into new, already-certified-identically and conflicting."""
    try:
        info = butler.collections.get_info(calib_collection)
    except MissingCollectionError:
        return list(refs), [], []
    if info.type is not CollectionType.CALIBRATION:
        raise CertificationError(f"{calib_collection!r} is a {info.type.name} collection, not CALIBRATION")
    existing: dict[Any, list[Any]] = {}
    for assoc in butler.registry.queryDatasetAssociations(
        dtype, collections=[calib_collection], collectionTypes={CollectionType.CALIBRATION}
    ):
        existing.setdefault(assoc.ref.dataId.required_values, []).append(assoc)
    new_refs: list[DatasetRef] = []
    already: list[DatasetRef] = []
    conflicts: list[dict[str, Any]] = []
    for ref in refs:
        same_range = False
        clash = False
        for assoc in existing.get(ref.dataId.required_values, []):
            if assoc.timespan is None or not assoc.timespan.overlaps(timespan):
                continue
            if assoc.ref.id == ref.id and assoc.timespan == timespan:
                same_range = True
                continue
            clash = True
            ts = assoc.timespan
            conflicts.append(
                {
                    "data_id": _data_id(ref),
                    "new_id": str(ref.id),
                    "existing_id": str(assoc.ref.id),
                    "existing_run": str(assoc.ref.run),
                    "existing_begin": _fmt_time(ts.begin, "-inf"),
                    "existing_end": _fmt_time(ts.end, "+inf"),
                }
            )
        if clash:
            continue
        (already if same_range else new_refs).append(ref)
    return new_refs, already, conflicts


def _check_chain(butler: Butler, chain: str, calib_collection: str) -> None:
    """Create ``chain`` (CHAINED) if needed; error if it is another type."""
    try:
        info = butler.collections.get_info(chain)
    except MissingCollectionError:
        butler.collections.register(chain, CollectionType.CHAINED)
        return
    if info.type is not CollectionType.CHAINED:
        raise CertificationError(f"{chain!r} is a {info.type.name} collection, not CHAINED")
    if chain == calib_collection:
        raise CertificationError("the chain and the calibration collection must differ")


def _prepend(butler: Butler, chain: str, calib_collection: str) -> bool:
    """Prepend ``calib_collection`` to ``chain`` unless it is already in it."""
    children = butler.collections.get_info(chain).children
    if calib_collection in children:
        return False
    butler.collections.prepend_chain(chain, calib_collection)
    return True
