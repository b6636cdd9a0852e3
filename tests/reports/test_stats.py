from __future__ import annotations

import math

import pytest

from mmlo.reports.stats import regularized_beta, student_t_cdf, student_t_quantile, t95


# t_{0.975, df} matches the printed table (Fisher & Yates, 9 significant digits) for the seed counts a study uses.
@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (2, 12.7062047),
        (3, 4.30265273),
        (4, 3.18244631),
        (5, 2.77644511),
        (6, 2.57058184),
        (11, 2.22813885),
        (31, 2.04227246),
    ],
)
def test_t95_matches_table(k: int, expected: float) -> None:
    assert t95(k) == pytest.approx(expected, abs=5e-8)


# One seed has no spread: the interval over seeds is undefined, not zero.
def test_t95_needs_two_seeds() -> None:
    assert t95(1) is None


# df = 1 is the Cauchy distribution, whose quantile is tan(pi (p - 1/2)); df = 2 has F^-1(p) = (2p-1)/sqrt(2p(1-p)).
def test_quantile_closed_forms() -> None:
    for p in (0.6, 0.9, 0.975, 0.999):
        assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)


# The quantile inverts the CDF, is antisymmetric, and tends to the normal 1.959964 for large df.
def test_quantile_inverts_cdf() -> None:
    for df in (1, 3, 7.5, 40):
        for p in (0.01, 0.3, 0.5, 0.8, 0.99):
            assert student_t_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    assert student_t_quantile(0.025, 4) == pytest.approx(-student_t_quantile(0.975, 4))
    assert student_t_quantile(0.975, 10**7) == pytest.approx(1.959964, abs=1e-6)


# I_x(1, 1) = x and I_x(a, 1) = x^a: the incomplete beta's simplest closed forms.
def test_regularized_beta_closed_forms() -> None:
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert regularized_beta(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert regularized_beta(3.5, 1, x) == pytest.approx(x**3.5, abs=1e-13)


# Bad arguments are refused instead of returning nonsense.
def test_quantile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        student_t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        student_t_quantile(0.5, 0)
