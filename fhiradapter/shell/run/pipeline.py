"""``evaluate``'s entry point: checks the request, finds its inputs, claims ``--out``, and hands the run to the
request's engine (``local_engine.LocalEngine`` by default, or ``spark_engine.SparkEngine``; ``engine.Engine`` is
where they meet). Both finish through ``publish.publish_run``."""

from __future__ import annotations

from pathlib import Path

import orjson

from fhiradapter.core.evaluate import EvaluationSettings
from fhiradapter.core.results import TimedRunSummary
from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.out_folder import claim_output, drop_manifest, writing
from fhiradapter.shell.run.engine import Engine, FoundInputs, RunRequest
from fhiradapter.shell.run.local_engine import LocalEngine
from fhiradapter.shell.run.publish import OUTPUT_FILES
from fhiradapter.shell.run.readers import (
    PULL_MANIFEST,
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


def run_evaluate(request: RunRequest) -> TimedRunSummary:
    """Run the whole job; returns the run summary (also written to ``summary.json``). What the request's
    fields mean: ``engine.RunRequest``."""
    engine = request.engine or LocalEngine()
    _check(request, engine)
    found = FoundInputs(*find_inputs(list(request.inputs), exclude=request.out))
    bases = tuple(dict.fromkeys([*request.fhir_bases, *pulled_from(list(request.inputs))]))
    settings = EvaluationSettings(
        request.as_of, request.mappings, study_key(request.study), request.screen_candidates, bases
    )
    out = request.out
    with claim_output(out, list(request.inputs), OUTPUT_FILES), writing(out):
        drop_manifest(out)  # until the new one is written, the set in ``out`` is not whole
        with writing(out / "approval.json"):  # an approval is of the write-back it reviewed, not of this run's
            (out / "approval.json").unlink(missing_ok=True)
        return engine.run(request, found, settings)


def _check(request: RunRequest, engine: Engine) -> None:
    """Refuse a request whose options do not go together, before anything is read or written."""
    if request.enrol_candidates and not request.screen_candidates:
        raise ConfigError("enrolling candidates needs --screen-candidates too")
    if request.results_dir and engine.name != "spark":
        raise ConfigError("--results-dir is written by Spark: add --engine spark")
    if request.results_dir and request.writeback:
        raise ConfigError(
            "--results-dir writes the results only: add --no-writeback (the write-back of a run that "
            "size goes through the driver; evaluate it without --results-dir to write it back)"
        )
    if request.urls and engine.name != "spark":
        raise ConfigError(f"{request.urls[0]}: an input by URL is read by Spark: add --engine spark")
