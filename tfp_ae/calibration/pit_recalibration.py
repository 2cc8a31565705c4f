"""PIT recalibration: each pixel's CDF F composed with a piecewise-linear map R of [0, 1] fitted to the held-out
PIT values of the pixels whose scales are like its own, so that the model's intervals cover what they say in
every group of predicted spread, and the model stays a density (`tfp_ae.heads.recalibrated.PITRecalibrated`:
g(x) = r(F(x)) f(x)).

σ-scaling and local recalibration change a pixel's scale, not the shape of its distribution; on 8-bit images
the shape is what is wrong where the model is confident (a background pixel, dequantised, is uniform on its bin
of width 1/256; no normal of any scale has uniform PIT values there), so their error within the quartiles of
the predicted std stays at 0.03-0.06 (docs/results/conformal, local.csv). Here the pixels of the held-out images
are cut into `PIT_GROUPS` groups at the octiles of their log scales (the scale after σ-scaling), and each group's
R is the histogram of its PIT values u = F(x) on the bins of `PIT_EDGES` (the ends of the central 50, 80, 90,
95 and 99 % intervals, and the median), mixed with the identity by `SMOOTHING` so that every bin keeps a
positive density: R(p) is then the fraction of the group's held-out pixels with u <= p at every bin end p, and
so every central interval at those levels covers its level on the held-out pixels of every group. This is
Kuleshov, Fenner & Ermon's recalibration of the CDF (ICML 2018), per group of spread (their one isotonic map
for all pixels leaves errors that cancel between groups) and with a histogram in place of the isotonic map:
the histogram is the maximum-likelihood density among those constant on the bins, the identity among them, so
the held-out log-likelihood of the pixels does not fall in-sample (up to the smoothing's at most
-log(1 - SMOOTHING) nats a pixel); `recalibrate` guards the rest like σ-scaling.

Heads: K = 1 factorised heads of a location-scale family with a fixed standardised shape (normal identity and
diagonal, logistic: `Head.takes_pit_recalibration`), where the recalibrated pixels stay independent and their
product is the image's density. Not the joint heads (a recalibrated marginal of a correlated vector is not a
density of the vector without a copula) and not the Student-t heads (the shape depends on each pixel's df).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.calibration.pit import calibration_by_std
from tfp_ae.errors import InputError
from tfp_ae.heads.recalibrated import PIT_EDGES, PIT_GROUPS, bin_widths

if TYPE_CHECKING:
    from tfp_ae.models import ProbabilisticModel

SMOOTHING = 1e-3  # R's masses: (1 - this) x the held-out histogram + this x the bins' widths (every bin positive)


def check_pit_recalibration(model: ProbabilisticModel) -> None:
    """Raises `InputError` unless the model's head was built with PIT recalibration's weights
    (`pit_recalibration`: K = 1 normal or logistic factorised heads)."""
    head = model.head
    if not getattr(head, "pit_recalibration", False):
        raise InputError(f"PIT recalibration needs a head built with pit_recalibration=True (build_model(..., "
                         f"pit_recalibration=True), --recalibration-method pit); got {head.head_name} "
                         f"K={head.num_components}")


def pixel_pits(model: ProbabilisticModel, pairs: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pixel of `pairs` (`(inputs, targets)` batches `[B, H, W, C]`, pixels in [0, 1]): the log of its
    scale before PIT recalibration (after σ-scaling), its PIT value under the head as it is now and its predicted
    std as it is now, each `[N]` (N the number of pixels; nats are not involved)."""
    head = model.head
    logs, pits, stds = [], [], []
    for x, y in pairs:
        _, _, comp = head._parts(model(x, training=False))
        marginal = head.marginal(comp)  # PITRecalibrated
        base = marginal.distribution
        logs.append(tf.math.log(tf.broadcast_to(base.scale, tf.shape(base.loc))).numpy().ravel())
        pits.append(marginal.cdf(tf.cast(y, marginal.dtype)).numpy().ravel())
        stds.append(marginal.stddev().numpy().ravel())
    return np.concatenate(logs), np.concatenate(pits), np.concatenate(stds)


def pit_masses(log_scale: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R's fit: the group edges `[PIT_GROUPS - 1]` (the octiles of the log scales `log_scale` `[N]`; pixel with
    log scale s is in group `#{edges < s}`) and each group's bin masses `[PIT_GROUPS, J]` (the histogram of its
    PIT values `u` `[N]` on the bins of `PIT_EDGES`, mixed with the widths by `SMOOTHING`; the widths, i.e. the
    identity, for a group without pixels). float32, as the head stores them."""
    edges = np.quantile(log_scale, np.arange(1, PIT_GROUPS) / PIT_GROUPS).astype(np.float32)
    groups = np.searchsorted(edges, log_scale.astype(np.float32), side="left")
    bins = np.concatenate([[0.0], PIT_EDGES, [1.0]])
    masses = np.tile(bin_widths(), (PIT_GROUPS, 1))
    for g in range(PIT_GROUPS):
        ug = np.clip(u[groups == g], 0.0, 1.0)
        if len(ug):
            masses[g] = (1 - SMOOTHING) * np.histogram(ug, bins)[0] / len(ug) + SMOOTHING * bin_widths()
    return edges, masses.astype(np.float32)


def fit_pit_recalibration(model: ProbabilisticModel, pairs: tf.data.Dataset) -> dict:
    """Fit and assign the head's PIT recalibration (`pit_scale_edges`, `pit_masses`; see the module docstring) on
    held-out `(inputs, targets)` batches (a run: raw inputs, dequantised targets), starting from none (the
    head's σ-scale stays as it is).

    Returns:
      `{"scale_edges": [PIT_GROUPS - 1] log scales, "masses": [PIT_GROUPS][J], "calibration_error_by_std_before":
      [4], "calibration_error_by_std_after": [4]}`: the held-out pixels' calibration error within the quartiles
      of their predicted std before and after (each with its own std).
    Raises:
      InputError: a head that does not take it (`check_pit_recalibration`).
    """
    check_pit_recalibration(model)
    head = model.head
    reset_pit_recalibration(model)
    log_scale, u, std = pixel_pits(model, pairs)
    edges, masses = pit_masses(log_scale, u)
    head.pit_scale_edges.assign(edges)
    head.pit_masses.assign(masses)
    _, u_after, std_after = pixel_pits(model, pairs)
    return dict(scale_edges=edges.tolist(), masses=masses.tolist(),
                calibration_error_by_std_before=calibration_by_std(u, std)["calibration_error"],
                calibration_error_by_std_after=calibration_by_std(u_after, std_after)["calibration_error"])


def reset_pit_recalibration(model: ProbabilisticModel) -> None:
    """Undo `fit_pit_recalibration`: every pixel in group 0, whose R is the identity."""
    model.head.pit_scale_edges.assign(np.full(PIT_GROUPS - 1, np.finfo(np.float32).max, np.float32))
    model.head.pit_masses.assign(np.tile(bin_widths(), (PIT_GROUPS, 1)).astype(np.float32))
