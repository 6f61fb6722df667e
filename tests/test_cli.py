"""The command line as a user meets it: help, exit codes and one-line reasons on bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import ROOT
from click.testing import CliRunner

from fhiradapter import __version__
from fhiradapter.cli import main
from fhiradapter.errors import ExitCode
from fhiradapter.shell.run.engine import RunRequest

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_help_names_the_command_and_an_example() -> None:
    code, out = invoke("evaluate", "--help")
    assert code == 0
    assert "--as-of" in out and "--out" in out and "--mappings" in out and "Example" in out


def test_evaluate_prints_a_summary(tmp_path: Path) -> None:
    code, out = invoke("evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path))
    assert code == 0
    assert "14 patient(s) evaluated" in out and "rejects by reason" in out
    assert (tmp_path / "results.json").is_file() and (tmp_path / "summary.json").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "build" not in summary  # one build: pure Python
    phases = ["read_and_map", "evaluate", "cohort_statistics", "write", "report"]
    assert list(summary["seconds"]) == phases and all(v >= 0 for v in summary["seconds"].values())
    cpu = summary["worker_cpu_seconds"]  # one figure per worker and pass: how evenly the work was shared
    assert [len(cpu["read_and_map"]), len(cpu["evaluate"])] == [1, 1] and cpu["read_and_map"][0] > 0
    assert "with 1 worker(s) (read and map " in out


def test_version_names_the_program() -> None:
    code, out = invoke("--version")
    assert code == 0
    assert out.strip() == f"fhiradapter {__version__}"


def test_missing_input_is_a_one_line_error(tmp_path: Path) -> None:
    code, out = invoke("evaluate", str(tmp_path / "nope"), "--as-of", "2005-03-31", "--out", str(tmp_path / "o"))
    assert code == ExitCode.INPUT
    assert out.strip().splitlines() == [f"error: input not found: {tmp_path / 'nope'}"]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("31/03/2005", "--as-of must be a date as YYYY-MM-DD, got '31/03/2005'"),
        ("yesterday", "--as-of must be a date as YYYY-MM-DD, got 'yesterday'"),
        ("2005-02-30", "--as-of 2005-02-30 is no calendar date (that month has no such day)"),  # the date, not the form
    ],
)
def test_bad_as_of_is_a_config_error_that_says_what_is_wrong(tmp_path: Path, bad: str, says: str) -> None:
    code, out = invoke("evaluate", str(PAPER), "--as-of", bad, "--out", str(tmp_path))
    assert code == ExitCode.CONFIG
    assert says in out and "Traceback" not in out


def test_the_top_level_help_cuts_no_description_short() -> None:
    code, out = invoke("--help")
    commands = out.split("Commands:", 1)[1].strip().splitlines()
    assert code == 0 and len(commands) == 10 and not [line for line in commands if line.rstrip().endswith("...")]


def test_the_summary_names_every_file_written_and_where_to_read_the_report(tmp_path: Path) -> None:
    code, out = invoke("evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path))
    assert code == 0, out
    for name in ("writeback-plan.ndjson", "report-km.png", "report-swimmer.png", "manifest.json"):
        assert name in out, name
    assert f"Open {tmp_path / 'report.html'} in a browser" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["as_of"] == "2005-03-31" and summary["protocol"]["id"] == "thal-hcc-pilot"
    assert summary["protocol"]["rules"] == "docs/protocol.md"


def edited_mappings(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of the shipped mappings with one text replaced in one file."""
    folder = tmp_path / "maps"
    shutil.copytree(ROOT / "mappings", folder)
    text = (folder / name).read_text()
    assert old in text
    (folder / name).write_text(text.replace(old, new))
    return folder


def evaluate_with(tmp_path: Path, folder: Path) -> tuple[int, str]:
    return invoke(
        "evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path / "o"), "--mappings", str(folder)
    )


def test_unreadable_mappings_name_file_and_key(tmp_path: Path) -> None:
    folder = edited_mappings(tmp_path, "protocol.toml", "afp_window_days = 14", "afp_windw_days = 14")
    code, out = evaluate_with(tmp_path, folder)
    assert code == ExitCode.CONFIG
    assert "protocol.toml" in out and "afp_windw_days" in out


