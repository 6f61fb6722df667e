"""Four eyes on the hospital's record: approvals of a write-back, standing rules, and what an approval lets out.

An :class:`Approval` is bound to the exact content a person reviewed: the sha256 of ``writeback.json`` and of
``writeback-plan.ndjson``. Push writes nothing an approval does not cover (the shell checks the digests). An
approval may exclude patients: their entries are not sent (:func:`approved_bundle`). The approver is written
into the Provenance of every write, as an agent with a role, so the record itself says on whose authority each
result entered it. A :class:`StandingRule`, signed by a named person in the site's configuration
(``approval.toml`` in its mappings folder), stands in for a per-run approval in scheduled syncs, for the kinds
of change it lists; :func:`split_by_rule` holds the rest for a person. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fhiradapter.core.fhir_out import CodeableConcept, Coding, ProvenanceAgent, Reference, as_json_object
from fhiradapter.core.json_types import JsonObject, JsonValue, as_object
from fhiradapter.core.review import PlanLine
from fhiradapter.core.writeback import KINDS, entry_patient, full_url, outgoing, provenance_for
from fhiradapter.errors import ConfigError

PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ACTIONS = ("create", "update")
CHANGE_KINDS = (*KINDS, "research-subject")


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    """Who approved which write-back, when, and which patients they kept out (approval.json)."""

    approved_by: str
    role: str
    approved_at: str  # ISO 8601 instant, UTC
    writeback_sha256: str
    plan_sha256: str
    excluded: tuple[str, ...] = ()
    standing_rule: str | None = None  # set when a standing rule, not a person reviewing this run, approved it


class StandingRule(BaseModel):
    """``approval.toml [standing_rule]``: the kinds of change a named person lets scheduled syncs write unreviewed.

    ``allow`` lists ``ACTION:KIND`` (``create:response``, ``update:research-subject``; ``*`` for any action or
    kind). Everything else waits for a person's approval.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    signed_by: str = Field(min_length=1)
    role: str = Field(min_length=1)
    signed_on: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    allow: tuple[str, ...]

    @field_validator("allow")
    @classmethod
    def _known(cls, allow: tuple[str, ...]) -> tuple[str, ...]:
        for item in allow:
            action, colon, kind = item.partition(":")
            if not colon or action not in (*ACTIONS, "*") or kind not in (*CHANGE_KINDS, "*"):
                raise ValueError(
                    f"{item!r}: write ACTION:KIND, ACTION one of {', '.join(ACTIONS)} or *, KIND one of "
                    f"{', '.join(CHANGE_KINDS)} or *"
                )
        return allow

    def covers(self, action: str, kind: str) -> bool:
        return any(a in (action, "*") and k in (kind, "*") for a, _c, k in (item.partition(":") for item in self.allow))

    @property
    def name(self) -> str:
        return f"standing rule signed by {self.signed_by} ({self.role}) on {self.signed_on}"


def parse_standing_rule(doc: Mapping[str, object], where: str) -> StandingRule | None:
    """``approval.toml`` as a :class:`StandingRule` (None when it holds none)."""
    unknown = set(doc) - {"standing_rule"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}: only [standing_rule]")
    if "standing_rule" not in doc:
        return None
    try:
        return StandingRule.model_validate(doc["standing_rule"])
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: [standing_rule] {path}: {first['msg']}") from None


def approver_agent(name: str, role: str) -> ProvenanceAgent:
    """The Provenance agent that says on whose authority the write was made."""
    return ProvenanceAgent(
        type=CodeableConcept([Coding(PARTICIPANT_TYPE, "verifier", "Verifier")]),
        role=[CodeableConcept(text=role)],
        who=Reference(display=name),
    )


def approved_bundle(bundle: JsonObject, approval: Approval) -> tuple[JsonObject, list[str]]:
    """The Bundle (as read from writeback.json) as it may be sent: excluded patients' entries left out, the
    approver in every Provenance.

    Returns the Bundle and the entries left out (their fullUrls). A Provenance keeps only the targets that are
    still sent; with none left it is dropped.
    """
    excluded = set(approval.excluded)
    kept: list[JsonValue] = []
    left_out: list[str] = []
    entries = outgoing(bundle)
    for sent in entries:
        if sent.is_provenance:
            continue
        if entry_patient(sent.entry) in excluded:
            left_out.append(str(sent.full_url))
        else:
            kept.append(sent.entry)
    names = {str(as_object(e).get("fullUrl")) for e in kept}
    agent = as_json_object(
        approver_agent(
            approval.approved_by,
            approval.role if not approval.standing_rule else f"{approval.role}, {approval.standing_rule}",
        )
    )
    for sent in entries:
        if not sent.is_provenance:
            continue
        resource = dict(sent.resource)
        targets = [t for t in _listed(resource, "target") if as_object(t).get("reference") in names]
        if not targets:
            continue
        resource["target"] = targets
        resource["agent"] = [*_listed(resource, "agent"), agent]
        kept.append({**sent.entry, "resource": resource})
    return {**bundle, "entry": kept}, left_out


def _listed(resource: JsonObject, key: str) -> list[JsonValue]:
    """A list element of a resource (empty when absent or not a list)."""
    found = resource.get(key)
    return found if isinstance(found, list) else []


def split_by_rule(
    bundle: JsonObject, plan: Iterable[PlanLine], rule: StandingRule | None
) -> tuple[JsonObject, JsonObject, list[PlanLine], list[PlanLine]]:
    """A write-back cut in two: what ``rule`` covers, and what waits for a person.

    ``plan``: the plan's lines (writeback-plan.ndjson: each names its patient, action, kind, and the entry's
    identifier or existing reference). Returns (allowed Bundle, held Bundle, allowed plan lines, held
    plan lines); each Bundle keeps a Provenance naming only its own targets. Unchanged lines go with the
    allowed part (nothing is sent).
    """
    allowed_refs: set[str] = set()
    held_lines: list[PlanLine] = []
    allowed_lines: list[PlanLine] = []
    for line in plan:
        if line.action == "unchanged" or (rule is not None and rule.covers(line.action, line.kind)):
            allowed_lines.append(line)
            allowed_refs.add(full_url(line.action, line.identifier, line.existing))
        else:
            held_lines.append(line)
    allowed: list[JsonObject] = []
    held: list[JsonObject] = []
    provenance = None
    for sent in outgoing(bundle):
        if sent.is_provenance:
            provenance = sent.entry
        elif str(sent.full_url) in allowed_refs:
            allowed.append(sent.entry)
        else:
            held.append(sent.entry)
    return (
        {**bundle, "entry": _with_provenance(allowed, provenance)},
        {**bundle, "entry": _with_provenance(held, provenance)},
        allowed_lines,
        held_lines,
    )


def _with_provenance(entries: list[JsonObject], provenance: JsonObject | None) -> list[JsonValue]:
    listed: list[JsonValue] = list(entries)
    return [*listed, provenance_for(provenance, entries)] if entries and provenance is not None else listed


Decision = Literal["approved", "missing", "changed"]


def check(approval: Approval | None, writeback_sha256: str, plan_sha256: str) -> Decision:
    """Whether an approval covers exactly these files."""
    if approval is None:
        return "missing"
    if approval.writeback_sha256 != writeback_sha256 or approval.plan_sha256 != plan_sha256:
        return "changed"
    return "approved"
