"""docs/protocol.md §2 eligibility: each criterion, both sides of every threshold, the lab window, overall status."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from builders import lab, lesion, partial
from msgspec.structs import replace

from fhiradapter.core.child_pugh import ChildPugh, score_child_pugh
from fhiradapter.core.eligibility import CRITERIA, assess_eligibility
from fhiradapter.core.model import Condition, Consent, Exposure, PatientRecord, Person, StudySubject
from fhiradapter.core.results import to_builtins

SCREEN = date(2004, 3, 1)
ORIGIN = ("t", "l")


def good_record() -> PatientRecord:
    """A patient who meets every criterion on 2004-03-01."""
    return PatientRecord(
        "Patient/p",
        person=Person("Patient/p", partial("1960-01-15"), "male", None, False, ORIGIN),
        observations=[
            lab("ecog", "2004-02-27", 1),
            lab("anc", "2004-02-27", 2.5, unit="10*9/L"),
            lab("platelets", "2004-02-27", 120, unit="10*9/L"),
            lab("creatinine", "2004-02-27", 1.0, unit="mg/dL"),
            lab("disease_status", "2004-01-10", None, coded="worsened"),
            lesion("2004-02-20", "BodyStructure/l1", 30, 20),
        ],
        meds=[
            Exposure(
                "MedicationStatement/dox",
                "Patient/p",
                "anthracycline",
                "3639",
                partial("2003-06-01"),
                partial("2003-09-01"),
                "completed",
                None,
                None,
                ORIGIN,
            )
        ],
        conditions=[
            Condition("Condition/hcc", "Patient/p", "hcc", "confirmed", "active", partial("2002-01-01"), None, ORIGIN),
            Condition(
                "Condition/met", "Patient/p", "metastasis", "confirmed", "active", partial("2003-01-01"), None, ORIGIN
            ),
        ],
        consents=[Consent("Consent/c", "Patient/p", "active", partial("2004-03-01"), ORIGIN)],
        subjects=[
            StudySubject(
                "ResearchSubject/rs",
                "Patient/p",
                "ResearchStudy/s",
                "screening",
                partial("2004-03-01"),
                None,
                False,
                "1",
                ORIGIN,
            )
        ],
    )


CP_B9 = score_child_pugh(
    bilirubin=3.0,
    albumin=2.8,
    inr=1.5,
    pt_prolongation=None,
    ascites="mild",
    encephalopathy=1,
    albumin_lower=2.8,
)
CP_C10 = score_child_pugh(
    bilirubin=3.0,
    albumin=2.8,
    inr=1.8,
    pt_prolongation=None,
    ascites="mild",
    encephalopathy=1,
    albumin_lower=2.8,
)


def assess(rec: PatientRecord, cp: ChildPugh = CP_B9) -> dict[str, Any]:
    assessed: dict[str, Any] = to_builtins(assess_eligibility(rec, SCREEN, SCREEN, cp, ["Observation/cp"]))
    return assessed  # as results.json has it


def status_of(result: dict[str, Any], cid: str) -> str:
    return str(next(c for c in result["criteria"] if c["id"] == cid)["status"])


def with_lab(rec: PatientRecord, concept: str, value: float, unit: str = "10*9/L") -> PatientRecord:
    others = [o for o in rec.observations if o.concept != concept]
    return replace(rec, observations=[*others, lab(concept, "2004-02-27", value, unit=unit)])


def test_s2_all_met_is_eligible_with_fixed_ids() -> None:
    result = assess(good_record())
    assert [c["id"] for c in result["criteria"]] == list(CRITERIA)
    assert result["status"] == "eligible"
    assert all(c["status"] == "met" for c in result["criteria"])


@pytest.mark.parametrize(
    ("birth", "expected"),
    [
        ("1929-03-02", "met"),  # 74 the day before the 75th birthday
        ("1929-03-01", "not_met"),  # 75 on the screening date
        ("1929", "unknown"),  # 74 or 75: a partial date cannot decide
        ("1920-06", "not_met"),
    ],
)
def test_s2_age_below_75(birth: str, expected: str) -> None:
    rec = good_record()
    rec = replace(rec, person=Person("Patient/p", partial(birth), "male", None, False, ORIGIN))
    assert status_of(assess(rec), "age") == expected


@pytest.mark.parametrize(("value", "expected"), [(2, "met"), (3, "not_met")])
def test_s2_ecog_at_most_2(value: int, expected: str) -> None:
    assert status_of(assess(with_lab(good_record(), "ecog", value, "")), "ecog") == expected


@pytest.mark.parametrize(("value", "expected"), [(1.0, "met"), (0.99, "not_met")])
def test_s2_anc_at_least_1_0(value: float, expected: str) -> None:
    assert status_of(assess(with_lab(good_record(), "anc", value)), "anc") == expected


@pytest.mark.parametrize(("value", "expected"), [(40.0, "met"), (39.9, "not_met")])
def test_s2_platelets_at_least_40(value: float, expected: str) -> None:
    assert status_of(assess(with_lab(good_record(), "platelets", value)), "platelets") == expected


@pytest.mark.parametrize(("value", "expected"), [(2.0, "met"), (2.01, "not_met")])
def test_s2_creatinine_at_most_2_0(value: float, expected: str) -> None:
    rec = with_lab(good_record(), "creatinine", value, "mg/dL")
    assert status_of(assess(rec), "creatinine") == expected


def test_s2_child_pugh_b9_met_c10_not_met() -> None:
    assert CP_B9.score == 9 and CP_C10.score == 10
    assert status_of(assess(good_record(), CP_B9), "child_pugh") == "met"
    result = assess(good_record(), CP_C10)
    assert status_of(result, "child_pugh") == "not_met"
    assert result["status"] == "ineligible"


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        ("2004-02-02", "met"),  # 28 days before screening: inside the window
        ("2004-02-01", "unknown"),  # 29 days before: outside, so no lab
        ("2004-03-01", "met"),  # on the screening date
        ("2004-03-02", "unknown"),  # after screening: not read
    ],
)
def test_s2_labs_latest_within_28_days(day: str, expected: str) -> None:
    rec = good_record()
    rec = replace(
        rec,
        observations=[o for o in rec.observations if o.concept != "anc"] + [lab("anc", day, 2.0, unit="10*9/L")],
    )
    assert status_of(assess(rec), "anc") == expected


def test_s2_latest_lab_wins() -> None:
    rec = good_record()
    rec = replace(
        rec,
        observations=[o for o in rec.observations if o.concept != "anc"]
        + [
            lab("anc", "2004-02-10", 2.0, unit="10*9/L", ref="Observation/old"),
            lab("anc", "2004-02-28", 0.8, unit="10*9/L", ref="Observation/new"),
        ],
    )
    crit = next(c for c in assess(rec)["criteria"] if c["id"] == "anc")
    assert crit["status"] == "not_met" and crit["evidence"] == ["Observation/new"]


def test_s2_missing_lab_is_undetermined_not_ineligible() -> None:
    rec = good_record()
    rec = replace(rec, observations=[o for o in rec.observations if o.concept != "platelets"])
    result = assess(rec)
    assert status_of(result, "platelets") == "unknown"
    assert result["status"] == "undetermined"


def test_s2_exclusions_met_without_evidence_and_say_so() -> None:
    result = assess(good_record())
    for cid in (
        "not_pregnant_or_breastfeeding",
        "no_peripheral_neuropathy",
        "no_prior_thalidomide",
        "no_uncontrolled_infection",
    ):
        crit = next(c for c in result["criteria"] if c["id"] == cid)
        assert crit["status"] == "met" and "no " in crit["detail"]


@pytest.mark.parametrize(
    ("concept", "cid"),
    [
        ("peripheral_neuropathy", "no_peripheral_neuropathy"),
        ("infection", "no_uncontrolled_infection"),
        ("pregnancy", "not_pregnant_or_breastfeeding"),
        ("breastfeeding", "not_pregnant_or_breastfeeding"),
    ],
)
def test_s2_exclusion_condition_not_met(concept: str, cid: str) -> None:
    rec = good_record()
    rec.conditions.append(
        Condition("Condition/x", "Patient/p", concept, None, "active", partial("2004-01-01"), None, ORIGIN)
    )
    assert status_of(assess(rec), cid) == "not_met"


def test_s2_resolved_exclusion_condition_does_not_count() -> None:
    rec = good_record()
    rec.conditions.append(
        Condition("Condition/x", "Patient/p", "infection", None, "resolved", partial("2004-01-01"), None, ORIGIN)
    )
    assert status_of(assess(rec), "no_uncontrolled_infection") == "met"


def test_s2_pregnancy_status_observation() -> None:
    rec = good_record()
    rec.observations.append(lab("pregnancy_status", "2004-02-27", None, coded="pregnant"))
    assert status_of(assess(rec), "not_pregnant_or_breastfeeding") == "not_met"


@pytest.mark.parametrize(("start", "expected"), [("2004-02-29", "not_met"), ("2004-03-01", "met")])
def test_s2_prior_thalidomide_is_before_screening(start: str, expected: str) -> None:
    rec = good_record()
    rec.meds.append(
        Exposure(
            "MedicationStatement/t",
            "Patient/p",
            "thalidomide",
            "10432",
            partial(start),
            None,
            "active",
            None,
            None,
            ORIGIN,
        )
    )
    assert status_of(assess(rec), "no_prior_thalidomide") == expected


def test_s2_histology_needs_confirmed() -> None:
    rec = good_record()
    rec = replace(rec, conditions=[replace_cond(c, "provisional") if c.concept == "hcc" else c for c in rec.conditions])
    assert status_of(assess(rec), "histology") == "unknown"


def replace_cond(c: Condition, verification: str) -> Condition:
    return c._replace(verification=verification)


def test_s2_metastatic_measurable_needs_two_diameters_within_28_days() -> None:
    rec = good_record()
    rec = replace(
        rec,
        observations=[o for o in rec.observations if o.concept != "tumor_size"]
        + [lesion("2004-02-20", "BodyStructure/l1", 30, None)],
    )
    assert status_of(assess(rec), "metastatic_measurable") == "unknown"
    rec = replace(
        rec,
        observations=[o for o in rec.observations if o.concept != "tumor_size"]
        + [lesion("2004-02-01", "BodyStructure/l1", 30, 20)],
    )  # 29 days before
    assert status_of(assess(rec), "metastatic_measurable") == "unknown"
    rec = replace(
        rec,
        observations=[o for o in rec.observations if o.concept != "tumor_size"]
        + [lesion("2004-02-02", "BodyStructure/l1", 30, 20)],
    )  # 28 days before
    assert status_of(assess(rec), "metastatic_measurable") == "met"


def test_s2_anthracycline_needs_a_later_progression() -> None:
    rec = good_record()
    rec = replace(
        rec,
        observations=[o for o in rec.observations if o.concept != "disease_status"]
        + [lab("disease_status", "2003-05-01", None, coded="worsened")],
    )  # before doxorubicin
    assert status_of(assess(rec), "prior_anthracycline_progression") == "unknown"


def test_s2_consent_from_research_subject_or_missing() -> None:
    rec = replace(good_record(), consents=[])
    assert status_of(assess(rec), "consent") == "unknown"
    rec.subjects[0] = rec.subjects[0]._replace(has_consent=True)
    assert status_of(assess(rec), "consent") == "met"


def test_s2_ecog_is_the_latest_assessment_on_or_before_screening_however_old() -> None:
    rec = good_record()
    rec = replace(
        rec,
        observations=[o for o in rec.observations if o.concept != "ecog"]
        + [lab("ecog", "2003-12-01", 2), lab("ecog", "2004-03-02", 4)],
    )  # the second is after screening
    crit = next(c for c in assess(rec)["criteria"] if c["id"] == "ecog")
    assert crit["status"] == "met" and crit["value"]["value"] == 2


@pytest.mark.parametrize(
    ("start", "progression", "expected"),
    [
        ("2004-01", "2004-01-13", "unknown"),  # same month: which came first is not known (§1)
        ("2004-01", "2004-02-02", "met"),  # certainly after any day of January
        ("2004-01-12", "2004-01-13", "met"),  # full dates: one day later suffices
        ("2004-01-13", "2004-01-13", "unknown"),  # the same day is not later
        ("2003", "2003-11-01", "unknown"),
        ("2003", "2004-01-02", "met"),
    ],
)
def test_s2_a_partial_anthracycline_start_is_not_a_day(start: str, progression: str, expected: str) -> None:
    rec = good_record()
    dox = replace(rec, meds=[rec.meds[0]._replace(start=partial(start), end=None)])
    rec = replace(
        dox,
        observations=[o for o in dox.observations if o.concept != "disease_status"]
        + [lab("disease_status", progression, None, coded="worsened")],
    )
    crit = next(c for c in assess(rec)["criteria"] if c["id"] == "prior_anthracycline_progression")
    assert crit["status"] == expected, crit
    if expected == "unknown" and len(start) < 10:
        assert "no day" in crit["detail"]


def _without_observations(concept: str) -> Any:
    return lambda rec: replace(rec, observations=[o for o in rec.observations if o.concept != concept])


CP_MISSING = score_child_pugh(
    bilirubin=None,
    albumin=2.8,
    inr=1.5,
    pt_prolongation=None,
    ascites="mild",
    encephalopathy=1,
    albumin_lower=2.8,
)


@pytest.mark.parametrize(
    ("cid", "remove", "missing"),
    [
        ("histology", lambda rec: replace(rec, conditions=[c for c in rec.conditions if c.concept != "hcc"]), "HCC"),
        (
            "metastatic_measurable",
            lambda rec: replace(rec, conditions=[c for c in rec.conditions if c.concept != "metastasis"]),
            "secondary-malignancy",
        ),
        ("metastatic_measurable", _without_observations("tumor_size"), "bidimensional lesion"),
        ("prior_anthracycline_progression", lambda rec: replace(rec, meds=[]), "anthracycline"),
        ("prior_anthracycline_progression", _without_observations("disease_status"), "progression"),
        ("age", lambda rec: replace(rec, person=rec.person._replace(birth_date=None)), "birth date"),
        ("ecog", _without_observations("ecog"), "ECOG"),
        ("anc", _without_observations("anc"), "neutrophils"),
        ("platelets", _without_observations("platelets"), "platelets"),
        ("creatinine", _without_observations("creatinine"), "creatinine"),
        ("child_pugh", None, "bilirubin"),
        ("consent", lambda rec: replace(rec, consents=[]), "consent"),
    ],
)
def test_s2_an_inclusion_criterion_without_its_record_is_unknown_and_names_what_is_missing(
    cid: str, remove: Any, missing: str
) -> None:
    """§2 (amended): a missing record is undocumented, not failed: unknown, never not_met; the patient is
    undetermined, and the detail names what is missing."""
    rec = good_record()
    result = assess(remove(rec), CP_MISSING) if remove else assess(rec, CP_MISSING)
    criterion = next(c for c in result["criteria"] if c["id"] == cid)
    assert criterion["status"] == "unknown"
    assert missing.lower() in criterion["detail"].lower()
    assert result["status"] == "undetermined"
    assert all(c["status"] != "not_met" for c in result["criteria"])
