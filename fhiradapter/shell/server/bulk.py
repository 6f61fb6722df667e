"""Bulk Data ``$export`` (FHIR Bulk Data Access IG): the alternative pull path for large studies.

Kick-off ``Group/[id]/$export`` or ``Patient/$export`` with ``_type`` and ``_since`` (``Prefer: respond-async``),
then poll the status URL, honouring ``Retry-After`` and showing ``X-Progress``; on completion download every
output file (streamed to ``.partial``, renamed when complete) and every ``error`` file, whose OperationOutcomes
are reported. Each output file is then read as ``evaluate`` reads it (``readers.read_file``): a line no reader
can use (not JSON, no resource, no id) is a reject, listed in ``pull-rejects.ndjson`` with evaluate's reject
fields, counted in the summary, and left in its file, where evaluate rejects it again; it never stops the pull.
Everything is written in a folder beside ``out`` (``pull_folder.start_folder``), which replaces ``out`` whole
when the pull is complete; only then is the export deleted on the server (``DELETE`` on the status URL: the
spec's "done, you may delete the files"), so a pull that fails can be run again. The job's state (status URL,
files done) is kept in that folder's ``bulk-state.json``, so an interrupted pull resumes the same export
instead of starting another; Ctrl-C during the wait cancels the export on the server.

The access token goes only where it belongs: the status URL must be on the server's own origin (or one the user
trusted, ``--trust-origin``); output files get the token only when the manifest says ``requiresAccessToken``
and they are on such an origin, and are fetched without any credential otherwise; anything else is refused,
naming both origins. File names are made from the output's resource type (one of FHIR R4's names,
``core.resource_types``) and a counter, never from anything else the server says: an output whose type is not a
resource type name is refused and reported, so no file lands outside the folder.

The output folder follows ``pull_folder.claim_folder``: new, empty, or an earlier pull's, which the complete
export replaces whole; ``pull-manifest.json`` then records the export (transaction time, counts, rejects).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import msgspec
import orjson

from fhiradapter.core.fhir_types import resource_type
from fhiradapter.core.json_types import JsonObject, JsonValue, text
from fhiradapter.core.resource_types import is_resource_type
from fhiradapter.errors import ConfigError, ServerError, ServerRequest
from fhiradapter.shell.common.files import open_new, replace, write_new
from fhiradapter.shell.run.readers import BULK_STATE, PULL_REJECTS, RawRecord, Reject, read_file
from fhiradapter.shell.server.fhir_client import FhirClient, origin, request_of, retry_after_s
from fhiradapter.shell.server.pull import patient_of
from fhiradapter.shell.server.pull_folder import (
    claim_folder,
    discard,
    finish_folder,
    pull_target,
    start_folder,
    unfinished_export,
)

STATE = BULK_STATE
DEFAULT_TYPES = (
    "Patient",
    "Observation",
    "MedicationStatement",
    "Medication",
    "AdverseEvent",
    "Condition",
    "Consent",
    "BodyStructure",
    "ResearchStudy",
    "ResearchSubject",
)
MAX_WAIT_S = 120.0
SHOWN_REJECTS = 20  # rejects kept in the summary to print; all of them are in pull-rejects.ndjson


@dataclass
class BulkSummary:
    status_url: str
    resumed: bool = False
    files: list[Path] = field(default_factory=list)
    resources: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    polls: int = 0
    transaction_time: str | None = None
    searched: list[str] = field(default_factory=list)  # types read by search because the export had none
    refused: list[str] = field(default_factory=list)  # manifest outputs not downloaded, and why
    replaced: list[str] = field(default_factory=list)  # an earlier pull's files this one removed
    rejected: int = 0  # lines of the output files no reader can use (listed in pull-rejects.ndjson)
    rejects: list[Reject] = field(default_factory=list)  # the first ``SHOWN_REJECTS`` of them


class ExportState(msgspec.Struct, kw_only=True):
    """An export under way, kept in the work folder's ``bulk-state.json``: where to poll it, what it was asked,
    and the output files already downloaded (by URL), so that an interrupted pull resumes it."""

    status_url: str
    group: str | None = None
    since: str | None = None
    done: list[str] = msgspec.field(default_factory=list)


def _load_state(out: Path) -> ExportState | None:
    """The state an interrupted pull left, or None (none, or unreadable: nothing to resume)."""
    path = out / STATE
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=ExportState)
    except msgspec.DecodeError:
        return None


def _save_state(out: Path, state: ExportState) -> None:
    write_new(out / STATE, orjson.dumps(msgspec.to_builtins(state), option=orjson.OPT_INDENT_2))


async def kick_off(client: FhirClient, group: str | None, types: list[str], since: str | None) -> str:
    path = f"Group/{group}/$export" if group else "Patient/$export"
    params = [("_type", ",".join(types))] + ([("_since", since)] if since else [])
    response = await client.request(
        "GET", path, params=params, headers={"Prefer": "respond-async", "Accept": "application/fhir+json"}
    )
    location = response.headers.get("Content-Location")
    if response.status_code != 202 or not location:
        raise ServerError(
            f"{path}: expected 202 with Content-Location, got HTTP {response.status_code}",
            response.status_code,
            request=ServerRequest("GET", path),
        )
    status_url = urljoin(client.base + "/", str(location))
    if client.authenticated and not client.may_authenticate(status_url):
        raise ServerError(
            f"{path}: the export's status URL is on {origin(status_url)}, not on the server's own origin "
            f"{origin(client.base)}; the access token goes nowhere else, so it is not polled (--trust-origin "
            "names another origin that may have the token)",
            request=request_of("GET", status_url),
        )
    return status_url


async def bulk_pull(
    client: FhirClient,
    out: Path,
    group: str | None = None,
    types: list[str] | None = None,
    since: str | None = None,
    on_progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> BulkSummary:
    """Run (or resume) an export into ``out``; returns what was downloaded.

    Written in a folder beside ``out`` that replaces it whole once complete; the export is deleted on the server
    only then. A failure after the kick-off keeps that folder (and the export), so that the same command resumes.
    """
    out = pull_target(out)
    earlier = claim_folder(out, bulk=True)
    wanted = list(types or DEFAULT_TYPES)
    work, state, resumed = await _start_or_resume(client, out, group, wanted, since)
    summary = BulkSummary(state.status_url, resumed=resumed)
    try:
        manifest = await _wait(client, summary, on_progress, sleep)
    except (asyncio.CancelledError, KeyboardInterrupt):
        await _cancel(client, summary.status_url)
        discard(work)
        raise
    summary.transaction_time = text(manifest, "transactionTime")
    needs_token = manifest.get("requiresAccessToken") is True
    patients = await _download_outputs(client, work, manifest, state, needs_token, summary)
    error_files = await _download_error_files(client, work, manifest, needs_token, summary)
    missing = [t for t in wanted if summary.resources[t] == 0]
    if missing:
        await _search_missing(client, work, missing, since, summary, patients)
    record = {
        "server": client.base,
        "bulk": {"group": group, "transaction_time": summary.transaction_time, "searched": summary.searched},
        "since": since,
        "resources": dict(sorted(summary.resources.items())),
        "errors": len(summary.errors),
        "refused": summary.refused,
        "rejected": summary.rejected,
    }
    summary.replaced = finish_folder(out, work, record, earlier, [*summary.files, *error_files])
    summary.files = [out / p.name for p in summary.files]
    await _cancel(client, summary.status_url)  # the pull is whole and in place: the spec's "you may delete the files"
    return summary


async def _start_or_resume(
    client: FhirClient, out: Path, group: str | None, types: list[str], since: str | None
) -> tuple[Path, ExportState, bool]:
    """The work folder and the export in it: the one an interrupted pull left (resumed: True), else a new one,
    kicked off, in a new folder (removed if the kick-off fails)."""
    work = unfinished_export(out)
    state = _load_state(work) if work is not None else None
    if state is not None and work is not None:
        return work, state, True
    if work is not None:  # its state is unreadable: nothing to resume
        discard(work)
    work = start_folder(out)
    try:
        status_url = await kick_off(client, group, types, since)
        state = ExportState(status_url=status_url, group=group, since=since)
        _save_state(work, state)
    except BaseException:
        discard(work)
        raise
    return work, state, False


async def _download_outputs(
    client: FhirClient,
    work: Path,
    manifest: JsonObject,  # the completion manifest as the server sent it
    state: ExportState,
    needs_token: bool,
    summary: BulkSummary,
) -> set[str]:
    """Each output file the manifest lists (those done before, when resumed, are kept), read as evaluate reads
    it; an output whose type is no resource type is refused. Returns the exported Patients (``Patient/id``)."""
    patients: set[str] = set()
    (work / PULL_REJECTS).unlink(missing_ok=True)  # a resumed pull reads every file again
    for n, item in enumerate(_array(manifest, "output"), start=1):
        rtype, url = (item.get("type"), item.get("url")) if isinstance(item, dict) else (None, None)
        if not is_resource_type(rtype) or not isinstance(url, str):
            shown = repr(rtype)[:80] if isinstance(rtype, str) else "none"
            summary.refused.append(f"output {n}: its type ({shown}) is not a FHIR resource type; not downloaded")
            continue
        url = urljoin(client.base + "/", url)
        path = work / f"{rtype}-{n:03d}.ndjson"
        if url not in state.done or not path.exists():
            await _download(client, url, path, needs_token)
            state.done.append(url)
            _save_state(work, state)
        summary.files.append(path)
        _check_lines(path, summary, patients)
    return patients


async def _download_error_files(
    client: FhirClient,
    work: Path,
    manifest: JsonObject,  # the completion manifest as the server sent it
    needs_token: bool,
    summary: BulkSummary,
) -> list[Path]:
    """The manifest's error files, their OperationOutcomes said in the summary; returns where they are."""
    error_files = []
    for n, item in enumerate(_array(manifest, "error"), start=1):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str):
            summary.refused.append(f"error file {n}: no URL")
            continue
        path = work / f"errors-{n:03d}.ndjson.txt"  # not .ndjson: evaluate must not read OperationOutcomes
        await _download(client, urljoin(client.base + "/", url), path, needs_token)
        summary.errors.extend(_outcome_lines(path))
        error_files.append(path)
    return error_files


