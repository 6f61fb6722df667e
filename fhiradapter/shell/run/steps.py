"""The per-record and per-patient steps both engines share: map a record (or report its reject), keep the newest
copy of each resource, settle the study-wide resources, and evaluate one patient's group of records."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from fhiradapter.core import fhir_json
from fhiradapter.core.dedup import InputRecord, keep_newest, newer, superseded_reason, version_of
from fhiradapter.core.evaluate import CohortRow, EvaluationSettings, evaluate_patient
from fhiradapter.core.extract import ClinicalExtract, clinical_extract
from fhiradapter.core.fhir_types import Resource, resource_type
from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.mappers import MapContext, Record, map_resource
from fhiradapter.core.model import (
    AdverseEvent,
    Condition,
    Consent,
    EarlierResult,
    Exposure,
    Issue,
    Observed,
    PatientRecord,
    Person,
    StudySubject,
    SupportingResource,
)
from fhiradapter.core.protocol import ID_PATTERN, StudyKey, parse_identifier
from fhiradapter.core.results import PatientResult, Population
from fhiradapter.core.writeback import (
    Existing,
    PlanEntry,
    WritebackContext,
    plan_patient,
)
from fhiradapter.errors import ConfigError
from fhiradapter.shell.run.engine import RunStats
from fhiradapter.shell.run.readers import (
    MAX_RECORD_BYTES,
    RawRecord,
    Reject,
    Task,
    read_file,
)
from fhiradapter.shell.run.spill import RejectSink

CHUNK_BYTES = 16 * 1024 * 1024  # smallest share of an NDJSON file given to one worker


GLOBAL_TYPES = frozenset({"Medication", "ResearchStudy"})


SUBJECT_KEYS = ("subject", "patient", "individual")


# One evaluated patient, as ``evaluate_group`` yields it: the result, the cohort row, the write-back plan, and the
# clinical extract (clinical.ndjson's line).
PatientOutputs = tuple[PatientResult, CohortRow, list[PlanEntry], ClinicalExtract]


def _patient_key(res: Resource | JsonObject, record: Record | None) -> str | None:
    """The patient whose record this is: the mapped record's, else the one its JSON names (a reject's)."""
    if isinstance(record, Person):
        return record.ref
    patient = getattr(record, "patient", None)
    if isinstance(patient, str):
        return patient
    for key in SUBJECT_KEYS:
        if isinstance(res, dict):
            element = res.get(key)
            target = fhir_json.normalise_reference(element.get("reference")) if isinstance(element, dict) else None
        else:
            target = fhir_json.reference_of(getattr(res, key, None))
        if target and target.startswith("Patient/"):
            return target
    return None


def _reject_entry(
    origin: tuple[str, str],
    ref: str | None,
    code: str,
    reason: str,
    unmapped: str | None = None,
    path: str | None = None,
) -> Reject:
    rtype, _, rid = (ref or "").partition("/")
    return Reject(origin[0], origin[1], rtype or None, rid or None, code, reason, path, unmapped)


def study_key(study: str | None) -> StudyKey | None:
    """``--study``: an id, or an identifier ``SYSTEM|VALUE`` (docs/protocol.md §1); None: the mappings' study."""
    if not study:
        return None
    study = study.removeprefix("ResearchStudy/")  # the reference as a ResearchSubject writes it names the same
    if "|" in study:
        try:
            return StudyKey(None, frozenset({parse_identifier(study, "--study")}))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if not re.fullmatch(ID_PATTERN.strip("^$"), study):
        raise ConfigError(f"--study {study!r}: not a FHIR id ([A-Za-z0-9-.], at most 64) nor SYSTEM|VALUE")
    return StudyKey(study)


def settle_globals(
    items: Iterable[InputRecord], unread: list[Reject], rejects: RejectSink, stats: RunStats
) -> dict[str, Record | None]:
    """The study-wide resources (Medication, ResearchStudy), one copy each, and the files not read.

    Returns the Medications by reference, which every patient's exposures may name.
    """
    for file_not_read in unread:  # files of the input folders not read: listed, with why (never unseen)
        rejects.reject(file_not_read)
        stats.not_read.append(file_not_read.file)  # a file, not a record: counted apart from the records
    kept: dict[str, InputRecord] = {}
    for item in items:
        keep_newest_global(kept, item, rejects, stats)
    for item in kept.values():
        if item.record is None:
            _reject_unmapped(item, rejects, stats)
    return {ref: item.record for ref, item in kept.items() if isinstance(item.record, SupportingResource)}


