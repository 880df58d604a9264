"""Sample-quality metrics over feature vectors: FID, KID, precision/recall.

numpy only (no MindSpore, no scipy), all arithmetic in float64. Every function takes
features of shape (N, D), one row per image, from any feature network (see
``ddpm_ms.eval.feature_net`` for Fashion-MNIST).

* FID  -- Heusel et al. 2017, "GANs trained by a two time-scale update rule ...":
  Frechet distance between Gaussians fitted to the two feature sets.
* KID  -- Binkowski et al. 2018, "Demystifying MMD GANs": unbiased MMD^2 with the cubic
  polynomial kernel, averaged over random subsets.
* precision / recall -- Kynkaanniemi et al. 2019, "Improved precision and recall metric for
  assessing generative models": k-NN balls around each sample approximate a manifold.
* density / coverage -- Naeem et al. 2020: the same balls, counted so that one real outlier
  with a huge ball cannot make bad samples look precise.
"""
import numpy as np

__all__ = ["feature_stats", "frechet_distance", "fid_from_features", "kid", "mmd2_unbiased",
           "pairwise_sq_dists", "knn_radii", "manifold_coverage", "precision_recall",
           "density_coverage"]


def _as_2d(f, name):
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} contains NaN or inf")
    return f


def _psd_sqrt(s):
    """Symmetric PSD square root of a symmetric matrix via eigh; tiny negative
    eigenvalues (rounding) are clipped to 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def feature_stats(f):
    """Mean (D,) and covariance (D, D) of features f (N, D), covariance with 1/(N-1)."""
    f = _as_2d(f, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

        FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

    tr sqrt(S1 S2) is computed as tr sqrt(A) with A = sqrt(S1) S2 sqrt(S1): A is similar
    to S1 S2 (same eigenvalues) but symmetric PSD, so ``eigh`` gives real non-negative
    eigenvalues even for singular covariances, and tr sqrt(A) = sum sqrt(eig(A)).
    Shapes: mu (D,), sigma (D, D). Returns a float >= 0 (clipped at 0 against rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {s2.shape}")
    root1 = _psd_sqrt(s1)
    a = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((a + a.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))


def fid_from_features(f1, f2):
    """FID between feature sets f1 (N1, D) and f2 (N2, D): Frechet distance of their
    Gaussian fits (sample mean, sample covariance)."""
    mu1, s1 = feature_stats(f1)
    mu2, s2 = feature_stats(f2)
    return frechet_distance(mu1, s1, mu2, s2)


def _poly_kernel(x, y):
    """Cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 for rows of x (m, d), y (n, d)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y):
    """Unbiased MMD^2 estimate (Gretton et al. 2012, eq. 3) with the cubic kernel.

        MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (n (n-1))
                  - 2 sum_{i,j} k(x_i, y_j) / (m n)

    x (m, d), y (n, d), m, n >= 2. Can be negative when the distributions are equal.
    """
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(f1, f2, subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance: mean and std of ``mmd2_unbiased`` over ``subsets``
    random subsets of ``min(subset_size, N1, N2)`` rows drawn without replacement from
    each of f1 (N1, D) and f2 (N2, D). Returns (kid_mean, kid_std) as floats."""
    f1, f2 = _as_2d(f1, "f1"), _as_2d(f2, "f2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dims differ: {f1.shape[1]} vs {f2.shape[1]}")
    size = min(int(subset_size), f1.shape[0], f2.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {f1.shape[0]} and {f2.shape[0]}")
    rng = np.random.default_rng(seed)
    vals = np.array([mmd2_unbiased(f1[rng.choice(f1.shape[0], size, replace=False)],
                                   f2[rng.choice(f2.shape[0], size, replace=False)])
                     for _ in range(int(subsets))])
    return float(vals.mean()), float(vals.std())


def pairwise_sq_dists(a, b):
    """Squared Euclidean distances (len(a), len(b)) between rows of a and b, clipped at 0.
    Uses |a|^2 + |b|^2 - 2 a.b; callers chunk ``a`` to bound memory."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def knn_radii(f, k=3, chunk=1000):
    """Distance from each row of f (N, D) to its k-th nearest other row (N,).

    Self-distances are excluded by taking the (k+1)-th smallest distance of each row (the
    smallest is the row itself at 0); exact duplicates count as neighbours at distance 0.
    """
    f = _as_2d(f, "features")
    n = f.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} samples, got {k}")
    radii = np.empty(n)
    for i in range(0, n, chunk):
        d2 = pairwise_sq_dists(f[i:i + chunk], f)
        radii[i:i + chunk] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
    return radii


def _ball_membership(centers, radii, queries, chunk=1000):
    """For balls B(centers_i, radii_i) (M balls in D dims) and queries (Q, D): how many
    balls hold each query (Q,) int, and whether each ball holds any query (M,) bool.
    A point on a ball's boundary counts as inside."""
    r2 = np.asarray(radii, np.float64) ** 2
    counts = np.zeros(queries.shape[0], dtype=np.int64)
    hit = np.zeros(centers.shape[0], dtype=bool)
    for i in range(0, queries.shape[0], chunk):
        inside = pairwise_sq_dists(queries[i:i + chunk], centers) <= r2[None, :]
        counts[i:i + chunk] = inside.sum(1)
        hit |= inside.any(0)
    return counts, hit


def manifold_coverage(manifold, radii, queries, chunk=1000):
    """Fraction of ``queries`` (Q, D) inside the union of balls B(manifold_i, radii_i),
    ``manifold`` (M, D), ``radii`` (M,)."""
    counts, _ = _ball_membership(manifold, radii, queries, chunk)
    return float((counts > 0).mean())


def precision_recall(real, fake, k=3, chunk=1000):
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-3).

    The real manifold is the union of balls around each real feature with radius its
    distance to the k-th nearest other real feature; likewise for fake.
      precision = fraction of fake features inside the real manifold,
      recall    = fraction of real features inside the fake manifold.
    real (N, D), fake (M, D); distances are computed ``chunk`` rows at a time, so memory is
    O(chunk * max(N, M)). Returns (precision, recall) in [0, 1].
    """
    real, fake = _as_2d(real, "real"), _as_2d(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    precision = manifold_coverage(real, knn_radii(real, k, chunk), fake, chunk)
    recall = manifold_coverage(fake, knn_radii(fake, k, chunk), real, chunk)
    return precision, recall


def density_coverage(real, fake, k=3, chunk=1000):
    """Density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics
    for generative models", eqs. 5-6), robust to real outliers whose large k-NN ball can
    swallow a whole cluster of bad samples and push precision to 1.

      density  = 1/(k M) sum_j #{i : fake_j in B(real_i, r_i)}      (about 1 when fake ~ real)
      coverage = 1/N #{i : some fake_j in B(real_i, r_i)}           (in [0, 1])

    r_i is real_i's distance to its k-th nearest other real feature. real (N, D), fake (M, D).
    """
    real, fake = _as_2d(real, "real"), _as_2d(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    counts, hit = _ball_membership(real, knn_radii(real, k, chunk), fake, chunk)
    return float(counts.sum() / (k * fake.shape[0])), float(hit.mean())
