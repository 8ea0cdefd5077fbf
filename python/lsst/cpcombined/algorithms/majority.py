"""The majority rule that decides whether a verified calibration is certified.

Rule as implemented
-------------------
Inputs: the failure strings of each of the N verified exposures (the test
name is the last space-separated token), the number D of detectors verified
and the per-type threshold T (``number_verification_tests_threshold_{bias,
dark,flat}``, default 8).

1. For each exposure, count the failures *per test name* over all its
   amplifiers, detectors and exposure-level tests (``"R22_S11 C10 NOISE"``
   and ``"R22_S00 C03 NOISE"`` are two ``NOISE`` failures; a detector-level
   ``"R22_S11 SCATTER"`` and the exposure-level ``"SCATTER"`` are both
   ``SCATTER`` failures).  Failures of different tests are never added.
2. The exposure **fails** when any single test has at least
   ``T × (⌊D/2⌋ + 1)`` failures (the *per-test failure limit*): T failures
   per detector on a majority of the detectors.
3. The calibration **fails** (is not certified) when the number of failed
   exposures reaches ``⌊N/2⌋ + 1``, a strict majority of the exposures;
   otherwise it is certified.  With no exposure verified (N = 0) nothing is
   certified.

Where the failures come from
----------------------------
`decide_from_exposure_stats` reads the exposure-level dictionaries
(``verify<Type>ExpStats``, one per exposure, in cp_verify's shape, whether
cp_verify or this package wrote them): per exposure, ``"<detector>
<failure>"`` for every failure a detector entry lists (``"R22_S11 C10
NOISE"``, ``"R22_S11 SCATTER"``) and ``"<TEST>"`` for every failed
exposure-level test (``VERIFY.EXP``) — see
`lsst.cpcombined.algorithms.verify.exposure_failures`.  N is the number of
exposure dictionaries and D the number of distinct detector names in them.
The run-level dictionary is not used: cp_verify's lists, for flats, only
the exposure-level ``SCATTER`` test (its flat exposure dictionaries carry a
``VERIFY`` key, which makes its run merge skip the detector entries), so
flat amplifier and detector failures would never be counted.

Differences from the original ScriptQueue script
------------------------------------------------
The original script iterates over the run-level verification dictionary,
in which the ``SUCCESS`` key sits next to the exposures, so ``SUCCESS`` was
counted as one more exposure in N (which raises the limit ``⌊N/2⌋ + 1`` by
one whenever the true N is odd).  It also documents T as a number of tests
that must *pass* while using it as a number of *failures*, and (reading the
run level) never sees the amplifier and detector failures of flats.  Here N
counts only exposures, T is documented and used as a failure-count
threshold per test, the failures are read from the exposure level, and both
limits are "reaches", i.e. ``>=``, tested at the boundary.
"""

from __future__ import annotations

__all__ = (
    "DEFAULT_THRESHOLD",
    "ExposureVerdict",
    "MajorityDecision",
    "count_failures",
    "decide_from_exposure_stats",
    "exposure_failure_limit",
    "failure_limit_per_test",
    "failures_by_exposure",
    "failures_from_exposure_stats",
    "majority_decision",
)

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .verify import exposure_detectors, exposure_failures

#: Key of a run-level dictionary that is not an exposure.
_SUMMARY_KEYS = frozenset({"SUCCESS"})

#: Default threshold T (``number_verification_tests_threshold_*``).
DEFAULT_THRESHOLD = 8


