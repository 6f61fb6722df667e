"""The report's sections, built from typed values: the cohort summary, the run summary, and what
:class:`Digest` keeps of the per-patient rows (``rows.ReportRow``).

Response summary with exact CIs, Table 1 (patient characteristics and results) and Table 2 (toxicity by
grade) in the paper's layout, the two figures' sections, screening outcomes of the study subjects not treated,
the screening candidates, data quality, and, when the run is the paper's own cohort (``published.toml``
``[cohort]``), the differences from the published paper. A section with nothing to show says "none".
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable

import msgspec

from fhiradapter.core.eligibility import explain
from fhiradapter.core.results import (
    AgeRange,
    CohortSummary,
    CriterionStatus,
    PatientResult,
    Rate,
    ResultsHeader,
    RunSummary,
)
from fhiradapter.shell.report.figures import SWIMMER_MAX, swimmer_key
from fhiradapter.shell.report.render import Cell, Section, items
from fhiradapter.shell.report.rows import ReportRow

TABLE_MAX = 200  # rows of a per-patient table; results.json has every patient


class PaperCohort(msgspec.Struct, frozen=True):
    """published.toml's ``[cohort]``: the protocol and the treated patients the paper describes."""

    protocol: str = ""
    treated: list[str] = msgspec.field(default_factory=list)
    description: str = ""


class PaperFigure(msgspec.Struct, frozen=True):
    """One figure the paper printed (``[[figure]]``), and which computed figure it is set beside (``key``)."""

    key: str
    label: str
    printed: str
    note: str = ""


class Published(msgspec.Struct, frozen=True):
    """mappings/published.toml: what the source paper printed."""

    source: str = ""
    cohort: PaperCohort | None = None
    figure: list[PaperFigure] = msgspec.field(default_factory=list)


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f} %"


# The anthracyclines the rule book names (docs/protocol.md §2); another code a site maps shows as its code.
DRUG_NAMES = {"3639": "doxorubicin", "3995": "epirubicin"}


def _drug(code: str) -> str:
    name = DRUG_NAMES.get(code)
    return f"{name} (RxNorm {code})" if name else f"RxNorm {code}"


def _days(days: float | None) -> str:
    return "not reached" if days is None else f"{days:g}"


def _rate(r: Rate) -> str:
    if r.rate is None:
        return "n/a (no treated patients)"
    return f"{r.count}/{r.n} = {_pct(r.rate)} (95 % CI {_pct(r.ci_low)} to {_pct(r.ci_high)}, exact)"


def _age(value: int | AgeRange | None) -> str:
    if isinstance(value, AgeRange):
        return f"{value.min}-{value.max}"
    return "" if value is None else str(value)


def _cut(n: int, where: str = "results.json") -> list[str]:
    return [f"The first {TABLE_MAX} of {n} patients are listed; {where} has all of them."] if n > TABLE_MAX else []


def _id(patient: str) -> str:
    """``Patient/thal-01`` as a table shows it."""
    return patient.split("/", 1)[1]


def _keep(
    rows: list[ReportRow], row: ReportRow, limit: int, key: Callable[[ReportRow], tuple[int, str]]
) -> list[ReportRow]:
    """Append, and when the list grows to twice the limit keep the ``limit`` smallest by ``key``."""
    rows.append(row)
    if len(rows) >= 2 * limit:
        rows = sorted(rows, key=key)[:limit]
    return rows


def _by_patient(row: ReportRow) -> tuple[int, str]:
    return 0, row.patient


class Digest:
    """What the report needs from every patient row, kept bounded: the first rows of each table by patient,
    the longest treatments for the swimmer plot, and only numbers for the rest."""

    def __init__(self) -> None:
        self.treated: list[ReportRow] = []
        self.screened: list[ReportRow] = []
        self.swimmer: list[ReportRow] = []
        self.n_treated = 0
        self.n_screened = 0
        self.ages: list[int] = []
        self.os: list[tuple[int, bool]] = []
        self.issues: Counter[str] = Counter()

    def add(self, row: ReportRow) -> None:
        self.issues.update(row.issues)
        if not row.treated:
            self.n_screened += 1
            self.screened = _keep(self.screened, row, TABLE_MAX, _by_patient)
            return
        self.n_treated += 1
        self.treated = _keep(self.treated, row, TABLE_MAX, _by_patient)
        if row.treatment_days:
            self.swimmer = _keep(self.swimmer, row, SWIMMER_MAX, swimmer_key)
        age = row.characteristics.age
        if isinstance(age, int):
            self.ages.append(age)
        if row.os:
            self.os.append((row.os.days, row.os.event))


