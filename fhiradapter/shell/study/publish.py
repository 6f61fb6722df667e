"""``fhiradapter study``: the study's definition as a write-back folder that approve reviews and push sends.

Reads what the resources are built from (the mappings the rules read, ``study.toml``, ``published.toml``'s
citation and ``export.toml``'s study drug), reads each resource's copy on a server when one is given (by its id:
unchanged -> nothing written), and writes ``writeback.json`` (a transaction Bundle, the run's Provenance last),
``writeback-plan.ndjson`` and ``manifest.json`` into the output folder, the shape of the results' write-back:
``fhiradapter approve OUT`` and ``fhiradapter push --server URL OUT/writeback.json`` publish it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import orjson
from pydantic import ValidationError

from fhiradapter import __version__
from fhiradapter.core.fhir_out import CodeableConcept, encode
from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.protocol import Mappings
from fhiradapter.core.results import ProtocolIdentity
from fhiradapter.core.study_fhir import StudyDrug, StudyInputs, StudyPublication
from fhiradapter.core.study_publish import (
    ServerCopy,
    build_study,
    bundle_entry,
    plan_line,
    plan_study,
    reference_of,
)
from fhiradapter.core.study_resources import StudyResource
from fhiradapter.core.writeback import HASH_TAG_SYSTEM, PlanEntry, provenance_entry, run_tag
from fhiradapter.errors import ConfigError, InputError, OutputError, ServerError
from fhiradapter.shell.common.files import write_new
from fhiradapter.shell.common.mappings_io import read_toml
from fhiradapter.shell.common.out_folder import MANIFEST, write_manifest
from fhiradapter.shell.registry.export import load_export_mappings
from fhiradapter.shell.server.fhir_client import FhirClient
from fhiradapter.shell.server.pull import study_identifiers

STUDY_FILE = "study.toml"
WRITTEN = ("writeback.json", "writeback-plan.ndjson")


@dataclass(frozen=True)
class Published:
    """What ``study`` wrote: the folder, the plan's entries by action, and the resources."""

    out: Path
    plan: list[PlanEntry]
    resources: list[StudyResource]

    def count(self, action: str) -> int:
        return sum(1 for entry in self.plan if entry.action == action)


