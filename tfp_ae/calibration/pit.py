"""Is the predictive distribution calibrated? Probability integral transform (PIT) values of each
pixel's marginal, the coverage of central intervals, the calibration error (overall and within
groups of similar predicted spread) and the continuous ranked probability score (CRPS)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scoringrules

from tfp_ae._tf import tf, tfd
from tfp_ae.data import dequantize
from tfp_ae.heads import PIT_SAMPLES, SAMPLE_SEED
from tfp_ae.predict import map_batches, point_and_variance, sample_batch_size, variance_maps

if TYPE_CHECKING:
    from tfp_ae.heads.base import Head
    from tfp_ae.models import ProbabilisticModel

CALIBRATION_IMAGES = 200
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)  # central intervals whose coverage `calibration` reports
PIT_BINS = 20
SPREAD_BINS = 4  # calibration_by_std: quartiles of the predicted std


def crps_inputs(head: Head, dist: tfd.Distribution, seed: int = SAMPLE_SEED, num_samples: int = PIT_SAMPLES):
    """What `pixel_crps` needs of `dist`, as tensors (so that it can run inside a `tf.function`):
    `(kind, params)` with `kind` one of

    - `normal`, `logistic`, `t`: one closed-form marginal per pixel, `params` `loc`, `scale` (and
      `df`) `[B, *natural_event_shape]`;
    - `mixnorm`: a mixture of normal marginals, `loc`, `scale`, `weights` `[B, *natural_event_shape, K]`;
    - `ensemble`: no closed form, `samples` `[S, B, H, W, C]` (`num_samples` draws, stateless `seed`).

    Scales are the head's, at its current `sigma_scale`."""
    _, logits, comp = head._parts(dist)
    marginal = head.marginal(comp) if head.is_density else None
    if logits is None and isinstance(marginal, (tfd.Normal, tfd.Logistic, tfd.StudentT)):
        params = dict(loc=marginal.loc, scale=tf.broadcast_to(marginal.scale, tf.shape(marginal.loc)))
        if isinstance(marginal, tfd.StudentT):
            return "t", dict(params, df=tf.broadcast_to(marginal.df, tf.shape(marginal.loc)))
        return ("logistic" if isinstance(marginal, tfd.Logistic) else "normal"), params
    if logits is not None and isinstance(marginal, tfd.Normal):
        n = len(head.natural_event_shape)
        w = tf.reshape(tf.nn.softmax(logits), tf.concat([tf.shape(logits), tf.ones([n], tf.int32)], 0))
        move = lambda t: tf.experimental.numpy.moveaxis(tf.broadcast_to(t, tf.shape(marginal.loc)), 1, -1)  # noqa: E731
        return "mixnorm", dict(loc=move(marginal.loc), scale=move(marginal.scale), weights=move(w))
    return "ensemble", dict(samples=head.sample(dist, num_samples, seed=seed))


