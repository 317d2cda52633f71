"""Similarity of two maps, as the sanity checks compare them (Adebayo et al., NeurIPS 2018, §3).

* :func:`spearman`: Spearman rank correlation of the two maps' values (ties get their average rank, as
  ``scipy.stats.spearmanr``); invariant to any increasing rescaling, so min-max scaling does not change it.
* :func:`ssim`: the structural similarity index (Wang et al., IEEE TIP 2004) exactly as scikit-image's
  ``structural_similarity`` computes it (uniform 7-wide window, ``K1 = 0.01``, ``K2 = 0.03``, sample
  covariances, the mean over the positions whose window lies inside the map), on 2-D image maps or 1-D
  text maps; ``data_range`` is the joint range of the two maps (as Quantus passes it). Maps smaller than
  7 use the largest odd window that fits.

Both return NaN where they are undefined: a constant map (Spearman), two constant maps with no joint range
or a map shorter than 3 (SSIM). Callers count such samples and leave them out of means.
"""

from __future__ import annotations

import warnings

import numpy as np

K1, K2, WINDOW = 0.01, 0.03, 7


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (any equal shapes, flattened); NaN if either is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: maps of different sizes {a.shape} and {b.shape}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """scikit-image's SSIM of two 1-D or 2-D maps of the same shape (see the module docstring).

    Args:
        a, b: ``[H, W]`` or ``[N]`` float arrays.
        data_range: the value range (default: ``max(a ∪ b) − min(a ∪ b)``).
    """
    from scipy.ndimage import uniform_filter

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ValueError(f"ssim: needs two 1-D or 2-D maps of one shape; got {a.shape} and {b.shape}")
    side = min(a.shape)
    win = min(WINDOW, side if side % 2 else side - 1)
    if data_range is None:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    if win < 3 or data_range <= 0:
        return float("nan")
    n_points = win**a.ndim
    cov_norm = n_points / (n_points - 1)
    ux, uy = uniform_filter(a, size=win), uniform_filter(b, size=win)
    uxx, uyy, uxy = uniform_filter(a * a, size=win), uniform_filter(b * b, size=win), uniform_filter(a * b, size=win)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    inner = s[tuple(slice(pad, dim - pad) for dim in s.shape)]
    return float(inner.mean())