def _first_cell(row: list[Cell]) -> str:
    """A candidate's row by its patient (one row per patient)."""
    return str(row[0])


class Candidates:
    """The screening candidates of a run (docs/protocol.md §1), read from candidates.ndjson line by line: every
    one counted, the first ``TABLE_MAX`` by patient kept as table rows."""

    def __init__(self) -> None:
        self.rows: list[list[Cell]] = []
        self.n = 0
        self.by_status: Counter[str] = Counter()

    def add(self, result: PatientResult) -> None:
        self.n += 1
        eligibility = result.eligibility
        self.by_status[eligibility.status] += 1
        failed = [explain(c) for c in eligibility.criteria if c.status is CriterionStatus.NOT_MET]
        unknown = [explain(c) for c in eligibility.criteria if c.status is CriterionStatus.UNKNOWN]
        row: list[Cell] = [result.patient.split("/", 1)[-1], str(eligibility.status), items(failed), items(unknown)]
        self.rows.append(row)
        if len(self.rows) >= 2 * TABLE_MAX:
            self.rows = sorted(self.rows, key=_first_cell)[:TABLE_MAX]

    def finish(self) -> None:
        """The first ``TABLE_MAX`` rows by patient, once every candidate is added."""
        self.rows = sorted(self.rows, key=_first_cell)[:TABLE_MAX]


def _response_summary(cohort: CohortSummary) -> Section:
    ci = cohort.os_ci
    days_range = cohort.treatment_days_range
    return Section(
        "Response summary",
        [
            f"Treated population (at least one dose of study thalidomide): **{cohort.n_treated}** patients; "
            f"{cohort.n_screened_only} screened only.",
            "Best overall response (WHO bidimensional + serum AFP, confirmed): "
            + ", ".join(f"{k} {v}" for k, v in cohort.best_response_counts.items())
            + ".",
            f"Objective response rate (CR + PR): {_rate(cohort.orr)}.",
            f"Disease control rate (CR + PR + SD): {_rate(cohort.dcr)}.",
            (
                f"Median overall survival: {_days(cohort.median_os_days)} days (95 % CI {_days(ci[0])} to "
                f"{_days(ci[1])}); {cohort.os_events} deaths among {cohort.os_n} patients."
                if cohort.os_n
                else "Overall survival: no treated patient, so none to estimate."
            ),
            (
                f"Median treatment duration: {_days(cohort.median_treatment_days)} days"
                + (f" (range {days_range[0]}-{days_range[1]})." if days_range else ".")
                if cohort.median_treatment_days is not None
                else "Treatment duration: no treated patient."
            ),
        ],
    )


NO_ONE = "None: no patient was treated."
TABLE_1 = [
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
]


def _table_1(digest: Digest) -> Section:
    treated = sorted(digest.treated, key=_by_patient)[:TABLE_MAX]
    rows: list[list[Cell]] = []
    for r in treated:
        who = r.characteristics
        rows.append(
            [
                _id(r.patient),
                _age(who.age),
                who.sex or "",
                str(who.ecog if who.ecog is not None else ""),
                who.child_pugh_class or "",
                ", ".join(_drug(c) for c in who.prior_anthracycline),
                "; ".join(who.metastatic_sites),
                _days(who.baseline_afp) if who.baseline_afp is not None else "",
                str(r.treatment_days or ""),
                str(r.best_response or ""),
                "dead" if r.os and r.os.event else "alive",
                str(r.off_treatment_reason or ""),
            ]
        )
    return Section("Table 1. Patient characteristics and results", _cut(digest.n_treated), [(TABLE_1, rows, NO_ONE)])


def _table_2(cohort: CohortSummary) -> Section:
    rows: list[list[Cell]] = [
        [t.display, t.meddra or "", str(t.grade_1_2), str(t.grade_3_4)] for t in cohort.toxicity_table
    ]
    return Section(
        "Table 2. Toxicity (NCI CTC v2.0): patients by worst grade",
        [
            f"Treatment-emergent events of the {cohort.n_treated} treated patients; "
            "reported and lab-derived grades, one row per term."
        ]
        if cohort.n_treated
        else [],
        [
            (
                ["Toxicity", "MedDRA LLT", "Grade 1-2", "Grade 3-4"],
                rows,
                "None: no toxicity was graded." if cohort.n_treated else NO_ONE,
            )
        ],
    )


