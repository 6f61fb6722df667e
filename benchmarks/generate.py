"""Synthetic cohort generator for the benchmarks: seeded, any size, about 60 FHIR R4 resources per patient.

Writes one NDJSON file per resource type, as a Bulk Data export does. Each patient has a ResearchSubject,
a Consent, HCC and metastasis Conditions (plus an unrelated one), doxorubicin, thalidomide and an
unrelated drug, screening labs (ANC, platelets, creatinine, bilirubin, albumin, INR, ascites,
encephalopathy, ECOG), two lesions measured five times, six AFP values, monthly blood counts and
creatinine, and four graded AdverseEvents. Values drift per patient so every rule has work to do.

    python benchmarks/generate.py --patients 1000 --out benchmarks/.data/p1000 --seed 7
"""

from __future__ import annotations

import argparse
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
RXNORM, MEDDRA = "http://www.nlm.nih.gov/research/umls/rxnorm", "http://terminology.hl7.org/CodeSystem/mdr"
UCUM = "http://unitsofmeasure.org"
AE_GRADE = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"
GRADES = ["C41338", "C41339", "C41340", "C41337"]
AE_TERMS = [
    ("10010774", "Constipation"),
    ("10041349", "Somnolence"),
    ("10016256", "Fatigue"),
    ("10013573", "Dizziness"),
    ("10034620", "Peripheral sensory neuropathy"),
    ("10028813", "Nausea"),
]
LABS = {  # key: (loinc, display, unit, low, high, typical value)
    "anc": ("751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*9/L", 2.0, 7.5, 3.2),
    "plt": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L", 150, 400, 120),
    "cre": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, 0.9),
    "bili": ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.2, 1.2, 1.6),
    "alb": ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.2, 3.4),
    "inr": ("6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", 0.8, 1.2, 1.3),
    "afp": ("1834-1", "Alpha-1-Fetoprotein [Mass/volume] in Serum or Plasma", "ng/mL", None, 10, 2000),
}


def cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


