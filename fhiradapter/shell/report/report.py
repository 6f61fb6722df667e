"""The study team's report: report.md and one self-contained report.html (figures embedded as PNG).

Sections: response summary with exact CIs, Table 1 (patient characteristics and results) and Table 2
(toxicity by grade) in the paper's layout, the Kaplan-Meier overall-survival curve with the number at risk,
a swimmer plot of treatment durations, screening outcomes of the study subjects not treated, the screening
candidates (read from candidates.ndjson line by line), data quality, and, when the run is the paper's own
cohort (``mappings/published.toml`` ``[cohort]``), the differences from the published paper. Each criterion
not met or unknown reads as the value found and the limit (``eligibility.explain``); a section with nothing
to show says "none". Built from the cohort summary and the compact per-patient rows of the run, never by
re-reading results.json, so its memory does not grow with the input.
"""

from __future__ import annotations

import base64
import html
import io
import multiprocessing
import statistics
import tomllib
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from fhiradapter import __version__
from fhiradapter.core.eligibility import criterion_from_json, explain
from fhiradapter.core.results import CriterionStatus
from fhiradapter.core.review import in_words
from fhiradapter.shell.common.files import write_new

SWIMMER_MAX = 60  # patients drawn in the swimmer plot (the longest treatments when there are more)
TABLE_MAX = 200  # rows of a per-patient table; results.json has every patient
RESPONSE_COLOURS = {"CR": "#1a9850", "PR": "#66bd63", "SD": "#fdae61", "PD": "#d73027", "NE": "#999999"}

# A table: its header, its rows, and the sentence shown instead when it has no rows. A cell is a text, or
# several items (each criterion a patient did not meet), shown one under the other.
Cell = str | tuple[str, ...]
Table = tuple[list[str], list[list[Cell]], str]
NONE = "none"  # how an empty cell or list reads


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


# The anthracyclines the rule book names (docs/protocol.md §2); another code a site maps shows as its code.
DRUG_NAMES = {"3639": "doxorubicin", "3995": "epirubicin"}


def _drug(code: str) -> str:
    name = DRUG_NAMES.get(code)
    return f"{name} (RxNorm {code})" if name else f"RxNorm {code}"


def _items(texts: Iterable[str]) -> Cell:
    """A cell of several items (criteria each with its value and limit: ``eligibility.explain``)."""
    return tuple(texts) or NONE


def _days(x: float | None) -> str:
    return "not reached" if x is None else f"{x:g}"


def _rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "n/a (no treated patients)"
    return f"{r['count']}/{r['n']} = {_pct(r['rate'])} (95 % CI {_pct(r['ci_low'])} to {_pct(r['ci_high'])}, exact)"


def _age(value: Any) -> str:
    if isinstance(value, dict):
        return f"{value['min']}-{value['max']}"
    return "" if value is None else str(value)


def _load_published(folder: Path | None) -> dict[str, Any] | None:
    path = (folder / "published.toml") if folder else None
    if path is None or not path.is_file():
        return None
    return tomllib.loads(path.read_text(encoding="utf-8"))


class Digest:
    """What the report needs from every patient row, kept bounded: the first rows of each table by patient,
    the longest treatments for the swimmer plot, and only numbers for the rest."""

    def __init__(self) -> None:
        self.treated: list[dict[str, Any]] = []
        self.screened: list[dict[str, Any]] = []
        self.swimmer: list[dict[str, Any]] = []
        self.n_treated = 0
        self.n_screened = 0
        self.ages: list[int] = []
        self.os: list[tuple[int, bool]] = []
        self.issues: Counter[str] = Counter()

    def add(self, row: dict[str, Any]) -> None:
        self.issues.update(row["issues"])
        if not row["treated"]:
            self.n_screened += 1
            self.screened = _keep(self.screened, row, TABLE_MAX, lambda r: r["patient"])
            return
        self.n_treated += 1
        self.treated = _keep(self.treated, row, TABLE_MAX, lambda r: r["patient"])
        if row["treatment_days"]:
            self.swimmer = _keep(self.swimmer, row, SWIMMER_MAX, lambda r: (-r["treatment_days"], r["patient"]))
        age = row["characteristics"]["age"]
        if isinstance(age, int):
            self.ages.append(age)
        if row["os"]:
            self.os.append((row["os"]["days"], row["os"]["event"]))


