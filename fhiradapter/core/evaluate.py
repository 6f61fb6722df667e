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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from operator import attrgetter
from typing import NamedTuple, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from fhiradapter.core import dates
from fhiradapter.core.child_pugh import ChildPugh, score_child_pugh
from fhiradapter.core.dates import PartialDate
from fhiradapter.core.eligibility import assess_eligibility, by_concept, latest
from fhiradapter.core.limits import LAB_WINDOW_DAYS
from fhiradapter.core.model import (
    AdverseEvent,
    Condition,
    Consent,
    Exposure,
    Issue,
    Observed,
    PatientRecord,
    StudySubject,
    SupportingResource,
)
from fhiradapter.core.protocol import Mappings, StudyKey
from fhiradapter.core.response import ResponseResult, assess_response
from fhiradapter.core.results import (
    AgeRange,
    Baseline,
    Characteristics,
    ChildPughScore,
    CohortSummary,
    Conversion,
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


class Treatment(NamedTuple):
    """When the patient was screened and what study thalidomide they had (docs/protocol.md §1)."""

    screening: date
    screening_source: str  # which record (or rule) gave the screening date
    study_exposures: list[Exposure]  # thalidomide started on or after screening, with a full start date
    index_date: date | None  # the first dose of study thalidomide; None: not treated
    last_dose: date | None
    on_drug: bool  # still on study drug at the as-of date
    treatment_days: int | None


class TreatedOutcome(NamedTuple):
    """What only a treated patient has (docs/protocol.md §4-§7): response, toxicity, survival, why they stopped."""

    response: ResponseResult | None
    toxicities: Sequence[Toxicity]
    dose_actions: Sequence[DoseAction]
    survival: Survival | None
    stop: StopReason | UnsetType | None  # UNSET: not written (untreated); None: still on drug


NOT_TREATED = TreatedOutcome(None, (), (), None, UNSET)


def _study_of(subject: StudySubject) -> str:
    """Which study a ResearchSubject is of, in words (its reference may be to a server not declared)."""
    if subject.study:
        return f"a ResearchSubject of {subject.study}"
    if subject.study_identifier:
        system, value = subject.study_identifier
        return f"a ResearchSubject of the study with identifier {system}|{value}"
    if (subject.raw or {}).get("study"):
        return "a ResearchSubject whose study is on another server (not declared with --fhir-base) or malformed"
    return "a ResearchSubject without a study"


def _note(issue: Issue) -> Note:
    return Note(issue.ref, issue.path, issue.code, issue.message)


def _add_note(notes: list[Note], ref: str | None, code: str, message: str) -> None:
    notes.append(Note(ref, "", code, message))


# The records ``cut_off`` holds to the as-of date; each has a ``ref`` for the reject it becomes.
Dated = TypeVar("Dated", Exposure, Observed, AdverseEvent, Condition, Consent, StudySubject)


def cut_off(rec: PatientRecord, as_of: date) -> tuple[PatientRecord, list[SetAside]]:
    """Set aside everything dated after the as-of date (docs/protocol.md §1: nothing after it is read)."""
    unused: list[SetAside] = []

    def keep(items: list[Dated], day: Callable[[Dated], PartialDate | date | None]) -> list[Dated]:
        late = [item for item in items if dates.after(day(item), as_of)]
        if not late:
            return items  # the common case: nothing after the cut-off
        unused.extend(SetAside(i.ref, "after-as-of", f"dated after the as-of date {as_of}") for i in late)
        late_ids = {id(item) for item in late}
        return [item for item in items if id(item) not in late_ids]

    meds = keep(rec.meds, lambda exposure: exposure.start)  # an end after the cut-off is kept: _exposure_end reads it
    person = rec.person
    if person is not None and dates.after(person.deceased_date, as_of):
        person = person._replace(deceased_date=None, deceased_flag=False)
    new = msgspec.structs.replace(
        rec,
        person=person,
        meds=meds,
        observations=keep(rec.observations, attrgetter("date")),
        adverse_events=keep(rec.adverse_events, attrgetter("date")),
        conditions=keep(rec.conditions, lambda condition: condition.onset or condition.recorded),
        consents=keep(rec.consents, attrgetter("date")),
        subjects=keep(rec.subjects, attrgetter("start")),
    )
    return new, unused


def last_record_date(rec: PatientRecord, as_of: date) -> date | None:
    """The latest full date of any record on or before ``as_of``: the censoring date of a living patient
    (docs/protocol.md §6). An exposure's end after the as-of date is no record date (it has not happened yet)."""
    partial: list[PartialDate | None] = []
    for exposure in rec.meds:
        partial += [exposure.start, exposure.end]
    partial += [c.onset for c in rec.conditions] + [c.recorded for c in rec.conditions]
    partial += [c.date for c in rec.consents]
    for subject in rec.subjects:
        partial += [subject.start, subject.end]
    full = [o.date for o in rec.observations] + [a.date for a in rec.adverse_events]
    full += [day for day in map(dates.full_day, partial) if day is not None]
    return max((day for day in full if day <= as_of), default=None)


def _exposure_end(exposure: Exposure, as_of: date) -> tuple[date | None, bool]:
    """(last dose date, still on drug at the as-of date) of one exposure.

    An exposure whose end lies after the as-of date was still going on at that date, whatever its status says
    now (a status is written later, and nothing after the as-of date is read): the treatment counts to the
    as-of date and the patient is on drug. Without an end, the status tells (active, in-progress, on-hold).
    """
    end = dates.full_day(exposure.end)
    if end is not None and end > as_of:
        return as_of, True
    if exposure.status in ONGOING_MED_STATUS and (end is None or end == as_of):
        return as_of, True
    return (end or dates.full_day(exposure.start)), False


def evaluate_patient(raw: PatientRecord, settings: EvaluationSettings, issues: Iterable[Issue] = ()) -> Evaluation:
    """The whole protocol for one patient (docs/protocol.md §1-§7), on the records dated up to the as-of date."""
    as_of, mappings = settings.as_of, settings.mappings
    rec, unused = cut_off(raw, as_of)
    notes: list[Note] = [_note(issue) for issue in issues]
    rec, ours = _study_subjects(rec, settings, unused)
    candidate = not ours
    death = dates.full_day(rec.person.deceased_date) if rec.person else None
    skipped = _not_evaluated(rec, settings, candidate, death)
    if skipped is not None:
        return Evaluation(None, unused, None, skipped)
    subject = ours[0] if ours else None
    if len(ours) > 1:
        _add_note(
            notes,
            subject.ref if subject else None,
            "several-subjects",
            f"{len(ours)} ResearchSubjects for this study; the first ({subject.ref if subject else ''}) is used",
        )
    treatment = _treatment(rec, subject, candidate, as_of, notes)
    screening, index = treatment.screening, treatment.index_date

    # Child-Pugh and eligibility at the screening date (§2, §3).
    by_obs = by_concept(rec.observations)
    cp, cp_evidence = _child_pugh_at(by_obs, screening, mappings)
    eligibility = msgspec.structs.replace(
        assess_eligibility(rec, screening, index or screening, cp, cp_evidence, by_obs),
        screening_date_source=treatment.screening_source,
    )
    person = rec.person
    if person is not None and person.deceased_flag and death is None:
        _add_note(notes, person.ref, "deceased-no-date", "deceasedBoolean is true but no date: censored, not counted")
    if person is None:
        _add_note(notes, None, "no-patient", "no Patient resource for this subject")
    outcome = NOT_TREATED
    if index is not None and treatment.last_dose is not None:
        outcome = _treated_outcome(rec, by_obs, treatment, index, treatment.last_dose, death, as_of, mappings, notes)
    status = _status_and_period_end(rec, subject, eligibility.status, treatment, death, notes)
    child_pugh = ChildPughScore(cp.score, cp.cls, cp.points, cp.missing, cp.used_pt, tuple(cp_evidence))
    result = _patient_result(rec, candidate, subject, eligibility, child_pugh, treatment, outcome, status, notes)
    return Evaluation(result, unused, _cohort_row(result, outcome.survival))


def _study_subjects(
    rec: PatientRecord, settings: EvaluationSettings, unused: list[SetAside]
) -> tuple[PatientRecord, list[StudySubject]]:
    """The patient's ResearchSubjects of this study, and the record without the others (set aside in ``unused``).

    The study population (docs/protocol.md §1): a patient is a study subject through a ResearchSubject of the
    study. Another study's ResearchSubjects are never read as this study's (and never written).
    """
    the_study, study_ref = settings.study_of_run, settings.study
    ours = [subject for subject in rec.subjects if the_study.names(subject.study, subject.study_identifier)]
    if len(ours) < len(rec.subjects):
        unused.extend(
            SetAside(subject.ref, "other-study", f"{_study_of(subject)}, not of {study_ref}: not used")
            for subject in rec.subjects
            if subject not in ours
        )
        rec = msgspec.structs.replace(rec, subjects=ours)
    return rec, ours


def _not_evaluated(
    rec: PatientRecord, settings: EvaluationSettings, candidate: bool, death: date | None
) -> tuple[str, str] | None:
    """(code, reason) when the patient is outside the study population (docs/protocol.md §1), else None."""
    if candidate and not settings.screen_candidates:
        why = f"{rec.patient} has no ResearchSubject of {settings.study} on or before the as-of date: not in the study"
        return "not-in-study", why
    if candidate and death is not None and death <= settings.as_of:
        why = (
            f"{rec.patient}, a screening candidate, died on or before the screening date {settings.as_of}: not screened"
        )
        return "not-screened", why
    return None


def _treatment(
    rec: PatientRecord, subject: StudySubject | None, candidate: bool, as_of: date, notes: list[Note]
) -> Treatment:
    """The screening date and the study thalidomide: index date, last dose, days on drug (docs/protocol.md §1)."""
    thalidomide = sorted(
        (exposure for exposure in rec.meds if exposure.drug == "thalidomide"),
        key=lambda exposure: exposure.start or PartialDate(0),
    )
    screening = dates.full_day(subject.start) if subject else None
    screening_source = "ResearchSubject.period.start"
    if candidate:  # screened at the as-of date (docs/protocol.md §1)
        screening, screening_source = as_of, "as-of date (screening candidate)"
    if screening is None and thalidomide:
        screening, screening_source = dates.full_day(thalidomide[0].start), "first thalidomide exposure"
    if screening is None:
        screening, screening_source = as_of, "as-of date"
    study = [
        exposure
        for exposure in thalidomide
        if (start := dates.full_day(exposure.start)) is not None and start >= screening
    ]
    for exposure in thalidomide:
        if exposure.start is not None and exposure.start.full is None:
            _add_note(
                notes, exposure.ref, "partial-date", "the thalidomide start has no day: not counted as study drug"
            )
    index = min((start for exposure in study if (start := dates.full_day(exposure.start)) is not None), default=None)
    last_dose: date | None = None
    on_drug = False
    for exposure in study:
        end, ongoing = _exposure_end(exposure, as_of)
        on_drug = on_drug or ongoing
        if end is not None and (last_dose is None or end > last_dose):
            last_dose = end
    treatment_days = dates.inclusive_days(index, last_dose) if index and last_dose else None
    return Treatment(screening, screening_source, study, index, last_dose, on_drug, treatment_days)


def _child_pugh_at(
    by_obs: dict[str, list[Observed]], screening: date, mappings: Mappings
) -> tuple[ChildPugh, list[str]]:
    """The Child-Pugh score at screening (docs/protocol.md §3) and the observations it used, sorted.

    Labs: the latest within the 28-day window (§2); ascites and encephalopathy are no labs: the latest on or
    before screening, however old, as for ECOG.
    """
    inputs = {
        concept: latest(
            by_obs.get(concept, ()), concept, screening, window_days=LAB_WINDOW_DAYS if concept in CP_LABS else None
        )
        for concept in (*CP_LABS, "ascites", "encephalopathy")
    }
    pt, pt_control = inputs["pt"], inputs["pt_control"]
    pt_prolongation = None
    if pt and pt_control and pt.value is not None and pt_control.value is not None:
        pt_prolongation = pt.value - pt_control.value
    encephalopathy = inputs["encephalopathy"]
    score = score_child_pugh(
        bilirubin=inputs["bilirubin"].value if inputs["bilirubin"] else None,
        albumin=inputs["albumin"].value if inputs["albumin"] else None,
        inr=inputs["inr"].value if inputs["inr"] else None,
        pt_prolongation=pt_prolongation,
        ascites=inputs["ascites"].coded if inputs["ascites"] else None,
        encephalopathy=int(encephalopathy.value) if encephalopathy and encephalopathy.value is not None else None,
        albumin_lower=mappings.protocol.child_pugh.albumin_lower_g_dl,
    )
    used = {"inr"} if not score.used_pt else {"pt", "pt_control"}
    evidence = sorted(
        observed.ref
        for concept, observed in inputs.items()
        if observed is not None and (concept not in ("inr", "pt", "pt_control") or concept in used)
    )
    return score, evidence


def _treated_outcome(
    rec: PatientRecord,
    by_obs: dict[str, list[Observed]],
    treatment: Treatment,
    index: date,
    last_dose: date,
    death: date | None,
    as_of: date,
    mappings: Mappings,
    notes: list[Note],
) -> TreatedOutcome:
    """Response (§4), toxicity and dose actions (§5), survival (§6) and the off-treatment reason (§7)."""
    rules = mappings.protocol
    response = assess_response(
        by_obs.get("tumor_size", []),
        by_obs.get("afp", []),
        index,
        afp_window_days=rules.response.afp_window_days,
        sd_min_days=rules.response.sd_min_days,
    )
    for text in response.issues:
        _add_note(notes, None, "response", text)
    tox_rows, events, tox_issues = toxicities(
        rec.adverse_events,
        [observed for concept in LAB_TERMS for observed in by_obs.get(concept, ())],
        index,
        last_dose,
        after_days=rules.toxicity.window_after_last_dose_days,
        mappings=mappings,
    )
    for text in tox_issues:
        _add_note(notes, text.split(":", 1)[0], "lab-grade", text)
    actions = dose_actions(events, rules.toxicity.dose_rule)
    survival = _survival(rec, treatment.study_exposures, index, death, as_of, notes)
    first_pd = next((a.date for a in response.assessments if a.response == Response.PD), None)
    stop = None if treatment.on_drug else _stop_reason(treatment.study_exposures, first_pd, last_dose, death, actions)
    return TreatedOutcome(response, tox_rows, actions, survival, stop)


def _survival(
    rec: PatientRecord, study: list[Exposure], index: date, death: date | None, as_of: date, notes: list[Note]
) -> Survival | None:
    """Overall survival from the index date (§6): to death, or censored at the last dated record."""
    person = rec.person
    if death is not None and death < index:
        # docs/protocol.md §1: the data contradict each other; OS is not computed, and both records are named.
        first = next(exposure.ref for exposure in study if dates.full_day(exposure.start) == index)
        _add_note(
            notes,
            person.ref if person else None,
            "death-before-index",
            f"the death date ({person.ref if person else 'Patient'}.deceasedDateTime) is before the index "
            f"date, the first dose of study thalidomide ({first}): overall survival not computed; check both "
            "records",
        )
    end = death if death is not None else last_record_date(rec, as_of)
    if end is not None and end >= index:
        basis = "Patient.deceasedDateTime" if death else "last dated record (censored)"
        return Survival(dates.inclusive_days(index, end), death is not None, end, basis)
    return None


def _status_and_period_end(
    rec: PatientRecord,
    subject: StudySubject | None,
    eligibility: EligibilityStatus,
    treatment: Treatment,
    death: date | None,
    notes: list[Note],
) -> tuple[SubjectStatus, date | None]:
    """The ResearchSubject's status and period.end to write (§7); period.end is never before period.start."""
    status, period_end = subject_status(eligibility, treatment.index_date is not None, treatment.on_drug, death)
    period_start = dates.full_day(subject.start) if subject and subject.start else treatment.screening
    if period_end is not None and death is not None and period_start is not None and death < period_start:
        # docs/protocol.md §7: such data is reported, not written.
        _add_note(
            notes,
            rec.person.ref if rec.person else None,
            "death-before-period-start",
            "the death date is before the ResearchSubject's period start: period.end not set",
        )
        period_end = None
    return status, period_end


def _patient_result(
    rec: PatientRecord,
    candidate: bool,
    subject: StudySubject | None,
    eligibility: Eligibility,
    child_pugh: ChildPughScore,
    treatment: Treatment,
    outcome: TreatedOutcome,
    status: tuple[SubjectStatus, date | None],
    notes: list[Note],
) -> PatientResult:
    """The patient's entry of results.json, from what the rules found."""
    response = outcome.response
    baseline = response.baseline if response else None
    observations = rec.observations
    conversions = tuple(
        Conversion(ref, conversion)
        for ref, conversion in sorted({(o.ref, o.conversion) for o in observations if o.conversion})
    )
    return PatientResult(
        patient=rec.patient,
        population=Population.CANDIDATE if candidate else Population.SUBJECT,
        research_subject=subject.ref if subject else None,
        eligibility=eligibility,
        child_pugh=child_pugh,
        treated=treatment.index_date is not None,
        index_date=treatment.index_date,
        last_dose_date=treatment.last_dose,
        treatment_days=treatment.treatment_days,
        on_treatment_at_as_of=treatment.on_drug,
        assessments=tuple(a.as_result() for a in response.assessments) if response else (),
        baseline=baseline,
        best_response=response.best if response else None,
        best_response_reason=response.best_reason if response else None,
        duration_of_response=response.duration if response else None,
        os=outcome.survival,
        toxicities=tuple(outcome.toxicities),
        dose_actions=tuple(outcome.dose_actions),
        conversions=conversions,
        characteristics=_characteristics(rec, eligibility, child_pugh.cls, baseline),
        research_subject_status=status[0],
        research_subject_period_end=status[1],
        issues=tuple(notes),
        off_treatment_reason=outcome.stop,
    )


def _cohort_row(result: PatientResult, survival: Survival | None) -> CohortRow:
    """All the cohort statistics need of one patient (so that the patient's records can be dropped)."""
    return CohortRow(
        result.patient,
        result.treated,
        result.eligibility.status,
        result.eligibility.failed(),
        result.best_response,
        survival.days if survival else None,
        survival.event if survival else None,
        result.treatment_days,
        result.toxicities,
    )


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
        prior_anthracycline=tuple(
            sorted({exposure.drug_code or "" for exposure in rec.meds if exposure.drug == "anthracycline"} - {""})
        ),
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
    recorded = [exposure.stop_reason for exposure in study if exposure.stop_reason]
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
    best = {k: counts.get(k, 0) for k in Response}
    with_os = [r for r in treated if r.os_days is not None]
    curve = kaplan_meier([r.os_days or 0 for r in with_os], [bool(r.os_event) for r in with_os])
    days = [r.treatment_days for r in treated if r.treatment_days is not None]
    screening = [r for r in rows if not r.treated]
    return CohortSummary(
        n_treated=n,
        n_screened_only=len(screening),
        best_response_counts=best,
        orr=rate(best[Response.CR] + best[Response.PR], n),
        dcr=rate(best[Response.CR] + best[Response.PR] + best[Response.SD], n),
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
