"""The study's treatment plan as FHIR R4: a PlanDefinition (assessments, their timing, the dose rules) and the
ActivityDefinition of the study drug (Vulcan Schedule of Activities: ResearchStudy.protocol -> PlanDefinition ->
ActivityDefinition).

Every number comes from where the rules read it: the dose from ``export.toml [[ex]]``, the windows and the dose
rules from ``protocol.toml``, the fixed windows from ``core/limits.py``, the codes from ``codes.toml`` (through
the ValueSet specs). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from fhiradapter.core.limits import (
    ANC_GRADE_BELOW,
    BASELINE_WINDOW_DAYS,
    CONFIRMATION_DAYS,
    CREATININE_GRADE_ABOVE_ULN,
    LAB_WINDOW_DAYS,
    PD_RATIO,
    PLATELET_GRADE_BELOW,
    PR_RATIO,
)
from fhiradapter.core.protocol import RULE_BOOK, Mappings
from fhiradapter.core.study_fhir import UCUM, StudyDrug, StudyIds, ValueSetSpec, concept_of
from fhiradapter.core.study_resources import (
    ActionCondition,
    ActivityDefinition,
    CodeableConcept,
    Coding,
    Dosage,
    DoseAndRate,
    Expression,
    PlanAction,
    PlanDefinition,
    Quantity,
    Range,
    RelatedAction,
    Timing,
    TimingRepeat,
)
from fhiradapter.errors import ConfigError

DOSE_ACTION_SYSTEM = "urn:fhiradapter:dose-action"
PLAN_TYPE = CodeableConcept(
    coding=(Coding(system="http://terminology.hl7.org/CodeSystem/plan-definition-type", code="clinical-protocol"),)
)
# CDISC frequency -> (times, per period in days, in words); the rule book's drug is taken once daily.
FREQUENCIES = {
    "QD": (1, 1, "once daily"),
    "BID": (2, 1, "twice daily"),
    "TID": (3, 1, "three times daily"),
    "QID": (4, 1, "four times daily"),
    "QOD": (1, 2, "every other day"),
}
ROUTES = {"ORAL": Coding(system="http://snomed.info/sct", code="26643006", display="Oral route")}
BEDTIME = "HS"  # docs/protocol.md (header): thalidomide at bedtime (EventTiming HS)
# A condition is stated in words (``description``) and codes (the action's ``reason``). R4 needs a language
# from its list and an expression: a CQL identifier naming it (no CQL Library is published: not executable).
CQL = "text/cql"
DRUG_ACTION = "study-drug"


def _bounds(bounds: Sequence[Decimal]) -> str:
    return ", ".join(str(b) for b in bounds)


def _days(low: int, high: int) -> Range:
    return Range(
        low=Quantity(value=low, unit="days", system=UCUM, code="d"),
        high=Quantity(value=high, unit="days", system=UCUM, code="d"),
    )


def _words(kind: Literal["applicability", "start", "stop"], words: str) -> ActionCondition:
    name = words.replace('"', "'")
    return ActionCondition(kind=kind, expression=Expression(language=CQL, description=words, expression=f'"{name}"'))


def build_activity(ids: StudyIds, drug: StudyDrug, specs: Sequence[ValueSetSpec]) -> ActivityDefinition:
    if drug.frequency not in FREQUENCIES:
        raise ConfigError(f"export.toml [[ex]] dosfrq {drug.frequency!r}: not one of {', '.join(FREQUENCIES)}")
    times, period, often = FREQUENCIES[drug.frequency]
    rid = ids.of(drug.concept)
    text = f"{drug.concept} {drug.dose:g} {drug.unit} {often} at bedtime, {drug.route.lower()}, no escalation"
    return ActivityDefinition(
        id=rid,
        url=ids.url("ActivityDefinition", rid),
        identifier=ids.identifier(rid),
        version=ids.version,
        name=f"StudyDrug{drug.concept.title().replace('_', '')}",
        title=f"{drug.concept} {drug.dose:g} {drug.unit} {often}",
        status="active",
        kind="MedicationRequest",
        intent="order",
        description=f"The study drug as the protocol gives it: {text} ({RULE_BOOK}, header).",
        product_codeable_concept=concept_of(specs, f"medication-{drug.concept}", drug.concept),
        dosage=(
            Dosage(
                text=text,
                timing=Timing(repeat=TimingRepeat(frequency=times, period=period, period_unit="d", when=(BEDTIME,))),
                route=CodeableConcept(coding=(ROUTES[drug.route],)) if drug.route in ROUTES else None,
                dose_and_rate=(
                    DoseAndRate(dose_quantity=Quantity(value=drug.dose, unit=drug.unit, system=UCUM, code=drug.unit)),
                ),
            ),
        ),
    )


def _codes(specs: Sequence[ValueSetSpec], names: Sequence[str]) -> tuple[CodeableConcept, ...]:
    return tuple(concept_of(specs, f"observation-{n.replace('_', '-')}", n) for n in names)


def assessment_actions(mappings: Mappings, specs: Sequence[ValueSetSpec]) -> list[PlanAction]:
    """Screening, baseline, response assessments and toxicity monitoring, with their windows."""
    params = mappings.protocol
    after_dose = params.toxicity.window_after_last_dose_days
    return [
        PlanAction(
            id="screening",
            title=f"Screening: eligibility ({RULE_BOOK} §2, §3)",
            description=f"Labs: the latest within {LAB_WINDOW_DAYS} days before the screening date; ECOG, ascites, "
            "encephalopathy and pregnancy status: the latest on or before it. Who may enrol: the enrollment Group.",
            code=_codes(specs, ("anc", "platelets", "creatinine", "bilirubin", "albumin", "inr", "ecog")),
            related_action=(
                RelatedAction(
                    action_id=DRUG_ACTION, relationship="before-start", offset_range=_days(0, LAB_WINDOW_DAYS)
                ),
            ),
        ),
        PlanAction(
            id="baseline",
            title=f"Baseline tumour assessment and AFP ({RULE_BOOK} §4)",
            description=f"WHO bidimensional tumour measurements and serum AFP, the latest within "
            f"{BASELINE_WINDOW_DAYS} days before the first dose, or on it.",
            code=_codes(specs, ("tumor_size", "afp")),
            related_action=(
                RelatedAction(
                    action_id=DRUG_ACTION, relationship="before-start", offset_range=_days(0, BASELINE_WINDOW_DAYS)
                ),
            ),
        ),
        PlanAction(
            id="response-assessment",
            title=f"Response assessments, WHO bidimensional + serum AFP ({RULE_BOOK} §4)",
            description=f"Each post-baseline date with tumour measurements, its AFP the one nearest within "
            f"± {params.response.afp_window_days} days. PD: SPD or AFP ≥ {float(PD_RATIO):g} × nadir, or a new "
            f"lesion; PR: SPD or AFP ≤ {float(PR_RATIO):g} × baseline. A CR or PR counts when confirmed at least "
            f"{CONFIRMATION_DAYS} days later; SD counts for the best response from day "
            f"{params.response.sd_min_days} after the first dose.",
            code=_codes(specs, ("tumor_size", "afp")),
            related_action=(RelatedAction(action_id=DRUG_ACTION, relationship="after-start"),),
        ),
        PlanAction(
            id="toxicity-monitoring",
            title=f"Toxicity, {params.protocol.toxicity_criteria} ({RULE_BOOK} §5)",
            description=f"Treatment-emergent toxicity: onset from the first dose to {after_dose} days after the "
            f"last dose. Lab grades: neutrophils G1-G4 below {_bounds(ANC_GRADE_BELOW)} × 10⁹/L; platelets G1 below "
            f"the lower limit of normal, G2-G4 below {_bounds(PLATELET_GRADE_BELOW)} × 10⁹/L; creatinine G1-G4 "
            f"above {_bounds(CREATININE_GRADE_ABOVE_ULN)} × the upper limit of normal.",
            code=_codes(specs, ("anc", "platelets", "creatinine")),
            related_action=(
                RelatedAction(action_id=DRUG_ACTION, relationship="concurrent-with-start"),
                RelatedAction(action_id=DRUG_ACTION, relationship="after-end", offset_range=_days(0, after_dose)),
            ),
        ),
    ]


def dose_rule_actions(mappings: Mappings, specs: Sequence[ValueSetSpec]) -> list[PlanAction]:
    """``protocol.toml [[toxicity.dose_rule]]`` as actions: the condition in words, the term's codes as reason."""
    criteria = mappings.protocol.protocol.toxicity_criteria
    actions = []
    for n, rule in enumerate(mappings.protocol.toxicity.dose_rule, start=1):
        term = mappings.ae_terms[rule.term]
        words = f"{term.display}, {criteria} grade {rule.min_grade} or higher"
        actions.append(
            PlanAction(
                id=f"dose-rule-{n}",
                title=f"{rule.action.capitalize()} the study drug: {words}",
                description=f"Dose rule of {RULE_BOOK} §5: when a patient has {words} (the term {rule.term!r} of "
                f"codes.toml [[ae_term]], its codes the reason below), {rule.action} the study drug.",
                code=(
                    CodeableConcept(coding=(Coding(system=DOSE_ACTION_SYSTEM, code=rule.action),), text=rule.action),
                ),
                reason=(concept_of(specs, f"ae-term-{rule.term.replace('_', '-')}", term.display),),
                condition=(_words("applicability", words),),
                related_action=(RelatedAction(action_id=DRUG_ACTION, relationship="concurrent"),),
            )
        )
    return actions