def _keep(rows: list[dict[str, Any]], row: dict[str, Any], limit: int, key: Any) -> list[dict[str, Any]]:
    """Append, and when the list grows to twice the limit keep the ``limit`` smallest by ``key``."""
    rows.append(row)
    if len(rows) >= 2 * limit:
        rows = sorted(rows, key=key)[:limit]
    return rows


def _km_png(os: list[tuple[int, bool]]) -> bytes | None:
    if not os:
        return None
    import matplotlib  # noqa: PLC0415 - plotting is loaded only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from lifelines import KaplanMeierFitter  # noqa: PLC0415
    from lifelines.plotting import add_at_risk_counts  # noqa: PLC0415

    kmf = KaplanMeierFitter(label="Overall survival")
    kmf.fit([d for d, _e in os], event_observed=[e for _d, e in os])
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True, censor_styles={"marker": "|", "ms": 10})
    ax.axhline(0.5, color="#888888", lw=0.8, ls=":")
    ax.set_xlabel("Days from first thalidomide dose")
    ax.set_ylabel("Probability of survival")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Overall survival, treated patients (n = {len(os)})")
    legend = ax.get_legend()
    if legend is not None:  # the title and the at-risk table's label already say what the curve is
        legend.remove()
    add_at_risk_counts(kmf, ax=ax, rows_to_show=["At risk", "Events"])
    fig.tight_layout()
    return _png(fig)


def _swimmer_png(rows: list[dict[str, Any]]) -> bytes | None:
    treated = sorted(rows, key=lambda r: (-r["treatment_days"], r["patient"]))[:SWIMMER_MAX][::-1]
    if not treated:
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(treated) + 1.6), dpi=110)
    # One bar call and one marker series per (marker, colour): a few artists, not one per assessment.
    ax.barh(
        range(len(treated)),
        [r["treatment_days"] for r in treated],
        color=[RESPONSE_COLOURS.get(r["best_response"] or "NE", "#999999") for r in treated],
        alpha=0.55,
        height=0.6,
    )
    series: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
    for y, r in enumerate(treated):
        for a in r["assessments"]:
            key = ("D" if a["response"] != "PD" else "X", RESPONSE_COLOURS.get(a["response"], "#333333"))
            series.setdefault(key, ([], []))[0].append(a["day"])
            series[key][1].append(y)
        end = "ongoing →" if r["on_treatment"] else (r["off_treatment_reason"] or "")
        dead = " †" if r["os"] and r["os"]["event"] else ""
        ax.text(r["treatment_days"] + 4, y, f"{end}{dead}", va="center", fontsize=8)
    for (marker, colour), (days, ys) in series.items():
        ax.plot(days, ys, marker=marker, ms=7, ls="", color=colour, markeredgecolor="black", mew=0.5)
    labels = [r["patient"].split("/", 1)[1] for r in treated]
    ax.set_yticks(range(len(treated)), labels, fontsize=8)
    ax.set_xlabel("Days on thalidomide (bar colour: best overall response; markers: assessments)")
    ax.set_xlim(0, max(r["treatment_days"] for r in treated) * 1.25 + 10)
    handles = [Line2D([0], [0], marker="s", ls="", color=c, label=k, ms=9) for k, c in RESPONSE_COLOURS.items()]
    handles += [
        Line2D([0], [0], marker="D", ls="", color="white", markeredgecolor="black", label="assessment", ms=6),
        Line2D([0], [0], marker="X", ls="", color=RESPONSE_COLOURS.get("PD", "#333333"), label="progression", ms=7),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8, title="Response", title_fontsize=8)
    ax.set_ylim(-0.6, len(treated) - 0.4)  # the bars fill the plot: no blank band above the last
    ax.set_title("Treatment duration and response (text: why treatment stopped; † died)")
    # Margins in inches, from the longest label (8 pt: under 0.07 in per character), instead of
    # tight_layout(): that measures every text and makes savefig draw the figure twice (~0.4 s at 60 rows).
    width, height = fig.get_size_inches()
    label = max(map(len, labels)) * 0.07 + 0.25
    fig.subplots_adjust(left=min(0.6, label / width), right=0.97, bottom=0.7 / height, top=1 - 0.45 / height)
    return _png(fig)


