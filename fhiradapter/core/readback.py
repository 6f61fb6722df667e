"""Results read back into the types they were written from: results.json's header, subjects and cohort,
candidates.ndjson's lines, and the run record of a Spark ``--results-dir``.

msgspec decodes the JSON straight into :class:`~fhiradapter.core.results.PatientResult`,
:class:`~fhiradapter.core.results.CohortSummary` and :class:`~fhiradapter.core.results.ResultsHeader`. One field
needs a step of its own: a criterion's ``value`` is one of several Structs (a measurement, an age range, a
Child-Pugh class, ...) that results.json writes without a tag (its contract), so msgspec cannot tell them apart.
The read side keeps that value as raw JSON, then decodes it into the type its criterion id says
(``eligibility.VALUE_TYPES``). Nothing else differs between what is written and what is read: a round trip
gives back an equal value (tests/test_readback.py).

Every function raises ``msgspec.ValidationError`` or ``msgspec.DecodeError`` with the path of what is wrong
(``$.eligibility.criteria[3].value``); the shell says which file and line.
"""

from __future__ import annotations

from functools import cache
from typing import TypeVar

import msgspec

from fhiradapter.core.eligibility import VALUE_TYPES
from fhiradapter.core.extract import ClinicalExtract
from fhiradapter.core.results import (
    CohortSummary,
    Criterion,
    CriterionStatus,
    CriterionValue,
    Eligibility,
    PatientResult,
    ResultsHeader,
)


class _CriterionOnDisk(msgspec.Struct, frozen=True):
    """:class:`Criterion` as results.json holds it, its value not yet typed."""

    id: str
    status: CriterionStatus
    value: msgspec.Raw
    evidence: tuple[str, ...]
    detail: str


def _read_side(struct: type[msgspec.Struct], name: str, **retyped: object) -> type[msgspec.Struct]:
    """``struct`` with the fields named in ``retyped`` of another type: what msgspec decodes before those are
    typed. Made from ``struct``'s own fields, so that the two cannot drift apart; a name in ``retyped`` that is
    not one of them (a field renamed) stops the import, naming it."""
    unknown = sorted(set(retyped) - {field.name for field in msgspec.structs.fields(struct)})
    if unknown:
        raise TypeError(f"{name}: {struct.__name__} has no field {', '.join(unknown)}")
    fields = []
    for field in msgspec.structs.fields(struct):
        if field.default is not msgspec.NODEFAULT:
            spec = msgspec.field(default=field.default, name=field.encode_name)
        elif field.default_factory is not msgspec.NODEFAULT:
            spec = msgspec.field(default_factory=field.default_factory, name=field.encode_name)
        else:
            spec = msgspec.field(name=field.encode_name)
        fields.append((field.name, retyped.get(field.name, field.type), spec))
    return msgspec.defstruct(name, fields, frozen=True, kw_only=True)


_EligibilityOnDisk = _read_side(Eligibility, "EligibilityOnDisk", criteria=tuple[_CriterionOnDisk, ...])
_PatientResultOnDisk = _read_side(PatientResult, "PatientResultOnDisk", eligibility=_EligibilityOnDisk)
_subject = msgspec.json.Decoder(_PatientResultOnDisk)
_header = msgspec.json.Decoder(ResultsHeader)
_cohort = msgspec.json.Decoder(CohortSummary)


@cache
def _value_decoder(criterion_id: str) -> msgspec.json.Decoder[CriterionValue]:
    return msgspec.json.Decoder(VALUE_TYPES.get(criterion_id, int | str | None))


_criterion_on_disk = msgspec.json.Decoder(_CriterionOnDisk)


def decode_criterion(raw: bytes) -> Criterion:
    """One criterion as results.json and candidates.ndjson hold it, its value typed by its id."""
    return _criterion(_criterion_on_disk.decode(raw), 0)


def _criterion(read: _CriterionOnDisk, n: int) -> Criterion:
    try:
        value = _value_decoder(read.id).decode(read.value)
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(f"{exc} - in `$.eligibility.criteria[{n}].value` ({read.id})") from None
    return Criterion(read.id, read.status, value, read.evidence, read.detail)


Typed = TypeVar("Typed", bound=msgspec.Struct)


def _typed(read: msgspec.Struct, struct: type[Typed], **typed: object) -> Typed:
    """``read``'s fields (a read-side type of ``struct``), with ``typed`` in place of those that needed a step.
    The read side's fields are ``struct``'s by construction (``_read_side``): the dict is only the hand-over."""
    return struct(**(msgspec.structs.asdict(read) | typed))


def decode_subject(raw: bytes | msgspec.Raw) -> PatientResult:
    """One subject of results.json (or one line of candidates.ndjson, or of a Spark ``subjects`` part)."""
    read = _subject.decode(raw)
    on_disk = getattr(read, "eligibility")  # noqa: B009 - a field of the read-side type built above
    criteria = tuple(_criterion(c, n) for n, c in enumerate(on_disk.criteria))
    eligibility = _typed(on_disk, Eligibility, criteria=criteria)
    return _typed(read, PatientResult, eligibility=eligibility)


def decode_header(raw: bytes) -> ResultsHeader:
    """results.json's header: everything before ``subjects``, as one JSON object."""
    return _header.decode(raw)


def decode_cohort(raw: bytes) -> CohortSummary:
    """results.json's ``cohort``."""
    return _cohort.decode(raw)


def split_whole(raw: bytes) -> tuple[ResultsHeader, list[msgspec.Raw], CohortSummary]:
    """A results.json read whole (one not laid out one subject per line, as evaluate writes it, but re-indented
    by hand, say): its header, its subjects still raw (``decode_subject`` each), its cohort."""
    parts = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    subjects, cohort = parts.pop("subjects", None), parts.pop("cohort", None)
    if subjects is None or cohort is None:
        raise msgspec.ValidationError("not an fhiradapter results file (no subjects/cohort)")
    header = b"{" + b",".join(msgspec.json.encode(k) + b":" + bytes(v) for k, v in parts.items()) + b"}"
    return decode_header(header), msgspec.json.decode(subjects, type=list[msgspec.Raw]), decode_cohort(cohort)


class RunRecord(msgspec.Struct, frozen=True):
    """``run/part-00000`` of a Spark ``--results-dir``: the header and cohort of results.json, and how many lines
    each folder of parts holds (so that a copy that stopped half way is told from a whole one)."""

    header: ResultsHeader
    cohort: CohortSummary
    lines: dict[str, int]


_run_record = msgspec.json.Decoder(RunRecord)


def decode_run_record(raw: bytes) -> RunRecord:
    return _run_record.decode(raw)


# --- clinical.ndjson (core/extract.py writes it, as the same types) ---------------------------------------

_extract = msgspec.json.Decoder(ClinicalExtract)


def decode_extract(raw: bytes) -> ClinicalExtract:
    """One line of clinical.ndjson (or of a Spark ``clinical`` part)."""
    return _extract.decode(raw)
