"""Command line: ``fhiradapter evaluate`` and ``fhiradapter export``.

Parses options, runs the pipeline or the export, maps errors to exit codes.

Only this module turns exceptions into messages and exit codes (see ``fhiradapter.errors``).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import click

from fhiradapter import __version__
from fhiradapter.errors import AdapterError, ConfigError, ExitCode, NothingEvaluated


def _parse_as_of(value: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ConfigError(f"--as-of must be a date as YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--as-of {value} is no calendar date (that month has no such day)") from None


INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT

_PULL_INTERRUPTED = (
    "the NDJSON files of an unfinished pull are not put in place (a Bulk export resumes when the same command is "
    "run again)"
)
_PUSH_INTERRUPTED = (
    "parts already sent may have been applied, each whole or not at all; pushing the same file again creates no "
    "duplicates, but its updates already applied are refused as conflicts (412): pull and evaluate again, then "
    "push the new writeback.json"
)
_SYNC_INTERRUPTED = (
    "the watermark was not advanced and results already written are found again by their identifiers, so "
    "running the same command again is safe"
)


# Packages a plain `pip install fhiradapter` leaves out, by the extra that brings them (pyproject.toml).
EXTRAS = {"sqlalchemy": "registry", "alembic": "registry", "psycopg": "postgres", "pyarrow": "parquet"}


def _stopping(signum: int, frame: Any) -> None:
    """SIGINT after the first, while the command stops: it is stopping already."""


@contextmanager
def _guard(interrupted: str = "run the same command again") -> Iterator[None]:
    """Turn the adapter's errors into a one-line message and its exit code; hide unexpected errors' text.

    ``interrupted``: what a Ctrl-C leaves behind and what to do next, said before exiting with 130.
    """
    try:
        yield
    except KeyboardInterrupt:
        # A second Ctrl-C while stopping: no traceback, one message. A Python-level handler, not SIG_IGN, which
        # the processes started later would inherit.
        signal.signal(signal.SIGINT, _stopping)
        click.echo(f"interrupted (Ctrl-C): {interrupted}", err=True)
        sys.exit(INTERRUPTED)
    except AdapterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(exc.exit_code))
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(package)
        if extra is None:
            raise
        click.echo(
            f"error: this needs {package}, which comes with an extra: pip install 'fhiradapter[{extra}]'", err=True
        )
        sys.exit(int(ExitCode.CONFIG))
    except BrokenPipeError:  # output piped into `head`, which has read enough: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, and no error at exit
        sys.exit(int(ExitCode.OK))
    except Exception as exc:
        if os.environ.get("FHIRADAPTER_DEBUG"):
            raise
        # The message of an unexpected error may quote patient data: show only its type.
        click.echo(
            f"error: unexpected internal error ({type(exc).__name__}); set FHIRADAPTER_DEBUG=1 "
            "for the traceback and please report it",
            err=True,
        )
        sys.exit(int(ExitCode.FAILURE))


_EXPORT_TO_HELP = (
    "sqlite:///FILE.db, postgresql://USER@HOST:PORT/DB (password from PGPASSWORD or ~/.pgpass, never the URL), "
    "csv:FOLDER or parquet:FOLDER."
)
_KEY_HELP = "File holding the pseudonymisation secret (>= 32 bytes, mode 600) [default: $FHIRADAPTER_PSEUDONYM_KEY]."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhiradapter", message="%(prog)s %(version)s")
def main() -> None:
    """Apply the thalidomide-HCC pilot protocol to FHIR R4 data and report the results."""


@main.command(short_help="Apply the protocol to FHIR files: results, write-back, report.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--as-of",
    "as_of",
    required=True,
    metavar="YYYY-MM-DD",
    help="Data cut-off: nothing dated after this day is read. Also the censoring limit.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for results.json, rejects.ndjson and summary.json (created if missing).",
)
@click.option(
    "--mappings",
    "mappings_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with protocol.toml, codes.toml and units.toml [default: the mappings shipped with fhiradapter].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes to use [default: 2 for inputs over 32 MB, else 1].",
)
@click.option(
    "--report/--no-report",
    default=True,
    help="Write report.html and report.md (tables, survival curve, swimmer plot) [default: on].",
)
@click.option(
    "--writeback/--no-writeback",
    default=True,
    help="Write writeback.json and writeback-plan.ndjson, the results as FHIR resources to send to a server "
    "[default: on]. Off: faster, for runs whose results stay in files.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
@click.option(
    "--export-to", "export_to", metavar="URL", default=None, help="Then export the results: " + _EXPORT_TO_HELP
)
@click.option(
    "--export-format",
    type=click.Choice(["tables", "sdtm"]),
    default="tables",
    show_default=True,
    help="With --export-to: registry tables, or SDTM datasets (files only).",
)
@click.option(
    "--pseudonymise",
    is_flag=True,
    help="With --export-to: keyed-hash subject keys, ages instead of birth dates, no free text.",
)
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help=_KEY_HELP)
@click.option(
    "--study",
    metavar="ID",
    default=None,
    help="The ResearchStudy id whose subjects are evaluated [default: [study] id in protocol.toml]. Patients "
    "without a ResearchSubject of it are counted as not in the study, and never written back.",
)
@click.option(
    "--fhir-base",
    "fhir_bases",
    multiple=True,
    metavar="URL",
    help="The FHIR base URL the data came from (repeatable): its absolute references are local. A reference "
    "to any other server is rejected (bad-reference). A pull folder's server is known already.",
)
@click.option(
    "--screen-candidates",
    is_flag=True,
    help="Also screen the patients who are not in the study, as candidates at the as-of date; their results "
    "go to candidates.ndjson, apart from the study's. Nothing is written back for them.",
)
@click.option(
    "--enrol-candidates",
    is_flag=True,
    help="With --screen-candidates: write the candidates back too (a new ResearchSubject each, with its "
    "status), i.e. enrol them in the study. A person's decision: use with care.",
)
def evaluate(
    inputs: tuple[Path, ...],
    as_of: str,
    out: Path,
    mappings_dir: Path | None,
    workers: int | None,
    report: bool,
    writeback: bool,
    progress: bool | None,
    export_to: str | None,
    export_format: str,
    pseudonymise: bool,
    key_file: Path | None,
    study: str | None,
    fhir_bases: tuple[str, ...],
    screen_candidates: bool,
    enrol_candidates: bool,
) -> None:
    """Evaluate the protocol on FHIR files.

    INPUTS are NDJSON files (.ndjson, .ndjson.gz; one resource per line, as a Bulk Data export writes
    them), JSON files holding a Bundle or a single resource, or folders of such files (read
    recursively). Every input record is either used or listed, with the reason, in rejects.ndjson.

    Only the study's subjects (patients with a ResearchSubject of the study) are evaluated and written
    back; everyone else in the input is counted as not in the study (--screen-candidates screens them).

    The results go to results.json, the FHIR R4 write-back to writeback.json (a transaction Bundle to
    post to the hospital's server) and the study team's report to report.html and report.md.

    \b
    Example:
      fhiradapter evaluate fixtures/paper-cohort/input --as-of 2005-03-31 --out out/
    """
    from fhiradapter.shell.mappings_io import load_mappings  # noqa: PLC0415 - keep --help fast
    from fhiradapter.shell.pipeline import run_evaluate  # noqa: PLC0415
    from fhiradapter.shell.progress import RunProgress  # noqa: PLC0415
    from fhiradapter.shell.readers import expand_inputs  # noqa: PLC0415

    with _guard():
        cutoff = _parse_as_of(as_of)
        if enrol_candidates and not screen_candidates:
            raise ConfigError("--enrol-candidates is only used with --screen-candidates")
        key = _export_key(pseudonymise, key_file) if export_to else None
        mappings, identity = load_mappings(mappings_dir)
        files = expand_inputs(list(inputs), exclude=out)
        total = sum(f.stat().st_size for f in files)
        show = sys.stderr.isatty() if progress is None else progress
        # One display for every phase: two passes over the data (reading and mapping, then grouping and
        # evaluating), then writing the outputs and drawing the report.
        display = RunProgress(total, tty=sys.stderr.isatty()) if show else None
        try:
            summary = run_evaluate(
                list(inputs),
                out,
                cutoff,
                mappings,
                identity,
                progress=display.advance if display else None,
                workers=workers,
                report=report,
                writeback=writeback,
                study=study,
                screen_candidates=screen_candidates,
                enrol_candidates=enrol_candidates,
                fhir_bases=fhir_bases,
                on_phase=display.phase if display else None,
            )
        finally:
            if display is not None:
                display.close()
    with _guard():
        _print_summary(summary, out)
        if not summary["patients"]:
            raise NothingEvaluated(_nothing_evaluated(summary))
        if export_to:
            _run_export(out, export_to, export_format, key, mappings_dir, show)


def _nothing_evaluated(summary: dict[str, Any]) -> str:
    """Why a run evaluated no one, and what to do about it."""
    population = summary.get("population") or {}
    if not summary["records_read"]:
        return "no patient was evaluated: the input holds no FHIR record (see rejects.ndjson for files not read)"
    if population.get("not-in-study"):
        return (
            f"no patient was evaluated: {population['not-in-study']} patient(s) in the input, none with a "
            "ResearchSubject of the study (--study names another study; --screen-candidates screens them)"
        )
    return "no patient was evaluated: the input holds no Patient that its records name (see rejects.ndjson)"


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    click.echo(
        f"Read {summary['records_read']} records from {summary['files']} file(s): "
        f"{summary['records_used']} used, {summary['records_rejected']} rejected; "
        f"{summary['patients']} patient(s) evaluated."
    )
    width = max([len(t) for t in summary["by_type"]] + [13])
    click.echo(f"  {'resource type':<{width}}  {'read':>7}  {'used':>7}  {'rejected':>8}")
    for rtype, c in summary["by_type"].items():
        click.echo(f"  {rtype:<{width}}  {c['read']:>7}  {c['used']:>7}  {c['rejected']:>8}")
    if summary["rejects_by_reason"]:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["rejects_by_reason"].items())
        click.echo(f"  rejects by reason: {reasons}")
    population = summary.get("population") or {}
    if any(population.get(k) for k in ("candidates", "not-in-study", "not-screened")):
        click.echo(
            f"  patients: {population.get('subjects', 0)} study subject(s) evaluated; "
            + ", ".join(
                f"{n} {label}"
                for key, label in (
                    ("candidates", "screening candidate(s) (candidates.ndjson)"),
                    ("not-in-study", "not in the study (no ResearchSubject of it: not evaluated)"),
                    ("not-screened", "candidate(s) not screened (died on or before the as-of date)"),
                )
                if (n := population.get(key))
            )
        )
    for kind, codes in (summary.get("unmapped_codes") or {}).items():
        shown = ", ".join(f"{c['code']} ({c['records']})" for c in codes[:3])
        click.echo(f"  most frequent unmapped {kind}: {shown} (all in summary.json)")
    wb = summary.get("writeback")
    names = ["results.json", "clinical.ndjson", "rejects.ndjson", "summary.json"]
    if wb is None:
        click.echo("Write-back: not planned (--no-writeback); no writeback.json.")
    else:
        click.echo(
            f"Write-back plan: {wb.get('create', 0)} to create, {wb.get('update', 0)} to update, "
            f"{wb.get('unchanged', 0)} unchanged (writeback.json, writeback-plan.ndjson)."
        )
        names += ["writeback.json", "writeback-plan.ndjson"]
    if (out / "candidates.ndjson").exists() and population.get("candidates") is not None:
        names.append("candidates.ndjson")
    names += [n for n in ("report.html", "report.md", "report-km.png", "report-swimmer.png") if (out / n).exists()]
    click.echo(f"Wrote to {out}: {', '.join(names)}, and manifest.json last.")
    if "report.html" in names:
        click.echo(f"Open {out / 'report.html'} in a browser to read the report.")
    seconds = summary.get("seconds") or {}
    if seconds:
        phases = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in seconds.items())
        click.echo(f"Took {sum(seconds.values()):.1f} s with {summary['workers']} worker(s) ({phases}).")


def _export_key(pseudonymise: bool, key_file: Path | None) -> bytes | None:
    from fhiradapter.shell.export import load_key  # noqa: PLC0415

    if key_file is not None and not pseudonymise:
        raise ConfigError("--key-file is only used with --pseudonymise")
    return load_key(key_file) if pseudonymise else None


def _run_export(results: Path, to: str, fmt: str, key: bytes | None, mappings_dir: Path | None, show: bool) -> None:
    from fhiradapter.shell.export import count_subjects  # noqa: PLC0415
    from fhiradapter.shell.export import export as run_export  # noqa: PLC0415

    total = count_subjects(results)
    with click.progressbar(
        length=max(total, 1), label="Exporting subjects", file=sys.stderr, hidden=not show or not total
    ) as bar:
        summary = run_export(results, to, fmt, key, mappings_dir, progress=bar.update)  # type: ignore[arg-type]
    where = summary.target.location if summary.target.kind != "sql" else _safe_url(summary.target.location)
    mode = "pseudonymised" if summary.run.pseudonymised else "identified"
    state = (
        "new run"
        if summary.new_run
        else "already exported; it was superseded and is current again"
        if summary.reinstated
        else "already exported: nothing changed"
    )
    click.echo(f"Export {summary.run.run_id} ({mode}, {fmt}) to {where}: {state}.")
    width = max(len(line[0]) for line in summary.lines) if summary.lines else 10
    click.echo(f"  {'table':<{width}}  {'inserted':>8}  {'unchanged':>9}  {'superseded':>10}")
    for name, inserted, unchanged, superseded in summary.lines:
        click.echo(f"  {name:<{width}}  {inserted:>8}  {unchanged:>9}  {superseded:>10}")
    if summary.files:
        click.echo(f"Wrote {len(summary.files)} file(s) to {summary.target.location}")


def _safe_url(url: str) -> str:
    """The URL without any user info (the user name can be personal; a password is refused earlier)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url


@main.command("export", short_help="Export results to a registry database, CSV, Parquet or SDTM.")
@click.argument("results_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--export-to", "to", metavar="URL", default=None, help="Where to: " + _EXPORT_TO_HELP)
@click.option("--to", "old_to", metavar="URL", default=None, hidden=True)  # the earlier spelling
@click.option(
    "--export-format",
    "fmt",
    type=click.Choice(["tables", "sdtm"]),
    default=None,
    help="Registry tables (SQL or files) or SDTM datasets DM, EX, AE, LB, TU, TR, RS (csv: or parquet: only) "
    "[default: tables].",
)
@click.option("--format", "old_fmt", type=click.Choice(["tables", "sdtm"]), default=None, hidden=True)
@click.option(
    "--pseudonymise",
    is_flag=True,
    help="Keyed-hash subject keys, age instead of birth date, no free text or resource ids.",
)
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help=_KEY_HELP)
@click.option(
    "--mappings",
    "mappings_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with export.toml (SDTM test codes and units) [default: the mappings shipped with fhiradapter].",
)
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
def export_cmd(
    results_dir: Path,
    to: str | None,
    old_to: str | None,
    fmt: str | None,
    old_fmt: str | None,
    pseudonymise: bool,
    key_file: Path | None,
    mappings_dir: Path | None,
    progress: bool | None,
) -> None:
    """Export an evaluate run's results to a registry or research database, or to files.

    RESULTS_DIR is the --out folder of `fhiradapter evaluate` (results.json, clinical.ndjson).
    Each export is one run: re-exporting the same results changes nothing; a newer run for the same
    study and as-of date supersedes the older one, whose rows stay queryable. The current_* views
    show the latest run. A failed export leaves the database as it was.

    \b
    Examples:
      fhiradapter export out/ --export-to sqlite:///registry.db
      fhiradapter export out/ --export-to postgresql://research@dbhost/trials
      fhiradapter export out/ --export-to csv:sdtm/ --export-format sdtm --pseudonymise --key-file registry.key
    """
    target = to or old_to
    if not target:
        raise click.UsageError("Missing option '--export-to URL'.")
    with _guard():
        key = _export_key(pseudonymise, key_file)
        show = sys.stderr.isatty() if progress is None else progress
        _run_export(results_dir, target, fmt or old_fmt or "tables", key, mappings_dir, show)