def _check_lines(path: Path, summary: BulkSummary, patients: set[str]) -> None:
    """Read an output file as evaluate does: count its resources, note its Patients, and append the lines no
    reader can use to ``pull-rejects.ndjson`` beside it (named by the file's name in the pull's folder and the
    line), keeping the first few in the summary."""
    with (path.parent / PULL_REJECTS).open("ab") as rejects:
        for record in read_file(path):
            if isinstance(record, Reject):
                reject = record._replace(file=path.name)
                rejects.write(reject.line() + b"\n")
                summary.rejected += 1
                if len(summary.rejects) < SHOWN_REJECTS:
                    summary.rejects.append(reject)
                continue
            rtype, rid = _type_and_id(record)
            summary.resources[rtype] += 1
            if rtype == "Patient":
                patients.add(f"Patient/{rid}")
    if (path.parent / PULL_REJECTS).stat().st_size == 0:
        (path.parent / PULL_REJECTS).unlink()


def _type_and_id(record: RawRecord) -> tuple[str, str]:
    resource = record.resource
    if isinstance(resource, dict):
        return str(resource.get("resourceType")), str(resource.get("id"))
    return resource_type(resource), str(resource.id)


async def _search_missing(
    client: FhirClient, out: Path, missing: list[str], since: str | None, summary: BulkSummary, patients: set[str]
) -> None:
    """Types the export did not return (outside the Patient compartment, or not exported by this server):
    read by search, and for patient-linked types kept only for the exported ``patients``."""
    params = [("_lastUpdated", f"gt{since}")] if since else []
    for rtype in missing:
        if not is_resource_type(rtype):  # ours (DEFAULT_TYPES or the caller's): still checked before it names a file
            raise ConfigError(f"bulk export: {rtype!r} is not a FHIR R4 resource type")
        path = out / f"{rtype}-search.ndjson"
        partial = path.with_name(path.name + ".partial")
        n = 0
        with open_new(partial) as fh:
            async for resource in client.search(rtype, params):
                owner = patient_of(resource, client.base)
                if owner is None or owner in patients:
                    fh.write(orjson.dumps(resource) + b"\n")
                    n += 1
        replace(partial, path)
        summary.files.append(path)
        summary.resources[rtype] += n
        summary.searched.append(rtype)


