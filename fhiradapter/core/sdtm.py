"""SDTM-shaped datasets (DM, EX, AE, LB, TU, TR, RS) and their data dictionary, from results plus the clinical extract.

Each dataset is declared once in :data:`DATASETS` (variable, label, type, where the value comes from); the builders
return rows with exactly those variables, in that order, and the data dictionary is written from the same table.
Sources follow the HL7 FHIR-to-CDISC Joint Mapping IG where it speaks (DM from Patient, AE from AdverseEvent,
LB from Observation, EX from MedicationStatement); test codes and units come from ``mappings/export.toml``.
Identity rules (pseudonyms, no birth date, no free text, no resource ids) are :class:`registry.SubjectView`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from fhiradapter.core.extract import AdverseEventEntry, DrugExposure, NumericObservation, TumourMeasurement
from fhiradapter.core.protocol import StrictModel
from fhiradapter.core.registry import Row, SubjectView, iso
from fhiradapter.core.results import EligibilityStatus
from fhiradapter.errors import ConfigError


class StudyCfg(StrictModel):
    studyid: str
    arm: str
    armcd: str


class LbTest(StrictModel):
    concept: str
    testcd: str
    test: str
    cat: str


class ExDrug(StrictModel):
    drug: str
    extrt: str
    dose: float
    dosu: str
    dosfrq: str
    route: str


class TestCode(StrictModel):
    testcd: str
    test: str


class TrCfg(StrictModel):
    longest: TestCode
    perpendicular: TestCode
    unit: str


class RsCfg(StrictModel):
    cat: str
    overall: TestCode
    best: TestCode


class ExportMappings(StrictModel):
    study: StudyCfg
    lb: list[LbTest]
    units: dict[str, str]
    ex: list[ExDrug]
    tr: TrCfg
    rs: RsCfg


def parse_export_mappings(doc: Mapping[str, Any]) -> ExportMappings:  # export.toml as parsed: validated here
    try:
        return ExportMappings.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"export.toml: {where}: {first['msg']} ({exc.error_count()} problem(s))") from None


Type = Literal["Char", "Num"]

# dataset -> [(variable, label, type, source)]; the order is the column order of the written files.
_COMMON: list[tuple[str, str, Type, str]] = [
    ("STUDYID", "Study Identifier", "Char", "export.toml [study].studyid"),
    ("DOMAIN", "Domain Abbreviation", "Char", "constant"),
    ("USUBJID", "Unique Subject Identifier", "Char", "STUDYID-SUBJID"),
]
DATASETS: dict[str, list[tuple[str, str, Type, str]]] = {
    "DM": [
        *_COMMON,
        ("SUBJID", "Subject Identifier for the Study", "Char", "Patient.id, or its HMAC-SHA-256 pseudonym"),
        ("RFSTDTC", "Subject Reference Start Date/Time", "Char", "index date: first study thalidomide dose"),
        ("RFENDTC", "Subject Reference End Date/Time", "Char", "last dose date"),
        ("RFXSTDTC", "Date/Time of First Study Treatment", "Char", "index date"),
        ("RFXENDTC", "Date/Time of Last Study Treatment", "Char", "last dose date"),
        ("DTHDTC", "Date/Time of Death", "Char", "Patient.deceasedDateTime (up to the as-of date)"),
        ("DTHFL", "Subject Death Flag", "Char", "Y when a death date is known"),
        ("BRTHDTC", "Date/Time of Birth", "Char", "Patient.birthDate; empty when pseudonymised"),
        ("AGE", "Age", "Num", "completed years at the index date (at screening if untreated)"),
        ("AGEU", "Age Units", "Char", "YEARS"),
        ("SEX", "Sex", "Char", "Patient.gender: male M, female F, else U"),
        ("ARMCD", "Planned Arm Code", "Char", "export.toml armcd; SCRNFAIL if ineligible; NOTASSGN otherwise"),
        ("ARM", "Description of Planned Arm", "Char", "as ARMCD"),
        ("ACTARMCD", "Actual Arm Code", "Char", "armcd if treated; NOTTRT if eligible but not dosed"),
        ("ACTARM", "Description of Actual Arm", "Char", "as ACTARMCD"),
    ],
    "EX": [
        *_COMMON,
        ("EXSEQ", "Sequence Number", "Num", "order of exposure start within the subject"),
        ("EXSPID", "Sponsor-Defined Identifier", "Char", "the FHIR resource; empty when pseudonymised"),
        ("EXTRT", "Name of Treatment", "Char", "export.toml [[ex]].extrt"),
        ("EXDOSE", "Dose", "Num", "protocol dose (export.toml); FHIR dosage is not mapped"),
        ("EXDOSU", "Dose Units", "Char", "export.toml"),
        ("EXDOSFRQ", "Dosing Frequency per Interval", "Char", "export.toml"),
        ("EXROUTE", "Route of Administration", "Char", "export.toml"),
        ("EXSTDTC", "Start Date/Time of Treatment", "Char", "effectivePeriod.start"),
        ("EXENDTC", "End Date/Time of Treatment", "Char", "effectivePeriod.end (capped at the as-of date)"),
        ("EXSTDY", "Study Day of Start of Treatment", "Num", "from RFSTDTC, day 1 = RFSTDTC"),
        ("EXENDY", "Study Day of End of Treatment", "Num", "from RFSTDTC"),
    ],
    "AE": [
        *_COMMON,
        ("AESEQ", "Sequence Number", "Num", "order of onset within the subject"),
        ("AESPID", "Sponsor-Defined Identifier", "Char", "the FHIR resource; empty when pseudonymised"),
        ("AETERM", "Reported Term for the Adverse Event", "Char", "event text; the CTC term when pseudonymised"),
        ("AELLTCD", "Lowest Level Term Code", "Num", "MedDRA LLT from the event's coding"),
        ("AEDECOD", "Dictionary-Derived Term", "Char", "CTC v2.0 term (codes.toml display)"),
        ("AETOXGR", "Standard Toxicity Grade", "Char", "ae-grade extension, or severity fallback"),
        ("AESTDTC", "Start Date/Time of Adverse Event", "Char", "AdverseEvent.date"),
        ("AESTDY", "Study Day of Start of Adverse Event", "Num", "from RFSTDTC"),
    ],
    "LB": [
        *_COMMON,
        ("LBSEQ", "Sequence Number", "Num", "order of collection within the subject"),
        ("LBSPID", "Sponsor-Defined Identifier", "Char", "the FHIR resource; empty when pseudonymised"),
        ("LBTESTCD", "Lab Test or Examination Short Name", "Char", "export.toml [[lb]] by mapped concept"),
        ("LBTEST", "Lab Test or Examination Name", "Char", "export.toml [[lb]]"),
        ("LBCAT", "Category for Lab Test", "Char", "export.toml [[lb]]"),
        ("LBORRES", "Result or Finding in Original Units", "Char", "Observation.valueQuantity.value"),
        ("LBORRESU", "Original Units", "Char", "Observation.valueQuantity.code (CDISC unit via export.toml)"),
        ("LBSTRESC", "Character Result/Finding in Std Format", "Char", "LBSTRESN as text"),
        ("LBSTRESN", "Numeric Result/Finding in Standard Units", "Num", "value in the concept's canonical unit"),
        ("LBSTRESU", "Standard Units", "Char", "codes.toml canonical unit (CDISC unit via export.toml)"),
        ("LBDTC", "Date/Time of Specimen Collection", "Char", "Observation.effective[x]"),
        ("LBDY", "Study Day of Specimen Collection", "Num", "from RFSTDTC"),
    ],
    "TU": [
        *_COMMON,
        ("TUSEQ", "Sequence Number", "Num", "order of first measurement within the subject"),
        ("TULNKID", "Link ID", "Char", "T01, T02 ... per lesion; links TU to TR"),
        ("TUSPID", "Sponsor-Defined Identifier", "Char", "the lesion's BodyStructure; L1, L2 ... when pseudonymised"),
        ("TUTESTCD", "Tumor Identification Short Name", "Char", "TUMIDENT"),
        ("TUTEST", "Tumor Identification Test Name", "Char", "Tumor Identification"),
        ("TUORRES", "Tumor Identification Result", "Char", "TARGET: every measured lesion is a target lesion"),
        ("TUSTRESC", "Tumor Identification Result Std. Format", "Char", "TARGET"),
        ("TUDTC", "Date/Time of Tumor Identification", "Char", "first measurement date"),
        ("TUDY", "Study Day of Tumor Identification", "Num", "from RFSTDTC"),
    ],
    "TR": [
        *_COMMON,
        ("TRSEQ", "Sequence Number", "Num", "order within the subject"),
        ("TRLNKID", "Link ID", "Char", "the lesion's TULNKID"),
        ("TRTESTCD", "Tumor Assessment Short Name", "Char", "export.toml [tr]: LDIAM / LPERP"),
        ("TRTEST", "Tumor Assessment Test Name", "Char", "export.toml [tr]"),
        ("TRORRES", "Result or Finding in Original Units", "Char", "TumorSize component, in mm"),
        ("TRORRESU", "Original Units", "Char", "mm"),
        ("TRSTRESC", "Character Result/Finding in Std Format", "Char", "TRSTRESN as text"),
        ("TRSTRESN", "Numeric Result/Finding in Standard Units", "Num", "diameter in mm"),
        ("TRSTRESU", "Standard Units", "Char", "mm"),
        ("VISIT", "Visit Name", "Char", "BASELINE, ASSESSMENT n (results.json assessments), else UNSCHEDULED"),
        ("TRDTC", "Date/Time of Tumor Measurement", "Char", "Observation.effective[x]"),
        ("TRDY", "Study Day of Tumor Measurement", "Num", "from RFSTDTC"),
    ],
    "RS": [
        *_COMMON,
        ("RSSEQ", "Sequence Number", "Num", "order within the subject"),
        ("RSTESTCD", "Assessment Short Name", "Char", "OVRLRESP per assessment; BESTRESP once"),
        ("RSTEST", "Assessment Name", "Char", "export.toml [rs]"),
        ("RSCAT", "Category for Assessment", "Char", "export.toml [rs].cat"),
        ("RSORRES", "Result or Finding in Original Units", "Char", "computed response: CR, PR, SD, PD, NE"),
        ("RSSTRESC", "Character Result/Finding in Std Format", "Char", "as RSORRES"),
        ("RSEVAL", "Evaluator", "Char", "fhiradapter (computed by the protocol's rule)"),
        ("VISIT", "Visit Name", "Char", "ASSESSMENT n; empty for BESTRESP"),
        ("RSDTC", "Date/Time of Assessment", "Char", "assessment date; for BESTRESP the date it was first met"),
        ("RSDY", "Study Day of Assessment", "Num", "from RFSTDTC"),
    ],
}

SEX = {"male": "M", "female": "F"}


def _num_text(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:g}"


# The cells of one SDTM record by variable (``registry.Row``): the columns of its dataset's file.


class SdtmBuilder:
    """Builds every dataset's rows subject by subject; ``rows`` maps dataset name to its rows."""

    def __init__(self, cfg: ExportMappings) -> None:
        self.cfg = cfg
        self.lb = {t.concept: t for t in cfg.lb}
        self.ex = {d.drug: d for d in cfg.ex}
        self.rows: dict[str, list[Row]] = {name: [] for name in DATASETS}

    def unit(self, ucum: str | None) -> str | None:
        if ucum is None or ucum == "":
            return None
        return self.cfg.units.get(ucum, ucum)

    def _base(self, domain: str, subject: SubjectView) -> Row:
        studyid = self.cfg.study.studyid
        return {"STUDYID": studyid, "DOMAIN": domain, "USUBJID": f"{studyid}-{subject.key}"}

    def add(self, subject: SubjectView) -> None:
        self._dm(subject)
        extract = subject.extract
        if extract is not None:
            self._ex(subject, extract.exposures)
            self._ae(subject, extract.adverse_events)
            self._lb(subject, extract.observations)
            self._tu_tr(subject, extract.tumour)
        self._rs(subject)

    def _dm(self, subject: SubjectView) -> None:
        r, study = subject.result, self.cfg.study
        status = r.eligibility.status
        if r.treated or status is EligibilityStatus.ELIGIBLE:
            armcd, arm = study.armcd, study.arm
        elif status is EligibilityStatus.INELIGIBLE:
            armcd, arm = "SCRNFAIL", "Screen Failure"
        else:
            armcd, arm = "NOTASSGN", "Not Assigned"
        act = (study.armcd, study.arm) if r.treated else (armcd if armcd != study.armcd else "NOTTRT", None)
        death = iso(r.os.end_date) if r.os and r.os.event else None
        death = death or (subject.extract.deceased_date if subject.extract else None)
        self.rows["DM"].append(
            {
                **self._base("DM", subject),
                "SUBJID": subject.key,
                "RFSTDTC": iso(r.index_date),
                "RFENDTC": iso(r.last_dose_date),
                "RFXSTDTC": iso(r.index_date),
                "RFXENDTC": iso(r.last_dose_date),
                "DTHDTC": death,
                "DTHFL": "Y" if death else None,
                "BRTHDTC": subject.birth_date,
                "AGE": subject.age_at_reference,
                "AGEU": "YEARS" if subject.age_at_reference is not None else None,
                "SEX": SEX.get(str(subject.sex), "U"),
                "ARMCD": armcd,
                "ARM": arm,
                "ACTARMCD": act[0],
                "ACTARM": act[1] or {"NOTTRT": "Not Treated", "SCRNFAIL": "Screen Failure"}.get(act[0], "Not Assigned"),
            }
        )

    def _ex(self, subject: SubjectView, exposures: tuple[DrugExposure, ...]) -> None:
        seq = 0
        for e in exposures:
            drug = self.ex.get(e.drug or "")
            start = e.start
            # Only study treatment: the configured drug, from the index date on (earlier use is prior exposure).
            if drug is None or not subject.index_date or not start or start[:10] < subject.index_date:
                continue
            seq += 1
            self.rows["EX"].append(
                {
                    **self._base("EX", subject),
                    "EXSEQ": seq,
                    "EXSPID": subject.text(e.ref),
                    "EXTRT": drug.extrt,
                    "EXDOSE": drug.dose,
                    "EXDOSU": drug.dosu,
                    "EXDOSFRQ": drug.dosfrq,
                    "EXROUTE": drug.route,
                    "EXSTDTC": start,
                    "EXENDTC": e.end,
                    "EXSTDY": subject.study_day(start),
                    "EXENDY": subject.study_day(e.end),
                }
            )

    def _ae(self, subject: SubjectView, events: tuple[AdverseEventEntry, ...]) -> None:
        displays = {t.term: t.display for t in subject.result.toxicities}
        for seq, a in enumerate(events, start=1):
            decod = displays.get(a.term or "") or a.term
            meddra = a.meddra or ""
            self.rows["AE"].append(
                {
                    **self._base("AE", subject),
                    "AESEQ": seq,
                    "AESPID": subject.text(a.ref),
                    "AETERM": a.verbatim if subject.identified else decod,
                    "AELLTCD": int(meddra) if meddra.isdigit() else None,
                    "AEDECOD": decod,
                    "AETOXGR": str(a.grade) if a.grade is not None else None,
                    "AESTDTC": a.date,
                    "AESTDY": subject.study_day(a.date),
                }
            )

    def _lb(self, subject: SubjectView, observations: tuple[NumericObservation, ...]) -> None:
        seq = 0
        for o in observations:
            test = self.lb.get(o.concept)
            if test is None:
                continue
            seq += 1
            self.rows["LB"].append(
                {
                    **self._base("LB", subject),
                    "LBSEQ": seq,
                    "LBSPID": subject.text(o.ref),
                    "LBTESTCD": test.testcd,
                    "LBTEST": test.test,
                    "LBCAT": test.cat,
                    "LBORRES": _num_text(o.orig_value),
                    "LBORRESU": self.unit(o.orig_unit),
                    "LBSTRESC": _num_text(o.value),
                    "LBSTRESN": o.value,
                    "LBSTRESU": self.unit(o.unit),
                    "LBDTC": o.date,
                    "LBDY": subject.study_day(o.date),
                }
            )

    def _visit(self, subject: SubjectView, day: str | None) -> str:
        baseline = iso(subject.result.baseline.date) if subject.result.baseline else None
        if day is not None and day == baseline:
            return "BASELINE"
        for n, a in enumerate(subject.result.assessments, start=1):
            if iso(a.date) == day:
                return f"ASSESSMENT {n}"
        return "UNSCHEDULED"

    def _tu_tr(self, subject: SubjectView, measurements: tuple[TumourMeasurement, ...]) -> None:
        links: dict[str, str] = {}
        seq = 0  # TRSEQ, over the subject's measurements
        for m in measurements:
            lesion = m.lesion or ""
            if lesion not in links:
                links[lesion] = f"T{len(links) + 1:02d}"
                self.rows["TU"].append(
                    {
                        **self._base("TU", subject),
                        "TUSEQ": len(links),
                        "TULNKID": links[lesion],
                        "TUSPID": subject.lesion(lesion),
                        "TUTESTCD": "TUMIDENT",
                        "TUTEST": "Tumor Identification",
                        "TUORRES": "TARGET",
                        "TUSTRESC": "TARGET",
                        "TUDTC": m.date,
                        "TUDY": subject.study_day(m.date),
                    }
                )
            seq = self._tr(subject, m, links[lesion], seq)

    def _tr(self, subject: SubjectView, m: TumourMeasurement, link: str, seq: int) -> int:
        """A measurement's two diameters (the ones it has), numbered on from ``seq``; returns the last number."""
        tr = self.cfg.tr
        for code, value in ((tr.longest, m.d1), (tr.perpendicular, m.d2)):
            if value is None:
                continue
            seq += 1
            self.rows["TR"].append(
                {
                    **self._base("TR", subject),
                    "TRSEQ": seq,
                    "TRLNKID": link,
                    "TRTESTCD": code.testcd,
                    "TRTEST": code.test,
                    "TRORRES": _num_text(value),
                    "TRORRESU": tr.unit,
                    "TRSTRESC": _num_text(value),
                    "TRSTRESN": value,
                    "TRSTRESU": tr.unit,
                    "VISIT": self._visit(subject, m.date),
                    "TRDTC": m.date,
                    "TRDY": subject.study_day(m.date),
                }
            )
        return seq

    def _rs(self, subject: SubjectView) -> None:
        rs = self.cfg.rs
        result = subject.result
        seq = 0
        for n, a in enumerate(result.assessments, start=1):
            seq += 1
            self.rows["RS"].append(
                self._rs_row(subject, seq, rs.overall, a.response.value, f"ASSESSMENT {n}", iso(a.date))
            )
        best = result.best_response
        if result.treated and best:
            first = next((iso(a.date) for a in result.assessments if a.response == best), None)
            self.rows["RS"].append(self._rs_row(subject, seq + 1, rs.best, best.value, None, first))

    def _rs_row(
        self, subject: SubjectView, seq: int, code: TestCode, value: str | None, visit: str | None, day: str | None
    ) -> Row:
        return {
            **self._base("RS", subject),
            "RSSEQ": seq,
            "RSTESTCD": code.testcd,
            "RSTEST": code.test,
            "RSCAT": self.cfg.rs.cat,
            "RSORRES": value,
            "RSSTRESC": value,
            "RSEVAL": "fhiradapter",
            "VISIT": visit,
            "RSDTC": day,
            "RSDY": subject.study_day(day),
        }


def data_dictionary() -> list[Row]:
    """One row per dataset variable: what a reviewer needs to read the files."""
    return [
        {"dataset": name, "variable": var, "label": label, "type": typ, "order": n, "source": source}
        for name, spec in DATASETS.items()
        for n, (var, label, typ, source) in enumerate(spec, start=1)
    ]