# ---------------------------------------------------------------------------------------------------- server


# pull and sync: how many patients one search asks for
class _PerSearch(click.ParamType):  # type: ignore[type-arg]
    """``auto`` (None: 1 for a whole pull, 20 for an incremental one) or a number from 1 to 100."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            number = int(str(value))
        except ValueError:
            self.fail(f"{value!r} is neither auto nor a whole number", param, ctx)
        if not 1 <= number <= 100:
            self.fail(f"{number} is not from 1 to 100", param, ctx)
        return number


_per_search_option = click.option(
    "--patients-per-search",
    "per_search",
    type=_PerSearch(),
    default="auto",
    show_default=True,
    help="Patients asked for in one search (subject=Patient/a,Patient/b,...), 1 to 100. auto: one by one "
    "for a whole pull (small pages, every slot busy), 20 for an incremental one (pull --since, or a sync "
    "after its first run), where most searches come back empty.",
)


def _server_options(fn: Any) -> Any:
    """Options shared by the commands that talk to a FHIR server (secrets only from files or environment)."""
    options = [
        click.option(
            "--server", required=True, metavar="URL", help="FHIR R4 base URL, e.g. https://fhir.hospital.org/r4"
        ),
        click.option(
            "--auth",
            type=click.Choice(["auto", "none", "bearer", "smart"]),
            default="auto",
            show_default=True,
            help="auto = smart if --client-id is given, bearer if a token is, else none.",
        ),
        click.option(
            "--token-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="File holding a bearer token [default: $FHIRADAPTER_TOKEN].",
        ),
        click.option("--client-id", help="SMART Backend Services client id (registered with the server)."),
        click.option(
            "--smart-key-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="PEM private key (RSA -> RS384, EC -> ES384) for SMART [default: $FHIRADAPTER_SMART_KEY].",
        ),
        click.option("--key-id", "kid", help="The key's `kid` in the JWKS the server holds for this client."),
        click.option("--token-url", help="SMART token endpoint [default: from .well-known/smart-configuration]."),
        click.option("--scope", default="system/*.read system/*.write", show_default=True, help="SMART scopes."),
        click.option(
            "--ca-bundle",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="CA certificates to verify the server with (TLS is always verified).",
        ),
        click.option(
            "--concurrency", type=click.IntRange(1, 64), default=8, show_default=True, help="Requests in flight."
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(1, 600),
            default=30.0,
            show_default=True,
            help="Seconds one request may take in all, however slowly the server answers (a file download: to "
            "start, then at 64 KiB/s or more).",
        ),
        click.option(
            "--retry-budget",
            type=click.FloatRange(0, 3600),
            default=120.0,
            show_default=True,
            help="Seconds to keep retrying a failing request (408, 429, 5xx, dropped connections).",
        ),
        click.option(
            "--max-pages",
            type=click.IntRange(1),
            default=10_000,
            show_default=True,
            help="Most pages one search may take; a server whose next links never end is stopped sooner.",
        ),
        click.option(
            "--trust-origin",
            multiple=True,
            metavar="URL",
            help="Another origin (scheme://host:port) that may receive the access token, e.g. the storage a Bulk "
            "export's files are on. Repeatable. The token goes nowhere else but --server and the token endpoint.",
        ),
        click.option(
            "--allow-insecure-http",
            is_flag=True,
            help="Send the credential over plain http:// to a host other than this machine (a trusted network).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


async def _open_client(o: dict[str, Any]) -> Any:
    """A FhirClient for the server options (the shell's ``open_client``; SMART discovery happens there)."""
    from fhiradapter.shell.connection import ServerOptions, open_client  # noqa: PLC0415

    return await open_client(ServerOptions(**{**o, "trust_origin": tuple(o.get("trust_origin") or ())}))


@main.command("pull", short_help="Pull a study's data from a FHIR server into NDJSON files.")
@_server_options
@click.option("--study", help="ResearchStudy id, or identifier as SYSTEM|VALUE (required unless --bulk).")
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Folder for the NDJSON files."
)
@click.option("--since", metavar="INSTANT", help="Only resources changed after this instant (_lastUpdated / _since).")
@click.option(
    "--bulk", is_flag=True, help="Use Bulk Data $export (Group/ID/$export with --group, else Patient/$export)."
)
@click.option("--group", metavar="ID", help="With --bulk: the Group whose members to export.")
@_per_search_option
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
def pull_cmd(
    study: str | None,
    out: Path,
    since: str | None,
    bulk: bool,
    group: str | None,
    per_search: int | None,
    progress: bool | None,
    **server: Any,
) -> None:
    """Pull a study's data from a FHIR R4 server into NDJSON files (one per resource type).

    By search (the default): the study's ResearchSubjects give the patients; for each, the Patient and its
    Observation, MedicationStatement, AdverseEvent, Condition, Consent and BodyStructure resources are
    searched (paged along `next` links, `Prefer: handling=strict`), then the Medications they reference.
    With --bulk: one Bulk Data $export, polled until ready (Retry-After, X-Progress), its files downloaded;
    an interrupted bulk pull resumes the same export when run again; Ctrl-C cancels it on the server.
    The folder is what `fhiradapter evaluate` reads; pull-manifest.json records what was pulled from where.
    It holds one pull: --out must be new, empty, or an earlier pull's folder, whose files are replaced when
    the new pull is complete (a --since pull then leaves only what changed).

    \b
    Examples:
      FHIRADAPTER_TOKEN=... fhiradapter pull --server https://fhir.example.org/r4 --study thal-hcc-pilot --out pulled/
      fhiradapter pull --server https://fhir.example.org/r4 --bulk --group thal-cohort --out pulled/
    """
    import asyncio  # noqa: PLC0415

    from fhiradapter.shell.bulk import bulk_pull  # noqa: PLC0415
    from fhiradapter.shell.server_io import pull  # noqa: PLC0415

    show = sys.stderr.isatty() if progress is None else progress
    with _guard(_PULL_INTERRUPTED):
        if since is not None:
            _check_instant(since)
        if not bulk and not study:
            raise ConfigError("--study is required (or use --bulk)")
        if group and not bulk:
            raise ConfigError("--group is only used with --bulk")

        async def run() -> Any:
            client = await _open_client(server)
            async with client:
                if bulk:

                    def shown(progress_text: str) -> None:
                        if show:
                            click.echo(f"  export in progress: {progress_text}", err=True)

                    return await bulk_pull(client, out, group, since=since, on_progress=shown)
                with click.progressbar(length=1, label="Pulling patients", file=sys.stderr, hidden=not show) as bar:

                    def total(n: int) -> None:
                        bar.length = max(n, 1)

                    return await pull(
                        client, str(study), out, since, progress=bar.update, on_total=total, per_search=per_search
                    )

        created = not out.exists()
        try:
            summary = asyncio.run(run())
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):  # a failed pull leaves no empty folder
                out.rmdir()
            raise
        counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.resources.items()))
        if bulk:
            resumed = " (resumed)" if summary.resumed else ""
            click.echo(f"Bulk export{resumed} as of {summary.transaction_time}: {counts}.")
            click.echo(f"  {summary.polls} status poll(s). Wrote {len(summary.files)} file(s) to {out}")
            if summary.searched:
                click.echo(f"  note: the export returned no {', '.join(summary.searched)}: read by search instead")
            for error in summary.errors[:20]:
                click.echo(f"  server error file: {error}")
            for refused in summary.refused:
                click.echo(f"  refused: {refused}")
            _print_replaced(out, summary.replaced)
            return
        click.echo(f"Pulled {summary.study}: {summary.patients} patient(s); {counts}.")
        click.echo(
            f"  {summary.requests} request(s){_searches(summary.per_search, summary.split)}, "
            f"{summary.retries} retried. Wrote {len(summary.files)} file(s) to {out}"
        )
        for warning in summary.warnings:
            click.echo(f"  note: {warning}")
        _print_replaced(out, summary.replaced)


