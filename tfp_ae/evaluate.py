"""Test metrics of a trained model: NLL and bits/dim, the paper's L2 %, PSNR/SSIM, calibration
of the variance maps and FID (wired to `tfp_ae.fid`)."""
import numpy as np

from tfp_ae import fid
from tfp_ae._tf import tf
from tfp_ae.data import dequantize
from tfp_ae.heads import bits_per_dim
from tfp_ae.predict import coverage, map_dataset, point_and_variance, point_estimates, variance_maps
from tfp_ae.data import array_split

CALIBRATION_IMAGES = 200


def calibration(model, x, point=None):
    """Can a variance map be trusted? On images `x` `[N, H, W, C]` in [0, 1]:

    `coverage_95`: fraction of test pixels inside the predicted central 95 % interval (empirical
    quantiles of 100 samples of the head's distribution; 0.95 when calibrated, lower when
    over-confident); `mean_predicted_std`: mean per-pixel predicted standard deviation (over
    pixels where the variance exists); `mean_abs_error`: mean |x - point estimate| (`point`: the
    point estimates of `x` if already computed).
    """
    if point is None:
        point, variance = point_and_variance(model, x)
    else:
        variance = variance_maps(model, x)
    std = np.sqrt(variance)
    return dict(coverage_95=float(np.mean(coverage(model, x))),
                mean_predicted_std=float(np.nanmean(std)) if np.isfinite(std).any() else None,
                mean_abs_error=float(np.mean(np.abs(x - point))))


def l2_percent(x, prediction):
    """The paper's L2 error (Ciobanu, Section 4): mean squared error x 100 between images `x`
    `[N, H, W, C]` in [0, 1] and `prediction` (point estimates, or anything that broadcasts to
    `x`: one image, a constant)."""
    return float(np.mean(np.square(x - prediction)) * 100)


def psnr_ssim(x, point):
    """Mean PSNR (dB) and SSIM of point estimates against images, both `[N, H, W, C]` in [0, 1]
    (`tf.image.psnr` / `tf.image.ssim`, max_val 1; SSIM's window shrinks to the image size)."""
    x, point = tf.constant(x), tf.constant(point)
    window = min(11, *x.shape[1:3])
    return (float(tf.reduce_mean(tf.image.psnr(x, point, max_val=1.0))),
            float(tf.reduce_mean(tf.image.ssim(x, point, max_val=1.0, filter_size=window))))


def fid_extractors(config, data):
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


def split_log_probs(model, test, num_levels, seed=0, batch_size=None, elbo=None):
    """Per-image scores of a whole split, streamed in its fixed order (never held whole).

    Args:
      test: a `tfp_ae.data.Split`.
      num_levels: L of the pixels, for the dequantised pass.
      seed: batch i is dequantised with the stateless seed `(seed, i)` (`tfp_ae.data.dequantize`).
    Returns:
      dict of `[N]` arrays, nats: `log_prob` (`model.log_prob` of the pixels in [0, 1]),
      `log_prob_dequantized` (of the uniformly dequantised pixels) and, for a VAE (unless `elbo` is
      False), `elbo`.
    """
    batches = test.elements().map(lambda x, y: x).batch(batch_size or model.eval_batch_size)
    seed = tf.constant(int(seed), tf.int64)
    deq = batches.enumerate().map(lambda i, b: dequantize(b, num_levels, tf.stack([seed, i])))
    out = dict(log_prob=map_dataset(model, batches.prefetch(2), "log_prob"),
               log_prob_dequantized=map_dataset(model, deq.prefetch(2), "log_prob"))
    if elbo is None:
        elbo = model.kind == "vae"
    if elbo:
        out["elbo"] = map_dataset(model, batches.prefetch(2), "elbo")
    return out


def evaluate(model, data, eval_images=1000, seed=0, extractors=(), test=None):
    """Test metrics of a trained model.

    Args:
      data: a `tfp_ae.data.Dataset` in memory: its first `eval_images` test images give L2 %,
        PSNR/SSIM and FID, the first 200 the calibration.
      test: the whole test split (`tfp_ae.data.Split`), streamed for the NLL; default
        `data.x_test`.
    Returns a dict with `psnr` (dB) and `ssim` of the point estimates, `calibration` (see
    `calibration`, on the first 200 test images; not for `mse`), `test_nll_nats` (mean -log p(x)
    per image on the test split, x in [0, 1]),
    `test_nll_dequantized_nats` and `bits_per_dim` (on the test split dequantised with a fixed
    seed; None for heads that are not densities), `test_images` (how many), and `l2_percent` (mean
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
        metrics["calibration"] = calibration(model, xc, point[:len(xc)] if len(point) >= len(xc) else None)
    metrics.update(test_nll_nats=nll, test_nll_dequantized_nats=nll_deq, l2_percent=l2_percent(xe, point),
                   test_images=len(scores["log_prob"]),
                   bits_per_dim=bits_per_dim(nll_deq, d, data.num_levels) if head.is_density else None)
    note = model.log_prob_note or head.nll_note
    if note:
        metrics["nll_note"] = note
    return metrics
