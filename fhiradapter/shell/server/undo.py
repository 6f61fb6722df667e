"""Take a pushed run back on the server: results it created marked entered-in-error, resources it updated given
their previous content again; never a delete, and never over a change someone made since.

The run is named by its folder (the write-back it pushed, and the approval that let it out: excluded patients'
entries were never sent). For each entry, what the server holds now decides:
- a result it created: found by its identifier; still exactly what the run wrote (its content hash) → marked
  ``entered-in-error`` (PUT, If-Match on the version read); already so → nothing; changed since → a conflict,
  left alone; not there → the run never wrote it.
- a resource it updated (a ResearchSubject, a result): still what the run wrote → the version it wrote over
  (read from the server's history, the If-Match version of the run's entry) is put back, with If-Match;
  already the previous content → nothing; anything else → a conflict, left alone.
Every change is recorded by one Provenance naming the person who asked for it. A second undo of the same run
finds nothing to change and writes nothing. ``dry_run`` reads only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fhiradapter.core.approval import approver_agent
from fhiradapter.core.fhir_out import (
    CodeableConcept,
    Coding,
    Meta,
    Provenance,
    ProvenanceEntity,
    Reference,
    as_json_object,
)
from fhiradapter.core.json_types import JsonObject, JsonValue, as_object
from fhiradapter.core.writeback import (
    CODE_SYSTEM,
    HASH_TAG_SYSTEM,
    IDENTIFIER_SYSTEM,
    RUN_TAG_SYSTEM,
    Outgoing,
    assembler_agent,
    content_hash,
    entry_patient,
    outgoing,
)
from fhiradapter.errors import ServerError, ServerRequest
from fhiradapter.shell.server.fhir_client import FhirClient

VERSION = re.compile(r'^W/"(.+)"$')


@dataclass
class UndoSummary:
    run: str  # the run tag of the write-back taken back
    marked: list[str] = field(default_factory=list)  # created results now entered-in-error
    restored: list[str] = field(default_factory=list)  # updated resources given their previous content
    unchanged: list[str] = field(default_factory=list)  # already as the undo would leave them
    never_written: list[str] = field(default_factory=list)  # entries the run never applied (or excluded)
    conflicts: list[str] = field(default_factory=list)  # changed since the run wrote them: left alone
    provenance: str | None = None

    @property
    def changed(self) -> int:
        return len(self.marked) + len(self.restored)


def _without_meta(resource: JsonObject) -> JsonObject:
    return {k: v for k, v in resource.items() if k != "meta"}


def _tag(resource: JsonObject, system: str) -> str | None:
    """The code of a resource's ``meta.tag`` in ``system``."""
    tags = as_object(resource.get("meta")).get("tag")
    listed = tags if isinstance(tags, list) else []
    return next((str(t.get("code")) for t in map(as_object, listed) if t.get("system") == system), None)


def _run_tag(entries: list[Outgoing]) -> str:
    for sent in entries:
        if sent.is_provenance and (run := _tag(sent.resource, RUN_TAG_SYSTEM)) is not None:
            return run
    return ""


def _identifier_values(resource: JsonObject, system: str | None = None) -> list[JsonValue]:
    """The values of a resource's identifiers (in ``system`` when given)."""
    found = resource.get("identifier")
    listed = [as_object(i) for i in found] if isinstance(found, list) else []
    return [i.get("value") for i in listed if system is None or i.get("system") == system]


def _version(resource: JsonObject | None) -> str | None:
    """A resource's ``meta.versionId``, as text."""
    version = as_object(resource.get("meta")).get("versionId") if resource is not None else None
    return str(version) if version is not None else None


async def _version_of(client: FhirClient, ref: str) -> tuple[JsonObject | None, str | None]:
    rtype, rid = ref.split("/", 1)
    current: JsonObject | None = await client.read(rtype, rid)  # the server's JSON
    return current, _version(current)


async def _put(
    client: FhirClient, ref: str, resource: JsonObject, version: str | None, summary: UndoSummary
) -> str | None:
    """PUT with If-Match on the version read; the new version's reference, or None on a 412 (a conflict)."""
    headers = {"If-Match": f'W/"{version}"'} if version else {}
    try:
        answer = await client.json("PUT", ref, json=resource, headers=headers)
    except ServerError as exc:
        if exc.status == 412:
            summary.conflicts.append(f"{ref}: changed while the undo ran: left alone")
            return None
        raise
    new_version = _version(answer) if isinstance(answer, dict) else None
    return f"{ref}/_history/{new_version}" if new_version else ref