def _print_replaced(out: Path, removed: list[str]) -> None:
    from fhiradapter.shell.server_io import briefly  # noqa: PLC0415

    if removed:
        shown = briefly(removed, 5)
        click.echo(
            f"  note: this pull replaced the earlier one in {out}; removed its {len(removed)} other file(s): {shown}"
        )


def _check_instant(value: str) -> None:
    from datetime import datetime  # noqa: PLC0415

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since must be an instant like 2024-01-31T00:00:00Z, got {value!r}") from None
    if parsed.tzinfo is None:
        raise ConfigError(f"--since needs a time zone (e.g. Z or +09:00): {value!r}")


@main.command("push", short_help="Write a write-back Bundle to a FHIR server.")
@_server_options
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
def push_cmd(bundle: Path, mode: str, chunk: int, progress: bool | None, **server: Any) -> None:
    """Apply a write-back Bundle (writeback.json from evaluate) to a FHIR R4 server.

    Creates are conditional (If-None-Exist on the result's identifier) and updates carry If-Match with the
    version evaluate read, so pushing twice never duplicates and never overwrites a newer version: a
    changed resource is reported as a conflict (re-run pull and evaluate, then push the new writeback.json).
    Exit code 0 when everything was applied, 13 when anything conflicted or failed.
    """
    import asyncio  # noqa: PLC0415

    from fhiradapter.shell.push import load_bundle, push  # noqa: PLC0415

    with _guard(_PUSH_INTERRUPTED):
        doc = load_bundle(bundle)

        show = sys.stderr.isatty() if progress is None else progress
        total = len(doc.get("entry") or [])

        async def run() -> Any:
            client = await _open_client(server)
            async with client:
                with click.progressbar(
                    length=max(total, 1), label="Writing", file=sys.stderr, hidden=not show or not total
                ) as bar:
                    return await push(client, doc, mode, chunk, progress=bar.update)

        summary = asyncio.run(run())
        outcomes = _counts(summary.outcomes, PUSH_OUTCOMES) or "nothing to send"
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


