"""``fhiradapter approve``: a person reviews a write-back and records an approval bound to its exact content."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from fhiradapter.cli.common import guard
from fhiradapter.errors import ConfigError, InputError

SHOWN = 200  # patients listed one by one; the plan and the report hold every one


@click.command("approve", short_help="Review a write-back and approve it (four eyes), before push.")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--by", "approver", required=True, metavar="NAME", help="Who approves (written into every Provenance).")
@click.option(
    "--role",
    default="data manager",
    show_default=True,
    help="The approver's role, as the Provenance records it.",
)
@click.option(
    "--exclude",
    "excluded",
    multiple=True,
    metavar="Patient/ID",
    help="Keep this patient's changes out of the push (repeat for several).",
)
@click.option("--yes", is_flag=True, help="Approve without asking (the summary is still printed).")
def approve_cmd(out: Path, approver: str, role: str, excluded: tuple[str, ...], yes: bool) -> None:
    """Show what the write-back in OUT changes in the hospital's record, and record an approval of it.

    OUT is the --out folder of `fhiradapter evaluate` (or a sync run's folder). The approval (OUT/approval.json)
    names the sha256 of writeback.json and writeback-plan.ndjson: `fhiradapter push` sends nothing that it does
    not cover, and a write-back changed after approval is refused. The approver and role are written into the
    Provenance of every write. --exclude keeps a patient's changes out.

    \b
    Example:
      fhiradapter approve out/ --by "A. Kim" --role "data manager" --exclude Patient/thal-04
    """
    from fhiradapter.core.approval import Approval  # noqa: PLC0415
    from fhiradapter.core.review import by_patient  # noqa: PLC0415
    from fhiradapter.core.study_publish import STUDY_DEFINITION  # noqa: PLC0415
    from fhiradapter.shell.common.out_folder import check_manifest  # noqa: PLC0415
    from fhiradapter.shell.server.approvals import digests, read_plan, write_approval  # noqa: PLC0415

    with guard():
        if not approver.strip():
            raise ConfigError("--by needs the approver's name")
        if not out.is_dir():
            raise InputError(f"{out} does not exist: give the --out folder of an `fhiradapter evaluate` run")
        if not (out / "manifest.json").exists() and not (out / "writeback.json").exists():
            raise InputError(f"{out} is not the --out folder of an `fhiradapter evaluate` run (no write-back in it)")
        if (out / "manifest.json").exists() and not (out / "writeback.json").exists():
            raise InputError(f"{out}: that run was made with --no-writeback: there is nothing to approve")
        check_manifest(out, ["writeback.json", "writeback-plan.ndjson"])  # a whole run's, unchanged
        writeback_sha, plan_sha = digests(out)
        plan = read_plan(out)
        patients = list(dict.fromkeys(line.patient for line in plan))
        excluded = tuple(p if "/" in p else f"Patient/{p}" for p in excluded)  # thal-04 means Patient/thal-04
        unknown = [p for p in excluded if p not in patients]
        if unknown:
            raise ConfigError(f"--exclude {', '.join(unknown)}: not in this write-back's plan (see {out})")
        words = by_patient(plan)
        counts = {a: sum(1 for line in plan if line.action == a) for a in ("create", "update", "unchanged")}
        # a study's own definition (``fhiradapter study``) is one group of lines, not a patient
        what = (
            "the study's definition"
            if patients == [STUDY_DEFINITION]
            else f"{len(words)} patient(s) of {len(patients)}"
        )
        click.echo(
            f"Changes to the hospital record in {out / 'writeback.json'}: {what}"
            + (f" ({len(excluded)} excluded: not sent)" if excluded else "")
            + f"; create {counts['create']}, update {counts['update']}, unchanged {counts['unchanged']}."
        )
        for patient, lines in list(words.items())[:SHOWN]:
            mark = "  (excluded: not sent)" if patient in excluded else ""
            click.echo(f"  {patient}{mark}:")
            for line in lines:
                click.echo(f"    {line}")
        if len(words) > SHOWN:
            click.echo(
                f"  and {len(words) - SHOWN} more patient(s): every change is in {out / 'writeback-plan.ndjson'}"
            )
        if not words:
            click.echo("  none: the write-back changes nothing.")
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError("not approved: confirm with --yes (no terminal to ask on)")
            click.confirm(f"Approve these changes as {approver} ({role})?", abort=True)
        approval = Approval(
            approved_by=approver.strip(),
            role=role.strip(),
            approved_at=datetime.now(UTC).isoformat(timespec="seconds"),
            writeback_sha256=writeback_sha,
            plan_sha256=plan_sha,
            excluded=tuple(sorted(excluded)),
        )
        path = write_approval(out, approval)
        left = f"; {len(excluded)} patient(s) excluded" if excluded else ""
        click.echo(
            f"Approved by {approval.approved_by} ({approval.role}) at {approval.approved_at}{left}: {path} "
            f"(writeback.json sha256 {writeback_sha[:16]}…)."
        )
        click.echo(f"Send it with: fhiradapter push --server URL {out / 'writeback.json'}")
