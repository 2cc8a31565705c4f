"""Datasets: MNIST, Fashion-MNIST (IDX files) and scikit-learn's 8x8 digits, as images in [0, 1].

Every loader returns float32 images of shape `[N, H, W, 1]` with values `k / (L - 1)` for
integer levels `k` in `0..L-1` (`L = 256` for the 8-bit IDX datasets, `L = 17` for `digits`),
and int64 labels of shape `[N]`.
"""
import gzip
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.errors import InputError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_FOLDERS = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
DATASETS = ("mnist", "fashion_mnist", "digits")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SHUFFLE_BUFFER = 1024
BATCH_SIZE = 128


class DataNotFoundError(FileNotFoundError):
    """No copy of a dataset was found; the message lists where we looked and how to get it."""


@dataclass
class Dataset:
    """A dataset split into train and test arrays.

    Attributes:
      name: dataset name (`mnist`, `fashion_mnist`, `digits`).
      x_train, x_test: float32 images `[N, H, W, 1]` in [0, 1].
      y_train, y_test: int64 labels `[N]`, or None for a source without labels.
      num_levels: number of intensity levels L of the quantised pixels (256 for 8 bits).
      source: where the data was read from.
    """
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_levels: int
    source: str

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])


def read_idx(path):
    """Read an IDX file (optionally gzip-compressed) into a uint8 array.

    Format (LeCun et al.): big-endian magic `0x000008NN` (0x08 = unsigned byte, NN = number of
    dimensions), one uint32 per dimension, then the raw values.

    Returns:
      uint8 array of the shape the header declares.
    Raises:
      ValueError: wrong magic number, unsupported data type, or a file whose size does not
        match its header (truncated or padded); the message names the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on a truncated/corrupt stream
        raise InputError(f"{path}: cannot read IDX file ({e}); the file is corrupt or truncated")
    if len(raw) < 4:
        raise InputError(f"{path}: IDX file too short ({len(raw)} bytes) for a header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise InputError(f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x00000801 "
                         "(labels) or 0x00000803 (images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: IDX header truncated")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise InputError(f"{path}: IDX header declares shape {shape} ({expected} values) but the "
                         f"file holds {len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_candidates(name, data_dir):
    """Folders that may hold the IDX files of `name`, in search order."""
    folder = IDX_FOLDERS[name]
    places = []
    if data_dir:
        places += [Path(data_dir) / folder, Path(data_dir)]
    if os.environ.get("TFP_AE_DATA_DIR"):
        places.append(Path(os.environ["TFP_AE_DATA_DIR"]) / folder)
    if name == "fashion_mnist":
        places.append(DEBIAN_FASHION_MNIST)
    places.append(Path.home() / ".keras" / "datasets" / folder)
    return places


def _has_idx(folder):
    return all((folder / f).exists() for pair in IDX_FILES.values() for f in pair)


def find_idx_dir(name, data_dir=None):
    """The first folder holding all four IDX files of `name`, or None.

    Search order: `data_dir` (or its `mnist/` / `fashion-mnist/` subfolder), `$TFP_AE_DATA_DIR/<folder>`,
    Debian's `/usr/share/datasets/fashion-mnist` (Fashion-MNIST only), `~/.keras/datasets/<folder>`.
    """
    for place in _idx_candidates(name, data_dir):
        if _has_idx(place):
            return place
    return None


def dataset_available(name, data_dir=None):
    """True when `name` can be loaded without a download."""
    if name == "digits":
        return True
    return find_idx_dir(name, data_dir) is not None or _keras_npz(name).exists()


def _keras_npz(name):
    return Path.home() / ".keras" / "datasets" / f"{name}.npz"


def _from_tfds(name):
    import tensorflow_datasets as tfds
    arrays = {}
    for split in ("train", "test"):
        x, y = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, as_supervised=True))
        arrays[split] = (x.reshape(-1, 28, 28), y)
    return arrays


def _not_found(name, data_dir, error):
    looked = "\n  ".join(str(p) for p in _idx_candidates(name, data_dir) + [_keras_npz(name)])
    get = ("  python -c \"import tensorflow_datasets as tfds; tfds.load('%s')\"   (downloads; needs internet)\n"
           "  or point TFP_AE_DATA_DIR (or --data-dir) at a folder holding %s/ with the four IDX .gz files"
           % (name, IDX_FOLDERS[name]))
    if name == "fashion_mnist":
        get += "\n  or: sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu, no download at run time)"
    return DataNotFoundError(f"dataset {name!r} not found. Looked in:\n  {looked}\nand tensorflow-datasets "
                             f"failed ({type(error).__name__}: {error}).\nGet it with:\n{get}")


def _load_idx_dataset(name, data_dir):
    folder = find_idx_dir(name, data_dir)
    if folder is not None:
        arrays = {split: (read_idx(folder / fi), read_idx(folder / fl))
                  for split, (fi, fl) in IDX_FILES.items()}
        source = str(folder)
    elif _keras_npz(name).exists():
        with np.load(_keras_npz(name)) as f:
            arrays = {"train": (f["x_train"], f["y_train"]), "test": (f["x_test"], f["y_test"])}
        source = str(_keras_npz(name))
    else:
        try:
            arrays, source = _from_tfds(name), "tensorflow-datasets"
        except Exception as e:  # no network, tfds not configured, ...
            raise _not_found(name, data_dir, e) from e
    for split, (x, y) in arrays.items():
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise InputError(f"{name} {split}: images {x.shape} and labels {y.shape} do not match "
                             "the expected [N, 28, 28] / [N] layout")
    return arrays, source


def load_dataset(name, data_dir=None):
    """Load a dataset as float32 images in [0, 1].

    Args:
      name: `mnist`, `fashion_mnist` (60000/10000 images, 28x28x1) or `digits` (scikit-learn's
        1797 real 8x8 digits: the first 1437 for training, the last 360 for test).
      data_dir: folder with the IDX files (or with `mnist/` and `fashion-mnist/` subfolders);
        see `find_idx_dir` for the search order when it is None.
    Returns:
      A `Dataset`.
    Raises:
      ValueError: unknown name (the message lists the valid ones) or corrupt IDX files.
      DataNotFoundError: no copy found and the tensorflow-datasets download failed.
    """
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[..., None]
        y = d.target.astype(np.int64)
        n_train = 1437
        return Dataset(name, x[:n_train], y[:n_train], x[n_train:], y[n_train:], 17, "sklearn.datasets.load_digits")
    if str(name).endswith(".npz"):
        return _load_npz(name)
    if name not in IDX_FOLDERS:
        raise InputError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, a path to an .npz file "
                         f"with arrays x_train and x_test, tfds:NAME (e.g. tfds:{name}), a folder of images or "
                         "of TFRecord shards")
    arrays, source = _load_idx_dataset(name, data_dir)
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    scale = np.float32(1 / 255)
    return Dataset(name, (xtr[..., None] * scale), ytr.astype(np.int64),
                   (xte[..., None] * scale), yte.astype(np.int64), 256, source)


def _load_npz(path):
    """A user's dataset: an `.npz` file with `x_train`, `x_test` (`[N, H, W, C]`, real numbers) and
    optional integer labels `y_train`, `y_test` (`[N]`). Pixels in [0, 1] (or 0-255 with
    `--rescale`); assumed 8-bit (L = 256).

    Raises:
      FileNotFoundError: no such file.
      InputError: a folder, a file that is not a readable .npz archive (truncated, corrupt,
        pickled objects), missing arrays, non-real dtypes, labels of the wrong shape or length.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"dataset {path} is a folder; expected an .npz file with arrays x_train and x_test")
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, AttributeError) as e:
        raise InputError(f"dataset file {path} is not a readable .npz archive ({type(e).__name__}: {e}); write it "
                         "with numpy.savez(path, x_train=..., x_test=...)") from None
    missing = [k for k in ("x_train", "x_test") if k not in arrays]
    if missing:
        raise InputError(f"dataset file {path}: missing arrays {missing}; found {sorted(arrays)} "
                         "(need x_train and x_test, [N, H, W, C])")
    for k, a in arrays.items():
        if k in ("x_train", "x_test", "y_train", "y_test") and a.dtype.kind not in "biuf":
            raise InputError(f"dataset file {path}: {k} has dtype {a.dtype}; expected real numbers (float, int, "
                             "uint or bool)")
    xtr, xte = arrays["x_train"], arrays["x_test"]
    labels = {}
    for k, x in (("y_train", xtr), ("y_test", xte)):
        y = arrays.get(k)
        if y is None:  # no labels: None (not zeros, which would train the FID classifier on one class)
            labels[k] = None
            continue
        if y.ndim != 1 or x.ndim == 0 or len(y) != len(x):
            raise InputError(f"dataset file {path}: {k} must have shape [N] with N = {len(x) if x.ndim else 0} "
                             f"(the images of x_{k[2:]}); got shape {y.shape}")
        if not np.all(np.isfinite(y)) or not np.all(np.asarray(y) == np.round(y)) or (y.size and y.min() < 0):
            raise InputError(f"dataset file {path}: {k} must hold class indices (integers >= 0)")
        labels[k] = y.astype(np.int64)
    return Dataset(path.stem, xtr.astype(np.float32), labels["y_train"], xte.astype(np.float32), labels["y_test"],
                   256, str(path))