def test_a_stop_reason_outside_the_five_is_a_config_error(tmp_path: Path) -> None:
    """docs/protocol.md §7: a mapped statusReason is progression, toxicity, refusal, death or other."""
    folder = edited_mappings(tmp_path, "codes.toml", 'concept = "refusal"', 'concept = "financial"')
    code, out = evaluate_with(tmp_path, folder)
    assert code == ExitCode.CONFIG
    assert "codes.toml" in out and "stop_reason" in out and "unexpected internal error" not in out


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    folder = edited_mappings(tmp_path, "codes.toml", "[systems]", "[systems")
    code, out = evaluate_with(tmp_path, folder)
    assert code == ExitCode.CONFIG and "codes.toml" in out and "not valid TOML" in out


def test_configurable_albumin_cut_off_changes_child_pugh(tmp_path: Path) -> None:
    """docs/protocol.md §3: the 2.8 g/dL cut-off lives in mappings/; with 3.0 a 2.8 g/dL albumin scores 3."""
    folder = edited_mappings(tmp_path, "protocol.toml", "albumin_lower_g_dl = 2.8", "albumin_lower_g_dl = 3.0")
    code, _ = evaluate_with(tmp_path, folder)
    assert code == 0
    import json

    results = json.loads((tmp_path / "o" / "results.json").read_text())
    thal04 = next(s for s in results["subjects"] if s["patient"] == "Patient/thal-04")
    assert thal04["child_pugh"]["points"]["albumin"] == 3  # albumin 2.8 g/dL
    assert thal04["child_pugh"]["class"] == "C"