def _figures(digest: Digest) -> dict[str, bytes]:
    """Both figures; when there are two, drawn at the same time in two processes (about a second each)."""
    if digest.os and digest.swimmer:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: PLC0415 - loaded once, before the fork, for both figures

        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
            drawing = pool.submit(_km_png, digest.os)
            swimmer = _swimmer_png(digest.swimmer)
            km = drawing.result()
    else:
        km, swimmer = _km_png(digest.os), _swimmer_png(digest.swimmer)
    return {k: png for k, png in (("km", km), ("swimmer", swimmer)) if png}


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _cut(n: int, where: str = "results.json") -> list[str]:
    return [f"The first {TABLE_MAX} of {n} patients are listed; {where} has all of them."] if n > TABLE_MAX else []


class Candidates:
    """The screening candidates of a run (docs/protocol.md §1), read from candidates.ndjson line by line: every
    one counted, the first ``TABLE_MAX`` by patient kept as table rows."""

    def __init__(self) -> None:
        self.rows: list[list[Cell]] = []
        self.n = 0
        self.by_status: Counter[str] = Counter()

    def add(self, result: dict[str, Any]) -> None:
        self.n += 1
        eligibility = result["eligibility"]
        self.by_status[eligibility["status"]] += 1
        failed: list[str] = []
        unknown: list[str] = []
        for obj in eligibility["criteria"]:
            if obj["status"] == CriterionStatus.MET:
                continue
            try:
                text = explain(criterion_from_json(obj))
            except (KeyError, ValueError):  # not this version's value: its detail still says what it found
                text = str(obj.get("detail") or obj.get("id"))
            (failed if obj["status"] == CriterionStatus.NOT_MET else unknown).append(text)
        row = [result["patient"].split("/", 1)[-1], eligibility["status"], _items(failed), _items(unknown)]
        self.rows.append(row)
        if len(self.rows) >= 2 * TABLE_MAX:
            self.rows = sorted(self.rows)[:TABLE_MAX]


