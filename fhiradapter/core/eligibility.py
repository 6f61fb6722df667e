"""Eligibility (docs/protocol.md §2): fourteen criteria with fixed ids, each met / not_met / unknown.

Every criterion carries the value it used, the ids of the resources it came from and a detail text.
Data are read on or before the screening date; labs are the latest within 28 days before it, assessments (ECOG,
ascites, encephalopathy, pregnancy) the latest on or before it, however old.
Exclusion criteria (``not_...``/``no_...``) are met when no evidence is found, and say so.
The limits are written once (``THRESHOLDS``, ``MAX_AGE_EXCLUSIVE``): the rules, the details and the words a
report prints for a criterion not met or unknown (``explain``: the value found and the limit) derive from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from typing import NamedTuple

from fhiradapter.core import dates
from fhiradapter.core.child_pugh import ChildPugh
from fhiradapter.core.limits import (
    AGE,
    ANC,
    CHILD_PUGH_MIN_SCORE,
    CLASS_B_MAX,
    CREATININE,
    ECOG,
    ELIGIBLE_CHILD_PUGH_CLASSES,
    LAB_WINDOW_DAYS,
    PLATELETS,
)
from fhiradapter.core.mappers import as_recorded
from fhiradapter.core.model import Condition, Observed, PatientRecord
from fhiradapter.core.results import (
    AgeRange,
    AnthracyclineHistory,
    ChildPughClass,
    Criterion,
    CriterionStatus,
    CriterionValue,
    Eligibility,
    EligibilityStatus,
    Measurability,
    Measurement,
)

MET, NOT_MET, UNKNOWN = CriterionStatus.MET, CriterionStatus.NOT_MET, CriterionStatus.UNKNOWN

# docs/protocol.md §2 fixed thresholds (inclusive exactly as written), from the one table (core/limits.py).
MAX_AGE_EXCLUSIVE = AGE.value
ACTIVE_CLINICAL = frozenset({None, "active", "recurrence", "relapse"})


class Threshold(NamedTuple):
    """One of the four threshold criteria (docs/protocol.md §2): the limit is written here once, and the rule,
    the detail results.json gives and the wording a report prints are all derived from it."""

    cid: str  # the criterion id, which is also the observation concept
    name: str  # what the rule book calls the value
    op: str  # "<=" (at most the limit) or ">=" (at least)
    limit: float
    decimals: int  # as the rule book prints the limit: 1.0 x10^9/L, 40 x10^9/L
    unit: str  # the concept's canonical (UCUM) unit; "" for a score
    lab: bool  # a lab within LAB_WINDOW_DAYS; else an assessment, the latest on or before screening

    def ok(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit

    @property
    def rule(self) -> str:
        """The rule in plain ASCII, as results.json's detail has always given it."""
        unit = {"10*9/L": " x10^9/L"}.get(self.unit, f" {self.unit}" if self.unit else "")
        return f"{self.name} {self.op} {self.limit:.{self.decimals}f}{unit}"

    @property
    def must(self) -> str:
        """The limit as a report prints it: "≥ 1.0 × 10⁹/L"."""
        return f"{PRINTED_OPS[self.op]} {self.limit:.{self.decimals}f}{printed_unit(self.unit)}"

    @property
    def window(self) -> str:
        return f"within {LAB_WINDOW_DAYS} days before screening" if self.lab else "on or before screening"


PRINTED_OPS = {"<=": "≤", ">=": "≥"}
PRINTED_UNITS = {"10*9/L": "× 10⁹/L"}  # UCUM codes whose printed form differs from the code


def printed_unit(unit: str | None) -> str:
    """A canonical unit as a report prints it, with its leading space ("" for a score)."""
    return f" {PRINTED_UNITS.get(unit, unit)}" if unit else ""


# ECOG is an assessment, not a lab: the latest on or before screening counts, however old.
THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("ecog", "ECOG performance status", ECOG.comparator, ECOG.value, ECOG.decimals, ECOG.unit, False),
    Threshold("anc", "neutrophils", ANC.comparator, ANC.value, ANC.decimals, ANC.unit, True),
    Threshold(
        "platelets", "platelets", PLATELETS.comparator, PLATELETS.value, PLATELETS.decimals, PLATELETS.unit, True
    ),
    Threshold(
        "creatinine",
        "serum creatinine",
        CREATININE.comparator,
        CREATININE.value,
        CREATININE.decimals,
        CREATININE.unit,
        True,
    ),
)
CRITERIA = (
    "histology",
    "metastatic_measurable",
    "prior_anthracycline_progression",
    "age",
    "ecog",
    "anc",
    "platelets",
    "creatinine",
    "child_pugh",
    "not_pregnant_or_breastfeeding",
    "no_peripheral_neuropathy",
    "no_prior_thalidomide",
    "no_uncontrolled_infection",
    "consent",
)