PUSH_OUTCOMES = ("created", "updated", "unchanged", "conflict", "error", "not applied", "unknown")


def _store_options(f: Callable[..., Any]) -> Callable[..., Any]:
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


@main.command("sync", short_help="Pull what changed, evaluate, write the results back.")
@_server_options
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
@_store_options
@click.option(
    "--mappings",
    "mappings_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with protocol.toml, codes.toml, units.toml [default: the mappings shipped with fhiradapter].",
)
@click.option(
    "--export-to", "export_to", metavar="URL", default=None, help="Then export the results: " + _EXPORT_TO_HELP
)
@click.option(
    "--export-format",
    type=click.Choice(["tables", "sdtm"]),
    default="tables",
    show_default=True,
    help="With --export-to: registry tables, or SDTM datasets (files only).",
)
@click.option("--pseudonymise", is_flag=True, help="With --export-to: keyed-hash subject keys, ages, no free text.")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help=_KEY_HELP)
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
@_per_search_option
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
def sync_cmd(
    study: str,
    as_of: str,
    since: str,
    dry_run: bool,
    data_dir: Path | None,
    store_url: str | None,
    mappings_dir: Path | None,
    export_to: str | None,
    export_format: str,
    pseudonymise: bool,
    key_file: Path | None,
    chunk: int,
    mode: str,
    bulk: bool,
    group: str | None,
    per_search: int | None,
    progress: bool | None,
    **server: Any,
) -> None:
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
    from fhiradapter.shell.mappings_io import load_mappings  # noqa: PLC0415

    show = sys.stderr.isatty() if progress is None else progress
    with _guard(_SYNC_INTERRUPTED):
        from fhiradapter.shell.store import SyncStore, default_data_dir  # noqa: PLC0415 - needs [registry]
        from fhiradapter.shell.sync import SyncOptions, run_sync  # noqa: PLC0415

        cutoff = _parse_as_of(as_of)
        if since not in ("auto", "none"):
            _check_instant(since)
        if group and not bulk:
            raise ConfigError("--group is only used with --bulk")
        key = _export_key(pseudonymise, key_file) if export_to else None
        mappings, identity = load_mappings(mappings_dir)
        folder = data_dir or default_data_dir()
        store = SyncStore(store_url, folder)
        import asyncio  # noqa: PLC0415

        client = asyncio.run(_open_client(server))  # checks the options (and SMART discovery) before any work
        bars = _PhaseBars(show)
        try:
            pulling = bars.open("Pulling patients", 1)

            def total(n: int) -> None:
                pulling.length = max(n, 1)

            def evaluating() -> None:
                bars.close()
                if show:
                    click.echo("Evaluating the study's patients ...", err=True)

            def writing(entries: int) -> Callable[[int], None]:
                update: Callable[[int], None] = bars.open("Writing results", entries).update
                return update

            opts = SyncOptions(
                study,
                cutoff,
                since,
                dry_run,
                folder / "runs",
                mappings,
                identity,
                pulling.update,
                total,
                writing,
                chunk,
                mode,
                bulk,
                group,
                per_search=per_search,
                on_evaluate=evaluating,
            )
            summary = run_sync(lambda: client.fresh(), store, opts)
        finally:
            bars.close()
            store.close()
        _print_sync(summary)
        if export_to and summary.out is not None:
            _run_export(summary.out, export_to, export_format, key, mappings_dir, show)
        if summary.conflicts or summary.errors:
            sys.exit(int(ExitCode.SERVER))


