"""Test metrics of a trained model: NLL and bits/dim (mean and median), the paper's L2 %,
PSNR/SSIM, calibration of the predictive distribution (PIT coverage at several levels, CRPS) and
FID (wired to `tfp_ae.fid`)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scoringrules
from scipy import optimize

from tfp_ae import fid
from tfp_ae._tf import tf, tfd
from tfp_ae.config import RECALIBRATION_CRITERIA
from tfp_ae.data import array_split, dequantize
from tfp_ae.errors import InputError
from tfp_ae.heads import PIT_SAMPLES, SAMPLE_SEED, bits_per_dim
from tfp_ae.predict import map_dataset, point_and_variance, point_estimates, sample_batch_size, variance_maps

if TYPE_CHECKING:
    from tfp_ae.config import RunConfig
    from tfp_ae.data.arrays import Dataset
    from tfp_ae.data.split import Split
    from tfp_ae.fid import FeatureExtractor
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


def pit_values(model: ProbabilisticModel, x: np.ndarray, seed: int = 0,
               batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PIT values u = F(x) `[N, H, W, C]` and per-pixel CRPS `[N, H, W, C]` of images `x` (pixels in
    [0, 1], e.g. dequantised) under `model(x)` (`Head.pit`, `pixel_crps`), batch by batch (at most
    `sample_batch_size` images, so that the sample-based heads stay within memory)."""
    batch_size = batch_size or pit_batch_size(model)
    us, crps = [], []
    for i, start in enumerate(range(0, len(x), batch_size)):
        b = tf.constant(x[start:start + batch_size])
        dist = model(b, training=False)
        step_seed = tf.constant([int(seed), i], tf.int32)
        us.append(model.head.pit(dist, b, seed=step_seed).numpy())
        crps.append(pixel_crps(model.head, dist, b.numpy(), seed=step_seed))
    return np.concatenate(us), np.concatenate(crps)


def coverage_at(u: np.ndarray, levels: tuple[float, ...] = LEVELS) -> list[float]:
    """The fraction of PIT values `u` (any shape) inside each central interval:
    mean(|u - 1/2| <= level / 2) per level, a list in the order of `levels`."""
    dev = np.abs(np.asarray(u, np.float64) - 0.5)
    return [float(np.mean(dev <= lv / 2)) for lv in levels]


def calibration_error(coverage: Sequence[float], levels: tuple[float, ...] = LEVELS) -> float:
    """mean |coverage - level| over the levels (0 when calibrated), of `coverage_at`'s list."""
    return float(np.mean(np.abs(np.asarray(coverage) - levels)))


def calibration_by_std(u: np.ndarray, std: np.ndarray, bins: int = SPREAD_BINS) -> dict | None:
    """Calibration within groups of pixels of similar predicted spread: the pixels, ranked by their
    predicted std (`std`, same shape as the PIT values `u`), split into `bins` equal groups (ties in
    rank order); per group the `coverage` at `LEVELS` and its `calibration_error`. The calibration
    error over all pixels can hide errors that cancel (intervals too narrow on the background and
    too wide on the strokes): a calibrated model is calibrated in every group (the binning by
    predicted spread of Levi, Gispan, Giladi & Fetaya, "Evaluating and calibrating uncertainty
    prediction in regression tasks", Sensors 2022, with coverage in place of their RMSE).

    Returns:
      `{"std_edges": bins + 1 values (pixels), "coverage": bins lists of one value per level,
      "calibration_error": bins values, "mean_calibration_error"}`, or None where a pixel has no
      finite std (a t with df <= 2).
    """
    u, std = np.ravel(u), np.ravel(std)
    if not np.isfinite(std).all():
        return None
    order = np.argsort(std, kind="stable")
    groups = np.array_split(order, bins)
    coverage = [coverage_at(u[g]) for g in groups]
    errors = [calibration_error(c) for c in coverage]
    return dict(std_edges=[float(std[groups[0][0]])] + [float(std[g[-1]]) for g in groups], coverage=coverage,
                calibration_error=errors, mean_calibration_error=float(np.mean(errors)))