def _figure_sections(digest: Digest) -> list[Section]:
    km = Section(
        "Overall survival (Kaplan-Meier)",
        [
            "Time from the first thalidomide dose to death; living patients are censored "
            "at their last dated record on or before the as-of date."
            if digest.os
            else "None: no treated patient, so no survival curve."
        ],
        figure="km",
    )
    swimmer = Section(
        "Treatment durations",
        [
            "None: no treated patient."
            if not digest.swimmer
            else f"The {SWIMMER_MAX} longest treatments are shown."
            if digest.n_treated > SWIMMER_MAX
            else "Every treated patient is shown."
        ],
        figure="swimmer",
    )
    return [km, swimmer]


def _screening_outcomes(digest: Digest) -> Section:
    screened = sorted(digest.screened, key=_by_patient)[:TABLE_MAX]
    rows: list[list[Cell]] = [
        [_id(r.patient), str(r.eligibility), items(r.failed), items(r.unknown), str(r.status)] for r in screened
    ]
    head = [
        "Patient",
        "Eligibility",
        "Not met: value found; limit",
        "Not determined: what is missing",
        "ResearchSubject status",
    ]
    return Section(
        "Screening outcomes: study subjects not treated",
        [
            "Study subjects (a ResearchSubject of the study) who never had study thalidomide, with each "
            "criterion not met or not determined at their screening date.",
            *_cut(digest.n_screened),
        ],
        [(head, rows, "None: every study subject was treated.")],
    )


def candidates_section(candidates: Candidates | None, header: ResultsHeader) -> Section:
    summary = header.run_summary
    population = summary.population
    title = "Screening candidates (patients not in the study)"
    if candidates is None:
        if summary.results_dir and population.candidates:  # the Spark engine wrote them there
            where = f"{summary.results_dir}/candidates/"
            return Section(title, [f"{population.candidates} candidate(s) screened; their results are in {where}."])
        outside = population.not_in_study
        return Section(
            title,
            [
                "Not screened: this run was made without `--screen-candidates`. "
                + (
                    f"{outside} patient(s) in the input have no ResearchSubject of the study and were not "
                    "evaluated (rejects.ndjson lists their records as not-in-study); `evaluate "
                    "--screen-candidates` screens them."
                    if outside
                    else "Every patient in the input is a study subject."
                )
            ],
        )
    paragraphs = [
        f"Patients in the input without a ResearchSubject of the study, screened at the data cut-off "
        f"({header.as_of}) against every criterion of docs/protocol.md §2. They are in no figure above; their "
        "results are in candidates.ndjson, and nothing is written back for them unless `--enrol-candidates` is given."
    ]
    if candidates.n:
        counts = ", ".join(f"{candidates.by_status[k]} {k}" for k in ("eligible", "ineligible", "undetermined"))
        paragraphs.append(f"**{candidates.n}** candidate(s): {counts}.")
    if population.not_screened:
        paragraphs.append(
            f"{population.not_screened} patient(s) outside the study died on or before the data cut-off and were "
            "not screened (rejects.ndjson: not-screened)."
        )
    paragraphs += _cut(candidates.n, "candidates.ndjson")
    head = ["Patient", "Eligibility", "Not met: value found; limit", "Not determined: what is missing"]
    return Section(title, paragraphs, [(head, candidates.rows, "None: no patient outside the study was screened.")])


def _data_quality(summary: RunSummary, digest: Digest) -> Section:
    by_type: list[list[Cell]] = [[t, str(c.read), str(c.used), str(c.rejected)] for t, c in summary.by_type.items()]
    reasons: list[list[Cell]] = [[k, str(v)] for k, v in summary.rejects_by_reason.items()]
    issues: list[list[Cell]] = [[k, str(v)] for k, v in sorted(digest.issues.items())]
    return Section(
        "Data quality",
        [
            f"{summary.records_read} input records: {summary.records_used} used, "
            f"{summary.records_rejected} rejected (every rejected record is listed in rejects.ndjson with its "
            "file, line and reason)."
        ],
        [
            (["Resource type", "Read", "Used", "Rejected"], by_type, "Input records: none."),
            (["Reject reason", "Records"], reasons, "Rejected records: none."),
            (["Issue in used data", "Occurrences"], issues, "Issues in used data: none."),
        ],
    )


