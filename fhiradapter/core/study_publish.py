"""The published study as a write-back: its resources, what a server already holds, the plan and the Bundle.

``build_study`` makes the resources (``study_fhir``, ``study_plan``). ``plan_study`` compares each with the
server's copy by a content-hash tag, as the results' write-back does: ``create`` (PUT at the resource's id,
which references and ResearchSubjects use), ``update`` (PUT with If-Match the version read; a ResearchStudy the
hospital already holds keeps the elements the adapter does not write) or ``unchanged`` (nothing sent).
``bundle_entry`` and ``plan_line`` give writeback.json's entries and writeback-plan.ndjson's lines, in the
shape `fhiradapter approve` shows and `fhiradapter push` sends. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import msgspec
from msgspec import UNSET, UnsetType

from fhiradapter.core.fhir_out import as_json_object
from fhiradapter.core.json_types import JsonObject, JsonValue, as_object, items
from fhiradapter.core.protocol import RULE_BOOK, Mappings
from fhiradapter.core.review import Change, PlanLine, Values
from fhiradapter.core.study_fhir import (
    StudyInputs,
    build_group,
    build_research_study,
    build_value_set,
    study_ids,
    value_set_specs,
)
from fhiradapter.core.study_plan import build_activity, build_plan
from fhiradapter.core.study_resources import (
    ActivityDefinition,
    Group,
    PlanDefinition,
    ResearchStudy,
    StudyResource,
)
from fhiradapter.core.writeback import HASH_TAG_SYSTEM, PlanEntry, content_hash

# The plan's lines group by "patient": the study's definition is about no patient. Without a "/" it can never
# be excluded by `approve --exclude` (which names patients as Patient/ID).
STUDY_DEFINITION = "(study definition)"
KINDS = {
    "ResearchStudy": "research-study",
    "Group": "eligibility-group",
    "PlanDefinition": "plan-definition",
    "ActivityDefinition": "activity-definition",
    "ValueSet": "value-set",
}
RULES = {
    "ResearchStudy": f"{RULE_BOOK} §1",
    "Group": f"{RULE_BOOK} §2",
    "PlanDefinition": f"{RULE_BOOK} §2-§5",
    "ActivityDefinition": f"{RULE_BOOK} (the study drug: thalidomide 200 mg/day)",
    "ValueSet": "mappings codes.toml",
}
NOT_WRITTEN = ("meta", "id", "text")  # what a server's copy has that the adapter does not state


class ServerCopy(msgspec.Struct, frozen=True, kw_only=True):
    """A published resource as a server holds it: version, the content-hash tag, and its content."""

    version: str | None
    content_hash: str | None
    content: JsonObject  # JSON at the edge: the server's resource as read (an update keeps what it adds)


def build_study(mappings: Mappings, inputs: StudyInputs) -> list[StudyResource]:
    """ResearchStudy, eligibility Group, PlanDefinition, ActivityDefinition and one ValueSet per code list."""
    ids = study_ids(mappings, inputs.publication, inputs.study_id)
    specs = value_set_specs(mappings)
    protocol_id = mappings.protocol.protocol.id
    value_sets = {spec.name: build_value_set(spec, ids, protocol_id) for spec in specs}
    group = build_group(ids, mappings, specs, value_sets)
    activity = build_activity(ids, inputs.drug, specs)
    plan = build_plan(ids, mappings, inputs.drug, specs, activity)
    study = build_research_study(ids, mappings, inputs, specs, plan.id, group.id)
    return [study, group, plan, activity, *value_sets.values()]


def reference_of(resource: StudyResource) -> str:
    return f"{type(resource).__name__}/{resource.id}"


def as_json(resource: StudyResource) -> JsonObject:
    """A resource as R4 JSON (the edge: hashed, compared with a server's copy, written into the Bundle)."""
    built: JsonObject = msgspec.json.decode(msgspec.json.encode(resource))
    return built


def says(resource: StudyResource) -> str:
    """What a published resource states, in words, for the reviewer."""
    if isinstance(resource, ResearchStudy):
        return f"ResearchStudy {resource.id}: {resource.title} ({resource.status})"
    if isinstance(resource, Group):
        excluded = sum(1 for c in resource.characteristic if c.exclude)
        return f"Eligibility criteria: {len(resource.characteristic)} characteristics, {excluded} of them exclusions"
    if isinstance(resource, PlanDefinition):
        rules = sum(1 for a in resource.action if a.id.startswith("dose-rule-"))
        return f"Treatment plan: {len(resource.action)} actions, {rules} of them dose rules"
    if isinstance(resource, ActivityDefinition):
        return f"Study drug: {resource.title}"
    codes = sum(len(i.concept) + len(i.filter) for i in resource.compose.include)
    return f"ValueSet {resource.title}: {codes} code(s) or code range(s)"


def plan_study(resources: Sequence[StudyResource], existing: Mapping[str, ServerCopy]) -> list[PlanEntry]:
    """create / update / unchanged for each published resource (``existing``: the server's copies by reference)."""
    plan: list[PlanEntry] = []
    for resource in resources:
        ref = reference_of(resource)
        body = as_json(resource)
        digest = content_hash(body)
        kind = KINDS[type(resource).__name__]
        old = existing.get(ref)
        if old is not None and old.content_hash == digest:
            plan.append(PlanEntry("unchanged", kind, body, ref, ref, old.version))
            continue
        if old is not None and isinstance(resource, ResearchStudy):  # the hospital's study: keep what it adds
            body = {**{k: v for k, v in old.content.items() if k not in NOT_WRITTEN}, **body}
        body["meta"] = {"tag": [{"system": HASH_TAG_SYSTEM, "code": digest}]}
        if old is None:
            plan.append(PlanEntry("create", kind, body, ref, None, None))
        else:
            plan.append(PlanEntry("update", kind, body, ref, ref, old.version, old.content))
    return plan


def bundle_entry(entry: PlanEntry) -> JsonObject | None:
    """The transaction entry of a create or an update (PUT at the resource's id); None for unchanged."""
    if entry.action == "unchanged":
        return None
    ref = entry.identifier
    request: JsonObject = {"method": "PUT", "url": ref}
    if entry.action == "update" and entry.version:
        request["ifMatch"] = f'W/"{entry.version}"'
    resource = entry.resource if isinstance(entry.resource, dict) else as_json_object(entry.resource)
    return {"fullUrl": ref, "resource": resource, "request": request}


def _shown(value: JsonValue) -> str | int | float | bool | None:
    """An element's value as a reviewer compares it: a scalar as it is, a list or object by size and digest."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    digest = hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()[:8]
    size = f"{len(value)} item(s)" if isinstance(value, list) else "object"
    return f"{size} #{digest}"


def _characteristic_words(char: JsonObject) -> str:
    """A Group characteristic as a reviewer reads it: ``neutrophils ... : >= 1.0 10^9/L`` (exclusions marked)."""
    code = char.get("code")
    text = code.get("text") if isinstance(code, dict) else None
    quantity, span, concept = (char.get(k) for k in ("valueQuantity", "valueRange", "valueCodeableConcept"))
    if isinstance(quantity, dict):
        value = " ".join(str(quantity[k]) for k in ("comparator", "value", "unit") if k in quantity)
    elif isinstance(span, dict):
        value = "-".join(str(as_object(span.get(end)).get("value")) for end in ("low", "high"))
    elif isinstance(concept, dict):
        codes = ", ".join(str(c.get("code")) for c in items(concept, "coding"))
        value = f"{concept.get('text')} [{codes}]"
    else:
        value = str(_shown(next((v for k, v in char.items() if k.startswith("value")), None)))
    return f"{'exclude: ' if char.get('exclude') else ''}{text}: {value}"


def _compose_words(compose: JsonObject) -> str:
    """A ValueSet's codes as a reviewer reads them: ``http://loinc.org 1834-1, 83073-7; ... is-a C77``."""
    parts = []
    includes = compose.get("include")
    for inc in includes if isinstance(includes, list) else ():
        if not isinstance(inc, dict):
            continue
        concepts = [str(c.get("code")) for c in items(inc, "concept")]
        filters = [f"{f.get('op')} {f.get('value')}" for f in items(inc, "filter")]
        parts.append(f"{inc.get('system')} {', '.join(concepts + filters)}")
    return "; ".join(parts)


def stated(body: JsonObject) -> dict[str, str | int | float | bool | None]:
    """A resource's elements as a reviewer compares them: each eligibility characteristic and each plan action
    apart (by its id) and a ValueSet's codes in full, so an update names the criterion or code that changed."""
    out: dict[str, str | int | float | bool | None] = {}
    for key, value in body.items():
        if key in ("meta", "resourceType"):
            continue
        if key == "characteristic" and isinstance(value, list):
            out |= {f"characteristic[{c.get('id')}]": _characteristic_words(c) for c in value if isinstance(c, dict)}
        elif key == "action" and isinstance(value, list):
            out |= {
                f"action[{a.get('id')}]": f"{a.get('title')}: {a.get('description')}"
                for a in value
                if isinstance(a, dict)
            }
        elif key == "compose" and isinstance(value, dict):
            out["compose"] = _compose_words(value)
        else:
            out[key] = _shown(value)
    return out


def plan_line(entry: PlanEntry, resource: StudyResource) -> PlanLine:
    """One writeback-plan.ndjson line, in the shape approve reads and shows (``review.PlanLine``)."""
    body = entry.resource  # the study's entries are JSON (a ResearchStudy update keeps the hospital's elements)
    new: Values = dict(stated(body if isinstance(body, dict) else msgspec.to_builtins(body)))
    old: Values | UnsetType = UNSET
    changes: tuple[Change, ...] | UnsetType = UNSET
    if entry.action == "update":
        before: Values = dict(stated(entry.old or {}))
        old = before
        changes = tuple(
            Change(k, before.get(k), new.get(k))
            for k in dict.fromkeys([*new, *before])
            if before.get(k) != new.get(k) and k != "id"
        )
    kind = type(resource).__name__
    return PlanLine(
        STUDY_DEFINITION,
        entry.action,
        entry.kind,
        kind,
        entry.identifier,
        entry.ref,
        says(resource),
        RULES[kind],
        new,
        old,
        changes,
    )
