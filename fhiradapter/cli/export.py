"""``fhiradapter export``: a results folder into a registry database, CSV, Parquet or SDTM."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fhiradapter.cli.common import EXPORT_TO_HELP, KEY_HELP, guard, mappings_option
from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.urls import safe_url


def export_key(pseudonymise: bool, key_file: Path | None) -> bytes | None:
    from fhiradapter.shell.registry.export import load_key  # noqa: PLC0415

    if key_file is not None and not pseudonymise:
        raise ConfigError("--key-file is only used with --pseudonymise")
    return load_key(key_file) if pseudonymise else None


def run_export(results: Path, to: str, fmt: str, key: bytes | None, mappings_dir: Path | None, show: bool) -> None:
    from fhiradapter.core.registry import export_format  # noqa: PLC0415
    from fhiradapter.shell.registry.export import count_subjects, export  # noqa: PLC0415

    total = count_subjects(results)
    with click.progressbar(
        length=max(total, 1), label="Exporting subjects", file=sys.stderr, hidden=not show or not total
    ) as bar:
        summary = export(results, to, export_format(fmt), key, mappings_dir, progress=bar.update)
    where = summary.target.location if summary.target.kind != "sql" else safe_url(summary.target.location)
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


@click.command("export", short_help="Export results to a registry database, CSV, Parquet or SDTM.")
@click.argument("results_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--export-to", "to", metavar="URL", default=None, help="Where to: " + EXPORT_TO_HELP)
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
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help=KEY_HELP)
@mappings_option("export.toml (SDTM test codes and units)")
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
      fhiradapter export out/ --export-to duckdb:///registry.duckdb
      fhiradapter export out/ --export-to postgresql://research@dbhost/trials
      fhiradapter export out/ --export-to csv:sdtm/ --export-format sdtm --pseudonymise --key-file registry.key
    """
    target = to or old_to
    if not target:
        raise click.UsageError("Missing option '--export-to URL'.")
    with guard():
        key = export_key(pseudonymise, key_file)
        show = sys.stderr.isatty() if progress is None else progress
        run_export(results_dir, target, fmt or old_fmt or "tables", key, mappings_dir, show)
