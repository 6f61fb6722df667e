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

from pydantic import BaseModel, ConfigDict, ValidationError

from fhiradapter.core.registry import SubjectView
from fhiradapter.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyCfg(_Strict):
    studyid: str
    arm: str
    armcd: str


class LbTest(_Strict):
    concept: str
    testcd: str
    test: str
    cat: str


class ExDrug(_Strict):
    drug: str
    extrt: str
    dose: float
    dosu: str
    dosfrq: str
    route: str


class TestCode(_Strict):
    testcd: str
    test: str


class TrCfg(_Strict):
    longest: TestCode
    perpendicular: TestCode
    unit: str


class RsCfg(_Strict):
    cat: str
    overall: TestCode
    best: TestCode


class ExportMappings(_Strict):
    study: StudyCfg
    lb: list[LbTest]
    units: dict[str, str]
    ex: list[ExDrug]
    tr: TrCfg
    rs: RsCfg


def parse_export_mappings(doc: Mapping[str, Any]) -> ExportMappings:
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


class SdtmBuilder:
    """Builds every dataset's rows subject by subject; ``rows`` maps dataset name to its rows."""

    def __init__(self, cfg: ExportMappings) -> None:
        self.cfg = cfg
        self.lb = {t.concept: t for t in cfg.lb}
        self.ex = {d.drug: d for d in cfg.ex}
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in DATASETS}

    def unit(self, ucum: str | None) -> str | None:
        if ucum is None or ucum == "":
            return None
        return self.cfg.units.get(ucum, ucum)

    def _base(self, domain: str, v: SubjectView) -> dict[str, Any]:
        studyid = self.cfg.study.studyid
        return {"STUDYID": studyid, "DOMAIN": domain, "USUBJID": f"{studyid}-{v.key}"}

    def add(self, v: SubjectView) -> None:
        self._dm(v)
        self._ex(v)
        self._ae(v)
        self._lb(v)
        self._tu_tr(v)
        self._rs(v)

    def _dm(self, v: SubjectView) -> None:
        r, study = v.result, self.cfg.study
        status = r.get("eligibility", {}).get("status")
        treated = bool(r.get("treated"))
        if treated or status == "eligible":
            armcd, arm = study.armcd, study.arm
        elif status == "ineligible":
            armcd, arm = "SCRNFAIL", "Screen Failure"
        else:
            armcd, arm = "NOTASSGN", "Not Assigned"
        act = (study.armcd, study.arm) if treated else (armcd if armcd != study.armcd else "NOTTRT", None)
        death = (r.get("os") or {}).get("end_date") if (r.get("os") or {}).get("event") else None
        death = death or v.extract.get("deceased_date")
        self.rows["DM"].append(
            {
                **self._base("DM", v),
                "SUBJID": v.key,
                "RFSTDTC": r.get("index_date"),
                "RFENDTC": r.get("last_dose_date"),
                "RFXSTDTC": r.get("index_date"),
                "RFXENDTC": r.get("last_dose_date"),
                "DTHDTC": death,
                "DTHFL": "Y" if death else None,
                "BRTHDTC": v.birth_date,
                "AGE": v.age_at_reference,
                "AGEU": "YEARS" if v.age_at_reference is not None else None,
                "SEX": SEX.get(str(v.extract.get("sex") or r.get("characteristics", {}).get("sex")), "U"),
                "ARMCD": armcd,
                "ARM": arm,
                "ACTARMCD": act[0],
                "ACTARM": act[1] or {"NOTTRT": "Not Treated", "SCRNFAIL": "Screen Failure"}.get(act[0], "Not Assigned"),
            }
        )

    def _ex(self, v: SubjectView) -> None:
        seq = 0
        for e in v.extract.get("exposures", ()):
            drug = self.ex.get(e.get("drug") or "")
            start = e.get("start")
            # Only study treatment: the configured drug, from the index date on (earlier use is prior exposure).
            if drug is None or not v.index_date or not start or start[:10] < v.index_date:
                continue
            seq += 1
            self.rows["EX"].append(
                {
                    **self._base("EX", v),
                    "EXSEQ": seq,
                    "EXSPID": v.text(e.get("ref")),
                    "EXTRT": drug.extrt,
                    "EXDOSE": drug.dose,
                    "EXDOSU": drug.dosu,
                    "EXDOSFRQ": drug.dosfrq,
                    "EXROUTE": drug.route,
                    "EXSTDTC": start,
                    "EXENDTC": e.get("end"),
                    "EXSTDY": v.study_day(start),
                    "EXENDY": v.study_day(e.get("end")),
                }
            )

    def _ae(self, v: SubjectView) -> None:
        displays = {t["term"]: t.get("display") for t in v.result.get("toxicities") or ()}
        for seq, a in enumerate(v.extract.get("adverse_events", ()), start=1):
            decod = displays.get(a.get("term")) or a.get("term")
            self.rows["AE"].append(
                {
                    **self._base("AE", v),
                    "AESEQ": seq,
                    "AESPID": v.text(a.get("ref")),
                    "AETERM": a.get("verbatim") if v.identified else decod,
                    "AELLTCD": int(a["meddra"]) if str(a.get("meddra") or "").isdigit() else None,
                    "AEDECOD": decod,
                    "AETOXGR": str(a["grade"]) if a.get("grade") is not None else None,
                    "AESTDTC": a.get("date"),
                    "AESTDY": v.study_day(a.get("date")),
                }
            )

    def _lb(self, v: SubjectView) -> None:
        seq = 0
        for o in v.extract.get("observations", ()):
            test = self.lb.get(o.get("concept"))
            if test is None:
                continue
            seq += 1
            self.rows["LB"].append(
                {
                    **self._base("LB", v),
                    "LBSEQ": seq,
                    "LBSPID": v.text(o.get("ref")),
                    "LBTESTCD": test.testcd,
                    "LBTEST": test.test,
                    "LBCAT": test.cat,
                    "LBORRES": _num_text(o.get("orig_value")),
                    "LBORRESU": self.unit(o.get("orig_unit")),
                    "LBSTRESC": _num_text(o.get("value")),
                    "LBSTRESN": o.get("value"),
                    "LBSTRESU": self.unit(o.get("unit")),
                    "LBDTC": o.get("date"),
                    "LBDY": v.study_day(o.get("date")),
                }
            )

    def _visit(self, v: SubjectView, day: str | None) -> str:
        baseline = (v.result.get("baseline") or {}).get("date")
        if day is not None and day == baseline:
            return "BASELINE"
        for n, a in enumerate(v.result.get("assessments") or (), start=1):
            if a.get("date") == day:
                return f"ASSESSMENT {n}"
        return "UNSCHEDULED"

    def _tu_tr(self, v: SubjectView) -> None:
        links: dict[str, str] = {}
        tr = self.cfg.tr
        seq = 0
        for m in v.extract.get("tumour", ()):
            lesion = m.get("lesion") or ""
            if lesion not in links:
                links[lesion] = f"T{len(links) + 1:02d}"
                self.rows["TU"].append(
                    {
                        **self._base("TU", v),
                        "TUSEQ": len(links),
                        "TULNKID": links[lesion],
                        "TUSPID": v.lesion(lesion),
                        "TUTESTCD": "TUMIDENT",
                        "TUTEST": "Tumor Identification",
                        "TUORRES": "TARGET",
                        "TUSTRESC": "TARGET",
                        "TUDTC": m.get("date"),
                        "TUDY": v.study_day(m.get("date")),
                    }
                )
            for code, value in ((tr.longest, m.get("d1")), (tr.perpendicular, m.get("d2"))):
                if value is None:
                    continue
                seq += 1
                self.rows["TR"].append(
                    {
                        **self._base("TR", v),
                        "TRSEQ": seq,
                        "TRLNKID": links[lesion],
                        "TRTESTCD": code.testcd,
                        "TRTEST": code.test,
                        "TRORRES": _num_text(value),
                        "TRORRESU": tr.unit,
                        "TRSTRESC": _num_text(value),
                        "TRSTRESN": value,
                        "TRSTRESU": tr.unit,
                        "VISIT": self._visit(v, m.get("date")),
                        "TRDTC": m.get("date"),
                        "TRDY": v.study_day(m.get("date")),
                    }
                )

    def _rs(self, v: SubjectView) -> None:
        rs = self.cfg.rs
        r = v.result
        seq = 0
        for n, a in enumerate(r.get("assessments") or (), start=1):
            seq += 1
            self.rows["RS"].append(
                self._rs_row(v, seq, rs.overall, a.get("response"), f"ASSESSMENT {n}", a.get("date"))
            )
        if r.get("treated") and r.get("best_response"):
            best = r["best_response"]
            first = next((a.get("date") for a in r.get("assessments") or () if a.get("response") == best), None)
            self.rows["RS"].append(self._rs_row(v, seq + 1, rs.best, best, None, first))

    def _rs_row(
        self, v: SubjectView, seq: int, code: TestCode, value: str | None, visit: str | None, day: str | None
    ) -> dict[str, Any]:
        return {
            **self._base("RS", v),
            "RSSEQ": seq,
            "RSTESTCD": code.testcd,
            "RSTEST": code.test,
            "RSCAT": self.cfg.rs.cat,
            "RSORRES": value,
            "RSSTRESC": value,
            "RSEVAL": "fhiradapter",
            "VISIT": visit,
            "RSDTC": day,
            "RSDY": v.study_day(day),
        }


def data_dictionary() -> list[dict[str, Any]]:
    """One row per dataset variable: what a reviewer needs to read the files."""
    return [
        {"dataset": name, "variable": var, "label": label, "type": typ, "order": n, "source": source}
        for name, spec in DATASETS.items()
        for n, (var, label, typ, source) in enumerate(spec, start=1)
    ]
