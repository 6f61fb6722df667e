"""approval.json beside a write-back: recorded by ``fhiradapter approve``, checked before anything is sent.

An approval names the sha256 of ``writeback.json`` and ``writeback-plan.ndjson`` as they were reviewed; a push
of a Bundle that no approval covers, or that changed since, is refused before any request. The standing rule
of scheduled syncs comes from ``approval.toml`` in the site's mappings folder.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from fhiradapter.core.approval import Approval, StandingRule, approved_bundle, check, parse_standing_rule
from fhiradapter.core.json_types import JsonObject
from fhiradapter.core.review import PlanLine, decode_plan_line
from fhiradapter.errors import InputError, NotApproved, OutputError
from fhiradapter.shell.common.files import write_new
from fhiradapter.shell.common.mappings_io import read_toml
from fhiradapter.shell.common.out_folder import file_digest

APPROVAL = "approval.json"
WRITEBACK = "writeback.json"
PLAN = "writeback-plan.ndjson"
RULE_FILE = "approval.toml"


def digests(folder: Path) -> tuple[str, str]:
    """The sha256 of the write-back and of its plan, as an approval names them."""
    try:
        return file_digest(folder / WRITEBACK), file_digest(folder / PLAN)
    except FileNotFoundError as exc:
        raise InputError(
            f"{exc.filename} not found: give the --out folder of an `fhiradapter evaluate` run that wrote a write-back"
        ) from None
    except OSError as exc:
        raise InputError(f"{exc.filename} unreadable: {exc.strerror}") from None


def read_plan(folder: Path) -> list[PlanLine]:
    """The plan's lines, each shown to a person and checked as it was written."""
    try:
        raw = (folder / PLAN).read_bytes()
    except OSError as exc:
        raise InputError(f"{folder / PLAN} unreadable: {exc.strerror}") from None
    lines = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                lines.append(decode_plan_line(line))
            except msgspec.DecodeError as exc:
                raise InputError(f"{folder / PLAN} line {n} is not a write-back plan line: {exc}") from None
    return lines


def read_approval(folder: Path) -> Approval | None:
    path = folder / APPROVAL
    try:
        return msgspec.json.decode(path.read_bytes(), type=Approval)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise InputError(f"{path} is not an approval fhiradapter wrote ({exc}); approve the write-back again") from None


def write_approval(folder: Path, approval: Approval) -> Path:
    """approval.json, mode 0600, written beside its final name and renamed (a planted link is replaced, not
    followed)."""
    try:
        write_new(folder / APPROVAL, msgspec.json.format(msgspec.json.encode(approval), indent=2) + b"\n")
    except OSError as exc:
        raise OutputError(f"cannot write {folder / APPROVAL}: {exc.strerror}") from None
    return folder / APPROVAL


def approved_for_push(bundle_path: Path, bundle: JsonObject) -> tuple[JsonObject, Approval, list[str]]:
    """The Bundle as the approval beside it lets it out, the approval, and the entries it leaves out.

    Refused (:class:`NotApproved`) when there is no approval, or the files changed after it.
    """
    folder = bundle_path.parent
    if bundle_path.name != WRITEBACK:
        raise NotApproved(
            f"{bundle_path}: push sends a write-back as evaluate wrote it ({WRITEBACK}, beside its plan and its "
            "approval); nothing was sent"
        )
    approval = read_approval(folder)
    state = check(approval, *digests(folder))
    if state == "missing" or approval is None:
        raise NotApproved(
            f"{bundle_path} is not approved: review it and record an approval with `fhiradapter approve {folder} "
            '--by "NAME"`, then push again. Nothing was sent'
        )
    if state == "changed":
        raise NotApproved(
            f"{bundle_path} (or its plan) changed after {approval.approved_by} approved it on {approval.approved_at}: "
            f'review it and approve it again (`fhiradapter approve {folder} --by "NAME"`). Nothing was sent'
        )
    sent, left_out = approved_bundle(bundle, approval)
    return sent, approval, left_out


def load_standing_rule(mappings_dir: Path) -> StandingRule | None:
    """``approval.toml`` of a mappings folder (None when the folder has none: every change waits for a person)."""
    path = mappings_dir / RULE_FILE
    doc = read_toml(path)
    return parse_standing_rule(doc, str(path)) if doc is not None else None
