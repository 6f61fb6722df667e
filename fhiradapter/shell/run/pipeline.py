"""``evaluate``'s entry point: checks the request, claims ``--out``, and hands the run to the local engine
(``local_engine``) or to Spark (``spark_engine``). Both finish through ``publish.publish_run``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from fhiradapter.core.evaluate import EvaluationSettings
from fhiradapter.core.protocol import Mappings
from fhiradapter.core.results import TimedRunSummary
from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.out_folder import claim_output, drop_manifest, writing
from fhiradapter.shell.run.engine import RunRequest
from fhiradapter.shell.run.local_engine import run_local
from fhiradapter.shell.run.outputs import (
    Writeback,
)
from fhiradapter.shell.run.publish import OUTPUT_FILES
from fhiradapter.shell.run.readers import (
    PULL_MANIFEST,
    InputLimits,
    find_inputs,
)
from fhiradapter.shell.run.steps import study_key


def pulled_from(inputs: list[Path]) -> list[str]:
    """The servers the input folders were pulled from (their ``pull-manifest.json``): their absolute
    references are the data's own."""
    servers = []
    for folder in inputs:
        try:
            manifest = orjson.loads((folder / PULL_MANIFEST).read_bytes()) if folder.is_dir() else None
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("server"), str):
            servers.append(manifest["server"])
    return servers


def run_evaluate(
    inputs: list[Path],
    out: Path,
    as_of: date,
    mappings: Mappings,
    mappings_identity: dict[str, Any],
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    report: bool = True,
    writeback: bool = True,
    study: str | None = None,
    screen_candidates: bool = False,
    enrol_candidates: bool = False,
    fhir_bases: tuple[str, ...] = (),
    on_phase: Callable[[str], None] | None = None,
    engine: str = "local",
    spark_master: str | None = None,
    urls: tuple[str, ...] = (),
    results_dir: str = "",
    on_writeback: Callable[[Writeback], None] | None = None,
    compare_with_paper: bool | None = None,
    limits: InputLimits | None = None,
) -> TimedRunSummary:
    """Run the whole job; returns the run summary (also written to ``summary.json``).

    ``study``: the ResearchStudy id whose subjects are evaluated (default: the one the mappings name).
    ``screen_candidates``: also evaluate patients without a ResearchSubject of the study, as screening
    candidates at the as-of date, reported apart in ``candidates.ndjson``; ``enrol_candidates``: and write
    them back (a new ResearchSubject each). docs/protocol.md §1. ``fhir_bases``: the FHIR base URLs the data came
    from, whose absolute references are local (a pull folder's server is one already); a reference to any
    other server is rejected (``bad-reference``). ``engine``: ``local`` (this machine's cores) or ``spark``
    (a Spark session at ``spark_master``, ``local[*]`` by default; ``shell/spark_engine.py``), which also
    reads ``urls``: inputs by URL (``hdfs://``, ``s3a://``, as the Spark configuration allows).
    ``on_writeback``: called with the write-back as published (the Bundle and the plan), so that a caller
    that pushes it at once (sync) need not read the files back. ``limits``: the largest record read, and how
    many rejects of one file are listed one by one (``--max-record-bytes``, ``--max-rejects-per-file``).
    """
    if enrol_candidates and not screen_candidates:
        raise ConfigError("enrolling candidates needs --screen-candidates too")
    if engine not in ("local", "spark"):
        raise ConfigError(f"unknown engine {engine!r}: local or spark")
    if results_dir and engine != "spark":
        raise ConfigError("--results-dir is written by Spark: add --engine spark")
    if results_dir and writeback:
        raise ConfigError(
            "--results-dir writes the results only: add --no-writeback (the write-back of a run that "
            "size goes through the driver; evaluate it without --results-dir to write it back)"
        )
    if urls and engine != "spark":
        raise ConfigError(f"{urls[0]}: an input by URL is read by Spark: add --engine spark")
    files, unread = find_inputs(inputs, exclude=out)
    bases = tuple(dict.fromkeys([*fhir_bases, *pulled_from(inputs)]))
    settings = EvaluationSettings(as_of, mappings, study_key(study), screen_candidates, bases)
    run = RunRequest(
        files,
        unread,
        out,
        mappings_identity,
        report,
        writeback,
        screen_candidates,
        enrol_candidates,
        on_phase or (lambda _phase: None),
        list(urls),
        results_dir,
        on_writeback,
        compare_with_paper,
        limits or InputLimits(),
    )
    with claim_output(out, inputs, OUTPUT_FILES), writing(out):
        drop_manifest(out)  # until the new one is written, the set in ``out`` is not whole
        with writing(out / "approval.json"):  # an approval is of the write-back it reviewed, not of this run's
            (out / "approval.json").unlink(missing_ok=True)
        if engine == "spark":
            from fhiradapter.shell.run.spark_engine import run_spark  # noqa: PLC0415 - pyspark only when asked

            return run_spark(run, settings, spark_master, progress)
        return run_local(run, settings, progress, workers)