# What each criterion asks, in the words of the rule book (docs/protocol.md §2), for readers of a report.
CRITERION_LABELS = {
    "histology": "confirmed HCC",
    "metastatic_measurable": "metastatic, measurable disease",
    "prior_anthracycline_progression": "progression after an anthracycline",
    "age": f"age under {MAX_AGE_EXCLUSIVE}",
    **{t.cid: f"{t.name} {t.must}" for t in THRESHOLDS},
    "child_pugh": f"Child-Pugh class A or B (score {CHILD_PUGH_MIN_SCORE}-{CLASS_B_MAX})",
    "not_pregnant_or_breastfeeding": "not pregnant or breastfeeding",
    "no_peripheral_neuropathy": "no peripheral neuropathy",
    "no_prior_thalidomide": "no prior thalidomide",
    "no_uncontrolled_infection": "no uncontrolled infection",
    "consent": "research consent",
}


def criterion(
    cid: str, status: CriterionStatus, value: CriterionValue, evidence: Iterable[str], detail: str
) -> Criterion:
    return Criterion(cid, status, value, tuple(sorted(set(evidence))), detail)


def latest(
    obs: Iterable[Observed], concept: str, on: date, window_days: int | None = LAB_WINDOW_DAYS
) -> Observed | None:
    """The latest observation of ``concept`` dated within ``window_days`` before ``on`` (inclusive).

    ``window_days=None``: the latest on or before ``on``, however old.
    """
    start = date.min if window_days is None else on - timedelta(days=window_days)
    best: Observed | None = None
    for o in obs:
        if o.concept == concept and start <= o.date <= on and (best is None or o.date >= best.date):
            best = o
    return best


def _threshold(t: Threshold, o: Observed | None, ok: bool | None) -> Criterion:
    cid, what = t.cid, t.rule
    if o is None or ok is None:
        return criterion(cid, UNKNOWN, None, [], f"no value for: {what}, {t.window}")
    shown: float | int | None = o.value
    if shown is not None and not o.unit and float(shown).is_integer():
        shown = int(shown)  # ECOG is a score, not a measurement
    value = Measurement(shown, o.unit or None, o.date, o.conversion or None)
    return criterion(cid, MET if ok else NOT_MET, value, [o.ref], what)


def by_concept(obs: Iterable[Observed]) -> dict[str, list[Observed]]:
    """Observations grouped by concept, so that each rule scans only its own."""
    out: dict[str, list[Observed]] = {}
    for o in obs:
        out.setdefault(o.concept, []).append(o)
    return out


def assess_eligibility(
    rec: PatientRecord,
    screening: date,
    reference: date,
    cp: ChildPugh,
    cp_evidence: list[str],
    index: dict[str, list[Observed]] | None = None,
) -> Eligibility:
    """All criteria at the screening date; ``reference`` is the index date (screening if untreated)."""
    idx = index if index is not None else by_concept(rec.observations)
    results = [
        _histology(rec, screening),
        _metastatic(rec, screening, reference),
        _anthracycline(rec, screening),
        _age(rec, screening),
    ]
    for t in THRESHOLDS:
        o = latest(idx.get(t.cid, ()), t.cid, screening, window_days=LAB_WINDOW_DAYS if t.lab else None)
        ok = None if o is None or o.value is None else t.ok(o.value)
        results.append(_threshold(t, o, ok))
    if cp.score is None:
        results.append(
            criterion(
                "child_pugh",
                UNKNOWN,
                None,
                cp_evidence,
                f"Child-Pugh components missing: {', '.join(cp.missing)}",
            )
        )
    else:
        results.append(
            criterion(
                "child_pugh",
                MET if cp.cls in ELIGIBLE_CHILD_PUGH_CLASSES else NOT_MET,
                ChildPughClass(cp.score, cp.cls or ""),
                cp_evidence,
                f"Child-Pugh class A or B (score {CHILD_PUGH_MIN_SCORE}-{CLASS_B_MAX})",
            )
        )
    results += [
        _pregnancy(rec, screening, idx),
        _neuropathy(rec, screening),
        _prior_thalidomide(rec, screening),
        _infection(rec, screening),
        _consent(rec, screening),
    ]
    statuses = {c.status for c in results}
    overall = (
        EligibilityStatus.INELIGIBLE
        if NOT_MET in statuses
        else EligibilityStatus.ELIGIBLE
        if statuses == {MET}
        else EligibilityStatus.UNDETERMINED
    )
    return Eligibility(overall, screening, tuple(results))


