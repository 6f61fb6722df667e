"""``fhiradapter undo``: take a pushed run back on the server (results entered-in-error, previous versions back)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhiradapter.cli.common import guard
from fhiradapter.cli.server_options import open_server_client, server_options

if TYPE_CHECKING:
    from fhiradapter.shell.server.connection import ServerOptions

from fhiradapter.errors import ConfigError, ExitCode


@click.command("undo", short_help="Take a pushed run back: results entered-in-error.")
@server_options
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--by", "who", required=True, metavar="NAME", help="Who takes the run back (written into the Provenance)."
)
@click.option("--role", default="data manager", show_default=True, help="Their role, as the Provenance records it.")
@click.option("--dry-run", is_flag=True, help="Say what would be taken back; change nothing.")
def undo_cmd(out: Path, who: str, role: str, dry_run: bool, server: ServerOptions) -> None:
    """Take back on the server what the write-back in OUT wrote (OUT: the folder it was pushed from).

    Each result the run created is marked entered-in-error (never deleted: the record keeps its history);
    each resource it updated (a ResearchSubject's status and period) gets the version it wrote over back,
    with If-Match. Anything changed since the run wrote it is reported as a conflict and left alone. One
    Provenance names who took the run back. Running it again changes nothing. Exit code 13 when conflicts
    remain.

    \b
    Example:
      fhiradapter undo --server https://fhir.example.org/r4 out/ --by "A. Kim" --dry-run
    """
    import asyncio  # noqa: PLC0415

    from fhiradapter import __version__  # noqa: PLC0415
    from fhiradapter.shell.server.approvals import read_approval  # noqa: PLC0415
    from fhiradapter.shell.server.push import load_bundle  # noqa: PLC0415
    from fhiradapter.shell.server.undo import UndoSummary, undo  # noqa: PLC0415

    with guard("a run half taken back is finished by running the same command again"):
        if not who.strip():
            raise ConfigError("--by needs the name of who takes the run back")
        bundle = load_bundle(out / "writeback.json")
        approval = read_approval(out)
        excluded = approval.excluded if approval else ()

        async def run() -> UndoSummary:
            client = await open_server_client(server)
            async with client:
                return await undo(
                    client,
                    bundle,
                    excluded,
                    by=who.strip(),
                    role=role.strip(),
                    recorded=datetime.now(UTC).isoformat(timespec="seconds"),
                    adapter_version=__version__,
                    dry_run=dry_run,
                )

        s = asyncio.run(run())
        verb = ("would be marked", "would get") if dry_run else ("marked", "got")
        click.echo(
            f"Undo of run {s.run or '(no run tag)'} from {out}{' (dry run: nothing changed)' if dry_run else ''}:"
        )
        click.echo(f"  {len(s.marked)} result(s) it created {verb[0]} entered-in-error")
        click.echo(f"  {len(s.restored)} resource(s) it updated {verb[1]} their previous version back")
        click.echo(f"  {len(s.unchanged)} already as before; {len(s.never_written)} never written by the run")
        subjects = [r.split("/", 1)[1] for r in s.restored if r.startswith("ResearchSubject/")]
        if subjects:  # above all the ResearchSubjects: their status and period are back
            shown = ", ".join(subjects[:20]) + (f" and {len(subjects) - 20} more" if len(subjects) > 20 else "")
            others = len(s.restored) - len(subjects)
            rest = f"; and {others} result(s) it had updated" if others else ""
            click.echo(f"  previous version{' would be' if dry_run else ''} back for ResearchSubject {shown}{rest}")
        for line in s.conflicts[:20]:
            click.echo(f"  conflict: {line}")
        if s.provenance:
            click.echo(f"  recorded in {s.provenance} (by {who.strip()}, {role.strip()})")
        if not s.changed and not s.conflicts:
            click.echo(
                "  nothing to take back: nothing of this write-back is on the server as it wrote it (never pushed, "
                "or already taken back)."
            )
        if s.conflicts:
            sys.exit(int(ExitCode.SERVER))