def read_task(
    rank: int,
    task: Task,
    ctx: MapContext,
    rejects: RejectSink,
    stats: RunStats,
    progress: Callable[[int], None] | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[InputRecord]:
    """Read and map one task (a file, or a line-aligned share of one): every record mapped, or rejected.

    ``rank`` is the task's place in input order: with the line's place in the task it orders copies of a
    resource by where they were seen (the "last seen" tie-breaker of dedup). The local engine and the Spark
    engine both read through here.
    """
    records = read_file(task.path, progress, task, max_record_bytes)
    for seq, raw in enumerate(records, rank * 1_000_000_000):
        item = map_raw(raw, seq, ctx, rejects, stats)
        if item is not None:
            yield item


def map_raw(
    raw: RawRecord | Reject, seq: int, ctx: MapContext, rejects: RejectSink, stats: RunStats
) -> InputRecord | None:
    """One record as a reader gave it, mapped (or, a reader's reject, reported and counted). ``seq`` is its
    place in the input, the last-seen tie-breaker."""
    if isinstance(raw, Reject):
        kind = raw.resource_type or "(not a resource)"
        stats.read[kind] += 1
        stats.rejected[kind] += 1
        stats.reasons[raw.code] += 1
        rejects.reject(raw)
        return None
    res = raw.resource
    if isinstance(res, dict):
        rtype, rid = res["resourceType"], res["id"]
    else:
        rtype, rid = resource_type(res), res.id
    ref = f"{rtype}/{rid}"
    stats.read[rtype] += 1
    record, issues = map_resource(res, ref, raw.origin, ctx, raw.aliases)
    return InputRecord(ref, version_of(res), seq, record, issues, raw.origin, _patient_key(res, record))


def writeback_context(settings: EvaluationSettings, writeback: bool) -> WritebackContext | None:
    """What the write-back plan needs to know of the run (None: no write-back)."""
    return WritebackContext(settings.mappings.protocol.protocol.id, settings.study_of_run) if writeback else None


def evaluate_group(
    items: list[InputRecord],
    settings: EvaluationSettings,
    medications: Mapping[str, Record | None],
    rejects: RejectSink,
    stats: RunStats,
    wctx: WritebackContext | None,
    enrol: bool = False,
) -> Iterator[PatientOutputs]:
    pending: dict[str, list[InputRecord]] = {}
    for item in _dedup(items, rejects, stats):
        record = item.record
        if record is None:
            _reject_unmapped(item, rejects, stats)
            continue
        if isinstance(record, Exposure) and record.med_ref is not None:
            resolved = _resolve_medication(record, medications)
            if not isinstance(resolved, Exposure):
                _reject(item, rejects, stats, *resolved)
                continue
            item = item._replace(record=resolved)
        patient = item.patient
        assert patient is not None  # noqa: S101 - every mapped record names its patient
        pending.setdefault(patient, []).append(item)
    for patient in sorted(pending):
        group = pending.pop(patient)
        if not any(isinstance(i.record, Person) for i in group):
            for item in group:
                _reject(item, rejects, stats, "unknown-subject", f"{patient} is not in the input (no Patient resource)")
            continue
        rec = PatientRecord(patient)
        issues: list[Issue] = []
        origins: dict[str, tuple[str, str]] = {}
        for item in group:
            _add(rec, item.record)
            issues.extend(item.issues)
            origins[item.ref] = item.origin
        evaluation = evaluate_patient(rec, settings, issues)
        for u in evaluation.unused:
            rejects.reject(_reject_entry(origins[u.ref], u.ref, u.code, u.message))
            stats.rejected[u.ref.split("/", 1)[0]] += 1
            stats.reasons[u.code] += 1
        result, row = evaluation.result, evaluation.row
        if result is None or row is None:  # outside the study population (docs/protocol.md §1)
            code, reason = evaluation.skipped or ("unused", "not evaluated")
            reported = {u.ref for u in evaluation.unused}
            for item in group:
                if item.ref not in reported:
                    _reject(item, rejects, stats, code, reason)
            stats.population[code] += 1
            continue
        candidate = result.population == Population.CANDIDATE
        stats.population["candidates" if candidate else "subjects"] += 1
        stats.patients += 1
        plan: list[PlanEntry] = []
        if wctx is not None and (not candidate or enrol):  # a candidate is enrolled only when asked
            chosen = next((x for x in rec.subjects if x.ref == result.research_subject), None)
            existing = [Existing(w.ref, w.identifier, w.content_hash, w.version, w.content) for w in rec.written]
            target = (chosen.ref, chosen.version, chosen.raw or {}) if chosen else None
            plan = plan_patient(result, existing, target, wctx)
        extract = clinical_extract(rec, settings.as_of, {u.ref for u in evaluation.unused})
        yield result, row, plan, extract


def keep_newest_global(kept: dict[str, InputRecord], item: InputRecord, rejects: RejectSink, stats: RunStats) -> None:
    """Keep the newer of ``item`` and the copy already kept under its reference; reject the other."""
    old = kept.get(item.ref)
    if old is not None and newer(old, item):
        old, item = item, old
    kept[item.ref] = item
    if old is not None:
        _reject(old, rejects, stats, "duplicate-superseded", superseded_reason(old, item))


def reject_superseded(older: InputRecord, kept: InputRecord, rejects: RejectSink, stats: RunStats) -> None:
    """Reject a copy another copy of the same resource supersedes, saying which rule decided."""
    _reject(older, rejects, stats, "duplicate-superseded", superseded_reason(older, kept))


def _dedup(items: list[InputRecord], writer: RejectSink, stats: RunStats) -> list[InputRecord]:
    """The copy of each resource that counts (docs/protocol.md §4); the others are rejected, saying why."""
    winners: list[InputRecord] = []
    for item, kept in keep_newest(items):
        if kept is None:
            winners.append(item)
        else:
            _reject(item, writer, stats, "duplicate-superseded", superseded_reason(item, kept))
    return winners


def _resolve_medication(med: Exposure, medications: Mapping[str, Record | None]) -> Exposure | tuple[str, str]:
    target = medications.get(med.med_ref or "")
    if target is None:
        return "bad-reference", f"medicationReference {med.med_ref} is not in the input"
    drug = target.code if isinstance(target, SupportingResource) else None
    if drug is None:
        return "unmapped-code", f"{med.med_ref} is not a protocol drug in mappings/codes.toml"
    return med._replace(drug=drug, med_ref=None)


def _reject_unmapped(item: InputRecord, writer: RejectSink, stats: RunStats) -> None:
    """Reject a record the mapper could not use, for the reason of its last issue (all its issues in words);
    an unmapped code is named in the reject and counted for the run summary's ``unmapped_codes``."""
    issues = item.issues
    if not issues:
        _reject(item, writer, stats, "unused", "not used")
        return
    last = issues[-1]
    # The element the reject is about is a field of its own; other issues of the record keep theirs in the text.
    reason = "; ".join(
        _without_path(i.message, i.path) if i.path == last.path else f"{i.path}: {_without_path(i.message, i.path)}"
        for i in issues
    )
    _reject(item, writer, stats, last.code, reason, last.source_code, last.path)
    if last.source_code is not None:
        stats.unmapped[(f"{item.ref.split('/', 1)[0]}.{last.path}", last.source_code)] += 1


def _without_path(message: str, path: str) -> str:
    return message.removeprefix(f"{path}: ") if path else message


def _reject(
    item: InputRecord,
    writer: RejectSink,
    stats: RunStats,
    code: str,
    reason: str,
    unmapped: str | None = None,
    path: str | None = None,
) -> None:
    writer.reject(_reject_entry(item.origin, item.ref, code, reason, unmapped, path))
    stats.rejected[item.ref.split("/", 1)[0]] += 1
    stats.reasons[code] += 1


def _add(rec: PatientRecord, record: Record | None) -> None:
    if isinstance(record, Person):
        rec.person = record
    elif isinstance(record, Observed):
        rec.observations.append(record)
    elif isinstance(record, Exposure):
        rec.meds.append(record)
    elif isinstance(record, AdverseEvent):
        rec.adverse_events.append(record)
    elif isinstance(record, Condition):
        rec.conditions.append(record)
    elif isinstance(record, Consent):
        rec.consents.append(record)
    elif isinstance(record, StudySubject):
        rec.subjects.append(record)
    elif isinstance(record, EarlierResult):
        rec.written.append(record)
    elif isinstance(record, SupportingResource):
        rec.others.append(record)
