"""Dates as the protocol's rules read them (docs/protocol.md §1): full dates are ``datetime.date``; a FHIR date
that may lack its day or month is a :class:`PartialDate`. Helpers compare either with a day, and count days.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from typing import NamedTuple


class PartialDate(NamedTuple):
    """A FHIR date as precise as the record wrote it: ``2004``, ``2004-07`` or ``2004-07-15``.

    A part not given is 0, so that partial dates sort as their texts do (a year before its months). ``str``
    gives the text back at its own precision.
    """

    year: int
    month: int = 0
    day: int = 0

    def __str__(self) -> str:
        if not self.month:
            return f"{self.year:04d}"
        if not self.day:
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"

    @property
    def full(self) -> date | None:
        """The day, when the record gives one."""
        return date(self.year, self.month, self.day) if self.day else None

    def cut(self, day: date) -> PartialDate:
        """``day`` at this date's precision, to compare with it: 2004-07 against 2004-07-15 is 2004-07."""
        return PartialDate(day.year, day.month if self.month else 0, day.day if self.day else 0)


_ISO = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


@lru_cache(maxsize=1 << 14)
def partial_date(text: str) -> PartialDate | None:
    """An ISO date (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``) as a PartialDate; anything else None."""
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day = (int(part) if part else 0 for part in match.groups())
    if match.group(2) is not None and not 1 <= month <= 12:
        return None
    if day:
        try:
            date(year, month, day)  # a calendar day (not 2005-02-29)
        except ValueError:
            return None
    elif match.group(3) is not None:
        return None  # day 00
    return PartialDate(year, month, day)


def full_day(value: PartialDate | None) -> date | None:
    """The day of a date that has one (None for a partial or missing date)."""
    return value.full if value is not None else None


@lru_cache(maxsize=1 << 16)
def to_date(value: str | None) -> date | None:
    """A full ``YYYY-MM-DD`` as a date; partial or missing dates give ``None``. Memoised: a cohort repeats its
    dates, and every observation's goes through here."""
    if value is None or len(value) != 10:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def inclusive_days(start: date, end: date) -> int:
    """CDISC ADaM duration: ``end - start + 1`` (the first day is day 1)."""
    return (end - start).days + 1


def age_bounds(birth: PartialDate, on: date) -> tuple[int, int]:
    """Smallest and largest possible completed age in years on ``on`` for a full or partial birth date."""
    year, month, day = birth
    if day:
        age = on.year - year - ((on.month, on.day) < (month, day))
        return age, age
    if month:
        youngest = on.year - year - ((on.month, on.day) < (month, 31))
        oldest = on.year - year - ((on.month, on.day) < (month, 1))
        return max(youngest, 0), max(oldest, 0)
    return max(on.year - year - 1, 0), max(on.year - year, 0)


def on_or_before(value: PartialDate | None, limit: date) -> bool:
    """True if a (possibly partial) date may lie on or before ``limit``: compared at its own precision."""
    return value is not None and value <= value.cut(limit)


def strictly_before(value: PartialDate | None, limit: date) -> bool:
    """True if a (possibly partial) date is certainly before ``limit``."""
    return value is not None and value < value.cut(limit)


def after(value: PartialDate | date | None, limit: date) -> bool:
    """True if a date is certainly after ``limit`` (a partial one: after it at its own precision)."""
    if value is None:
        return False
    if isinstance(value, date):
        return value > limit
    return value > value.cut(limit)