def is_the_papers(published: Published, header: ResultsHeader, digest: Digest) -> tuple[bool, str | None]:
    """Whether this run's cohort is the one the paper describes (published.toml ``[cohort]``), and that cohort
    in words (None when published.toml names none).

    It is when the protocol id is the paper's and the treated patients are exactly the paper's: figures computed
    from any other cohort would be set beside the paper's for no reason.
    """
    cohort = published.cohort or PaperCohort()
    treated = sorted(cohort.treated)
    if not treated or not cohort.protocol:
        return False, None
    first, last = treated[0].split("/", 1)[-1], treated[-1].split("/", 1)[-1]
    described = f"protocol {cohort.protocol}; treated patients {first} to {last}" + (
        f", {cohort.description}" if cohort.description else ""
    )
    same = (
        cohort.protocol == header.protocol.id
        and digest.n_treated == len(treated)
        and sorted(r.patient for r in digest.treated) == treated
    )
    return same, described


def _computed_figures(cohort: CohortSummary, digest: Digest) -> dict[str, str]:
    """This run's figures, by the key published.toml's ``[[figure]]`` names them."""
    ages = digest.ages
    days_range = cohort.treatment_days_range
    counts = ", ".join(f"{v} {k}" for k, v in cohort.best_response_counts.items() if v)
    return {
        "best_response_counts": counts + f" (n = {cohort.n_treated})",
        "orr": _rate(cohort.orr),
        "median_treatment_days": (
            _days(cohort.median_treatment_days) if cohort.median_treatment_days is not None else "n/a"
        )
        + (f" (range {days_range[0]}-{days_range[1]})" if days_range else ""),
        "median_os_days": _days(cohort.median_os_days) if cohort.os_n else "n/a",
        "median_age": f"{statistics.median(ages):g} (range {min(ages)}-{max(ages)})" if ages else "n/a",
    }


def paper_section(
    published: Published, header: ResultsHeader, cohort: CohortSummary, digest: Digest, asked: bool | None
) -> Section:
    """The paper's printed figures beside this run's, when this run is the paper's cohort (or ``asked``)."""
    same, described = is_the_papers(published, header, digest)
    if described is None and not asked:
        why = "published.toml names no cohort ([cohort] with protocol and treated), so no run is the paper's"
        return Section("Published paper: not compared", [f"Not compared: {why}."])
    if asked is False or (asked is None and not same):
        return Section(
            "Published paper: not compared",
            [
                f"Not compared, on request ({described})."
                if same
                else f"Not compared: the paper's figures describe the paper's cohort ({described}), and this run's "
                f"{cohort.n_treated} treated patient(s) are not that cohort."
            ],
        )
    computed = _computed_figures(cohort, digest)
    rows: list[list[Cell]] = [[f.label, computed.get(f.key, "n/a"), f.printed, f.note] for f in published.figure]
    which = (
        f"This run is the paper's cohort ({described}), so each figure the paper printed is set beside the one "
        "computed here."
        if same
        else f"Compared on request: this run's {cohort.n_treated} treated patient(s) are not the paper's cohort "
        f"({described or 'published.toml names none'})."
    )
    return Section(
        "Differences from the published paper",
        [which, f"Source: {published.source}."],
        [(["Figure", "Computed here", "Printed in the paper", "Note"], rows, "None: no figure listed.")],
    )


def build_sections(
    header: ResultsHeader,
    cohort: CohortSummary,
    digest: Digest,
    published: Published | None,
    candidates: Candidates | None = None,
    compare_with_paper: bool | None = None,
) -> list[Section]:
    """The report as data: sections of paragraphs, tables and figure names.

    ``compare_with_paper``: None compares with the published paper only when the cohort is the paper's;
    True or False decide it.
    """
    sections = [
        _response_summary(cohort),
        _table_1(digest),
        _table_2(cohort),
        *_figure_sections(digest),
        _screening_outcomes(digest),
        candidates_section(candidates, header),
        _data_quality(header.run_summary, digest),
    ]
    if published:
        sections.append(paper_section(published, header, cohort, digest, compare_with_paper))
    return sections
