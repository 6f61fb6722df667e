"""Apply the whole protocol to one patient, and summarise the cohort (docs/protocol.md §1-§7).

``evaluate_patient`` returns an :class:`Evaluation`: the patient's entry of ``results.json``, the records it
set aside (dated after the as-of date, or another study's ResearchSubjects) and a small :class:`CohortRow`
that is all the cohort statistics need, so the pipeline can drop each patient's records as soon as the
patient is done. A patient outside the study population (docs/protocol.md §1) is not evaluated: the Evaluation
says why (``skipped``), and the pipeline reports the patient's records with that reason.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from fhiradapter.core import dates
from fhiradapter.core.child_pugh import score_child_pugh
from fhiradapter.core.dates import PartialDate
from fhiradapter.core.eligibility import assess_eligibility, by_concept, explain, latest
from fhiradapter.core.limits import LAB_WINDOW_DAYS
from fhiradapter.core.model import Exposure, Issue, PatientRecord, SupportingResource
from fhiradapter.core.protocol import Mappings, StudyKey
from fhiradapter.core.response import ResponseResult, assess_response
from fhiradapter.core.results import (
    AgeRange,
    Baseline,
    Characteristics,
    ChildPughScore,
    CohortSummary,
    Conversion,
    CriterionStatus,
    DoseAction,
    DoseActionKind,
    Eligibility,
    EligibilityStatus,
    Measurement,
    Note,
    PatientResult,
    Population,
    Response,
    ScreeningCounts,
    StopReason,
    SubjectStatus,
    Survival,
    Toxicity,
    to_builtins,
)
from fhiradapter.core.stats import kaplan_meier, rate
from fhiradapter.core.toxicity import LAB_TERMS, dose_actions, toxicities, toxicity_table

ONGOING_MED_STATUS = frozenset({"active", "in-progress", "on-hold"})  # still on drug (on-hold: interrupted)
CP_LABS = ("bilirubin", "albumin", "inr", "pt", "pt_control")  # Child-Pugh inputs held to the lab window


@dataclass(frozen=True, slots=True)
class EvaluationSettings:
    as_of: date
    mappings: Mappings
    study_key: StudyKey | None = None  # the study (id and/or identifiers); None: the one the mappings name
    screen_candidates: bool = False  # evaluate patients without a ResearchSubject of the study (§1)
    local_bases: tuple[str, ...] = ()  # FHIR base URLs whose absolute references are this data's own

    @property
    def study_of_run(self) -> StudyKey:
        """The study whose subjects are evaluated (docs/protocol.md §1)."""
        return self.study_key or self.mappings.study

    @property
    def study(self) -> str:
        """The study as results and messages name it."""
        return self.study_of_run.label

    def with_study_from_data(self, supporting: Iterable[object]) -> EvaluationSettings:
        """The study widened by its own ResearchStudy in the input: its id and identifiers also name it.

        docs/protocol.md §1: a logical reference names the study through an identifier given in the mappings or
        carried by the study's ResearchStudy in the data.
        """
        key = self.study_of_run
        for item in supporting:
            if isinstance(item, SupportingResource) and item.ref.startswith("ResearchStudy/"):
                key = key.with_resource(item.ref.removeprefix("ResearchStudy/"), item.identifiers)
        return self if key == self.study_of_run else replace(self, study_key=key)


class CohortRow(NamedTuple):
    patient: str
    treated: bool
    eligibility: EligibilityStatus
    failed: tuple[str, ...]
    best_response: Response | None
    os_days: int | None
    os_event: bool | None
    treatment_days: int | None
    toxicities: tuple[Toxicity, ...]


class SetAside(NamedTuple):
    ref: str
    code: str
    message: str


class Evaluation(NamedTuple):
    """One patient's evaluation. ``result`` is None when the patient was not evaluated; ``skipped`` then says
    why (``not-in-study``, ``not-screened``), for every record of the patient not already in ``unused``."""

    result: PatientResult | None
    unused: list[SetAside]
    row: CohortRow | None
    skipped: tuple[str, str] | None = None  # (code, reason)


def _study_of(subject: Any) -> str:
    """Which study a ResearchSubject is of, in words (its reference may be to a server not declared)."""
    if subject.study:
        return f"a ResearchSubject of {subject.study}"
    if subject.study_identifier:
        system, value = subject.study_identifier
        return f"a ResearchSubject of the study with identifier {system}|{value}"
    if (subject.raw or {}).get("study"):
        return "a ResearchSubject whose study is on another server (not declared with --fhir-base) or malformed"
    return "a ResearchSubject without a study"


def _note(i: Issue) -> Note:
    return Note(i.ref, i.path, i.code, i.message)


def cut_off(rec: PatientRecord, as_of: date) -> tuple[PatientRecord, list[SetAside]]:
    """Set aside everything dated after the as-of date (docs/protocol.md §1: nothing after it is read)."""
    unused: list[SetAside] = []

    def keep(items: list[Any], day: Callable[[Any], PartialDate | date | None]) -> list[Any]:
        late = [item for item in items if dates.after(day(item), as_of)]
        if not late:
            return items  # the common case: nothing after the cut-off
        unused.extend(SetAside(i.ref, "after-as-of", f"dated after the as-of date {as_of}") for i in late)
        late_ids = {id(item) for item in late}
        return [item for item in items if id(item) not in late_ids]

    meds = keep(rec.meds, lambda m: m.start)  # an end after the cut-off is kept: _exposure_end reads it
    person = rec.person
    if person is not None and dates.after(person.deceased_date, as_of):
        person = person._replace(deceased_date=None, deceased_flag=False)
    new = replace(
        rec,
        person=person,
        meds=meds,
        observations=keep(rec.observations, attrgetter("date")),
        adverse_events=keep(rec.adverse_events, attrgetter("date")),
        conditions=keep(rec.conditions, lambda c: c.onset or c.recorded),
        consents=keep(rec.consents, attrgetter("date")),
        subjects=keep(rec.subjects, attrgetter("start")),
    )
    return new, unused


def last_record_date(rec: PatientRecord, as_of: date) -> date | None:
    """The latest full date of any record on or before ``as_of``: the censoring date of a living patient
    (docs/protocol.md §6). An exposure's end after the as-of date is no record date (it has not happened yet)."""
    partial: list[PartialDate | None] = []
    for m in rec.meds:
        partial += [m.start, m.end]
    partial += [c.onset for c in rec.conditions] + [c.recorded for c in rec.conditions]
    partial += [c.date for c in rec.consents]
    for s in rec.subjects:
        partial += [s.start, s.end]
    full = [o.date for o in rec.observations] + [a.date for a in rec.adverse_events]
    full += [d for d in map(dates.full_day, partial) if d is not None]
    return max((d for d in full if d <= as_of), default=None)


