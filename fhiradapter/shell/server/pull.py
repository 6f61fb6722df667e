"""Pull a study's data from a FHIR server into NDJSON files (``push.py`` writes results back).

``pull``: the study (by id, or ``system|value`` identifier), its ResearchSubjects, then per patient the
Patient and every resource type the protocol reads, and the separate Medications the MedicationStatements
reference as they are found: one queue of single requests, ``concurrency`` at a time. Files are written as
``<Type>.ndjson`` in a folder beside ``out``, with ``pull-manifest.json`` (server, study, counts, ``--since``),
which replaces ``out`` whole when the pull is complete. ``fhiradapter evaluate`` reads the folder as it reads
any export.

The folder itself (claiming it, the NDJSON files, the manifest) is ``pull_folder``'s. What the server sends is
JSON (``JsonObject``), kept as it came: it is written to NDJSON or the store untouched, and decoded into typed
values only when evaluate reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from fhiradapter.core.json_types import JsonObject, JsonValue, items, member, text
from fhiradapter.errors import ConfigError, ServerError, ServerRequest
from fhiradapter.shell.server.fhir_client import Capability, FhirClient, unusable
from fhiradapter.shell.server.pull_folder import (
    NdjsonSink,
    claim_folder,
    discard,
    finish_folder,
    first_few,
    pull_target,
    start_folder,
)

# What evaluate reads per patient, and the search parameter naming the patient for each type.
PATIENT_TYPES: list[tuple[str, str]] = [
    ("Observation", "subject"),
    ("MedicationStatement", "subject"),
    ("AdverseEvent", "subject"),
    ("Condition", "subject"),
    ("Consent", "patient"),
    ("BodyStructure", "patient"),
]


@dataclass
class PullSummary:
    study: str
    patients: int = 0
    resources: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    files: list[Path] = field(default_factory=list)
    patient_refs: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # an earlier pull's files this one removed
    per_search: int = 1  # patients asked for in one search
    split: int = 0  # searches for several patients whose pages ran on, read patient by patient instead


class Sink(Protocol):
    """Where pulled resources go: NDJSON files (``pull``) or the sync store (``sync``)."""

    counts: Counter[str]

    def add(self, resource: JsonObject) -> None: ...


async def resolve_study(client: FhirClient, study: str) -> JsonObject:
    """The ResearchStudy named by id, or by ``system|value`` identifier (exactly one must match)."""
    if "|" in study:
        wanted = study.split("|", 1)
        asked = ServerRequest("GET", "ResearchStudy")  # a search by identifier (its value is in the message, not here)
        try:
            found = [r async for r in client.search("ResearchStudy", [("identifier", study)])]
        except ServerError as exc:  # no identifier search here: the studies are few, read them all
            if exc.status is None or not 400 <= exc.status < 500:
                raise
            found = [r async for r in client.search("ResearchStudy", [])]
        # Filtered here too: a server that ignores the parameter must not make every study this one.
        found = [r for r in found if tuple(wanted) in study_identifiers(r)]
        if len(found) != 1:
            raise ServerError(
                f"--study {study}: {len(found)} ResearchStudy resources have this identifier; need one", request=asked
            )
        resource = found[0]
    else:
        asked = ServerRequest("GET", f"ResearchStudy/{study}")
        answer = await client.read("ResearchStudy", study)
        if answer is None:
            raise ServerError(f"--study {study}: ResearchStudy/{study} not found on the server", request=asked)
        resource = answer
    if resource.get("resourceType") != "ResearchStudy" or unusable(resource):  # it is kept, so checked as any entry
        raise ServerError(f"--study {study}: the server's answer is not a ResearchStudy with an id", request=asked)
    return resource


async def study_subjects(client: FhirClient, study_id: str, cap: Capability, warnings: list[str]) -> list[JsonObject]:
    """The study's ResearchSubjects: by the ``study`` search when the server has it, else filtered here."""
    ref = f"ResearchStudy/{study_id}"
    if "study" in cap.search_params.get("ResearchSubject", set()):
        return [r async for r in client.search("ResearchSubject", [("study", ref)])]
    warnings.append(
        "the server has no `study` search for ResearchSubject (CapabilityStatement): every ResearchSubject "
        "was read and filtered here"
    )
    return [
        r
        async for r in client.search("ResearchSubject", [])
        if str((r.get("study") or {}).get("reference", "")).removeprefix(client.base + "/") == ref
    ]


def study_identifiers(research_study: JsonObject) -> list[tuple[str, str]]:
    """The ResearchStudy's identifiers as ``(system, value)``: the names a logical reference may use."""
    found = []
    for ident in items(research_study, "identifier"):
        system, value = text(ident, "system"), text(ident, "value")
        if system is not None and value is not None:
            found.append((system, value))
    return found


