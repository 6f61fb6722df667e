"""Cells for the files a spreadsheet opens (CSV): text a spreadsheet would evaluate as a formula is neutralised.

Excel, LibreOffice Calc and Google Sheets evaluate a CSV cell that begins with ``=``, ``+``, ``-`` or ``@`` as a
formula (``=HYPERLINK(...)`` sends data away when clicked, ``-2+3+cmd|...`` once ran commands through DDE);
OWASP adds tab and carriage return to those, ASVS adds NUL. An AE verbatim term, a patient id (``-2-3`` is a valid
FHIR id, and a formula) or any other text from the input can begin that way, so every CSV cell goes through
:func:`csv_cell`, the one rule for all of them (OWASP "CSV Injection"; OWASP ASVS 5.0 requirement 1.2.10):

- a text cell whose first character is one of :data:`FORMULA_TRIGGERS` (or comes after leading spaces only, which
  an importer may trim) is written with a single quote ``'`` before it, so that a spreadsheet shows it as text;
- except text that is a plain decimal number (``-3``, ``-0.5``, ``+1.5e3``): every spreadsheet reads it as that
  number, never as a formula, and SDTM's character results (LBORRES, LBSTRESC, TRORRES, TRSTRESC) and the
  registry's criterion values carry numbers as text on purpose, so a quote would corrupt a true value;
- numbers (the numeric columns: ages, study days, lab values, negative or not) are never text and are written as
  they are; booleans are ``true`` / ``false``; no value is an empty cell.

Only files a spreadsheet opens go through here: Parquet, SQLite and PostgreSQL keep the true value.
"""

from __future__ import annotations

import re

# The first characters that make a cell suspect: =, +, -, @; tab and CR (OWASP); NUL (ASVS); LF, like CR.
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\0")
NEUTRALISER = "'"
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def is_formula_like(text: str) -> bool:
    """Whether a spreadsheet could evaluate ``text`` (the rule in the module docstring)."""
    head = text.lstrip(" ")
    return bool(head) and head[0] in FORMULA_TRIGGERS and _PLAIN_NUMBER.fullmatch(head) is None


def neutralise(text: str) -> str:
    """``text`` as a spreadsheet must show it: with a single quote before it when it could be a formula."""
    return NEUTRALISER + text if is_formula_like(text) else text


_SUSPECT_START = FORMULA_TRIGGERS | {" "}


def csv_cell(value: object) -> str | int | float:
    """One value as a CSV cell: numbers as they are (200.0 as 200), text neutralised, None empty."""
    if isinstance(value, str):  # most cells: only those with a suspect first character are looked at further
        return NEUTRALISER + value if value[:1] in _SUSPECT_START and is_formula_like(value) else value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return neutralise(value if isinstance(value, str) else str(value))
