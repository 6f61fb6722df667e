"""``fhiradapter sync`` and ``fhiradapter runs``: pull what changed, evaluate, write back; list the runs."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhiradapter.cli.common import (
    PUSH_OUTCOMES,
    SYNC_INTERRUPTED,
    Command,
    ExportOptions,
    PhaseBars,
    command_options,
    counts_text,
    export_options,
    guard,
    mappings_line,
    mappings_option,
    parse_as_of,
    searches_text,
    warn_unused_mappings,
)
from fhiradapter.cli.export import export_key, run_export
from fhiradapter.cli.pull import check_instant
from fhiradapter.cli.server_options import open_server_client, per_search_option, server_options
from fhiradapter.errors import ConfigError, ExitCode
from fhiradapter.shell.common.urls import safe_url

if TYPE_CHECKING:
    from fhiradapter.core.protocol import Mappings
    from fhiradapter.core.results import ProtocolIdentity
    from fhiradapter.shell.server.connection import ServerOptions
    from fhiradapter.shell.server.store import SyncRun
    from fhiradapter.shell.server.sync import SyncOptions, SyncSummary


def store_options(f: Command) -> Command:
    """--data-dir and --store, shared by ``sync`` and ``runs``."""
    f = click.option(
        "--store",
        "store_url",
        metavar="URL",
        default=None,
        help="Where the store lives instead: sqlite:///FILE.db or postgresql://USER@HOST:PORT/DB (password from "
        "PGPASSWORD or ~/.pgpass, never the URL) [default: sqlite in --data-dir].",
    )(f)
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Folder for the store (sync.db) and run folders [default: $FHIRADAPTER_DATA_DIR, "
        "~/.local/share/fhiradapter].",
    )(f)


@dataclass(frozen=True, kw_only=True)
class SyncCommandOptions:
    """What ``sync`` was given, by option (``_sync_options`` turns it into the shell's ``SyncOptions``)."""

    server: ServerOptions
    study: str
    as_of: str
    since: str
    dry_run: bool
    data_dir: Path | None
    store_url: str | None
    mappings_dir: Path | None
    export: ExportOptions
    chunk: int
    mode: str
    bulk: bool
    group: str | None
    per_search: int | None
    progress: bool | None


@click.command("sync", short_help="Pull what changed, evaluate, write the results back.")
@server_options
@click.option("--study", required=True, help="ResearchStudy id, or identifier as SYSTEM|VALUE.")
@click.option("--as-of", "as_of", required=True, metavar="YYYY-MM-DD", help="Data cut-off for the evaluation.")
@click.option(
    "--since",
    default="auto",
    show_default=True,
    metavar="auto|none|INSTANT",
    help="auto = what changed since the last successful sync of this study from this server; none = everything.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Pull and evaluate, print the plan (create / update / unchanged, and whose results would change), "
    "write nothing.",
)
@store_options
@mappings_option("protocol.toml, codes.toml and units.toml")
@export_options
@click.option(
    "--chunk",
    type=click.IntRange(2, 10000),
    default=100,
    show_default=True,
    help="Largest write-back transaction, in entries (whole patients each; parts go concurrently).",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "transaction", "batch", "single"]),
    default="auto",
    show_default=True,
    help="How to write: auto = a transaction if the server offers one, else a batch, else one by one.",
)
@click.option("--bulk", is_flag=True, help="Pull through Bulk Data $export (the study's subjects still by search).")
@click.option("--group", metavar="ID", help="With --bulk: export Group/ID's members instead of every patient.")
@per_search_option
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
@command_options(SyncCommandOptions)
def sync_cmd(options: SyncCommandOptions) -> None:
    """Sync a study with a FHIR R4 server: pull what changed, evaluate, write the results back.

    The store (SQLite in --data-dir) keeps per-server watermarks, the last-seen version of every resource
    pulled and the history of runs. Results are written with conditional creates and If-Match updates, in
    one transaction when the server offers it; on a 412 conflict the run pulls what changed, evaluates again
    and retries once. The watermark advances only when the run succeeds, so a run that dies is simply run
    again. Exit code 0 when everything was written, 13 when conflicts or errors remain, 130 when
    stopped by Ctrl-C (the run is recorded as interrupted; running it again is safe). `fhiradapter runs`
    lists the runs and how each ended.

    \b
    Example:
      fhiradapter sync --server https://fhir.example.org/r4 --study thal-hcc-pilot --as-of 2005-03-31 --dry-run
    """
    show = sys.stderr.isatty() if options.progress is None else options.progress
    with guard(SYNC_INTERRUPTED):
        import asyncio  # noqa: PLC0415

        from fhiradapter.shell.common.mappings_io import load_mappings  # noqa: PLC0415
        from fhiradapter.shell.server.store import SyncStore, default_data_dir  # noqa: PLC0415 - needs [registry]
        from fhiradapter.shell.server.sync import run_sync  # noqa: PLC0415

        export = options.export
        cutoff = _checked(options)
        key = export_key(export.pseudonymise, export.key_file) if export.to else None
        mappings, identity = load_mappings(options.mappings_dir)
        warn_unused_mappings(Path(identity.mappings_dir))
        folder = options.data_dir or default_data_dir()
        store = SyncStore(options.store_url, folder)
        client = asyncio.run(open_server_client(options.server))  # checks the options (and SMART discovery) first
        bars = PhaseBars(show)
        try:
            opts = _sync_options(options, cutoff, (mappings, identity), folder, bars)
            summary = run_sync(client.fresh(), store, opts)  # the discovery's loop is closed: a new client
        finally:
            bars.close()
            store.close()
        _print_sync(summary)
        click.echo(f"  {mappings_line(Path(identity.mappings_dir))}")
        if export.to and summary.out is not None:
            run_export(summary.out, export.to, export.format, key, options.mappings_dir, show)
        if summary.conflicts or summary.errors:
            sys.exit(int(ExitCode.SERVER))


