"""PIT recalibration: each pixel's CDF F composed with a piecewise-linear map R of [0, 1] fitted to the held-out
PIT values of the pixels whose scales are like its own, so that the model's intervals cover what they say in
every group of predicted spread, and the model stays a density (`tfp_ae.heads.recalibrated.PITRecalibrated`:
g(x) = r(F(x)) f(x)).

σ-scaling and local recalibration change a pixel's scale, not the shape of its distribution; on 8-bit images
the shape is what is wrong where the model is confident (a background pixel, dequantised, is uniform on its bin
of width 1/256; no normal of any scale has uniform PIT values there), so their error within the quartiles of
the predicted std stays at 0.03-0.06 (docs/results/conformal, local.csv). Here the pixels of the held-out images
are cut into `PIT_GROUPS` (32) groups at the quantiles of their log scales (the scale after σ-scaling), and each group's
R maps its pixels' PIT quantiles at the levels `PIT_EDGES` (the ends of the central 50, 80, 90, 95 and 99 %
intervals, and the median) to those levels, linearly in between: every central interval at those levels then
covers its level on the held-out pixels of every group (to 1/N). This is Kuleshov, Fenner & Ermon's
recalibration of the CDF (ICML 2018), per group of spread (their one isotonic map for all pixels leaves errors
that cancel between groups) and piecewise linear between quantiles in place of isotonic, so that it has a
density: r is a histogram whose bins hold the held-out pixels in the proportions of its masses, the maximum of
the likelihood among densities constant on those bins (the identity among them), so the held-out
log-likelihood of the pixels does not fall in-sample (to 1/N); `recalibrate` guards the rest like σ-scaling.

Heads (`Head.takes_pit_recalibration`): the K = 1 factorised heads of a location-scale family with a fixed
standardised shape (normal identity and diagonal, logistic), where the recalibrated pixels stay independent and
their product is the image's density; and the K = 1 joint normal and Student-t heads (full, low-rank, matrix;
identity and diagonal t), where the recalibrated marginals are joined by the model's own copula
(`CopulaRecalibrated`: Y_i = G_i^-1(F_i(X_i)) for X the model's joint normal or t), so the dependence between
pixels is kept and every per-pixel readout is the recalibrated marginal's. A t pixel's shape depends on its
image's df, so its map is fitted and stored in L = logit F_df(z), a standard logistic variable whatever the df
(`StudentTRecalibrated`). The fit is the same (it reads only the marginals); for a joint head the held-out
likelihood is no longer a maximum over the map (the copula's Jacobian and the joint density at the moved point
enter it), so the guard decides.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.calibration.pit import calibration_by_std
from tfp_ae.errors import InputError
from tfp_ae.heads.recalibrated import PIT_GROUPS, fitted_parameters, identity_parameters

if TYPE_CHECKING:
    from tfp_ae.models import ProbabilisticModel


def check_pit_recalibration(model: ProbabilisticModel) -> None:
    """Raises `InputError` unless the model's head was built with PIT recalibration's weights
    (`pit_recalibration`: K = 1 normal, logistic or Student-t heads, `Head.takes_pit_recalibration`)."""
    head = model.head
    if not getattr(head, "pit_recalibration", False):
        raise InputError(f"PIT recalibration needs a head built with pit_recalibration=True (build_model(..., "
                         f"pit_recalibration=True), --recalibration-method pit); got {head.head_name} "
                         f"K={head.num_components}")


def pixel_residuals(model: ProbabilisticModel, pairs: tf.data.Dataset) -> dict[str, np.ndarray]:
    """For every pixel of `pairs` (`(inputs, targets)` batches `[B, H, W, C]`, pixels in [0, 1]), each `[N]`
    (N the number of pixels): `log_scale` (its scale before PIT recalibration, after σ-scaling), `z` the target in
    the variable of R's knots (`knot_coordinate`: (target - loc) / scale; a Student-t pixel's logit F_df of it;
    float64 of float32), and under the head as it is now its PIT value `u` and predicted `std`."""
    head = model.head
    out = {k: [] for k in ("log_scale", "z", "u", "std")}
    for x, y in pairs:
        _, _, comp = head._parts(model(x, training=False))
        marginal = head.marginal(comp)  # PITRecalibrated or StudentTRecalibrated
        base = marginal.distribution
        scale = tf.broadcast_to(base.scale, tf.shape(base.loc))
        y = tf.reshape(tf.cast(y, marginal.dtype), tf.shape(base.loc))  # the head's natural event shape
        for key, t in (("log_scale", tf.math.log(scale)), ("z", marginal.knot_coordinate(y)), ("u", marginal.cdf(y)),
                       ("std", marginal.stddev())):
            out[key].append(t.numpy().ravel())
    return {k: np.concatenate(v).astype(np.float64 if k == "z" else np.float32) for k, v in out.items()}


def pit_groups(log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The group edges `[PIT_GROUPS - 1]` float32 (the quantiles at k / `PIT_GROUPS` of the log scales `log_scale`
    `[N]`) and each pixel's group `[N]`, `#{edges < its log scale}` (the head's rule, `Head.pit_recalibrated`)."""
    edges = np.quantile(log_scale, np.arange(1, PIT_GROUPS) / PIT_GROUPS).astype(np.float32)
    return edges, np.searchsorted(edges, log_scale.astype(np.float32), side="left")


def fit_pit_recalibration(model: ProbabilisticModel, pairs: tf.data.Dataset) -> dict:
    """Fit and assign the head's PIT recalibration (`pit_scale_edges`, and per group `pit_knots`, `pit_log_ratios`,
    `pit_moments`: `tfp_ae.heads.recalibrated.fitted_parameters` of its pixels' z; see the module docstring) on
    held-out `(inputs, targets)` batches (a run: raw inputs, dequantised targets), starting from none (the
    head's σ-scale stays as it is).

    Returns:
      `{"scale_edges": [PIT_GROUPS - 1] log scales, "knots": [PIT_GROUPS][J - 1] in z, "calibration_error_by_std_before":
      [4], "calibration_error_by_std_after": [4]}`: the held-out pixels' calibration error within the quartiles
      of their predicted std before and after (each with its own std; None where a std is not finite).
    Raises:
      InputError: a head that does not take it (`check_pit_recalibration`).
    """
    check_pit_recalibration(model)
    head = model.head
    reset_pit_recalibration(model)
    before = pixel_residuals(model, pairs)
    edges, group = pit_groups(before["log_scale"])
    fitted = [fitted_parameters(head.pit_family, before["z"][group == g]) for g in range(PIT_GROUPS)]
    head.pit_scale_edges.assign(edges)
    for key in ("knots", "log_ratios", "moments"):
        getattr(head, f"pit_{key}").assign(np.stack([f[key] for f in fitted]))
    after = pixel_residuals(model, pairs)
    by_std = [(calibration_by_std(r["u"], r["std"]) or {}).get("calibration_error") for r in (before, after)]
    return dict(scale_edges=edges.tolist(), knots=np.stack([f["knots"] for f in fitted]).tolist(),
                calibration_error_by_std_before=by_std[0], calibration_error_by_std_after=by_std[1])


def reset_pit_recalibration(model: ProbabilisticModel) -> None:
    """Undo `fit_pit_recalibration`: every pixel in group 0, whose R is the identity."""
    head = model.head
    head.pit_scale_edges.assign(np.full(PIT_GROUPS - 1, np.finfo(np.float32).max, np.float32))
    for key, value in identity_parameters(head.pit_family).items():
        getattr(head, f"pit_{key}").assign(np.tile(value, (PIT_GROUPS, 1)))
