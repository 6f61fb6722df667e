"""URLs as they may be shown: in messages, summaries and logs."""

from __future__ import annotations


def safe_url(url: str) -> str:
    """The URL without any user info (the user name can be personal; a password is refused earlier)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url
