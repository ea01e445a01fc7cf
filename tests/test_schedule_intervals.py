"""Intervals of the schedule-consistent fit (docs/schedule.md, "Intervals"):
the bisquare fit's covariance at the modelled step noise, against numerical
integration, the empirical scatter of a simulated linear problem and of a
few simulated traces."""

import warnings

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

from sklearn_beta import ScheduleBetaRegressor
from sklearn_beta.datasets import simulate_trace
from sklearn_beta.engine_config._schedule_solve import (
    stack_rows,
    schedule_covariance,
)
from sklearn_beta.engine_config._schedule_design import DifferenceDesign
from sklearn_beta.trust._step_noise import (
    bisquare_covariance,
    bisquare_expectations,
    noise_sigma,
    truncated_moments,
)

BETA = np.array([6e-3, 3e-5, 1.2e-4])
ENGINE = dict(chunk_size=256, token_budget=512, max_num_seqs=64)
TUKEY_C = 4.685


def test_truncated_moments_by_hand():
    # no truncation: the normal's even moments (2k - 1)!!
    np.testing.assert_allclose(
        truncated_moments(np.array([0.0]), 3)[:, 0], [1, 1, 3, 15], rtol=1e-12
    )
    # sd 1: P(|z| < 1) and, by parts, E[z^2; |z| < 1] = P(|z| < 1) - 2 phi(1)
    inside = 2 * norm.cdf(1.0) - 1
    got = truncated_moments(np.array([1.0]), 1)[:, 0]
    np.testing.assert_allclose(got, [inside, inside - 2 * norm.pdf(1.0)], rtol=1e-12)


def test_truncated_moments_continuous_where_the_formula_switches():
    # the recursion up to sd = 1, the incomplete gamma above
    below, above = truncated_moments(np.array([1 - 1e-9, 1 + 1e-9]), 5).T
    np.testing.assert_allclose(below, above, rtol=1e-7)


@pytest.mark.parametrize("sd", [0.05, 0.3, 1.0, 2.5])
def test_bisquare_expectations_against_quadrature(sd):
    def density(u):
        return norm.pdf(u / sd) / sd

    slope = quad(lambda u: (1 - u * u) * (1 - 5 * u * u) * density(u), -1, 1)[0]
    square = quad(lambda u: (u / sd) ** 2 * (1 - u * u) ** 4 * density(u), -1, 1)[0]
    got = bisquare_expectations(np.array([sd]))
    np.testing.assert_allclose([got[0][0], got[1][0]], [slope, square], rtol=1e-7)


def _bisquare_fit(X, y, prior, cutoff):
    """Least squares, then bisquare reweightings at a fixed cutoff."""
    theta = np.linalg.lstsq(X * np.sqrt(prior)[:, None], y * np.sqrt(prior))[0]
    for _ in range(8):
        u = (y - X @ theta) * np.sqrt(prior) / cutoff
        w = prior * np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        root = np.sqrt(w)
        theta = np.linalg.lstsq(X * root[:, None], y * root)[0]
    return theta


def test_bisquare_covariance_matches_empirical_scatter():
    # Rows of known heteroscedastic variance sigma^2 v, weighted with a
    # floor as the schedule fit does, and a cutoff tight enough that the
    # bisquare downweights a third of the rows: the covariance at the
    # modelled noise against the scatter of 1500 simulated fits.
    rng = np.random.default_rng(0)
    n, sigma = 300, 0.02
    X = np.column_stack((np.ones(n), rng.uniform(0, 10, n), rng.uniform(0, 3, n)))
    v = rng.uniform(0.2, 3.0, n)
    prior = 1.0 / (v + 1.0)
    cutoff = TUKEY_C * 0.0075
    truth = np.array([1.0, 0.5, -0.2])
    fits = np.array(
        [
            _bisquare_fit(
                X,
                X @ truth + sigma * np.sqrt(v) * rng.standard_normal(n),
                prior,
                cutoff,
            )
            for _ in range(1500)
        ]
    )
    empirical = np.cov(fits.T)
    modelled = bisquare_covariance(X, prior, v, sigma, cutoff)
    # 1500 fits: the variances' sampling error is about 4 %
    np.testing.assert_allclose(
        np.diag(modelled), np.diag(empirical), rtol=0.12
    )  # 0.93-1.01
    # the plain weighted least-squares covariance is narrower than the scatter
    plain = np.linalg.inv((X * prior[:, None]).T @ X)
    plain = plain @ ((X * (prior**2 * sigma**2 * v)[:, None]).T @ X) @ plain
    assert np.all(np.diag(plain) < 0.8 * np.diag(empirical))  # 0.64-0.70