def crps_from(kind: str, params: tf.Tensor, x: np.ndarray):
    """The per-pixel CRPS (pixels, numpy `[B, H, W, C]`) of images `x` `[B, H, W, C]` from
    `crps_inputs`' `(kind, params)` (numpy or tensors), by the `scoringrules` package: closed forms for
    one normal or Student-t marginal (`crps_normal`, `crps_t`) and for a mixture of normal marginals
    (`crps_mixnorm`); a logistic's closed form (Taillardat, Mestre, Zamo & Naveau, Monthly Weather
    Review 2016) written here in a form that stays finite far in the tails; otherwise the unbiased
    ("fair") ensemble estimator over the draws (`crps_ensemble`; Ferro, QJRMS 2014, "Fair scores for
    ensemble forecasts"). inf where a t marginal has df <= 1 (no finite mean: the CRPS is infinite)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    obs = np.asarray(x, np.float64)
    if kind == "ensemble":
        return np.reshape(scoringrules.crps_ensemble(obs, p["samples"], m_axis=0, estimator="fair"), np.shape(x))
    obs = np.reshape(obs, p["loc"].shape[:-1] if kind == "mixnorm" else p["loc"].shape)
    if kind == "t":
        crps = np.where(p["df"] > 1, scoringrules.crps_t(obs, np.maximum(p["df"], 1.5), p["loc"], p["scale"]), np.inf)
    elif kind == "logistic":  # sigma (z - 2 log F(z) - 1) (Taillardat et al. 2016), -log F(z) = softplus(-z):
        # scoringrules' log F(z) overflows to inf where a collapsed scale puts z below about -745
        z = (obs - p["loc"]) / p["scale"]
        crps = p["scale"] * (z + 2 * np.logaddexp(0, -z) - 1)
    elif kind == "normal":
        crps = scoringrules.crps_normal(obs, p["loc"], p["scale"])
    else:
        crps = scoringrules.crps_mixnorm(obs, p["loc"], p["scale"], p["weights"], m_axis=-1)
    return np.reshape(crps, np.shape(x))


def pixel_crps(head: Head, dist: tfd.Distribution, x: np.ndarray, seed: int = SAMPLE_SEED,
               num_samples: int = PIT_SAMPLES) -> np.ndarray:
    """Continuous ranked probability score of each pixel's marginal at `x` `[B, H, W, C]` (pixels,
    lower is better; numpy `[B, H, W, C]`): `crps_from(*crps_inputs(head, dist, seed, num_samples), x)`."""
    return crps_from(*crps_inputs(head, dist, seed, num_samples), x)


def pit_batch_size(model: ProbabilisticModel) -> int:
    """Images per batch of PIT values and CRPS (`pit_values`, `fit_sigma_scale` by CRPS): at most 50, and
    at most `SAMPLE_FLOATS` values for `PIT_SAMPLES` draws per image (`sample_batch_size`); the
    marginals of a full covariance (a D x D factor per image) fit the same bound."""
    return sample_batch_size(model, PIT_SAMPLES, 50)


def pit_values(model: ProbabilisticModel, x: np.ndarray, seed: int = 0, batch_size: int | None = None,
               targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PIT values u = F(t) `[N, H, W, C]` and per-pixel CRPS `[N, H, W, C]` of targets `t` (pixels in
    [0, 1], e.g. dequantised; default `x` itself) under `model(x)`, the predictive distribution given the
    input images `x` (`Head.pit`, `pixel_crps`), batch by batch (at most `sample_batch_size` images, so
    that the sample-based heads stay within memory)."""
    batch_size = batch_size or pit_batch_size(model)
    targets = x if targets is None else targets
    us, crps = [], []
    for i, start in enumerate(range(0, len(x), batch_size)):
        b = tf.constant(x[start:start + batch_size])
        t = tf.constant(targets[start:start + batch_size])
        dist = model(b, training=False)
        step_seed = tf.constant([int(seed), i], tf.int32)
        us.append(model.head.pit(dist, t, seed=step_seed).numpy())
        crps.append(pixel_crps(model.head, dist, t.numpy(), seed=step_seed))
    return np.concatenate(us), np.concatenate(crps)


def coverage_at(u: np.ndarray, levels: tuple[float, ...] = LEVELS) -> list[float]:
    """The fraction of PIT values `u` (any shape) inside each central interval:
    mean(|u - 1/2| <= level / 2) per level, a list in the order of `levels`."""
    dev = np.abs(np.asarray(u, np.float64) - 0.5)
    return [float(np.mean(dev <= lv / 2)) for lv in levels]


def calibration_error(coverage: Sequence[float], levels: tuple[float, ...] = LEVELS) -> float:
    """mean |coverage - level| over the levels (0 when calibrated), of `coverage_at`'s list."""
    return float(np.mean(np.abs(np.asarray(coverage) - levels)))


