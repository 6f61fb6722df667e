"""docs/protocol.md §6 statistics: Clopper-Pearson and Kaplan-Meier, checked against independent arithmetic."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhiradapter.core.stats import clopper_pearson, kaplan_meier, rate


def binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(("x", "n"), [(1, 8), (5, 8), (0, 8), (8, 8), (3, 20)])
def test_s6_clopper_pearson_bounds_solve_the_exact_binomial_tails(x: int, n: int) -> None:
    low, high = clopper_pearson(x, n)
    # The exact interval's bounds are where each binomial tail equals alpha/2 (independent check).
    if x > 0:
        assert 1 - binom_cdf(x - 1, n, low) == pytest.approx(0.025, abs=1e-9)
    else:
        assert low == 0.0
    if x < n:
        assert binom_cdf(x, n, high) == pytest.approx(0.025, abs=1e-9)
    else:
        assert high == 1.0


def test_s6_orr_one_of_eight_matches_protocol_figure() -> None:
    r = rate(1, 8)
    assert r.rate == 0.125 and r.ci_low is not None and r.ci_high is not None
    assert (round(100 * r.ci_low, 1), round(100 * r.ci_high, 1)) == (0.3, 52.7)


def test_s6_clopper_pearson_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="count"):
        clopper_pearson(3, 2)


def product_limit(durations: list[int], events: list[bool]) -> list[tuple[float, float]]:
    """Textbook Kaplan-Meier, written independently of lifelines."""
    s, out = 1.0, []
    for t in sorted(set(durations)):
        at_risk = sum(1 for d in durations if d >= t)
        died = sum(1 for d, e in zip(durations, events, strict=True) if d == t and e)
        s *= 1 - died / at_risk
        out.append((float(t), s))
    return out


def test_s6_kaplan_meier_matches_product_limit_and_median() -> None:
    durations = [46, 75, 120, 180, 250, 395, 410, 422]
    events = [True, True, False, True, False, True, True, False]
    curve = kaplan_meier(durations, events)
    by_t = {row.t: row.survival for row in curve.table}
    for t, s in product_limit(durations, events):
        assert by_t[t] == pytest.approx(s)
    expected_median = next(t for t, s in product_limit(durations, events) if s <= 0.5)
    assert curve.median == expected_median


def test_s6_median_not_reached_is_none() -> None:
    curve = kaplan_meier([10, 20, 30, 40], [True, False, False, False])
    assert curve.median is None


def test_s6_kaplan_meier_rejects_negative_durations() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        kaplan_meier([-1, 2], [True, True])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.booleans()), min_size=1, max_size=30))
def test_s6_property_survival_in_unit_interval_and_non_increasing(data: list[tuple[int, bool]]) -> None:
    curve = kaplan_meier([d for d, _ in data], [e for _, e in data])
    values = [row.survival for row in curve.table]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))
    if curve.median is not None:
        assert any(row.t == curve.median and row.survival <= 0.5 for row in curve.table)
