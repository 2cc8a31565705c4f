"""Local recalibration: each pixel's scale multiplied by a function of that scale, so that intervals
hold what they say within every group of similar predicted spread, not only on average.

σ-scaling multiplies every scale by one s, which fixes a global miscalibration but not its shape:
intervals too narrow on confident pixels and too wide on unsure ones cancel in the overall error. Here
the factor is `exp(h(log s))`, `h` piecewise linear through one knot per octile of the held-out pixels'
scales (`LOCAL_KNOTS`, at the octile's median log scale), flat beyond the end knots
(`Head.local_log_factor`). Each knot's value starts at the log of the factor that minimises the
calibration error of its octile's pixels (mean |coverage - level| over `LEVELS`), then three sweeps of
coordinate descent move each value to minimise its octile's error with the interpolated factors; the
values are kept in the scales' order (the slope of h at least -1: `s exp(h(log s))` increases with s).
This is a recalibration of the scale's map (Kuleshov, Fenner & Ermon, ICML 2018, recalibrate the CDF
itself with isotonic regression, which makes the model a distribution no longer; Levi et al., Sensors
2022, scale σ per bin of σ): the
model stays the same family with other scales, so `log_prob`, samples, intervals, every export
signature and TFLite stay coherent. Heads whose scales are per pixel (`Head.per_pixel_scales`:
normal identity/diag, logistic, Student-t identity/diag; K = 1) and the low-rank heads
(`Head.joint_local_scales`), where it is Σ' = D Σ D, D = diag(exp(h(log s_i))) with s_i pixel i's
marginal scale (σ_i and V's row i multiplied by that factor, `NormalLowRank.component`); not the full
and matrix heads (D Σ D of a Kronecker product is not one; a full scale's would need every s_i first).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import special, stats

from tfp_ae._tf import tf, tfd
from tfp_ae.calibration.pit import LEVELS, SPREAD_BINS, calibration_error
from tfp_ae.errors import InputError
from tfp_ae.heads.base import LOCAL_KNOTS

if TYPE_CHECKING:
    from tfp_ae.models import ProbabilisticModel

FACTOR_GRID = np.linspace(math.log(1e-2), math.log(1e2), 4001)  # log-factors searched per group, first
STEPS = np.linspace(-0.5, 0.5, 101)  # then each knot's value moved by these, holding the others
SWEEPS = 3
FIT_PIXELS = 50_000  # pixels of each group the coordinate steps are measured on


def check_local(model: ProbabilisticModel) -> None:
    """Raises `InputError` unless the model's head was built with local recalibration's weights
    (`local_scales`: K = 1 heads with per-pixel scales)."""
    head = model.head
    if not getattr(head, "local_scales", False):
        raise InputError(f"local recalibration needs a head built with local_scales=True (build_model(..., "
                         f"local_scales=True), --recalibration-method local); got {head.head_name} K={head.num_components}")


def _standard_quantiles(marginal, df):
    """`F^-1((1 + level) / 2)` of the standardised marginal for each level, `[L]` or `[L, N]` (t: per df)."""
    p = (1 + np.asarray(LEVELS)) / 2
    if isinstance(marginal, tfd.Normal):
        return stats.norm.ppf(p)
    if isinstance(marginal, tfd.Logistic):
        return special.logit(p)
    return stats.t.ppf(p[:, None], df[None, :])


def pixel_deviations(model: ProbabilisticModel, pairs: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of `pairs` (`(inputs, targets)` batches, e.g. raw and dequantised held-out images):
    its log scale (after σ-scaling and the current local factors) and `r_l = |target - loc| / (scale q_l)`
    for each level l (`q_l`: the standardised marginal's `(1 + l) / 2` quantile), `[N]` and `[L, N]`: the
    pixel lies in its central `l` interval scaled by a factor c when `r_l <= c`."""
    head = model.head
    logs, ratios = [], []
    for x, y in pairs:
        _, _, comp = head._parts(model(x, training=False))
        marginal = head.marginal(comp)
        loc = tf.reshape(marginal.loc, [-1]).numpy().astype(np.float64)
        scale = tf.reshape(tf.broadcast_to(marginal.scale, tf.shape(marginal.loc)), [-1]).numpy().astype(np.float64)
        df = (tf.reshape(tf.broadcast_to(marginal.df, tf.shape(marginal.loc)), [-1]).numpy().astype(np.float64)
              if isinstance(marginal, tfd.StudentT) else None)
        q = np.broadcast_to(np.reshape(_standard_quantiles(marginal, df), (len(LEVELS), -1)), (len(LEVELS), len(loc)))
        z = np.abs(np.reshape(y.numpy(), [-1]).astype(np.float64) - loc) / scale
        logs.append(np.log(scale))
        ratios.append(z[None, :] / q)
    return np.concatenate(logs), np.concatenate(ratios, axis=1)


