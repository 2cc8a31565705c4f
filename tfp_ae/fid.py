"""Fréchet Inception Distance (Heusel et al. 2017) with two feature extractors.

FID(a, b) = |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between Gaussian fits (mean,
covariance) of the features of two image sets (Heusel et al., Eq. 6; matrix square root by
`scipy.linalg.sqrtm`). Lower is closer.

Extractors:

- `lenet`: the penultimate (128-unit) layer of a small CNN classifier trained once per dataset on
  its training split (2 epochs, Adam; more on small datasets) and cached on disk (`$TFP_AE_CACHE_DIR`, default
  `~/.cache/tfp_ae`); its test accuracy is reported with every number it produces. Always
  available offline; its numbers are comparable only with other `fid_lenet` numbers of the same
  dataset.
- `inception`: the standard InceptionV3 pool features (2048, ImageNet weights, images resized to
  299x299, grey to RGB). Used only when Keras already holds the weights
  (`~/.keras/models/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`) or when asked to
  download them, because the download needs the internet.

The paper's FID column is not FID to real images: its code compares each image set with uniform
noise U[0, 1]. `fid_vs_noise` reproduces that number for comparison with the paper's column
(where "lower is better" does not hold).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

from tfp_ae._tf import tf, tfk
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.data.arrays import Dataset

L = tfk.layers
CLASSIFIER_EPOCHS = 2
CLASSIFIER_MIN_IMAGES = 30000  # small datasets get more epochs: at least this many images seen
INCEPTION_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
NOISE_SEED = 1234


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (Heusel et al. 2017, Eq. 6).

    Args: means `[F]`, covariances `[F, F]`. Returns a float >= 0 (feature units squared).
    A singular product C1 C2 gets 1e-6 added to both diagonals (as in the reference `pytorch-fid`).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    with warnings.catch_warnings():  # rank-deficient covariances (dead ReLU features) are expected
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(cov1))
        covmean = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = np.real(covmean)
    return float(max(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean), 0.0))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets `[N, F]` and `[M, F]` (N, M >= 2).
    Raises ValueError for fewer than 2 rows or different feature sizes."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(f"features must be [N, F] and [M, F] with N, M >= 2; got {a.shape} and {b.shape}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def noise_images(n: int, image_shape: tuple[int, int, int], seed: int = NOISE_SEED) -> np.ndarray:
    """`n` images of uniform noise U[0, 1], `[n, H, W, C]` (the paper's FID reference set)."""
    return np.random.default_rng(seed).uniform(size=(n, *image_shape)).astype(np.float32)


class FeatureExtractor:
    """Maps images `[N, H, W, C]` in [0, 1] to features `[N, F]`; `name` ('lenet' or 'inception')
    and `info` (a dict saved with the metrics, e.g. the classifier's test accuracy)."""

    def __init__(self, name: str, model: tfk.Model, info: str, preprocess: Callable | None = None):
        self.name, self.model, self.info = name, model, info
        self._preprocess = preprocess or (lambda x: x)
        self._fn = tf.function(lambda x: self.model(self._preprocess(x), training=False), autograph=False,
                               reduce_retracing=True)

    def features(self, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
        """Features `[N, F]` (float64) of images `[N, H, W, C]` in [0, 1]."""
        images = np.asarray(images, np.float32)
        return np.concatenate([self._fn(tf.constant(images[i:i + batch_size])).numpy()
                               for i in range(0, len(images), batch_size)]).astype(np.float64)

    def fid(self, a: np.ndarray, b: np.ndarray) -> float:
        """FID between image sets `a` `[N, H, W, C]` and `b` `[M, H, W, C]`, both in [0, 1]."""
        return fid_from_features(self.features(a), self.features(b))


def cache_dir() -> Path:
    """Where trained classifiers are kept: `$TFP_AE_CACHE_DIR`, else `~/.cache/tfp_ae`."""
    return Path(os.environ.get("TFP_AE_CACHE_DIR") or Path.home() / ".cache" / "tfp_ae")


def _classifier(image_shape, num_classes):
    """LeNet-style CNN: two conv(3x3, ReLU) + 2x2 max-pool blocks (32, 64 filters), Dense(128, ReLU)
    (the feature layer), Dense(num_classes) logits."""
    features = tfk.Sequential([L.InputLayer(image_shape), L.Conv2D(32, 3, padding="same", activation="relu"),
                               L.MaxPool2D(2), L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPool2D(2),
                               L.Flatten(), L.Dense(128, activation="relu")], name="lenet_features")
    model = tfk.Sequential([features, L.Dropout(0.3), L.Dense(num_classes)], name="lenet")
    model.build((None, *image_shape))
    return features, model


def _data_key(data):
    """Cache key: dataset name, image shape and a hash of its training split."""
    h = hashlib.sha1(np.ascontiguousarray(data.x_train[:2000]).tobytes())
    h.update(np.ascontiguousarray(data.y_train).tobytes())
    shape = "x".join(map(str, data.x_train.shape[1:]))
    return f"{Path(str(data.name)).stem}_{shape}_{h.hexdigest()[:10]}"


def lenet_unavailable(data: Dataset) -> str:
    """Why the `lenet` classifier cannot be trained on `data` (a sentence), or "" when it can:
    it needs labels for both splits with at least two classes, and images of at least 4 x 4
    pixels (its two 2 x 2 max-pooling layers)."""
    if data.y_train is None or data.y_test is None:
        return "the dataset has no labels (y_train, y_test) to train its classifier"
    if len(np.unique(data.y_train)) < 2:
        return "the training labels have one class; a classifier's features would mean nothing"
    if min(data.x_train.shape[1:3]) < 4:
        return f"its classifier pools twice 2 x 2 and needs images of at least 4 x 4, got {data.x_train.shape[1:3]}"
    return ""


def lenet_extractor(data: Dataset, epochs: int = CLASSIFIER_EPOCHS, seed: int = 0, verbose: int = 0) -> FeatureExtractor:
    """The `lenet` extractor for a dataset: trains the classifier on `data.x_train` / `y_train`
    the first time (then loads it from the cache) and reports its accuracy on `data.x_test`.

    Args:
      data: a `tfp_ae.data.Dataset` with labels; pixels in [0, 1].
    Returns:
      a `FeatureExtractor` with `info = {"classifier": "lenet", "test_accuracy": ..., "cache": path}`.
    Raises:
      ValueError: the dataset has no labels (e.g. an .npz file without y_train / y_test).
    """
    if data.y_train is None or data.y_test is None:
        raise InputError(f"{data.name}: fid_lenet needs class labels (y_train, y_test) to train its classifier")
    num_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    features, model = _classifier(data.x_train.shape[1:], num_classes)
    folder = cache_dir() / "fid"
    key = _data_key(data)
    weights, meta = folder / f"{key}.weights.h5", folder / f"{key}.json"
    if weights.exists() and meta.exists():
        model.load_weights(weights)
        info = json.loads(meta.read_text())
    else:
        tf.keras.utils.set_random_seed(seed)
        model.compile(tfk.optimizers.Adam(), tfk.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        epochs = max(epochs, math.ceil(CLASSIFIER_MIN_IMAGES / len(data.x_train)))
        if verbose:
            print(f"training the FID classifier (lenet) for {data.name}: {epochs} epochs on "
                  f"{len(data.x_train)} images, cached in {folder}", flush=True)
        model.fit(data.x_train, data.y_train, batch_size=128, epochs=epochs, shuffle=True, verbose=verbose)
        accuracy = float(model.evaluate(data.x_test, data.y_test, batch_size=500, verbose=0)[1])
        info = dict(classifier="lenet", dataset=str(data.name), epochs=epochs, test_accuracy=accuracy)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, weights)
        tmp = folder / f"{key}.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, meta)
    return FeatureExtractor("lenet", features, dict(info, cache=str(weights)))


def inception_available() -> bool:
    """True when Keras already holds the InceptionV3 weights (no download needed)."""
    return (Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / INCEPTION_WEIGHTS).exists()


def inception_extractor() -> FeatureExtractor:
    """The standard InceptionV3 pool-feature extractor (2048 features; downloads the ImageNet
    weights through Keras if they are not cached, which needs the internet).
    Raises: whatever Keras raises when the weights cannot be had (e.g. no network)."""
    net = tfk.applications.InceptionV3(include_top=False, pooling="avg", weights="imagenet")

    def preprocess(x):
        x = tf.image.resize(x, (299, 299))
        x = tf.image.grayscale_to_rgb(x) if x.shape[-1] == 1 else x
        return x * 2.0 - 1.0  # InceptionV3's [-1, 1] input

    return FeatureExtractor("inception", net, dict(classifier="inception_v3_imagenet"), preprocess)


def fid_metrics(extractor: FeatureExtractor, reconstructions: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """FID numbers for `metrics.json`: `fid_{name}` (reconstructions vs real images),
    `fid_{name}_vs_noise` (reconstructions vs U[0, 1] noise, the paper's column) and
    `fid_{name}_real_vs_noise` (the real images vs noise: the paper's "test images" row).
    Images `[N, H, W, C]` in [0, 1]."""
    f_rec, f_real = extractor.features(reconstructions), extractor.features(real)
    f_noise = extractor.features(noise_images(len(real), real.shape[1:]))
    n = extractor.name
    return {f"fid_{n}": fid_from_features(f_rec, f_real), f"fid_{n}_vs_noise": fid_from_features(f_rec, f_noise),
            f"fid_{n}_real_vs_noise": fid_from_features(f_real, f_noise)}
