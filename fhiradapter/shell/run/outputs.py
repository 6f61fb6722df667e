"""Publishing the evaluate run's outputs: each file written beside its target, then renamed into place.

The workers leave their parts in the spill folder (per-patient blobs with an index); these functions join
them in patient order into results.json, clinical.ndjson, candidates.ndjson, rejects.ndjson, writeback.json
and writeback-plan.ndjson. A reader sees an old file or a new one, never a part. Each part is created afresh
(never through a link planted in the folder) with mode 0600: ``files``.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple

import msgspec
import orjson

from fhiradapter import __version__
from fhiradapter.core.extract import ClinicalExtract
from fhiradapter.core.fhir_out import encode
from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.results import CohortSummary, PatientResult, Population, ResultsHeader, to_json
from fhiradapter.core.review import PlanLine, by_patient, criteria_in_words, decode_plan_line, describe, plan_line
from fhiradapter.core.writeback import PlanEntry, bundle_entry, provenance_entry, resource_type, run_tag
from fhiradapter.shell.common.files import open_new, replace, write_new
from fhiradapter.shell.common.out_folder import write_manifest
from fhiradapter.shell.report.rows import ReportRow, decode_row, encode_row, report_row


def publish(tmp: Path, target: Path) -> None:
    """Rename a finished file over ``target``: readers see the old file or the new one, never a part."""
    replace(tmp, target)


def write_results(
    out: Path,
    spill: Path,
    reject_parts: list[Path],
    subject_index: list[tuple[str, str, int, int]],
    header: ResultsHeader,
    cohort: CohortSummary,
) -> None:
    """results.json (subjects sorted by patient) and rejects.ndjson, each written then renamed."""
    concatenate(reject_parts, out / "rejects.ndjson")
    tmp = out / "results.json.partial"
    handles: dict[str, BinaryIO] = {}
    try:
        with open_new(tmp) as fh:
            # One subject per line (still one JSON document): readable, and `export` streams it line by line.
            fh.write(to_json(header)[:-1] + b',"subjects":[\n')
            for n, (_pid, name, offset, length) in enumerate(sorted(subject_index)):
                if name not in handles:
                    handles[name] = (spill / name).open("rb")
                handles[name].seek(offset)
                fh.write((b",\n" if n else b"") + handles[name].read(length))
            fh.write(b'\n],"cohort":' + to_json(cohort) + b"}\n")
    finally:
        for h in handles.values():
            h.close()
    publish(tmp, out / "results.json")


def write_sorted_lines(
    target: Path, spill: Path, index: list[tuple[str, str, int, int]], keep: list[bytes] | None = None
) -> None:
    """One blob per line in patient order (the order of results.json), from the workers' spill files; each
    line also appended to ``keep`` when given."""
    handles: dict[str, BinaryIO] = {}
    tmp = target.with_name(target.name + ".partial")
    try:
        with open_new(tmp) as fh:
            for _pid, name, offset, length in sorted(index):
                if name not in handles:
                    handles[name] = (spill / name).open("rb")
                handles[name].seek(offset)
                line = handles[name].read(length)
                fh.write(line + b"\n")
                if keep is not None:
                    keep.append(line)
    finally:
        for h in handles.values():
            h.close()
    publish(tmp, target)


def concatenate(parts: list[Path], target: Path) -> None:
    """Join the workers' part files into ``target``, written beside it and renamed when complete."""
    tmp = target.with_name(target.name + ".partial")
    with open_new(tmp) as fh:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, fh)
    publish(tmp, target)


def iter_rows(paths: list[Path]) -> Iterator[ReportRow]:
    """The per-patient report rows the workers wrote, one at a time."""
    for path in paths:
        with path.open("rb") as fh:
            for line in fh:
                yield decode_row(line)