async def _wait(
    client: FhirClient,
    summary: BulkSummary,
    on_progress: Callable[[str], None] | None,
    sleep: Callable[[float], Awaitable[None]],
) -> JsonObject:  # the completion manifest as the server sent it
    delay = 1.0
    polled = request_of("GET", summary.status_url)
    while True:
        response = await client.request("GET", summary.status_url, ok=(202,))
        summary.polls += 1
        if response.status_code == 200:
            try:
                manifest = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise ServerError("bulk export: the completion manifest is not JSON", 200, request=polled) from None
            if not isinstance(manifest, dict):
                raise ServerError("bulk export: the completion manifest is not a JSON object", 200, request=polled)
            return manifest
        if on_progress:
            on_progress(response.headers.get("X-Progress", "in progress"))
        hinted = retry_after_s(response)
        wait = min(hinted if hinted is not None else delay, MAX_WAIT_S)
        delay = min(delay * 2, MAX_WAIT_S)
        await sleep(wait)


async def _cancel(client: FhirClient, status_url: str) -> None:
    with contextlib.suppress(ServerError):  # best effort: the export expires on the server anyway
        await client.request("DELETE", status_url, ok=(404, 410))


async def _download(client: FhirClient, url: str, path: Path, needs_token: bool) -> None:
    """One export file: with the token when the manifest says it needs one (only where the token may go),
    else without any credential, wherever it is (e.g. cloud storage)."""
    if needs_token and client.authenticated and not client.may_authenticate(url):
        raise ServerError(
            f"bulk export: a file needing the access token is on {origin(url)}, not on the server's own origin "
            f"{origin(client.base)}; refused (--trust-origin names another origin that may have the token)",
            request=request_of("GET", url),
        )
    partial = path.with_name(path.name + ".partial")
    if needs_token:
        await client.download(url, partial)
    else:  # the same retries and error messages, without the server's credential
        async with client.elsewhere(url) as storage:
            try:
                await storage.download(url, partial)
            finally:
                client.requests += storage.requests
                client.retries += storage.retries
    replace(partial, path)


def _array(manifest: JsonObject, key: str) -> list[JsonValue]:
    """The manifest's array under ``key`` (``output``, ``error``); none if it is not one."""
    found = manifest.get(key)
    return found if isinstance(found, list) else []


def _outcome_lines(path: Path) -> list[str]:
    out = []
    with path.open("rb") as fh:
        for line in fh:
            try:
                outcome = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            for issue in outcome.get("issue") or () if isinstance(outcome, dict) else ():
                out.append(
                    str(issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code"))
                )
    return out
