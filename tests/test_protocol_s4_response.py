"""docs/protocol.md §4 WHO + AFP response: exact boundaries, precedence, AFP rules, confirmation, SD time, BOR."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from builders import lab, lesion
from hypothesis import given
from hypothesis import strategies as st

from fhiradapter.core.model import Observed
from fhiradapter.core.response import RANK, ResponseResult, assess_response, classify_assessment
from fhiradapter.core.results import ResponseDuration, to_builtins

INDEX = date(2004, 1, 10)


def day(n: int) -> str:
    """Study day n as a date string (day 1 = index date; 0 or negative = before it)."""
    return (INDEX + timedelta(days=n - 1 if n > 0 else n)).isoformat()


def afp(n: int, value: float, uln: float = 10) -> Observed:
    return lab("afp", day(n), value, unit="ng/mL", high=uln, ref=f"Observation/afp-{n}")


def run(tumour: list[Observed], afps: list[Observed], sd_min: int = 49, window: int = 14) -> ResponseResult:
    return assess_response(tumour, afps, INDEX, afp_window_days=window, sd_min_days=sd_min)


BASE = [lesion(day(-3), "L1", 20, 10), lesion(day(-3), "L2", 10, 10)]  # SPD 300 mm²


def scan(n: int, d1: float, d2: float = 10, l2: tuple[float, float] = (10, 10)) -> list[Observed]:
    return [lesion(day(n), "L1", d1, d2), lesion(day(n), "L2", *l2)]


def test_s4_exactly_minus_50_percent_is_pr_and_just_above_is_sd() -> None:
    # SPD 150 = exactly half of 300 -> PR; 151 -> SD.
    r = run(BASE + scan(57, 5, 10) + scan(113, 5, 10), [afp(-3, 100), afp(57, 90), afp(113, 90)])
    assert r.assessments[0].response == "PR" and r.assessments[0].basis == "tumour"
    r = run([*BASE, lesion(day(57), "L1", 5.1, 10), lesion(day(57), "L2", 10, 10)], [afp(-3, 100), afp(57, 90)])
    assert r.assessments[0].response == "SD"


def test_s4_exactly_plus_25_percent_of_nadir_is_pd_and_just_below_is_not() -> None:
    # SPD 375 = 1.25 x 300 -> PD; 374 -> SD.
    r = run(BASE + scan(57, 27.5), [afp(-3, 100), afp(57, 100)])
    assert r.assessments[0].response == "PD" and r.assessments[0].basis == "tumour"
    r = run(BASE + scan(57, 27.4), [afp(-3, 100), afp(57, 100)])
    assert r.assessments[0].response == "SD"


def test_s4_pd_is_against_the_nadir_not_the_baseline() -> None:
    # Nadir 200 at day 57; 250 at day 113 is +25 % of the nadir although below baseline.
    r = run(BASE + scan(57, 10) + scan(113, 15), [afp(-3, 100), afp(57, 100), afp(113, 100)])
    assert [a.response for a in r.assessments] == ["SD", "PD"]


def test_s4_new_lesion_is_pd() -> None:
    r = run(BASE + scan(57, 10) + [lesion(day(57), "L3", 5, 5)], [afp(-3, 100), afp(57, 60)])
    assert r.assessments[0].response == "PD" and r.assessments[0].basis == "new_lesion"


def test_s4_afp_pd_exact_boundary_and_precedence_over_tumour_pr() -> None:
    # Tumour halves, AFP +25 % of nadir: PD wins.
    r = run(BASE + scan(57, 5), [afp(-3, 100), afp(57, 125)])
    assert r.assessments[0].response == "PD" and r.assessments[0].basis == "afp"
    r = run(BASE + scan(57, 5), [afp(-3, 100), afp(57, 124.9)])
    assert r.assessments[0].response == "PR"


def test_s4_afp_alone_gives_pr_and_records_basis() -> None:
    r = run(BASE + scan(57, 19), [afp(-3, 100), afp(57, 50)])
    assert r.assessments[0].response == "PR" and r.assessments[0].basis == "afp"
    r = run(BASE + scan(57, 19), [afp(-3, 100), afp(57, 50.1)])
    assert r.assessments[0].response == "SD"


def test_s4_afp_only_date_establishes_pd_but_never_pr() -> None:
    r = run(BASE, [afp(-3, 100), afp(30, 125)])
    assert [(a.response, a.afp_only) for a in r.assessments] == [("PD", True)]
    assert r.best == "PD"
    r = run(BASE, [afp(-3, 100), afp(30, 20)])
    assert r.assessments == () and r.best == "NE" and r.best_reason == "no_post_baseline_assessment"


def test_s4_afp_window_configurable() -> None:
    tumour = BASE + scan(57, 19)
    assert run(tumour, [afp(-3, 100), afp(71, 90)], window=14).assessments[0].response == "SD"
    # 15 days away: not this assessment's AFP, so the assessment is NE (afp_missing) ...
    r = run(tumour, [afp(-3, 100), afp(72, 90)], window=14)
    assert r.assessments[0].response == "NE" and "afp_missing" in r.assessments[0].reasons
    assert run(tumour, [afp(-3, 100), afp(72, 90)], window=15).assessments[0].response == "SD"


def test_s4_cr_needs_no_tumour_and_afp_at_most_uln() -> None:
    zero = [lesion(day(57), "L1", 0, 0), lesion(day(57), "L2", 0, 0)]
    assert run(BASE + zero, [afp(-3, 100), afp(57, 10)]).assessments[0].response == "CR"
    assert run(BASE + zero, [afp(-3, 100), afp(57, 10.1)]).assessments[0].response == "PR"


def test_s4_baseline_afp_at_or_below_uln_turns_afp_criteria_off() -> None:
    r = run(BASE + scan(57, 19), [afp(-3, 10), afp(57, 50)])  # AFP x5 but not evaluable
    assert r.baseline.afp_evaluable is False
    assert r.assessments[0].response == "SD"
    assert run(BASE + scan(57, 19), [afp(-3, 10.5), afp(57, 50)]).assessments[0].response == "PD"


def test_s4_confirmation_needs_28_days() -> None:
    base_afp = [afp(-3, 100), afp(57, 100), afp(84, 100), afp(85, 100)]
    confirmed = run(BASE + scan(57, 5) + scan(85, 5), base_afp)  # 28 days later
    assert confirmed.assessments[0].confirmed is True and confirmed.best == "PR"
    unconfirmed = run(BASE + scan(57, 5) + scan(84, 5), base_afp)  # 27 days later
    assert unconfirmed.assessments[0].confirmed is False
    assert unconfirmed.best == "SD" and "unconfirmed" in unconfirmed.best_reason


def zero_scan(n: int) -> list[Observed]:
    return [lesion(day(n), "L1", 0, 0), lesion(day(n), "L2", 0, 0)]


@pytest.mark.parametrize(("second", "best"), [(85, "CR"), (84, "SD")])
def test_s4_cr_confirmed_by_a_second_cr_28_days_later(second: int, best: str) -> None:
    r = run(BASE + zero_scan(57) + zero_scan(second), [afp(-3, 100), afp(57, 5), afp(second, 5)])
    assert [a.response for a in r.assessments] == ["CR", "CR"]
    assert r.best == best


def test_s4_any_reappearance_after_cr_is_pd() -> None:
    r = run(BASE + zero_scan(57) + scan(113, 1, 1, (0, 0)), [afp(-3, 100), afp(57, 5), afp(113, 5)])
    assert [a.response for a in r.assessments] == ["CR", "PD"]
    assert r.assessments[0].confirmed is False


@pytest.mark.parametrize(("study_day", "best"), [(50, "SD"), (49, "NE")])
def test_s4_sd_counts_from_49_days_after_index(study_day: int, best: str) -> None:
    # Study day 50 is 49 days after the index date.
    r = run(BASE + scan(study_day, 19), [afp(-3, 100), afp(study_day, 100)])
    assert r.assessments[0].response == "SD" and r.best == best


def test_s4_best_response_stops_at_first_pd() -> None:
    r = run(
        BASE + scan(20, 30) + scan(57, 5) + scan(113, 5),
        [afp(-3, 100), afp(20, 100), afp(57, 100), afp(113, 100)],
    )
    assert r.assessments[0].response == "PD"
    assert r.best == "PD"


def test_s4_missing_lesion_is_ne_unless_partial_data_already_show_pd() -> None:
    only_l1 = [lesion(day(57), "L1", 20, 10)]
    r = run(BASE + only_l1, [afp(-3, 100), afp(57, 100)])
    assert r.assessments[0].response == "NE" and "missing_measurements" in r.assessments[0].reasons
    big_l1 = [lesion(day(57), "L1", 40, 10)]  # 400 alone >= 1.25 x 300
    assert run(BASE + big_l1, [afp(-3, 100), afp(57, 100)]).assessments[0].response == "PD"


def test_s4_no_baseline_is_ne() -> None:
    r = run(scan(57, 10), [afp(57, 100)])
    assert r.best == "NE" and r.best_reason == "no_baseline_tumour_assessment"
    # results.json's baseline then holds these three keys, null, and no others
    assert to_builtins(r.baseline) == {"date": None, "spd_mm2": None, "afp": None}


def test_s4_baseline_window_28_days_before_index() -> None:
    early = [lesion(day(-28), "L1", 20, 10)]
    assert run([*early, lesion(day(57), "L1", 20, 10)], [afp(-28, 100), afp(57, 100)]).baseline.date
    too_early = [lesion(day(-29), "L1", 20, 10)]
    assert run(too_early, [afp(-29, 100)]).best_reason == "no_baseline_tumour_assessment"


def test_s4_duration_of_response_from_first_response_to_pd() -> None:
    r = run(
        BASE + scan(57, 5) + scan(113, 5) + scan(169, 20),
        [afp(-3, 100), afp(57, 100), afp(113, 100), afp(169, 100)],
    )
    assert r.duration == ResponseDuration(date.fromisoformat(day(57)), date.fromisoformat(day(169)), 113, False)


@given(
    spd0=st.integers(1, 10_000),
    shrink_a=st.integers(0, 10_000),
    shrink_b=st.integers(0, 10_000),
    afp_k=st.integers(1, 1000),
)
def test_s4_property_more_shrinkage_never_gives_a_worse_category(
    spd0: int, shrink_a: int, shrink_b: int, afp_k: int
) -> None:
    """With everything else fixed, a smaller SPD never ranks below a larger one (PD < SD < PR < CR)."""
    small, large = sorted((max(spd0 - shrink_a, 0), max(spd0 - shrink_b, 0)))

    def category(spd: int) -> str:
        return classify_assessment(
            spd_k=Decimal(spd),
            partial_spd=Decimal(spd),
            new_lesion=False,
            spd0=Decimal(spd0),
            spd_nadir=Decimal(spd0),
            afp_k=Decimal(afp_k),
            afp0=Decimal(500),
            afp_nadir=Decimal(500),
            afp_evaluable=True,
            afp_uln=Decimal(10),
        )[0]

    assert RANK[category(small)] >= RANK[category(large)]


@given(spd0=st.integers(1, 5000), spd_k=st.integers(0, 10_000))
def test_s4_property_tumour_category_matches_exact_arithmetic(spd0: int, spd_k: int) -> None:
    """Without AFP the category is decided by 4*x >= 5*nadir and 2*x <= baseline, nothing else."""
    result = classify_assessment(
        spd_k=Decimal(spd_k),
        partial_spd=Decimal(spd_k),
        new_lesion=False,
        spd0=Decimal(spd0),
        spd_nadir=Decimal(spd0),
        afp_k=None,
        afp0=None,
        afp_nadir=None,
        afp_evaluable=False,
        afp_uln=None,
    )[0]
    expected = "PD" if 4 * spd_k >= 5 * spd0 else "CR" if spd_k == 0 else "PR" if 2 * spd_k <= spd0 else "SD"
    assert result == expected


def test_s4_a_response_after_the_first_pd_has_no_duration() -> None:
    """PD at the first scan, then a confirmed PR months later: no duration of response (first response to
    first PD; what comes after the first PD does not count)."""
    r = run(
        BASE + scan(57, 30) + scan(113, 5) + scan(169, 5),
        [afp(-3, 100), afp(57, 100), afp(113, 100), afp(169, 100)],
    )
    assert [a.response for a in r.assessments] == ["PD", "PR", "PR"]
    assert r.best == "PD" and r.duration is None


def test_s4_a_response_before_the_first_pd_ends_at_it() -> None:
    r = run(
        BASE + scan(57, 5) + scan(113, 5) + scan(169, 30) + scan(225, 5) + scan(281, 5),
        [afp(-3, 100), *(afp(n, 100) for n in (57, 113, 169, 225, 281))],
    )
    assert r.duration == ResponseDuration(date.fromisoformat(day(57)), date.fromisoformat(day(169)), 113, False)


@pytest.mark.parametrize(("afp_day", "dated", "afp_only"), [(57, 57, False), (71, 57, False), (72, 72, True)])
def test_s4_a_pd_its_afp_establishes_is_dated_at_the_scan(afp_day: int, dated: int, afp_only: bool) -> None:
    """§4: an assessment is dated at its scan, also when its AFP (within ± 14 days) makes it PD; only an AFP
    matched to no assessment is dated at its own sample. Day 71 is 14 days after the scan (matched), 72 is 15."""
    tumour = BASE + scan(57, 19)  # SPD 290 of 300: the tumour alone is SD
    r = run(tumour, [afp(-3, 100), afp(afp_day, 125)])
    pd = [a for a in r.assessments if a.response == "PD"]
    assert [(a.date, a.afp_only, a.basis) for a in pd] == [(date.fromisoformat(day(dated)), afp_only, "afp")]
    assert r.best == "PD"