def _exposure_end(m: Exposure, as_of: date) -> tuple[date | None, bool]:
    """(last dose date, still on drug at the as-of date) of one exposure.

    An exposure whose end lies after the as-of date was still going on at that date, whatever its status says
    now (a status is written later, and nothing after the as-of date is read): the treatment counts to the
    as-of date and the patient is on drug. Without an end, the status tells (active, in-progress, on-hold).
    """
    end = dates.full_day(m.end)
    if end is not None and end > as_of:
        return as_of, True
    if m.status in ONGOING_MED_STATUS and (end is None or end == as_of):
        return as_of, True
    return (end or dates.full_day(m.start)), False


def evaluate_patient(raw: PatientRecord, settings: EvaluationSettings, issues: Iterable[Issue] = ()) -> Evaluation:
    as_of, m = settings.as_of, settings.mappings
    rec, unused = cut_off(raw, as_of)
    notes: list[Note] = [_note(i) for i in issues]

    def note(ref: str | None, code: str, message: str) -> None:
        notes.append(Note(ref, "", code, message))

    # The study population (docs/protocol.md §1): a patient is a study subject through a ResearchSubject of the
    # study. Another study's ResearchSubjects are never read as this study's (and never written).
    the_study, study_ref = settings.study_of_run, settings.study
    ours = [x for x in rec.subjects if the_study.names(x.study, x.study_identifier)]
    if len(ours) < len(rec.subjects):
        unused.extend(
            SetAside(x.ref, "other-study", f"{_study_of(x)}, not of {study_ref}: not used")
            for x in rec.subjects
            if x not in ours
        )
        rec = replace(rec, subjects=ours)
    candidate = not ours
    if candidate and not settings.screen_candidates:
        why = f"{rec.patient} has no ResearchSubject of {study_ref} on or before the as-of date: not in the study"
        return Evaluation(None, unused, None, ("not-in-study", why))
    death = dates.full_day(rec.person.deceased_date) if rec.person else None
    if candidate and death is not None and death <= as_of:
        why = f"{rec.patient}, a screening candidate, died on or before the screening date {as_of}: not screened"
        return Evaluation(None, unused, None, ("not-screened", why))
    subject = ours[0] if ours else None
    if len(ours) > 1:
        note(
            subject.ref if subject else None,
            "several-subjects",
            f"{len(ours)} ResearchSubjects for this study; the first ({subject.ref if subject else ''}) is used",
        )
    thal = sorted((x for x in rec.meds if x.drug == "thalidomide"), key=lambda x: x.start or PartialDate(0))
    screening = dates.full_day(subject.start) if subject else None
    screening_source = "ResearchSubject.period.start"
    if candidate:  # screened at the as-of date (docs/protocol.md §1)
        screening, screening_source = as_of, "as-of date (screening candidate)"
    if screening is None and thal:
        screening, screening_source = dates.full_day(thal[0].start), "first thalidomide exposure"
    if screening is None:
        screening, screening_source = as_of, "as-of date"
    study = [x for x in thal if (d := dates.full_day(x.start)) is not None and d >= screening]
    for x in thal:
        if x.start is not None and x.start.full is None:
            note(x.ref, "partial-date", "the thalidomide start has no day: not counted as study drug")
    index = min((d for x in study if (d := dates.full_day(x.start)) is not None), default=None)
    treated = index is not None
    last_dose: date | None = None
    on_drug = False
    for x in study:
        end, ongoing = _exposure_end(x, as_of)
        on_drug = on_drug or ongoing
        if end is not None and (last_dose is None or end > last_dose):
            last_dose = end
    treatment_days = dates.inclusive_days(index, last_dose) if index and last_dose else None

    # Child-Pugh and eligibility at the screening date (§2, §3).
    obs = rec.observations
    by_obs = by_concept(obs)
    # Labs: the latest within the 28-day window (§2); ascites and encephalopathy are no labs: the latest on
    # or before screening, however old, as for ECOG.
    cp_obs = {
        c: latest(by_obs.get(c, ()), c, screening, window_days=LAB_WINDOW_DAYS if c in CP_LABS else None)
        for c in (*CP_LABS, "ascites", "encephalopathy")
    }
    pt_prolongation = None
    if (
        cp_obs["pt"]
        and cp_obs["pt_control"]
        and cp_obs["pt"].value is not None
        and cp_obs["pt_control"].value is not None
    ):
        pt_prolongation = cp_obs["pt"].value - cp_obs["pt_control"].value
    enc = cp_obs["encephalopathy"]
    cp = score_child_pugh(
        bilirubin=cp_obs["bilirubin"].value if cp_obs["bilirubin"] else None,
        albumin=cp_obs["albumin"].value if cp_obs["albumin"] else None,
        inr=cp_obs["inr"].value if cp_obs["inr"] else None,
        pt_prolongation=pt_prolongation,
        ascites=cp_obs["ascites"].coded if cp_obs["ascites"] else None,
        encephalopathy=int(enc.value) if enc and enc.value is not None else None,
        albumin_lower=m.protocol.child_pugh.albumin_lower_g_dl,
    )
    used = {"inr"} if not cp.used_pt else {"pt", "pt_control"}
    cp_evidence = sorted(
        o.ref for k, o in cp_obs.items() if o is not None and (k not in ("inr", "pt", "pt_control") or k in used)
    )
    eligibility = msgspec.structs.replace(
        assess_eligibility(rec, screening, index or screening, cp, cp_evidence, by_obs),
        screening_date_source=screening_source,
    )
    child_pugh = ChildPughScore(cp.score, cp.cls, cp.points, cp.missing, cp.used_pt, tuple(cp_evidence))
    conversions = tuple(Conversion(r, c) for r, c in sorted({(o.ref, o.conversion) for o in obs if o.conversion}))

    # Death and survival (§6).
    person = rec.person
    if person is not None and person.deceased_flag and death is None:
        note(person.ref, "deceased-no-date", "deceasedBoolean is true but no date: censored, not counted")
    if person is None:
        note(None, "no-patient", "no Patient resource for this subject")
    response: ResponseResult | None = None
    tox_rows: list[Toxicity] = []
    actions: list[DoseAction] = []
    survival: Survival | None = None
    stop: StopReason | UnsetType | None = UNSET  # written for treated patients only
    if index is not None and last_dose is not None:
        response = assess_response(
            by_obs.get("tumor_size", []),
            by_obs.get("afp", []),
            index,
            afp_window_days=m.protocol.response.afp_window_days,
            sd_min_days=m.protocol.response.sd_min_days,
        )
        for text in response.issues:
            note(None, "response", text)
        tox_rows, events, tox_issues = toxicities(
            rec.adverse_events,
            [o for c in LAB_TERMS for o in by_obs.get(c, ())],
            index,
            last_dose,
            after_days=m.protocol.toxicity.window_after_last_dose_days,
            mappings=m,
        )
        for text in tox_issues:
            note(text.split(":", 1)[0], "lab-grade", text)
        actions = dose_actions(events, m.protocol.toxicity.dose_rule)
        if death is not None and death < index:
            # docs/protocol.md §1: the data contradict each other; OS is not computed, and both records are named.
            first = next(x.ref for x in study if dates.full_day(x.start) == index)
            note(
                person.ref if person else None,
                "death-before-index",
                f"the death date ({person.ref if person else 'Patient'}.deceasedDateTime) is before the index "
                f"date, the first dose of study thalidomide ({first}): overall survival not computed; check both "
                "records",
            )
        end = death if death is not None else last_record_date(rec, as_of)
        if end is not None and end >= index:
            basis = "Patient.deceasedDateTime" if death else "last dated record (censored)"
            survival = Survival(dates.inclusive_days(index, end), death is not None, end, basis)
        first_pd = next((a.date for a in response.assessments if a.response == Response.PD), None)
        stop = None if on_drug else _stop_reason(study, first_pd, last_dose, death, actions)
    baseline = response.baseline if response else None
    characteristics = _characteristics(rec, eligibility, cp.cls, baseline)
    status, period_end = subject_status(eligibility.status, treated, on_drug, death)
    period_start = dates.full_day(subject.start) if subject and subject.start else screening
    if period_end is not None and death is not None and period_start is not None and death < period_start:
        # docs/protocol.md §7: period.end is never before period.start; such data is reported, not written.
        note(
            person.ref if person else None,
            "death-before-period-start",
            "the death date is before the ResearchSubject's period start: period.end not set",
        )
        period_end = None
    result = PatientResult(
        patient=rec.patient,
        population=Population.CANDIDATE if candidate else Population.SUBJECT,
        research_subject=subject.ref if subject else None,
        eligibility=eligibility,
        child_pugh=child_pugh,
        treated=treated,
        index_date=index,
        last_dose_date=last_dose,
        treatment_days=treatment_days,
        on_treatment_at_as_of=on_drug,
        assessments=tuple(a.as_result() for a in response.assessments) if response else (),
        baseline=baseline,
        best_response=response.best if response else None,
        best_response_reason=response.best_reason if response else None,
        duration_of_response=response.duration if response else None,
        os=survival,
        toxicities=tuple(tox_rows),
        dose_actions=tuple(actions),
        conversions=conversions,
        characteristics=characteristics,
        research_subject_status=status,
        research_subject_period_end=period_end,
        issues=tuple(notes),
        off_treatment_reason=stop,
    )
    row = CohortRow(
        rec.patient,
        treated,
        eligibility.status,
        eligibility.failed(),
        result.best_response,
        survival.days if survival else None,
        survival.event if survival else None,
        treatment_days,
        result.toxicities,
    )
    return Evaluation(result, unused, row)