def _changes_section(plan: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What the write-back would change in the hospital's record, grouped by patient, in a reviewer's words
    (``core.review``; the same lines `approve` and `sync --dry-run` print). Read line by line: every change
    counted, the first ``TABLE_MAX`` patients' changes listed."""
    title = "Changes to the hospital record"
    if summary.get("writeback") is None or not plan.is_file():
        return {"title": title, "paragraphs": ["Not planned: this run was made with `--no-writeback`."]}
    actions: Counter[str] = Counter()
    rows: list[list[Cell]] = []
    current: tuple[str, list[str]] | None = None
    patients = 0
    with plan.open("rb") as lines:
        for raw in lines:
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            actions[str(line.get("action"))] += 1
            if line.get("action") == "unchanged":
                continue
            patient = str(line.get("patient"))
            if current is None or current[0] != patient:
                patients += 1
                if current is not None and len(rows) < TABLE_MAX:
                    rows.append([current[0].split("/", 1)[-1], _items(current[1])])
                current = (patient, [])
            current[1].append(in_words(line))
    if current is not None and len(rows) < TABLE_MAX:
        rows.append([current[0].split("/", 1)[-1], _items(current[1])])
    return {
        "title": title,
        "paragraphs": [
            f"writeback.json would create {actions['create']} and update {actions['update']} resource(s) for "
            f"{patients} patient(s); {actions['unchanged']} resource(s) already say what this run decided. "
            "Nothing is written until a person approves it (`fhiradapter approve`); each change names the rule "
            "book's section that decided it, and an update shows each element's old and new value.",
            *_cut(patients, "writeback-plan.ndjson"),
        ],
        "tables": [(["Patient", "Changes"], rows, "None: the record already says what this run decided.")],
    }


def read_candidates(path: Path) -> Candidates | None:
    """The candidates a run screened; None when it screened none (no candidates.ndjson: no --screen-candidates)."""
    if not path.is_file():
        return None
    found = Candidates()
    with path.open("rb") as lines:
        for line in lines:
            if line.strip():
                found.add(orjson.loads(line))
    found.rows = sorted(found.rows)[:TABLE_MAX]
    return found


def _candidates_section(
    candidates: Candidates | None, header: dict[str, Any], summary: dict[str, Any]
) -> dict[str, Any]:
    population = summary.get("population") or {}
    title = "Screening candidates (patients not in the study)"
    outside = population.get("not-in-study", 0)
    if candidates is None:
        if summary.get("results_dir") and population.get("candidates"):  # the Spark engine wrote them there
            where = f"{summary['results_dir']}/candidates/"
            return {
                "title": title,
                "paragraphs": [f"{population['candidates']} candidate(s) screened; their results are in {where}."],
            }
        return {
            "title": title,
            "paragraphs": [
                "Not screened: this run was made without `--screen-candidates`. "
                + (
                    f"{outside} patient(s) in the input have no ResearchSubject of the study and were not "
                    "evaluated (rejects.ndjson lists their records as not-in-study); `evaluate "
                    "--screen-candidates` screens them."
                    if outside
                    else "Every patient in the input is a study subject."
                )
            ],
        }
    paragraphs = [
        f"Patients in the input without a ResearchSubject of the study, screened at the data cut-off "
        f"({header['as_of']}) against every criterion of docs/protocol.md §2. They are in no figure above; their "
        "results are in candidates.ndjson, and nothing is written back for them unless `--enrol-candidates` is given."
    ]
    if candidates.n:
        counts = ", ".join(f"{candidates.by_status[k]} {k}" for k in ("eligible", "ineligible", "undetermined"))
        paragraphs.append(f"**{candidates.n}** candidate(s): {counts}.")
    dead = population.get("not-screened", 0)
    if dead:
        paragraphs.append(
            f"{dead} patient(s) outside the study died on or before the data cut-off and were not screened "
            "(rejects.ndjson: not-screened)."
        )
    paragraphs += _cut(candidates.n, "candidates.ndjson")
    head = ["Patient", "Eligibility", "Not met: value found; limit", "Not determined: what is missing"]
    return {
        "title": title,
        "paragraphs": paragraphs,
        "tables": [(head, candidates.rows, "None: no patient outside the study was screened.")],
    }


def _is_the_papers(published: dict[str, Any], header: dict[str, Any], digest: Digest) -> tuple[bool, str | None]:
    """Whether this run's cohort is the one the paper describes (published.toml ``[cohort]``), and that cohort
    in words (None when published.toml names none).

    It is when the protocol id is the paper's and the treated patients are exactly the paper's: figures computed
    from any other cohort would be set beside the paper's for no reason.
    """
    cohort = published.get("cohort") or {}
    treated = sorted(str(p) for p in cohort.get("treated") or [])
    if not treated or not cohort.get("protocol"):
        return False, None
    first, last = treated[0].split("/", 1)[-1], treated[-1].split("/", 1)[-1]
    described = f"protocol {cohort['protocol']}; treated patients {first} to {last}" + (
        f", {cohort['description']}" if cohort.get("description") else ""
    )
    same = (
        cohort["protocol"] == header["protocol"].get("id")
        and digest.n_treated == len(treated)
        and sorted(r["patient"] for r in digest.treated) == treated
    )
    return same, described


def _paper_section(
    published: dict[str, Any], header: dict[str, Any], cohort: dict[str, Any], digest: Digest, asked: bool | None
) -> dict[str, Any]:
    """The paper's printed figures beside this run's, when this run is the paper's cohort (or ``asked``)."""
    same, described = _is_the_papers(published, header, digest)
    if described is None and not asked:
        why = "published.toml names no cohort ([cohort] with protocol and treated), so no run is the paper's"
        return {"title": "Published paper: not compared", "paragraphs": [f"Not compared: {why}."]}
    if asked is False or (asked is None and not same):
        return {
            "title": "Published paper: not compared",
            "paragraphs": [
                f"Not compared, on request ({described})."
                if same
                else f"Not compared: the paper's figures describe the paper's cohort ({described}), and this run's "
                f"{cohort['n_treated']} treated patient(s) are not that cohort."
            ],
        }
    counts = cohort["best_response_counts"]
    ages = digest.ages
    computed = {
        "best_response_counts": ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" (n = {cohort['n_treated']})",
        "orr": _rate(cohort["orr"]),
        "median_treatment_days": (
            _days(cohort["median_treatment_days"]) if cohort["median_treatment_days"] is not None else "n/a"
        )
        + (
            f" (range {cohort['treatment_days_range'][0]}-{cohort['treatment_days_range'][1]})"
            if cohort["treatment_days_range"]
            else ""
        ),
        "median_os_days": _days(cohort["median_os_days"]) if cohort["os_n"] else "n/a",
        "median_age": f"{statistics.median(ages):g} (range {min(ages)}-{max(ages)})" if ages else "n/a",
    }
    rows = [
        [f["label"], computed.get(f["key"], "n/a"), f["printed"], f.get("note", "")]
        for f in published.get("figure", [])
    ]
    which = (
        f"This run is the paper's cohort ({described}), so each figure the paper printed is set beside the one "
        "computed here."
        if same
        else f"Compared on request: this run's {cohort['n_treated']} treated patient(s) are not the paper's cohort "
        f"({described or 'published.toml names none'})."
    )
    return {
        "title": "Differences from the published paper",
        "paragraphs": [which, f"Source: {published.get('source', '')}."],
        "tables": [(["Figure", "Computed here", "Printed in the paper", "Note"], rows, "None: no figure listed.")],
    }


def build_sections(
    header: dict[str, Any],
    cohort: dict[str, Any],
    digest: Digest,
    summary: dict[str, Any],
    published: dict[str, Any] | None,
    candidates: Candidates | None = None,
    compare_with_paper: bool | None = None,
) -> list[dict[str, Any]]:
    """The report as data: sections of paragraphs, tables and figure names.

    ``compare_with_paper``: None compares with the published paper only when the cohort is the paper's;
    True or False decide it.
    """
    treated = sorted(digest.treated, key=lambda r: r["patient"])[:TABLE_MAX]
    screened = sorted(digest.screened, key=lambda r: r["patient"])[:TABLE_MAX]
    counts = cohort["best_response_counts"]
    sections: list[dict[str, Any]] = []
    ci = cohort["os_ci"]
    sections.append(
        {
            "title": "Response summary",
            "paragraphs": [
                f"Treated population (at least one dose of study thalidomide): **{cohort['n_treated']}** patients; "
                f"{cohort['n_screened_only']} screened only.",
                "Best overall response (WHO bidimensional + serum AFP, confirmed): "
                + ", ".join(f"{k} {v}" for k, v in counts.items())
                + ".",
                f"Objective response rate (CR + PR): {_rate(cohort['orr'])}.",
                f"Disease control rate (CR + PR + SD): {_rate(cohort['dcr'])}.",
                (
                    f"Median overall survival: {_days(cohort['median_os_days'])} days (95 % CI {_days(ci[0])} to "
                    f"{_days(ci[1])}); {cohort['os_events']} deaths among {cohort['os_n']} patients."
                    if cohort["os_n"]
                    else "Overall survival: no treated patient, so none to estimate."
                ),
                (
                    f"Median treatment duration: {_days(cohort['median_treatment_days'])} days"
                    + (
                        f" (range {cohort['treatment_days_range'][0]}-{cohort['treatment_days_range'][1]})."
                        if cohort["treatment_days_range"]
                        else "."
                    )
                    if cohort["median_treatment_days"] is not None
                    else "Treatment duration: no treated patient."
                ),
            ],
        }
    )
    t1 = [
        [
            r["patient"].split("/", 1)[1],
            _age(r["characteristics"]["age"]),
            r["characteristics"]["sex"] or "",
            str(r["characteristics"]["ecog"] if r["characteristics"]["ecog"] is not None else ""),
            r["characteristics"]["child_pugh_class"] or "",
            ", ".join(_drug(c) for c in r["characteristics"]["prior_anthracycline"]),
            "; ".join(r["characteristics"]["metastatic_sites"]),
            _days(r["characteristics"]["baseline_afp"]) if r["characteristics"]["baseline_afp"] is not None else "",
            str(r["treatment_days"] or ""),
            r["best_response"] or "",
            "dead" if r["os"] and r["os"]["event"] else "alive",
            r["off_treatment_reason"] or "",
        ]
        for r in treated
    ]
    no_one = "None: no patient was treated."
    sections.append(
        {
            "title": "Table 1. Patient characteristics and results",
            "paragraphs": _cut(digest.n_treated),
            "tables": [
                (
                    [
                        "Patient",
                        "Age",
                        "Sex",
                        "ECOG",
                        "Child-Pugh",
                        "Prior anthracycline",
                        "Metastatic sites",
                        "Baseline AFP (ng/mL)",
                        "Treatment (days)",
                        "Best response",
                        "Status",
                        "Stopped for",
                    ],
                    t1,
                    no_one,
                )
            ],
        }
    )
    t2 = [[t["display"], t["meddra"] or "", str(t["grade_1_2"]), str(t["grade_3_4"])] for t in cohort["toxicity_table"]]
    sections.append(
        {
            "title": "Table 2. Toxicity (NCI CTC v2.0): patients by worst grade",
            "tables": [
                (
                    ["Toxicity", "MedDRA LLT", "Grade 1-2", "Grade 3-4"],
                    t2,
                    "None: no toxicity was graded." if cohort["n_treated"] else no_one,
                )
            ],
            "paragraphs": [
                f"Treatment-emergent events of the {cohort['n_treated']} treated patients; "
                "reported and lab-derived grades, one row per term."
            ]
            if cohort["n_treated"]
            else [],
        }
    )
    sections.append(
        {
            "title": "Overall survival (Kaplan-Meier)",
            "figure": "km",
            "paragraphs": [
                "Time from the first thalidomide dose to death; living patients are censored "
                "at their last dated record on or before the as-of date."
                if digest.os
                else "None: no treated patient, so no survival curve."
            ],
        }
    )
    sections.append(
        {
            "title": "Treatment durations",
            "figure": "swimmer",
            "paragraphs": [
                "None: no treated patient."
                if not digest.swimmer
                else f"The {SWIMMER_MAX} longest treatments are shown."
                if digest.n_treated > SWIMMER_MAX
                else "Every treated patient is shown."
            ],
        }
    )
    t3 = [
        [r["patient"].split("/", 1)[1], r["eligibility"], _items(r["failed"]), _items(r["unknown"]), r["status"]]
        for r in screened
    ]
    sections.append(
        {
            "title": "Screening outcomes: study subjects not treated",
            "paragraphs": [
                "Study subjects (a ResearchSubject of the study) who never had study thalidomide, with each "
                "criterion not met or not determined at their screening date.",
                *_cut(digest.n_screened),
            ],
            "tables": [
                (
                    [
                        "Patient",
                        "Eligibility",
                        "Not met: value found; limit",
                        "Not determined: what is missing",
                        "ResearchSubject status",
                    ],
                    t3,
                    "None: every study subject was treated.",
                )
            ],
        }
    )
    sections.append(_candidates_section(candidates, header, summary))
    by_type = [[t, str(c["read"]), str(c["used"]), str(c["rejected"])] for t, c in summary["by_type"].items()]
    reasons = [[k, str(v)] for k, v in summary["rejects_by_reason"].items()]
    issues = digest.issues
    sections.append(
        {
            "title": "Data quality",
            "paragraphs": [
                f"{summary['records_read']} input records: {summary['records_used']} used, "
                f"{summary['records_rejected']} rejected (every rejected record is listed in rejects.ndjson with its "
                "file, line and reason)."
            ],
            "tables": [
                (["Resource type", "Read", "Used", "Rejected"], by_type, "Input records: none."),
                (["Reject reason", "Records"], reasons, "Rejected records: none."),
                (
                    ["Issue in used data", "Occurrences"],
                    [[k, str(v)] for k, v in sorted(issues.items())],
                    "Issues in used data: none.",
                ),
            ],
        }
    )
    if published:
        sections.append(_paper_section(published, header, cohort, digest, compare_with_paper))
    return sections


def _md_text(text: str) -> str:
    """Text in a Markdown table cell: a ``|`` or a line break from the data (a Patient.gender, say) would end the
    row."""
    return " ".join(part for part in text.replace("|", "/").splitlines() if part.strip())


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, str):
        return _md_text(cell)
    return _md_text(cell[0]) if len(cell) == 1 else "<br>".join(f"• {_md_text(item)}" for item in cell)


