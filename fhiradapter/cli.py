"""Command line: ``fhiradapter evaluate``. Parses options, runs the pipeline, maps errors to exit codes.

Only this module turns exceptions into messages and exit codes (see ``fhiradapter.errors``).
"""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

import click

from fhiradapter import __version__
from fhiradapter.errors import AdapterError, ConfigError, ExitCode


def _parse_as_of(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--as-of must be a date as YYYY-MM-DD, got {value!r}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhiradapter")
def main() -> None:
    """Apply the thalidomide-HCC pilot protocol to FHIR R4 data and report the results."""


@main.command()
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
    "--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."
)
def evaluate(
    inputs: tuple[Path, ...],
    as_of: str,
    out: Path,
    mappings_dir: Path | None,
    workers: int | None,
    report: bool,
    progress: bool | None,
) -> None:
    """Evaluate the protocol on FHIR files.

    INPUTS are NDJSON files (.ndjson, .ndjson.gz; one resource per line, as a Bulk Data export writes
    them), JSON files holding a Bundle or a single resource, or folders of such files (read
    recursively). Every input record is either used or listed, with the reason, in rejects.ndjson.

    The results go to results.json, the FHIR R4 write-back to writeback.json (a transaction Bundle to
    post to the hospital's server) and the study team's report to report.html and report.md.

    \b
    Example:
      fhiradapter evaluate fixtures/paper-cohort/input --as-of 2005-03-31 --out out/
    """
    from fhiradapter.shell.mappings_io import load_mappings  # noqa: PLC0415 - keep --help fast
    from fhiradapter.shell.pipeline import run_evaluate  # noqa: PLC0415
    from fhiradapter.shell.readers import expand_inputs  # noqa: PLC0415

    try:
        cutoff = _parse_as_of(as_of)
        mappings, identity = load_mappings(mappings_dir)
        files = expand_inputs(list(inputs), exclude=out)
        total = sum(f.stat().st_size for f in files)
        show = sys.stderr.isatty() if progress is None else progress
        # Two passes over the data: reading and mapping, then grouping and evaluating.
        with click.progressbar(
            length=2 * total, label="Reading and evaluating", file=sys.stderr, show_pos=False, hidden=not show
        ) as bar:
            summary = run_evaluate(
                list(inputs),
                out,
                cutoff,
                mappings,
                identity,
                progress=bar.update if show else None,
                workers=workers,
                report=report,
            )
    except AdapterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(exc.exit_code))
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
    _print_summary(summary, out)


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
    wb = summary.get("writeback", {})
    click.echo(
        f"Write-back plan: {wb.get('create', 0)} to create, {wb.get('update', 0)} to update, "
        f"{wb.get('unchanged', 0)} unchanged (writeback.json, writeback-plan.ndjson)."
    )
    names = ["results.json", "rejects.ndjson", "summary.json", "writeback.json"]
    if (out / "report.html").exists():
        names += ["report.html", "report.md"]
    click.echo(f"Wrote {', '.join(str(out / n) for n in names)}")


if __name__ == "__main__":  # pragma: no cover
    main()