def test_noise_sigma_from_residuals():
    rng = np.random.default_rng(1)
    v = rng.uniform(0.1, 5.0, 20000)
    residual = 0.03 * np.sqrt(v) * rng.standard_normal(v.shape[0])
    # rows without step noise (offsets only) do not count
    v[:5000], residual[:5000] = 0.0, 0.0
    assert noise_sigma(residual, v) == pytest.approx(0.03, rel=0.03)
    assert noise_sigma(residual[:5000], v[:5000]) == 0.0


def test_pooled_rows_count_each_event_once():
    # A pooled fit stacks two fits' rows of one trace; stacking one fit's
    # rows on themselves leaves the estimate, and must leave its covariance.
    rng = np.random.default_rng(2)
    n = 400
    design = np.column_stack(
        (
            rng.integers(1, 9, n),
            rng.integers(0, 900, n),
            rng.integers(0, 300, n),
            np.zeros(n),
            rng.integers(-1, 2, n),
            rng.integers(-1, 2, n),
        )
    ).astype(float)
    theta = np.r_[BETA, 0.0, 0.01, 0.01]
    variance = (design[:, :3] @ BETA) ** 2
    target = design @ theta + 0.02 * np.sqrt(variance) * rng.standard_normal(n)
    prior = 1.0 / (variance + np.mean(variance))
    rows = DifferenceDesign(design, target, prior, prior, variance)
    free = np.array([True, True, True, False, True, True])
    single = schedule_covariance(rows, theta, free)
    pooled = schedule_covariance(stack_rows(rows, rows), theta, free)
    np.testing.assert_allclose(pooled, single, rtol=1e-9)
    assert np.all(single[3] == 0) and np.all(np.diag(single)[free] > 0)


def test_schedule_intervals_cover_over_seeds():
    # The empirical scatter over a handful of small saturated traces with
    # 2 % step noise: the errors over the standard errors the intervals
    # imply. Measured: root mean square 1.20, largest 2.51; the HC3
    # sandwich on the same fits gave 1.62 and 3.37.
    z = []
    for seed in range(6):
        phases = simulate_trace(
            500,
            beta=BETA,
            arrival_rate=40.0,
            prompt_tokens=(300, 0.5),
            output_tokens=(100, 0.5),
            noise=0.02,
            view="client",
            random_state=seed,
            **ENGINE,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ScheduleBetaRegressor(**ENGINE).fit(phases)
        se = (model.beta_ci_[:, 1] - model.beta_) / norm.ppf(0.975)
        z.append((model.beta_ - BETA) / se)
    z = np.array(z)
    assert np.all(np.abs(z) < 3.0), z
    assert 0.6 < np.sqrt(np.mean(z**2)) < 1.4, z


@pytest.fixture(scope="module")
def small_noisy():
    return simulate_trace(
        300,
        beta=BETA,
        arrival_rate=40.0,
        prompt_tokens=(300, 0.5),
        output_tokens=(100, 0.5),
        noise=0.02,
        view="client",
        random_state=3,
        **ENGINE,
    )


def test_confidence_level_sets_the_width(small_noisy):
    widths = {}
    for level in (0.5, 0.99):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ScheduleBetaRegressor(**ENGINE, confidence_level=level)
            model.fit(small_noisy)
        widths[level] = model.beta_ci_[:, 1] - model.beta_
    # the same fit, normal quantiles: the half-widths scale by z(0.995) / z(0.75)
    ratio = norm.ppf(0.995) / norm.ppf(0.75)
    np.testing.assert_allclose(widths[0.99] / widths[0.5], ratio, rtol=1e-9)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, "0.9"])
def test_bad_confidence_level_raises(small_noisy, level):
    model = ScheduleBetaRegressor(**ENGINE, confidence_level=level)
    with pytest.raises(ValueError, match="confidence_level"):
        model.fit(small_noisy)