def render_markdown(title: str, meta: str, sections: list[dict[str, Any]], figures: dict[str, str]) -> str:
    out = [f"# {title}", "", meta, ""]
    for s in sections:
        out += [f"## {s['title']}", ""]
        for p in s.get("paragraphs", []):
            out += [p, ""]
        if s.get("figure") in figures:
            out += [f"![{s['title']}]({figures[s['figure']]})", ""]
        for head, body, empty in s.get("tables", []):
            if not body:  # a table without rows says so in words
                out += [empty, ""]
                continue
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
            out.append("")
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}th,td{border:1px solid #ccc;
padding:.25em .55em;text-align:left;vertical-align:top}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%}.meta{color:#555;font-size:.9em}td:first-child,code{white-space:nowrap}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
td ul{margin:0;padding-left:1.1em}td li+li{margin-top:.2em}"""


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` (an option's name, never broken at its hyphens) as HTML."""
    parts = html.escape(text).split("**")
    text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _cell(cell: Cell) -> str:
    """A cell of several items as a list, so that an item the column wraps is not taken for two."""
    if isinstance(cell, str):
        return html.escape(cell)
    if len(cell) == 1:
        return html.escape(cell[0])
    return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in cell) + "</ul>"


def render_html(title: str, meta: str, sections: list[dict[str, Any]], images: dict[str, bytes]) -> str:
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>",
    ]
    for s in sections:
        out.append(f"<h2>{html.escape(s['title'])}</h2>")
        out += [f"<p>{_inline(p)}</p>" for p in s.get("paragraphs", [])]
        if s.get("figure") in images:
            data = base64.b64encode(images[s["figure"]]).decode()
            out.append(f"<img alt='{html.escape(s['title'])}' src='data:image/png;base64,{data}'>")
        for head, body, empty in s.get("tables", []):
            if not body:
                out.append(f"<p>{_inline(empty)}</p>")
                continue
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead>")
            out.append(
                "<tbody>"
                + "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in body)
                + "</tbody></table>"
            )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    out: Path,
    header: dict[str, Any],
    cohort: dict[str, Any],
    rows: Iterable[dict[str, Any]],
    summary: dict[str, Any],
    mappings_dir: Path | None,
    compare_with_paper: bool | None = None,
) -> None:
    """report.md (with report-km.png and report-swimmer.png beside it) and a self-contained report.html.

    The screening candidates are read from ``out``/candidates.ndjson, written before the report when the run
    screened them. ``compare_with_paper``: see :func:`build_sections`.
    """
    published = _load_published(mappings_dir)
    digest = Digest()
    for row in rows:
        digest.add(row)
    candidates = read_candidates(out / "candidates.ndjson")
    sections = build_sections(header, cohort, digest, summary, published, candidates, compare_with_paper)
    sections.insert(-1 if published else len(sections), _changes_section(out / "writeback-plan.ndjson", summary))
    images = _figures(digest)
    for key in ("km", "swimmer"):  # a figure this cohort has none of must not be left from an earlier run
        if key in images:
            write_new(out / f"report-{key}.png", images[key])
        else:
            (out / f"report-{key}.png").unlink(missing_ok=True)
    protocol = header["protocol"]
    title = f"{protocol.get('title', 'Protocol evaluation')}"
    meta = (
        f"Data cut-off {header['as_of']} · protocol {protocol.get('id')} {protocol.get('version')} · "
        f"fhiradapter {__version__} · {len(header['inputs'])} input file(s) · "
        f"rules: {protocol.get('rules', 'docs/protocol.md')} (sections cited as §N)"
    )
    write_new(out / "report.md", render_markdown(title, meta, sections, {k: f"report-{k}.png" for k in images}))
    write_new(out / "report.html", render_html(title, meta, sections, images))