async def undo(
    client: FhirClient,
    bundle: JsonObject,
    excluded: tuple[str, ...],
    *,
    by: str,
    role: str,
    recorded: str,
    adapter_version: str,
    dry_run: bool = False,
) -> UndoSummary:
    """Take back what ``bundle`` (a pushed write-back, as read from writeback.json) wrote; see the module
    docstring."""
    entries = outgoing(bundle)
    summary = UndoSummary(_run_tag(entries))
    targets: list[str] = []
    for sent in entries:
        if sent.is_provenance:
            continue
        if entry_patient(sent.entry) in excluded:
            summary.never_written.append(str(sent.full_url))
            continue
        if sent.method == "POST":
            target = await _undo_create(client, sent.resource, summary, dry_run)
        else:
            target = await _undo_update(client, sent, summary, dry_run)
        if target:
            targets.append(target)
    if targets and not dry_run:
        provenance = _undo_provenance(
            targets, summary.run, by=by, role=role, recorded=recorded, version=adapter_version
        )
        answer = await client.json("POST", "Provenance", json=as_json_object(provenance))
        summary.provenance = f"Provenance/{answer.get('id')}" if isinstance(answer, dict) else "Provenance"
    return summary


async def _undo_create(client: FhirClient, resource: JsonObject, summary: UndoSummary, dry_run: bool) -> str | None:
    rtype = str(resource.get("resourceType"))
    ident = next(iter(_identifier_values(resource, IDENTIFIER_SYSTEM)), None)
    found: list[JsonObject] = [r async for r in client.search(rtype, [("identifier", f"{IDENTIFIER_SYSTEM}|{ident}")])]
    found = [r for r in found if ident in _identifier_values(r)]
    if not found:
        summary.never_written.append(f"{rtype}?identifier={ident}")
        return None
    current = found[0]
    ref = f"{rtype}/{current.get('id')}"
    wrote = _tag(resource, HASH_TAG_SYSTEM)
    if current.get("status") == "entered-in-error":
        summary.unchanged.append(ref)
        return None
    if wrote is None or content_hash(current) != wrote:
        summary.conflicts.append(f"{ref}: changed since the run wrote it (by a later run or a person): left alone")
        return None
    if dry_run:
        summary.marked.append(ref)
        return None
    notes = current.get("note")
    marked = {**_without_meta(current), "status": "entered-in-error"}
    marked["note"] = [
        *(notes if isinstance(notes, list) else ()),
        {"text": f"Marked entered-in-error by an undo of fhiradapter run {summary.run}"},
    ]
    if rtype == "ResearchSubject":  # R4 has no entered-in-error status for a ResearchSubject: withdrawn
        marked = {**_without_meta(current), "status": "withdrawn"}
    written = await _put(client, ref, marked, _version(current), summary)
    if written is not None:
        summary.marked.append(ref)
    return written


async def _undo_update(client: FhirClient, sent: Outgoing, summary: UndoSummary, dry_run: bool) -> str | None:
    ref = sent.url
    match = VERSION.match(sent.if_match or "")
    if match is None:
        summary.conflicts.append(f"{ref}: the run's entry names no version it wrote over: left alone")
        return None
    previous_version = match.group(1)
    current, version = await _version_of(client, ref)
    if current is None:
        summary.conflicts.append(f"{ref}: no longer on the server: left alone")
        return None
    previous = await client.json("GET", f"{ref}/_history/{previous_version}")
    if not isinstance(previous, dict):
        asked = ServerRequest("GET", f"{ref}/_history/{previous_version}")
        raise ServerError(f"{asked}: not a resource", request=asked)
    if content_hash(current) == content_hash(previous):
        summary.unchanged.append(ref)  # never applied, or already taken back
        return None
    if content_hash(current) != content_hash(sent.resource):
        summary.conflicts.append(f"{ref}: changed since the run wrote it (by a later run or a person): left alone")
        return None
    if dry_run:
        summary.restored.append(ref)
        return None
    written = await _put(client, ref, {**_without_meta(previous), "id": ref.split("/", 1)[1]}, version, summary)
    if written is not None:
        summary.restored.append(ref)
    return written


def _undo_provenance(targets: list[str], run: str, *, by: str, role: str, recorded: str, version: str) -> Provenance:
    reason = f"Undo of fhiradapter run {run}: its results entered-in-error, previous versions back"
    return Provenance(
        target=[Reference(reference=t) for t in targets],
        meta=Meta([Coding(RUN_TAG_SYSTEM, f"undo-{run}")]),
        recorded=recorded,
        policy=[f"{CODE_SYSTEM}:undo"],
        reason=[CodeableConcept(text=reason)],
        activity=CodeableConcept(
            [Coding("http://terminology.hl7.org/CodeSystem/v3-DataOperation", "UPDATE", "revise")]
        ),
        agent=[approver_agent(by, role), assembler_agent(version)],
        entity=[ProvenanceEntity("removal", Reference(display=f"fhiradapter run {run}"))],
    )