def check_images(x, name="images", image_shape=None):
    """Validate a batch of images for the models of this package.

    Args:
      x: array `[N, H, W, C]`, pixels in [0, 1].
      name: what `x` is, for the error message (e.g. `training images`).
      image_shape: the `(H, W, C)` the model expects, or None to accept any.
    Returns:
      `x` as a float32 numpy array.
    Raises:
      ValueError: wrong rank or image shape, empty, NaN/infinite values, or values outside [0, 1]
        (the message names the argument, the value and what is allowed).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        hint = " (add a channel axis: x[..., None])" if x.ndim == 3 else ""
        raise InputError(f"{name}: expected a 4-D array [N, H, W, C], got shape {x.shape}{hint}")
    if x.shape[0] == 0:
        raise InputError(f"{name}: the dataset is empty (shape {x.shape})")
    if min(x.shape[1:]) < 1:
        raise InputError(f"{name}: every image axis needs at least one pixel, got shape {x.shape} ([N, H, W, C])")
    if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        raise InputError(f"{name}: image shape {tuple(x.shape[1:])} does not match the model's "
                         f"{tuple(image_shape)} (shape [N, H, W, C])")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name}: contains {int(np.sum(~np.isfinite(x)))} NaN or infinite pixels")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise InputError(f"{name}: pixel values must lie in [0, 1], got range [{lo:g}, {hi:g}] "
                         "(for 0-255 data pass --rescale, or divide by 255)")
    return x


def prepare_images(x, rescale=False, name="images", image_shape=None):
    """`check_images` after an optional `x / 255` (`rescale`, for 8-bit data given as 0-255).

    Raises:
      ValueError: as `check_images`; or `rescale` on data already in [0, 1] (dividing again would
        silently squash it to [0, 1/255]).
    """
    if rescale:
        x = np.asarray(x, dtype=np.float32)
        finite = x[np.isfinite(x)]
        if finite.size and finite.max() <= 1:
            raise InputError(f"{name}: --rescale divides by 255, but the pixels already lie in [0, 1] "
                             f"(max {finite.max():g}); drop --rescale")
        x = x / np.float32(255)
    return check_images(x, name, image_shape)


def dequantize(x, num_levels=256, seed=None):
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


def array_images(x, shuffle=True, seed=0):
    """Images `[N, H, W, C]` as a cached `tf.data.Dataset`, shuffled with a buffer of 1024 (the
    paper's; reshuffled every pass, op seed `seed`) when `shuffle`."""
    ds = tf.data.Dataset.from_tensor_slices(x).cache()
    return ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True) if shuffle else ds


def make_pipeline(x, batch_size=BATCH_SIZE, shuffle=True, num_levels=None, seed=0, repeat=False,
                  skip_epochs=0):
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


def perturb(x, rate, num_levels=256, seed=None):
    """Replace each pixel, with probability `rate`, by a level drawn uniformly from the `L` levels
    `k / (L - 1)`: the input perturbation of the background model of Ren et al. (NeurIPS 2019,
    Section 3), with the stateless `seed` (int tensor `[2]`). Same shape as `x` `[..., H, W, C]`."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    flip = tf.random.stateless_uniform(tf.shape(x), seeds[0], dtype=x.dtype) < rate
    level = tf.random.stateless_uniform(tf.shape(x), seeds[1], 0, num_levels, dtype=tf.int32)
    return tf.where(flip, tf.cast(level, x.dtype) / (num_levels - 1), x)


def batch_stream(images, count, batch_size=BATCH_SIZE, num_levels=None, seed=0, repeat=False, skip_epochs=0,
                 shard_policy=None, perturb_rate=0.0, perturb_levels=256):
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