class Writeback(NamedTuple):
    """What a run wrote to writeback.json and writeback-plan.ndjson, handed in memory to a caller that pushes
    it at once (sync): the transaction Bundle and the plan's lines; the rest is read from the lines."""

    bundle: JsonObject  # the Bundle as written, read back: push sends it as it is
    plan_lines: list[PlanLine]  # writeback-plan.ndjson's lines, as written (a sync holds some for approval)

    @property
    def actions(self) -> Counter[str]:
        """The plan's entries per action."""
        return Counter(line.action for line in self.plan_lines)

    @property
    def changes(self) -> dict[str, dict[str, Counter[str]]]:
        """Per patient whose results are created or updated, how many of each kind (``{"update": {"response":
        2}}``)."""
        changes: dict[str, dict[str, Counter[str]]] = {}
        for line in self.plan_lines:
            if line.action != "unchanged":
                by_action = changes.setdefault(line.patient, {})
                by_action.setdefault(line.action, Counter())[line.kind] += 1
        return changes

    @property
    def in_words(self) -> dict[str, list[str]]:
        """Per patient whose results change, each change as a reviewer reads it."""
        return by_patient(self.plan_lines)


def write_writeback(
    out: Path,
    spill: Path,
    index: list[tuple[str, str, int, int, int]],
    plan_index: list[tuple[str, str, int, int]],
    header: ResultsHeader,
    keep: bool = False,
) -> Writeback | None:
    """writeback.json (a transaction Bundle, entries in patient order, Provenance last) and writeback-plan.ndjson;
    with ``keep``, also what they hold, as a :class:`Writeback`."""
    index = sorted(index)
    kept: list[bytes] = []  # with ``keep``: the Bundle's entries as written (a patient's, comma-separated)
    handles: dict[str, BinaryIO] = {}

    def read(name: str, offset: int, length: int) -> bytes:
        if name not in handles:
            handles[name] = (spill / name).open("rb")
        handles[name].seek(offset)
        return handles[name].read(length)

    tmp = out / "writeback.json.partial"
    try:
        targets = [
            t
            for _pid, name, offset, length, tail in index
            for t in read(name, offset + length, tail).decode().split("\n")
        ]
        with open_new(tmp) as fh:
            fh.write(b'{"resourceType":"Bundle","type":"transaction","entry":[')
            for n, (_pid, name, offset, length, _tail) in enumerate(index):
                entry = read(name, offset, length)
                fh.write((b"," if n else b"") + entry)
                if keep:
                    kept.append(entry)
            if targets:
                digest = hashlib.sha256("".join(f"{t}\n" for t in targets).encode())
                as_of = header.as_of.isoformat()
                provenance = provenance_entry(
                    targets,
                    adapter_version=__version__,
                    mappings=header.protocol,
                    as_of=as_of,
                    inputs=list(header.inputs),
                    recorded=datetime.now(UTC).isoformat(timespec="seconds"),
                    run=run_tag(digest.hexdigest(), as_of, header.protocol),
                )
                entry = encode(provenance)
                fh.write(b"," + entry)
                if keep:
                    kept.append(entry)
            fh.write(b"]}")
    finally:
        for h in handles.values():
            h.close()
    publish(tmp, out / "writeback.json")
    plan: list[bytes] | None = [] if keep else None
    write_sorted_lines(out / "writeback-plan.ndjson", spill, plan_index, plan)
    if plan is None:
        return None
    lines = [decode_plan_line(line) for blob in plan for line in blob.split(b"\n") if line]  # a blob: a patient's
    bundle: JsonObject = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [x for e in kept for x in orjson.loads(b"[" + e + b"]")],
    }
    return Writeback(bundle, lines)


@dataclass
class PartsIndex:
    """Where one writer's per-patient outputs lie in the spill folder (file, offset, length per patient)."""

    subjects: list[tuple[str, str, int, int]] = field(default_factory=list)
    clinical: list[tuple[str, str, int, int]] = field(default_factory=list)
    candidates: list[tuple[str, str, int, int]] = field(default_factory=list)  # screening candidates (§1)
    writeback: list[tuple[str, str, int, int, int]] = field(default_factory=list)  # entries, then targets
    plan: list[tuple[str, str, int, int]] = field(default_factory=list)  # each patient's plan lines
    report_rows: Path | None = None
    actions: Counter[str] = field(default_factory=Counter)  # write-back plan entries by action


