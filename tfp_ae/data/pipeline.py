"""The batching end of every training pipeline: dequantisation, the background model's input
perturbation, and `(images, images)` batches for `model.fit`, with every random draw stateless
(a function of the run's seed and the batch's position in the stream).
"""
from __future__ import annotations

import math

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.errors import InputError

SHUFFLE_BUFFER = 1024
BATCH_SIZE = 128


def dequantize(x: np.ndarray, num_levels: int = 256, seed: int | None = None) -> np.ndarray:
    """Uniform dequantisation: `(x * (L - 1) + u) / L`, `u ~ U[0, 1)` (Theis et al. 2016).

    Maps each quantised pixel `k / (L - 1)` to a point of its own bin `[k / L, (k + 1) / L)`, so
    a density on [0, 1]^D fitted to the result bounds the discrete log-likelihood:
    `log P(k) >= E_u[log p((k + u) / L)] - D log L`.

    Args:
      x: float tensor or array of pixels `k / (L - 1)`, any shape.
      num_levels: L.
      seed: arrays: an int (numpy generator) or None; tensors: a stateless seed, int tensor of
        shape `[2]` (`tf.random.stateless_uniform`: the same seed gives the same noise).
    Returns:
      same shape and type family as `x`, values in [0, 1).
    Raises:
      InputError: a tensor without a stateless seed.
    """
    if isinstance(x, np.ndarray):
        u = np.random.default_rng(seed).uniform(size=x.shape).astype(np.float32)
        return ((np.round(x * (num_levels - 1)) + u) / num_levels).astype(np.float32)
    if seed is None:
        raise InputError("dequantize: a tensor needs a stateless seed (int tensor of shape [2]), e.g. "
                         "(run seed, step); noise is never drawn from a stateful generator")
    u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=x.dtype)
    return (tf.round(x * (num_levels - 1)) + u) / num_levels


def array_images(x: np.ndarray, shuffle: bool = True, seed: int = 0) -> tf.data.Dataset:
    """Images `[N, H, W, C]` as a cached `tf.data.Dataset`, shuffled with a buffer of 1024 (the
    paper's; reshuffled every pass, op seed `seed`) when `shuffle`."""
    ds = tf.data.Dataset.from_tensor_slices(x).cache()
    return ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True) if shuffle else ds


def make_pipeline(x: np.ndarray, batch_size: int = BATCH_SIZE, shuffle: bool = True, num_levels: int | None = None,
                  seed: int = 0, repeat: bool = False, skip_epochs: int = 0) -> tf.data.Dataset:
    """A `tf.data` pipeline of `(images, images)` pairs for `model.fit`, from images in memory.

    The images are cached, shuffled with a buffer of 1024 (reshuffled each epoch, op seed
    `seed`), then batched, dequantised and prefetched by `batch_stream` (see there for the
    stateless noise and `skip_epochs`).

    Args:
      x: float32 images `[N, H, W, C]` in [0, 1].
      num_levels: if given, dequantise each batch with `dequantize(..., num_levels, (seed, i))`.
      seed: int, the run's seed.
      repeat: repeat forever (pass `steps_per_epoch = ceil(N / batch_size)` to `fit`); epoch e is
        then the e-th reshuffle of the seeded shuffle, whatever process runs it.
      skip_epochs: with `repeat`, start at epoch `skip_epochs`.
    """
    return batch_stream(array_images(x, shuffle, seed), len(x), batch_size, num_levels, seed, repeat, skip_epochs)


def perturb(x: tf.Tensor, rate: float, num_levels: int = 256, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Replace each pixel, with probability `rate`, by a level drawn uniformly from the `L` levels
    `k / (L - 1)`: the input perturbation of the background model of Ren et al. (NeurIPS 2019,
    Section 3), with the stateless `seed` (int tensor `[2]`). Same shape as `x` `[..., H, W, C]`."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    flip = tf.random.stateless_uniform(tf.shape(x), seeds[0], dtype=x.dtype) < rate
    level = tf.random.stateless_uniform(tf.shape(x), seeds[1], 0, num_levels, dtype=tf.int32)
    return tf.where(flip, tf.cast(level, x.dtype) / (num_levels - 1), x)


def batch_stream(images: tf.data.Dataset, count: int, batch_size: int = BATCH_SIZE, num_levels: int | None = None,
                 seed: int = 0, repeat: bool = False, skip_epochs: int = 0,
                 shard_policy: tf.data.experimental.AutoShardPolicy | None = None, perturb_rate: float = 0.0,
                 perturb_levels: int = 256) -> tf.data.Dataset:
    """The end of every training pipeline: a stream of `count` images `[H, W, C]` (one epoch, in
    the order of `images`) -> batched `(images, images)` pairs for `model.fit`, prefetched.

    Every random draw is a function of `seed` and the batch's position in the stream: batch
    `i = epoch * steps + step` is dequantised with the stateless seed `(seed, i)`, so the stream is
    the same whatever thread runs the map, in every process, and after `skip_epochs`.

    Args:
      images: `tf.data.Dataset` of float32 images; with `repeat`, every pass reshuffles it by its
        own seeded shuffle, so epoch e's order depends only on the seed and e.
      count: images per epoch.
      num_levels: if given, dequantise each batch (`dequantize`).
      repeat: repeat forever (pass `steps_per_epoch = ceil(count / batch_size)` to `fit`).
      skip_epochs: with `repeat`, start at epoch `skip_epochs` (a resumed run sees the same batches
        and the same noise as an uninterrupted one).
      shard_policy: `tf.data.experimental.AutoShardPolicy` for multi-worker training (default DATA:
        every worker builds this stream and keeps its part of each batch).
      perturb_rate: train a background model: `perturb` each batch (stateless seed (seed + 7919, i)).
    """
    ds = images.batch(batch_size)
    if repeat:
        ds = ds.repeat()
    # i: the batch's position in the whole stream, counted before the skip (a scan, not `enumerate`,
    # whose range dataset would be a second, unshardable source for AutoShardPolicy.FILE)
    ds = ds.scan(tf.constant(0, tf.int64), lambda i, b: (i + 1, (i, b)))
    if repeat:
        ds = ds.skip(skip_epochs * math.ceil(count / batch_size))
    seed = tf.constant(int(seed), tf.int64)
    if perturb_rate:  # before dequantisation: the perturbed pixels are levels too
        ds = ds.map(lambda i, b: (i, perturb(b, perturb_rate, perturb_levels, tf.stack([seed + 7919, i]))),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_levels:
        ds = ds.map(lambda i, b: (i, dequantize(b, num_levels, tf.stack([seed, i]))),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (tf.data.experimental.AutoShardPolicy.DATA
                                                         if shard_policy is None else shard_policy)
    return ds.map(lambda i, b: (b, b)).with_options(options).prefetch(tf.data.AUTOTUNE)
