"""Validity ranges of certified calibrations: parsing and checking the dates.

Calibration validity ranges are TAI times.  Dates are accepted as
``YYYY-MM-DD`` or ``YYYY-MM-DDThh:mm[:ss[.fff]]`` (TAI, no time zone: TAI has
none), or as the naive `datetime.date`/`datetime.datetime` values YAML makes
of unquoted dates.  Anything else — a time zone (``Z``, ``+00:00``), the
basic format ``20260101``, an aware datetime — is refused with a message
saying what to write instead, rather than reinterpreted.

The butler stores validity times from 1970-01-01 on: a range that begins
earlier (such as the customary 1950-01-01) is stored unbounded below
(``-inf``) and reported so; a range that ends before 1970 cannot be stored
and is refused.
"""

from __future__ import annotations

__all__ = ("EARLIEST_STORED", "ValidityRange", "parse_validity_date", "validity_range")

import dataclasses
import datetime
import re

import astropy.time

#: Earliest validity time the butler stores; earlier begins are unbounded.
EARLIEST_STORED = astropy.time.Time("1970-01-01T00:00:00", scale="tai")

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")

DateLike = str | datetime.date | datetime.datetime | astropy.time.Time


def parse_validity_date(value: DateLike, what: str) -> astropy.time.Time:
    """Parse one validity date as a TAI time.

    Parameters
    ----------
    value
        The date (see the module docstring for the accepted forms).
    what
        Name of the setting, for messages (``certify_calib_begin_date``,
        ``--begin``...).

    Raises
    ------
    ValueError
        One line naming the setting, the value and the accepted form.
    """
    hint = "write a TAI date as YYYY-MM-DD or YYYY-MM-DDThh:mm:ss, without a time zone"
    if isinstance(value, astropy.time.Time):
        return value.tai
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            raise ValueError(f"{what} {value.isoformat()} has a time zone: {hint}")
        value = value.isoformat()
    elif isinstance(value, datetime.date):
        value = value.isoformat()
    if not isinstance(value, str):
        raise ValueError(f"{what} {value!r} is not a date: {hint}")
    text = value.strip()
    if not _ISO.match(text):
        if re.search(r"(Z|[+-]\d{2}:?\d{2})$", text) and "T" in text:
            raise ValueError(f"{what} {text!r} has a time zone: {hint}")
        raise ValueError(f"{what} {text!r} is not a date of the form YYYY-MM-DD[Thh:mm:ss]: {hint}")
    try:
        return astropy.time.Time(text, format="isot" if "T" in text else "iso", scale="tai")
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a valid calendar date: {hint}") from None


@dataclasses.dataclass(frozen=True)
class ValidityRange:
    """A checked validity range ``[begin, end)``.

    Attributes
    ----------
    begin, end
        TAI times as given.
    unbounded_begin
        The range begins before 1970: it is stored unbounded below.
    """

    begin: astropy.time.Time
    end: astropy.time.Time
    unbounded_begin: bool

    @property
    def stored(self) -> tuple[str, str]:
        """``(begin, end)`` as the butler stores them (``-inf`` for an
        unbounded begin), ISO TAI."""
        return ("-inf" if self.unbounded_begin else self.begin.isot, self.end.isot)


def validity_range(
    begin: DateLike, end: DateLike, *, what: tuple[str, str] = ("begin", "end")
) -> ValidityRange:
    """Parse and check a validity range.

    Raises
    ------
    ValueError
        A date that does not parse, an empty range, or a range that ends
        before 1970 (which the butler cannot store).
    """
    t_begin = parse_validity_date(begin, what[0])
    t_end = parse_validity_date(end, what[1])
    if not t_begin < t_end:
        raise ValueError(f"{what[1]} {t_end.isot} is not after {what[0]} {t_begin.isot}: the range is empty")
    if t_end <= EARLIEST_STORED:
        raise ValueError(
            f"the validity range [{t_begin.isot}, {t_end.isot}) ends before 1970-01-01, the earliest time "
            f"the butler stores: give a {what[1]} after 1970"
        )
    return ValidityRange(t_begin, t_end, bool(t_begin < EARLIEST_STORED))