def build_plan(
    ids: StudyIds, mappings: Mappings, drug: StudyDrug, specs: Sequence[ValueSetSpec], activity: ActivityDefinition
) -> PlanDefinition:
    rid = ids.of("plan")
    info = mappings.protocol.protocol
    dosing = activity.dosage[0]
    drug_action = PlanAction(
        id=DRUG_ACTION,
        title=activity.title,
        description=f"{dosing.text}, until progression ({RULE_BOOK} §4, §5).",
        code=(concept_of(specs, f"medication-{drug.concept}", drug.concept),),
        condition=(_words("stop", f"progressive disease ({RULE_BOOK} §4)"),),
        timing_timing=dosing.timing,
        definition_canonical=activity.url,
    )
    assessments = assessment_actions(mappings, specs)
    return PlanDefinition(
        id=rid,
        url=ids.url("PlanDefinition", rid),
        identifier=ids.identifier(rid),
        version=ids.version,
        name=f"Plan{''.join(p.title() for p in info.id.replace('.', '-').split('-'))}",
        title=f"Treatment plan: {info.title}",
        type=PLAN_TYPE,
        status="active",
        description=f"The study drug, the assessments and their timing, and the dose rules, as the adapter applies "
        f"them ({RULE_BOOK}, protocol {info.id} {info.version}).",
        action=(
            *assessments[:2],
            drug_action,
            *assessments[2:],
            *dose_rule_actions(mappings, specs),
        ),
    )
