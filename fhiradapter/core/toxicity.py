"""Toxicity by NCI CTC v2.0 (PROTOCOL.md §5): lab grades, worst grade per term, dose actions, Table 2.

Reported grades come from the ``ae-grade`` extension (or severity, marked derived) and are never
overwritten. Lab grades are computed from the value and the lab's reference range on the sample date.
Only treatment-emergent events count: from the index date to N days after the last dose (configurable).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from decimal import Decimal, localcontext
from typing import Any

from fhiradapter.core.model import AE, Obs
from fhiradapter.core.protocol import DoseRule, Mappings
from fhiradapter.core.response import exact

CRITERIA_VERSION = "CTC v2.0"
LAB_TERMS = {"anc": "neutrophils", "platelets": "platelets", "creatinine": "creatinine"}


def grade_anc(value: float) -> int:
    """Neutrophils x10^9/L: G1 [1.5, 2.0), G2 [1.0, 1.5), G3 [0.5, 1.0), G4 < 0.5."""
    v = exact(value)
    if v >= 2:
        return 0
    if v >= Decimal("1.5"):
        return 1
    if v >= 1:
        return 2
    return 3 if v >= Decimal("0.5") else 4


def grade_platelets(value: float, lln: float | None) -> int | None:
    """Platelets x10^9/L: G1 < LLN to 75, G2 [50, 75), G3 [10, 50), G4 < 10. None if LLN decides."""
    v = exact(value)
    if v < 10:
        return 4
    if v < 50:
        return 3
    if v < 75:
        return 2
    if lln is None:
        return None
    return 1 if v < exact(lln) else 0


RATIO_DIGITS = 10  # significant digits of a value's multiple of ULN: below them, only unit-conversion noise


def grade_creatinine(value: float, uln: float | None) -> int | None:
    """Creatinine by multiples of ULN: G1 (1, 1.5], G2 (1.5, 3], G3 (3, 6], G4 > 6. None without ULN.

    A value and its ULN converted by one factor (µmol/L / 88.4) keep their ratio only to the conversion's
    precision (582 and 97 µmol/L give 6.58371040724 and 1.09728506787 mg/dL, whose ratio is 6.00000000002):
    the multiple is taken to ``RATIO_DIGITS`` significant digits, so that exactly 6 × ULN is 6 × ULN.
    """
    if uln is None or uln <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = RATIO_DIGITS
        multiple = exact(value) / exact(uln)
    if multiple <= 1:
        return 0
    if multiple <= Decimal("1.5"):
        return 1
    if multiple <= 3:
        return 2
    return 3 if multiple <= 6 else 4


def lab_grade(o: Obs) -> int | None:
    if o.value is None:
        return None
    if o.concept == "anc":
        return grade_anc(o.value)
    if o.concept == "platelets":
        return grade_platelets(o.value, o.low)
    if o.concept == "creatinine":
        return grade_creatinine(o.value, o.high)
    return None


def _window(index: date, last_dose: date, after_days: int) -> tuple[str, str]:
    """Treatment-emergent window: the index date to ``after_days`` after the last dose, inclusive."""
    return index.isoformat(), (last_dose + timedelta(days=after_days)).isoformat()


def toxicities(
    aes: Iterable[AE],
    labs: Iterable[Obs],
    index: date,
    last_dose: date,
    *,
    after_days: int,
    mappings: Mappings,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(worst grade per term, graded events in date order, issues) for one treated patient."""
    rows: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    issues: list[str] = []
    first, last = _window(index, last_dose, after_days)  # full ISO dates compare as strings
    for ae in aes:
        if ae.grade is None or ae.date is None or not first <= ae.date <= last:
            continue
        key = ae.term or f"unmapped:{ae.term_text}"
        events.append({"date": ae.date, "term": key, "grade": ae.grade, "source": ae.grade_source, "ref": ae.ref})
    for o in labs:
        if o.concept not in LAB_TERMS or o.date is None or not first <= o.date <= last:
            continue
        grade = lab_grade(o)
        if grade is None:
            limit = "lower limit of normal" if o.concept == "platelets" else "upper limit of normal"
            issues.append(f"{o.ref}: {o.concept} {o.value} cannot be graded without the lab's {limit}")
            continue
        if grade > 0:
            events.append({"date": o.date, "term": LAB_TERMS[o.concept], "grade": grade, "source": "lab", "ref": o.ref})
    events.sort(key=lambda e: (e["date"], e["term"], e["ref"]))
    for e in events:
        term = e["term"]
        info = mappings.ae_terms.get(term)
        row = rows.get(term)
        if row is None:
            row = rows[term] = {
                "term": term,
                "display": info.display if info else term.split(":", 1)[-1],
                "meddra": info.meddra if info else None,
                "worst_grade": 0,
                "source": e["source"],
                "sources": [],
                "criteria": CRITERIA_VERSION,
                "first_date": e["date"],
                "evidence": [],
            }
        if e["grade"] > row["worst_grade"]:
            row["worst_grade"], row["source"] = e["grade"], e["source"]
        if e["source"] not in row["sources"]:
            row["sources"].append(e["source"])
        row["evidence"].append(e["ref"])
    return sorted(rows.values(), key=lambda r: r["term"]), events, issues


def dose_actions(events: Sequence[dict[str, Any]], rules: Sequence[DoseRule]) -> list[dict[str, Any]]:
    """Every graded event that meets a dose rule (PROTOCOL.md §5, configurable), in date order."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for e in events:
        for rule in rules:
            if e["term"] == rule.term and e["grade"] >= rule.min_grade:
                key = (e["date"], rule.action, rule.term)
                if key not in seen:
                    seen.add(key)
                    out.append(
                        {
                            "date": e["date"],
                            "action": rule.action,
                            "term": rule.term,
                            "grade": e["grade"],
                            "rule": f"{rule.term} grade >= {rule.min_grade}",
                            "evidence": [e["ref"]],
                        }
                    )
    return out


def toxicity_table(per_patient: Iterable[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Table 2: per term, patients whose worst grade is 1-2 and patients whose worst grade is >= 3."""
    table: dict[str, dict[str, Any]] = {}
    for rows in per_patient:
        for r in rows:
            t = table.setdefault(
                r["term"],
                {
                    "term": r["term"],
                    "display": r["display"],
                    "meddra": r["meddra"],
                    "grade_1_2": 0,
                    "grade_3_4": 0,
                },
            )
            if r["worst_grade"] >= 3:
                t["grade_3_4"] += 1
            elif r["worst_grade"] >= 1:
                t["grade_1_2"] += 1
    return sorted(table.values(), key=lambda t: (-(t["grade_1_2"] + t["grade_3_4"]), t["term"]))
