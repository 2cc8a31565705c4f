"""Batched predictions of a trained model on many images, through the model interface
(`tfp_ae.models.ProbabilisticModel`): log p(x), point estimates, variance maps, codes, component
points. One compiled graph per model and quantity (any batch size); results as numpy arrays.
Evaluation, figures, FID and export all read their numbers from here."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.config import UNCERTAINTIES
from tfp_ae.data import check_images, dequantize
from tfp_ae.errors import InputError
from tfp_ae.heads import SAMPLE_SEED, bits_per_dim

if TYPE_CHECKING:
    from tfp_ae.data.split import Split
    from tfp_ae.models import ProbabilisticModel
    from tfp_ae.vae import VAE

QUANTITIES = {  # fn(model, images [B, H, W, C]) -> per-image result(s)
    "log_prob": lambda m, b: m.log_prob(b, seed=SAMPLE_SEED),
    "elbo": lambda m, b: m.elbo(b)[0],
    "point": lambda m, b: m.point_estimate(b),
    "variance": lambda m, b: m.variance(b),
    "point_variance": lambda m, b: m.point_and_variance(b),
    "interval": lambda m, b: m.interval(b),
    "quartile_range": lambda m, b: tf.subtract(*reversed(m.interval(b, 0.5))),  # hi - lo of the central 50 %
    "conformal_interval": lambda m, b: m.conformal_interval(b),
    "code": lambda m, b: m.encode(b),
    "component_points": lambda m, b: m.head.component_points(m(b, training=False)),
}


def _step(model, quantity):
    """The compiled `QUANTITIES[quantity]` of `model` (traced once, unknown batch size, cached on the model)."""
    steps = model.__dict__.setdefault("_tfp_ae_steps", {})
    if quantity not in steps:
        fn, spec = QUANTITIES[quantity], tf.TensorSpec([None, *model.image_shape], tf.float32)
        steps[quantity] = tf.function(lambda b: fn(model, b), input_signature=[spec], autograph=False)
    return steps[quantity]


def _concatenate(outs):
    if isinstance(outs[0], (tuple, list)):
        return tuple(np.concatenate([o[j].numpy() for o in outs]) for j in range(len(outs[0])))
    return np.concatenate([o.numpy() for o in outs])


def map_batches(model: ProbabilisticModel, x: np.ndarray, quantity: str,
                batch_size: int | None = None) -> np.ndarray | tuple[np.ndarray, ...]:
    """`QUANTITIES[quantity]` of `model` on images `x` `[N, H, W, C]` in [0, 1], batch by batch,
    concatenated as numpy (a tuple of arrays for quantities with several results).

    `batch_size` defaults to the model's `eval_batch_size`. The graph is traced once per model and
    quantity, with an unknown batch size, and cached on the model.
    Raises:
      ValueError: bad images (see `tfp_ae.data.check_images`).
    """
    x = check_images(x, "images", image_shape=model.image_shape)
    batch_size = batch_size or model.eval_batch_size
    step = _step(model, quantity)
    return _concatenate([step(tf.constant(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def map_dataset(model: ProbabilisticModel, batches: tf.data.Dataset, quantity: str) -> np.ndarray | tuple[np.ndarray, ...]:
    """`QUANTITIES[quantity]` of `model` on a `tf.data.Dataset` of image batches `[B, H, W, C]` in
    [0, 1] (a streamed split: never held whole), concatenated as numpy per image."""
    step = _step(model, quantity)
    return _concatenate([step(b) for b in batches])


def nll_per_image(model: ProbabilisticModel, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """-log p(x) in nats for each image `[N]` of `x` `[N, H, W, C]` in [0, 1] (`model.log_prob`:
    the head's distribution, not its training loss; for a VAE the importance-sampled estimate)."""
    return -map_batches(model, x, "log_prob", batch_size)


def elbo_per_image(vae: VAE, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """The ELBO of each image `[N]`, nats (one posterior sample, closed-form KL); VAE only."""
    return map_batches(vae, x, "elbo", batch_size)


def point_estimates(model: ProbabilisticModel, x: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """The head's point estimate of each image, `[N, H, W, C]` clipped to [0, 1]."""
    return map_batches(model, x, "point", batch_size)


def variance_maps(model: ProbabilisticModel, x: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """Per-pixel variance of each image's distribution, `[N, H, W, C]` (NaN where undefined)."""
    return map_batches(model, x, "variance", batch_size)


def uncertainty_maps(model: ProbabilisticModel, x: np.ndarray, kind: str = "interval", batch_size: int = 100) -> np.ndarray:
    """Per-pixel uncertainty of each image's distribution p(x | input), `[N, H, W, C]`.

    `kind` (`tfp_ae.config.UNCERTAINTIES`):

    - `interval`: the length of the part of the pixel range [0, 1] that the central 90 % interval
      covers, `clip(hi, 0, 1) - clip(lo, 0, 1)` with `(lo, hi)` from `model.interval`; in [0, 1]
      for every head but `mse` (NaN), so maps compare across heads on one fixed scale (1: the
      interval spans every possible pixel value, e.g. a t head whose learned df ~ 0.01);
    - `conformal`: the same of the risk-controlled interval (`model.conformal_interval`: the 90 %
      interval scaled by the λ that `tfp_ae.calibration.fit_conformal` fitted; the 90 % interval itself
      until then);
    - `std`: the standard deviation (pixels); `variance` (pixels^2). Both are NaN where the variance
      does not exist (t with df <= 2).
    Raises:
      InputError: unknown `kind`, bad images.
    """
    if kind not in UNCERTAINTIES:
        raise InputError(f"unknown uncertainty {kind!r}; valid: {', '.join(UNCERTAINTIES)}")
    if kind in ("interval", "conformal"):
        lo, hi = map_batches(model, x, "interval" if kind == "interval" else "conformal_interval", batch_size)
        return np.clip(hi, 0, 1) - np.clip(lo, 0, 1)
    var = map_batches(model, x, "variance", batch_size)
    return np.sqrt(var) if kind == "std" else var


def point_and_variance(model: ProbabilisticModel, x: np.ndarray, batch_size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """`point_estimates` and `variance_maps` of `x` in one pass (MAF: one draw of 50 samples)."""
    return map_batches(model, x, "point_variance", batch_size)


def latents(model: ProbabilisticModel, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Codes `[N, prod(code_shape)]` of images `[N, H, W, C]` (`model.encode`: an autoencoder's
    bottleneck, a VAE's posterior mean), flattened."""
    return map_batches(model, x, "code", batch_size).reshape(len(x), -1)


def component_points(model: ProbabilisticModel, x: np.ndarray, batch_size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Per-component point estimates `[N, K, H, W, C]` and mixture log-densities `[N, K]` (nats)
    of images `[N, H, W, C]` (see `tfp_ae.heads.Head.component_points`).
    Raises: ValueError for a head with K = 1 or bad images."""
    if model.head.num_components < 2:
        raise InputError(f"{model.head.head_name}: component images need a mixture head (K > 1), got K=1")
    return map_batches(model, x, "component_points", batch_size)


SAMPLE_FLOATS = 2 ** 23  # bound on the draws held per batch by sample-based quantities (32 MiB of float32)


def sample_batch_size(model: ProbabilisticModel, num_samples: int, most: int) -> int:
    """Images per batch for a quantity that draws `num_samples` images per input image: at most
    `most`, and at most `SAMPLE_FLOATS` drawn values (large images: fewer per batch), at least 1."""
    return max(1, min(most, SAMPLE_FLOATS // (num_samples * int(np.prod(model.image_shape)))))


def dequantized_batches(split: Split, num_levels: int, seed: int, batch_size: int,
                        with_raw: bool = False) -> tf.data.Dataset:
    """The images of a `tfp_ae.data.Split` in its fixed order as a `tf.data.Dataset` of batches
    `[B, H, W, C]`, batch i dequantised with the stateless seed `(seed, i)` (`tfp_ae.data.dequantize`);
    with `with_raw`, `(raw batch, dequantised batch)` pairs (the input a user gives, the target scored)."""
    seed = tf.constant(int(seed), tf.int64)
    deq = lambda i, b: dequantize(b, num_levels, tf.stack([seed, i]))  # noqa: E731
    batches = split.elements().map(lambda x, y: x).batch(batch_size).enumerate()
    return batches.map(lambda i, b: (b, deq(i, b))) if with_raw else batches.map(deq)


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
