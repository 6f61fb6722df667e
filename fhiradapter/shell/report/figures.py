"""The report's two figures: the Kaplan-Meier overall-survival curve with the number at risk, and a swimmer
plot of treatment durations with each assessment's response. Drawn with matplotlib (and lifelines for the
curve), loaded only when a report is written."""

from __future__ import annotations

import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

from fhiradapter.shell.report.rows import ReportRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SWIMMER_MAX = 60  # patients drawn in the swimmer plot (the longest treatments when there are more)
RESPONSE_COLOURS = {"CR": "#1a9850", "PR": "#66bd63", "SD": "#fdae61", "PD": "#d73027", "NE": "#999999"}


def swimmer_key(row: ReportRow) -> tuple[int, str]:
    """The swimmer plot's order: the longest treatments first, then by patient."""
    return -(row.treatment_days or 0), row.patient


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


def _swimmer_png(rows: list[ReportRow]) -> bytes | None:
    treated = sorted(rows, key=swimmer_key)[:SWIMMER_MAX][::-1]
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
        [r.treatment_days or 0 for r in treated],
        color=[RESPONSE_COLOURS.get(r.best_response or "NE", "#999999") for r in treated],
        alpha=0.55,
        height=0.6,
    )
    series: dict[tuple[str, str], tuple[list[float], list[int]]] = {}
    for y, r in enumerate(treated):
        for a in r.assessments:
            key = ("D" if a.response != "PD" else "X", RESPONSE_COLOURS.get(a.response, "#333333"))
            series.setdefault(key, ([], []))[0].append(a.day)
            series[key][1].append(y)
        end = "ongoing →" if r.on_treatment else (r.off_treatment_reason or "")
        dead = " †" if r.os and r.os.event else ""
        ax.text((r.treatment_days or 0) + 4, y, f"{end}{dead}", va="center", fontsize=8)
    for (marker, colour), (days, ys) in series.items():
        ax.plot(days, ys, marker=marker, ms=7, ls="", color=colour, markeredgecolor="black", mew=0.5)
    labels = [r.patient.split("/", 1)[1] for r in treated]
    ax.set_yticks(range(len(treated)), labels, fontsize=8)
    ax.set_xlabel("Days on thalidomide (bar colour: best overall response; markers: assessments)")
    ax.set_xlim(0, max(r.treatment_days or 0 for r in treated) * 1.25 + 10)
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


def draw_figures(os: list[tuple[int, bool]], swimmer: list[ReportRow]) -> dict[str, bytes]:
    """Both figures (``km`` from each treated patient's survival days and event, ``swimmer``); when there are
    two, drawn at the same time in two processes (about a second each)."""
    if os and swimmer:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: PLC0415 - loaded once, before the fork, for both figures

        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
            drawing = pool.submit(_km_png, os)
            swimmer_png = _swimmer_png(swimmer)
            km = drawing.result()
    else:
        km, swimmer_png = _km_png(os), _swimmer_png(swimmer)
    return {k: png for k, png in (("km", km), ("swimmer", swimmer_png)) if png}


def _png(fig: Figure) -> bytes:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
