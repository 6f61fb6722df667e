"""The core's typed records: the clinical extract as written and read back, records that cross processes."""

from __future__ import annotations

import pickle
from datetime import date

import msgspec
import orjson
from builders import lab, lesion
from test_protocol_s2_eligibility import ORIGIN, good_record

from fhiradapter.core.child_pugh import score_child_pugh
from fhiradapter.core.evaluate import EvaluationSettings, evaluate_patient
from fhiradapter.core.extract import ClinicalExtract, clinical_extract
from fhiradapter.core.model import AdverseEvent, PatientRecord
from fhiradapter.core.response import assess_response
from fhiradapter.shell.common.mappings_io import load_mappings

AS_OF = date(2004, 6, 1)


def _record() -> PatientRecord:
    rec = good_record()
    rec.observations.append(lab("afp", "2004-02-27", 400, unit="ng/mL"))
    rec.observations.append(lesion("2004-05-01", "BodyStructure/l1", 20, 10))
    rec.observations.append(lab("anc", "2004-07-01", 2.0, unit="10*9/L"))  # after the as-of date: not in it
    rec.adverse_events.append(
        AdverseEvent(
            "AdverseEvent/ae", "Patient/p", "neuropathy", "tingling", None, 2, "reported", date(2004, 4, 2), ORIGIN
        )
    )
    return rec


def test_clinical_extract_written_then_read_back_is_the_typed_value() -> None:
    rec = _record()
    line = msgspec.json.encode(clinical_extract(rec, AS_OF, set()))
    typed = clinical_extract(rec, AS_OF, set())
    assert msgspec.json.decode(line, type=ClinicalExtract) == typed
    assert [o.date for o in typed.observations] == sorted(o.date for o in typed.observations)
    assert "2004-07-01" not in {o.date for o in typed.observations}
    assert [t.d1 for t in typed.tumour] == [30, 20]
    assert typed.adverse_events[0].verbatim == "tingling"


def test_clinical_extract_line_keeps_its_keys_in_order() -> None:
    """clinical.ndjson's keys, in the order the registry and SDTM exports have always read them."""
    extract = orjson.loads(msgspec.json.encode(clinical_extract(_record(), AS_OF, {"AdverseEvent/ae"})))
    assert list(extract) == [
        "patient",
        "birth_date",
        "sex",
        "deceased_date",
        "observations",
        "tumour",
        "exposures",
        "adverse_events",
    ]
    assert list(extract["observations"][0]) == [
        "ref",
        "concept",
        "date",
        "value",
        "unit",
        "orig_value",
        "orig_unit",
        "low",
        "high",
    ]
    assert list(extract["tumour"][0]) == ["ref", "date", "lesion", "d1", "d2"]
    assert list(extract["exposures"][0]) == ["ref", "drug", "drug_code", "start", "end"]
    assert extract["adverse_events"] == []  # set aside by the evaluation


def test_records_that_cross_processes_pickle() -> None:
    """The worker pool pickles patient records in and results out; the rules' own records pickle too."""

    def again(value: object) -> object:
        return pickle.loads(pickle.dumps(value))  # noqa: S301 - our own bytes, as the worker pool does

    rec = _record()
    assert again(rec) == rec
    cp = score_child_pugh(
        bilirubin=1.0, albumin=3.6, inr=1.1, pt_prolongation=None, ascites="none", encephalopathy=0, albumin_lower=2.8
    )
    assert again(cp) == cp
    tumour = [o for o in rec.observations if o.concept == "tumor_size"]
    response = assess_response(tumour, [], date(2004, 3, 1), afp_window_days=14, sd_min_days=49)
    assert again(response) == response
    evaluation = evaluate_patient(rec, EvaluationSettings(AS_OF, load_mappings()[0]))
    assert again(evaluation) == evaluation


def test_patient_record_is_filled_record_by_record() -> None:
    """The pipeline starts a record with the patient only and appends as it groups; no two share a list."""
    first, second = PatientRecord("Patient/a"), PatientRecord("Patient/b")
    first.observations.append(lab("anc", "2004-02-27", 2.5, unit="10*9/L"))
    assert second.observations == []