def names_study(subject: JsonObject, ref: str, identifiers: list[tuple[str, str]], base: str) -> bool:
    """docs/protocol.md §1: a ResearchSubject's ``study`` names the study literally or logically."""
    study = member(subject, "study")
    if study is None:
        return False
    if str(study.get("reference", "")).removeprefix(base + "/") == ref:
        return True
    ident = member(study, "identifier")
    return ident is not None and (ident.get("system"), ident.get("value")) in identifiers


async def logical_subjects(
    client: FhirClient, research_study: JsonObject, cap: Capability, warnings: list[str], seen: set[str]
) -> list[JsonObject]:
    """The ResearchSubjects whose ``study`` is a logical reference to one of the study's identifiers (§1).

    Asked with the ``study:identifier`` search; a server that refuses the modifier (4xx) has every
    ResearchSubject read and filtered here, with a warning. What comes back is filtered here too, so a server
    that ignores the modifier adds nobody. ``seen``: ids already found by the literal reference.
    """
    identifiers = study_identifiers(research_study)
    if not identifiers:
        return []
    ref = f"ResearchStudy/{research_study['id']}"
    found: list[JsonObject] | None = None  # None: not asked (no study search offered), or refused
    if "study" in cap.search_params.get("ResearchSubject", set()):
        found = []
        try:
            for system, value in identifiers:
                query = [("study:identifier", f"{system}|{value}")]
                found += [r async for r in client.search("ResearchSubject", query)]
        except ServerError as exc:
            if exc.status is None or not 400 <= exc.status < 500:
                raise
            found = None
    if found is None:
        warnings.append(
            "the server has no `study:identifier` search for ResearchSubject: every ResearchSubject was read "
            "and those naming the study by identifier kept here"
        )
        found = [r async for r in client.search("ResearchSubject", [])]
    out: list[JsonObject] = []
    for subject in found:
        rid = str(subject.get("id"))
        if rid not in seen and names_study(subject, ref, identifiers, client.base):
            seen.add(rid)
            out.append(subject)
    return out


async def pull(
    client: FhirClient,
    study: str,
    out: Path,
    since: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    per_search: int | None = None,
) -> PullSummary:
    """Pull the study's data into NDJSON files in ``out``: written beside it, put in place whole when complete."""
    out = pull_target(out)
    earlier = claim_folder(out)
    cap = await client.capabilities()
    work = start_folder(out)
    writer = NdjsonSink(work)
    complete = False
    try:
        summary = await pull_into(
            client, cap, study, writer, since, progress=progress, on_total=on_total, per_search=per_search
        )
        complete = True
    finally:
        files = writer.close(complete)
        if not complete:
            discard(work)  # nothing of an unfinished pull is in place: ``out`` is as it was
    manifest = {
        "server": client.base,
        "study": summary.study,
        "since": since,
        "patients": summary.patients,
        "patients_per_search": summary.per_search,
        "resources": dict(sorted(writer.counts.items())),
        "warnings": summary.warnings,
        "fhir_version": cap.fhir_version,
        "software": cap.software,
    }
    summary.replaced = finish_folder(out, work, manifest, earlier, files)
    summary.files = [out / p.name for p in files]
    return summary


async def pull_into(
    client: FhirClient,
    cap: Capability,
    study: str,
    sink: Sink,
    since: str | None = None,
    only: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    per_search: int | None = None,
) -> PullSummary:
    """The study, its subjects, and per patient every type evaluate reads, into ``sink``.

    ``since`` (an instant) limits the per-patient searches to ``_lastUpdated=gt``; ``only`` limits them to
    those patients (a re-pull after a conflict). The study and its subjects are always read whole.
    ``per_search`` > 1 asks for that many patients in one search (``subject=Patient/a,Patient/b,...``): far
    fewer requests when little has changed, at the cost of larger pages; None is ``patients_per_search``'s
    choice.
    """
    if per_search is None:
        per_search = patients_per_search(since)
    if per_search < 1:
        raise ConfigError("patients per search must be at least 1")
    summary = PullSummary(study, per_search=per_search)
    research_study, subjects = await _study_and_subjects(client, cap, study, summary.warnings)
    summary.study = f"ResearchStudy/{research_study['id']}"
    sink.add(research_study)
    patients = _subjects_into(sink, subjects, client.base, summary)
    todo = [p for p in patients if only is None or p in only]
    if on_total:
        on_total(len(todo))
    per_patient, scanned = _search_plan(cap)
    if scanned:
        summary.warnings.append(
            f"no patient search for {', '.join(scanned)} in the server's CapabilityStatement: "
            "each was read whole and filtered to the study's patients here"
        )
    queue = _PullQueue(client, sink, since, set(todo), summary, progress)
    queue.plan(todo, per_search, per_patient, scanned)
    await queue.run()
    if client.skipped:
        shown = first_few(client.skipped, sep="; ")
        summary.warnings.append(f"{len(client.skipped)} search entry(ies) unusable, skipped: {shown}")
    summary.resources = Counter(sink.counts)
    summary.requests, summary.retries = client.requests, client.retries
    return summary


