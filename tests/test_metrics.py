"""FID / KID / precision-recall against closed forms and brute-force references (numpy only)."""
import itertools

import numpy as np
import pytest

from ddpm_ms.eval import metrics


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


# --------------------------------------------------------------------------- Frechet distance

def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_commuting_nondiagonal():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T share eigenvectors: tr sqrt(S1 S2) = sum sqrt(a b).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.01, 4, 6), rng.uniform(0.01, 4, 6)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    want = np.sum((mu1 - mu2) ** 2) + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)


def test_frechet_noncommuting_2x2():
    # For 2x2, S1 S2 has eigenvalues l1, l2 >= 0 and tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    want = 1.0 ** 2 + 2.0 ** 2 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    got = metrics.frechet_distance([0.0, 0.0], s1, [1.0, -2.0], s2)
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_symmetric_and_zero_for_same_gaussian():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        metrics.frechet_distance(mu2, s2, mu1, s1), rel=1e-8)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_set_against_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(3)
    for n, d in [(500, 16), (20, 64)]:   # second case: N < D, rank-deficient covariance
        f = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, d)
        assert metrics.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    g = rng.normal(size=(20, 64)) + 1.0
    assert np.isfinite(metrics.fid_from_features(f, g)) and metrics.fid_from_features(f, g) > 1.0


def test_fid_from_features_matches_population_for_large_samples():
    rng = np.random.default_rng(4)
    f1 = rng.normal(size=(20000, 3))
    f2 = rng.normal(size=(20000, 3)) * 2.0 + np.array([1.0, 0.0, 0.0])
    want = 1.0 + 3 * (1 + 4 - 2 * 2)   # diagonal closed form: |dmu|^2 + sum(s1 + s2 - 2 sqrt(s1 s2))
    assert metrics.fid_from_features(f1, f2) == pytest.approx(want, rel=0.05)


# --------------------------------------------------------------------------- KID

def _mmd2_brute(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_mmd2_unbiased_matches_brute_force():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(7, 4)) + 0.3
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(_mmd2_brute(x, y), rel=1e-10)
    # kid with one subset covering both (equal-size) sets is the same number
    mean, std = metrics.kid(x, y[:6], subsets=1, subset_size=100)
    assert mean == pytest.approx(_mmd2_brute(x, y[:6]), rel=1e-10) and std == 0.0


def test_mmd2_estimator_is_unbiased():
    # Same distribution: the unbiased estimate averages to ~0, the biased V-statistic
    # (diagonal terms kept) stays clearly positive.
    rng = np.random.default_rng(6)
    unbiased, biased = [], []
    for _ in range(3000):
        x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
        unbiased.append(metrics.mmd2_unbiased(x, y))
        kxx, kyy, kxy = ((a @ b.T / 3 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    sem = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 4 * sem
    assert np.mean(biased) > 20 * sem


def test_kid_identical_vs_shifted():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same_mean, same_std = metrics.kid(a, b, subsets=20, subset_size=200)
    shift_mean, _ = metrics.kid(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same_mean) < 0.01 and same_std >= 0
    assert shift_mean > 0.1 and shift_mean > 20 * abs(same_mean)


def test_kid_is_seeded():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(100, 4)), rng.normal(size=(100, 4))
    assert metrics.kid(a, b, 5, 30, seed=1) == metrics.kid(a, b, 5, 30, seed=1)
    assert metrics.kid(a, b, 5, 30, seed=1) != metrics.kid(a, b, 5, 30, seed=2)


# --------------------------------------------------------------------------- precision / recall

def test_knn_radii_1d():
    f = np.array([[0.0], [1.0], [3.0]])
    np.testing.assert_allclose(metrics.knn_radii(f, k=1), [1, 1, 2])
    np.testing.assert_allclose(metrics.knn_radii(f, k=2), [3, 2, 3])
    with pytest.raises(ValueError):
        metrics.knn_radii(f, k=3)


def test_precision_recall_1d_hand_case():
    # real {0, 1, 3}, k=1: radii {1, 1, 2} -> real manifold [-1, 5].
    # fake {-3, -2.9, 2.5, 2.6, 20}, k=1: radii {.1, .1, .1, .1, 17.4} -> balls
    # [-3.1, -2.8], [2.4, 2.7], [2.6, 37.4].
    # precision: fake inside [-1, 5] = {2.5, 2.6} -> 2/5; recall: real inside = {3} -> 1/3.
    real = np.array([[0.0], [1.0], [3.0]])
    fake = np.array([[-3.0], [-2.9], [2.5], [2.6], [20.0]])
    p, r = metrics.precision_recall(real, fake, k=1)
    assert p == pytest.approx(2 / 5) and r == pytest.approx(1 / 3)


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(300, 8))
    assert metrics.precision_recall(a, a.copy(), k=3) == (1.0, 1.0)
    far = rng.normal(size=(300, 8)) + 100.0
    assert metrics.precision_recall(a, far, k=3) == (0.0, 0.0)


def test_precision_recall_chunking_does_not_change_result():
    rng = np.random.default_rng(10)
    real, fake = rng.normal(size=(203, 5)), rng.normal(size=(157, 5)) * 1.3 + 0.4
    full = metrics.precision_recall(real, fake, k=3, chunk=10000)
    assert metrics.precision_recall(real, fake, k=3, chunk=7) == full
    assert 0 < full[0] < 1 and 0 < full[1] < 1


def test_density_coverage_1d_hand_case():
    # Same sets as above. Balls: [-1, 1], [0, 2], [1, 5]. Fake 2.5 and 2.6 each lie in one
    # ball -> density = 2 / (k * 5) = 0.4; only real 3's ball holds a fake -> coverage 1/3.
    real = np.array([[0.0], [1.0], [3.0]])
    fake = np.array([[-3.0], [-2.9], [2.5], [2.6], [20.0]])
    d, c = metrics.density_coverage(real, fake, k=1)
    assert d == pytest.approx(0.4) and c == pytest.approx(1 / 3)


def test_density_coverage_sees_through_an_outlier():
    # A tight fake cluster inside one real outlier's huge ball: precision 1, coverage tiny.
    rng = np.random.default_rng(11)
    real = np.concatenate([rng.normal(size=(200, 2)), [[50.0, 0.0]]])   # outlier radius ~50
    fake = rng.normal(size=(100, 2)) * 0.1 + np.array([30.0, 0.0])
    assert metrics.precision_recall(real, fake, k=3)[0] == 1.0
    d, c = metrics.density_coverage(real, fake, k=3)
    assert c == pytest.approx(1 / 201) and d == pytest.approx(1 / 3)
    same_d, same_c = metrics.density_coverage(real[:200], real[:200].copy(), k=3)
    assert same_c == 1.0 and same_d >= 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        metrics.fid_from_features(np.zeros((10, 3)), np.full((10, 3), np.nan))
    with pytest.raises(ValueError):
        metrics.kid(np.zeros((10, 3)), np.zeros((10, 4)))