class PatientParts:
    """One writer's share of the per-patient outputs, appended to part files in the spill folder: each
    patient's result (or a candidate's), clinical extract, report row, plan lines and write-back entries.
    ``write_results`` and its siblings join the parts of every writer in patient order. The local engine's
    workers and the Spark engine's driver both write through here."""

    def __init__(self, spill: Path, tag: str) -> None:
        self.spill = spill
        self.names = {k: f"{k}-{tag}.bin" for k in ("subjects", "clinical", "candidates", "writeback", "plan")}
        self.index = PartsIndex(report_rows=spill / f"report-rows-{tag}.ndjson")
        with contextlib.ExitStack() as opened:  # a file that cannot be opened closes those opened before it
            self._files: dict[str, BinaryIO] = {
                k: opened.enter_context((spill / name).open("wb")) for k, name in self.names.items()
            }
            self._report = opened.enter_context((spill / f"report-rows-{tag}.ndjson").open("wb"))
            self._open = opened.pop_all()

    def _append(self, kind: str, blob: bytes, index: list[tuple[str, str, int, int]], patient: str) -> None:
        fh = self._files[kind]
        index.append((patient, self.names[kind], fh.tell(), len(blob)))
        fh.write(blob)

    def add(self, result: PatientResult, plan: list[PlanEntry], extract: ClinicalExtract) -> None:
        """One patient's outputs. ``extract``: clinical.ndjson's line (read back as the same type by
        ``readback.decode_extract``)."""
        patient = result.patient
        if result.population == Population.CANDIDATE:  # reported apart, never in the study's figures
            self._append("candidates", to_json(result), self.index.candidates, patient)
        else:
            self._append("clinical", msgspec.json.encode(extract), self.index.clinical, patient)
            self._append("subjects", to_json(result), self.index.subjects, patient)
            self._report.write(encode_row(report_row(result)) + b"\n")
        entries, targets, lines = [], [], []
        words = criteria_in_words(result) if plan else {}
        for entry in plan:
            self.index.actions[entry.action] += 1
            # what it says, the rule, and for an update old -> new
            line = plan_line(patient, entry, resource_type(entry.resource), describe(entry, words))
            lines.append(msgspec.json.encode(line))
            bundled = bundle_entry(entry)
            if bundled is not None:
                entries.append(encode(bundled))
                targets.append(bundled.full_url)
        if lines:  # one line per plan entry; write_sorted_lines ends the last
            self._append("plan", b"\n".join(lines), self.index.plan, patient)
        if entries:  # the entries, then the Provenance targets they add, one after the other
            blob = b",".join(entries)
            tail = "\n".join(targets).encode()
            fh = self._files["writeback"]
            self.index.writeback.append((patient, self.names["writeback"], fh.tell(), len(blob), len(tail)))
            fh.write(blob + tail)

    def close(self) -> PartsIndex:
        """Close every part file (each one, even when another fails to flush: a full disk, say)."""
        self._open.close()
        return self.index


def write_held(folder: Path, bundle: JsonObject, plan_lines: list[PlanLine]) -> Path:
    """A sync's changes that wait for a person: a write-back of their own (Bundle, plan, manifest) in ``folder``,
    which `fhiradapter approve` reviews and `fhiradapter push` sends once approved."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("writeback.json", orjson.dumps(bundle)),
        ("writeback-plan.ndjson", b"".join(msgspec.json.encode(line) + b"\n" for line in plan_lines)),
    ):
        write_new(folder / name, data)  # mode 0600, never through a link
    write_manifest(folder, {"held_for_approval": True}, ["writeback.json", "writeback-plan.ndjson"])
    return folder