def report_row(result: PatientResult) -> dict[str, Any]:
    """The compact per-patient summary a report needs, so that no report has to re-read results.json."""
    index = result.index_date
    return {
        "patient": result.patient,
        "treated": result.treated,
        "characteristics": to_builtins(result.characteristics),
        "treatment_days": result.treatment_days,
        "best_response": result.best_response,
        "status": result.research_subject_status,
        "off_treatment_reason": result.off_treatment_reason or None,
        "os": to_builtins(result.os),
        "eligibility": result.eligibility.status,
        # Each criterion not met or unknown, as a reader needs it: the value found and the limit (§2).
        "failed": [explain(c) for c in result.eligibility.criteria if c.status is CriterionStatus.NOT_MET],
        "unknown": [explain(c) for c in result.eligibility.criteria if c.status is CriterionStatus.UNKNOWN],
        "assessments": [
            {"day": dates.inclusive_days(index, a.date), "response": a.response} for a in result.assessments if index
        ],
        "on_treatment": result.on_treatment_at_as_of,
        "issues": [i.code for i in result.issues],
    }


def _characteristics(
    rec: PatientRecord, eligibility: Eligibility, cp_class: str | None, baseline: Baseline | None
) -> Characteristics:
    """Table 1 of a report: who the patient was at screening (values the rules already used)."""
    ecog = eligibility.criterion("ecog").value
    age = eligibility.criterion("age").value
    screening = eligibility.screening_date
    return Characteristics(
        age=age if isinstance(age, int | AgeRange) else None,
        sex=rec.person.gender if rec.person else None,
        ecog=ecog.value if isinstance(ecog, Measurement) else None,
        child_pugh_class=cp_class,
        prior_anthracycline=tuple(sorted({m.drug_code or "" for m in rec.meds if m.drug == "anthracycline"} - {""})),
        metastatic_sites=tuple(
            sorted(
                {
                    c.text or c.concept
                    for c in rec.conditions
                    if c.concept == "metastasis" and (c.onset is None or dates.on_or_before(c.onset, screening))
                }
            )
        ),
        baseline_afp=baseline.afp if baseline else None,
    )


