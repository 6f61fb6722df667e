"""Tumour response by WHO bidimensional measurements plus serum AFP (docs/protocol.md §4).

Per assessment: PD (SPD >= 1.25 x nadir, a new lesion, or AFP >= 1.25 x nadir AFP), else CR (no
measurable tumour and AFP <= ULN), else PR (SPD or AFP <= 0.5 x baseline, basis recorded), else SD when
tumour and AFP are known (or AFP is not evaluable), else NE. All comparisons are exact (``Decimal``,
by multiplication). Best overall response needs confirmation for CR/PR and a minimum time for SD.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import NamedTuple

import msgspec

from fhiradapter.core import dates
from fhiradapter.core import results as r
from fhiradapter.core.limits import BASELINE_WINDOW_DAYS, CONFIRMATION_DAYS, PD_RATIO, PR_RATIO
from fhiradapter.core.model import Observed

RANK = {"CR": 4, "PR": 3, "SD": 2, "PD": 1, "NE": 0}


@lru_cache(maxsize=1 << 16, typed=True)  # lab values and thresholds recur; Decimals are immutable
def exact(value: float) -> Decimal:
    """The decimal a value was written as, exactly (0.1 -> 0.1, not the binary float's expansion).

    Sums and products of such decimals stay exact within Decimal's 28 significant digits, far more than
    any diameter, SPD or AFP needs; comparisons are then exact, as docs/protocol.md §4 requires.
    """
    return Decimal(repr(value))


class ExactAssessment(msgspec.Struct, frozen=True):
    """One assessment as the rules work with it: exact decimals (§4's comparisons are exact), the response as
    a plain code; ``as_result`` gives the ``results.Assessment`` written to results.json."""

    date: date
    response: str
    spd: Decimal | None
    afp: Decimal | None
    basis: str | None  # tumour | afp | both | new_lesion (for PD/PR); None otherwise
    reasons: tuple[str, ...]
    evidence: tuple[str, ...]
    afp_only: bool = False
    confirmed: bool | None = None

    def as_result(self) -> r.Assessment:
        return r.Assessment(
            self.date,
            r.Response(self.response),
            _num(self.spd),
            _num(self.afp),
            r.ResponseBasis(self.basis) if self.basis else None,
            self.afp_only,
            self.confirmed,
            self.reasons,
            self.evidence,
        )


class ResponseResult(msgspec.Struct, frozen=True):
    """One patient's response (docs/protocol.md §4): the assessments, the best overall response and why."""

    assessments: tuple[ExactAssessment, ...]
    best: r.Response
    best_reason: str
    baseline: r.Baseline
    duration: r.ResponseDuration | None = None
    issues: tuple[str, ...] = ()


def _num(value: Decimal | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def _by_date(obs: Iterable[Observed]) -> dict[date, list[Observed]]:
    out: dict[date, list[Observed]] = {}
    for o in obs:
        out.setdefault(o.date, []).append(o)
    return out


def _spd(lesions: Sequence[Observed], expected: set[str]) -> tuple[Decimal | None, Decimal, bool]:
    """(full SPD or None if a baseline lesion or a diameter is missing, partial sum, new lesion seen)."""
    partial = Decimal(0)
    seen: set[str] = set()
    complete = True
    new = False
    for o in lesions:
        if o.focus in seen:
            continue
        seen.add(o.focus or "")
        if o.focus not in expected:
            new = True
        if o.longest_mm is None or o.perpendicular_mm is None:
            complete = False
            continue
        if o.focus in expected:
            partial += exact(o.longest_mm) * exact(o.perpendicular_mm)
    if not expected <= seen:
        complete = False
    return (partial if complete else None), partial, new


class BaselineState(NamedTuple):
    """What the later assessments are compared with (docs/protocol.md §4), and what results.json shows of it."""

    day: date  # the baseline tumour assessment
    lesions: set[str]  # the foci measured at baseline: any other focus later is a new lesion
    spd: Decimal | None  # None: a baseline lesion lacks a diameter
    afp: Decimal | None
    afp_uln: Decimal | None
    afp_evaluable: bool  # baseline AFP above its ULN (or no ULN): AFP criteria apply
    post_afp_after: date  # AFP measured after this day is post-baseline
    result: r.Baseline
    issues: list[str]


def assess_response(
    tumour: Sequence[Observed], afp: Sequence[Observed], index: date, *, afp_window_days: int, sd_min_days: int
) -> ResponseResult:
    """Per-assessment responses and the best overall response for one treated patient."""
    tumour_by_date = _by_date(tumour)
    afp_by_date = {day: sorted(values, key=lambda o: o.ref)[0] for day, values in _by_date(afp).items()}
    baseline = _baseline(tumour_by_date, afp_by_date, index)
    if baseline is None:
        return ResponseResult((), r.Response.NE, "no_baseline_tumour_assessment", r.Baseline(None, None, None))
    assessments = _assess_each(tumour_by_date, afp_by_date, baseline, afp_window_days)
    confirmed = confirm(assessments)
    best, reason = best_overall(confirmed, index, sd_min_days)
    return ResponseResult(
        tuple(confirmed),
        r.Response(best),
        reason,
        baseline.result,
        response_duration(confirmed),
        tuple(baseline.issues),
    )


def _baseline(
    tumour_by_date: dict[date, list[Observed]], afp_by_date: dict[date, Observed], index: date
) -> BaselineState | None:
    """The latest tumour assessment and the latest AFP within 28 days before (or on) the index date; None when
    there is no baseline tumour assessment."""
    start = index - timedelta(days=BASELINE_WINDOW_DAYS)
    base_dates = [day for day in tumour_by_date if start <= day <= index]
    base_afp_dates = [day for day in afp_by_date if start <= day <= index]
    if not base_dates:
        return None
    baseline_day = max(base_dates)
    lesions = tumour_by_date[baseline_day]
    expected = {o.focus or "" for o in lesions}
    spd0, _partial, _new = _spd(lesions, expected)
    issues: list[str] = []
    if spd0 is None:
        issues.append("a baseline lesion lacks a diameter: tumour criteria cannot be applied")
    afp0_obs = afp_by_date[max(base_afp_dates)] if base_afp_dates else None
    afp0 = exact(afp0_obs.value) if afp0_obs and afp0_obs.value is not None else None
    uln = exact(afp0_obs.high) if afp0_obs and afp0_obs.high is not None else None
    afp_evaluable = afp0 is not None and (uln is None or afp0 > uln)
    if afp0 is not None and uln is None:
        issues.append("baseline AFP has no upper limit of normal: CR by AFP cannot be shown")
    result = r.Baseline(
        baseline_day,
        _num(spd0),
        _num(afp0),
        afp0_obs.date if afp0_obs else None,
        _num(uln),
        afp_evaluable,
        tuple(sorted(expected)),
        tuple(sorted({o.ref for o in lesions} | ({afp0_obs.ref} if afp0_obs else set()))),
    )
    post_afp_after = max(base_afp_dates, default=baseline_day)
    return BaselineState(baseline_day, expected, spd0, afp0, uln, afp_evaluable, post_afp_after, result, issues)


def _assessment_days(
    tumour_by_date: dict[date, list[Observed]],
    afp_by_date: dict[date, Observed],
    baseline: BaselineState,
    afp_window_days: int,
) -> tuple[list[tuple[date, bool]], dict[date, date]]:
    """The post-baseline assessments in date order, as (day, AFP only), and the AFP matched to each tumour day.

    A tumour assessment takes the nearest AFP within the window (the earlier on a tie); an AFP matched to none
    is an assessment of its own (docs/protocol.md §4).
    """
    post_dates = sorted(day for day in tumour_by_date if day > baseline.day)
    post_afp = sorted(day for day in afp_by_date if day > baseline.post_afp_after)
    matched: dict[date, date] = {}
    for day in post_dates:
        near = [a for a in post_afp if abs((a - day).days) <= afp_window_days]
        if near:
            matched[day] = min(near, key=lambda a: (abs((a - day).days), a))
    used_afp = set(matched.values())
    points = sorted([(day, False) for day in post_dates] + [(a, True) for a in post_afp if a not in used_afp])
    return points, matched


def _assess_each(
    tumour_by_date: dict[date, list[Observed]],
    afp_by_date: dict[date, Observed],
    baseline: BaselineState,
    afp_window_days: int,
) -> list[ExactAssessment]:
    """Each post-baseline assessment's category, against the nadirs so far (docs/protocol.md §4)."""
    points, matched = _assessment_days(tumour_by_date, afp_by_date, baseline, afp_window_days)
    spd_nadir = baseline.spd
    afp_nadir = baseline.afp
    out: list[ExactAssessment] = []
    for when, afp_only in points:
        if afp_only:
            value = afp_by_date[when]
            afp_k = exact(value.value) if value.value is not None else None
            if baseline.afp_evaluable and afp_k is not None and afp_nadir is not None and _pd(afp_k, afp_nadir):
                out.append(
                    ExactAssessment(
                        when, "PD", None, afp_k, "afp", ("AFP >= 1.25 x nadir AFP",), (value.ref,), afp_only=True
                    )
                )
            if afp_k is not None and afp_nadir is not None:
                afp_nadir = min(afp_nadir, afp_k)
            continue
        lesions = tumour_by_date[when]
        spd_k, partial, new = _spd(lesions, baseline.lesions)
        afp_obs = afp_by_date[matched[when]] if when in matched else None
        afp_k = exact(afp_obs.value) if afp_obs and afp_obs.value is not None else None
        evidence = tuple(sorted({o.ref for o in lesions} | ({afp_obs.ref} if afp_obs else set())))
        category, basis, reasons = classify_assessment(
            spd_k=spd_k,
            partial_spd=partial,
            new_lesion=new,
            spd0=baseline.spd,
            spd_nadir=spd_nadir,
            afp_k=afp_k,
            afp0=baseline.afp,
            afp_nadir=afp_nadir,
            afp_evaluable=baseline.afp_evaluable,
            afp_uln=exact(afp_obs.high) if afp_obs and afp_obs.high is not None else baseline.afp_uln,
        )
        out.append(ExactAssessment(when, category, spd_k, afp_k, basis, reasons, evidence))
        if spd_k is not None and spd_nadir is not None:
            spd_nadir = min(spd_nadir, spd_k)
        if afp_k is not None and afp_nadir is not None:
            afp_nadir = min(afp_nadir, afp_k)
    return out


def _pd(value: Decimal, nadir: Decimal) -> bool:
    """docs/protocol.md §4: value >= 1.25 x nadir, exactly; after a nadir of 0 any reappearance is PD."""
    if nadir == 0:
        return value > 0
    return value * PD_RATIO.denominator >= nadir * PD_RATIO.numerator


def _pr(value: Decimal, baseline: Decimal) -> bool:
    """docs/protocol.md §4: value <= 0.5 x baseline, exactly."""
    return value * PR_RATIO.denominator <= baseline * PR_RATIO.numerator


def classify_assessment(
    *,
    spd_k: Decimal | None,
    partial_spd: Decimal,
    new_lesion: bool,
    spd0: Decimal | None,
    spd_nadir: Decimal | None,
    afp_k: Decimal | None,
    afp0: Decimal | None,
    afp_nadir: Decimal | None,
    afp_evaluable: bool,
    afp_uln: Decimal | None,
) -> tuple[str, str | None, tuple[str, ...]]:
    """One assessment's category, its basis and the reasons, in the protocol's order."""
    afp_known = afp_evaluable and afp_k is not None
    tumour_reasons = []
    if new_lesion:
        tumour_reasons.append("new lesion (a focus not measured at baseline)")
    # PD may come from partial data: unmeasured lesions could only add to the sum.
    spd_seen = spd_k if spd_k is not None else (partial_spd if partial_spd > 0 else None)
    if spd_nadir is not None and spd_seen is not None and _pd(spd_seen, spd_nadir):
        tumour_reasons.append("SPD >= 1.25 x nadir SPD")
    afp_pd = afp_known and afp_nadir is not None and afp_k is not None and _pd(afp_k, afp_nadir)
    if tumour_reasons or afp_pd:
        if tumour_reasons and afp_pd:
            basis = "both"
        elif afp_pd:
            basis = "afp"
        else:
            basis = "tumour" if len(tumour_reasons) > 1 or not new_lesion else "new_lesion"
        return "PD", basis, tuple(tumour_reasons) + (("AFP >= 1.25 x nadir AFP",) if afp_pd else ())
    if spd_k is not None and spd_k == 0:
        if not afp_evaluable:
            return "CR", "tumour", ("no measurable tumour; AFP criteria not applied (baseline AFP <= ULN)",)
        if afp_k is not None and afp_uln is not None and afp_k <= afp_uln:
            return "CR", "both", ("no measurable tumour and AFP <= ULN",)
    pr_tumour = spd_k is not None and spd0 is not None and _pr(spd_k, spd0)
    pr_afp = afp_known and afp0 is not None and afp_k is not None and _pr(afp_k, afp0)
    if pr_tumour or pr_afp:
        basis = "both" if pr_tumour and pr_afp else "tumour" if pr_tumour else "afp"
        reasons = (("SPD <= 0.5 x baseline SPD",) if pr_tumour else ()) + (
            ("AFP <= 0.5 x baseline AFP",) if pr_afp else ()
        )
        return "PR", basis, reasons
    if spd_k is not None and spd0 is not None and (afp_known or not afp_evaluable):
        return "SD", None, ("neither PR nor PD",)
    missing = []
    if spd_k is None:
        missing.append("missing_measurements")
    if afp_evaluable and afp_k is None:
        missing.append("afp_missing")
    return "NE", None, tuple(missing) or ("not evaluable",)


def confirm(assessments: Sequence[ExactAssessment]) -> list[ExactAssessment]:
    """Mark each CR/PR confirmed when a later assessment >= 28 days on is CR (for CR) or PR/CR (for PR)."""
    out: list[ExactAssessment] = []
    tumour = [a for a in assessments if not a.afp_only]
    for a in assessments:
        if a.response not in ("CR", "PR"):
            out.append(a)
            continue
        ok = {"CR"} if a.response == "CR" else {"CR", "PR"}
        later = [b for b in tumour if b.date > a.date]
        first_pd = next((b.date for b in assessments if b.response == "PD" and b.date > a.date), None)
        confirmed = any(
            b.response in ok and (b.date - a.date).days >= CONFIRMATION_DAYS and (first_pd is None or b.date < first_pd)
            for b in later
        )
        out.append(
            ExactAssessment(a.date, a.response, a.spd, a.afp, a.basis, a.reasons, a.evidence, a.afp_only, confirmed)
        )
    return out


def best_overall(assessments: Sequence[ExactAssessment], index: date, sd_min_days: int) -> tuple[str, str]:
    """Best of confirmed CR > confirmed PR > SD > PD > NE, up to and including the first PD."""
    if not assessments:
        return "NE", "no_post_baseline_assessment"
    best, reason = "NE", "no assessment qualified (too early for SD, or not evaluable)"
    for a in assessments:
        category = a.response
        if category in ("CR", "PR") and not a.confirmed:
            category = "SD"  # an unconfirmed PR/CR counts as SD
        if category == "SD" and (a.date - index).days < sd_min_days:
            category = "NE"
        if RANK[category] > RANK[best]:
            best = category
            reason = f"{a.response} on {a.date.isoformat()}" + (
                " (unconfirmed, counted as SD)" if a.response in ("CR", "PR") and category == "SD" else ""
            )
        if a.response == "PD":
            break
    return best, reason


def response_duration(assessments: Sequence[ExactAssessment]) -> r.ResponseDuration | None:
    """From the first confirmed PR/CR to the first PD, censored at the last assessment (docs/protocol.md §4).

    Only a response before the first PD counts: a response after progression has no duration here.
    """
    first_pd = next((a for a in assessments if a.response == "PD"), None)
    before_pd = [a for a in assessments if first_pd is None or a.date < first_pd.date]
    first = next((a for a in before_pd if a.response in ("CR", "PR") and a.confirmed), None)
    if first is None:
        return None
    pd = first_pd
    end = pd.date if pd else max(a.date for a in assessments)
    return r.ResponseDuration(first.date, end, dates.inclusive_days(first.date, end), pd is None)
