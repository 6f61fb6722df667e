"""A site configures fhiradapter once: its own mappings folder, used by every command, and said on every run.

docs/mappings.md: `fhiradapter mappings init DIR` copies the shipped mappings; `--mappings DIR` or
`$FHIRADAPTER_MAPPINGS` points a command at it; every run names the folder it used, and warns when the current
directory holds a `mappings/` that differs from it (an edit that would otherwise be silently ignored).
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from builders import ROOT
from click.testing import CliRunner

from fhiradapter.cli import main

PAPER = ROOT / "fixtures" / "paper-cohort" / "input"
LOCAL_AFP = "urn:oid:1.2.410.200.4|AFP-SERUM"


def local_afp_input(tmp_path: Path) -> Path:
    """The paper cohort plus one AFP of thal-01 coded with a hospital's local code only."""
    src = tmp_path / "in"
    src.mkdir()
    for f in PAPER.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    afp = {
        "resourceType": "Observation",
        "id": "thal-01-afp-local",
        "status": "final",
        "code": {"coding": [{"system": LOCAL_AFP.split("|")[0], "code": LOCAL_AFP.split("|")[1]}]},
        "subject": {"reference": "Patient/thal-01"},
        "effectiveDateTime": "2003-07-29",
        "valueQuantity": {"value": 2050, "unit": "ng/mL", "system": "http://unitsofmeasure.org", "code": "ng/mL"},
    }
    (src / "local.ndjson").write_bytes(orjson.dumps(afp) + b"\n")
    return src


def rejected(out: Path) -> dict[str, str]:
    return {r["id"]: r["code"] for r in map(json.loads, (out / "rejects.ndjson").read_text().splitlines()) if "id" in r}


def add_local_afp(folder: Path) -> None:
    codes = folder / "codes.toml"
    text = codes.read_text()
    assert '"site|AFP"]' in text
    codes.write_text(text.replace('"site|AFP"]', f'"site|AFP", "{LOCAL_AFP}"]', 1))


def test_a_site_makes_its_own_mappings_adds_a_local_code_and_sees_it_take_effect(tmp_path: Path) -> None:
    runner = CliRunner()
    site = tmp_path / "site-mappings"
    made = runner.invoke(main, ["mappings", "init", str(site)])
    assert made.exit_code == 0, made.output
    assert {p.name for p in site.iterdir()} == {
        "protocol.toml",
        "codes.toml",
        "units.toml",
        "export.toml",
        "published.toml",
        "study.toml",
    }
    assert "FHIRADAPTER_MAPPINGS=" in made.output
    add_local_afp(site)
    src = local_afp_input(tmp_path)
    base = ["evaluate", str(src), "--as-of", "2005-03-31", "--no-report"]
    shipped = runner.invoke(main, [*base, "--out", str(tmp_path / "shipped")])
    assert shipped.exit_code == 0, shipped.output
    assert rejected(tmp_path / "shipped")["thal-01-afp-local"] == "unmapped-code"
    assert "(shipped with fhiradapter)" in shipped.output
    for how, env in ((["--mappings", str(site)], {}), ([], {"FHIRADAPTER_MAPPINGS": str(site)})):
        out = tmp_path / f"site-{len(how)}"
        result = runner.invoke(main, [*base, "--out", str(out), *how], env=env)
        assert result.exit_code == 0, result.output
        assert f"Mappings: {site}\n" in result.output
        assert "thal-01-afp-local" not in rejected(out)  # mapped, and used
        summary = json.loads((out / "summary.json").read_text())
        assert summary["protocol"]["mappings_dir"] == str(site)


def test_init_never_overwrites_a_sites_files(tmp_path: Path) -> None:
    site = tmp_path / "m"
    assert CliRunner().invoke(main, ["mappings", "init", str(site)]).exit_code == 0
    add_local_afp(site)
    edited = (site / "codes.toml").read_bytes()
    again = CliRunner().invoke(main, ["mappings", "init", str(site)])
    assert (
        again.exit_code == 10 and "already holds codes.toml" in again.output and "nothing was changed" in again.output
    )
    assert (site / "codes.toml").read_bytes() == edited


def test_a_local_mappings_folder_that_is_not_used_is_warned_about(tmp_path: Path, monkeypatch: object) -> None:
    """After `pip install .` the installed copy is read: an edited ./mappings is named, and how to use it."""
    work = tmp_path / "work"
    assert CliRunner().invoke(main, ["mappings", "init", str(work / "mappings")]).exit_code == 0
    src = local_afp_input(tmp_path)
    args = ["evaluate", str(src), "--as-of", "2005-03-31", "--no-report", "--out", str(tmp_path / "o")]
    import os

    here = Path.cwd()
    os.chdir(work)
    try:
        same = CliRunner().invoke(main, args)  # ./mappings equals the shipped one: nothing to say
        assert same.exit_code == 0 and "warning" not in same.output
        add_local_afp(work / "mappings")
        warned = CliRunner().invoke(main, args)
        used = CliRunner().invoke(main, [*args, "--mappings", "mappings"])
    finally:
        os.chdir(here)
    assert warned.exit_code == 0
    assert "warning: mappings differs from the mappings this run uses" in warned.output
    assert "add --mappings mappings or set FHIRADAPTER_MAPPINGS=" in warned.output
    assert used.exit_code == 0 and "warning" not in used.output


def test_show_names_the_folder_and_the_study(tmp_path: Path) -> None:
    site = tmp_path / "m"
    assert CliRunner().invoke(main, ["mappings", "init", str(site)]).exit_code == 0
    shown = CliRunner().invoke(main, ["mappings", "show"], env={"FHIRADAPTER_MAPPINGS": str(site)})
    assert shown.exit_code == 0, shown.output
    assert f"Mappings: {site}" in shown.output and "FHIRADAPTER_MAPPINGS" in shown.output
    assert "study ResearchStudy/thal-hcc-pilot" in shown.output
    missing = CliRunner().invoke(main, ["mappings", "show", "--mappings", str(tmp_path / "nope")])
    assert missing.exit_code == 10 and "mappings folder not found" in missing.output


def test_the_shipped_mappings_cite_the_projects_own_rule_book() -> None:
    """Issue 28 item 3: a user never has ../shared; the comments cite docs/protocol.md, which ships."""
    from fhiradapter.shell.common.mappings_io import shipped_files

    for path in shipped_files():
        comments = [line for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
        assert not [c for c in comments if "PROTOCOL.md" in c or "shared/" in c], path.name
    assert "docs/protocol.md §1" in (ROOT / "mappings" / "protocol.toml").read_text()
