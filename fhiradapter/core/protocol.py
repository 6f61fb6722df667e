"""The protocol's configurable parameters and code sets, parsed and checked from plain dicts.

The shell reads ``mappings/*.toml`` and hands the dicts to :func:`parse_mappings`; this module never
touches files. Every model forbids unknown keys, so a misspelt key fails loudly with its location.
The result, :class:`Mappings`, also holds the compiled code lookups the mappers use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fhiradapter.core.codes import CodeTable
from fhiradapter.core.limits import ALBUMIN_UPPER
from fhiradapter.errors import ConfigError

RULE_BOOK = "docs/protocol.md"  # the project's rule book, which results and reports cite by section


class StrictModel(BaseModel):
    """A table of a mappings file (protocol.toml, export.toml): an unknown key is an error; values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProtocolInfo(StrictModel):
    id: str
    version: str
    title: str
    toxicity_criteria: str


ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"  # FHIR R4 id


class StudyKey(NamedTuple):
    """docs/protocol.md §1: the study, by id, by identifiers (``(system, value)``), or both.

    A ResearchSubject is of the study when its ``study`` is a literal reference to ``ResearchStudy/<id>`` or a
    logical reference whose identifier is one of ``identifiers``: both are FHIR references, of equal worth.
    """

    id: str | None
    identifiers: frozenset[tuple[str, str]] = frozenset()

    @property
    def label(self) -> str:
        """How reports and messages name the study: ``ResearchStudy/<id>``, else its first identifier."""
        if self.id:
            return f"ResearchStudy/{self.id}"
        system, value = min(self.identifiers)
        return f"ResearchStudy?identifier={system}|{value}"

    def names(self, reference: str | None, identifier: tuple[str, str] | None) -> bool:
        """Whether a ``study`` reference (literal, already made local, and/or logical) names this study."""
        if reference is not None and self.id is not None and reference == f"ResearchStudy/{self.id}":
            return True
        return identifier is not None and identifier in self.identifiers

    def with_resource(self, rid: str, identifiers: Sequence[tuple[str, str]]) -> StudyKey:
        """The key widened by the study's own ResearchStudy found in the data (its id and its identifiers).

        A ResearchStudy is the study's when its id is the study's id or it carries one of the study's
        identifiers; anything else leaves the key as it is.
        """
        if rid == self.id or self.identifiers.intersection(identifiers):
            return StudyKey(self.id or rid, self.identifiers | frozenset(identifiers))
        return self


def parse_identifier(text: str, where: str) -> tuple[str, str]:
    """``SYSTEM|VALUE`` as a pair; both parts must be there."""
    system, bar, value = text.partition("|")
    if not bar or not system.strip() or not value.strip():
        raise ValueError(f"{where}: {text!r} is not an identifier written SYSTEM|VALUE")
    return system.strip(), value.strip()


class StudyInfo(StrictModel):
    """docs/protocol.md §1: the study, named by ``id``, by ``identifier`` (``SYSTEM|VALUE``, one or a list), or
    both. A patient is a study subject when a ResearchSubject's ``study`` references it, literally or
    logically."""

    id: str | None = Field(default=None, pattern=ID_PATTERN)
    identifier: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("identifier"), str):
            return {**data, "identifier": [data["identifier"]]}
        return data

    @model_validator(mode="after")
    def _named(self) -> StudyInfo:
        if self.id is None and not self.identifier:
            raise ValueError("name the study by id, by identifier (SYSTEM|VALUE), or both")
        for text in self.identifier:
            parse_identifier(text, "identifier")
        return self

    @property
    def key(self) -> StudyKey:
        return StudyKey(self.id, frozenset(parse_identifier(t, "identifier") for t in self.identifier))


class ChildPughParams(StrictModel):
    albumin_lower_g_dl: float = Field(gt=0, lt=ALBUMIN_UPPER)  # below the fixed upper cut-off (core/limits.py)


class ResponseParams(StrictModel):
    afp_window_days: int = Field(ge=0)
    sd_min_days: int = Field(ge=0)


class DoseRule(StrictModel):
    term: str
    min_grade: int = Field(ge=1, le=5)
    action: Literal["interrupt", "discontinue"]


class ToxicityParams(StrictModel):
    window_after_last_dose_days: int = Field(ge=0)
    dose_rule: list[DoseRule] = []


class ProtocolFile(StrictModel):
    protocol: ProtocolInfo
    study: StudyInfo | None = None  # absent: the protocol's id names the study
    child_pugh: ChildPughParams
    response: ResponseParams
    toxicity: ToxicityParams


class ConceptCodes(StrictModel):
    concept: str
    codes: list[str]


class StopReasonCodes(StrictModel):
    """A statusReason code and the stop reason it means (docs/protocol.md §7: one of five)."""

    concept: Literal["progression", "toxicity", "refusal", "death", "other"]
    codes: list[str]


class ObservationCodes(ConceptCodes):
    unit: str


class AnswerCodes(ConceptCodes):
    value: str


class TumorCodes(StrictModel):
    longest: list[str]
    perpendicular: list[str]


class ConsentCodes(StrictModel):
    research: list[str]


class AETerm(StrictModel):
    term: str
    display: str
    meddra: str | None = None
    codes: list[str]


class CodesFile(StrictModel):
    systems: dict[str, str]
    observation: list[ObservationCodes]
    tumor: TumorCodes
    answer: list[AnswerCodes] = []
    condition: list[ConceptCodes]
    medication: list[ConceptCodes]
    consent: ConsentCodes
    stop_reason: list[StopReasonCodes] = []
    ae_term: list[AETerm]


class Conversion(StrictModel):
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


class UnitsFile(StrictModel):
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
    def study(self) -> StudyKey:
        """The study whose ResearchSubjects make a patient a study subject (``[study]``, else the protocol id)."""
        study = self.protocol.study
        return study.key if study else StudyKey(self.protocol.protocol.id)

    @property
    def study_ref(self) -> str:
        """The study as reports name it: ``ResearchStudy/<id>``, or by identifier when no id is configured."""
        return self.study.label

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


def _resolver(systems: Mapping[str, str]) -> Callable[[str], tuple[str, str]]:
    def resolve(entry: str) -> tuple[str, str]:
        system, sep, code = entry.rpartition("|")
        if not sep or not system or not code:
            raise ConfigError(f"codes.toml: {entry!r} is not 'system|code'")
        return systems.get(system, system), code

    return resolve


def _table(entries: Sequence[ConceptCodes | StopReasonCodes], resolve: Callable[[str], tuple[str, str]]) -> CodeTable:
    table = CodeTable()
    for entry in entries:
        for system, code in map(resolve, entry.codes):
            table.add(system, code, entry.concept)
    return table


def parse_mappings(
    protocol: Mapping[str, object], codes: Mapping[str, object], units: Mapping[str, object]
) -> Mappings:
    """Check the three mapping documents (TOML as parsed: pydantic validates them) and compile them; raise
    ConfigError naming file and key."""
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
