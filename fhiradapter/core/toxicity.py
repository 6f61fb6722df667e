"""Toxicity by NCI CTC v2.0 (docs/protocol.md §5): lab grades, worst grade per term, dose actions, Table 2.

Reported grades come from the ``ae-grade`` extension (or severity, marked derived) and are never
overwritten. Lab grades are computed from the value and the lab's reference range on the sample date.
Only treatment-emergent events count: from the index date to N days after the last dose (configurable).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from decimal import localcontext
from typing import NamedTuple

from fhiradapter.core.limits import ANC_GRADE_BELOW, CREATININE_GRADE_ABOVE_ULN, PLATELET_GRADE_BELOW
from fhiradapter.core.model import AdverseEvent, Observed
from fhiradapter.core.protocol import DoseRule, Mappings
from fhiradapter.core.response import exact
from fhiradapter.core.results import DoseAction, DoseActionKind, Toxicity, ToxicityCount

CRITERIA_VERSION = "CTC v2.0"
LAB_TERMS = {"anc": "neutrophils", "platelets": "platelets", "creatinine": "creatinine"}


def grade_anc(value: float) -> int:
    """Neutrophils x10^9/L: G1 [1.5, 2.0), G2 [1.0, 1.5), G3 [0.5, 1.0), G4 < 0.5 (``ANC_GRADE_BELOW``)."""
    v = exact(value)
    return sum(1 for bound in ANC_GRADE_BELOW if v < bound)


def grade_platelets(value: float, lln: float | None) -> int | None:
    """Platelets x10^9/L: G1 < LLN to 75, G2 [50, 75), G3 [10, 50), G4 < 10 (``PLATELET_GRADE_BELOW``). None if
    LLN decides."""
    v = exact(value)
    below = sum(1 for bound in PLATELET_GRADE_BELOW if v < bound)
    if below:
        return below + 1
    if lln is None:
        return None
    return 1 if v < exact(lln) else 0


RATIO_DIGITS = 10  # significant digits of a value's multiple of ULN: below them, only unit-conversion noise


def grade_creatinine(value: float, uln: float | None) -> int | None:
    """Creatinine by multiples of ULN: G1 (1, 1.5], G2 (1.5, 3], G3 (3, 6], G4 > 6 (``CREATININE_GRADE_ABOVE_ULN``).
    None without ULN.

    A value and its ULN converted by one factor (µmol/L / 88.4) keep their ratio only to the conversion's
    precision (582 and 97 µmol/L give 6.58371040724 and 1.09728506787 mg/dL, whose ratio is 6.00000000002):
    the multiple is taken to ``RATIO_DIGITS`` significant digits, so that exactly 6 × ULN is 6 × ULN.
    """
    if uln is None or uln <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = RATIO_DIGITS
        multiple = exact(value) / exact(uln)
    return sum(1 for bound in CREATININE_GRADE_ABOVE_ULN if multiple > bound)


def lab_grade(observation: Observed) -> int | None:
    if observation.value is None:
        return None
    if observation.concept == "anc":
        return grade_anc(observation.value)
    if observation.concept == "platelets":
        return grade_platelets(observation.value, observation.low)
    if observation.concept == "creatinine":
        return grade_creatinine(observation.value, observation.high)
    return None


def _window(index: date, last_dose: date, after_days: int) -> tuple[date, date]:
    """Treatment-emergent window: the index date to ``after_days`` after the last dose, inclusive."""
    return index, last_dose + timedelta(days=after_days)


class GradedEvent(NamedTuple):
    """One graded adverse event or lab value in the treatment-emergent window."""

    date: date
    term: str
    grade: int
    source: str  # reported | derived | lab
    ref: str


def toxicities(
    aes: Iterable[AdverseEvent],
    labs: Iterable[Observed],
    index: date,
    last_dose: date,
    *,
    after_days: int,
    mappings: Mappings,
) -> tuple[list[Toxicity], list[GradedEvent], list[str]]:
    """(worst grade per term, graded events in date order, issues) for one treated patient."""
    events: list[GradedEvent] = []
    issues: list[str] = []
    first, last = _window(index, last_dose, after_days)
    for ae in aes:
        if ae.grade is None or not first <= ae.date <= last:
            continue
        key = ae.term or f"unmapped:{ae.term_text}"
        events.append(GradedEvent(ae.date, key, ae.grade, ae.grade_source, ae.ref))
    for o in labs:
        if o.concept not in LAB_TERMS or not first <= o.date <= last:
            continue
        grade = lab_grade(o)
        if grade is None:
            limit = "lower limit of normal" if o.concept == "platelets" else "upper limit of normal"
            issues.append(f"{o.ref}: {o.concept} {o.value} cannot be graded without the lab's {limit}")
            continue
        if grade > 0:
            events.append(GradedEvent(o.date, LAB_TERMS[o.concept], grade, "lab", o.ref))
    events.sort(key=lambda e: (e.date, e.term, e.ref))
    by_term: dict[str, list[GradedEvent]] = {}
    for e in events:
        by_term.setdefault(e.term, []).append(e)
    rows = []
    for term, found in sorted(by_term.items()):
        info = mappings.ae_terms.get(term)
        worst = found[0]
        for e in found:
            if e.grade > worst.grade:  # the first event of the worst grade gives the source
                worst = e
        rows.append(
            Toxicity(
                term=term,
                display=info.display if info else term.split(":", 1)[-1],
                meddra=info.meddra if info else None,
                worst_grade=worst.grade,
                source=worst.source,
                sources=tuple(dict.fromkeys(e.source for e in found)),
                criteria=CRITERIA_VERSION,
                first_date=found[0].date,
                evidence=tuple(e.ref for e in found),
            )
        )
    return rows, events, issues


def dose_actions(events: Sequence[GradedEvent], rules: Sequence[DoseRule]) -> list[DoseAction]:
    """Every graded event that meets a dose rule (docs/protocol.md §5, configurable), in date order."""
    out: list[DoseAction] = []
    seen: set[tuple[date, str, str]] = set()
    for e in events:
        for rule in rules:
            if e.term == rule.term and e.grade >= rule.min_grade:
                key = (e.date, rule.action, rule.term)
                if key not in seen:
                    seen.add(key)
                    rule_text = f"{rule.term} grade >= {rule.min_grade}"
                    out.append(DoseAction(e.date, DoseActionKind(rule.action), rule.term, e.grade, rule_text, (e.ref,)))
    return out


def toxicity_table(per_patient: Iterable[Sequence[Toxicity]]) -> list[ToxicityCount]:
    """Table 2: per term, patients whose worst grade is 1-2 and patients whose worst grade is >= 3."""
    counts: dict[str, list[int]] = {}
    first: dict[str, Toxicity] = {}
    for rows in per_patient:
        for r in rows:
            first.setdefault(r.term, r)
            tally = counts.setdefault(r.term, [0, 0])
            if r.worst_grade >= 3:
                tally[1] += 1
            elif r.worst_grade >= 1:
                tally[0] += 1
    table = [ToxicityCount(t, first[t].display, first[t].meddra, low, high) for t, (low, high) in counts.items()]
    return sorted(table, key=lambda t: (-(t.grade_1_2 + t.grade_3_4), t.term))
