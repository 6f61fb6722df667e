"""The evaluate pipeline: read -> map -> group by patient (spilling to disk) -> rules -> write results.

Memory is bounded by one bucket of patients, not by the input: pass 1 maps every resource to a compact
record and appends it to one of N bucket files chosen by a hash of its patient; pass 2 loads one bucket at a
time, keeps the newest copy of each resource, groups by patient and evaluates. Small inputs use one
in-memory bucket. Every input record ends up used or in ``rejects.ndjson``.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from fhiradapter import __version__
from fhiradapter.core import fhir_json as fj
from fhiradapter.core.evaluate import CohortRow, Settings, evaluate_patient, summarise_cohort
from fhiradapter.core.mappers import MapContext, Record, map_resource
from fhiradapter.core.model import (
    AE,
    Cond,
    ConsentRec,
    Issue,
    Med,
    Obs,
    Other,
    PatientRecord,
    Person,
    SubjectRec,
)
from fhiradapter.core.protocol import Mappings
from fhiradapter.shell.mappings_io import ucum_factor
from fhiradapter.shell.readers import Reject, expand_inputs, read_file

BUCKET_BYTES = 48 * 1024 * 1024  # input bytes per bucket: about 50 MB of records held at once
FLUSH_EVERY = 2000  # records buffered per bucket before they are pickled to its file
GLOBAL_TYPES = frozenset({"Medication", "ResearchStudy"})
SUBJECT_KEYS = ("subject", "patient", "individual")
SUPERSEDED = "an older copy of a resource that appears again (kept: the newest version)"

# One input record on its way through the passes:
# (ref, version key, sequence, record or None, issues, origin, patient)
Item = tuple[str, tuple[int, str, str], int, Record | None, list[Issue], tuple[str, str], str | None]


@dataclass
class RunStats:
    read: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    patients: int = 0
    files: int = 0
    input_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        types = sorted(set(self.read) | set(self.rejected))
        return {
            "files": self.files, "input_bytes": self.input_bytes, "patients": self.patients,
            "records_read": sum(self.read.values()), "records_used": sum(self.read.values())
            - sum(self.rejected.values()), "records_rejected": sum(self.rejected.values()),
            "by_type": {t: {"read": self.read[t], "used": self.read[t] - self.rejected[t],
                            "rejected": self.rejected[t]} for t in types},
            "rejects_by_reason": dict(sorted(self.reasons.items())),
        }


class _Buckets:
    """N append-only pickle files (or one in-memory list when N == 1)."""

    def __init__(self, count: int, folder: Path | None) -> None:
        self.count = count
        self._buffers: list[list[Item]] = [[] for _ in range(count)]
        self._files: list[BinaryIO] = []
        if count > 1 and folder is not None:
            self._files = [(folder / f"bucket-{i:04d}.pkl").open("w+b") for i in range(count)]

    def add(self, key: str, item: Item) -> None:
        i = zlib.crc32(key.encode()) % self.count if self.count > 1 else 0
        buf = self._buffers[i]
        buf.append(item)
        if self._files and len(buf) >= FLUSH_EVERY:
            pickle.dump(buf, self._files[i], protocol=pickle.HIGHEST_PROTOCOL)
            self._buffers[i] = []

    def drain(self) -> Iterator[list[Item]]:
        for i in range(self.count):
            if not self._files:
                items, self._buffers[i] = self._buffers[i], []
                yield items
                continue
            fh = self._files[i]
            items = []
            fh.seek(0)
            with contextlib.suppress(EOFError):
                while True:
                    items.extend(pickle.load(fh))  # noqa: S301 - our own temporary file
            items.extend(self._buffers[i])
            self._buffers[i] = []
            fh.close()
            yield items

    def close(self) -> None:
        for fh in self._files:
            if not fh.closed:
                fh.close()


class Writer:
    """results.json (subjects sorted by patient), rejects.ndjson and summary.json in the out folder."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.rejects = (out / "rejects.ndjson").open("wb")
        self._subjects = tempfile.TemporaryFile(dir=out)  # noqa: SIM115 - closed in finish()
        self._index: list[tuple[str, int, int]] = []

    def reject(self, entry: dict[str, Any]) -> None:
        self.rejects.write(orjson.dumps(entry) + b"\n")

    def subject(self, result: dict[str, Any]) -> None:
        blob = orjson.dumps(result)
        self._index.append((result["patient"], self._subjects.tell(), len(blob)))
        self._subjects.write(blob)

    def close(self) -> None:
        """Release the files without writing results (after a failure)."""
        for fh in (self.rejects, self._subjects):
            if not fh.closed:
                fh.close()

    def finish(self, header: dict[str, Any], cohort: dict[str, Any], summary: dict[str, Any]) -> None:
        self.rejects.close()
        tmp = self.out / "results.json.partial"
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(header)[:-1] + b',"subjects":[')
            for n, (_pid, offset, length) in enumerate(sorted(self._index)):
                self._subjects.seek(offset)
                fh.write((b"," if n else b"") + self._subjects.read(length))
            fh.write(b'],"cohort":' + orjson.dumps(cohort) + b"}")
        self._subjects.close()
        tmp.replace(self.out / "results.json")
        (self.out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def _patient_key(res: dict[str, Any], record: Record | None) -> str | None:
    if isinstance(record, Person):
        return record.ref
    patient = getattr(record, "patient", None)
    if isinstance(patient, str):
        return patient
    for key in SUBJECT_KEYS:
        target = fj.reference_of(res.get(key))
        if target and target.startswith("Patient/"):
            return target
    return None


def _reject_entry(origin: tuple[str, str], ref: str | None, code: str, reason: str) -> dict[str, Any]:
    rtype, _, rid = (ref or "").partition("/")
    return {"file": origin[0], "locator": origin[1], "resourceType": rtype or None, "id": rid or None,
            "code": code, "reason": reason}


def run_evaluate(inputs: list[Path], out: Path, as_of: date, mappings: Mappings,
                 mappings_identity: dict[str, Any],
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the whole job; returns the run summary (also written to ``summary.json``)."""
    files = expand_inputs(inputs)
    stats = RunStats(files=len(files))
    stats.input_bytes = sum(f.stat().st_size * (5 if f.name.endswith(".gz") else 1) for f in files)
    count = max(1, -(-stats.input_bytes // BUCKET_BYTES))
    ctx = MapContext(mappings, ucum_factor)
    writer = Writer(out)
    globals_: dict[str, Item] = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many small long-lived objects: generational GC only costs time here
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".spill-") as spill:
            buckets = _Buckets(count, Path(spill))
            try:
                _pass_one(files, ctx, buckets, globals_, writer, stats, progress)
                rows = _pass_two(buckets, globals_, Settings(as_of, mappings), writer, stats)
            finally:
                buckets.close()
        cohort = summarise_cohort(rows)
        summary = stats.as_dict()
        header = {"as_of": as_of.isoformat(), "protocol": mappings_identity,
                  "adapter": {"name": "fhiradapter", "version": __version__},
                  "inputs": [str(f) for f in files], "run_summary": summary}
        writer.finish(header, cohort, summary)
    finally:
        writer.close()
        if gc_was_enabled:
            gc.enable()
    return summary


def _pass_one(files: list[Path], ctx: MapContext, buckets: _Buckets, globals_: dict[str, Item],
              writer: Writer, stats: RunStats, progress: Callable[[int], None] | None) -> None:
    seq = 0
    for path in files:
        for raw in read_file(path, progress):
            seq += 1
            if isinstance(raw, Reject):
                kind = raw.resource_type or "(not a resource)"
                stats.read[kind] += 1
                stats.rejected[kind] += 1
                stats.reasons[raw.code] += 1
                writer.reject(raw.as_dict())
                continue
            res = raw.resource
            rtype = res["resourceType"]
            ref = f"{rtype}/{res['id']}"
            stats.read[rtype] += 1
            record, issues = map_resource(res, ref, raw.origin, ctx, raw.aliases)
            item: Item = (ref, fj.version_key(res), seq, record, issues, raw.origin,
                          _patient_key(res, record))
            if rtype not in GLOBAL_TYPES:
                buckets.add(item[6] or ref, item)
                continue
            # Study-wide resources (few) are deduplicated at once and kept in memory.
            old = globals_.get(ref)
            if old is not None and (old[1], old[2]) > (item[1], item[2]):
                old, item = item, old
            globals_[ref] = item
            if old is not None:
                _reject(old, writer, stats, "duplicate-superseded", SUPERSEDED)


def _pass_two(buckets: _Buckets, globals_: dict[str, Item], settings: Settings, writer: Writer,
              stats: RunStats) -> list[CohortRow]:
    rows: list[CohortRow] = []
    medications = {ref: item[3] for ref, item in globals_.items() if isinstance(item[3], Other)}
    for ref, item in globals_.items():
        if item[3] is None:
            _reject(item, writer, stats, *_first_issue(item))
    for items in buckets.drain():
        winners = _dedup(items, writer, stats)
        patients: dict[str, PatientRecord] = {}
        pending: dict[str, list[Item]] = {}
        for item in winners:
            record = item[3]
            if record is None:
                _reject(item, writer, stats, *_first_issue(item))
                continue
            if isinstance(record, Med) and record.med_ref is not None:
                resolved = _resolve_medication(record, medications)
                if not isinstance(resolved, Med):
                    _reject(item, writer, stats, *resolved)
                    continue
                item = (*item[:3], resolved, *item[4:])  # type: ignore[assignment]
            patient = item[6]
            assert patient is not None  # noqa: S101 - every mapped record names its patient
            pending.setdefault(patient, []).append(item)
        for patient in sorted(pending):
            group = pending.pop(patient)
            person = next((i for i in group if isinstance(i[3], Person)), None)
            if person is None:
                for item in group:
                    _reject(item, writer, stats, "unknown-subject",
                            f"{patient} is not in the input (no Patient resource)")
                continue
            rec = patients.setdefault(patient, PatientRecord(patient))
            issues: list[Issue] = []
            origins: dict[str, tuple[str, str]] = {}
            for item in group:
                _add(rec, item[3])
                issues.extend(item[4])
                origins[item[0]] = item[5]
            result, unused, row = evaluate_patient(rec, settings, issues)
            for u in unused:
                entry = _reject_entry(origins[u.ref], u.ref, u.code, u.message)
                writer.reject(entry)
                stats.rejected[u.ref.split("/", 1)[0]] += 1
                stats.reasons[u.code] += 1
            writer.subject(result)
            rows.append(row)
            stats.patients += 1
            del patients[patient]
    return rows


def _dedup(items: list[Item], writer: Writer, stats: RunStats) -> list[Item]:
    """Keep the newest copy of each resource (versionId, then lastUpdated, then last seen)."""
    items.sort(key=lambda i: (i[0], i[1], i[2]))
    winners: list[Item] = []
    for n, item in enumerate(items):
        if n + 1 < len(items) and items[n + 1][0] == item[0]:
            _reject(item, writer, stats, "duplicate-superseded", SUPERSEDED)
        else:
            winners.append(item)
    return winners


def _resolve_medication(med: Med, medications: dict[str, Record | None]) -> Med | tuple[str, str]:
    target = medications.get(med.med_ref or "")
    if target is None:
        return "bad-reference", f"medicationReference {med.med_ref} is not in the input"
    drug = target.code if isinstance(target, Other) else None
    if drug is None:
        return "unmapped-code", f"{med.med_ref} is not a protocol drug in mappings/codes.toml"
    return med._replace(drug=drug, med_ref=None)


def _first_issue(item: Item) -> tuple[str, str]:
    if item[4]:
        return item[4][-1].code, "; ".join(
            i.message if i.message.startswith(i.path) else f"{i.path}: {i.message}" for i in item[4])
    return "unused", "not used"


def _reject(item: Item, writer: Writer, stats: RunStats, code: str, reason: str) -> None:
    writer.reject(_reject_entry(item[5], item[0], code, reason))
    stats.rejected[item[0].split("/", 1)[0]] += 1
    stats.reasons[code] += 1


def _add(rec: PatientRecord, record: Record | None) -> None:
    if isinstance(record, Person):
        rec.person = record
    elif isinstance(record, Obs):
        rec.observations.append(record)
    elif isinstance(record, Med):
        rec.meds.append(record)
    elif isinstance(record, AE):
        rec.adverse_events.append(record)
    elif isinstance(record, Cond):
        rec.conditions.append(record)
    elif isinstance(record, ConsentRec):
        rec.consents.append(record)
    elif isinstance(record, SubjectRec):
        rec.subjects.append(record)
    elif isinstance(record, Other):
        rec.others.append(record)

