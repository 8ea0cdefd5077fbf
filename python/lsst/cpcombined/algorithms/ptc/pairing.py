"""Pairing of PTC flats by equal exposure time."""

from __future__ import annotations

__all__ = ("FlatExposure", "FlatPair", "PairingResult", "pair_flats")

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FlatExposure:
    """One flat exposure as seen by the pairing step.

    Attributes
    ----------
    exposure_id : `int` or `str`
        Exposure identifier; pairs are formed in the (natural) order of ids.
    exp_time : `float`
        Exposure time in seconds.
    physical_filter : `str`
        Physical filter of the exposure.
    """

    exposure_id: Any
    exp_time: float
    physical_filter: str


@dataclasses.dataclass(frozen=True)
class FlatPair:
    """Two flats of (nearly) the same exposure time.

    Attributes
    ----------
    exp_time : `float`
        Mean exposure time of the two flats (s).
    first, second : `FlatExposure`
        The two exposures, in id order.
    """

    exp_time: float
    first: FlatExposure
    second: FlatExposure

    @property
    def ids(self) -> tuple[Any, Any]:
        """The two exposure ids."""
        return (self.first.exposure_id, self.second.exposure_id)


@dataclasses.dataclass(frozen=True)
class PairingResult:
    """Result of `pair_flats`.

    Attributes
    ----------
    pairs : `list` [`FlatPair`]
        Pairs, in increasing exposure time.
    unused : `list` [`FlatExposure`]
        Exposures not used in any pair (third and later flats at a time, and
        lone flats), in exposure-time then id order.
    warnings : `list` [`str`]
        Human-readable explanation of every unused exposure (and other
        oddities); each is also logged at WARNING level.
    """

    pairs: list[FlatPair]
    unused: list[FlatExposure]
    warnings: list[str]


def _as_flat(item: FlatExposure | Sequence[Any]) -> FlatExposure:
    if isinstance(item, FlatExposure):
        return item
    exposure_id, exp_time, physical_filter = item
    return FlatExposure(exposure_id, float(exp_time), str(physical_filter))


def pair_flats(
    exposures: Iterable[FlatExposure | Sequence[Any]],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-6,
) -> PairingResult:
    """Pair flat exposures by equal exposure time.

    Exposure times are grouped when they agree within
    ``|t - t0| <= rtol * max(|t|, |t0|) + atol``, ``t0`` being the shortest
    time of the group (no chaining: a slow drift of times does not merge
    distinct groups).  In each group the exposures are sorted by id and the
    first two form the pair.

    Parameters
    ----------
    exposures : iterable of `FlatExposure` or ``(id, exp_time, filter)``
        The flats.
    rtol, atol : `float`, optional
        Relative and absolute (s) tolerance on equal exposure times.

    Returns
    -------
    result : `PairingResult`
        Pairs, unused exposures and warning texts.  A group of one flat is
        skipped and reported; a group of three or more uses its first two
        flats and reports the others.

    Raises
    ------
    ValueError
        If the two flats of a pair have different physical filters (the
        message names both exposures and filters), or if an id is repeated.
    """
    flats = [_as_flat(e) for e in exposures]
    ids = [f.exposure_id for f in flats]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1}, key=str)
        raise ValueError(f"Duplicate flat exposure ids: {dup}")
    flats.sort(key=lambda f: f.exp_time)

    groups: list[list[FlatExposure]] = []
    for f in flats:
        if groups:
            t0 = groups[-1][0].exp_time
            if abs(f.exp_time - t0) <= rtol * max(abs(f.exp_time), abs(t0)) + atol:
                groups[-1].append(f)
                continue
        groups.append([f])

    pairs: list[FlatPair] = []
    unused: list[FlatExposure] = []
    messages: list[str] = []
    for group in groups:
        group.sort(key=lambda f: f.exposure_id)
        t = group[0].exp_time
        if len(group) == 1:
            unused.append(group[0])
            messages.append(f"Exposure time {t:g} s has a single flat ({group[0].exposure_id}); skipped.")
            continue
        a, b = group[0], group[1]
        if a.physical_filter != b.physical_filter:
            raise ValueError(
                f"Flat pair at exposure time {t:g} s mixes filters: exposure {a.exposure_id} "
                f"has '{a.physical_filter}' and exposure {b.exposure_id} has '{b.physical_filter}'."
            )
        pairs.append(FlatPair(0.5 * (a.exp_time + b.exp_time), a, b))
        if len(group) > 2:
            extra = group[2:]
            unused.extend(extra)
            messages.append(
                f"Exposure time {t:g} s has {len(group)} flats; using {a.exposure_id} and "
                f"{b.exposure_id}, not using {[f.exposure_id for f in extra]}."
            )
    filters = sorted({p.first.physical_filter for p in pairs})
    if len(filters) > 1:
        messages.append(f"Flat pairs use several physical filters: {filters}.")
    for m in messages:
        _LOG.warning(m)
    return PairingResult(pairs=pairs, unused=unused, warnings=messages)
