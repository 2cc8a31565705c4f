"""sigma-scaling (Laves et al., MELBA 2021): one scalar that multiplies every scale of a head, fitted
on held-out images (`fit_sigma_scale`), and the step of a run that fits it and refuses a scale that
breaks the likelihood (`recalibrate`)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import optimize

from tfp_ae._tf import tf
from tfp_ae.calibration.local import fit_local_scales, reset_local_scales
from tfp_ae.calibration.pit import calibration, calibration_error, coverage_at, crps_from, crps_inputs, pit_batch_size
from tfp_ae.calibration.pit_recalibration import fit_pit_recalibration, reset_pit_recalibration
from tfp_ae.config import RECALIBRATION_CRITERIA
from tfp_ae.errors import InputError
from tfp_ae.predict import bits_per_dim_summary, dequantized_batches, split_log_probs

if TYPE_CHECKING:
    from tfp_ae.data.split import Split
    from tfp_ae.models import ProbabilisticModel

SIGMA_SCALE_BOUNDS = (1e-3, 1e3)
LOG_2 = math.log(2)
MIN_RECALIBRATION_IMAGES = 100
MAX_BITS_PER_DIM_LOSS = 0.1  # recalibrate: a scale that costs the held-out images more bits/dim is not applied
HELD_OUT_SEED = 104729  # recalibrate: the held-out images are dequantised with the stateless seeds (seed + this, i)
REFINEMENTS = {  # recalibrate's `method` beyond σ-scaling: what it does, how it is fitted and undone
    "local": ("local factors of the pixel scales", fit_local_scales, reset_local_scales),
    "pit": ("a histogram of the PIT per 1/32 of the pixel scales", fit_pit_recalibration, reset_pit_recalibration)}


def fit_sigma_scale(model: ProbabilisticModel, pairs: tf.data.Dataset, criterion: str = "calibration",
                    bounds: tuple[float, float] = SIGMA_SCALE_BOUNDS) -> tuple[float, float, float]:
    """sigma-scaling (Laves et al., MELBA 2021, "Recalibration of aleatoric and epistemic regression
    uncertainty in medical imaging", Eq. 9): the one scalar s > 0 that, multiplying every scale of
    the head (`Head.scaled`: diagonal, Cholesky and low-rank factors, a matrix head's row scale, the
    scale of a t; every component of a mixture), minimises a criterion on held-out images:

    - `calibration` (the default): the calibration error itself, mean |coverage - level| over
      `LEVELS` of the held-out pixels' PIT values (`Head.pit`; the metric of `calibration`): the one
      s whose central intervals cover what they say. Not a proper scoring rule; the two below give
      a calibrated s only when the head's shape is right (docs/results/uncertainty compares them);
    - `crps`: the mean per-pixel CRPS (`pixel_crps`), minimum-CRPS estimation (Gneiting, Raftery,
      Westveld & Goldman, Monthly Weather Review 2005, "Calibrated probabilistic forecasting using
      ensemble model output statistics and minimum CRPS estimation"): the CRPS grows linearly in an
      outlying pixel's error, the NLL quadratically, so the few held-out pixels far outside a
      collapsed variance (a pixel black in every training image) do not inflate s;
    - `nll`: the mean NLL of the images, Laves et al.'s criterion (inflated by those pixels).

    Found by stepping log s by log 2 from s = 1 downhill to a bracket, then Brent's bounded search
    inside it (`scipy.optimize.minimize_scalar`), and assigned to `model.head.sigma_scale` (a
    non-trainable weight, so checkpoints, `save`, `export` and TFLite carry it).

    Args:
      pairs: a `tf.data.Dataset` of `(inputs, targets)` batches `[B, H, W, C]` (pixels in [0, 1];
        a run passes its held-out images, raw as inputs and dequantised as targets), iterated once per evaluation.
      criterion: `calibration`, `crps` (pixels) or `nll` (nats per image).
      bounds: the range of s searched.
    Returns:
      (s, the criterion's mean at s = 1, at s).
    Raises:
      InputError: the head has no scale to recalibrate (`Head.has_location` is False), or an
        unknown criterion.
    """
    head = model.head
    if not head.has_location:
        raise InputError(f"head {head.head_name!r} has no scale to recalibrate (--recalibrate takes the heads with "
                         "a location and scales: normal, Student-t, low-rank, matrix and logistic)")
    if criterion not in RECALIBRATION_CRITERIA:
        raise InputError(f"recalibration criterion must be one of {', '.join(RECALIBRATION_CRITERIA)}; got {criterion!r}")
    # compiled: distributions built eagerly are freed only by Python's cycle collector, and a full
    # covariance's ([B, D, D] a batch) piled up to 24 GB over the search's evaluations
    nll = tf.function(lambda x, y: -model(x, training=False).log_prob(y), reduce_retracing=True)
    kinds = []

    def crps_step(x):
        kind, params = crps_inputs(head, model(x, training=False))
        kinds.append(kind)  # at tracing: the kind is static
        return params
    crps_step = tf.function(crps_step, reduce_retracing=True)

    pit = tf.function(lambda x, y: head.pit(model(x, training=False), y), reduce_retracing=True)

    def batch_total(x, y):
        """The criterion summed over the batch's images (calibration: each level's coverage, times the
        number of images, which all have as many pixels), and the number of images."""
        if criterion == "nll":
            values = nll(x, y).numpy().astype(np.float64)
        elif criterion == "calibration":
            u = pit(x, y).numpy()
            return np.array(coverage_at(u)) * len(u), len(u)
        else:
            params = crps_step(x)  # traced first: then kinds[-1] is its kind
            values = crps_from(kinds[-1], params, y.numpy()).reshape(len(y), -1).mean(axis=1)
        return values.sum(), len(values)

    def mean_score(log_s):
        head.sigma_scale.assign(math.exp(log_s))
        total, count = 0.0, 0
        for x, y in pairs:
            batch, n = batch_total(x, y)
            total, count = total + batch, count + n
        if criterion == "calibration":
            return calibration_error(total / count)
        return total / count if np.isfinite(total) else np.inf

    log_s, best, before = _minimise_log_scale(mean_score, tuple(math.log(b) for b in bounds))
    s = math.exp(log_s)
    head.sigma_scale.assign(s)
    return s, before, best


def _minimise_log_scale(f, bounds, step=LOG_2):
    """The minimiser of `f(log s)` within `bounds`: steps of a factor 2 from s = 1 downhill until `f`
    rises (a bracket: the calibration error is flat far from its minimum, where a search over the whole
    range was lost), then Brent's bounded search inside the bracket. Returns (log s, f there, f(0))."""
    values = {0.0: f(0.0)}
    at = lambda x: values[x] if x in values else values.setdefault(x, f(x))  # noqa: E731
    inside = lambda x: bounds[0] <= x <= bounds[1]  # noqa: E731
    best = 0.0
    for direction in (step, -step):
        while inside(best + direction) and at(best + direction) < at(best):
            best += direction
        if best != 0.0:
            break
    lo, hi = max(bounds[0], best - step), min(bounds[1], best + step)
    found = optimize.minimize_scalar(f, bounds=(lo, hi), method="bounded", options=dict(xatol=1e-4))
    if found.fun < at(best):
        return float(found.x), float(found.fun), values[0.0]
    return best, at(best), values[0.0]


def _harm(worse: float) -> str:
    """What a refused recalibration does to the held-out bits/dim, for its one line."""
    if not np.isfinite(worse):  # e.g. a scale at which some image's log-density is NaN
        return "it makes the held-out likelihood non-finite (bits/dim NaN or infinite)"
    return f"it makes the held-out likelihood worse by {worse:.3g} bits/dim"


def recalibrate(model: ProbabilisticModel, held_out: Split, num_levels: int, seed: int, test_images: np.ndarray, test: Split,
                criterion: str = "calibration", force: bool = False, method: str = "scale") -> dict:
    """sigma-scaling of a trained autoencoder (`fit_sigma_scale`, minimising
    `criterion`) on the held-out `Split` (its images dequantised with the stateless seeds
    (seed + `HELD_OUT_SEED`, i) as targets; the inputs raw, as users give them). Returns `{"sigma_scale", "criterion",
    "validation_images", "validation_score_before", "validation_score"}` (the criterion's value:
    mean CRPS in pixels, mean NLL in nats per image, or the calibration error), the test split's `bits_per_dim_before` and
    `bits_per_dim_median_before` (s = 1; `evaluate` reports them after), and `"before"`: the
    calibration (`coverage`, `calibration_error`) of `test_images` before the scale was applied.
    Starts from s = 1 (a run resumed after it saved a fitted s is fitted afresh).

    The guard: the held-out images' dequantised bits/dim (`validation_bits_per_dim_before` / `_after`,
    mean and `_median_`) are measured at s = 1 and at the fitted s; a scale that makes the mean worse by
    more than `MAX_BITS_PER_DIM_LOSS` is not applied (s goes back to 1, `"applied": False`, one line says
    so) unless `force`. A head that is not a density (no bits/dim) is not guarded.

    `method` `local` or `pit`: then also local recalibration (`fit_local_scales`) or PIT recalibration
    (`fit_pit_recalibration`), on the same pairs, under the same guard measured against the held-out bits/dim
    before any recalibration; `"local"` or `"pit"` in the result (the other None): what it fitted, the held-out
    calibration error within the std quartiles before and after, held-out bits/dim after, and `applied`."""
    model.head.sigma_scale.assign(1.0)
    if model.head.local_scales:
        reset_local_scales(model)
    if getattr(model.head, "pit_recalibration", False):
        reset_pit_recalibration(model)
    cal = calibration(model, test_images, num_levels=num_levels, seed=seed)
    before = dict(coverage=cal["coverage"], calibration_error=cal["calibration_error"])
    scores = split_log_probs(model, test, num_levels, seed, elbo=False, raw=False)["log_prob_dequantized"]
    bpd = bits_per_dim_summary(scores, int(np.prod(test.image_shape)), num_levels, model.head.is_density)
    held_before = _held_out_bits(model, held_out, num_levels, seed)
    # the CRPS and the PIT hold each image's marginals or draws: batches bounded like `pit_values`' (a full covariance
    # ran out of memory in batches of 500: 1.2 GB a tensor)
    batch_size = pit_batch_size(model) if criterion in ("crps", "calibration") else model.eval_batch_size
    # the inputs as users give them (raw), the targets dequantised (as `calibration` scores them)
    pairs = dequantized_batches(held_out, num_levels, seed + HELD_OUT_SEED, batch_size, with_raw=True).prefetch(2)
    print(f"recalibrating: sigma-scaling by {criterion} on {held_out.count} held-out training images", flush=True)
    s, score_before, score_after = fit_sigma_scale(model, pairs, criterion)
    print(f"sigma_scale {s:.4f}: held-out {criterion} {score_before:.5g} -> {score_after:.5g}", flush=True)
    held_after = _held_out_bits(model, held_out, num_levels, seed)
    worse = held_after["bits_per_dim"] - held_before["bits_per_dim"] if model.head.is_density else 0.0
    applied = force or worse <= MAX_BITS_PER_DIM_LOSS  # NaN (a non-finite likelihood) is not an improvement
    if not applied:
        model.head.sigma_scale.assign(1.0)
        print(f"sigma-scaling not applied: {_harm(worse)} "
              f"({held_before['bits_per_dim']:.4g} -> {held_after['bits_per_dim']:.4g}; more than "
              f"{MAX_BITS_PER_DIM_LOSS}); the model keeps s = 1 (--force-recalibration applies it anyway)", flush=True)
    refined = None
    if method != "scale":
        what, fit, reset = REFINEMENTS[method]
        print(f"recalibrating: {what} on {held_out.count} held-out training images", flush=True)
        refined = fit(model, pairs)
        held_refined = _held_out_bits(model, held_out, num_levels, seed)
        worse = held_refined["bits_per_dim"] - held_before["bits_per_dim"] if model.head.is_density else 0.0
        refined.update(applied=bool(force or worse <= MAX_BITS_PER_DIM_LOSS),
                       **{f"validation_{k}_after": v for k, v in held_refined.items()})
        print(f"{method} recalibration: held-out calibration error within the std quartiles "
              f"{np.round(refined['calibration_error_by_std_before'] or [], 3).tolist()} -> "
              f"{np.round(refined['calibration_error_by_std_after'] or [], 3).tolist()}", flush=True)
        if not refined["applied"]:
            reset(model)
            print(f"{method} recalibration not applied: {_harm(worse)} "
                  f"against before recalibrating (more than {MAX_BITS_PER_DIM_LOSS}; --force-recalibration applies it)",
                  flush=True)
    return dict(sigma_scale=s if applied else 1.0, fitted_sigma_scale=s, applied=applied, criterion=criterion,
                method=method, local=refined if method == "local" else None, pit=refined if method == "pit" else None,
                validation_images=held_out.count, validation_score_before=score_before, validation_score=score_after,
                **{f"validation_{k}_before": v for k, v in held_before.items()},
                **{f"validation_{k}_after": v for k, v in held_after.items()},
                bits_per_dim_before=bpd["bits_per_dim"], bits_per_dim_median_before=bpd["bits_per_dim_median"],
                before=before)


def _held_out_bits(model, held_out, num_levels, seed):
    """Mean and median dequantised bits/dim of the held-out images (the dequantisation of `recalibrate`)."""
    if not model.head.is_density:
        return dict(bits_per_dim=None, bits_per_dim_median=None)
    scores = split_log_probs(model, held_out, num_levels, seed + HELD_OUT_SEED, elbo=False, raw=False)
    scores = scores["log_prob_dequantized"]
    summary = bits_per_dim_summary(scores, int(np.prod(held_out.image_shape)), num_levels)
    return dict(bits_per_dim=summary["bits_per_dim"], bits_per_dim_median=summary["bits_per_dim_median"])
