"""``fhiradapter pull``: a study's data from a FHIR server into NDJSON files (search or Bulk Data)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhiradapter.cli.common import PULL_INTERRUPTED, command_options, guard, searches_text
from fhiradapter.cli.server_options import open_server_client, per_search_option, server_options
from fhiradapter.errors import ConfigError

if TYPE_CHECKING:
    from fhiradapter.shell.server.bulk import BulkSummary
    from fhiradapter.shell.server.connection import ServerOptions
    from fhiradapter.shell.server.pull import PullSummary


@dataclass(frozen=True, kw_only=True)
class PullOptions:
    """What ``pull`` was given, by option."""

    server: ServerOptions
    study: str | None
    out: Path
    since: str | None
    bulk: bool
    group: str | None
    per_search: int | None
    progress: bool | None


@click.command("pull", short_help="Pull a study's data from a FHIR server into NDJSON files.")
@server_options
@click.option("--study", help="ResearchStudy id, or identifier as SYSTEM|VALUE (required unless --bulk).")
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder for the NDJSON files."
)
@click.option("--since", metavar="INSTANT", help="Only resources changed after this instant (_lastUpdated / _since).")
@click.option(
    "--bulk", is_flag=True, help="Use Bulk Data $export (Group/ID/$export with --group, else Patient/$export)."
)
@click.option("--group", metavar="ID", help="With --bulk: the Group whose members to export.")
@per_search_option
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
@command_options(PullOptions)
def pull_cmd(options: PullOptions) -> None:
    """Pull a study's data from a FHIR R4 server into NDJSON files (one per resource type).

    By search (the default): the study's ResearchSubjects give the patients; for each, the Patient and its
    Observation, MedicationStatement, AdverseEvent, Condition, Consent and BodyStructure resources are
    searched (paged along `next` links, `Prefer: handling=strict`), then the Medications they reference.
    With --bulk: one Bulk Data $export, polled until ready (Retry-After, X-Progress), its files downloaded;
    an interrupted bulk pull resumes the same export when run again; Ctrl-C cancels it on the server. A line
    of an exported file that is no resource is a reject, listed in pull-rejects.ndjson.
    The folder is what `fhiradapter evaluate` reads; pull-manifest.json records what was pulled from where.
    It holds one pull: --out must be new, empty, or an earlier pull's folder. A pull is written in a folder
    beside it and replaces it whole once complete (a --since pull then leaves only what changed); a pull
    that fails leaves --out as it was.

    \b
    Examples:
      FHIRADAPTER_TOKEN=... fhiradapter pull --server https://fhir.example.org/r4 --study thal-hcc-pilot --out pulled/
      fhiradapter pull --server https://fhir.example.org/r4 --bulk --group thal-cohort --out pulled/
    """
    import asyncio  # noqa: PLC0415

    from fhiradapter.shell.server.pull import PullSummary  # noqa: PLC0415

    show = sys.stderr.isatty() if options.progress is None else options.progress
    out = options.out
    with guard(PULL_INTERRUPTED):
        if options.since is not None:
            check_instant(options.since)
        if not options.bulk and not options.study:
            raise ConfigError("--study is required (or use --bulk)")
        if options.group and not options.bulk:
            raise ConfigError("--group is only used with --bulk")
        created = not out.exists()
        try:
            pulled: BulkSummary | PullSummary
            if options.bulk:
                pulled = asyncio.run(_bulk_pull(options, show))
            else:
                pulled = asyncio.run(_search_pull(options, show))
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):  # a failed pull leaves no empty folder
                out.rmdir()
            raise
        _print_search(pulled, out) if isinstance(pulled, PullSummary) else _print_bulk(pulled, out)


async def _bulk_pull(options: PullOptions, show: bool) -> BulkSummary:
    """One Bulk Data export into ``options.out``, its progress said as the server reports it."""
    from fhiradapter.shell.server.bulk import bulk_pull  # noqa: PLC0415

    def shown(progress_text: str) -> None:
        if show:
            click.echo(f"  export in progress: {progress_text}", err=True)

    async with await open_server_client(options.server) as client:
        return await bulk_pull(client, options.out, options.group, since=options.since, on_progress=shown)


async def _search_pull(options: PullOptions, show: bool) -> PullSummary:
    """The study's patients by search into ``options.out``, with a bar of the patients pulled."""
    from fhiradapter.shell.server.pull import pull  # noqa: PLC0415

    async with await open_server_client(options.server) as client:
        with click.progressbar(length=1, label="Pulling patients", file=sys.stderr, hidden=not show) as bar:

            def total(n: int) -> None:
                bar.length = max(n, 1)

            return await pull(
                client,
                str(options.study),
                options.out,
                options.since,
                progress=bar.update,
                on_total=total,
                per_search=options.per_search,
            )


def _print_bulk(summary: BulkSummary, out: Path) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.resources.items()))
    resumed = " (resumed)" if summary.resumed else ""
    click.echo(f"Bulk export{resumed} as of {summary.transaction_time}: {counts}.")
    click.echo(f"  {summary.polls} status poll(s). Wrote {len(summary.files)} file(s) to {out}")
    if summary.searched:
        click.echo(f"  note: the export returned no {', '.join(summary.searched)}: read by search instead")
    for error in summary.errors[:20]:
        click.echo(f"  server error file: {error}")
    for refused in summary.refused:
        click.echo(f"  refused: {refused}")
    if summary.rejected:
        from fhiradapter.shell.run.readers import PULL_REJECTS  # noqa: PLC0415
        from fhiradapter.shell.server.pull_folder import first_few  # noqa: PLC0415

        where = [f"{r.file} {r.locator} ({r.code})" for r in summary.rejects]
        click.echo(
            f"  rejected: {summary.rejected} line(s) of the export are no resource evaluate can read, "
            f"listed in {out / PULL_REJECTS} (evaluate rejects them too): {first_few(where, 5)}"
        )
    print_replaced(out, summary.replaced)


def _print_search(summary: PullSummary, out: Path) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.resources.items()))
    click.echo(f"Pulled {summary.study}: {summary.patients} patient(s); {counts}.")
    click.echo(
        f"  {summary.requests} request(s){searches_text(summary.per_search, summary.split)}, "
        f"{summary.retries} retried. Wrote {len(summary.files)} file(s) to {out}"
    )
    for warning in summary.warnings:
        click.echo(f"  note: {warning}")
    print_replaced(out, summary.replaced)


def print_replaced(out: Path, removed: list[str]) -> None:
    from fhiradapter.shell.server.pull_folder import first_few  # noqa: PLC0415

    if removed:
        shown = first_few(removed, 5)
        click.echo(
            f"  note: this pull replaced the earlier one in {out}; removed its {len(removed)} other file(s): {shown}"
        )


def check_instant(value: str) -> None:
    from datetime import datetime  # noqa: PLC0415

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since must be an instant like 2024-01-31T00:00:00Z, got {value!r}") from None
    if parsed.tzinfo is None:
        raise ConfigError(f"--since needs a time zone (e.g. Z or +09:00): {value!r}")