def calibration(model: ProbabilisticModel, x: np.ndarray, point: np.ndarray | None = None, num_levels: int = 256,
                seed: int = 0) -> dict:
    """Can the predictive distribution (and so the variance and interval maps) be trusted? On
    images `x` `[N, H, W, C]` in [0, 1], dequantised with `seed` (`dequantize`, `num_levels` L) so
    that every head's CDF is continuous at the pixels:

    - `levels` `[0.5, 0.8, 0.9, 0.95, 0.99]` and `coverage`: the fraction of pixels inside each
      central interval, from the PIT values u = F(x) (`Head.pit`: exact marginal CDFs, randomised
      ranks among 100 draws otherwise), so `coverage` equals `levels` for a calibrated model
      (the old `coverage_95`, between order statistics of 100 samples, covered about 93 % of a
      calibrated model's pixels);
    - `calibration_error`: mean |coverage - level| over the levels;
    - `pit_histogram`: the fraction of pixels in each of 20 equal bins of u (flat for a
      calibrated model; U-shaped: over-confident; peaked: under-confident);
    - `by_std`: the same within the quartiles of the pixels' predicted std (`calibration_by_std`;
      errors that cancel over all pixels show there);
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
    u, crps = pit_values(model, dequantize(np.asarray(x, np.float32), num_levels, seed=seed), seed)
    coverage = coverage_at(u)
    hist = np.histogram(np.clip(u, 0, 1), bins=PIT_BINS, range=(0, 1))[0] / u.size
    mean_crps = float(np.mean(crps))
    return dict(levels=list(LEVELS), coverage=coverage,
                calibration_error=calibration_error(coverage),
                pit_histogram=[float(h) for h in hist], by_std=calibration_by_std(u, std), images=int(len(x)),
                sigma_scale=float(model.head.sigma_scale.numpy()) if model.head.has_location else 1.0,
                crps=mean_crps if np.isfinite(mean_crps) else None,
                mean_predicted_std=float(np.nanmean(std)) if np.isfinite(std).any() else None,
                mean_abs_error=float(np.mean(np.abs(x - point))))


SIGMA_SCALE_BOUNDS = (1e-3, 1e3)
LOG_2 = math.log(2)
MIN_RECALIBRATION_IMAGES = 100


def fit_sigma_scale(model: ProbabilisticModel, pairs: tf.data.Dataset, criterion: str = "calibration",
                    bounds: tuple[float, float] = SIGMA_SCALE_BOUNDS) -> tuple[float, float, float]:
    """sigma-scaling (Laves et al., MELBA 2021, "Recalibration of aleatoric and epistemic regression
    uncertainty in medical imaging", Eq. 9): the one scalar s > 0 that, multiplying every scale of
    the head (`Head.scaled`: diagonal, Cholesky and low-rank factors, a matrix head's row scale, the
    scale of a t; every component of a mixture), minimises a criterion on held-out images:

    - `calibration` (the default): the calibration error itself, mean |coverage - level| over
      `LEVELS` of the held-out pixels' PIT values (`Head.pit`; the metric of `calibration`): the one
      s whose central intervals cover what they say. Not a proper scoring rule; the two below give
      a calibrated s only when the head's shape is right. Measured on the test images
      (docs/results/uncertainty): better than `crps` in 17 of the 24 earlier cells, the same in 6 (within ±0.001),
      worse in 1 (MNIST `student_t_diag`: 0.011 against 0.006), and much better where the shape is
      wrong (MNIST `logistic`: 0.011 against 0.062; a sigmoid-location faithful `normal_diag`, whose
      scales CRPS shrank to s = 0.52: 0.025 against 0.173);
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
        a run passes its validation images, dequantised, as both), iterated once per evaluation.
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


