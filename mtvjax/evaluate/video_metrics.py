"""Video-quality metrics: PSNR, SSIM and the Fréchet distance behind FID / FVD / FID-VID.

Two groups of small pure functions:

* Per-image fidelity of generated vs ground-truth frames shaped `[..., H, W, C]` (any leading
  axes), written in `jax.numpy` and jit-able: `psnr` and `ssim` (Wang et al. 2004: 11 × 11
  Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, "valid" filtering as in the reference MATLAB
  `ssim_index`, SSIM map averaged per channel, then over channels). Images are floats in
  `[0, data_range]`; `to_unit` turns uint8 frames into floats in [0, 1].
* Distribution distances between feature sets, in numpy float64 (JAX defaults to float32, too
  coarse for 2048-dimensional covariances): `feature_stats` (mean, covariance),
  `sqrtm_psd` (symmetric PSD square root by eigendecomposition), `trace_sqrtm_product`
  (`Tr sqrt(Σ1 Σ2)` computed stably as `Tr sqrt(Σ1^½ Σ2 Σ1^½)`, a symmetric PSD matrix) and
  `frechet_distance`.

`Tr sqrt(Σ1 Σ2)` equals the sum of the square roots of the eigenvalues of `Σ1 Σ2`, which are the
eigenvalues of the symmetric PSD `Σ1^½ Σ2 Σ1^½` (AB and BA share their non-zero eigenvalues).
Symmetrising before `eigh` and clipping round-off negatives to 0 keeps the result real and
finite for singular or near-singular covariances (fewer samples than feature dimensions), where
`scipy.linalg.sqrtm(Σ1 @ Σ2)` can return complex values or fail to converge.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "to_unit",
    "psnr",
    "gaussian_window",
    "ssim_map",
    "ssim",
    "feature_stats",
    "sqrtm_psd",
    "trace_sqrtm_product",
    "frechet_distance",
    "frechet_distance_from_features",
]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def to_unit(images) -> jnp.ndarray:
    """uint8 images as float32 in [0, 1]; floating images as at least float32, unchanged."""
    x = jnp.asarray(images)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _float(x) -> jnp.ndarray:
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


# ---------------------------------------------------------------------------------------------
# PSNR and SSIM
# ---------------------------------------------------------------------------------------------


def psnr(pred, target, data_range: float = 1.0) -> jnp.ndarray:
    """Peak signal-to-noise ratio per image, in dB.

    Args:
      pred, target: images `[..., H, W, C]`, same shape, values in `[0, data_range]`.
      data_range: the peak value (1 for floats in [0, 1], 255 for 0–255 values).

    Returns:
      `[...]`: `10 log10(data_range² / MSE)` with the MSE over each image's pixels and channels;
      `inf` where the images are identical.
    """
    diff = _float(pred) - _float(target)
    mse = jnp.mean(diff * diff, axis=(-3, -2, -1))
    return 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian `[size]` centred on the middle tap (the 2-D window is its outer
    product with itself)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x: jnp.ndarray, window: np.ndarray) -> jnp.ndarray:
    """Separable 'valid' filtering of `[..., H, W, C]` over H and W with the 1-D `window`
    (two depthwise convolutions; every channel of every image separately)."""
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    k = len(window)
    y = jnp.moveaxis(x.reshape((-1, h, w, c)), -1, 1).reshape((-1, h, w, 1))
    dn = ("NHWC", "HWIO", "NHWC")
    taps = jnp.asarray(window, x.dtype)
    y = jax.lax.conv_general_dilated(y, taps.reshape(k, 1, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=jax.lax.Precision.HIGHEST)
    y = jax.lax.conv_general_dilated(y, taps.reshape(1, k, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=jax.lax.Precision.HIGHEST)
    y = jnp.moveaxis(y.reshape((-1, c) + y.shape[1:3]), 1, -1)
    return y.reshape(lead + y.shape[1:])


def ssim_map(pred, target, data_range: float = 1.0, window_size: int = SSIM_WINDOW,
             sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> jnp.ndarray:
    """The local SSIM map `[..., H - window_size + 1, W - window_size + 1, C]`.

    Local means, variances and covariance are Gaussian-weighted over each window position
    fully inside the image; `C1 = (k1 · data_range)²`, `C2 = (k2 · data_range)²`.
    """
    x, y = _float(pred), _float(target)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ: {x.shape} vs {y.shape}")
    if x.ndim < 3 or min(x.shape[-3], x.shape[-2]) < window_size:
        raise ValueError(f"ssim: images [..., H, W, C] of at least {window_size} x {window_size} "
                         f"pixels needed, got shape {x.shape}")
    win = gaussian_window(window_size, sigma)
    # Second moments from inputs centred on the target's mean per image and channel (the local
    # (co)variances do not change): E[x²] - E[x]² then cancels far less in float32.
    centre = jnp.mean(y, axis=(-3, -2), keepdims=True)
    xc, yc = x - centre, y - centre
    mu_xc, mu_yc = _filter_valid(xc, win), _filter_valid(yc, win)
    var_x = _filter_valid(xc * xc, win) - mu_xc * mu_xc
    var_y = _filter_valid(yc * yc, win) - mu_yc * mu_yc
    cov = _filter_valid(xc * yc, win) - mu_xc * mu_yc
    mu_x, mu_y = mu_xc + centre, mu_yc + centre
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


def ssim(pred, target, data_range: float = 1.0, window_size: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> jnp.ndarray:
    """Structural similarity per image: the mean of `ssim_map` over positions and channels.

    Args:
      pred, target: images `[..., H, W, C]` (H, W ≥ window_size), values in `[0, data_range]`.

    Returns:
      `[...]`; 1 for identical images.
    """
    return jnp.mean(ssim_map(pred, target, data_range, window_size, sigma, k1, k2),
                    axis=(-3, -2, -1))


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and unbiased covariance `[D, D]` (float64) of `[N, D]` features, N ≥ 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"feature_stats: expected [N, D] features, got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"feature_stats: a covariance needs at least 2 samples, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("feature_stats: features contain NaN or Inf")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _symmetric(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def sqrtm_psd(a) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix (float64).

    `a` is symmetrised, diagonalised with `eigh`, its eigenvalues clipped at 0 (round-off makes
    tiny negatives for singular matrices), and `V diag(sqrt λ) Vᵀ` returned — symmetric PSD,
    real, with `sqrtm_psd(a) @ sqrtm_psd(a) ≈ a`.
    """
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"sqrtm_psd: expected a square matrix, got shape {a.shape}")
    lam, v = np.linalg.eigh(_symmetric(a))
    return _symmetric((v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T)


def trace_sqrtm_product(sigma1, sigma2) -> float:
    """`Tr sqrt(Σ1 Σ2)` for symmetric PSD `Σ1`, `Σ2`: the sum of `sqrt(λ)` over the (clipped)
    eigenvalues of the symmetric PSD `Σ1^½ Σ2 Σ1^½`."""
    s1 = sqrtm_psd(sigma1)
    m = _symmetric(s1 @ np.asarray(sigma2, np.float64) @ s1)
    lam = np.linalg.eigvalsh(m)
    return float(np.sum(np.sqrt(np.clip(lam, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2):

    `||mu1 - mu2||² + Tr(Σ1) + Tr(Σ2) - 2 Tr sqrt(Σ1 Σ2)`, clipped at 0 (round-off can make an
    exact 0 slightly negative).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: shapes mu {mu1.shape}/{mu2.shape}, "
                         f"sigma {sigma1.shape}/{sigma2.shape} do not match")
    diff = mu1 - mu2
    value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
             - 2.0 * trace_sqrtm_product(sigma1, sigma2))
    return float(max(value, 0.0))


def frechet_distance_from_features(features1, features2) -> float:
    """`frechet_distance` of the `feature_stats` of two `[N, D]` feature sets."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))