def _group_error(ratios, log_factor):
    """Calibration error of pixels `ratios` `[L, n]` whose intervals are scaled by `exp(log_factor)` `[n]`."""
    return calibration_error([float(np.mean(r <= np.exp(log_factor))) for r in ratios])


def _best_log_factor(ratios):
    """The log-factor of `FACTOR_GRID` whose calibration error is smallest for pixels `ratios` `[L, n]`."""
    coverage = np.stack([np.searchsorted(np.sort(r), np.exp(FACTOR_GRID), side="right") / len(r) for r in ratios])
    errors = np.abs(coverage - np.asarray(LEVELS)[:, None]).mean(axis=0)
    return float(FACTOR_GRID[np.argmin(errors)])


def _monotone(knots, values):
    """`values` raised where needed so that the slope of h is at least -1 (the scales keep their order)."""
    values = values.copy()
    for k in range(1, len(knots)):
        values[k] = max(values[k], values[k - 1] - (knots[k] - knots[k - 1]))
    return values


def fit_local_scales(model: ProbabilisticModel, pairs: tf.data.Dataset) -> dict:
    """Fit and assign the head's local recalibration (`local_knots`, `local_log_factors`) on held-out
    `(inputs, targets)` batches, starting from none (the head's σ-scale stays as it is).

    Returns:
      `{"knots": [LOCAL_KNOTS] log scales, "log_factors": [LOCAL_KNOTS], "calibration_error_by_std_before":
      [4], "calibration_error_by_std_after": [4]}`, the held-out pixels' calibration error within the
      quartiles of their scale before and after (the quartiles of the scale before).
    Raises:
      InputError: a head that does not take it (`check_local`).
    """
    check_local(model)
    head = model.head
    reset_local_scales(model)
    log_scale, ratios = pixel_deviations(model, pairs)
    order = np.argsort(log_scale, kind="stable")
    groups = np.array_split(order, LOCAL_KNOTS)  # one knot per group, at its median log scale
    knots = np.array([np.median(log_scale[g]) for g in groups])
    values = _monotone(knots, np.array([_best_log_factor(ratios[:, g]) for g in groups]))
    rng = np.random.default_rng(0)
    fit_groups = [rng.choice(g, min(len(g), FIT_PIXELS), replace=False) for g in groups]
    for _ in range(SWEEPS):  # coordinate descent: each knot's value for its group, given the interpolation
        for k, g in enumerate(fit_groups):
            trial = values[k] + STEPS
            errors = []
            for v in trial:
                values_k = values.copy()
                values_k[k] = v
                errors.append(_group_error(ratios[:, g], np.interp(log_scale[g], knots, values_k)))
            values[k] = trial[int(np.argmin(errors))]
        values = _monotone(knots, values)
    quartiles = np.array_split(order, SPREAD_BINS)

    def by_group(log_factor):
        return [_group_error(ratios[:, g], log_factor[g]) for g in quartiles]
    before, after = by_group(np.zeros_like(log_scale)), by_group(np.interp(log_scale, knots, values))
    head.local_knots.assign(knots.astype(np.float32))
    head.local_log_factors.assign(values.astype(np.float32))
    return dict(knots=[float(v) for v in knots], log_factors=[float(v) for v in values],
                calibration_error_by_std_before=before, calibration_error_by_std_after=after)


def reset_local_scales(model: ProbabilisticModel) -> None:
    """Undo `fit_local_scales`: factors 1 everywhere."""
    model.head.local_knots.assign(np.arange(LOCAL_KNOTS, dtype=np.float32))
    model.head.local_log_factors.assign(np.zeros(LOCAL_KNOTS, np.float32))