def calibration_by_std(u: np.ndarray, std: np.ndarray, bins: int = SPREAD_BINS, spread: str = "std") -> dict | None:
    """Calibration within groups of pixels of similar predicted spread: the pixels, ranked by their
    predicted std (`std`, same shape as the PIT values `u`; or another spread, named by `spread`), split
    into `bins` equal groups (ties in rank order); per group the `coverage` at `LEVELS` and its
    `calibration_error`. The calibration
    error over all pixels can hide errors that cancel (intervals too narrow on the background and
    too wide on the strokes): a calibrated model is calibrated in every group (the binning by
    predicted spread of Levi, Gispan, Giladi & Fetaya, "Evaluating and calibrating uncertainty
    prediction in regression tasks", Sensors 2022, with coverage in place of their RMSE).

    Returns:
      `{"spread": spread, "<spread>_edges": bins + 1 values (pixels), "coverage": bins lists of one value
      per level, "calibration_error": bins values, "mean_calibration_error"}`, or None where a pixel has no
      finite spread (the std of a t with df <= 2).
    """
    u, std = np.ravel(u), np.ravel(std)
    if not np.isfinite(std).all():
        return None
    order = np.argsort(std, kind="stable")
    groups = np.array_split(order, bins)
    coverage = [coverage_at(u[g]) for g in groups]
    errors = [calibration_error(c) for c in coverage]
    return {"spread": spread, f"{spread}_edges": [float(std[groups[0][0]])] + [float(std[g[-1]]) for g in groups],
            "coverage": coverage, "calibration_error": errors, "mean_calibration_error": float(np.mean(errors))}


def calibration(model: ProbabilisticModel, x: np.ndarray, point: np.ndarray | None = None, num_levels: int = 256,
                seed: int = 0) -> dict:
    """Can the predictive distribution (and so the variance and interval maps) be trusted? The model
    is given the images `x` `[N, H, W, C]` in [0, 1] as they are (`inputs` "raw": what `predict`, the
    maps and the exported signatures are given, whatever the training's `--dequantize`), and its
    distribution is scored at the same pixels dequantised with `seed` (`dequantize`, `num_levels` L;
    `targets` "dequantized"), so that every head's CDF is continuous there:

    - `levels` `[0.5, 0.8, 0.9, 0.95, 0.99]` and `coverage`: the fraction of pixels inside each
      central interval, from the PIT values u = F(x) (`Head.pit`: exact marginal CDFs, randomised
      ranks among 100 draws otherwise), so `coverage` equals `levels` for a calibrated model
      (the old `coverage_95`, between order statistics of 100 samples, covered about 93 % of a
      calibrated model's pixels);
    - `calibration_error`: mean |coverage - level| over the levels;
    - `pit_histogram`: the fraction of pixels in each of 20 equal bins of u (flat for a
      calibrated model; U-shaped: over-confident; peaked: under-confident);
    - `by_std`: the same within the quartiles of the pixels' predicted std (`calibration_by_std`;
      errors that cancel over all pixels show there). Where a pixel's std is infinite or undefined (a
      Student-t with df <= 2), within the quartiles of the width of its central 50 % interval instead
      (`"spread": "iqr"`, which exists for any df); None for `mse`, which has neither;
    - `images` (N), `sigma_scale` (the head's, `fit_sigma_scale`; 1.0 without recalibration), `crps` (mean per-pixel CRPS,
      pixels; `pixel_crps`; None where infinite), `mean_predicted_std` (over pixels whose
      variance exists) and `mean_abs_error` (mean |x - point estimate|; `point`: the point
      estimates of `x` if already computed).
    """
    if point is None:
        point, variance = point_and_variance(model, x)
    else:
        variance = variance_maps(model, x)
    std = np.sqrt(variance)
    x = np.asarray(x, np.float32)
    u, crps = pit_values(model, x, seed, targets=dequantize(x, num_levels, seed=seed))
    coverage = coverage_at(u)
    by_std = calibration_by_std(u, std)
    if by_std is None:  # e.g. a t with df <= 2: grouped by its interquartile range (NaN for mse: None)
        by_std = calibration_by_std(u, map_batches(model, x, "quartile_range"), spread="iqr")
    hist = np.histogram(np.clip(u, 0, 1), bins=PIT_BINS, range=(0, 1))[0] / u.size
    mean_crps = float(np.mean(crps))
    return dict(levels=list(LEVELS), coverage=coverage, inputs="raw", targets="dequantized",
                calibration_error=calibration_error(coverage),
                pit_histogram=[float(h) for h in hist], by_std=by_std, images=int(len(x)),
                sigma_scale=float(model.head.sigma_scale.numpy()) if model.head.has_location else 1.0,
                crps=mean_crps if np.isfinite(mean_crps) else None,
                mean_predicted_std=float(np.nanmean(std)) if np.isfinite(std).any() else None,
                mean_abs_error=float(np.mean(np.abs(x - point))))