def load_study_inputs(folder: Path, mappings: Mappings) -> StudyInputs:
    """``study.toml [research_study]`` (optional), the paper (``published.toml`` source) and the study drug
    (``export.toml [[ex]]``, the one codes.toml knows as a medication)."""
    doc = read_toml(folder / STUDY_FILE) or {}
    unknown = set(doc) - {"research_study"}
    if unknown:
        raise ConfigError(f"{folder / STUDY_FILE}: unknown section(s) {sorted(unknown)}: only [research_study]")
    try:
        publication = StudyPublication.model_validate(doc.get("research_study", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{folder / STUDY_FILE}: [research_study] {where}: {first['msg']}") from None
    published = read_toml(folder / "published.toml") or {}
    citation = published.get("source")
    medications = {m.concept for m in mappings.codes.medication}
    drugs = [d for d in load_export_mappings(folder).ex if d.drug in medications]
    if not drugs:
        raise ConfigError(f"{folder / 'export.toml'}: no [[ex]] drug is a codes.toml [[medication]] concept")
    drug = drugs[0]
    return StudyInputs(
        publication=publication,
        citation=citation if isinstance(citation, str) else None,
        drug=StudyDrug(concept=drug.drug, dose=drug.dose, unit=drug.dosu, frequency=drug.dosfrq, route=drug.route),
    )


def _tag(resource: JsonObject) -> str | None:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    for tag in tags if isinstance(tags, list) else ():
        if isinstance(tag, dict) and tag.get("system") == HASH_TAG_SYSTEM and isinstance(tag.get("code"), str):
            return str(tag["code"])
    return None


async def study_id_on_server(client: FhirClient, mappings: Mappings) -> str | None:
    """The id of the ResearchStudy the server holds under one of the study's configured identifiers (conditional
    on identifier, as the results' write-back is): None when it holds none. A configured id must agree.

    Raises ConfigError when the identifiers name several studies, or a study under another id than the
    configured one (publishing then would make a second ResearchStudy of the same study).
    """
    key = mappings.study
    found: set[str] = set()
    for system, value in sorted(key.identifiers):
        token = f"{system}|{value}"
        try:
            answers = [r async for r in client.search("ResearchStudy", [("identifier", token)])]
        except ServerError as exc:  # no identifier search here: the studies are few, read them all
            if exc.status is None or not 400 <= exc.status < 500:
                raise
            answers = [r async for r in client.search("ResearchStudy", [])]
        # Filtered here too: a server that ignores the parameter must not make every study this one.
        found |= {str(r["id"]) for r in answers if (system, value) in study_identifiers(r) and r.get("id")}
    if len(found) > 1:
        raise ConfigError(
            f"{client.base}: the study's identifiers name {len(found)} ResearchStudy resources: "
            f"{', '.join(sorted(found))}; need one"
        )
    if found and key.id and found != {key.id}:
        raise ConfigError(
            f"{client.base} holds the study's identifier as ResearchStudy/{min(found)}, but protocol.toml [study] "
            f"id is {key.id!r}: publishing would make a second ResearchStudy of it; correct the id"
        )
    return min(found) if found else None


async def server_copies(client: FhirClient, resources: Sequence[StudyResource]) -> dict[str, ServerCopy]:
    """Each published resource as the server holds it now, by reference (those it does not hold are absent)."""

    async def one(resource: StudyResource) -> tuple[str, JsonObject | None]:
        return reference_of(resource), await client.read(type(resource).__name__, resource.id)

    found = await asyncio.gather(*(one(r) for r in resources))
    copies: dict[str, ServerCopy] = {}
    for ref, current in found:
        if current is None:
            continue
        meta = current.get("meta")
        version = meta.get("versionId") if isinstance(meta, dict) else None
        copies[ref] = ServerCopy(
            version=str(version) if version is not None else None, content_hash=_tag(current), content=current
        )
    return copies


def check_out_folder(out: Path) -> None:
    """``out`` must be new, empty, or an earlier ``study`` folder: never an evaluate run's write-back."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            earlier = orjson.loads(manifest.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InputError(f"{manifest} is unreadable ({exc}): choose a new --out folder") from None
        if not (isinstance(earlier, dict) and earlier.get("study_definition")):
            raise ConfigError(f"{out} holds another run's outputs ({MANIFEST}): choose a new --out folder")
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no earlier `fhiradapter study` output: choose a new folder")


def publish(
    out: Path,
    mappings: Mappings,
    identity: ProtocolIdentity,
    inputs: StudyInputs,
    copies: dict[str, ServerCopy] | None,
    server: str | None,
) -> Published:
    """Build, plan and write the study's write-back folder (``copies``: the server's, None without a server)."""
    check_out_folder(out)
    resources = build_study(mappings, inputs)
    plan = plan_study(resources, copies or {})
    entries = [e for e in (bundle_entry(p) for p in plan) if e is not None]
    today = datetime.now(UTC)
    if entries:
        targets = [str(e["fullUrl"]) for e in entries]
        digest = hashlib.sha256("".join(f"{t}\n" for t in targets).encode()).hexdigest()
        as_of = today.date().isoformat()
        provenance = provenance_entry(
            targets,
            adapter_version=__version__,
            mappings=identity,
            as_of=as_of,
            inputs=[f"mappings {identity.mappings_dir}"],
            recorded=today.isoformat(timespec="seconds"),
            run=run_tag(digest, as_of, identity),
        )
        reason = [CodeableConcept(text=f"The study's definition, published from its mappings ({as_of})")]
        provenance = msgspec.structs.replace(
            provenance, resource=msgspec.structs.replace(provenance.resource, reason=reason)
        )
        entries.append(orjson.loads(encode(provenance)))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    lines = [plan_line(entry, resource) for entry, resource in zip(plan, resources, strict=True)]
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "approval.json").unlink(missing_ok=True)  # an approval is of the write-back it reviewed
        write_new(out / "writeback.json", orjson.dumps(bundle))
        write_new(out / "writeback-plan.ndjson", b"".join(msgspec.json.encode(line) + b"\n" for line in lines))
        run = {
            "study_definition": True,
            "study": mappings.study_ref,
            "server": server,
            "protocol": msgspec.to_builtins(identity),
        }
        write_manifest(out, run, list(WRITTEN))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror}") from None
    return Published(out, plan, resources)