def _histology(rec: PatientRecord, screening: date) -> Criterion:
    hcc = [
        c for c in rec.conditions if c.concept == "hcc" and (c.onset is None or dates.on_or_before(c.onset, screening))
    ]
    confirmed = [c for c in hcc if c.verification == "confirmed"]
    if confirmed:
        return criterion(
            "histology",
            MET,
            "confirmed",
            [c.ref for c in confirmed],
            "HCC Condition with verificationStatus confirmed",
        )
    if hcc and all(c.verification in ("refuted", "entered-in-error") for c in hcc):
        return criterion("histology", NOT_MET, "refuted", [c.ref for c in hcc], "the HCC diagnosis is refuted")
    detail = "HCC Condition present but not confirmed" if hcc else "no HCC Condition found"
    return criterion("histology", UNKNOWN, hcc[0].verification if hcc else None, [c.ref for c in hcc], detail)


def _metastatic(rec: PatientRecord, screening: date, reference: date) -> Criterion:
    mets = [
        c
        for c in rec.conditions
        if c.concept == "metastasis"
        and c.clinical in ACTIVE_CLINICAL
        and (c.onset is None or dates.on_or_before(c.onset, screening))
    ]
    start = reference - timedelta(days=LAB_WINDOW_DAYS)
    lesions = [
        o
        for o in rec.observations
        if o.concept == "tumor_size" and o.perpendicular_mm is not None and start <= o.date <= reference
    ]
    value = Measurability(len(mets), len({o.focus for o in lesions}))
    evidence = [c.ref for c in mets] + [o.ref for o in lesions]
    if mets and lesions:
        return criterion(
            "metastatic_measurable",
            MET,
            value,
            evidence,
            "secondary-malignancy Condition and a lesion measured in two diameters "
            f"within {LAB_WINDOW_DAYS} days before the index/screening date",
        )
    missing = [] if mets else ["no secondary-malignancy Condition"]
    if not lesions:
        missing.append(
            f"no bidimensional lesion measured within {LAB_WINDOW_DAYS} days before the index/screening date"
        )
    return criterion("metastatic_measurable", UNKNOWN, value, evidence, "; ".join(missing))


def _anthracycline(rec: PatientRecord, screening: date) -> Criterion:
    prior = [
        exposure
        for exposure in rec.meds
        if exposure.drug == "anthracycline" and dates.strictly_before(exposure.start, screening)
    ]
    if not prior:
        return criterion(
            "prior_anthracycline_progression",
            UNKNOWN,
            None,
            [],
            "no anthracycline (doxorubicin/epirubicin) started before screening",
        )
    first = min(exposure.start for exposure in prior if exposure.start is not None)
    worsened = [
        o for o in rec.observations if o.concept == "disease_status" and o.coded == "worsened" and o.date <= screening
    ]
    # "Later" needs the day (docs/protocol.md §1): a start of 2004-04 is certainly before 2004-05-02, but not
    # before 2004-04-13. Compared at the start's own precision, a record in the same month is no evidence.
    progressions = [o for o in worsened if first.cut(o.date) > first]
    evidence = [exposure.ref for exposure in prior] + [o.ref for o in progressions]
    undecided = [o for o in worsened if o not in progressions and first.cut(o.date) == first]
    if not progressions and undecided and first.full is None:
        return criterion(
            "prior_anthracycline_progression",
            UNKNOWN,
            AnthracyclineHistory(str(first), undecided[0].date),
            evidence + [o.ref for o in undecided],
            f"anthracycline started {first} (no day): cannot tell whether the progression on "
            f"{undecided[0].date} came after it",
        )
    if progressions:
        return criterion(
            "prior_anthracycline_progression",
            MET,
            AnthracyclineHistory(str(first), progressions[0].date),
            evidence,
            "anthracycline before screening and a later progression record",
        )
    return criterion(
        "prior_anthracycline_progression",
        UNKNOWN,
        AnthracyclineHistory(str(first)),
        evidence,
        "anthracycline found but no later progression record (97509-4 worsened)",
    )


