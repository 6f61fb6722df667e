"""The study team's report: report.md and one self-contained report.html (figures embedded as PNG).

The sections (``sections``) are built from the cohort summary, the run summary and the compact per-patient
rows of the run (``rows.ReportRow``), never by re-reading results.json, so its memory does not grow with the
input; the screening candidates are read from candidates.ndjson line by line, and the changes to the hospital
record from writeback-plan.ndjson. Each criterion not met or unknown reads as the value found and the limit
(``eligibility.explain``). ``render`` writes the sections as Markdown and HTML; ``figures`` draws the plots.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import msgspec

from fhiradapter import __version__
from fhiradapter.core.readback import decode_subject
from fhiradapter.core.results import CohortSummary, ResultsHeader, RunSummary
from fhiradapter.core.review import decode_plan_line, in_words
from fhiradapter.errors import ConfigError, InputError
from fhiradapter.shell.common.files import write_new
from fhiradapter.shell.report.figures import draw_figures
from fhiradapter.shell.report.render import Cell, Section, items, render_html, render_markdown
from fhiradapter.shell.report.rows import ReportRow
from fhiradapter.shell.report.sections import TABLE_MAX, Candidates, Digest, Published, build_sections


def load_published(folder: Path | None) -> Published | None:
    """mappings/published.toml, when the mappings folder has one (and it says anything)."""
    path = (folder / "published.toml") if folder else None
    if path is None or not path.is_file():
        return None
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    if not doc:
        return None
    try:
        return msgspec.convert(doc, Published)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _changes_section(plan: Path, summary: RunSummary) -> Section:
    """What the write-back would change in the hospital's record, grouped by patient, in a reviewer's words
    (``core.review``; the same lines `approve` and `sync --dry-run` print). Read line by line: every change
    counted, the first ``TABLE_MAX`` patients' changes listed."""
    title = "Changes to the hospital record"
    if summary.writeback is None or not plan.is_file():
        return Section(title, ["Not planned: this run was made with `--no-writeback`."])
    actions: Counter[str] = Counter()
    rows: list[list[Cell]] = []
    current: tuple[str, list[str]] | None = None
    patients = 0
    with plan.open("rb") as lines:
        for raw in lines:
            if not raw.strip():
                continue
            line = decode_plan_line(raw)
            actions[line.action] += 1
            if line.action == "unchanged":
                continue
            patient = line.patient
            if current is None or current[0] != patient:
                patients += 1
                if current is not None and len(rows) < TABLE_MAX:
                    rows.append([current[0].split("/", 1)[-1], items(current[1])])
                current = (patient, [])
            current[1].append(in_words(line))
    if current is not None and len(rows) < TABLE_MAX:
        rows.append([current[0].split("/", 1)[-1], items(current[1])])
    return Section(
        title,
        [
            f"writeback.json would create {actions['create']} and update {actions['update']} resource(s) for "
            f"{patients} patient(s); {actions['unchanged']} resource(s) already say what this run decided. "
            "Nothing is written until a person approves it (`fhiradapter approve`); each change names the rule "
            "book's section that decided it, and an update shows each element's old and new value.",
            *_cut(patients),
        ],
        [(["Patient", "Changes"], rows, "None: the record already says what this run decided.")],
    )


def _cut(patients: int) -> list[str]:
    if patients <= TABLE_MAX:
        return []
    return [f"The first {TABLE_MAX} of {patients} patients are listed; writeback-plan.ndjson has all of them."]


def read_candidates(path: Path) -> Candidates | None:
    """The candidates a run screened; None when it screened none (no candidates.ndjson: no --screen-candidates)."""
    if not path.is_file():
        return None
    found = Candidates()
    with path.open("rb") as lines:
        for n, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    found.add(decode_subject(line))
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise InputError(f"{path}: line {n} is not a candidate's result: {exc}") from None
    found.finish()
    return found


def write_report(
    out: Path,
    header: ResultsHeader,
    cohort: CohortSummary,
    rows: Iterable[ReportRow],
    mappings_dir: Path | None,
    compare_with_paper: bool | None = None,
) -> None:
    """report.md (with report-km.png and report-swimmer.png beside it) and a self-contained report.html.

    The screening candidates are read from ``out``/candidates.ndjson, written before the report when the run
    screened them. ``compare_with_paper``: see :func:`sections.build_sections`.
    """
    published = load_published(mappings_dir)
    digest = Digest()
    for row in rows:
        digest.add(row)
    candidates = read_candidates(out / "candidates.ndjson")
    sections = build_sections(header, cohort, digest, published, candidates, compare_with_paper)
    changes = _changes_section(out / "writeback-plan.ndjson", header.run_summary)
    sections.insert(-1 if published else len(sections), changes)
    images = draw_figures(digest.os, digest.swimmer)
    for key in ("km", "swimmer"):  # a figure this cohort has none of must not be left from an earlier run
        if key in images:
            write_new(out / f"report-{key}.png", images[key])
        else:
            (out / f"report-{key}.png").unlink(missing_ok=True)
    protocol = header.protocol
    title = protocol.title
    meta = (
        f"Data cut-off {header.as_of} · protocol {protocol.id} {protocol.version} · "
        f"fhiradapter {__version__} · {len(header.inputs)} input file(s) · "
        f"rules: {protocol.rules} (sections cited as §N)"
    )
    write_new(out / "report.md", render_markdown(title, meta, sections, {k: f"report-{k}.png" for k in images}))
    write_new(out / "report.html", render_html(title, meta, sections, images))
