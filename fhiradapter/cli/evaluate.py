"""``fhiradapter evaluate``: apply the protocol to FHIR files and print what the run did."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhiradapter.cli.common import (
    ByteSize,
    ExportOptions,
    command_options,
    export_options,
    guard,
    mappings_line,
    mappings_option,
    parse_as_of,
    warn_unused_mappings,
)
from fhiradapter.cli.export import export_key, run_export
from fhiradapter.core.results import RunSummary, TimedRunSummary
from fhiradapter.errors import ConfigError, NothingEvaluated

if TYPE_CHECKING:
    from fhiradapter.shell.run.engine import Engine, RunRequest


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """What ``evaluate`` was given, by option (``_run_request`` turns it into the shell's ``RunRequest``)."""

    inputs: tuple[str, ...]
    as_of: str
    out: Path
    mappings_dir: Path | None
    workers: int | None
    report: bool
    writeback: bool
    progress: bool | None
    export: ExportOptions
    study: str | None
    compare_with_paper: bool | None
    fhir_bases: tuple[str, ...]
    screen_candidates: bool
    enrol_candidates: bool
    engine: str
    spark_master: str | None
    results_dir: str
    max_record_bytes: int
    max_rejects_per_file: int
    reader: str


@click.command(short_help="Apply the protocol to FHIR files: results, write-back, report.")
@click.argument("inputs", nargs=-1, required=True)
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
@mappings_option("protocol.toml, codes.toml and units.toml")
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
@export_options
@click.option(
    "--study",
    metavar="ID|SYSTEM|VALUE",
    default=None,
    help="The study whose subjects are evaluated, by ResearchStudy id or by identifier SYSTEM|VALUE [default: "
    "[study] in protocol.toml]. A ResearchSubject names it by reference or by identifier. Patients without a "
    "ResearchSubject of it are counted as not in the study, and never written back.",
)
@click.option(
    "--compare-with-paper/--no-compare-with-paper",
    default=None,
    help="Show the paper's printed figures beside the computed ones in the report [default: only when the "
    "cohort is the paper's own: its protocol and its eight treated patients].",
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
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this machine's cores. spark: an Apache Spark session (pip install 'fhiradapter[spark]'), "
    "which also reads inputs by URL (hdfs://, s3a://). Same results either way.",
)
@click.option(
    "--spark-master",
    metavar="URL",
    default=None,
    help="With --engine spark: the master, e.g. spark://host:7077 [default: local[*]; under spark-submit, its own].",
)
@click.option(
    "--results-dir",
    metavar="URL",
    default="",
    help="With --engine spark, for runs too large for one results file: Spark writes each patient's result and "
    "clinical extract there as partitioned NDJSON, in patient order (any URL Spark writes: hdfs://, s3a://, "
    "file://). `fhiradapter export` reads that folder. --out keeps summary.json, rejects.ndjson and the "
    "report. Needs --no-writeback.",
)
@click.option(
    "--max-record-bytes",
    type=ByteSize(),
    default="64MiB",
    show_default=True,
    help="The largest line, JSON document or Bundle entry read (decompressed). A larger one is one too-large "
    "reject, skipped without being held in memory: a compressed file cannot exhaust the memory.",
)
@click.option(
    "--max-rejects-per-file",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Rejects listed one by one in rejects.ndjson per input file; the rest of a file's are counted "
    "(summary.json) and said in one not-listed line. 0: list them all.",
)
@click.option(
    "--reader",
    type=click.Choice(["python", "duckdb"]),
    default="python",
    envvar="FHIRADAPTER_READER",
    show_default=True,
    hidden=True,  # experimental: slower than the Python reader today (docs/performance.md, DuckDB reader)
    help="What reads NDJSON files (plain, .gz, .zst) in the local engine. duckdb (extra `duckdb`): decoded "
    "and classified in SQL, Observations mapped from DuckDB's values, every other line by the Python reader; "
    "the same results and rejects, but slower today (docs/performance.md). Also FHIRADAPTER_READER.",
)
@command_options(EvaluateOptions)
def evaluate(options: EvaluateOptions) -> None:
    """Evaluate the protocol on FHIR files.

    INPUTS are NDJSON files (.ndjson, .ndjson.gz; one resource per line, as a Bulk Data export writes
    them), JSON files holding a Bundle or a single resource, or folders of such files (read
    recursively). Every input record is either used or listed, with the reason, in rejects.ndjson.
    With --engine spark an INPUT may also be a URL Spark reads (hdfs://..., s3a://...).

    Only the study's subjects (patients with a ResearchSubject of the study) are evaluated and written
    back; everyone else in the input is counted as not in the study (--screen-candidates screens them).

    The results go to results.json, the FHIR R4 write-back to writeback.json (a transaction Bundle to
    post to the hospital's server) and the study team's report to report.html and report.md.

    \b
    Example:
      fhiradapter evaluate fixtures/paper-cohort/input --as-of 2005-03-31 --out out/
    """
    with guard():
        request = _run_request(options)
        key = export_key(options.export.pseudonymise, options.export.key_file) if options.export.to else None
        show = sys.stderr.isatty() if options.progress is None else options.progress
        earlier = _earlier_run(options.out)
        summary = _run_shown(request, show)
    out = options.out
    with guard():
        _print_summary(summary, out)
        _print_replaced(earlier, out)
        if not summary.patients:
            raise NothingEvaluated(_nothing_evaluated(summary))
        if options.export.to:
            run_export(out, options.export.to, options.export.format, key, options.mappings_dir, show)


def _run_request(options: EvaluateOptions) -> RunRequest:
    """The run the options ask for: the as-of date, the mappings, the inputs (paths and URLs), the engine; the
    options that do not go together are refused here, before anything is read."""
    from fhiradapter.shell.common.mappings_io import load_mappings  # noqa: PLC0415 - keep --help fast
    from fhiradapter.shell.run.engine import RunRequest  # noqa: PLC0415
    from fhiradapter.shell.run.local_engine import LocalEngine  # noqa: PLC0415
    from fhiradapter.shell.run.readers import InputLimits  # noqa: PLC0415

    cutoff = parse_as_of(options.as_of)
    if options.enrol_candidates and not options.screen_candidates:
        raise ConfigError("--enrol-candidates is only used with --screen-candidates")
    if options.spark_master and options.engine != "spark":
        raise ConfigError("--spark-master is only used with --engine spark")
    if options.reader == "duckdb":
        if options.engine == "spark":
            raise ConfigError("--reader duckdb is for the local engine: Spark reads with its own readers")
        import duckdb  # noqa: F401, PLC0415 - the extra `duckdb`: said here, not in a worker
    if options.results_dir and options.export.to:
        raise ConfigError(
            "--export-to exports --out, which --results-dir leaves without results.json: run "
            "`fhiradapter export` on the results folder once it is on this machine"
        )
    mappings, identity = load_mappings(options.mappings_dir)
    warn_unused_mappings(Path(identity.mappings_dir))
    engine: Engine = LocalEngine(options.workers)
    if options.engine == "spark":
        from fhiradapter.shell.run.spark_engine import SparkEngine  # noqa: PLC0415

        engine = SparkEngine(options.spark_master)
    return RunRequest(
        inputs=tuple(Path(i) for i in options.inputs if "://" not in i),
        urls=tuple(i for i in options.inputs if "://" in i),
        out=options.out,
        as_of=cutoff,
        mappings=mappings,
        mappings_identity=identity,
        study=options.study,
        fhir_bases=options.fhir_bases,
        report=options.report,
        writeback=options.writeback,
        screen_candidates=options.screen_candidates,
        enrol_candidates=options.enrol_candidates,
        compare_with_paper=options.compare_with_paper,
        limits=InputLimits(options.max_record_bytes, options.max_rejects_per_file, options.reader),
        results_dir=options.results_dir,
        engine=engine,
    )


def _run_shown(request: RunRequest, show: bool) -> TimedRunSummary:
    """Run, with one display for every phase when ``show``: two passes over the data (reading and mapping, then
    grouping and evaluating), then writing the outputs and drawing the report."""
    from fhiradapter.shell.common.progress import RunProgress  # noqa: PLC0415
    from fhiradapter.shell.run.pipeline import run_evaluate  # noqa: PLC0415
    from fhiradapter.shell.run.readers import expand_inputs  # noqa: PLC0415

    if not show:
        return run_evaluate(request)
    total = sum(f.stat().st_size for f in expand_inputs(list(request.inputs), exclude=request.out))
    display = RunProgress(total, tty=sys.stderr.isatty())
    finished = False
    try:
        summary = run_evaluate(dataclasses.replace(request, progress=display.advance, on_phase=display.phase))
        finished = True
    finally:
        display.close(finished)  # a stopped run's bar stays where it stopped
    return summary


def _earlier_run(out: Path) -> tuple[str, list[str]] | None:
    """The as-of date and files of a whole earlier run in ``out`` (its manifest.json), if there is one."""
    try:
        manifest = json.loads((out / "manifest.json").read_bytes())
        return str(manifest.get("as_of", "?")), sorted(manifest.get("files") or {})
    except (OSError, ValueError, AttributeError):
        return None


def _print_replaced(earlier: tuple[str, list[str]] | None, out: Path) -> None:
    """Say that a rerun replaced an earlier run's outputs, and name what of it is gone."""
    if earlier is None:
        return
    as_of, files = earlier
    gone = [name for name in files if not (out / name).exists()]
    removed = f"; removed its {', '.join(gone)} (not written by this run)" if gone else ""
    click.echo(f"note: this run replaced the outputs of an earlier run in {out} (as-of {as_of}){removed}.")


def _nothing_evaluated(summary: RunSummary) -> str:
    """Why a run evaluated no one, and what to do about it."""
    population = summary.population
    if not summary.records_read:
        return "no patient was evaluated: the input holds no FHIR record (see rejects.ndjson for files not read)"
    if population.not_in_study:
        study = summary.protocol.study
        others = summary.rejects_by_reason.get("other-study", 0)
        hint = (
            f"; {others} ResearchSubject(s) of the input name another study (rejects.ndjson, other-study, says "
            "which): is --study, or [study] in the mappings, the one you meant?"
            if others
            else "; --screen-candidates screens them"
        )
        return (
            f"no patient was evaluated: {population.not_in_study} patient(s) in the input, none with a "
            f"ResearchSubject of {study}{hint}"
        )
    return "no patient was evaluated: the input holds no Patient that its records name (see rejects.ndjson)"


def _print_summary(summary: TimedRunSummary, out: Path) -> None:
    click.echo(
        f"Read {summary.records_read} records from {summary.files} file(s): "
        f"{summary.records_used} used, {summary.records_rejected} rejected; "
        f"{summary.patients} patient(s) evaluated."
    )
    width = max([len(t) for t in summary.by_type] + [13])
    click.echo(f"  {'resource type':<{width}}  {'read':>7}  {'used':>7}  {'rejected':>8}")
    for rtype, c in summary.by_type.items():
        click.echo(f"  {rtype:<{width}}  {c.read:>7}  {c.used:>7}  {c.rejected:>8}")
    not_read = summary.files_not_read
    if not_read:
        shown = ", ".join(Path(n).name for n in not_read[:5]) + (
            f" and {len(not_read) - 5} more" if len(not_read) > 5 else ""
        )
        click.echo(
            f"  not read: {len(not_read)} other file(s), no FHIR data by their names ({shown}; in rejects.ndjson)"
        )
    click.echo(f"  {mappings_line(Path(summary.protocol.mappings_dir))}")
    if summary.rejects_by_reason:
        reasons = ", ".join(f"{k} {v}" for k, v in summary.rejects_by_reason.items())
        click.echo(f"  rejects by reason: {reasons}")
    population = summary.population
    if population.candidates or population.not_in_study or population.not_screened:
        click.echo(
            f"  patients: {population.subjects} study subject(s) evaluated; "
            + ", ".join(
                f"{n} {label}"
                for n, label in (
                    (population.candidates, "screening candidate(s) (candidates.ndjson)"),
                    (population.not_in_study, "not in the study (no ResearchSubject of it: not evaluated)"),
                    (population.not_screened, "candidate(s) not screened (died on or before the as-of date)"),
                )
                if n
            )
        )
    for kind, codes in summary.unmapped_codes.items():
        shown = ", ".join(f"{c.code} ({c.records})" for c in codes[:3])
        click.echo(f"  most frequent unmapped {kind}: {shown} (all in summary.json)")
    wb = summary.writeback
    names = ["results.json", "clinical.ndjson", "rejects.ndjson", "summary.json"]
    if summary.results_dir:
        names = ["rejects.ndjson", "summary.json"]
        click.echo(
            f"Each patient's result and clinical extract: in {summary.results_dir} (subjects/, clinical/, and "
            "run/ with the cohort), written by Spark; `fhiradapter export` reads that folder."
        )
    if wb is None:
        click.echo("Write-back: not planned (--no-writeback); no writeback.json.")
    else:
        click.echo(
            f"Write-back plan: {wb.create} to create, {wb.update} to update, "
            f"{wb.unchanged} unchanged (writeback.json, writeback-plan.ndjson)."
        )
        names += ["writeback.json", "writeback-plan.ndjson"]
    if (out / "candidates.ndjson").exists():
        names.append("candidates.ndjson")
    names += [n for n in ("report.html", "report.md", "report-km.png", "report-swimmer.png") if (out / n).exists()]
    click.echo(f"Wrote to {out}: {', '.join(names)}, and manifest.json last.")
    if population.candidates == 0 and (out / "candidates.ndjson").exists():
        click.echo("  screening candidates: none: every patient in the input has a ResearchSubject of the study")
    if "report.html" in names and summary.patients:
        click.echo(f"Open {out / 'report.html'} in a browser to read the report.")
    elif not summary.patients:
        click.echo(f"No one was evaluated: the results and the report are empty; {out / 'rejects.ndjson'} says why.")
    seconds = summary.seconds
    if seconds:
        phases = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in seconds.items())
        click.echo(f"Took {sum(seconds.values()):.1f} s with {summary.workers} worker(s) ({phases}).")