def _age(rec: PatientRecord, screening: date) -> Criterion:
    person = rec.person
    if person is None or person.birth_date is None:
        return criterion("age", UNKNOWN, None, [person.ref] if person else [], "no birth date")
    youngest, oldest = dates.age_bounds(person.birth_date, screening)
    value: int | AgeRange = youngest if youngest == oldest else AgeRange(youngest, oldest)
    partial = "" if youngest == oldest else f" (partial birth date {person.birth_date})"
    if oldest < MAX_AGE_EXCLUSIVE:
        return criterion("age", MET, value, [person.ref], f"age at screening < {MAX_AGE_EXCLUSIVE}{partial}")
    if youngest >= MAX_AGE_EXCLUSIVE:
        return criterion("age", NOT_MET, value, [person.ref], f"age at screening >= {MAX_AGE_EXCLUSIVE}{partial}")
    return criterion("age", UNKNOWN, value, [person.ref], f"age {youngest} or {oldest}{partial}")


def _active_conditions(rec: PatientRecord, concepts: set[str], screening: date) -> list[Condition]:
    return [
        c
        for c in rec.conditions
        if c.concept in concepts
        and c.clinical in ACTIVE_CLINICAL
        and c.verification not in ("refuted", "entered-in-error")
        and (c.onset is None or dates.on_or_before(c.onset, screening))
    ]


def _pregnancy(rec: PatientRecord, screening: date, idx: dict[str, list[Observed]]) -> Criterion:
    found = _active_conditions(rec, {"pregnancy", "breastfeeding"}, screening)
    refs = [c.ref for c in found]
    for concept, positive in (("pregnancy_status", "pregnant"), ("breastfeeding_status", "breastfeeding")):
        o = latest(idx.get(concept, ()), concept, screening, window_days=None)
        if o is not None and o.coded == positive:
            refs.append(o.ref)
    if refs:
        return criterion(
            "not_pregnant_or_breastfeeding",
            NOT_MET,
            "pregnant or breastfeeding",
            refs,
            "pregnancy or breastfeeding recorded",
        )
    return criterion("not_pregnant_or_breastfeeding", MET, None, [], "no evidence of pregnancy or breastfeeding found")


def _neuropathy(rec: PatientRecord, screening: date) -> Criterion:
    found = _active_conditions(rec, {"peripheral_neuropathy"}, screening)
    if found:
        return criterion(
            "no_peripheral_neuropathy",
            NOT_MET,
            "active peripheral neuropathy",
            [c.ref for c in found],
            "active peripheral neuropathy Condition",
        )
    return criterion("no_peripheral_neuropathy", MET, None, [], "no active peripheral neuropathy Condition found")


def _prior_thalidomide(rec: PatientRecord, screening: date) -> Criterion:
    prior = [
        exposure
        for exposure in rec.meds
        if exposure.drug == "thalidomide" and dates.strictly_before(exposure.start, screening)
    ]
    if prior:
        return criterion(
            "no_prior_thalidomide",
            NOT_MET,
            str(min(exposure.start for exposure in prior if exposure.start is not None)),
            [exposure.ref for exposure in prior],
            "thalidomide exposure before screening",
        )
    return criterion("no_prior_thalidomide", MET, None, [], "no thalidomide exposure before screening found")


def _infection(rec: PatientRecord, screening: date) -> Criterion:
    found = _active_conditions(rec, {"infection"}, screening)
    if found:
        return criterion(
            "no_uncontrolled_infection",
            NOT_MET,
            "active infection",
            [c.ref for c in found],
            "active infection Condition (mapped value set)",
        )
    return criterion("no_uncontrolled_infection", MET, None, [], "no active infection Condition found")


