"""Calendar helpers for the protocol's date rules (PROTOCOL.md §1): ISO strings in, dates and day counts out."""

from __future__ import annotations

from datetime import date


def to_date(value: str | None) -> date | None:
    """A full ``YYYY-MM-DD`` as a date; partial or missing dates give ``None``."""
    if value is None or len(value) != 10:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def inclusive_days(start: date, end: date) -> int:
    """CDISC ADaM duration: ``end - start + 1`` (the first day is day 1)."""
    return (end - start).days + 1


def age_bounds(birth: str, on: date) -> tuple[int, int] | None:
    """Smallest and largest possible completed age in years on ``on`` for a full or partial birth date."""
    parts = birth.split("-")
    try:
        year = int(parts[0])
        if len(parts) == 3:
            born = date(year, int(parts[1]), int(parts[2]))
            age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
            return age, age
        if len(parts) == 2:
            month = int(parts[1])
            youngest = on.year - year - ((on.month, on.day) < (month, 31))
            oldest = on.year - year - ((on.month, on.day) < (month, 1))
            return max(youngest, 0), max(oldest, 0)
        return max(on.year - year - 1, 0), max(on.year - year, 0)
    except ValueError:
        return None


def on_or_before(value: str | None, limit: date) -> bool:
    """True if a (possibly partial) date lies on or before ``limit``; a partial date compares by prefix."""
    if value is None:
        return False
    full = to_date(value)
    if full is not None:
        return full <= limit
    return value <= limit.isoformat()[: len(value)]


def strictly_before(value: str | None, limit: date) -> bool:
    """True if a (possibly partial) date is certainly before ``limit``."""
    if value is None:
        return False
    full = to_date(value)
    if full is not None:
        return full < limit
    return value < limit.isoformat()[: len(value)]