def failure_limit_per_test(n_detectors: int, threshold: int = DEFAULT_THRESHOLD) -> int:
    """Failures of one test that fail an exposure: ``T × (⌊D/2⌋ + 1)``."""
    if n_detectors < 1:
        raise ValueError(f"number of detectors must be >= 1, not {n_detectors}")
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1, not {threshold}")
    return int(threshold) * (int(n_detectors) // 2 + 1)


def exposure_failure_limit(n_exposures: int) -> int:
    """Failed exposures that fail the calibration: ``⌊N/2⌋ + 1``."""
    if n_exposures < 0:
        raise ValueError(f"number of exposures must be >= 0, not {n_exposures}")
    return int(n_exposures) // 2 + 1


def count_failures(failures: Iterable[str]) -> dict[str, int]:
    """Number of failures per test name (last token of each string),
    sorted by decreasing count then name."""
    counts: dict[str, int] = {}
    for failure in failures:
        tokens = str(failure).split()
        if not tokens:
            raise ValueError("empty failure string")
        counts[tokens[-1]] = counts.get(tokens[-1], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def failures_by_exposure(results: Mapping[Any, Any]) -> dict[str, list[str]]:
    """Per-exposure failure lists from a mapping exposure → failures.

    Parameters
    ----------
    results
        A mapping exposure → list of failure strings, or exposure → a
        dictionary with an optional ``FAILURES`` list (a run-level
        dictionary, ours or cp_verify's; its ``SUCCESS`` key is skipped,
        never counted as an exposure).

    Returns
    -------
    failures : `dict` [`str`, `list` [`str`]]
        Exposure id (as `str`) → its failure strings.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"cannot read exposure failures from {type(results).__name__}")
    out: dict[str, list[str]] = {}
    for exp, failures in results.items():
        if exp in _SUMMARY_KEYS:
            continue
        if isinstance(failures, str):
            raise TypeError(f"exposure {exp}: failures must be a list of strings, not a string")
        if isinstance(failures, Mapping):
            failures = failures.get("FAILURES") or []
        if str(exp) in out:
            raise ValueError(f"exposure {exp} given twice")
        out[str(exp)] = list(failures)
    return out


def failures_from_exposure_stats(
    exp_stats: Mapping[Any, Mapping[str, Any]],
) -> tuple[dict[str, list[str]], list[str]]:
    """Failure strings per exposure, and the detectors, from exposure-level
    dictionaries.

    Parameters
    ----------
    exp_stats
        Exposure id → exposure-level dictionary (``verify<Type>ExpStats``,
        written by cp_verify or by this package).

    Returns
    -------
    failures : `dict` [`str`, `list` [`str`]]
        Exposure id (as `str`) → ``"<detector> <amp> <TEST>"``,
        ``"<detector> <TEST>"`` and ``"<TEST>"`` strings
        (`lsst.cpcombined.algorithms.verify.exposure_failures`).
    detectors : `list` [`str`]
        Sorted distinct detector names.
    """
    failures: dict[str, list[str]] = {}
    detectors: set[str] = set()
    for exp, stats in exp_stats.items():
        if str(exp) in failures:
            raise ValueError(f"exposure {exp} given twice")
        failures[str(exp)] = exposure_failures(stats)
        detectors.update(exposure_detectors(stats))
    return failures, sorted(detectors)


@dataclasses.dataclass(frozen=True)
class ExposureVerdict:
    """Outcome of the rule for one exposure.

    Attributes
    ----------
    exposure : `str`
        Exposure id.
    failed : `bool`
        Whether some test reached the per-test failure limit.
    counts : `dict` [`str`, `int`]
        Failures per test name (all of them).
    failing_tests : `dict` [`str`, `int`]
        The tests that reached the limit, with their counts.
    """

    exposure: str
    failed: bool
    counts: dict[str, int]
    failing_tests: dict[str, int]


@dataclasses.dataclass(frozen=True)
class MajorityDecision:
    """Decision of the majority rule and its reasons.

    Attributes
    ----------
    calib_type : `str` or `None`
        Calibration type (for the report).
    certify : `bool`
        Whether the calibration passes and may be certified.
    n_exposures, n_detectors, threshold : `int`
        N, D and T.
    test_failure_limit : `int`
        ``T × (⌊D/2⌋ + 1)``.
    n_failed_exposures : `int`
        Exposures that failed the rule.
    exposure_failure_limit : `int`
        ``⌊N/2⌋ + 1``.
    exposures : `dict` [`str`, `ExposureVerdict`]
        Verdict of every exposure.
    report : `str`
        Human-readable multi-line report.
    detectors : `tuple` [`str`, ...]
        Names of the detectors verified, when known (empty otherwise).
    """

    calib_type: str | None
    certify: bool
    n_exposures: int
    n_detectors: int
    threshold: int
    test_failure_limit: int
    n_failed_exposures: int
    exposure_failure_limit: int
    exposures: dict[str, ExposureVerdict]
    report: str
    detectors: tuple[str, ...] = ()

    @property
    def failed_exposures(self) -> dict[str, dict[str, int]]:
        """Failed exposure → the tests (with counts) that failed it."""
        return {e: dict(v.failing_tests) for e, v in self.exposures.items() if v.failed}

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Exposure → failures per test name (every exposure)."""
        return {e: dict(v.counts) for e, v in self.exposures.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-serialisable form of the decision."""
        return {
            "CALIB_TYPE": self.calib_type,
            "CERTIFY": self.certify,
            "N_EXPOSURES": self.n_exposures,
            "N_DETECTORS": self.n_detectors,
            "DETECTORS": list(self.detectors),
            "THRESHOLD": self.threshold,
            "TEST_FAILURE_LIMIT": self.test_failure_limit,
            "N_FAILED_EXPOSURES": self.n_failed_exposures,
            "EXPOSURE_FAILURE_LIMIT": self.exposure_failure_limit,
            "FAILED_EXPOSURES": self.failed_exposures,
            "COUNTS": self.counts,
            "REPORT": self.report,
        }


def majority_decision(
    results: Mapping[Any, Any],
    *,
    n_detectors: int | None = None,
    threshold: int | Mapping[str, int] = DEFAULT_THRESHOLD,
    calib_type: str | None = None,
    detectors: Iterable[str] = (),
) -> MajorityDecision:
    """Apply the majority rule (see the module docstring).

    Parameters
    ----------
    results
        Per-exposure failures, in any form accepted by
        `failures_by_exposure`.  N is the number of exposures in it; an
        exposure with no failures is a passing exposure and must be present.
    n_detectors : `int`
        D, the number of detectors verified (required).
    threshold : `int` or `dict` [`str`, `int`]
        T, or a mapping calibration type → T (then ``calib_type`` selects
        it; types missing from it use `DEFAULT_THRESHOLD`).
    calib_type : `str`, optional
        Calibration type (selects a per-type threshold; named in the report).
    detectors : iterable of `str`, optional
        Names of the detectors verified (recorded in the decision).

    Returns
    -------
    decision : `MajorityDecision`
        The decision, its numbers and its report.
    """
    if isinstance(threshold, Mapping):
        if calib_type is None:
            raise ValueError("a threshold per calibration type needs calib_type")
        t = int(threshold.get(calib_type, DEFAULT_THRESHOLD))
    else:
        t = int(threshold)
    if n_detectors is None:
        raise ValueError("n_detectors (D, the number of detectors verified) is required")

    per_exposure = failures_by_exposure(results)
    n = len(per_exposure)
    test_limit = failure_limit_per_test(n_detectors, t)
    exp_limit = exposure_failure_limit(n)

    verdicts: dict[str, ExposureVerdict] = {}
    for exp, failures in per_exposure.items():
        counts = count_failures(failures)
        failing = {name: c for name, c in counts.items() if c >= test_limit}
        verdicts[exp] = ExposureVerdict(exp, bool(failing), counts, failing)
    n_failed = sum(v.failed for v in verdicts.values())
    certify = n > 0 and n_failed < exp_limit

    report = _report(calib_type, certify, n, int(n_detectors), t, test_limit, n_failed, exp_limit, verdicts)
    return MajorityDecision(
        calib_type=calib_type,
        certify=certify,
        n_exposures=n,
        n_detectors=int(n_detectors),
        threshold=t,
        test_failure_limit=test_limit,
        n_failed_exposures=n_failed,
        exposure_failure_limit=exp_limit,
        exposures=verdicts,
        report=report,
        detectors=tuple(str(d) for d in detectors),
    )


def decide_from_exposure_stats(
    exp_stats: Mapping[Any, Mapping[str, Any]],
    *,
    threshold: int | Mapping[str, int] = DEFAULT_THRESHOLD,
    calib_type: str | None = None,
    n_detectors: int | None = None,
) -> MajorityDecision:
    """Apply the majority rule to exposure-level verification dictionaries.

    Parameters
    ----------
    exp_stats
        Exposure id → ``verify<Type>ExpStats`` dictionary (cp_verify's or
        ours), one per exposure verified: N is their number.
    threshold, calib_type
        As for `majority_decision`.
    n_detectors : `int`, optional
        D; by default the number of distinct detector names in
        ``exp_stats``.

    Returns
    -------
    decision : `MajorityDecision`
        The decision (with the detector names), its numbers and its report.
    """
    failures, detectors = failures_from_exposure_stats(exp_stats)
    if n_detectors is None:
        if exp_stats and not detectors:
            raise ValueError("the exposure verification results name no detector: cannot count D")
        n_detectors = max(len(detectors), 1)
    return majority_decision(
        failures, n_detectors=n_detectors, threshold=threshold, calib_type=calib_type, detectors=detectors
    )


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {c}" for name, c in counts.items()) or "none"


def _report(
    calib_type: str | None,
    certify: bool,
    n: int,
    d: int,
    t: int,
    test_limit: int,
    n_failed: int,
    exp_limit: int,
    verdicts: Mapping[str, ExposureVerdict],
) -> str:
    what = calib_type or "calibration"
    lines = [
        f"Majority decision for {what}: {'CERTIFY' if certify else 'DO NOT CERTIFY'}",
        f"  N = {n} exposures verified, D = {d} detectors, T = {t}",
        f"  an exposure fails when one test has >= T x (floor(D/2) + 1) = {t} x {d // 2 + 1} = "
        f"{test_limit} failures",
        f"  the calibration fails when >= floor(N/2) + 1 = {exp_limit} exposures fail",
        f"  failed exposures: {n_failed} of {n} (limit {exp_limit})",
    ]
    if n == 0:
        lines.append("  no exposure was verified: nothing to certify")
    failed = [v for v in verdicts.values() if v.failed]
    if failed:
        lines.append("  exposures that failed:")
        for v in failed:
            reasons = ", ".join(f"{name} {c} >= {test_limit}" for name, c in v.failing_tests.items())
            lines.append(f"    {v.exposure}: {reasons} (all failures: {_fmt_counts(v.counts)})")
    below = [v for v in verdicts.values() if not v.failed and v.counts]
    if below:
        lines.append(f"  exposures with failures below the limit of {test_limit}:")
        for v in below:
            lines.append(f"    {v.exposure}: {_fmt_counts(v.counts)}")
    clean = sum(1 for v in verdicts.values() if not v.counts)
    lines.append(f"  exposures without any failure: {clean}")
    return "\n".join(lines)
