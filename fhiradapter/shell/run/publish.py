"""The end of every run, whichever engine: cohort statistics, then each output in ``--out`` (results, clinical
data, candidates, rejects, write-back, report, summary), manifest.json last."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson

from fhiradapter import __version__
from fhiradapter.core.evaluate import EvaluationSettings, summarise_cohort
from fhiradapter.core.results import (
    AdapterInfo,
    CohortSummary,
    ResultsHeader,
    TimedRunSummary,
)
from fhiradapter.shell.common.files import write_new
from fhiradapter.shell.common.out_folder import write_manifest
from fhiradapter.shell.common.urls import safe_url
from fhiradapter.shell.report.report import write_report
from fhiradapter.shell.run.engine import Evaluated, FoundInputs, PhaseClock, RunRequest
from fhiradapter.shell.run.outputs import (
    concatenate,
    iter_rows,
    write_results,
    write_sorted_lines,
    write_writeback,
)
from fhiradapter.shell.run.spill import cap_rejects

WRITEBACK_FILES = ("writeback.json", "writeback-plan.ndjson")


REPORT_FILES = ("report.html", "report.md", "report-km.png", "report-swimmer.png")


CANDIDATES_FILE = "candidates.ndjson"  # screening candidates' results, with --screen-candidates (docs/protocol.md §1)


# Every file a run may write or remove in --out (whatever its options): an input by one of these names there is
# refused before anything is written (``out_folder.inputs_in_the_way``).
OUTPUT_FILES = (
    "results.json",
    "clinical.ndjson",
    "rejects.ndjson",
    "summary.json",
    CANDIDATES_FILE,
    *WRITEBACK_FILES,
    *REPORT_FILES,
    "approval.json",  # removed by each run: an approval is of the write-back it reviewed
)


def publish_run(
    run: RunRequest,
    found: FoundInputs,
    settings: EvaluationSettings,
    spill: Path,
    done: Evaluated,
    clock: PhaseClock,
    elsewhere: Callable[[ResultsHeader, CohortSummary], None] | None = None,
) -> TimedRunSummary:
    """The cohort statistics, then every output in ``run.out``, manifest.json last; returns the run summary
    (summary.json's: with the timings).

    Both engines finish through here, so their outputs are written by the same code. ``elsewhere``: the
    per-patient results were written by Spark to ``run.results_dir``; it writes the header and the cohort
    there too, and ``run.out`` gets no results.json, clinical.ndjson or candidates.ndjson.
    """
    out, as_of = run.out, settings.as_of
    # One bad file lists at most so many rejects; the rest are counted (summary.json) and said in one line.
    capped = cap_rejects(done.reject_parts, spill / "rejects-capped.ndjson", run.reject_cap, done.stats.unlisted)
    done = dataclasses.replace(done, reject_parts=[capped])
    cohort = summarise_cohort(done.rows)
    clock.lap("cohort_statistics")
    protocol = msgspec.structs.replace(run.mappings_identity, study=settings.study)
    results_dir = safe_url(run.results_dir) if elsewhere is not None else ""
    summary = done.stats.summary(as_of, protocol, done.workers, run.writeback, results_dir)
    header = ResultsHeader(
        as_of, protocol, AdapterInfo("fhiradapter", __version__), (*map(str, found.files), *run.urls), summary
    )
    run.on_phase("write")
    # An output this run does not write must not be left from an earlier one, looking current.
    skipped = (WRITEBACK_FILES if not run.writeback else ()) + (REPORT_FILES if not run.report else ())
    skipped += (CANDIDATES_FILE,) if not run.screen_candidates else ()
    for name in skipped:
        (out / name).unlink(missing_ok=True)
    if elsewhere is not None:
        for name in ("results.json", "clinical.ndjson", CANDIDATES_FILE):
            (out / name).unlink(missing_ok=True)
        concatenate(done.reject_parts, out / "rejects.ndjson")
        elsewhere(header, cohort)
    else:
        write_results(out, spill, done.reject_parts, [i for p in done.parts for i in p.subjects], header, cohort)
        write_sorted_lines(out / "clinical.ndjson", spill, [i for p in done.parts for i in p.clinical])
        if run.screen_candidates:
            write_sorted_lines(out / CANDIDATES_FILE, spill, [i for p in done.parts for i in p.candidates])
    handed = None
    if run.writeback:
        wb_index = [i for p in done.parts for i in p.writeback]
        handed = write_writeback(
            out, spill, wb_index, [i for p in done.parts for i in p.plan], header, keep=run.on_writeback is not None
        )
    clock.lap("write")
    if run.report:
        run.on_phase("report")
        rows = iter_rows([p.report_rows for p in done.parts if p.report_rows])
        folder = Path(protocol.mappings_dir) if protocol.mappings_dir else None
        write_report(out, header, cohort, rows, folder, run.compare_with_paper)
    clock.lap("report")
    # summary.json: the summary and the run's timings (not in results.json, which stays reproducible).
    timed = TimedRunSummary(**msgspec.structs.asdict(summary), seconds=dict(clock.seconds), worker_cpu_seconds=done.cpu)
    write_new(out / "summary.json", orjson.dumps(msgspec.to_builtins(timed), option=orjson.OPT_INDENT_2))
    written = ["rejects.ndjson", "summary.json"]
    written += ["results.json", "clinical.ndjson"] if elsewhere is None else []
    written += list(WRITEBACK_FILES) if run.writeback else []
    written += list(REPORT_FILES) if run.report else []
    written += [CANDIDATES_FILE] if run.screen_candidates and elsewhere is None else []
    # manifest.json is a JSON edge of its own (out_folder): the mappings' identity as it writes it.
    manifest_run = {"run_id": uuid.uuid4().hex, "as_of": as_of.isoformat(), "protocol": msgspec.to_builtins(protocol)}
    write_manifest(out, manifest_run, written)  # last: the set is whole
    if run.on_writeback is not None and handed is not None:
        run.on_writeback(handed)
    return timed
