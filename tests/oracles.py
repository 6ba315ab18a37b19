"""Independent implementations the tests check fewstep's metrics against (never used by fewstep itself)."""
import numpy as np


def frechet_distance_scipy(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """FID from means and covariances with ``scipy.linalg.sqrtm`` (pytorch-fid's formulation).

    Independent of eval.distances (which uses eigenvalues of S_r^1/2 S_g S_r^1/2). Follows
    pytorch-fid: if the product is near-singular, offset both diagonals by 1e-6; drop a negligible
    imaginary part from sqrtm.
    """
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    covmean = linalg.sqrtm(cov1 @ cov2)  # ReLU features with dead units make S1 S2 singular: warns, still accurate
    if not np.isfinite(covmean).all():
        off = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def precision_recall_brute_force(generated: np.ndarray, real: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaenniemi et al. 2019 by explicit loops over every pair (tiny inputs only)."""
    def radii(x):
        return np.array([sorted(np.linalg.norm(x - p, axis=1))[k] for p in x])  # index 0 is the point itself

    def inside(queries, support, r):
        return np.array([any(np.linalg.norm(q - s) <= rs for s, rs in zip(support, r)) for q in queries])

    return float(inside(generated, real, radii(real)).mean()), float(inside(real, generated, radii(generated)).mean())