@main.command("runs", short_help="List the sync runs a store holds, newest first.")
@_store_options
@click.option("--server", metavar="URL", default=None, help="Only the runs against this FHIR base URL.")
@click.option("--study", default=None, help="Only the runs of this study (as given to sync).")
@click.option("--last", type=click.IntRange(1, 10000), default=10, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON (with each run's whole summary).")
def runs_cmd(
    data_dir: Path | None, store_url: str | None, server: str | None, study: str | None, last: int, as_json: bool
) -> None:
    """List the sync runs the store holds, newest first: when, how each ended, and what it read and wrote.

    For a scheduled sync: whether last night's run worked, and if not, why (a failed run keeps its error
    message). A run still shown as running either is running now or was killed before it could finish.

    \b
    Example:
      fhiradapter runs --data-dir /srv/fhiradapter --last 5
    """
    import json  # noqa: PLC0415

    with _guard():
        from fhiradapter.shell.store import SyncStore, default_data_dir  # noqa: PLC0415 - needs [registry]

        folder = data_dir or default_data_dir()
        if store_url is None and not (folder / "sync.db").exists():
            raise ConfigError(f"no sync store in {folder} (sync.db): give the --data-dir or --store that sync used")
        store = SyncStore(store_url, folder)
        try:
            found, total = store.runs(server.rstrip("/") if server else None, study, last)
        finally:
            store.close()
    where = _safe_url(store_url) if store_url else str(folder / "sync.db")
    if as_json:
        for run in found:
            for key in ("started_at", "finished_at"):
                run[key] = run[key].isoformat() if run[key] is not None else None
        click.echo(json.dumps({"store": where, "total": total, "runs": found}, indent=2))
        return
    if not found:
        click.echo(f"No sync runs in {where}" + (" for that server and study." if server or study else "."))
        return
    click.echo(f"Sync runs in {where}, newest first ({len(found)} of {total}):")
    for run in found:
        click.echo(_run_line(run))
        for line in _run_details(run):
            click.echo(f"      {line}")


def _run_line(run: dict[str, Any]) -> str:
    started, finished = run["started_at"], run["finished_at"]
    took = f"{(finished - started).total_seconds():.1f} s" if finished else "no end recorded"
    status = run["status"] + (" (still running, or killed)" if run["status"] == "running" else "")
    return (
        f"  run {run['run_id']}  {started:%Y-%m-%d %H:%M:%S} UTC  {status}  ({took})  "
        f"{run['summary'].get('study') or run['study']} on {run['server']}"
    )


def _run_details(run: dict[str, Any]) -> list[str]:
    """What a run read, planned and wrote, from its stored summary; why it stopped, if it did."""
    s = run["summary"]
    if not s:
        return []
    lines = []
    pulled = sum(s.get("pulled", {}).values())
    if pulled or s.get("patients"):
        since = f"changes since {run['since']}" if run["since"] else "everything"
        read = f"{since}: {s.get('patients', 0)} patient(s), {pulled} resource(s) read"
        lines.append(f"{read}, {s.get('deleted', 0)} deletion(s) noticed")
    if s.get("plan"):
        lines.append(f"plan: {_counts(s['plan'], ('create', 'update', 'unchanged'))}")
    if s.get("pushed") or (s.get("plan") and not run["dry_run"]):
        pushed = _counts(s.get("pushed", {}), ("created", "updated", "unchanged", "conflict", "error"))
        conflicts, errors = len(s.get("conflicts", [])), len(s.get("errors", []))
        lines.append(f"pushed: {pushed or 'nothing to send'}; conflicts {conflicts}, errors {errors}")
    if s.get("failure"):
        lines.append(f"stopped: {s['failure']}")
    return lines


class _PhaseBars:
    """One progress bar per phase of a run (pull, then push), each closed when the next one opens."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bar: Any = None

    def open(self, label: str, length: int) -> Any:
        self.close()
        self.bar = click.progressbar(length=max(length, 1), label=label, file=sys.stderr, hidden=not self.show)
        self.bar.__enter__()
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _counts(counts: Any, first: tuple[str, ...]) -> str:
    """``create 92, update 13, unchanged 1``: the usual keys in reading order, then any other, zeros left out."""
    keys = [k for k in first if counts.get(k)] + sorted(k for k in counts if k not in first and counts[k])
    return ", ".join(f"{k} {counts[k]}" for k in keys)


def _changes(by_action: Any) -> str:
    """``create child-pugh, eligibility; update response ×2``: one patient's changing results, by action."""
    return "; ".join(
        f"{action} " + ", ".join(kind + (f" ×{n}" if n > 1 else "") for kind, n in sorted(kinds.items()))
        for action, kinds in sorted(by_action.items())
    )


def _searches(per_search: int | None, split: int) -> str:
    """`` (20 patient(s) per search; 1 paged on, so read patient by patient)``, or nothing for a Bulk pull."""
    if per_search is None:
        return ""
    paged_on = f"; {split} paged on, so read patient by patient" if split else ""
    return f" ({per_search} patient(s) per search{paged_on})"


def _print_sync(s: Any) -> None:
    mode = "dry run, nothing written" if s.dry_run else "written"
    since = f"changes since {s.since}" if s.since else "everything"
    click.echo(f"Sync run {s.run_id} of {s.study} from {s.server} ({since}; {mode}).")
    pulled = sum(s.pulled.values())
    click.echo(f"  read from the server: {pulled} resource(s); deletions noticed {s.deleted}")
    e = s.evaluated
    evaluated = f"  patients evaluated {s.patients}"
    if e:
        evaluated += f", from {e['records_read']} stored record(s): {e['records_used']} used, "
        evaluated += f"{e['records_rejected']} rejected"
        if e["records_rejected"] and s.out is not None:
            reasons = ", ".join(f"{k} {v}" for k, v in e["rejects_by_reason"].items())
            evaluated += f" ({reasons}; see {s.out / 'rejects.ndjson'})"
    click.echo(evaluated)
    click.echo(f"  plan for the results: {_counts(s.plan, ('create', 'update', 'unchanged')) or 'nothing'}")
    if s.changes and s.out is not None:
        verb = "would change" if s.dry_run else "change"
        plan = s.out / "writeback-plan.ndjson"
        click.echo(f"  results that {verb}, for {len(s.changes)} patient(s) (each entry in {plan}):")
        for patient, by_action in list(s.changes.items())[:5]:
            click.echo(f"    {patient}: {_changes(by_action)}")
        if len(s.changes) > 5:
            click.echo(f"    and {len(s.changes) - 5} more patient(s)")
    if not s.dry_run:
        pushed = _counts(s.pushed, PUSH_OUTCOMES) or "nothing to send"
        if s.provenances:
            pushed += f" (with {s.provenances} Provenance record(s) of the run)"
        click.echo(f"  pushed: {pushed}; conflicts {len(s.conflicts)}; errors {len(s.errors)}")
        click.echo(f"  watermark: {s.watermark or 'not advanced'}")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items())
    searches = _searches(s.per_search, s.split)
    click.echo(f"  {s.requests} request(s){searches}, {s.retries} retried ({timing}); results in {s.out}")
    for line in [*s.warnings, *s.conflicts, *s.errors][:20]:
        click.echo(f"  note: {line}")


def run() -> None:
    """The ``fhiradapter`` program: the commands, then a quiet end. A Ctrl-C that arrives while the interpreter
    shuts down is held off, so that the exit code stays the one the command chose (130 after a Ctrl-C)."""
    try:
        main()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


if __name__ == "__main__":  # pragma: no cover
    run()
