"""Conformal risk control of the per-pixel intervals: Risk-Controlling Prediction Sets (RCPS; Bates,
Angelopoulos, Lei, Malik & Jordan, "Distribution-Free, Risk-Controlling Prediction Sets", JACM 2021)
as Angelopoulos et al. apply them to image-to-image regression ("Image-to-Image Regression with
Distribution-Free Uncertainty Quantification and Applications in Imaging", ICML 2022; code
aangelopoulos/im2im-uq).

Each pixel's heuristic interval is the head's central 90 % interval `[l, u]` scaled about its
midpoint by one λ >= 0, `m -/+ λ (u - l) / 2` (`Head.conformal_interval`). The loss of an image is the
fraction of its pixels outside their intervals, in [0, 1] and non-increasing in λ. On `n` held-out
images, λ̂ is the smallest λ of the grid such that, for every λ' >= λ, the Hoeffding-Bentkus test
rejects "the expected loss at λ' exceeds α" at level δ (`hb_p_value` < δ). Then, if held-out and new
images are exchangeable, with probability at least 1 - δ over the held-out set, the expected
fraction of a new image's pixels outside their intervals is at most α (Bates et al., Theorem 2.2 with
the bound of their Proposition 3.5). Pixels are those users feed: raw images in [0, 1], not
dequantised ones.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from tfp_ae.config import DEFAULT_DELTA, DEFAULT_RISK, check_risk
from tfp_ae.errors import InputError
from tfp_ae.heads import INTERVAL_LEVEL
from tfp_ae.predict import map_batches

if TYPE_CHECKING:
    from tfp_ae.models import ProbabilisticModel

LAMBDA_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 3001)])  # the λ searched, ascending
CONFORMAL_SPLITS = 100  # conformal_report: random calibration/test splits of the test images
BATCH_IMAGES = 100


def hb_p_value(risk: float | np.ndarray, n: int, alpha: float) -> float | np.ndarray:
    """The Hoeffding-Bentkus p-value of the null "the expected loss exceeds `alpha`" given the mean
    `risk` of `n` losses in [0, 1] (Bates et al., JACM 2021, Proposition 3.5):
    `min(exp(-n h1(min(risk, alpha), alpha)), e P(Binomial(n, alpha) <= ceil(n risk)))` with
    `h1(a, b) = a log(a / b) + (1 - a) log((1 - a) / (1 - b))`. Any shape of `risk`."""
    r = np.asarray(risk, np.float64)
    a = np.clip(np.minimum(r, alpha), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = np.where(a > 0, a * np.log(a / alpha), 0.0) + (1 - a) * np.log((1 - a) / (1 - alpha))
    hoeffding = np.exp(-n * h1)
    bentkus = math.e * stats.binom.cdf(np.ceil(n * r - 1e-9), n, alpha)
    p = np.minimum(np.minimum(hoeffding, bentkus), 1.0)
    return float(p) if p.ndim == 0 else p


def min_calibration_images(alpha: float, delta: float) -> int:
    """The fewest held-out images with which RCPS can certify any λ at (`alpha`, `delta`): the smallest
    n whose p-value for a loss of 0 is below `delta` (22 at α = δ = 0.1)."""
    check_risk(alpha, delta)
    n = 1
    while hb_p_value(0.0, n, alpha) >= delta:
        n += 1
    return n


def rcps_lambda(losses: np.ndarray, alpha: float, delta: float, lambdas: np.ndarray = LAMBDA_GRID) -> float:
    """RCPS's λ̂ from held-out losses `[n, G]` (image i's loss at `lambdas[g]`, non-increasing in g):
    the smallest λ of `lambdas` from which every larger λ has `hb_p_value(mean loss, n, alpha) < delta`
    (scanned from the largest down).

    Raises:
      InputError: fewer images than `min_calibration_images`; or no λ of the grid controls the risk
        (pixels outside their intervals at every λ: intervals of zero width that miss).
    """
    losses = np.asarray(losses, np.float64)
    n = len(losses)
    need = min_calibration_images(alpha, delta)
    if n < need:
        raise InputError(f"conformal risk control at --risk {alpha:g} --delta {delta:g} needs at least {need} "
                         f"held-out images; got {n} (raise --validation-split or train on more images)")
    rejected = hb_p_value(losses.mean(axis=0), n, alpha) < delta
    if not rejected[-1]:
        raise InputError(f"no λ up to {lambdas[-1]:g} keeps the held-out risk below {alpha:g} with confidence "
                         f"{1 - delta:g}: {losses[:, -1].mean():.3g} of the pixels lie outside even the widest "
                         "intervals (intervals of zero width)")
    first = len(rejected) - np.argmin(rejected[::-1]) if not rejected.all() else 0
    return float(lambdas[first])


def _interval_parts(model, x):
    """Midpoints `m`, half-widths `h` of the 90 % intervals and the pixels `x`, float64 `[B, D]`."""
    lo, hi = map_batches(model, x, "interval")
    lo, hi = lo.reshape(len(x), -1).astype(np.float64), hi.reshape(len(x), -1).astype(np.float64)
    half = (hi - lo) / 2
    mid = np.where(np.isfinite(half), lo + half, 0.0)
    return mid, half, np.asarray(x, np.float64).reshape(len(x), -1)


def interval_losses(model: ProbabilisticModel, x: np.ndarray, lambdas: np.ndarray = LAMBDA_GRID) -> np.ndarray:
    """The fraction of each image's pixels outside `m -/+ λ h` for every λ of `lambdas`, `[N, G]`:
    a pixel is outside when `|x - m| / h > λ` (never where the interval is infinite; always where it
    has zero width and misses). Images `x` `[N, H, W, C]` in [0, 1], `BATCH_IMAGES` at a time."""
    out = []
    for start in range(0, len(x), BATCH_IMAGES):
        mid, half, pix = _interval_parts(model, x[start:start + BATCH_IMAGES])
        dev = np.abs(pix - mid)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(half > 0, dev / half, np.where(dev > 0, np.inf, 0.0))
        ratio = np.sort(np.nan_to_num(ratio, nan=np.inf), axis=1)
        inside = np.stack([np.searchsorted(r, lambdas, side="right") for r in ratio])
        out.append(1.0 - inside / ratio.shape[1])
    return np.concatenate(out)


def interval_widths(model: ProbabilisticModel, x: np.ndarray, lambdas: list[float]) -> np.ndarray:
    """Each image's mean interval width within the pixel range, `clip(m + λ h, 0, 1) - clip(m - λ h, 0, 1)`
    averaged over its pixels, for each λ of `lambdas`: `[N, len(lambdas)]`, pixels in [0, 1]."""
    out = []
    for start in range(0, len(x), BATCH_IMAGES):
        mid, half, _ = _interval_parts(model, x[start:start + BATCH_IMAGES])
        out.append(np.stack([np.mean(np.clip(mid + lam * half, 0, 1) - np.clip(mid - lam * half, 0, 1), axis=1)
                             for lam in lambdas], axis=1))
    return np.concatenate(out)


def fit_conformal(model: ProbabilisticModel, x: np.ndarray, alpha: float = DEFAULT_RISK,
                  delta: float = DEFAULT_DELTA) -> float:
    """Fit the head's `conformal_lambda` by RCPS (`rcps_lambda`) on held-out images `x` `[n, H, W, C]` in
    [0, 1] (raw pixels, as users feed them), starting from λ = 1, and assign it; returns λ̂.

    Raises:
      InputError: a head without intervals (`mse`), bad `alpha` / `delta`, too few images, or no λ
        that controls the risk (see `rcps_lambda`).
    """
    check_risk(alpha, delta)
    if not hasattr(model.head, "conformal_lambda"):
        raise InputError(f"head {model.head.head_name!r} has no intervals for conformal risk control (--risk)")
    model.head.conformal_lambda.assign(1.0)
    model.head.conformal_lambda.assign(rcps_lambda(interval_losses(model, x), alpha, delta))
    return float(model.head.conformal_lambda.numpy())  # as stored (float32)


def conformal_report(model: ProbabilisticModel, x: np.ndarray, alpha: float, delta: float,
                     splits: int = CONFORMAL_SPLITS, seed: int = 0) -> dict:
    """How the fitted λ (the head's `conformal_lambda`) does on test images `x` `[N, H, W, C]` (raw):

    - `lambda`, `alpha`, `delta`, `base_level` (0.9: λ scales the central 90 % interval), `test_images`;
    - `risk`: the mean fraction of a test image's pixels outside their intervals (<= α with
      probability >= 1 - δ); `mean_width`: the mean interval width within [0, 1] (pixels);
    - `risk_by_width`: per quartile of the images' mean width, `{"width": [lo, hi], "risk", "images"}`
      (Angelopoulos et al., 2022, Figure 4: is the risk held where intervals are narrow?);
    - `oracle_lambda`: the smallest λ whose risk on these test images is <= α (chosen on the test set
      itself: not available in practice), its `oracle_mean_width` and `width_over_oracle`;
    - `splits_over_alpha`: over `splits` random halvings of the test images (seeded), RCPS fitted on
      one half, the fraction of splits whose risk on the other half exceeds α (at most about δ).
    """
    lam = float(model.head.conformal_lambda.numpy())
    losses = interval_losses(model, x, np.append(LAMBDA_GRID, lam))  # one pass: the grid's and the fitted λ's
    losses, risk = losses[:, :-1], losses[:, -1]
    mean_loss = losses.mean(axis=0)
    ok = np.flatnonzero(mean_loss <= alpha)
    oracle = float(LAMBDA_GRID[ok[0]]) if len(ok) else float("nan")
    widths = interval_widths(model, x, [lam] + ([oracle] if np.isfinite(oracle) else []))
    width = widths[:, 0]
    edges = np.quantile(width, [0, 0.25, 0.5, 0.75, 1])
    groups = np.array_split(np.argsort(width, kind="stable"), 4)
    by_width = [dict(width=[float(width[g].min()), float(width[g].max())], risk=float(risk[g].mean()), images=len(g))
                for g in groups if len(g)]
    rng = np.random.default_rng(seed)
    over, half = 0, len(x) // 2
    for _ in range(splits):
        order = rng.permutation(len(x))
        try:
            lam_split = rcps_lambda(losses[order[:half]], alpha, delta)
        except InputError:
            lam_split = LAMBDA_GRID[-1]
        g = min(np.searchsorted(LAMBDA_GRID, lam_split), len(LAMBDA_GRID) - 1)
        over += losses[order[half:], g].mean() > alpha
    oracle_width = float(widths[:, 1].mean()) if widths.shape[1] > 1 else None
    return dict(alpha=alpha, delta=delta, base_level=INTERVAL_LEVEL, inputs="raw", test_images=int(len(x)),
                risk=float(risk.mean()), mean_width=float(width.mean()), width_quartile_edges=[float(e) for e in edges],
                risk_by_width=by_width, oracle_lambda=oracle, oracle_mean_width=oracle_width,
                width_over_oracle=float(width.mean() / oracle_width) if oracle_width else None,
                splits=splits, splits_over_alpha=over / splits, **{"lambda": lam})
