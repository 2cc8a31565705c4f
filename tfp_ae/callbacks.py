"""Keras callbacks of the package: `ImageSummaries` writes what a probabilistic autoencoder
predicts to TensorBoard while it trains (`tfp-ae train --tensorboard`)."""
from __future__ import annotations

import os
import time

import numpy as np
from matplotlib import colormaps

from tfp_ae._tf import tf, tfk
from tfp_ae.data import check_images, dequantize
from tfp_ae.heads import bits_per_dim

IMAGES_DIR = "images"     # the summaries' folder under the TensorBoard log folder
VIRIDIS = colormaps["viridis"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)   # [256, 3] RGB in [0, 1]


def colour_map(maps: tf.Tensor, vmin: float = 0.0, vmax: float = 1.0) -> tf.Tensor:
    """Viridis RGB images `[N, H, W, 3]` in [0, 1] of maps `[N, H, W, C]` (channels averaged) on the
    fixed scale `[vmin, vmax]` (values outside are clipped; NaN and inf show as the top colour), so
    that the colours of different epochs compare."""
    m = tf.reduce_mean(maps, axis=-1)
    m = tf.where(tf.math.is_finite(m), m, vmax)
    idx = tf.cast(tf.round(255 * tf.clip_by_value((m - vmin) / (vmax - vmin), 0.0, 1.0)), tf.int32)
    return tf.gather(tf.constant(VIRIDIS), idx)


class ImageSummaries(tfk.callbacks.Callback):
    """At the end of every `every`-th epoch, write a fixed set of validation images to TensorBoard
    (`LOG_DIR/images`, step = epoch):

    - `inputs`, `point_estimates` (the head's point estimate, Ciobanu Section 3) and
      `interval_width` (the width of each pixel's central 90 % interval, pixels in [0, 1], viridis
      on a fixed 0-1 scale; channels averaged for colour images);
    - `components` for mixtures (K > 1): each input's K component means (modes for t heads) side by side;
    - `prior_samples`: point estimates of p(x | z) for z from the model's prior (N(0, I)), with
      the same z every epoch;
    - the scalar `bits_per_dim` of those images, uniformly dequantised with a fixed seed
      (`nll / (D ln 2) + log2 L`; none for heads that are not densities, e.g. `bernoulli`).

    Everything is computed in one compiled function, so the cost per epoch is one forward pass of
    a few images (measured in `docs/benchmarks/image_summaries.md`).

    Args:
      log_dir: the TensorBoard log folder (the same as Keras' `TensorBoard` callback's).
      images: `[N, H, W, C]` validation images in [0, 1]; the first `max_images` are shown.
      num_levels: quantisation levels of the pixels (256 for 8-bit images).
      max_images: images per summary.
      every: write every `every` epochs.
      seed: seed of the prior samples and of the dequantisation noise.
      interval_samples: draws per pixel for heads whose interval is estimated from samples
        (mixtures, MAF, Bernoulli); 200, not `Head.interval`'s 1000, to keep the cost per epoch low.
    Raises:
      InputError: `images` is not a finite `[N, H, W, C]` array in [0, 1].
    """

    def __init__(self, log_dir: str | os.PathLike, images: np.ndarray, num_levels: int = 256, max_images: int = 8,
                 every: int = 1, seed: int = 0, interval_samples: int = 200):
        super().__init__()
        self.interval_samples = int(interval_samples)
        self.images = check_images(np.asarray(images)[:max_images], "ImageSummaries images")
        self.log_dir, self.num_levels, self.every, self.seed = str(log_dir), int(num_levels), int(every), int(seed)
        self._writer = self._fn = None
        self.seconds = []   # wall time of each epoch's summaries (computing and writing)

    def _summaries(self, x, x_deq, z_seed):
        model, head = self.model, self.model.head
        dist = model(x, training=False)
        width = head.interval_width(dist, num_samples=self.interval_samples)
        out = dict(inputs=x, point_estimates=head.point_estimate(dist), interval_width=colour_map(width))
        if head.num_components > 1:
            points = head.component_points(dist)[0]                          # [N, K, H, W, C]
            out["components"] = tf.concat(tf.unstack(points, axis=1), axis=2)  # [N, H, K*W, C]
        n = tf.shape(x)[0]
        out["prior_samples"] = model.sample_images(n, seed=z_seed)
        if head.is_density:
            nll = -tf.reduce_mean(model.log_prob(x_deq))
            out["bits_per_dim"] = bits_per_dim(nll, int(np.prod(model.image_shape)), self.num_levels)
        return out

    def on_train_begin(self, logs: dict | None = None):
        self._writer = tf.summary.create_file_writer(f"{self.log_dir}/{IMAGES_DIR}")
        self._fn = tf.function(self._summaries)
        self._x = tf.constant(self.images)
        self._x_deq = tf.constant(dequantize(self.images, self.num_levels, seed=self.seed))

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if (epoch + 1) % self.every:
            return
        start = time.perf_counter()
        out = self._fn(self._x, self._x_deq, tf.constant([self.seed, 0], tf.int32))
        with self._writer.as_default(step=epoch):
            for name, value in out.items():
                if name == "bits_per_dim":
                    tf.summary.scalar(name, value)
                else:
                    tf.summary.image(name, tf.clip_by_value(value, 0.0, 1.0), max_outputs=len(self.images))
        self._writer.flush()
        self.seconds.append(time.perf_counter() - start)

    def on_train_end(self, logs: dict | None = None):
        if self._writer is not None:
            self._writer.close()


def tensorboard_callback(log_dir: str | os.PathLike) -> tfk.callbacks.TensorBoard:
    """Keras' `TensorBoard` callback writing to `log_dir`.

    Raises:
      ImportError: the `tensorboard` package is missing (not installed with TensorFlow 2.21);
        the message says how to install it.
    """
    try:
        import tensorboard  # noqa: F401  (an optional dependency: checked before training starts)
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install 'tfp_ae[tensorboard]' "
                          "(or pip install tensorboard)") from None
    return tfk.callbacks.TensorBoard(log_dir=str(log_dir))