async def _study_and_subjects(
    client: FhirClient, cap: Capability, study: str, warnings: list[str]
) -> tuple[JsonObject, list[JsonObject]]:
    """The ResearchStudy and its ResearchSubjects, those naming it by reference and those naming it by
    identifier."""
    if "|" in study:  # an identifier: the id is known only once the study is found
        research_study = await resolve_study(client, study)
        subjects = await study_subjects(client, str(research_study["id"]), cap, warnings)
    else:  # an id: the study and its subjects are read at once (one round trip fewer)
        try:
            async with asyncio.TaskGroup() as group:  # a missing study cancels the subjects' search
                found = group.create_task(resolve_study(client, study))
                listed = group.create_task(study_subjects(client, study, cap, warnings))
        except ExceptionGroup as errors:
            raise errors.exceptions[0] from None
        research_study, subjects = found.result(), listed.result()
    subjects += await logical_subjects(client, research_study, cap, warnings, {str(r.get("id")) for r in subjects})
    return research_study, subjects


def _subjects_into(sink: Sink, subjects: list[JsonObject], base: str, summary: PullSummary) -> list[str]:
    """Each subject into ``sink``; the patients they name (``Patient/id``, in order, once each), also kept in the
    summary; a subject that names no Patient on this server is a warning."""
    patients: list[str] = []
    nobody: list[str] = []
    for subject in subjects:
        sink.add(subject)
        ref = _reference(subject.get("individual"), base)
        if not (ref and ref.startswith("Patient/")):
            nobody.append(f"ResearchSubject/{subject.get('id')}")
        elif ref not in patients:
            patients.append(ref)
    if nobody:
        shown = first_few(nobody, 5)
        summary.warnings.append(f"{len(nobody)} subject(s) name no Patient on this server (individual): {shown}")
    if not patients:
        summary.warnings.append(f"{summary.study} has no subject naming a Patient: there is nothing to evaluate")
    summary.patients = len(patients)
    summary.patient_refs = patients
    return patients


Job = Callable[[], Awaitable[None]]


