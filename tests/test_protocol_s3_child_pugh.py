"""docs/protocol.md §3 Child-Pugh: every band boundary on both sides, the configurable albumin cut-off, PT fallback."""

from __future__ import annotations

import pytest

from fhiradapter.core.child_pugh import (
    albumin_points,
    child_pugh_class,
    encephalopathy_points,
    rising_points,
    score_child_pugh,
)
from fhiradapter.core.limits import BILIRUBIN_BANDS, INR_BANDS, PT_BANDS
from fhiradapter.core.mappers import MapContext, map_resource
from fhiradapter.core.model import Observed
from fhiradapter.core.results import ChildPughScore


@pytest.mark.parametrize(("value", "points"), [(1.99, 1), (2.0, 2), (3.0, 2), (3.01, 3)])
def test_s3_bilirubin_bands_closed_in_the_middle(value: float, points: int) -> None:
    assert rising_points(value, BILIRUBIN_BANDS) == points


@pytest.mark.parametrize(("value", "points"), [(3.51, 1), (3.5, 2), (2.8, 2), (2.79, 3)])
def test_s3_albumin_bands_default_cut_off(value: float, points: int) -> None:
    assert albumin_points(value, 2.8) == points


@pytest.mark.parametrize(("value", "points"), [(3.0, 2), (2.99, 3), (2.8, 3)])
def test_s3_albumin_configurable_lower_cut_off_3_0(value: float, points: int) -> None:
    assert albumin_points(value, 3.0) == points


@pytest.mark.parametrize(("value", "points"), [(1.69, 1), (1.7, 2), (2.3, 2), (2.31, 3)])
def test_s3_inr_bands(value: float, points: int) -> None:
    assert rising_points(value, INR_BANDS) == points


@pytest.mark.parametrize(("value", "points"), [(3.9, 1), (4.0, 2), (6.0, 2), (6.1, 3)])
def test_s3_pt_prolongation_bands(value: float, points: int) -> None:
    assert rising_points(value, PT_BANDS) == points


@pytest.mark.parametrize(("grade", "points"), [(0, 1), (1, 2), (2, 2), (3, 3), (4, 3)])
def test_s3_encephalopathy_points(grade: int, points: int) -> None:
    assert encephalopathy_points(grade) == points


@pytest.mark.parametrize(("score", "cls"), [(5, "A"), (6, "A"), (7, "B"), (9, "B"), (10, "C"), (15, "C")])
def test_s3_class_boundaries(score: int, cls: str) -> None:
    assert child_pugh_class(score) == cls


def test_s3_score_uses_inr_before_pt_and_records_pt_use() -> None:
    both = score_child_pugh(
        bilirubin=1.0,
        albumin=4.0,
        inr=1.1,
        pt_prolongation=7.0,
        ascites="none",
        encephalopathy=0,
        albumin_lower=2.8,
    )
    assert (both.score, both.cls, both.used_pt) == (5, "A", False)
    pt_only = score_child_pugh(
        bilirubin=1.0,
        albumin=4.0,
        inr=None,
        pt_prolongation=7.0,
        ascites="none",
        encephalopathy=0,
        albumin_lower=2.8,
    )
    assert (pt_only.score, pt_only.points["pt_prolongation"], pt_only.used_pt) == (7, 3, True)


def test_s3_missing_component_makes_score_unknown() -> None:
    cp = score_child_pugh(
        bilirubin=1.0,
        albumin=None,
        inr=1.0,
        pt_prolongation=None,
        ascites=None,
        encephalopathy=0,
        albumin_lower=2.8,
    )
    assert cp.score is None and cp.cls is None
    assert set(cp.missing) == {"albumin", "ascites"}


def test_s3_ascites_moderate_and_severe_score_three() -> None:
    def score(ascites: str) -> int | None:
        return score_child_pugh(
            bilirubin=1.0,
            albumin=4.0,
            inr=1.0,
            pt_prolongation=None,
            ascites=ascites,
            encephalopathy=0,
            albumin_lower=2.8,
        ).score

    assert score("moderate") == 7
    assert score("severe") == 7
    assert score("mild") == 6


@pytest.mark.parametrize(("umol", "points"), [(34.1, 1), (34.2, 2), (51.3, 2), (51.4, 3)])
def test_s3_bilirubin_umol_converted_before_one_table(ctx: MapContext, umol: float, points: int) -> None:
    res = {
        "resourceType": "Observation",
        "id": "b",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "14631-6"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2004-01-01",
        "valueQuantity": {
            "value": umol,
            "unit": "umol/L",
            "system": "http://unitsofmeasure.org",
            "code": "umol/L",
        },
    }
    obs, issues = map_resource(res, "Observation/b", ("t", "l"), ctx, None)
    assert isinstance(obs, Observed) and not issues
    assert obs.value is not None
    assert rising_points(obs.value, BILIRUBIN_BANDS) == points


def _cp_patient(labs_day: str, clinical_day: str) -> ChildPughScore:
    """A study subject screened 2004-03-01 with Child-Pugh labs on ``labs_day`` and ascites and encephalopathy
    assessed on ``clinical_day``."""
    from builders import AS_OF, lab, partial

    from fhiradapter.core.evaluate import EvaluationSettings, evaluate_patient
    from fhiradapter.core.model import PatientRecord, Person, StudySubject
    from fhiradapter.shell.common.mappings_io import load_mappings

    origin = ("t", "l")
    rec = PatientRecord(
        "Patient/p",
        person=Person("Patient/p", partial("1960-01-01"), "male", None, False, origin),
        observations=[
            lab("bilirubin", labs_day, 1.0, unit="mg/dL"),
            lab("albumin", labs_day, 4.0, unit="g/dL"),
            lab("inr", labs_day, 1.0),
            lab("ascites", clinical_day, None, coded="none"),
            lab("encephalopathy", clinical_day, 0),
        ],
        subjects=[
            StudySubject(
                "ResearchSubject/rs",
                "Patient/p",
                "ResearchStudy/thal-hcc-pilot",
                "screening",
                partial("2004-03-01"),
                None,
                True,
                "1",
                origin,
            )
        ],
    )
    result = evaluate_patient(rec, EvaluationSettings(AS_OF, load_mappings()[0])).result
    assert result is not None
    return result.child_pugh


def test_s3_ascites_and_encephalopathy_are_not_held_to_the_lab_window() -> None:
    """§2's 28-day window is for labs: the clinical components are the latest on or before screening, as ECOG."""
    cp = _cp_patient(labs_day="2004-02-15", clinical_day="2003-12-01")  # 91 days before screening
    assert (cp.score, cp.cls, cp.missing) == (5, "A", ())


@pytest.mark.parametrize(("labs_day", "missing"), [("2004-02-02", []), ("2004-02-01", ["albumin", "bilirubin", "inr"])])
def test_s3_labs_stay_within_the_28_day_window(labs_day: str, missing: list[str]) -> None:
    cp = _cp_patient(labs_day=labs_day, clinical_day="2004-02-20")
    assert sorted(cp.missing) == missing
