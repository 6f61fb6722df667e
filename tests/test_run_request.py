"""What goes into a run, typed: the run request the CLI builds and the engine it reaches (``run/engine.py``),
the options a command is given as one value each (``cli/common.py``), the server options as one
``ServerOptions``, and the typed JSON readers (``core/json_types.py``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
from builders import AS_OF, ROOT
from click.testing import CliRunner

from fhiradapter.cli import main
from fhiradapter.cli.common import ExportOptions, command_options, export_options
from fhiradapter.cli.server_options import server_options
from fhiradapter.core.evaluate import EvaluationSettings
from fhiradapter.core.json_types import JsonObject, items, member, text
from fhiradapter.core.results import TimedRunSummary
from fhiradapter.errors import ConfigError
from fhiradapter.shell.common.mappings_io import load_mappings
from fhiradapter.shell.run.engine import Engine, FoundInputs, RunRequest, RunStats
from fhiradapter.shell.run.local_engine import LocalEngine
from fhiradapter.shell.run.pipeline import run_evaluate
from fhiradapter.shell.server.connection import ServerOptions

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"


@dataclasses.dataclass
class RecordingEngine:
    """An engine that runs nothing: it keeps what ``run_evaluate`` hands it."""

    name: str = "local"
    seen: list[tuple[RunRequest, FoundInputs, EvaluationSettings]] = dataclasses.field(default_factory=list)

    def run(self, request: RunRequest, found: FoundInputs, settings: EvaluationSettings) -> TimedRunSummary:
        self.seen.append((request, found, settings))
        protocol = msgspec.structs.replace(request.mappings_identity, study=settings.study)
        summary = RunStats().summary(settings.as_of, protocol, 0, request.writeback)
        return TimedRunSummary(**msgspec.structs.asdict(summary), seconds={}, worker_cpu_seconds={})


def request(out: Path, **kw: Any) -> RunRequest:
    mappings, identity = load_mappings()
    return RunRequest(inputs=(PAPER,), out=out, as_of=AS_OF, mappings=mappings, mappings_identity=identity, **kw)


def test_the_request_reaches_its_engine_with_the_inputs_found_and_the_settings(tmp_path: Path) -> None:
    engine = RecordingEngine()
    asked = request(tmp_path / "out", engine=engine, study="thal-hcc-pilot", fhir_bases=("https://fhir.test/r4",))
    summary = run_evaluate(asked)
    assert (summary.patients, summary.protocol.study, summary.as_of) == (0, "ResearchStudy/thal-hcc-pilot", AS_OF)
    ((seen, found, settings),) = engine.seen
    assert seen is asked  # one value from the caller to the engine
    assert found.files == sorted(p for p in PAPER.iterdir() if p.suffix in (".ndjson", ".json")) and not found.unread
    assert settings.as_of == AS_OF and settings.local_bases == ("https://fhir.test/r4",)


def test_a_request_is_frozen_and_keyword_built(tmp_path: Path) -> None:
    asked = request(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        asked.report = False  # type: ignore[misc]  # assigning to a frozen field is what is tested
    with pytest.raises(TypeError):
        RunRequest((PAPER,), tmp_path, AS_OF)  # type: ignore[call-arg]  # positional on purpose: keyword-only
    assert asked.reject_cap == 1000 and dataclasses.replace(asked, report=False).report is False


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"results_dir": "file:///tmp/r", "writeback": False}, "--results-dir is written by Spark"),
        ({"urls": ("hdfs://nn/x.ndjson",)}, "an input by URL is read by Spark"),
        ({"enrol_candidates": True}, "enrolling candidates needs --screen-candidates"),
    ],
)
def test_options_the_local_engine_cannot_take_are_refused_before_anything_is_written(
    tmp_path: Path, fields: dict[str, Any], says: str
) -> None:
    engine = RecordingEngine()
    with pytest.raises(ConfigError, match=says):
        run_evaluate(request(tmp_path / "out", engine=engine, **fields))
    assert engine.seen == [] and not (tmp_path / "out").exists()


def test_both_engines_meet_the_engine_interface() -> None:
    engines: list[Engine] = [LocalEngine(2)]
    pytest.importorskip("pyspark")
    from fhiradapter.shell.run.spark_engine import SparkEngine

    engines.append(SparkEngine("local[2]"))
    assert [e.name for e in engines] == ["local", "spark"]


def test_server_options_reach_the_command_as_one_typed_value(tmp_path: Path) -> None:
    got: list[ServerOptions] = []

    @click.command()
    @server_options
    @click.option("--other", default="x")
    def command(other: str, server: ServerOptions) -> None:
        assert other == "y"
        got.append(server)

    args = ["--server", "https://fhir.test/r4", "--trust-origin", "https://files.test", "--concurrency", "3"]
    result = CliRunner().invoke(command, [*args, "--other", "y"])
    assert result.exit_code == 0, result.output
    assert got == [ServerOptions(server="https://fhir.test/r4", trust_origin=("https://files.test",), concurrency=3)]


def test_a_commands_options_are_gathered_into_typed_values() -> None:
    @dataclasses.dataclass(frozen=True)
    class Options:
        name: str
        export: ExportOptions

    got: list[Options] = []

    @click.command()
    @click.option("--name")
    @export_options
    @command_options(Options)
    def command(options: Options) -> None:
        got.append(options)

    result = CliRunner().invoke(command, ["--name", "n", "--export-to", "csv:x", "--pseudonymise"])
    assert result.exit_code == 0, result.output
    assert got == [Options(name="n", export=ExportOptions(to="csv:x", format="tables", pseudonymise=True))]


def test_the_cli_help_still_shows_every_gathered_option() -> None:
    result = CliRunner().invoke(main, ["sync", "--help"])
    for option in ("--server", "--trust-origin", "--export-to", "--key-file", "--chunk", "--patients-per-search"):
        assert option in result.output


def test_json_readers_narrow_what_the_server_sent() -> None:
    resource: JsonObject = {
        "resourceType": "ResearchStudy",
        "identifier": [{"system": "s", "value": "v"}, 3],
        "meta": [],
    }
    assert text(resource, "resourceType") == "ResearchStudy" and text(resource, "identifier") is None
    assert items(resource, "identifier") == [{"system": "s", "value": "v"}]  # the 3 is no object: left out
    assert member(resource, "meta") is None and member("not an object", "meta") is None
