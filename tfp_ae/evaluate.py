"""Test metrics of a trained model: NLL and bits/dim (mean and median), the paper's L2 %,
PSNR/SSIM, the calibration of the predictive distribution (computed by `tfp_ae.calibration`) and
FID (wired to `tfp_ae.fid`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tfp_ae import fid
from tfp_ae._tf import tf
from tfp_ae.calibration import CALIBRATION_IMAGES, calibration
from tfp_ae.data import array_split
from tfp_ae.predict import bits_per_dim_summary, point_estimates, split_log_probs

if TYPE_CHECKING:
    from tfp_ae.config import RunConfig
    from tfp_ae.data.arrays import Dataset
    from tfp_ae.data.split import Split
    from tfp_ae.fid import FeatureExtractor
    from tfp_ae.models import ProbabilisticModel


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
