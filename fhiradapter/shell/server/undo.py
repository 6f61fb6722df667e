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
from typing import Any

from fhiradapter.core.approval import approver_agent
from fhiradapter.core.writeback import (
    CODE_SYSTEM,
    HASH_TAG_SYSTEM,
    IDENTIFIER_SYSTEM,
    RUN_TAG_SYSTEM,
    assembler_agent,
    content_hash,
    entry_patient,
)
from fhiradapter.errors import ServerError
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


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def _run_tag(bundle: dict[str, Any]) -> str:
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Provenance":
            for tag in (resource.get("meta") or {}).get("tag") or ():
                if tag.get("system") == RUN_TAG_SYSTEM:
                    return str(tag.get("code"))
    return ""


async def _version_of(client: FhirClient, ref: str) -> tuple[dict[str, Any] | None, str | None]:
    rtype, rid = ref.split("/", 1)
    current = await client.read(rtype, rid)
    version = (current or {}).get("meta", {}).get("versionId") if current else None
    return current, str(version) if version is not None else None


async def _put(
    client: FhirClient, ref: str, resource: dict[str, Any], version: str | None, summary: UndoSummary
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
    new_version = (answer or {}).get("meta", {}).get("versionId") if isinstance(answer, dict) else None
    return f"{ref}/_history/{new_version}" if new_version else ref


async def undo(
    client: FhirClient,
    bundle: dict[str, Any],
    excluded: tuple[str, ...],
    *,
    by: str,
    role: str,
    recorded: str,
    adapter_version: str,
    dry_run: bool = False,
) -> UndoSummary:
    """Take back what ``bundle`` (a pushed write-back) wrote; see the module docstring."""
    summary = UndoSummary(_run_tag(bundle))
    targets: list[str] = []
    for entry in bundle.get("entry") or ():
        resource, request = entry.get("resource") or {}, entry.get("request") or {}
        rtype = resource.get("resourceType")
        if rtype == "Provenance":
            continue
        if entry_patient(entry) in excluded:
            summary.never_written.append(str(entry.get("fullUrl")))
            continue
        if request.get("method") == "POST":
            target = await _undo_create(client, resource, summary, dry_run)
        else:
            target = await _undo_update(client, str(request.get("url")), resource, request, summary, dry_run)
        if target:
            targets.append(target)
    if targets and not dry_run:
        provenance = _undo_provenance(
            targets, summary.run, by=by, role=role, recorded=recorded, version=adapter_version
        )
        answer = await client.json("POST", "Provenance", json=provenance)
        summary.provenance = f"Provenance/{answer.get('id')}" if isinstance(answer, dict) else "Provenance"
    return summary


async def _undo_create(client: FhirClient, resource: dict[str, Any], summary: UndoSummary, dry_run: bool) -> str | None:
    rtype = str(resource.get("resourceType"))
    ident = next(
        (i.get("value") for i in resource.get("identifier") or () if i.get("system") == IDENTIFIER_SYSTEM), None
    )
    found = [r async for r in client.search(rtype, [("identifier", f"{IDENTIFIER_SYSTEM}|{ident}")])]
    found = [r for r in found if any(i.get("value") == ident for i in r.get("identifier") or ())]
    if not found:
        summary.never_written.append(f"{rtype}?identifier={ident}")
        return None
    current = found[0]
    ref = f"{rtype}/{current.get('id')}"
    wrote = next(
        (t.get("code") for t in (resource.get("meta") or {}).get("tag") or () if t.get("system") == HASH_TAG_SYSTEM),
        None,
    )
    if current.get("status") == "entered-in-error":
        summary.unchanged.append(ref)
        return None
    if wrote is None or content_hash(current) != wrote:
        summary.conflicts.append(f"{ref}: changed since the run wrote it (by a later run or a person): left alone")
        return None
    if dry_run:
        summary.marked.append(ref)
        return None
    version = (current.get("meta") or {}).get("versionId")
    marked = {**_without_meta(current), "status": "entered-in-error"}
    marked["note"] = [
        *(current.get("note") or ()),
        {"text": f"Marked entered-in-error by an undo of fhiradapter run {summary.run}"},
    ]
    if rtype == "ResearchSubject":  # R4 has no entered-in-error status for a ResearchSubject: withdrawn
        marked = {**_without_meta(current), "status": "withdrawn"}
    written = await _put(client, ref, marked, str(version) if version is not None else None, summary)
    if written is not None:
        summary.marked.append(ref)
    return written


async def _undo_update(
    client: FhirClient,
    ref: str,
    resource: dict[str, Any],
    request: dict[str, Any],
    summary: UndoSummary,
    dry_run: bool,
) -> str | None:
    match = VERSION.match(str(request.get("ifMatch") or ""))
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
        raise ServerError(f"GET {ref}/_history/{previous_version}: not a resource")
    if content_hash(current) == content_hash(previous):
        summary.unchanged.append(ref)  # never applied, or already taken back
        return None
    if content_hash(current) != content_hash(resource):
        summary.conflicts.append(f"{ref}: changed since the run wrote it (by a later run or a person): left alone")
        return None
    if dry_run:
        summary.restored.append(ref)
        return None
    written = await _put(client, ref, {**_without_meta(previous), "id": ref.split("/", 1)[1]}, version, summary)
    if written is not None:
        summary.restored.append(ref)
    return written


def _undo_provenance(
    targets: list[str], run: str, *, by: str, role: str, recorded: str, version: str
) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": t} for t in targets],
        "meta": {"tag": [{"system": RUN_TAG_SYSTEM, "code": f"undo-{run}"}]},
        "recorded": recorded,
        "policy": [f"{CODE_SYSTEM}:undo"],
        "reason": [{"text": f"Undo of fhiradapter run {run}: its results entered-in-error, previous versions back"}],
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "UPDATE",
                    "display": "revise",
                }
            ]
        },
        "agent": [
            approver_agent(by, role),
            assembler_agent(version),
        ],
        "entity": [{"role": "removal", "what": {"display": f"fhiradapter run {run}"}}],
    }
