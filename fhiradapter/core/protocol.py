"""The protocol's configurable parameters and code sets, parsed and checked from plain dicts.

The shell reads ``mappings/*.toml`` and hands the dicts to :func:`parse_mappings`; this module never
touches files. Every model forbids unknown keys, so a misspelt key fails loudly with its location.
The result, :class:`Mappings`, also holds the compiled code lookups the mappers use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fhiradapter.core.codes import CodeTable
from fhiradapter.errors import ConfigError

RULE_BOOK = "docs/protocol.md"  # the project's rule book, which results and reports cite by section


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProtocolInfo(_Strict):
    id: str
    version: str
    title: str
    toxicity_criteria: str


class StudyInfo(_Strict):
    """docs/protocol.md §1: the study. A patient is a study subject when a ResearchSubject's ``study`` references
    ``ResearchStudy/<id>``."""

    id: str = Field(pattern=r"^[A-Za-z0-9\-\.]{1,64}$")


class ChildPughParams(_Strict):
    albumin_lower_g_dl: float = Field(gt=0, lt=3.5)


class ResponseParams(_Strict):
    afp_window_days: int = Field(ge=0)
    sd_min_days: int = Field(ge=0)


class DoseRule(_Strict):
    term: str
    min_grade: int = Field(ge=1, le=5)
    action: Literal["interrupt", "discontinue"]


class ToxicityParams(_Strict):
    window_after_last_dose_days: int = Field(ge=0)
    dose_rule: list[DoseRule] = []


class ProtocolFile(_Strict):
    protocol: ProtocolInfo
    study: StudyInfo | None = None  # absent: the protocol's id names the study
    child_pugh: ChildPughParams
    response: ResponseParams
    toxicity: ToxicityParams


class ConceptCodes(_Strict):
    concept: str
    codes: list[str]


class StopReasonCodes(_Strict):
    """A statusReason code and the stop reason it means (docs/protocol.md §7: one of five)."""

    concept: Literal["progression", "toxicity", "refusal", "death", "other"]
    codes: list[str]


class ObservationCodes(ConceptCodes):
    unit: str


class AnswerCodes(ConceptCodes):
    value: str


class TumorCodes(_Strict):
    longest: list[str]
    perpendicular: list[str]


class ConsentCodes(_Strict):
    research: list[str]


class AETerm(_Strict):
    term: str
    display: str
    meddra: str | None = None
    codes: list[str]


class CodesFile(_Strict):
    systems: dict[str, str]
    observation: list[ObservationCodes]
    tumor: TumorCodes
    answer: list[AnswerCodes] = []
    condition: list[ConceptCodes]
    medication: list[ConceptCodes]
    consent: ConsentCodes
    stop_reason: list[StopReasonCodes] = []
    ae_term: list[AETerm]


class Conversion(_Strict):
    concept: str
    from_: str = Field(alias="from")
    to: str
    multiply_by: float | None = None
    divide_by: float | None = None
    label: str

    @model_validator(mode="after")
    def _one_factor(self) -> Conversion:
        if (self.multiply_by is None) == (self.divide_by is None):
            raise ValueError("give exactly one of multiply_by and divide_by")
        if (self.multiply_by or self.divide_by or 0) <= 0:
            raise ValueError("the factor must be positive")
        return self

    def apply(self, value: float) -> float:
        return value * self.multiply_by if self.multiply_by is not None else value / (self.divide_by or 1)


class UnitsFile(_Strict):
    conversion: list[Conversion] = []


class Mappings:
    """Parsed mappings plus compiled lookups. Built only by :func:`parse_mappings`."""

    def __init__(self, protocol: ProtocolFile, codes: CodesFile, units: UnitsFile) -> None:
        self.protocol = protocol
        self.codes = codes
        self.units = units
        resolve = _resolver(codes.systems)
        self.observation = CodeTable()
        self.canonical_unit: dict[str, str] = {}
        for obs in codes.observation:
            self.canonical_unit[obs.concept] = obs.unit
            for system, code in map(resolve, obs.codes):
                self.observation.add(system, code, obs.concept)
        self.answer: dict[str, CodeTable] = {}
        for ans in codes.answer:
            table = self.answer.setdefault(ans.concept, CodeTable())
            for system, code in map(resolve, ans.codes):
                table.add(system, code, ans.value)
        self.tumor_component = CodeTable()
        for system, code in map(resolve, codes.tumor.longest):
            self.tumor_component.add(system, code, "longest")
        for system, code in map(resolve, codes.tumor.perpendicular):
            self.tumor_component.add(system, code, "perpendicular")
        self.condition = _table(codes.condition, resolve)
        self.medication = _table(codes.medication, resolve)
        self.stop_reason = _table(codes.stop_reason, resolve)
        self.consent_research = CodeTable()
        for system, code in map(resolve, codes.consent.research):
            self.consent_research.add(system, code, "research")
        self.ae_term = CodeTable()
        self.ae_terms: dict[str, AETerm] = {}
        for term in codes.ae_term:
            self.ae_terms[term.term] = term
            for system, code in map(resolve, term.codes):
                self.ae_term.add(system, code, term.term)
        self.conversions: dict[tuple[str, str], Conversion] = {(c.concept, c.from_): c for c in units.conversion}
        unknown = [r.term for r in protocol.toxicity.dose_rule if r.term not in self.ae_terms]
        if unknown:
            raise ConfigError(f"protocol.toml [[toxicity.dose_rule]]: unknown term(s) {unknown}")

    @property
    def study_ref(self) -> str:
        """``ResearchStudy/<id>``: the study whose ResearchSubjects make a patient a study subject."""
        study = self.protocol.study
        return f"ResearchStudy/{study.id if study else self.protocol.protocol.id}"

    @property
    def identity(self) -> dict[str, str]:
        info = self.protocol.protocol
        return {
            "id": info.id,
            "version": info.version,
            "title": info.title,
            "toxicity_criteria": info.toxicity_criteria,
            "study": self.study_ref,
            "rules": RULE_BOOK,
        }


def _resolver(systems: Mapping[str, str]) -> Any:
    def resolve(entry: str) -> tuple[str, str]:
        system, sep, code = entry.rpartition("|")
        if not sep or not system or not code:
            raise ConfigError(f"codes.toml: {entry!r} is not 'system|code'")
        return systems.get(system, system), code

    return resolve


def _table(entries: Sequence[ConceptCodes | StopReasonCodes], resolve: Any) -> CodeTable:
    table = CodeTable()
    for entry in entries:
        for system, code in map(resolve, entry.codes):
            table.add(system, code, entry.concept)
    return table


def parse_mappings(protocol: Mapping[str, Any], codes: Mapping[str, Any], units: Mapping[str, Any]) -> Mappings:
    """Check the three mapping documents and compile them; raise ConfigError naming file and key."""
    parsed: list[BaseModel] = []
    for name, model, data in (
        ("protocol.toml", ProtocolFile, protocol),
        ("codes.toml", CodesFile, codes),
        ("units.toml", UnitsFile, units),
    ):
        try:
            parsed.append(model.model_validate(data))
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()[:5]
            ]
            more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
            raise ConfigError(f"{name}: {'; '.join(problems)}{more}") from None
    proto, code_file, unit_file = parsed
    assert isinstance(proto, ProtocolFile)  # noqa: S101 - narrowing for mypy
    assert isinstance(code_file, CodesFile)  # noqa: S101
    assert isinstance(unit_file, UnitsFile)  # noqa: S101
    return Mappings(proto, code_file, unit_file)