def _consent(rec: PatientRecord, screening: date) -> Criterion:
    active = [
        c for c in rec.consents if c.status == "active" and (c.date is None or dates.on_or_before(c.date, screening))
    ]
    subjects = [s for s in rec.subjects if s.has_consent]
    if active or subjects:
        return criterion(
            "consent",
            MET,
            "active research consent",
            [c.ref for c in active] + [s.ref for s in subjects],
            "active research Consent or ResearchSubject.consent",
        )
    refused = [c for c in rec.consents if c.status in ("rejected", "inactive")]
    if refused:
        return criterion(
            "consent",
            NOT_MET,
            refused[0].status,
            [c.ref for c in refused],
            "research consent rejected or inactive",
        )
    return criterion("consent", UNKNOWN, None, [], "no research consent found")


# --- For readers of a report: what a criterion found, beside what it asks ----------------------------------

# The type of each criterion's value (results.json has one union; each id uses one part of it).
VALUE_TYPES: dict[str, object] = {  # type expressions, for msgspec.convert
    "age": int | AgeRange | None,
    "metastatic_measurable": Measurability | None,
    "prior_anthracycline_progression": AnthracyclineHistory | None,
    "child_pugh": ChildPughClass | None,
    **{t.cid: Measurement | None for t in THRESHOLDS},
}


# The exclusion criteria that one record of the condition fails: what was found, and what they ask.
FOUND = {
    "not_pregnant_or_breastfeeding": "pregnancy or breastfeeding recorded; must be neither",
    "no_peripheral_neuropathy": "active peripheral neuropathy recorded; must have none",
    "no_uncontrolled_infection": "active infection recorded; must have none",
}


def explain(c: Criterion) -> str:
    """What a criterion that is not met or unknown found in the patient's record, and what it asks.

    "age 75; must be under 75", "neutrophils 0.9 × 10⁹/L; must be ≥ 1.0 × 10⁹/L", and for an unknown one what
    is missing: "no value for: ECOG performance status on or before screening; must be ≤ 2". The limits come
    from the constants above, so that a report never repeats one.
    """
    v = c.value
    threshold = next((t for t in THRESHOLDS if t.cid == c.id), None)
    if threshold is not None:
        must = f"must be {threshold.must}"
        if isinstance(v, Measurement) and v.value is not None:
            recorded_value, recorded_unit = as_recorded(v.conversion)
            recorded = f" (recorded as {recorded_value:g} {recorded_unit})" if recorded_value is not None else ""
            return f"{threshold.name} {v.value:g}{printed_unit(v.unit)}{recorded}; {must}"
        return f"no value for: {threshold.name} {threshold.window}; {must}"
    if c.id == "age":
        must = f"must be under {MAX_AGE_EXCLUSIVE}"
        if isinstance(v, AgeRange):
            return f"age {v.min} or {v.max} (birth date without month or day); {must}"
        return f"age {v}; {must}" if isinstance(v, int) else f"no birth date; {must}"
    if c.id == "child_pugh":
        must = f"must be class A or B (score {CHILD_PUGH_MIN_SCORE}-{CLASS_B_MAX})"
        if isinstance(v, ChildPughClass):
            return f"Child-Pugh class {v.cls} (score {v.score}); {must}"
        return f"{c.detail}; {must}"
    if c.id == "metastatic_measurable" and isinstance(v, Measurability):
        return (
            f"{c.detail} (found: {v.metastases} metastasis Condition(s), "
            f"{v.bidimensional_lesions} lesion(s) measured in two diameters)"
        )
    if c.id == "prior_anthracycline_progression" and isinstance(v, AnthracyclineHistory) and not v.progression_date:
        return f"anthracycline started {v.anthracycline_start}, but no later progression record (97509-4 worsened)"
    if c.id == "histology":
        if c.status is NOT_MET:
            return "the HCC diagnosis is refuted; must be confirmed HCC"
        status = f" (verificationStatus {v})" if isinstance(v, str) and v else ""
        return f"{c.detail}{status}; must be confirmed HCC"
    if c.id == "no_prior_thalidomide" and c.status is NOT_MET:
        started = f" started {v}" if isinstance(v, str) and v else ""
        return f"thalidomide{started}, before screening; must have had none"
    if c.id == "consent":
        if c.status is NOT_MET:
            return f"research consent {v}; must be active"
        return f"{c.detail}; must be active"
    if c.status is NOT_MET and c.id in FOUND:
        return FOUND[c.id]
    return c.detail  # already names what is missing
