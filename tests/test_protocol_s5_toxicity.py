"""docs/protocol.md §5 toxicity: CTC v2.0 lab grade boundaries, treatment-emergent window, worst grade, dose actions."""

from __future__ import annotations

from datetime import date

import pytest
from builders import lab

from fhiradapter.core.mappers import MapContext
from fhiradapter.core.model import AdverseEvent, Observed
from fhiradapter.core.protocol import DoseRule, Mappings
from fhiradapter.core.results import Toxicity, ToxicityCount
from fhiradapter.core.toxicity import (
    GradedEvent,
    dose_actions,
    grade_anc,
    grade_creatinine,
    grade_platelets,
    toxicities,
    toxicity_table,
)

INDEX, LAST = date(2004, 1, 10), date(2004, 3, 10)
ORIGIN = ("t", "l")


@pytest.mark.parametrize(
    ("value", "grade"), [(2.0, 0), (1.99, 1), (1.5, 1), (1.49, 2), (1.0, 2), (0.99, 3), (0.5, 3), (0.49, 4)]
)
def test_s5_neutrophil_grades(value: float, grade: int) -> None:
    assert grade_anc(value) == grade


@pytest.mark.parametrize(
    ("value", "lln", "grade"),
    [
        (150, 150, 0),
        (149.9, 150, 1),
        (75, 150, 1),
        (74.9, 150, 2),
        (50, 150, 2),
        (49.9, 150, 3),
        (10, 150, 3),
        (9.9, 150, 4),
        (100, None, None),
        (60, None, 2),
    ],
)
def test_s5_platelet_grades(value: float, lln: float | None, grade: int | None) -> None:
    assert grade_platelets(value, lln) == grade


@pytest.mark.parametrize(
    ("value", "grade"), [(1.2, 0), (1.21, 1), (1.8, 1), (1.81, 2), (3.6, 2), (3.61, 3), (7.2, 3), (7.21, 4)]
)
def test_s5_creatinine_grades_by_uln_multiples(value: float, grade: int) -> None:
    assert grade_creatinine(value, 1.2) == grade  # ULN 1.2: 1.5x = 1.8, 3x = 3.6, 6x = 7.2


def test_s5_creatinine_without_uln_is_not_graded() -> None:
    assert grade_creatinine(3.0, None) is None


def ae(term: str, grade: int, day: str, source: str = "reported", ref: str | None = None) -> AdverseEvent:
    return AdverseEvent(
        ref or f"AdverseEvent/{term}-{day}",
        "Patient/p",
        term,
        term,
        None,
        grade,
        source,
        date.fromisoformat(day),
        ORIGIN,
    )


@pytest.mark.parametrize(
    ("day", "counted"),
    [("2004-01-09", False), ("2004-01-10", True), ("2004-04-09", True), ("2004-04-10", False)],
)
def test_s5_treatment_emergent_window_index_to_30_days_after_last_dose(
    mappings: Mappings, day: str, counted: bool
) -> None:
    rows, _events, _ = toxicities([ae("nausea", 1, day)], [], INDEX, LAST, after_days=30, mappings=mappings)
    assert bool(rows) is counted


def test_s5_worst_grade_per_term_merges_reported_and_lab(mappings: Mappings) -> None:
    aes = [ae("neutrophils", 2, "2004-01-20"), ae("nausea", 1, "2004-01-21"), ae("nausea", 2, "2004-02-01")]
    labs = [lab("anc", "2004-02-05", 0.7, unit="10*9/L", low=2.0, ref="Observation/anc")]
    rows, _, issues = toxicities(aes, labs, INDEX, LAST, after_days=30, mappings=mappings)
    by_term = {r.term: r for r in rows}
    assert by_term["nausea"].worst_grade == 2
    assert by_term["neutrophils"].worst_grade == 3
    assert by_term["neutrophils"].source == "lab"
    assert by_term["neutrophils"].sources == ("reported", "lab")
    assert by_term["neutrophils"].meddra == "10029366"
    assert all(r.criteria == "CTC v2.0" for r in rows)
    assert not issues


def test_s5_unmapped_term_is_kept(mappings: Mappings) -> None:
    odd = AdverseEvent("AdverseEvent/x", "Patient/p", None, "Hiccups", None, 1, "derived", date(2004, 1, 20), ORIGIN)
    rows, _, _ = toxicities([odd], [], INDEX, LAST, after_days=30, mappings=mappings)
    assert rows[0].term == "unmapped:Hiccups" and rows[0].meddra is None
    assert rows[0].source == "derived"


def test_s5_ungradable_lab_is_reported(mappings: Mappings) -> None:
    labs = [lab("creatinine", "2004-02-05", 3.0, unit="mg/dL", ref="Observation/cre")]
    rows, _, issues = toxicities([], labs, INDEX, LAST, after_days=30, mappings=mappings)
    assert rows == [] and issues and issues[0].startswith("Observation/cre")


@pytest.mark.parametrize(
    ("term", "grade", "actions"),
    [
        ("somnolence", 2, []),
        ("somnolence", 3, ["interrupt"]),
        ("sensory_neuropathy", 1, []),
        ("sensory_neuropathy", 2, ["discontinue"]),
    ],
)
def test_s5_dose_actions_at_the_configured_grades(
    mappings: Mappings, term: str, grade: int, actions: list[str]
) -> None:
    _, events, _ = toxicities([ae(term, grade, "2004-02-01")], [], INDEX, LAST, after_days=30, mappings=mappings)
    got = dose_actions(events, mappings.protocol.toxicity.dose_rule)
    assert [a.action for a in got] == actions


def test_s5_dose_rules_come_from_mappings() -> None:
    events = [GradedEvent(date(2004, 2, 1), "fatigue", 3, "reported", "AdverseEvent/f")]
    assert dose_actions(events, [DoseRule(term="fatigue", min_grade=3, action="interrupt")])[0].action == "interrupt"


def test_s5_table_two_counts_patients_by_worst_grade() -> None:
    def worst(grade: int) -> list[Toxicity]:
        return [Toxicity("nausea", "Nausea", "1", grade, "reported", ("reported",), "CTC v2.0", date(2004, 2, 1), ())]

    assert toxicity_table([worst(2), worst(3), worst(1)]) == [ToxicityCount("nausea", "Nausea", "1", 2, 1)]


@pytest.mark.parametrize(
    ("umol", "grade"),
    [
        (97, 0),  # = ULN
        (145.5, 1),  # exactly 1.5 x ULN: G1, not G2
        (145.6, 2),
        (291, 2),  # exactly 3 x ULN
        (291.1, 3),
        (582, 3),  # exactly 6 x ULN: G3, not G4
        (582.1, 4),
    ],
)
def test_s5_creatinine_at_exactly_k_times_uln_after_unit_conversion(ctx: MapContext, umol: float, grade: int) -> None:
    """Value and ULN in µmol/L, converted to mg/dL (/ 88.4): the multiple of ULN is the one written."""
    from fhiradapter.core.mappers import map_resource
    from fhiradapter.core.toxicity import lab_grade

    quantity = {"unit": "umol/L", "system": "http://unitsofmeasure.org", "code": "umol/L"}
    res = {
        "resourceType": "Observation",
        "id": "c",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2004-02-01",
        "valueQuantity": {"value": umol, **quantity},
        "referenceRange": [{"high": {"value": 97, **quantity}}],
    }
    obs, issues = map_resource(res, "Observation/c", ("f", "l"), ctx, None)
    assert isinstance(obs, Observed) and obs.unit == "mg/dL", issues
    assert lab_grade(obs) == grade