def test_console_script_runs_with_progress_off(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("fhiradapter")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    run = subprocess.run(
        [str(exe), "evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Wrote" in run.stdout


def test_no_writeback_skips_the_bundle_and_removes_an_earlier_one(tmp_path: Path) -> None:
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path), "--no-report"]
    code, _ = invoke(*args)
    assert code == 0 and (tmp_path / "writeback.json").exists()
    full = json.loads((tmp_path / "results.json").read_text())
    code, out = invoke(*args, "--no-writeback")
    assert code == 0, out
    assert "Write-back: not planned (--no-writeback)" in out and "writeback.json," not in out
    assert not (tmp_path / "writeback.json").exists() and not (tmp_path / "writeback-plan.ndjson").exists()
    assert [p.name for p in tmp_path.glob(".*")] == [".fhiradapter.lock"]  # the old copies are gone, not hidden
    assert json.loads((tmp_path / "summary.json").read_text())["writeback"] is None
    lean = json.loads((tmp_path / "results.json").read_text())
    assert lean["subjects"] == full["subjects"] and lean["cohort"] == full["cohort"]  # the same evaluation


def test_output_piped_into_head_stops_quietly(tmp_path: Path) -> None:
    """`fhiradapter evaluate ... | head -1`: the pipe closes after one line; no error, no message, exit 0."""
    import subprocess
    import sys

    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path), "--no-report"]
    run = subprocess.Popen(
        [sys.executable, "-c", "from fhiradapter.cli import run; run()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert run.stdout is not None and run.stdout.readline().startswith(b"Read ")
    run.stdout.close()  # as head does after its line
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0 and err == b"", err


def test_a_failed_pull_leaves_no_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "pulled"
    code, text = invoke(
        "pull", "--server", "http://127.0.0.1:9/fhir", "--study", "s", "--out", str(out), "--retry-budget", "0"
    )
    assert code == ExitCode.SERVER and "127.0.0.1:9" in text
    assert not out.exists()


@pytest.mark.parametrize(
    ("missing", "command", "extra"),
    [
        ("sqlalchemy", ["runs", "--data-dir", "{tmp}"], "registry"),
        ("pyarrow", ["export", "{out}", "--to", "parquet:{tmp}/p"], "parquet"),
    ],
)
def test_a_missing_extra_is_named_with_its_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str, command: list[str], extra: str
) -> None:
    import sys

    out = tmp_path / "out"
    assert invoke("evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(out), "--no-report")[0] == 0
    (tmp_path / "sync.db").touch()
    for name in [m for m in sys.modules if m == missing or m.startswith(f"{missing}.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("fhiradapter.shell.server.store", "fhiradapter.shell.registry.registry_db"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)  # as if the package were not installed
    code, text = invoke(*[a.format(tmp=tmp_path, out=out) for a in command])
    assert code == ExitCode.CONFIG, text
    assert text.strip().splitlines()[-1] == (
        f"error: this needs {missing}, which comes with an extra: pip install 'fhiradapter[{extra}]'"
    )


def test_one_vocabulary_for_export_flags_with_the_old_spellings_hidden(tmp_path: Path) -> None:
    """--export-to and --export-format on evaluate, sync and export; export's --to and --format still work,
    unlisted."""
    for command in ("evaluate", "sync", "export"):
        code, text = invoke(command, "--help")
        assert code == 0, command
        assert "--export-to" in text and "--export-format" in text, command
    _code, text = invoke("export", "--help")
    assert " --to " not in text and " --format " not in text
    out = tmp_path / "out"
    assert invoke("evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(out), "--no-report")[0] == 0
    new = invoke("export", str(out), "--export-to", f"csv:{tmp_path / 'a'}", "--export-format", "sdtm")
    old = invoke("export", str(out), "--to", f"csv:{tmp_path / 'b'}", "--format", "sdtm")
    assert new[0] == old[0] == 0, (new, old)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    missing = invoke("export", str(out))
    assert missing[0] == 2 and "Missing option '--export-to URL'" in missing[1]


def test_progress_in_a_log_is_a_plain_line_per_phase(tmp_path: Path) -> None:
    """stderr not a terminal (a log file): one line at each phase, with the share done, never a bare label."""
    import fhiradapter.shell.common.progress  # noqa: F401 - imported before the run: the display finds stderr at run time

    result = CliRunner().invoke(
        main, ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path), "--progress"]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Reading and evaluating: 0% (")
    phases = [line.split(":", 1)[0] for line in lines]
    assert phases.index("Writing results") < phases.index("Drawing the report") < phases.index("Done")
    assert lines[-1].startswith("Done: 100% (")


def test_the_progress_display_counts_every_phase_with_an_estimate() -> None:
    import io

    from fhiradapter.shell.common.progress import RunProgress

    now = [0.0]
    out = io.StringIO()
    display = RunProgress(1000, tty=False, stream=out, every=5, clock=lambda: now[0])
    now[0] = 2.0
    display.advance(800)  # within 5 s of the last line: no line
    now[0] = 6.0
    display.advance(200)  # 1000 of 2400: a line with the time left
    display.phase("write")
    display.phase("report")
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "Reading and evaluating: 0% (0 s)"
    assert lines[1] == "Reading and evaluating: 42% (6 s, about 8 s left)"
    assert [line.split(":")[0] for line in lines[2:]] == ["Writing results", "Drawing the report", "Done"]
    assert lines[-1].startswith("Done: 100%")


def test_the_command_reference_shows_real_defaults(tmp_path: Path) -> None:
    """docs/cli.md is generated from the commands: no placeholder (click's Sentinel.UNSET) may show as a default."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([mkdocs, "build", "--quiet", "--site-dir", str(tmp_path)], cwd=ROOT, check=True, env=env)
    page = (tmp_path / "cli" / "index.html").read_text()
    assert "Sentinel" not in page and "UNSET" not in page
    assert "[default: tables]" in page  # a real default, as --help says it
    assert "FHIRADAPTER_MAPPINGS" in page and "mappings init" in page  # every command, the new ones too


def test_a_stopped_run_leaves_the_progress_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while reading: the display must not jump to 100 % before saying the run was interrupted."""
    from fhiradapter.shell.run import pipeline

    def interrupted(request: RunRequest) -> None:
        assert request.progress is not None
        request.progress(300)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_evaluate", interrupted)
    args = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(tmp_path / "o"), "--progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    lines = result.output.splitlines()
    stopped = [line for line in lines if line.startswith("Stopped:")]
    assert stopped and "100%" not in stopped[0] and not any(line.startswith("Done:") for line in lines)
    assert lines.index(stopped[0]) < next(n for n, line in enumerate(lines) if "interrupted" in line)


def test_a_rerun_into_the_same_out_says_what_it_replaced(tmp_path: Path) -> None:
    out = tmp_path / "o"
    base = ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(out), "--no-report"]
    first = CliRunner().invoke(main, [*base, "--screen-candidates"])
    assert first.exit_code == 0 and "replaced" not in first.output
    assert (out / "candidates.ndjson").exists()
    second = CliRunner().invoke(main, base)
    assert second.exit_code == 0
    assert f"note: this run replaced the outputs of an earlier run in {out} (as-of 2005-03-31)" in second.output
    assert "removed its candidates.ndjson (not written by this run)" in second.output


def test_a_run_that_evaluated_no_one_says_so_and_export_has_nothing_to_do(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "p.ndjson").write_text('{"resourceType":"Patient","id":"x"}\n')
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["evaluate", str(src), "--as-of", "2005-03-31", "--out", str(out)])
    assert result.exit_code == ExitCode.NOTHING
    assert "in a browser" not in result.output
    assert "No one was evaluated" in result.output and "rejects.ndjson says why" in result.output
    db = tmp_path / "r.db"
    export = CliRunner().invoke(main, ["export", str(out), "--export-to", f"sqlite:///{db}"])
    assert export.exit_code == ExitCode.NOTHING and "evaluated no one" in export.output
    assert not db.exists()  # no empty database left behind


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["export", "{tmp}/nowhere", "--export-to", "sqlite:///{tmp}/r.db"], "nowhere does not exist"),
        (["export", "{out}", "--export-to", "mysql://h/db"], "--export-to 'mysql://h/db': use sqlite"),
        (["export", "{out}", "--export-to", "csv:"], "--export-to csv: needs a folder"),
    ],
)
def test_export_errors_name_the_folder_and_the_option_as_spelt_in_help(
    tmp_path: Path, args: list[str], says: str
) -> None:
    out = tmp_path / "o"
    assert (
        CliRunner()
        .invoke(main, ["evaluate", str(PAPER), "--as-of", "2005-03-31", "--out", str(out), "--no-report"])
        .exit_code
        == 0
    )
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path, out=out) for a in args])
    assert result.exit_code in (ExitCode.CONFIG, ExitCode.INPUT)
    assert says in result.output and "did not finish" not in result.output


