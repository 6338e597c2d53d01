"""Intervals and tests for paired gains, with numpy and the standard library only.

A paired gain is a list of per-seed differences (method A minus method B on the same
seed). :func:`paired` gives its mean, the 95 % paired t-interval ``ci95``, ``n``, how many
differences are positive and the two-sided p-value of the paired t-test; :func:`holm`
decides a family of such p-values by Holm's step-down procedure; :func:`verdict` reads an
interval against a claimed sign. Student's t distribution comes from the regularized
incomplete beta function (a continued fraction), its quantile from bisection on it:
exact to about 1e-10, no table, no scipy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

LEVEL = 0.95  # the level of ``ci95``
ALPHA = 0.05  # Holm's family-wise error rate


def _finite(name: str, values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} must be finite numbers; {name}[{bad[0]}] is {out[bad[0]]}")
    return out


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function I_x(a, b), evaluated by
    the modified Lentz method (Press et al., Numerical Recipes, section 6.4, "Incomplete
    Beta Function", its continued fraction and routine betacf)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"the incomplete beta fraction did not converge (a={a}, b={b})")


def _beta_inc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _check_df(df: float) -> float:
    df = float(df)
    if not df > 0:  # nan too
        raise ValueError(f"df must be positive (or inf), got {df}")
    return df


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (``inf``: normal)."""
    df, t = _check_df(df), abs(float(t))
    if math.isnan(t):
        raise ValueError("t must be a number, got nan")
    if math.isinf(df):
        return math.erfc(t / math.sqrt(2.0))
    if math.isinf(t):
        return 0.0
    return _beta_inc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``inf``: normal),
    by bisection on :func:`t_two_sided_p` to a relative 1e-12."""
    q, df = float(q), _check_df(df)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie strictly between 0 and 1, got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(q)
    target = 2.0 * (1.0 - q)  # the two-sided tail beyond the quantile
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > target:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_two_sided_p(mid, df) > target else (low, mid)
    return 0.5 * (low + high)


def paired(diffs: Sequence[float]) -> dict[str, Any]:
    """The paired t-interval and test of per-seed differences ``diffs``.

    Returns ``mean``, ``ci95`` (``[low, high]``: ``mean ± t(0.975, n-1) s / sqrt(n)``,
    ``s`` the sample standard deviation), ``n``, ``positive`` (how many differences are
    > 0) and ``p_value`` (two-sided, H0: mean difference 0). With n < 2 there is no
    interval and no test: ``ci95`` and ``p_value`` are None (and ``mean`` too at n = 0).
    Differences all equal give the interval [mean, mean] and p = 0 (1 when they are 0).
    A non-finite difference raises ValueError.
    """
    values = _finite("diffs", diffs)
    n = len(values)
    out: dict[str, Any] = {"mean": float(np.mean(values)) if n else None, "ci95": None,
                           "n": n, "positive": sum(v > 0 for v in values), "p_value": None}
    if n < 2:
        return out
    mean, sem = out["mean"], float(np.std(values, ddof=1)) / math.sqrt(n)
    half = t_quantile(0.5 + LEVEL / 2.0, n - 1) * sem
    out["ci95"] = [mean - half, mean + half]
    out["p_value"] = (t_two_sided_p(mean / sem, n - 1) if sem > 0
                      else float(mean == 0.0))
    return out


def holm(p_values: Sequence[float | None], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down procedure: which of a family's hypotheses are rejected at
    family-wise error rate ``alpha`` (in the order given).

    The p-values sorted, the k-th smallest (k from 0) is rejected while it is at most
    ``alpha / (m - k)``; the first that is not stops it, and none after it is rejected.
    A None (a comparison with too few seeds to test) counts in the family's size ``m``
    and is never rejected.
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    given = [1.0 if p is None else p for p in p_values]
    ps = _finite("p_values", given)
    if any(not 0.0 <= p <= 1.0 for p in ps):
        raise ValueError(f"p_values must lie in [0, 1], got {ps}")
    m, rejected = len(ps), [False] * len(ps)
    for k, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        if ps[i] > alpha / (m - k):  # a None (1.0 here) never passes: alpha < 1
            break
        rejected[i] = True
    return rejected


def verdict(ci95: Sequence[float] | None, side: int = 1) -> str:
    """A claim read from its interval: ``"holds"`` when ``ci95`` excludes 0 on the claimed
    side (``side`` +1: a gain, -1: a loss), ``"fails"`` when it excludes 0 on the other
    side, ``"undecided"`` when it contains 0 or there is none (n < 2: None)."""
    if side not in (1, -1):
        raise ValueError(f"side must be +1 (a claimed gain) or -1 (a loss), got {side}")
    if ci95 is None:
        return "undecided"
    bounds = _finite("ci95", ci95)
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise ValueError(f"ci95 must be [low, high] with low <= high, got {list(ci95)}")
    low, high = bounds if side == 1 else (-bounds[1], -bounds[0])
    return "holds" if low > 0 else "fails" if high < 0 else "undecided"
