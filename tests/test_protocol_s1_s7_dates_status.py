"""docs/protocol.md §1 dates and populations, §6 survival inputs and §7 ResearchSubject status, on whole patients."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from builders import AS_OF, partial

from fhiradapter.core import dates
from fhiradapter.core.evaluate import EvaluationSettings, cut_off, evaluate_patient, subject_status
from fhiradapter.core.fhir_json import local_date
from fhiradapter.core.mappers import MapContext
from fhiradapter.core.model import AdverseEvent, Exposure, PatientRecord, Person, StudySubject
from fhiradapter.core.protocol import Mappings
from fhiradapter.core.results import EligibilityStatus, to_builtins

ORIGIN = ("t", "l")
STUDY = "ResearchStudy/thal-hcc-pilot"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2005-03-31T08:00:00+09:00", "2005-03-31"),  # local date, never shifted through UTC
        ("2005-03-31T23:30:00-05:00", "2005-03-31"),
        ("2004-07", "2004-07"),
        ("2004", "2004"),
        ("2004-13-01", None),
        ("31/03/2005", None),
        (20050331, None),
    ],
)
def test_s1_local_calendar_date(raw: object, expected: str | None) -> None:
    assert local_date(raw) == expected


def test_s1_durations_are_end_minus_start_plus_one() -> None:
    assert dates.inclusive_days(date(2004, 1, 1), date(2004, 1, 1)) == 1
    assert dates.inclusive_days(date(2004, 1, 1), date(2004, 12, 31)) == 366


def thal(start: str, end: str | None, status: str = "completed", ref: str = "MedicationStatement/t") -> Exposure:
    return Exposure(ref, "Patient/p", "thalidomide", "10432", partial(start), partial(end), status, None, None, ORIGIN)


def patient(
    meds: list[Exposure],
    deceased: str | None = None,
    subject_start: str | None = "2004-01-05",
    aes: list[AdverseEvent] | None = None,
) -> PatientRecord:
    """A study subject (a ResearchSubject of the study, starting at ``subject_start``, which may be None)."""
    subjects = [
        StudySubject(
            "ResearchSubject/rs", "Patient/p", STUDY, "on-study", partial(subject_start), None, True, "1", ORIGIN
        )
    ]
    return PatientRecord(
        "Patient/p",
        person=Person("Patient/p", partial("1960-01-01"), "male", partial(deceased), deceased is not None, ORIGIN),
        meds=meds,
        subjects=subjects,
        adverse_events=aes or [],
    )


def run(rec: PatientRecord, mappings: Mappings, as_of: date = AS_OF) -> dict[str, Any]:
    """The patient's entry as results.json holds it (the typed result, as JSON values)."""
    entry: dict[str, Any] = to_builtins(evaluate_patient(rec, EvaluationSettings(as_of, mappings)).result)
    return entry


def test_s1_index_and_treatment_days(mappings: Mappings) -> None:
    r = run(patient([thal("2004-01-10", "2004-04-18")]), mappings)
    assert r["treated"] and r["index_date"] == "2004-01-10"
    assert r["treatment_days"] == 100


def test_s1_thalidomide_before_screening_is_prior_exposure(mappings: Mappings) -> None:
    r = run(
        patient(
            [
                thal("2003-12-01", "2003-12-20", ref="MedicationStatement/old"),
                thal("2004-01-10", "2004-01-19"),
            ]
        ),
        mappings,
    )
    assert r["index_date"] == "2004-01-10" and r["treatment_days"] == 10
    crit = next(c for c in r["eligibility"]["criteria"] if c["id"] == "no_prior_thalidomide")
    assert crit["status"] == "not_met"


def test_s1_screening_date_falls_back_to_first_thalidomide(mappings: Mappings) -> None:
    r = run(patient([thal("2004-01-10", "2004-01-19")], subject_start=None), mappings)
    assert r["eligibility"]["screening_date"] == "2004-01-10"
    assert r["eligibility"]["screening_date_source"] == "first thalidomide exposure"
    untreated = run(patient([], subject_start=None), mappings)
    assert untreated["eligibility"]["screening_date"] == AS_OF.isoformat()