class _PullQueue:
    """One queue of single requests (not of patients), taken by ``concurrency`` workers: every slot stays busy
    to the last request, a patient's searches of different cost interleave with other patients' instead of
    arriving at the server together, and the types read whole and the Medications run alongside."""

    def __init__(
        self,
        client: FhirClient,
        sink: Sink,
        since: str | None,
        wanted: set[str],
        summary: PullSummary,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.client, self.sink, self.since, self.wanted = client, sink, since, wanted
        self.summary, self.progress = summary, progress
        self.extra = [("_lastUpdated", f"gt{since}")] if since else []
        self.medications: set[str] = set()
        self.jobs: asyncio.Queue[Job] = asyncio.Queue()

    def plan(self, todo: list[str], per_search: int, per_patient: list[tuple[str, str]], scanned: list[str]) -> None:
        """Queue the scans of the types read whole, then each batch of ``per_search`` patients' searches."""
        extra = self.extra
        for rtype in scanned:  # first: a scan may run to many pages
            self.jobs.put_nowait(partial(self.scan, rtype))
        for start in range(0, len(todo), per_search):
            batch = todo[start : start + per_search]
            left = [1 + len(per_patient)]  # the batch's jobs not yet done (a split search adds its patients')
            patient_job: Job
            if not self.since and len(batch) == 1:
                patient_job = partial(self.read, batch[0])
            else:
                ids = ",".join(_or_value(p.split("/", 1)[1]) for p in batch)
                patient_job = partial(self.search, "Patient", [("_id", ids), *extra])
            batch_jobs = [patient_job] + [
                partial(self.search, rtype, [(param, _or_value(batch[0])), *extra])
                if len(batch) == 1
                else partial(self.grouped, rtype, param, batch, left)  # one search for the batch: values OR-ed
                for rtype, param in per_patient
            ]
            for job in batch_jobs:
                self.jobs.put_nowait(partial(self.done, job, left, len(batch)))

    async def run(self) -> None:
        """Take the queue's jobs with ``concurrency`` workers until it is empty; one failure stops them all."""

        async def worker() -> None:
            while True:
                job = await self.jobs.get()
                try:
                    await job()
                finally:
                    self.jobs.task_done()

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the other workers
                workers = [group.create_task(worker()) for _ in range(max(1, self.client.settings.concurrency))]
                await self.jobs.join()
                for task in workers:
                    task.cancel()
        except ExceptionGroup as errors:
            raise errors.exceptions[0] from None

    def add(self, resource: JsonObject) -> None:
        """Keep a resource; queue the read of a Medication it references, once."""
        self.sink.add(resource)
        ref = _reference(resource.get("medicationReference"), self.client.base)
        if ref and ref.startswith("Medication/") and ref not in self.medications:
            self.medications.add(ref)
            self.jobs.put_nowait(partial(self.read, ref))

    async def read(self, ref: str) -> None:
        rtype, rid = ref.split("/", 1)
        resource = await self.client.read(rtype, rid)
        if resource is None:
            return
        problem = unusable(resource)  # its type names a file: it must be the type asked for
        if problem or resource["resourceType"] != rtype:
            self.client.skipped.append(f"read {ref}: {problem or f'the answer is not a {rtype}'}")
            return
        self.add(resource)

    @contextlib.contextmanager
    def changes_refused(self) -> Iterator[None]:
        """Around a search with ``extra``: a 400 to it is often a server that cannot search by _lastUpdated."""
        try:
            yield
        except ServerError as exc:
            if self.since and exc.status == 400:
                raise ServerError(
                    f"{exc}. {SINCE_REFUSED}", exc.status, request=exc.request, issues=exc.issues
                ) from None
            raise

    async def scan(self, rtype: str) -> None:
        with self.changes_refused():
            async for r in self.client.search(rtype, self.extra):
                if patient_of(r, self.client.base) in self.wanted:
                    self.add(r)

    async def search(self, rtype: str, params: list[tuple[str, str]]) -> None:
        with self.changes_refused():
            async for r in self.client.search(rtype, params):
                self.add(r)

    async def done(self, job: Job, left: list[int], size: int) -> None:
        await job()
        left[0] -= 1
        if left[0] == 0 and self.progress:
            self.progress(size)

    async def grouped(self, rtype: str, param: str, batch: list[str], left: list[int]) -> None:
        """One search for the batch's patients; if its pages run on, each patient's own search instead.

        A search for many patients pages along one chain of ``next`` links, read one after the other; after
        a mass change (or in a whole pull of large records) that chain is long. Once it runs on past half as
        many pages as patients (at least 2), the patients' own searches, side by side, finish sooner than the
        rest of the chain would: what it gave is set aside (their own searches return it again, and report its
        unusable entries again) and those searches go into the queue, paged in parallel.
        """
        extra = self.extra
        params = [(param, ",".join(_or_value(p) for p in batch)), *extra]
        kept: list[JsonObject] = []
        reports: list[str] = []  # its unusable entries: reported only if it is kept (else the own searches do)
        with self.changes_refused():
            async with contextlib.aclosing(self.client.pages(rtype, params, reports)) as pages:
                read = 0
                async for found, more in pages:
                    kept += found
                    read += 1
                    if more and read >= max(2, len(batch) // 2):
                        break
                else:
                    for r in kept:
                        self.add(r)
                    self.client.skipped += reports
                    return
        self.summary.split += 1
        left[0] += len(batch)
        for p in batch:
            own = partial(self.search, rtype, [(param, _or_value(p)), *extra])
            self.jobs.put_nowait(partial(self.done, own, left, len(batch)))


SINCE_REFUSED = (
    "The search asked only for changes (_lastUpdated); if this server cannot search by _lastUpdated, read "
    "everything instead: sync --since none, or pull without --since"
)
AUTO_PER_SEARCH = 20  # patients in one incremental search: a URL of 1-2 KB with the usual ids


def patients_per_search(since: str | None) -> int:
    """``--patients-per-search auto``: patient by patient for a whole pull, 20 at a time for an incremental one.

    A whole pull reads every resource of every patient: one patient per search keeps pages small and spreads
    the work over every concurrency slot. An incremental pull (``since``) mostly gets empty answers, so asking
    for 20 patients at once costs about 20 times fewer round trips for the same resources.
    """
    return 1 if since is None else AUTO_PER_SEARCH


def _or_value(value: str) -> str:
    """A search value inside a comma-separated OR list, escaped as FHIR search requires (``\\``, ``\\,``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _reference(value: JsonValue, base: str) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref.removeprefix(base + "/") if isinstance(ref, str) else None


def _search_plan(cap: Capability) -> tuple[list[tuple[str, str]], list[str]]:
    """(type, patient parameter) for types the server can search by patient; the others are scanned whole."""
    per_patient, scanned = [], []
    for rtype, preferred in PATIENT_TYPES:
        params = cap.search_params.get(rtype, set())
        param = next((p for p in (preferred, "subject", "patient") if p in params), None)
        if param:
            per_patient.append((rtype, param))
        else:
            scanned.append(rtype)
    return per_patient, scanned


def patient_of(resource: JsonObject, base: str) -> str | None:
    """The patient a resource belongs to (subject, patient or individual), relative to the server's base."""
    for key in ("subject", "patient", "individual"):
        ref = _reference(resource.get(key), base)
        if ref:
            return ref
    return None