def _checked(options: SyncCommandOptions) -> date:
    """The as-of date; options that do not go together are refused, before anything is read."""
    cutoff = parse_as_of(options.as_of)
    if options.since not in ("auto", "none"):
        check_instant(options.since)
    if options.group and not options.bulk:
        raise ConfigError("--group is only used with --bulk")
    return cutoff


def _sync_options(
    options: SyncCommandOptions, as_of: date, loaded: tuple[Mappings, ProtocolIdentity], folder: Path, bars: PhaseBars
) -> SyncOptions:
    """The run the options ask for, with the mappings ``loaded``, its progress shown on ``bars``: one bar for the
    pull, a line as the evaluation starts, one bar for the push."""
    from fhiradapter.shell.server.approvals import load_standing_rule  # noqa: PLC0415
    from fhiradapter.shell.server.push import push_mode  # noqa: PLC0415
    from fhiradapter.shell.server.sync import SyncOptions  # noqa: PLC0415

    mappings, identity = loaded
    pulling = bars.open("Pulling patients", 1)

    def total(n: int) -> None:
        pulling.length = max(n, 1)

    def evaluating() -> None:
        bars.close()
        if bars.show:
            click.echo("Evaluating the study's patients ...", err=True)

    def writing(entries: int) -> Callable[[int], None]:
        update: Callable[[int], None] = bars.open("Writing results", entries).update
        return update

    return SyncOptions(
        study=options.study,
        as_of=as_of,
        since=options.since,
        dry_run=options.dry_run,
        work_dir=folder / "runs",
        mappings=mappings,
        mappings_identity=identity,
        progress=pulling.update,
        on_total=total,
        on_push=writing,
        chunk=options.chunk,
        mode=push_mode(options.mode),
        bulk=options.bulk,
        group=options.group,
        per_search=options.per_search,
        on_evaluate=evaluating,
        standing_rule=load_standing_rule(Path(identity.mappings_dir)),
    )


