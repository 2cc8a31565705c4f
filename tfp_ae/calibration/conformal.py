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

Two refinements give λ more than one value, each certified on data its choices never saw: a λ per
group of pixel positions (K-RCPS, `krcps_lambdas`, `--risk-groups`: shorter intervals where the
spread is wrong by position) and a λ per stratum of images by their mean interval width
(`stratified_lambdas`, `--risk-strata`: the risk held within each stratum, confident images included).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from tfp_ae.config import DEFAULT_DELTA, DEFAULT_RISK, check_groups, check_risk
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


def interval_parts(model: ProbabilisticModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(mid, half, ratio)`, each float64 `[N, D]`, of the head's central 90 % intervals `[l, u]` on images
    `x` `[N, H, W, C]` in [0, 1] (`BATCH_IMAGES` at a time): midpoint `m = (l + u) / 2` (0 where infinite),
    half-width `h = (u - l) / 2` and `ratio = |x - m| / h`, the smallest λ whose interval `m -/+ λ h`
    holds the pixel (0 where `h = 0` and the pixel is hit, inf where `h = 0` and it is missed, 0 where
    the interval is infinite). A pixel is outside `m -/+ λ h` exactly when `ratio > λ`."""
    mids, halves, ratios = [], [], []
    for start in range(0, len(x), BATCH_IMAGES):
        batch = x[start:start + BATCH_IMAGES]
        lo, hi = map_batches(model, batch, "interval")
        lo, hi = lo.reshape(len(batch), -1).astype(np.float64), hi.reshape(len(batch), -1).astype(np.float64)
        half = (hi - lo) / 2
        finite = np.isfinite(half)
        mid = np.where(finite, lo + half, 0.0)
        dev = np.abs(np.asarray(batch, np.float64).reshape(len(batch), -1) - mid)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(half > 0, dev / half, np.where(dev > 0, np.inf, 0.0))
        ratio = np.where(finite, np.nan_to_num(ratio, nan=np.inf), 0.0)
        mids.append(mid), halves.append(half), ratios.append(ratio)
    return np.concatenate(mids), np.concatenate(halves), np.concatenate(ratios)


def grid_losses(ratio: np.ndarray, lambdas: np.ndarray = LAMBDA_GRID) -> np.ndarray:
    """The fraction of each image's pixels outside `m -/+ λ h` for every λ of `lambdas` (ascending), from
    `interval_parts`'s `ratio` `[N, D]`: `[N, G]`, non-increasing along G."""
    if len(ratio) == 0:
        return np.zeros((0, len(lambdas)))
    ordered = np.sort(ratio, axis=1)
    inside = np.stack([np.searchsorted(r, lambdas, side="right") for r in ordered])
    return 1.0 - inside / ratio.shape[1]


def interval_losses(model: ProbabilisticModel, x: np.ndarray, lambdas: np.ndarray = LAMBDA_GRID) -> np.ndarray:
    """The fraction of each image's pixels outside `m -/+ λ h` for every λ of `lambdas`, `[N, G]`:
    a pixel is outside when `|x - m| / h > λ` (never where the interval is infinite; always where it
    has zero width and misses). Images `x` `[N, H, W, C]` in [0, 1]."""
    return grid_losses(interval_parts(model, x)[2], lambdas)


def pixel_groups(ratio: np.ndarray, groups: int) -> np.ndarray:
    """K-RCPS's membership (Teneggi et al., ICML 2023, "How to Trust Your Diffusion Model: A Convex
    Optimization Approach to Conformal Risk Control", Section 4, the quantiles of the 0-1 loss): each
    pixel position's fraction of images it falls outside its 90 % interval (`ratio > 1`), cut at its
    `groups`-quantiles. Returns each pixel's group `[D]` in `0 .. K' - 1`, `K' <= groups` (tied
    quantiles merge groups: e.g. every border pixel of MNIST is always inside)."""
    miss = (ratio > 1).mean(axis=0)
    edges = np.unique(np.quantile(miss, np.arange(1, groups) / groups))
    return np.unique(np.searchsorted(edges, miss, side="left"), return_inverse=True)[1]  # numbered 0 .. K' - 1


def _group_direction(ratio: np.ndarray, half: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """Each group's λ̃ `[K']` on the optimisation images: the λ of `LAMBDA_GRID` per group that minimise the
    total interval width `sum_k λ_k H_k` (`H_k` the summed finite half-widths of group k) subject to at
    most a fraction `alpha` of the pixels outside. K-RCPS (Teneggi et al. 2023, problem P_K) relaxes the
    0-1 loss to a convex surrogate for a solver; here the 0-1 problem is solved over the grid by its
    Lagrangian, `min_λk H_k λ_k + μ M_k(λ_k)` per group (`M_k` the group's misses), the smallest μ whose
    total misses are within `alpha` found by bisection on log μ."""
    n_groups = labels.max() + 1
    width = np.array([np.where(np.isfinite(half[:, labels == k]), half[:, labels == k], 0).sum() for k in range(n_groups)])
    misses = np.stack([grid_losses(ratio[:, labels == k].reshape(1, -1))[0] * ratio[:, labels == k].size
                       for k in range(n_groups)])  # [K', G]
    budget = alpha * ratio.size

    def choose(log_mu):
        return np.argmin(width[:, None] * LAMBDA_GRID[None, :] + np.exp(log_mu) * misses, axis=1)

    lo, hi = -60.0, 60.0
    if misses[np.arange(n_groups), choose(hi)].sum() > budget:
        return LAMBDA_GRID[choose(hi)]  # the widest the trade-off reaches; the RCPS step shifts it
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if misses[np.arange(n_groups), choose(mid)].sum() > budget else (lo, mid)
    return LAMBDA_GRID[choose(hi)]


BETA_GRID = np.concatenate([-LAMBDA_GRID[:0:-1], LAMBDA_GRID])  # K-RCPS's common shift β, ascending


def krcps_lambdas(ratio: np.ndarray, half: np.ndarray, alpha: float, delta: float, groups: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """K-RCPS (Teneggi et al., ICML 2023, Algorithm 1) on held-out images' `interval_parts` `ratio`,
    `half` `[n, D]`: a random half of the images (the optimisation images) gives the pixel groups
    (`pixel_groups`) and each group's λ̃ (`_group_direction`); on the other half (the calibration images)
    RCPS picks the smallest common shift β of `BETA_GRID` such that the per-pixel λ_j = max(0, λ̃_g(j) + β)
    controls the risk (`rcps_lambda`: every larger β certified). λ̃ does not depend on the calibration
    images and the losses are non-increasing in β, so RCPS's guarantee holds as for one λ.

    Returns `(lambda_map [D], labels [D], beta)`.

    Raises:
      InputError: fewer calibration images than `min_calibration_images`, or no shift controls the risk.
    """
    order = rng.permutation(len(ratio))
    opt, cal = order[:len(ratio) // 2], order[len(ratio) // 2:]
    labels = pixel_groups(ratio[opt], groups)
    base = _group_direction(ratio[opt], half[opt], labels, alpha)[labels]  # [D]
    shifted = np.where(ratio[cal] > 0, ratio[cal] - base, -np.inf)  # outside max(0, λ̃ + β) iff shifted > β
    beta = rcps_lambda(grid_losses(shifted, BETA_GRID), alpha, delta, BETA_GRID)
    return np.maximum(base + beta, 0.0), labels, beta


def image_widths(half: np.ndarray) -> np.ndarray:
    """Each image's mean finite half-width of its 90 % intervals, `[N]` float32 from `half` `[N, D]`: what
    `Head.image_strata` compares with the strata's edges."""
    half = np.asarray(half, np.float32)
    finite = np.isfinite(half)
    return (np.where(finite, half, 0).sum(axis=1, dtype=np.float32) / np.maximum(finite.sum(axis=1), 1)).astype(np.float32)


def strata_of(widths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The stratum of each image `[N]`: how many of `edges` (float32, ascending) lie below its width."""
    return (np.asarray(widths, np.float32)[:, None] > np.asarray(edges, np.float32)[None, :]).sum(axis=1)


def stratified_lambdas(ratio: np.ndarray, half: np.ndarray, alpha: float, delta: float, strata: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RCPS within strata of images (Mondrian conformal prediction: Vovk, Gammerman & Shafer, "Algorithmic
    Learning in a Random World", 2005, applied to RCPS): a random half of the held-out images cuts their
    mean interval width (`image_widths`) into `strata` equally full strata (each edge midway between the
    widths either side of its quantile; tied widths fall in the lower stratum); on the other half RCPS
    fits one λ per stratum on that stratum's images
    (`rcps_lambda`). Then, for a new image exchangeable with the held-out images of its stratum, its
    expected risk is at most α with probability at least 1 - δ, in every stratum (each stratum's bound
    holds on its own, not jointly): narrow-interval images get a λ of their own instead of borrowing
    the wide ones' slack. Returns `(edges [strata - 1] float32, lambdas [strata])`.

    Raises:
      InputError: a stratum with fewer calibration images than `min_calibration_images`, or one where no
        λ controls the risk.
    """
    order = rng.permutation(len(ratio))
    cut, cal = order[:len(ratio) // 2], order[len(ratio) // 2:]
    w = np.sort(image_widths(half[cut])).astype(np.float64)
    lower = w[np.round(np.arange(1, strata) * len(w) / strata).astype(int) - 1]
    upper = np.array([w[w > v][0] if np.any(w > v) else v for v in lower])  # tied widths stay in one stratum
    edges = ((lower + upper) / 2).astype(np.float32)
    which = strata_of(image_widths(half[cal]), edges)
    lambdas = []
    for s in range(strata):
        try:
            lambdas.append(rcps_lambda(grid_losses(ratio[cal][which == s]), alpha, delta))
        except InputError as e:
            raise InputError(f"stratum {s + 1} of {strata} (images of mean interval half-width "
                             f"{'-inf' if s == 0 else f'{edges[s - 1]:.3g}'} to "
                             f"{'inf' if s == strata - 1 else f'{edges[s]:.3g}'}): {e}") from None
    return edges, np.array(lambdas)


def interval_widths(mid: np.ndarray, half: np.ndarray, lambdas: list) -> np.ndarray:
    """Each image's mean interval width within the pixel range, `clip(m + λ h, 0, 1) - clip(m - λ h, 0, 1)`
    averaged over its pixels, for each λ of `lambdas` (a number, or one per pixel `[D]`): `[N, len(lambdas)]`,
    pixels in [0, 1]; `mid`, `half` from `interval_parts`."""
    return np.stack([np.mean(np.clip(mid + lam * half, 0, 1) - np.clip(mid - lam * half, 0, 1), axis=1)
                     for lam in lambdas], axis=1)


def fit_lambdas(ratio: np.ndarray, half: np.ndarray, alpha: float, delta: float, groups: int = 1, strata: int = 1,
                rng: np.random.Generator | None = None) -> dict:
    """The λ's of one fit on held-out images' `interval_parts` `ratio`, `half` `[n, D]`, as the head stores
    them: `{"lambda": scalar, "lambda_map": [D], "strata_edges": [S - 1], "strata_lambdas": [S]}` (ones and
    no edges where unused) and, with K > 1, `labels` `[D]` and `shift`. `groups = strata = 1`: RCPS
    (`rcps_lambda`); `groups > 1`: K-RCPS (`krcps_lambdas`); `strata > 1`: `stratified_lambdas`; halvings
    drawn from `rng` (seed 0 when None). Apply to images with `lambdas_for`. Raises `InputError` as those do."""
    d, rng = ratio.shape[1], rng if rng is not None else np.random.default_rng(0)
    out = {"lambda": 1.0, "lambda_map": np.ones(d), "strata_edges": np.zeros(0, np.float32), "strata_lambdas": np.ones(1)}
    if strata > 1:
        out["strata_edges"], out["strata_lambdas"] = stratified_lambdas(ratio, half, alpha, delta, strata, rng)
    elif groups > 1:
        out["lambda_map"], out["labels"], out["shift"] = krcps_lambdas(ratio, half, alpha, delta, groups, rng)
    else:
        out["lambda"] = rcps_lambda(grid_losses(ratio), alpha, delta)
    return out


def lambdas_for(fitted: dict, half: np.ndarray) -> np.ndarray:
    """Each pixel's λ in each image `[N, D]` (`half` `[N, D]` from `interval_parts`) from `fit_lambdas`'s
    dict, as `Head.conformal_interval` applies them: the scalar times the pixel's entry of the map times
    the image's stratum's λ."""
    per_image = np.asarray(fitted["strata_lambdas"], np.float64)[strata_of(image_widths(half), fitted["strata_edges"])]
    return fitted["lambda"] * np.asarray(fitted["lambda_map"], np.float64)[None, :] * per_image[:, None]


def fit_conformal(model: ProbabilisticModel, x: np.ndarray, alpha: float = DEFAULT_RISK,
                  delta: float = DEFAULT_DELTA, groups: int = 1, seed: int = 0, strata: int = 1) -> dict:
    """Fit the head's risk-controlling scale on held-out images `x` `[n, H, W, C]` in [0, 1] (raw pixels,
    as users feed them) by `fit_lambdas` and assign it, replacing what an earlier fit left. `groups =
    strata = 1`: RCPS's one λ in `conformal_lambda`; `groups = K > 1`: K-RCPS, one λ per pixel in
    `conformal_lambda_map`; `strata = S > 1`: a λ per stratum of images by mean interval width in
    `conformal_strata_edges` / `conformal_strata_lambdas`. Halvings are seeded by `seed`. Returns
    `{"lambda": the scalar λ, "groups": K' (after tied groups merge), "strata": S}` plus `group_lambdas`
    and `shift` (K > 1) or `strata_edges` and `strata_lambdas` (S > 1).

    Raises:
      InputError: a head without intervals (`mse`), bad `alpha` / `delta` / `groups` / `strata`, both
        `groups` and `strata` above 1, too few images (K, S > 1: in the calibration half, per stratum),
        or no λ that controls the risk (see `rcps_lambda`).
    """
    check_risk(alpha, delta)
    check_groups(groups, strata)
    head = model.head
    if not hasattr(head, "conformal_lambda"):
        raise InputError(f"head {head.head_name!r} has no intervals for conformal risk control (--risk)")
    for weight in (head.conformal_lambda, head.conformal_lambda_map, head.conformal_strata_lambdas):
        weight.assign(np.ones(weight.shape, np.float32))
    head.conformal_strata_edges.assign(np.full(head.conformal_strata_edges.shape, np.finfo(np.float32).max, np.float32))
    _, half, ratio = interval_parts(model, x)
    fitted = fit_lambdas(ratio, half, alpha, delta, groups, strata, np.random.default_rng(seed))
    head.conformal_lambda.assign(fitted["lambda"])
    head.conformal_lambda_map.assign(fitted["lambda_map"].reshape(head.conformal_lambda_map.shape).astype(np.float32))
    head.conformal_strata_edges[:strata - 1].assign(fitted["strata_edges"])
    head.conformal_strata_lambdas[:strata].assign(np.asarray(fitted["strata_lambdas"], np.float32))
    out = {"lambda": float(head.conformal_lambda.numpy()), "groups": 1, "strata": strata}  # as stored (float32)
    if groups > 1:
        labels = fitted["labels"]
        out.update(groups=int(labels.max()) + 1, shift=float(fitted["shift"]),
                   group_lambdas=[float(fitted["lambda_map"][labels == k][0]) for k in range(labels.max() + 1)])
    if strata > 1:
        out.update(strata_edges=[float(e) for e in fitted["strata_edges"]],
                   strata_lambdas=[float(v) for v in head.conformal_strata_lambdas.numpy()[:strata]])
    return out


def fitted_lambdas(model: ProbabilisticModel, half: np.ndarray) -> np.ndarray:
    """The head's fitted λ of each pixel of each image `[N, D]` (`half` `[N, D]` from `interval_parts`):
    `lambdas_for` of the head's `conformal_lambda`, `conformal_lambda_map` and strata weights."""
    head = model.head
    return lambdas_for({"lambda": float(head.conformal_lambda.numpy()),
                        "lambda_map": head.conformal_lambda_map.numpy().reshape(-1),
                        "strata_edges": head.conformal_strata_edges.numpy(),
                        "strata_lambdas": head.conformal_strata_lambdas.numpy()}, half)


def conformal_report(model: ProbabilisticModel, x: np.ndarray, alpha: float, delta: float, groups: int = 1,
                     splits: int = CONFORMAL_SPLITS, seed: int = 0, strata: int = 1) -> dict:
    """How the fitted λ's (`fitted_lambdas`) do on test images `x` `[N, H, W, C]` (raw):

    - `lambda` (the scalar), `alpha`, `delta`, `base_level` (0.9: λ scales the central 90 % interval),
      `test_images`;
    - `risk`: the mean fraction of a test image's pixels outside their intervals (<= α with
      probability >= 1 - δ); `mean_width`: the mean interval width within [0, 1] (pixels);
    - `risk_by_width`: per quartile of the images' mean width, `{"width": [lo, hi], "risk", "images"}`
      (Angelopoulos et al., 2022, Figure 4: is the risk held where intervals are narrow?);
    - `oracle_lambda`: the smallest single λ whose risk on these test images is <= α (chosen on the
      test set itself: not available in practice), its `oracle_mean_width` and `width_over_oracle`;
    - `splits_over_alpha`: over `splits` random halvings of the test images (seeded), RCPS (K-RCPS
      with `groups` > 1, by strata with `strata` > 1) fitted on one half, the fraction of splits whose
      risk on the other half exceeds α (at most about δ).
    """
    mid, half, ratio = interval_parts(model, x)
    lam = fitted_lambdas(model, half)
    risk = (ratio > lam).mean(axis=1)
    losses = grid_losses(ratio)
    ok = np.flatnonzero(losses.mean(axis=0) <= alpha)
    oracle = float(LAMBDA_GRID[ok[0]]) if len(ok) else float("nan")
    widths = interval_widths(mid, half, [lam] + ([oracle] if np.isfinite(oracle) else []))
    width = widths[:, 0]
    edges = np.quantile(width, [0, 0.25, 0.5, 0.75, 1])
    by_width = [dict(width=[float(width[g].min()), float(width[g].max())], risk=float(risk[g].mean()), images=len(g))
                for g in np.array_split(np.argsort(width, kind="stable"), 4) if len(g)]
    rng = np.random.default_rng(seed)
    over, n_half = 0, len(x) // 2
    for _ in range(splits):
        order = rng.permutation(len(x))
        fit, test = order[:n_half], order[n_half:]
        try:
            split_lam = lambdas_for(fit_lambdas(ratio[fit], half[fit], alpha, delta, groups, strata, rng), half[test])
        except InputError:
            split_lam = LAMBDA_GRID[-1]
        over += (ratio[test] > split_lam).mean() > alpha
    oracle_width = float(widths[:, 1].mean()) if widths.shape[1] > 1 else None
    return dict(alpha=alpha, delta=delta, base_level=INTERVAL_LEVEL, inputs="raw", test_images=int(len(x)),
                risk=float(risk.mean()), mean_width=float(width.mean()), width_quartile_edges=[float(e) for e in edges],
                risk_by_width=by_width, oracle_lambda=oracle, oracle_mean_width=oracle_width,
                width_over_oracle=float(width.mean() / oracle_width) if oracle_width else None,
                splits=splits, splits_over_alpha=over / splits, **{"lambda": float(model.head.conformal_lambda.numpy())})