def test_s1_nothing_after_as_of_is_read(mappings: Mappings) -> None:
    late = AdverseEvent(
        "AdverseEvent/late", "Patient/p", "nausea", "Nausea", None, 3, "reported", date(2005, 4, 1), ORIGIN
    )
    rec = patient([thal("2005-03-01", None, "active")], aes=[late])
    kept, unused = cut_off(rec, AS_OF)
    assert kept.adverse_events == [] and [u.ref for u in unused] == ["AdverseEvent/late"]
    r = run(rec, mappings)
    assert r["toxicities"] == []
    assert r["treatment_days"] == 31 and r["on_treatment_at_as_of"] is True


def test_s6_os_death_event_and_censoring_at_last_record(mappings: Mappings) -> None:
    dead = run(patient([thal("2004-01-10", "2004-02-08")], deceased="2004-03-09"), mappings)
    assert dead["os"]["days"] == 60 and dead["os"]["event"] is True
    alive = run(patient([thal("2004-01-10", "2004-02-08")]), mappings)
    assert alive["os"] == {
        "days": 30,
        "event": False,
        "end_date": "2004-02-08",
        "basis": "last dated record (censored)",
    }


def test_s6_death_after_as_of_is_not_seen(mappings: Mappings) -> None:
    r = run(patient([thal("2004-01-10", "2004-02-08")], deceased="2005-06-01"), mappings)
    assert r["os"]["event"] is False and r["research_subject_status"] == "follow-up"


def test_s6_deceased_boolean_without_date_is_an_issue(mappings: Mappings) -> None:
    rec = patient([thal("2004-01-10", "2004-02-08")])
    rec.person = Person("Patient/p", partial("1960-01-01"), "male", None, True, ORIGIN)
    r = run(rec, mappings)
    assert r["os"]["event"] is False
    assert "deceased-no-date" in [i["code"] for i in r["issues"]]


@pytest.mark.parametrize(
    ("eligibility", "treated", "on_drug", "death", "expected"),
    [
        ("undetermined", False, False, None, ("screening", None)),
        ("ineligible", False, False, None, ("ineligible", None)),
        ("eligible", False, False, None, ("eligible", None)),
        ("eligible", True, True, None, ("on-study-intervention", None)),
        ("eligible", True, False, None, ("follow-up", None)),
        ("eligible", True, False, date(2004, 5, 1), ("off-study", date(2004, 5, 1))),
    ],
)
def test_s7_research_subject_status(
    eligibility: str, treated: bool, on_drug: bool, death: date | None, expected: tuple[str, date | None]
) -> None:
    assert subject_status(EligibilityStatus(eligibility), treated, on_drug, death) == expected


def test_s7_on_hold_interruption_is_still_on_intervention(mappings: Mappings) -> None:
    r = run(patient([thal("2005-01-10", None, "on-hold")]), mappings)
    assert r["research_subject_status"] == "on-study-intervention"


def test_s1_screening_date_comes_from_the_study_research_subject(mappings: Mappings) -> None:
    rec = patient([thal("2004-01-10", "2004-01-19")])
    other = StudySubject(
        "ResearchSubject/other",
        "Patient/p",
        "ResearchStudy/another-trial",
        "on-study",
        partial("2003-01-01"),
        None,
        True,
        "1",
        ORIGIN,
    )
    ours = StudySubject(
        "ResearchSubject/ours",
        "Patient/p",
        "ResearchStudy/thal-hcc-pilot",
        "on-study",
        partial("2004-01-06"),
        None,
        True,
        "1",
        ORIGIN,
    )
    rec.subjects = [other, ours]
    r = run(rec, mappings)
    assert r["research_subject"] == "ResearchSubject/ours"
    assert r["eligibility"]["screening_date"] == "2004-01-06"