def _stop_reason(
    study: list[Exposure],
    first_pd: date | None,
    last_dose: date | None,
    death: date | None,
    actions: list[DoseAction],
) -> StopReason:
    """Off-treatment reason (§7): the recorded statusReason, else inferred from PD, toxicity, death."""
    recorded = [x.stop_reason for x in study if x.stop_reason]
    if recorded:
        return StopReason(recorded[-1])
    if last_dose is None:
        return StopReason.OTHER
    if first_pd is not None and first_pd <= last_dose:
        return StopReason.PROGRESSION
    if any(a.action == DoseActionKind.DISCONTINUE for a in actions):
        return StopReason.TOXICITY
    if death is not None and (death - last_dose).days <= 1:
        return StopReason.DEATH
    return StopReason.OTHER


def subject_status(
    eligibility: EligibilityStatus, treated: bool, on_drug: bool, death: date | None
) -> tuple[SubjectStatus, date | None]:
    """R4 ResearchSubject.status per docs/protocol.md §7, and period.end (the death date when off-study)."""
    if death is not None:
        return SubjectStatus.OFF_STUDY, death
    if treated:
        return (SubjectStatus.ON_STUDY_INTERVENTION if on_drug else SubjectStatus.FOLLOW_UP), None
    if eligibility == EligibilityStatus.UNDETERMINED:
        return SubjectStatus.SCREENING, None
    if eligibility == EligibilityStatus.INELIGIBLE:
        return SubjectStatus.INELIGIBLE, None
    return SubjectStatus.ELIGIBLE, None


