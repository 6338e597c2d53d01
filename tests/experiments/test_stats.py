"""experiments._stats: Student's t against printed tables and closed forms, the paired
t-interval by hand, Holm's procedure on a worked example, verdicts, n < 2, bad input."""

import math

import pytest

from experiments import _stats

# t(0.975, df) as printed in the usual three-decimal tables: a computed quantile rounds to
# these, i.e. lies within half a unit of the last digit (5e-4).
TABLE_3 = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 19: 2.093, 30: 2.042, 100: 1.984,
           math.inf: 1.960}
# The same to seven decimals (scipy.stats.t.ppf, read once when this test was written;
# scipy is no dependency): within 1e-6, twenty times the rounding of the seventh decimal.
TABLE_7 = {1: 12.7062047, 2: 4.3026527, 5: 2.5705818, 10: 2.2281389, 19: 2.0930241,
           30: 2.0422725, 100: 1.9839715, math.inf: 1.9599640}


@pytest.mark.parametrize("df", list(TABLE_3))
def test_t_quantile_matches_the_tables(df):
    t = _stats.t_quantile(0.975, df)
    assert abs(t - TABLE_3[df]) <= 5e-4
    assert abs(t - TABLE_7[df]) <= 1e-6
    assert _stats.t_quantile(0.025, df) == pytest.approx(-t, rel=1e-12)


@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.9995])
def test_t_quantile_and_p_against_closed_forms(q):
    # df = 1 is the Cauchy distribution, df = 2 has a closed form too.
    assert _stats.t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-9)
    assert _stats.t_quantile(q, 2) == pytest.approx(
        (2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-9)
    for t in (0.0, 0.3, 1.0, 4.0, 50.0):
        assert _stats.t_two_sided_p(t, 1) == pytest.approx(
            1 - 2 / math.pi * math.atan(t), rel=1e-9, abs=1e-15)
        assert _stats.t_two_sided_p(-t, 2) == pytest.approx(
            1 - t / math.sqrt(2 + t * t), rel=1e-9, abs=1e-15)
    # The quantile and the p-value are each other's inverse.
    for df in (3, 17.5, 60):
        assert _stats.t_two_sided_p(_stats.t_quantile(q, df), df) == pytest.approx(
            2 * (1 - q), rel=1e-9)


def test_paired_interval_and_p_by_hand():
    # [1, 2, 3]: mean 2, s = 1, n = 3, t(0.975, 2) = 4.3026527 -> 2 ± 4.3026527 / sqrt(3)
    # = 2 ± 2.4841377; t = 2 / (1 / sqrt 3) = 3.4641016 at df 2: p = 1 - t / sqrt(2 + t^2).
    out = _stats.paired([1.0, 2.0, 3.0])
    assert out["mean"] == pytest.approx(2.0) and out["n"] == 3 and out["positive"] == 3
    assert out["ci95"] == pytest.approx([2 - 2.4841377, 2 + 2.4841377], abs=1e-6)
    t = 2 * math.sqrt(3)
    assert out["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    # [-1, 0, 2, 3]: mean 1, s^2 = (4 + 1 + 1 + 4) / 3, t(0.975, 3) = 3.1824463; 0 is
    # not positive.
    out = _stats.paired([-1.0, 0.0, 2.0, 3.0])
    half = 3.1824463 * math.sqrt(10 / 3) / 2
    assert out["ci95"] == pytest.approx([1 - half, 1 + half], abs=1e-6)
    assert (out["n"], out["positive"]) == (4, 2)


def test_equal_differences_and_too_few():
    assert _stats.paired([2.0, 2.0, 2.0]) == {"mean": 2.0, "ci95": [2.0, 2.0], "n": 3,
                                              "positive": 3, "p_value": 0.0}
    assert _stats.paired([0.0, 0.0])["p_value"] == 1.0
    one = _stats.paired([1.5])
    assert one == {"mean": 1.5, "ci95": None, "n": 1, "positive": 1, "p_value": None}
    assert _stats.paired([]) == {"mean": None, "ci95": None, "n": 0, "positive": 0,
                                 "p_value": None}
    assert _stats.verdict(one["ci95"]) == "undecided"
    assert _stats.verdict(_stats.paired([])["ci95"], side=-1) == "undecided"


def test_holm_worked_example():
    # Sorted: 0.005 <= 0.05/4 = 0.0125 and 0.01 <= 0.05/3: rejected; 0.03 > 0.05/2 stops,
    # so 0.04 is not rejected either (although 0.04 <= 0.05/1).
    assert _stats.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # Step-down stops at the first failure: 0.02 > 0.05/3 rejects none.
    assert _stats.holm([0.02, 0.02, 0.04]) == [False, False, False]
    assert _stats.holm([0.001, 0.024, 0.03]) == [True, True, True]
    # An untestable comparison counts in the family and is never rejected.
    assert _stats.holm([0.02]) == [True]
    assert _stats.holm([0.02, None]) == [True, False]
    assert _stats.holm([0.02, None, None]) == [False, False, False]
    assert _stats.holm([]) == []
    assert _stats.holm([0.01, 0.04], alpha=0.1) == [True, True]


def test_verdicts():
    assert _stats.verdict([0.3, 3.8]) == "holds"
    assert _stats.verdict([-3.0, -0.1]) == "fails"
    assert _stats.verdict([-0.7, 5.5]) == "undecided"
    assert _stats.verdict([0.0, 3.0]) == "undecided"  # touching 0 does not exclude it
    assert _stats.verdict([-3.0, -0.1], side=-1) == "holds"
    assert _stats.verdict([0.3, 3.8], side=-1) == "fails"
    assert _stats.verdict(_stats.paired([1.0, 2.0, 3.0, 2.0])["ci95"]) == "holds"


@pytest.mark.parametrize("call,name", [
    (lambda: _stats.paired([1.0, math.nan]), "diffs"),
    (lambda: _stats.paired([math.inf, 1.0]), "diffs"),
    (lambda: _stats.holm([0.01, math.nan]), "p_values"),
    (lambda: _stats.holm([0.01, 1.5]), "p_values"),
    (lambda: _stats.holm([0.01], alpha=0.0), "alpha"),
    (lambda: _stats.verdict([math.nan, 1.0]), "ci95"),
    (lambda: _stats.verdict([2.0, 1.0]), "ci95"),
    (lambda: _stats.verdict([1.0, 2.0], side=0), "side"),
    (lambda: _stats.t_quantile(0.975, 0), "df"),
    (lambda: _stats.t_quantile(1.0, 3), "q"),
    (lambda: _stats.t_two_sided_p(math.nan, 3), "t"),
])
def test_bad_input_is_refused_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()