@click.command("runs", short_help="List the sync runs a store holds, newest first.")
@store_options
@click.option("--server", metavar="URL", default=None, help="Only the runs against this FHIR base URL.")
@click.option("--study", default=None, help="Only the runs of this study (as given to sync).")
@click.option("--last", type=click.IntRange(1, 10000), default=10, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON (with each run's whole summary).")
@click.option(
    "--reset-limits",
    "reset",
    metavar="URL",
    default=None,
    help="Forget the transaction size learnt for this FHIR base URL (the next sync starts from --chunk), "
    "instead of listing.",
)
def runs_cmd(
    data_dir: Path | None,
    store_url: str | None,
    server: str | None,
    study: str | None,
    last: int,
    as_json: bool,
    reset: str | None,
) -> None:
    """List the sync runs the store holds, newest first: when, how each ended, and what it read and wrote.

    For a scheduled sync: whether last night's run worked, and if not, why (a failed run keeps its error
    message). A run still shown as running either is running now or was killed before it could finish.
    Then the transaction size each server was learnt to take (from its refusals; each sync that writes tries
    twice that, so a limit that no longer holds wears off); --reset-limits URL forgets one.

    \b
    Example:
      fhiradapter runs --data-dir /srv/fhiradapter --last 5
    """
    import json  # noqa: PLC0415

    with guard():
        from fhiradapter.shell.server.run_record import as_stored  # noqa: PLC0415
        from fhiradapter.shell.server.store import SyncStore, default_data_dir  # noqa: PLC0415 - needs [registry]

        folder = data_dir or default_data_dir()
        if store_url is None and not (folder / "sync.db").exists():
            raise ConfigError(f"no sync store in {folder} (sync.db): give the --data-dir or --store that sync used")
        store = SyncStore(store_url, folder)
        try:
            if reset is not None:
                forgot = store.clear_transaction_limit(reset.rstrip("/"))
            else:
                found, total = store.runs(server.rstrip("/") if server else None, study, last)
                limits = [x for x in store.transaction_limits() if server is None or x[0] == server.rstrip("/")]
        finally:
            store.close()
    if reset is not None:
        if forgot is None:
            click.echo(f"No transaction limit was learnt for {reset}: nothing to forget.")
        else:
            click.echo(
                f"Forgot the transaction limit learnt for {reset} (parts of {forgot.max_entries} entries, refused at "
                f"{forgot.refused_at}): the next sync starts from --chunk."
            )
        return
    where = safe_url(store_url) if store_url else str(folder / "sync.db")
    if as_json:
        shown = [
            {
                **{f.name: getattr(run, f.name) for f in dataclasses.fields(run)},
                "started_at": run.started_at.isoformat(),
                "finished_at": run.finished_at.isoformat() if run.finished_at is not None else None,
                "summary": as_stored(run.summary) if run.summary is not None else {},
            }
            for run in found
        ]
        learnt = [
            {"server": s, "max_entries": limit.max_entries, "refused_at": limit.refused_at, "run_id": run_id}
            for s, limit, run_id in limits
        ]
        click.echo(json.dumps({"store": where, "total": total, "runs": shown, "transaction_limits": learnt}, indent=2))
        return
    if not found:
        click.echo(f"No sync runs in {where}" + (" for that server and study." if server or study else "."))
        return
    click.echo(f"Sync runs in {where}, newest first ({len(found)} of {total}):")
    for run in found:
        click.echo(_run_line(run))
        for line in _run_details(run):
            click.echo(f"      {line}")
    if limits:
        click.echo("Transaction limits learnt from the servers' refusals (each sync that writes tries twice these):")
    for url, limit, run_id in limits:
        click.echo(
            f"  {url}: parts of {limit.max_entries} entries, refused at {limit.refused_at} (run {run_id}); "
            f"fhiradapter runs --reset-limits {url} forgets it"
        )


def _run_line(run: SyncRun) -> str:
    started, finished = run.started_at, run.finished_at
    took = f"{(finished - started).total_seconds():.1f} s" if finished else "no end recorded"
    status = run.status + (" (still running, or killed)" if run.status == "running" else "")
    return (
        f"  run {run.run_id}  {started:%Y-%m-%d %H:%M:%S} UTC  {status}  ({took})  "
        f"{(run.summary.study if run.summary else '') or run.study} on {run.server}"
    )


def _run_details(run: SyncRun) -> list[str]:
    """What a run read, planned and wrote, from its stored summary; why it stopped, if it did."""
    s = run.summary
    if s is None:
        return []
    lines = []
    pulled = sum(s.pulled.values())
    if pulled or s.patients:
        since = f"changes since {run.since}" if run.since else "everything"
        read = f"{since}: {s.patients} patient(s), {pulled} resource(s) read"
        lines.append(f"{read}, {s.deleted} deletion(s) noticed")
    if s.plan:
        lines.append(f"plan: {counts_text(s.plan, ('create', 'update', 'unchanged'))}")
    if s.pushed or (s.plan and not run.dry_run):
        pushed = counts_text(s.pushed, ("created", "updated", "unchanged", "conflict", "error"))
        lines.append(f"pushed: {pushed or 'nothing to send'}; conflicts {len(s.conflicts)}, errors {len(s.errors)}")
    if s.approved_by:
        lines.append(f"written under the {s.approved_by}")
    if s.held:  # the rest waits for a person: `approve` and `push` of that folder (not recorded here)
        lines.append(f"held for a person's approval: {s.held} change(s) in {s.held_folder}")
    limits = s.transaction_limit
    if limits is not None and (limits.found or limits.tried or limits.left):
        found, tried, left = (
            f"{v.max_entries} entries" if v else "none" for v in (limits.found, limits.tried, limits.left)
        )
        lines.append(f"transaction limit: found {found}, tried {tried}, left {left}")
    if s.failure:
        lines.append(f"stopped: {s.failure}")
    return lines


def _changes(by_action: Mapping[str, Mapping[str, int]]) -> str:
    """``create child-pugh, eligibility; update response ×2``: one patient's changing results, by action."""
    return "; ".join(
        f"{action} " + ", ".join(kind + (f" ×{n}" if n > 1 else "") for kind, n in sorted(kinds.items()))
        for action, kinds in sorted(by_action.items())
    )


SHOWN_IN_FULL = 50  # patients whose changes a dry run lists one by one; the plan file holds every one


def _print_sync(s: SyncSummary) -> None:
    mode = "dry run, nothing written" if s.dry_run else "written" if sum(s.pushed.values()) else "nothing written"
    since = f"changes since {s.since}" if s.since else "everything"
    click.echo(f"Sync run {s.run_id} of {s.study} from {s.server} ({since}; {mode}).")
    pulled = sum(s.pulled.values())
    click.echo(f"  read from the server: {pulled} resource(s); deletions noticed {s.deleted}")
    e = s.evaluated
    evaluated = f"  patients evaluated {s.patients}"
    if e is not None:
        evaluated += f", from {e.records_read} stored record(s): {e.records_used} used, "
        evaluated += f"{e.records_rejected} rejected"
        if e.records_rejected and s.out is not None:
            reasons = ", ".join(f"{k} {v}" for k, v in e.rejects_by_reason.items())
            evaluated += f" ({reasons}; see {s.out / 'rejects.ndjson'})"
    click.echo(evaluated)
    click.echo(f"  plan for the results: {counts_text(s.plan, ('create', 'update', 'unchanged')) or 'nothing'}")
    if s.changes and s.out is not None:
        verb = "would make" if s.dry_run else "makes"
        plan = s.out / "writeback-plan.ndjson"
        click.echo(
            f"  changes this run {verb} to the hospital record, for {len(s.changes)} patient(s) (all in {plan}):"
        )
        shown = SHOWN_IN_FULL if s.dry_run else 5  # a dry run is read to decide: it says what each change is
        for patient, by_action in list(s.changes.items())[:shown]:
            if s.dry_run and s.in_words.get(patient):
                click.echo(f"    {patient}:")
                for line in s.in_words[patient]:
                    click.echo(f"      {line}")
            else:
                click.echo(f"    {patient}: {_changes(by_action)}")
        if len(s.changes) > shown:
            click.echo(f"    and {len(s.changes) - shown} more patient(s)")
    if not s.dry_run and s.held and s.held_folder is not None:
        why = f"outside the {s.approved_by}" if s.approved_by else "no standing rule in the mappings (approval.toml)"
        click.echo(
            f"  held for a person's approval: {s.held} change(s) ({why}), in {s.held_folder}. Review and approve "
            f'them with `fhiradapter approve {s.held_folder} --by "NAME"`, then `fhiradapter push --server '
            f"{s.server} {s.held_folder / 'writeback.json'}`"
        )
    if not s.dry_run:
        if s.approved_by:
            click.echo(f"  written under the {s.approved_by}")
        pushed = counts_text(s.pushed, PUSH_OUTCOMES) or "nothing to send"
        if s.provenances:
            pushed += f" (with {s.provenances} Provenance record(s) of the run)"
        click.echo(f"  pushed: {pushed}; conflicts {len(s.conflicts)}; errors {len(s.errors)}")
        click.echo(f"  watermark: {s.watermark or 'not advanced'}")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items())
    searches = searches_text(s.per_search, s.split)
    click.echo(f"  {s.requests} request(s){searches}, {s.retries} retried ({timing}); results in {s.out}")
    for line in [*s.warnings, *s.conflicts, *s.errors][:20]:
        click.echo(f"  note: {line}")