def test_docs_export_names_an_existing_extra_for_every_install() -> None:
    """docs/export.md says which extra each export needs; each named extra must exist in pyproject.toml."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = (ROOT / "docs" / "export.md").read_text()
    named = {e.strip() for group in re.findall(r'pip install "\.\[([a-z,]+)\]"', text) for e in group.split(",")}
    assert {"registry", "postgres", "parquet", "all"} <= named <= extras
    first_block = text.split("```\n", 2)[1]
    assert first_block.startswith('pip install ".[registry]"')  # before the commands that need it


def test_the_messages_a_newcomer_needed(tmp_path: Path) -> None:
    """A future --as-of is warned about; --study takes ResearchStudy/<id>; a study no subject names says which
    studies the input's subjects do name; screening that finds no candidate says so."""
    base = ["evaluate", str(PAPER), "--no-report", "--out"]
    future = CliRunner().invoke(main, [*base, str(tmp_path / "f"), "--as-of", "2050-03-31"])
    assert future.exit_code == 0 and "warning: --as-of 2050-03-31 is after today" in future.output
    prefixed = CliRunner().invoke(
        main, [*base, str(tmp_path / "p"), "--as-of", "2005-03-31", "--study", "ResearchStudy/thal-hcc-pilot"]
    )
    assert prefixed.exit_code == 0 and "14 patient(s) evaluated" in prefixed.output
    typo = CliRunner().invoke(main, [*base, str(tmp_path / "t"), "--as-of", "2005-03-31", "--study", "thal-hcc-pilott"])
    assert typo.exit_code == ExitCode.NOTHING
    assert (
        "none with a ResearchSubject of ResearchStudy/thal-hcc-pilott; "
        "14 ResearchSubject(s) of the input name another study" in typo.output
    )
    screened = CliRunner().invoke(main, [*base, str(tmp_path / "s"), "--as-of", "2005-03-31", "--screen-candidates"])
    assert screened.exit_code == 0
    assert (
        "screening candidates: none: every patient in the input has a ResearchSubject of the study" in screened.output
    )