def l2_percent(x: np.ndarray, prediction: np.ndarray | float) -> float:
    """The paper's L2 error (Ciobanu, Section 4): mean squared error x 100 between images `x`
    `[N, H, W, C]` in [0, 1] and `prediction` (point estimates, or anything that broadcasts to
    `x`: one image, a constant)."""
    return float(np.mean(np.square(x - prediction)) * 100)


def psnr_ssim(x: np.ndarray, point: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of point estimates against images, both `[N, H, W, C]` in [0, 1]
    (`tf.image.psnr` / `tf.image.ssim`, max_val 1; SSIM's window shrinks to the image size)."""
    x, point = tf.constant(x), tf.constant(point)
    window = min(11, *x.shape[1:3])
    return (float(tf.reduce_mean(tf.image.psnr(x, point, max_val=1.0))),
            float(tf.reduce_mean(tf.image.ssim(x, point, max_val=1.0, filter_size=window))))


def fid_extractors(config: RunConfig, data: Dataset) -> tuple[list[FeatureExtractor], list[str]]:
    """The FID feature extractors a run uses (`tfp_ae.fid`): `lenet` (trained once per dataset,
    cached) when `config.fid` and the data can train it (`fid.lenet_unavailable`); `inception` when `config.fid_inception` or
    its weights are already cached. Returns (extractors, notes)."""
    extractors, notes = [], []
    why_not = fid.lenet_unavailable(data)
    if config.fid and not why_not:
        extractors.append(fid.lenet_extractor(data, verbose=config.verbose))
    elif config.fid:
        notes.append(f"no fid_lenet: {why_not}")
    if config.fid_inception or (config.fid and fid.inception_available()):
        extractors.append(fid.inception_extractor())
    return extractors, notes


def dequantized_batches(split: Split, num_levels: int, seed: int, batch_size: int) -> tf.data.Dataset:
    """The images of a `tfp_ae.data.Split` in its fixed order as a `tf.data.Dataset` of batches
    `[B, H, W, C]`, batch i dequantised with the stateless seed `(seed, i)` (`tfp_ae.data.dequantize`)."""
    seed = tf.constant(int(seed), tf.int64)
    return (split.elements().map(lambda x, y: x).batch(batch_size).enumerate()
            .map(lambda i, b: dequantize(b, num_levels, tf.stack([seed, i]))))


def split_log_probs(model: ProbabilisticModel, test: Split, num_levels: int, seed: int = 0, batch_size: int | None = None,
                    elbo: bool | None = None, raw: bool = True) -> dict[str, np.ndarray]:
    """Per-image scores of a whole split, streamed in its fixed order (never held whole).

    Args:
      test: a `tfp_ae.data.Split`.
      num_levels: L of the pixels, for the dequantised pass.
      seed: batch i is dequantised with the stateless seed `(seed, i)` (`dequantized_batches`).
      raw: also score the pixels as they are (False: only the dequantised pass).
    Returns:
      dict of `[N]` arrays, nats: `log_prob` (`model.log_prob` of the pixels in [0, 1]; with `raw`),
      `log_prob_dequantized` (of the uniformly dequantised pixels) and, for a VAE (unless `elbo` is
      False), `elbo`.
    """
    batch_size = batch_size or model.eval_batch_size
    batches = test.elements().map(lambda x, y: x).batch(batch_size)
    deq = dequantized_batches(test, num_levels, seed, batch_size)
    out = dict(log_prob_dequantized=map_dataset(model, deq.prefetch(2), "log_prob"))
    if raw:
        out["log_prob"] = map_dataset(model, batches.prefetch(2), "log_prob")
    if elbo is None:
        elbo = model.kind == "vae"
    if elbo:
        out["elbo"] = map_dataset(model, batches.prefetch(2), "elbo")
    return out


def bits_per_dim_summary(log_prob_dequantized: np.ndarray, num_dims: int, num_levels: int,
                         is_density: bool = True) -> dict | None:
    """`{"bits_per_dim", "bits_per_dim_median", "bits_per_dim_finite"}` of per-image log-densities of
    dequantised images `[N]` (nats; `tfp_ae.heads.bits_per_dim`): the mean (of the NLL, as the
    field reports it), the median over images (the likelihood is heavy-tailed: a few images can move
    the mean by orders of magnitude) and whether every image's value is finite. None for heads that
    are not densities (`is_density` False)."""
    per_image = bits_per_dim(-np.asarray(log_prob_dequantized, np.float64), num_dims, num_levels)
    return dict(bits_per_dim=bits_per_dim(float(-np.mean(log_prob_dequantized)), num_dims, num_levels)
                if is_density else None,
                bits_per_dim_median=float(np.median(per_image)) if is_density else None,
                bits_per_dim_finite=bool(np.all(np.isfinite(per_image))))


def evaluate(model: ProbabilisticModel, data: Dataset, eval_images: int = 1000, seed: int = 0,
             extractors: Sequence[FeatureExtractor] = (), test: Split | None = None) -> dict:
    """Test metrics of a trained model.

    Args:
      data: a `tfp_ae.data.Dataset` in memory: its first `eval_images` test images give L2 %,
        PSNR/SSIM and FID, the first 200 the calibration.
      test: the whole test split (`tfp_ae.data.Split`), streamed for the NLL; default
        `data.x_test`.
    Returns a dict with `psnr` (dB) and `ssim` of the point estimates, `calibration` (see
    `calibration`, on the first 200 test images; not for `mse`) and its `crps`, `test_nll_nats`
    (mean -log p(x) per image on the test split, x in [0, 1]),
    `test_nll_dequantized_nats`, `bits_per_dim` and `bits_per_dim_median` (mean and median over
    the test images dequantised with a fixed seed: the likelihood is heavy-tailed, a few images
    can move the mean by orders of magnitude; None for heads that are not densities),
    `bits_per_dim_finite` (False when any test image's score is not finite), `test_images` (how many), and `l2_percent` (mean
    squared error x 100 between the first `eval_images` test images and their point estimates,
    Ciobanu Section 4).
    For a VAE also `test_elbo_nats` (mean ELBO, a lower bound on log p(x)); its `test_nll_nats`
    is the importance-sampled estimate, so `test_nll_nats <= -test_elbo_nats` up to Monte-Carlo error.
    For each FID feature extractor in `extractors` (see `tfp_ae.fid.fid_metrics`): `fid_NAME`
    (the `eval_images` point estimates vs the same real test images), `fid_NAME_vs_noise` (the
    paper's column) and `fid_NAME_real_vs_noise`, plus `fid_NAME_info` (e.g. classifier accuracy).
    """
    head = model.head
    test = test or array_split(data.x_test, data.num_levels)
    metrics = {}
    scores = split_log_probs(model, test, data.num_levels, seed)
    if model.kind == "vae":
        metrics["test_elbo_nats"] = float(np.mean(scores["elbo"]))
    nll, nll_deq = float(-np.mean(scores["log_prob"])), float(-np.mean(scores["log_prob_dequantized"]))
    xe = data.x_test[:eval_images]
    point = point_estimates(model, xe)
    d = int(np.prod(xe.shape[1:]))
    metrics["psnr"], metrics["ssim"] = psnr_ssim(xe, point)
    for extractor in extractors:
        metrics.update(fid.fid_metrics(extractor, point, xe), **{f"fid_{extractor.name}_info": extractor.info})
    if head.has_variance:
        xc = data.x_test[:CALIBRATION_IMAGES]
        metrics["calibration"] = calibration(model, xc, point[:len(xc)] if len(point) >= len(xc) else None,
                                             data.num_levels, seed)
        metrics["crps"] = metrics["calibration"]["crps"]
    metrics.update(test_nll_nats=nll, test_nll_dequantized_nats=nll_deq, l2_percent=l2_percent(xe, point),
                   test_images=len(scores["log_prob"]),
                   **bits_per_dim_summary(scores["log_prob_dequantized"], d, data.num_levels, head.is_density))
    note = model.log_prob_note or head.nll_note
    if note:
        metrics["nll_note"] = note
    return metrics