def summarise_cohort(rows: Iterable[CohortRow]) -> CohortSummary:
    """The cohort block of results.json, computed over the treated population (ITT)."""
    rows = list(rows)
    treated = [r for r in rows if r.treated]
    n = len(treated)
    counts = Counter(r.best_response or Response.NE for r in treated)
    best = {str(k): counts.get(k, 0) for k in Response}
    with_os = [r for r in treated if r.os_days is not None]
    curve = kaplan_meier([r.os_days or 0 for r in with_os], [bool(r.os_event) for r in with_os])
    days = [r.treatment_days for r in treated if r.treatment_days is not None]
    screening = [r for r in rows if not r.treated]
    return CohortSummary(
        n_treated=n,
        n_screened_only=len(screening),
        best_response_counts=best,
        orr=rate(best["CR"] + best["PR"], n),
        dcr=rate(best["CR"] + best["PR"] + best["SD"], n),
        median_os_days=curve.median,
        os_ci=curve.ci,
        os_n=len(with_os),
        os_events=sum(1 for r in with_os if r.os_event),
        os_table=tuple(curve.table),
        median_treatment_days=statistics.median(days) if days else None,
        treatment_days_range=(min(days), max(days)) if days else None,
        toxicity_table=tuple(toxicity_table(r.toxicities for r in treated)),
        screening=ScreeningCounts(
            eligibility_counts=dict(sorted(Counter(str(r.eligibility) for r in screening).items())),
            failed_criteria=dict(sorted(Counter(c for r in screening for c in r.failed).items())),
        ),
    )
