"""``fhiradapter push``: a write-back Bundle to a FHIR server, with every entry's outcome."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhiradapter.cli.common import PUSH_INTERRUPTED, PUSH_OUTCOMES, counts_text, guard
from fhiradapter.cli.server_options import open_server_client, server_options

if TYPE_CHECKING:
    from fhiradapter.shell.server.connection import ServerOptions

from fhiradapter.errors import ExitCode


@click.command("push", short_help="Write a write-back Bundle to a FHIR server.")
@server_options
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--mode",
    type=click.Choice(["auto", "transaction", "batch", "single"]),
    default="auto",
    show_default=True,
    help="auto = a transaction if the server offers one (CapabilityStatement), else a batch, else one by one.",
)
@click.option(
    "--chunk",
    type=click.IntRange(2, 10000),
    default=100,
    show_default=True,
    help="Largest transaction, in entries; bigger write-backs go as several (whole patients each), concurrently. "
    "In auto mode, a server that refuses a transaction for its size gets smaller ones.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
def push_cmd(bundle: Path, mode: str, chunk: int, progress: bool | None, server: ServerOptions) -> None:
    """Apply an approved write-back Bundle (writeback.json from evaluate) to a FHIR R4 server.

    Nothing is sent unless `fhiradapter approve` recorded an approval of exactly this writeback.json and its
    plan (exit code 17 otherwise); patients the approval excludes are left out, and the approver is written
    into the run's Provenance.

    Creates are conditional (If-None-Exist on the result's identifier) and updates carry If-Match with the
    version evaluate read, so pushing twice never duplicates and never overwrites a newer version: a
    changed resource is reported as a conflict (re-run pull and evaluate, then push the new writeback.json).
    Exit code 0 when everything was applied, 13 when anything conflicted or failed, 17 when not approved.
    """
    import asyncio  # noqa: PLC0415

    from fhiradapter.core.writeback import entries_of  # noqa: PLC0415
    from fhiradapter.shell.server.approvals import approved_for_push  # noqa: PLC0415
    from fhiradapter.shell.server.push import PushSummary, load_bundle, push, push_mode  # noqa: PLC0415

    with guard(PUSH_INTERRUPTED):
        doc, approval, left_out = approved_for_push(bundle, load_bundle(bundle))
        excluded = (
            f"; {len(approval.excluded)} patient(s) excluded, {len(left_out)} entries not sent" if left_out else ""
        )
        click.echo(f"Approved by {approval.approved_by} ({approval.role}) at {approval.approved_at}{excluded}.")

        show = sys.stderr.isatty() if progress is None else progress
        total = len(entries_of(doc))

        async def run() -> PushSummary:
            client = await open_server_client(server)
            async with client:
                with click.progressbar(
                    length=max(total, 1), label="Writing", file=sys.stderr, hidden=not show or not total
                ) as bar:
                    return await push(client, doc, push_mode(mode), chunk, progress=bar.update)

        summary = asyncio.run(run())
        outcomes = counts_text(summary.outcomes, PUSH_OUTCOMES) or "nothing to send"
        provenances = sum(1 for _method, url, *_rest in summary.written if url == "Provenance")
        if provenances:  # created counts them too: say so, or the counts do not add up to the plan's
            outcomes += f" (with {provenances} Provenance record(s) of the run)"
        parts = f" in {summary.parts} parts" if summary.parts > 1 else ""
        click.echo(
            f"Pushed {bundle} as {summary.mode}{parts}: {outcomes}. "
            f"{summary.requests} request(s), {summary.retries} retried."
        )
        for note in summary.notes():
            click.echo(f"  note: {note}")
        for line in [*summary.conflicts, *summary.errors][:20]:
            click.echo(f"  {line}")
        if not summary.complete:
            sys.exit(int(ExitCode.SERVER))