@pytest.mark.parametrize(
    "exposure",
    [
        thal("2005-01-10", None, "active"),  # open-ended
        thal("2005-01-10", "2005-06-30", "active"),  # ends after the as-of date
        thal("2005-01-10", "2005-06-30", "completed"),
    ],
)
def test_s6_a_patient_on_thalidomide_is_censored_at_the_last_record_whatever_the_encoding(
    mappings: Mappings, exposure: Exposure
) -> None:
    """§6: the last dated record on or before the as-of date; an end after it is no record yet."""
    rec = patient([exposure])
    rec.adverse_events = [
        AdverseEvent("AdverseEvent/a", "Patient/p", None, "fatigue", None, 1, "reported", date(2005, 2, 14), ORIGIN)
    ]
    r = run(rec, mappings)
    assert r["os"]["end_date"] == "2005-02-14" and r["os"]["event"] is False
    assert r["treatment_days"] == (AS_OF - date(2005, 1, 10)).days + 1  # treated up to the as-of date


def test_s7_a_stop_reason_the_record_states_wins_over_one_derived(ctx: MapContext, mappings: Mappings) -> None:
    """A statusReason no mapping knows (a financial problem) is still a stated reason: "other", not
    "progression" from the data."""
    from builders import lesion

    from fhiradapter.core.mappers import map_resource

    statement = {
        "resourceType": "MedicationStatement",
        "id": "t",
        "status": "stopped",
        "statusReason": [{"coding": [{"system": "http://snomed.info/sct", "code": "224187001"}], "text": "money"}],
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "10432"}]
        },
        "subject": {"reference": "Patient/p"},
        "effectivePeriod": {"start": "2004-01-10", "end": "2004-04-18"},
    }
    med, issues = map_resource(statement, "MedicationStatement/t", ORIGIN, ctx, None)
    assert isinstance(med, Exposure) and med.stop_reason == "other", issues
    rec = patient([med])
    rec.observations = [
        lesion("2004-01-08", "L1", 20, 10),
        lesion("2004-03-06", "L1", 30, 20),  # PD on day 57, before the last dose
    ]
    r = run(rec, mappings)
    assert r["assessments"][0]["response"] == "PD" and r["off_treatment_reason"] == "other"
    unstated = patient([med._replace(stop_reason=None)])
    unstated.observations = rec.observations
    assert run(unstated, mappings)["off_treatment_reason"] == "progression"  # none stated: derived from the PD


def test_s7_an_exposure_ending_after_the_as_of_date_is_still_on_drug_at_it(mappings: Mappings) -> None:
    """Its status (completed) is written later than the as-of date; at that date the patient was still taking
    thalidomide: on-study-intervention, treated up to the as-of date."""
    r = run(patient([thal("2005-01-10", "2005-06-30", "completed")]), mappings)
    assert r["on_treatment_at_as_of"] is True and r["research_subject_status"] == "on-study-intervention"
    assert r["last_dose_date"] == AS_OF.isoformat()


@pytest.mark.parametrize("text", ["2004", "2004-07", "2004-07-15", "2004-02-29"])
def test_s1_a_partial_date_keeps_its_precision(text: str) -> None:
    value = partial(text)
    assert value is not None and str(value) == text
    assert (value.full is not None) is (len(text) == 10)


@pytest.mark.parametrize("text", ["2005-02-29", "2004-13", "2004-00", "04-07-15", "2004-07-15-1", "July"])
def test_s1_text_that_is_no_calendar_date_is_no_partial_date(text: str) -> None:
    from fhiradapter.core.dates import partial_date

    assert partial_date(text) is None


@pytest.mark.parametrize(
    ("text", "on_or_before", "strictly_before", "after"),
    [
        # docs/protocol.md §1: a partial date compares at its own precision with the day 2004-07-15.
        ("2004-07-14", True, True, False),
        ("2004-07-15", True, False, False),
        ("2004-07-16", False, False, True),
        ("2004-06", True, True, False),
        ("2004-07", True, False, False),  # the same month: maybe before, maybe after
        ("2004-08", False, False, True),
        ("2003", True, True, False),
        ("2004", True, False, False),
        ("2005", False, False, True),
    ],
)
def test_s1_partial_dates_compare_at_their_own_precision(
    text: str, on_or_before: bool, strictly_before: bool, after: bool
) -> None:
    from fhiradapter.core import dates

    day = date(2004, 7, 15)
    value = partial(text)
    assert dates.on_or_before(value, day) is on_or_before
    assert dates.strictly_before(value, day) is strictly_before
    assert dates.after(value, day) is after
    if value is not None and value.full is not None:
        assert dates.after(value.full, day) is after  # a full date compares as the day it is