class Gen:
    def __init__(self, seed: int, out: Path) -> None:
        self.rng = random.Random(seed)
        out.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Any] = {}
        self.out = out
        self.count = 0

    def emit(self, res: dict[str, Any]) -> None:
        rtype = res["resourceType"]
        fh = self.files.get(rtype)
        if fh is None:
            fh = self.files[rtype] = (self.out / f"{rtype}.ndjson").open("wb")
        res.setdefault(
            "meta", {"versionId": "1", "lastUpdated": "2005-04-01T10:00:00+09:00", "source": "urn:bench:ehr"}
        )
        fh.write(orjson.dumps(res) + b"\n")
        self.count += 1

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def obs(self, pid: str, rid: str, code: tuple[str, str, str], day: date, **value: Any) -> None:
        self.emit(
            {
                "resourceType": "Observation",
                "id": rid,
                "status": "final",
                "category": [
                    cc("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")
                ],
                "code": cc(*code),
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{rid}-enc"},
                "effectiveDateTime": f"{day.isoformat()}T08:30:00+09:00",
                "issued": f"{day.isoformat()}T14:05:00+09:00",
                **value,
            }
        )

    def lab(self, pid: str, key: str, tag: str, day: date, factor: float) -> None:
        code, display, unit, low, high, typical = LABS[key]
        value = round(typical * factor * self.rng.uniform(0.85, 1.15), 2)
        rng: dict[str, Any] = {"high": {"value": high, "unit": unit, "system": UCUM, "code": unit}}
        if low is not None:
            rng["low"] = {"value": low, "unit": unit, "system": UCUM, "code": unit}
        flag = "H" if value > high else "L" if low is not None and value < low else "N"
        self.obs(
            pid,
            f"{pid}-{key}-{tag}",
            (LOINC, code, display),
            day,
            valueQuantity={"value": value, "unit": unit, "system": UCUM, "code": unit},
            referenceRange=[rng],
            interpretation=[cc("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", flag, flag)],
        )

    def patient(self, n: int) -> None:
        rng = self.rng
        pid = f"bench-{n:06d}"
        screening = date(2003, 1, 6) + timedelta(days=rng.randrange(0, 600))
        index = screening + timedelta(days=7)
        days = rng.randrange(5, 420)
        last = index + timedelta(days=days - 1)
        dead = rng.random() < 0.6
        self.emit(
            {
                "resourceType": "Patient",
                "id": pid,
                "gender": rng.choice(["male", "female"]),
                "birthDate": (screening - timedelta(days=rng.randrange(30 * 365, 74 * 365))).isoformat(),
                "identifier": [{"system": "urn:bench:mrn", "value": f"MRN{n:08d}"}],
                "name": [{"family": "Synthetic", "given": [f"Patient{n}"]}],
                **({"deceasedDateTime": (last + timedelta(days=rng.randrange(10, 200))).isoformat()} if dead else {}),
            }
        )
        self.emit(
            {
                "resourceType": "ResearchSubject",
                "id": f"{pid}-rs",
                "status": "on-study",
                "study": {"reference": "ResearchStudy/thal-hcc-pilot"},
                "individual": {"reference": f"Patient/{pid}"},
                "period": {"start": screening.isoformat()},
                "consent": {"reference": f"Consent/{pid}-consent"},
            }
        )
        self.emit(
            {
                "resourceType": "Consent",
                "id": f"{pid}-consent",
                "status": "active",
                "scope": cc("http://terminology.hl7.org/CodeSystem/consentscope", "research", "Research"),
                "category": [cc(LOINC, "59284-0", "Patient Consent")],
                "patient": {"reference": f"Patient/{pid}"},
                # R4 ppc-1: a Consent names its policy (here the ethics-approved study protocol).
                "policyRule": cc("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN", "opt-in"),
                "dateTime": screening.isoformat(),
            }
        )
        for cid, code in (
            ("hcc", (SNOMED, "109841003", "Liver cell carcinoma")),
            ("met", (SNOMED, "94391008", "Secondary malignant neoplasm of lung")),
            ("htn", (SNOMED, "38341003", "Hypertensive disorder")),
        ):
            self.emit(
                {
                    "resourceType": "Condition",
                    "id": f"{pid}-{cid}",
                    "subject": {"reference": f"Patient/{pid}"},
                    "code": cc(*code),
                    "onsetDateTime": (screening - timedelta(days=300)).isoformat(),
                    "clinicalStatus": cc(
                        "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
                    ),
                    "verificationStatus": cc(
                        "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
                    ),
                }
            )
        for mid, code, start, end in (
            ("dox", (RXNORM, "3639", "doxorubicin"), screening - timedelta(days=200), screening - timedelta(days=90)),
            ("thal", (RXNORM, "10432", "thalidomide"), index, last),
            ("lam", (RXNORM, "68244", "lamivudine"), screening - timedelta(days=700), last),
        ):
            self.emit(
                {
                    "resourceType": "MedicationStatement",
                    "id": f"{pid}-{mid}",
                    "status": "completed",
                    "medicationCodeableConcept": cc(*code),
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectivePeriod": {"start": start.isoformat(), "end": end.isoformat()},
                    "dosage": [{"text": "once daily", "route": cc(SNOMED, "26643006", "Oral route")}],
                }
            )
        self.obs(
            pid,
            f"{pid}-prog",
            (LOINC, "97509-4", "Cancer disease progression"),
            screening - timedelta(days=20),
            valueCodeableConcept=cc(SNOMED, "271299001", "Patient's condition worsened"),
        )
        scr = screening - timedelta(days=2)
        for key in ("anc", "plt", "cre", "bili", "alb", "inr"):
            self.lab(pid, key, "scr", scr, 1.0)
        self.obs(
            pid,
            f"{pid}-asc",
            (SNOMED, "389026000", "Ascites"),
            scr,
            valueCodeableConcept=cc(SNOMED, rng.choice(["260413007", "255604002"]), "grade"),
        )
        self.obs(pid, f"{pid}-enc", (SNOMED, "13920009", "Hepatic encephalopathy"), scr, valueInteger=0)
        self.obs(
            pid,
            f"{pid}-ecog",
            (LOINC, "89247-1", "ECOG Performance Status score"),
            scr,
            valueInteger=rng.choice([0, 1, 1, 2]),
        )
        trend = rng.uniform(0.6, 1.5)
        for lid in ("L1", "L2"):
            self.emit(
                {
                    "resourceType": "BodyStructure",
                    "id": f"{pid}-{lid}",
                    "patient": {"reference": f"Patient/{pid}"},
                    "description": f"target lesion {lid}",
                }
            )
        for k in range(5):
            day = index - timedelta(days=3) + timedelta(days=56 * k)
            growth = trend ** (k / 2)
            for lid in ("L1", "L2"):
                d1 = round(rng.uniform(15, 40) * growth, 1)
                self.obs(
                    pid,
                    f"{pid}-ts{k}-{lid}",
                    (LOINC, "21889-1", "Size Tumor"),
                    day,
                    focus=[{"reference": f"BodyStructure/{pid}-{lid}"}],
                    component=[
                        {
                            "code": cc(LOINC, "33728-7", "Size.maximum dimension in Tumor"),
                            "valueQuantity": {"value": d1, "unit": "mm", "system": UCUM, "code": "mm"},
                        },
                        {
                            "code": cc(LOINC, "33729-5", "Size additional dimension in Tumor"),
                            "valueQuantity": {"value": round(d1 * 0.7, 1), "unit": "mm", "system": UCUM, "code": "mm"},
                        },
                    ],
                )
        for k in range(6):
            self.lab(pid, "afp", f"a{k}", index - timedelta(days=3) + timedelta(days=45 * k), trend ** (k / 2))
        for k in range(6):
            day = index + timedelta(days=28 * (k + 1))
            for key in ("anc", "plt", "cre"):
                self.lab(pid, key, f"m{k}", day, rng.uniform(0.4, 1.4))
        for k in range(4):
            ae_code, ae_display = AE_TERMS[rng.randrange(len(AE_TERMS))]
            self.emit(
                {
                    "resourceType": "AdverseEvent",
                    "id": f"{pid}-ae{k}",
                    "actuality": "actual",
                    "event": cc(MEDDRA, ae_code, ae_display),
                    "subject": {"reference": f"Patient/{pid}"},
                    "date": (index + timedelta(days=rng.randrange(0, days))).isoformat(),
                    "seriousness": cc(
                        "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness", "non-serious", "Non-serious"
                    ),
                    "extension": [
                        {
                            "url": AE_GRADE,
                            "valueCodeableConcept": cc(
                                "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
                                GRADES[min(int(rng.expovariate(1.2)), 3)],
                                "grade",
                            ),
                        }
                    ],
                    "suspectEntity": [{"instance": {"reference": f"MedicationStatement/{pid}-thal"}}],
                }
            )


def generate(patients: int, out: Path, seed: int = 7) -> int:
    """Write the cohort; returns the number of resources written."""
    gen = Gen(seed, out)
    gen.emit({"resourceType": "ResearchStudy", "id": "thal-hcc-pilot", "status": "completed"})
    for n in range(patients):
        gen.patient(n)
    gen.close()
    return gen.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    count = generate(args.patients, args.out, args.seed)
    print(f"wrote {count} resources for {args.patients} patients to {args.out}")


if __name__ == "__main__":
    main()
