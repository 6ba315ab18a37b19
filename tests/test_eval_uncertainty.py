"""Bootstrap intervals and FID-infinity on Gaussian features whose population FID is known exactly."""
import numpy as np
import pytest
import torch

from fewstep.eval import distances as D
from fewstep.eval import uncertainty as U


def gaussian(dim, seed, scale=0.3):
    """A random Gaussian (mean, covariance, Cholesky factor) in float64."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim)) / dim ** 0.5
    cov = torch.tensor(a @ a.T + 0.5 * np.eye(dim))
    return torch.tensor(rng.normal(size=dim) * scale), cov, torch.linalg.cholesky(cov)


def draw(mean, chol, n, seed):
    g = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, mean.shape[0], generator=g, dtype=torch.float64) @ chol.T


def standard_reference(dim):
    """The reference is N(0, I) with exact population moments, so only the generated side is sampled."""
    return D.FrechetReference.from_moments(torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64))


def test_resamples_are_reproducible_and_counts_sum_to_n():
    a, b = U.draw_resamples(50, 20, seed=3), U.draw_resamples(50, 20, seed=3)
    assert np.array_equal(a.indices, b.indices) and a.indices.shape == (20, 50)
    assert not np.array_equal(a.indices, U.draw_resamples(50, 20, seed=4).indices)
    assert np.all(a.counts().sum(1) == 50) and a.indices.max() < 50


def test_fid_bootstrap_interval_covers_the_known_fid_about_95_percent():
    dim, n, reps = 4, 400, 100
    mean, cov, chol = gaussian(dim, 0)
    ref = standard_reference(dim)
    true = D.frechet_distance(mean, cov, ref)
    boot = U.draw_resamples(n, 200, seed=0)
    hits, wrong_hits = [], []
    for r in range(reps):
        x = draw(mean, chol, n, r)
        est = U.interval(D.fid(x, ref), D.fid_replicates(x, ref, boot))
        hits.append(est.lo <= true <= est.hi)
        wrong_hits.append(est.lo <= 1.5 * true <= est.hi)
    assert 0.88 <= np.mean(hits) <= 1.0, np.mean(hits)
    assert np.mean(wrong_hits) < 0.2  # the interval is narrow enough to reject a value 50 % off


def test_mean_interval_and_paired_difference_cover_known_values():
    n, reps = 300, 200
    boot = U.draw_resamples(n, 200, seed=1)
    cover_mean, cover_diff, zero_in_diff, paired_narrower = [], [], [], []
    for r in range(reps):
        rng = np.random.default_rng(r)
        shared = rng.normal(size=n)  # what a prompt/seed does to both rows alike
        a = shared + rng.normal(size=n) * 0.3
        b = shared + 0.1 + rng.normal(size=n) * 0.3  # b is better by exactly 0.1
        ea = U.interval(a.mean(), U.mean_replicates(a, boot))
        d = U.paired_difference(b.mean(), U.mean_replicates(b, boot), a.mean(), U.mean_replicates(a, boot))
        cover_mean.append(ea.lo <= 0 <= ea.hi)
        cover_diff.append(d.lo <= 0.1 <= d.hi)
        zero_in_diff.append(not d.excludes(0.0))
        paired_narrower.append(d.half_width < ea.half_width)
    assert 0.9 <= np.mean(cover_mean) <= 0.99 and 0.9 <= np.mean(cover_diff) <= 0.99
    # Pairing removes the shared variance: the difference is resolved although each mean's interval
    # is much wider than 0.1.
    assert np.mean(zero_in_diff) < 0.05 and all(paired_narrower)


def test_interval_is_recentred_on_the_value():
    est = U.interval(10.0, np.array([14.0, 15.0, 16.0, 15.0, 15.0]))  # replicates biased upwards by 5
    assert est.lo < 10.0 < est.hi and est.hi - est.lo < 2.1
    nan = U.interval(1.0, np.array([np.nan, 2.0]))
    assert np.isnan(nan.lo) and np.isnan(nan.hi)


def test_fid_matches_scipy_on_random_moments():
    from tests.oracles import frechet_distance_scipy

    mean, cov, _ = gaussian(12, 5)
    ref_mean, ref_cov, _ = gaussian(12, 6)
    ref = D.FrechetReference.from_moments(ref_mean, ref_cov)
    expect = frechet_distance_scipy(mean.numpy(), cov.numpy(), ref_mean.numpy(), ref_cov.numpy())
    assert D.frechet_distance(mean, cov, ref) == pytest.approx(expect, rel=1e-9)


def test_extrapolation_recovers_the_intercept_of_a_plus_b_over_n():
    sizes = [200, 400, 600, 800, 1000]
    a, b = D.extrapolate_to_infinity(sizes, [3.0 + 250.0 / s for s in sizes])
    assert a == pytest.approx(3.0) and b == pytest.approx(250.0)


def test_fid_infinity_recovers_the_population_fid():
    dim, n, reps = 32, 1000, 30
    mean, cov, chol = gaussian(dim, 2, scale=0.2)
    ref = standard_reference(dim)
    true = D.frechet_distance(mean, cov, ref)
    at_n, inf = [], []
    for r in range(reps):
        x = draw(mean, chol, n, 100 + r)
        at_n.append(D.fid(x, ref))
        inf.append(D.fid_infinity(x, ref, seed=r)["value"])
    bias_n, bias_inf = np.mean(at_n) - true, np.mean(inf) - true
    assert bias_n > 0.2  # FID at n images is biased upwards (the small-sample bias)
    assert abs(bias_inf) < 0.3 * bias_n and abs(bias_inf) < 4 * np.std(inf) / np.sqrt(reps), (true, bias_n, bias_inf)
