"""Image sources: a `--dataset` string becomes a `Source`, whose train and test splits stream
through `tf.data` and are never loaded whole (except the in-memory kinds).

    mnist | fashion_mnist | digits | FILE.npz   arrays in memory (`tfp_ae.data.load_dataset`)
    tfds:NAME[/CONFIG]                          a TFDS dataset prepared in --data-dir (--download fetches it)
    FOLDER of image files                       PNG, JPEG, BMP, GIF, found recursively
    FOLDER of *.tfrecord, or a glob             TFRecord shards (`SHARD_SCHEMA`), e.g. from `tfp-ae convert`

A folder of images uses its `train/` and `test/` subfolders when it has both, otherwise a fixed
split of the sorted file list (seed 0, `test_fraction` of the files for test); when every image
sits in a subfolder (one level below the split's folder), the sorted subfolder names are the
class labels. Shard files are assigned to a split by their name (`train*` / `test*`).

Every image is decoded to float32 `[H, W, C]` in [0, 1], then shaped by a `Geometry` (`--channels`,
`--crop center`, `--image-size`, resized with antialiasing and re-quantised to the source's
levels), so `num_levels` (256 for 8-bit files) stays true and `bits_per_dim` / `--dequantize`
stay honest.
"""
import contextlib
import glob
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from tfp_ae._tf import tf
from tfp_ae.data import (BATCH_SIZE, SHUFFLE_BUFFER, Dataset, array_images, batch_stream, load_dataset,
                         prepare_images)
from tfp_ae.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CROPS = ("none", "center")
SPLITS = ("train", "test")
SHARDS_INFO = "tfp_ae_shards.json"
SHARD_SCHEMA = {  # one tf.train.Example per image
    "image": tf.io.FixedLenFeature([], tf.string),  # the encoded image (PNG from `convert`; any format decode_image reads)
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),  # class index; -1 or absent: no label
}
SPLIT_SEED = 0           # the fixed shuffle of a folder without train/ and test/ before its test fraction is cut off
SAMPLE_BYTES = 256 * 2 ** 20  # bound on the training images held as an array (the FID classifier's training set)


@dataclass(frozen=True)
class Geometry:
    """How every decoded image is shaped: `channels` (1 grey, 3 RGB; None keeps the source's),
    `crop` (`center`: crop to the target's aspect ratio before resizing), `size` `(H, W)` (None
    keeps the source's). Resizing is `tf.image.resize(..., antialias=True)` (bilinear), and the
    result is re-quantised to the source's `num_levels` (pixels `k / (L - 1)`)."""
    size: Optional[tuple] = None
    crop: str = "none"
    channels: Optional[int] = None

    @classmethod
    def parse(cls, image_size=None, crop="none", channels=None):
        """From the command-line values: `image_size` `"H"`, `"HxW"`, an int or None.

        Raises:
          InputError: a malformed or non-positive size, an unknown crop, channels not 1 or 3, a
            crop without a size.
        """
        size = None
        if image_size is not None:
            m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(image_size))
            if not m or int(m.group(1)) < 1 or int(m.group(2) or m.group(1)) < 1:
                raise InputError(f"image_size must be H or HxW with positive integers (e.g. 64 or 64x48); "
                                 f"got {image_size!r}")
            size = (int(m.group(1)), int(m.group(2) or m.group(1)))
        if crop not in CROPS:
            raise InputError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}")
        if crop != "none" and size is None:
            raise InputError("--crop center crops to the aspect ratio of --image-size; pass --image-size too")
        if channels not in (None, 1, 3):
            raise InputError(f"channels must be 1 (grey) or 3 (RGB); got {channels!r}")
        return cls(size, crop, channels)

    def shape(self, source_shape):
        """The `(H, W, C)` of a source image of shape `source_shape` after this geometry."""
        h, w, c = source_shape
        return (*(self.size or (h, w)), self.channels or c)

    def apply(self, x, num_levels=256):
        """Float32 images `[..., h, w, c]` in [0, 1] -> `[..., H, W, C]`, re-quantised when resized."""
        if self.channels and x.shape[-1] != self.channels:
            x = tf.image.grayscale_to_rgb(x) if self.channels == 3 else tf.image.rgb_to_grayscale(x)
        if self.size is None:
            return x
        if self.crop == "center":
            h, w = tf.cast(tf.shape(x)[-3], tf.float32), tf.cast(tf.shape(x)[-2], tf.float32)
            aspect = self.size[0] / self.size[1]
            ch = tf.cast(tf.minimum(h, w * aspect), tf.int32)
            cw = tf.cast(tf.minimum(w, h / aspect), tf.int32)
            x = tf.image.crop_to_bounding_box(x, (tf.shape(x)[-3] - ch) // 2, (tf.shape(x)[-2] - cw) // 2, ch, cw)
        x = tf.image.resize(x, self.size, antialias=True)
        return tf.round(tf.clip_by_value(x, 0.0, 1.0) * (num_levels - 1)) / (num_levels - 1)


def decode_image(encoded, channels, num_levels=256):
    """Encoded PNG / JPEG / BMP / GIF bytes -> float32 `[h, w, channels]`, pixels `k / (L - 1)`.

    Alpha is dropped; grey is repeated to RGB or RGB averaged to grey (`rgb_to_grayscale`) to reach
    `channels`. 8-bit files have L = 256; shards written by `convert` from a source with fewer
    levels store `k` itself (`num_levels` in their `SHARDS_INFO`).
    """
    x = tf.io.decode_image(encoded, channels=0, expand_animations=False)  # any of 1-4 channels
    x = tf.cast(x, tf.float32) / (num_levels - 1)
    c = tf.shape(x)[-1]
    if channels == 1:
        x = tf.cond(c <= 2, lambda: x[..., :1], lambda: tf.image.rgb_to_grayscale(x[..., :3]))
    else:
        x = tf.cond(c <= 2, lambda: tf.tile(x[..., :1], [1, 1, 3]), lambda: x[..., :3])
    return tf.ensure_shape(x, [None, None, channels])


@dataclass
class Split:
    """The images of one split in a fixed order, read lazily.

    `kind`:
    - `array`: `x` float32 `[N, H, W, C]` in memory, `y` int64 `[N]` or None;
    - `files`: `paths` `[N]` of image files, `labels` int64 `[N]` or None;
    - `records`: the records `start..stop` of the shard `files` in order (`parse`: a serialised
      record -> (encoded image, label)).
    `image_shape` is the shape after `geometry`; `count` the number of images.
    """
    kind: str
    count: int
    image_shape: tuple
    num_levels: int
    geometry: Geometry = Geometry()
    x: Optional[np.ndarray] = None
    y: Optional[np.ndarray] = None
    paths: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    files: tuple = ()
    parse: Optional[Callable] = None
    source_channels: int = 1
    start: int = 0
    records_total: int = 0   # records: how many records the files hold
    skip_bad: bool = False   # records: drop records whose image cannot be decoded (`skip_bad_images`)

    @property
    def has_labels(self):
        return self.y is not None if self.kind == "array" else self.labels is not None if self.kind == "files" \
            else self.parse is not None and getattr(self.parse, "has_labels", False)

    def subset(self, start=0, stop=None):
        """Images `start..stop` of this split (in its fixed order), without reading any."""
        stop = self.count if stop is None else min(stop, self.count)
        start = min(start, stop)
        if self.kind == "array":
            return replace(self, count=stop - start, x=self.x[start:stop],
                           y=None if self.y is None else self.y[start:stop])
        if self.kind == "files":
            return replace(self, count=stop - start, paths=self.paths[start:stop],
                           labels=None if self.labels is None else self.labels[start:stop])
        return replace(self, count=stop - start, start=self.start + start)

    @property
    def whole_files(self):
        """True when this split is all the records of its files (so files can be shuffled and sharded)."""
        return self.kind == "records" and self.start == 0 and self.count == self.records_total

    @property
    def reshaped(self):
        """True when the geometry changes the images (arrays are then reshaped as they stream)."""
        return self.geometry != Geometry()

    def _shape_array(self, x):
        return tf.ensure_shape(self.geometry.apply(x, self.num_levels), self.image_shape)

    def _decode(self, encoded, label):
        x = decode_image(encoded, self.source_channels, self.num_levels)
        x = tf.ensure_shape(self.geometry.apply(x, self.num_levels), self.image_shape)
        return x, label

    def _records(self, files):
        return tf.data.TFRecordDataset(files, num_parallel_reads=None).map(self.parse)

    def elements(self):
        """`tf.data.Dataset` of `(image float32 [H, W, C], label int64 (-1: none))` in the fixed order."""
        if self.kind == "array":
            y = np.full(self.count, -1, np.int64) if self.y is None else self.y
            ds = tf.data.Dataset.from_tensor_slices((self.x, y))
            return ds.map(lambda x, y: (self._shape_array(x), y)) if self.reshaped else ds
        if self.kind == "files":
            ds = self._file_keys()
        else:
            ds = self._records(list(self.files)).skip(self.start).take(self.count)
        return self._drop_bad(ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))

    def _drop_bad(self, ds):
        return ds.ignore_errors(log_warning=True) if self.skip_bad and self.kind == "records" else ds

    def _file_keys(self):
        labels = np.full(self.count, -1, np.int64) if self.labels is None else self.labels
        return tf.data.Dataset.from_tensor_slices((self.paths, labels)).map(lambda p, y: (tf.io.read_file(p), y))

    def shuffled_images(self, seed, worker=(0, 1)):
        """Images `[H, W, C]` (no labels) in a seeded order, reshuffled on every pass: file paths are
        shuffled whole; records by shuffling the file order, interleaving four files and a buffer
        of `SHUFFLE_BUFFER`; arrays with that buffer (the paper's 1024) over the cached images.
        `worker` `(index, count)`: with `shard_policy` FILE, only this worker's files are read."""
        if self.kind == "array":
            ds = array_images(self.x, True, seed)
            return ds.map(self._shape_array, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) \
                if self.reshaped else ds
        if self.kind == "files":
            labels = np.full(self.count, -1, np.int64)
            keys = tf.data.Dataset.from_tensor_slices((self.paths, labels))
            keys = keys.shuffle(self.count, seed=seed, reshuffle_each_iteration=True)
            ds = keys.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        elif self.whole_files:
            files = tf.data.Dataset.from_tensor_slices(list(self.files))
            if worker[1] > 1:  # this worker's files: every worker-th file from its index on
                files = files.shard(worker[1], worker[0])
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
            ds = files.interleave(lambda f: tf.data.TFRecordDataset(f), cycle_length=min(4, len(self.files)),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).map(self.parse)
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        else:  # a range of the records (train_limit, validation split): the fixed order, buffer-shuffled
            ds = self._records(list(self.files)).skip(self.start).take(self.count)
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        return self._drop_bad(ds.map(lambda e, y: self._decode(e, y)[0], num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True))

    def shard_policy(self, num_workers=1):
        """(AutoShardPolicy, a sentence for the log or "") for `num_workers` workers: FILE for whole
        shard files when there are at least as many files as workers (worker i reads files i,
        i + workers, ...), else DATA (every worker reads everything and keeps its part of each batch)."""
        policy = tf.data.experimental.AutoShardPolicy
        if num_workers <= 1 or self.kind != "records":
            return policy.DATA, ""
        if not self.whole_files:
            return policy.DATA, "a range of the records (train_limit / validation_split) is sharded by DATA"
        if len(self.files) < num_workers:
            return policy.DATA, (f"{len(self.files)} shard file(s) for {num_workers} workers: sharding by DATA "
                                 f"(write at least {num_workers} shards with `tfp-ae convert --shards` to shard by file)")
        return policy.FILE, (f"{len(self.files)} shard files over {num_workers} workers: each worker reads its own "
                             "files (sharded by FILE)")

    def pipeline(self, batch_size=BATCH_SIZE, shuffle=True, num_levels=None, seed=0, repeat=False, skip_epochs=0,
                 worker=(0, 1), perturb_rate=0.0):
        """`(images, images)` batches for `model.fit` (`tfp_ae.data.batch_stream`): `shuffled_images`
        when `shuffle`, else the fixed order. `worker` `(index, count)` of a multi-worker run: with
        `shard_policy` FILE the worker reads only its files; `perturb_rate`: see `tfp_ae.data.perturb` (the files are split here, and
        TensorFlow's auto-sharding is turned off: it cannot see through the pipeline's scan)."""
        policy, why = self.shard_policy(worker[1])
        if why:
            print(f"multi-worker input: {why}", flush=True)
        if policy == tf.data.experimental.AutoShardPolicy.FILE:
            images, policy = self.shuffled_images(seed, worker), tf.data.experimental.AutoShardPolicy.OFF
        else:
            images = self.shuffled_images(seed) if shuffle else self.elements().map(lambda x, y: x)
        return batch_stream(images, self.count, batch_size, num_levels, seed, repeat, skip_epochs, policy,
                            perturb_rate, self.num_levels)

    def take(self, n=None):
        """The first `n` images (all when None) as arrays: (x float32 `[n, H, W, C]`, y int64 `[n]` or None)."""
        n = self.count if n is None else min(n, self.count)
        if self.kind == "array" and not self.reshaped:
            return self.x[:n], None if self.y is None else self.y[:n]
        x = np.empty((n, *self.image_shape), np.float32)
        y = np.empty(n, np.int64)
        i = 0
        for bx, by in self.elements().take(n).batch(256).prefetch(2).as_numpy_iterator():
            x[i:i + len(bx)], y[i:i + len(bx)] = bx, by
            i += len(bx)
        return x, (y if self.has_labels else None)


@dataclass
class Source:
    """A dataset's train and test `Split`s, with what they share.

    Attributes:
      name: the dataset's short name (for run folders and caches).
      description: where it is read from.
      image_shape: `(H, W, C)` after the geometry.
      num_levels: L, the pixel levels `k / (L - 1)` (256 for 8-bit files).
      splits: {"train": Split, "test": Split}.
      skipped: `[(path, reason)]` of unreadable images left out (`skip_bad_images`).
    """
    name: str
    description: str
    image_shape: tuple
    num_levels: int
    splits: dict
    skipped: list = field(default_factory=list)

    @property
    def has_labels(self):
        return all(s.has_labels for s in self.splits.values())

    @property
    def streamed(self):
        return any(s.kind != "array" for s in self.splits.values())

    @contextlib.contextmanager
    def reading(self):
        """Turns TensorFlow's decoding errors while a streamed source is read (a corrupt record, an
        image of another size) into an `InputError` that names the source and the fix."""
        try:
            yield
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
            if not self.streamed:
                raise
            first = (e.message or str(e)).strip().splitlines()[0][:300]
            raise InputError(f"{self.description}: an image cannot be read ({first}). Rewrite the shards with "
                             "`tfp-ae convert`, pass --image-size/--channels for mixed shapes, or --skip-bad-images "
                             "to leave unreadable records out") from None

    def sample(self, test_images, train_bytes=SAMPLE_BYTES):
        """A bounded in-memory `tfp_ae.data.Dataset`: the first `test_images` test images and as many
        training images as fit in `train_bytes` of float32 (all of MNIST's 60,000; none when 0), for
        what needs arrays: L2 %, calibration, figures, the FID classifier and its features."""
        n_train = train_bytes // (4 * int(np.prod(self.image_shape)))
        (xtr, ytr), (xte, yte) = self.splits["train"].take(n_train), self.splits["test"].take(test_images)
        if ytr is None or yte is None:
            ytr = yte = None
        return Dataset(self.name, xtr, ytr, xte, yte, self.num_levels, self.description)


def array_split(x, num_levels=256, y=None):
    """A `Split` over images in memory, float32 `[N, H, W, C]` in [0, 1] (labels `y` `[N]` or None)."""
    return Split("array", len(x), tuple(x.shape[1:]), num_levels, x=x, y=y)


def _array_source(data, geometry, rescale):
    """A `Source` over a loaded `tfp_ae.data.Dataset` (named datasets, `.npz`); the geometry is
    applied as the images stream (a resized copy is never held)."""
    splits = {}
    for split, what in (("train", "training images"), ("test", "test images")):
        shape = None if split == "train" or geometry.size else splits["train"].x.shape[1:]
        x = prepare_images(getattr(data, f"x_{split}"), rescale, what, image_shape=shape)
        splits[split] = Split("array", len(x), geometry.shape(x.shape[1:]), data.num_levels, geometry, x=x,
                              y=getattr(data, f"y_{split}"), source_channels=x.shape[-1])
    if splits["train"].image_shape != splits["test"].image_shape:
        raise InputError(f"{data.source}: test images {splits['test'].x.shape[1:]} and training images "
                         f"{splits['train'].x.shape[1:]} differ in shape; pass --channels")
    return Source(data.name, data.source, splits["train"].image_shape, data.num_levels, splits)


# ---------------------------------------------------------------- folders of image files

def _image_files(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _channels_of(mode):
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F") else 3


def scan_images(paths, skip_bad_images=False):
    """Check every image file with Pillow (headers, PNG chunk checksums, a full decode of other
    formats). Returns (sizes `[(h, w)]`, channels `[c]`, kept paths, skipped `[(path, reason)]`).

    Raises:
      InputError: an unreadable, corrupt or truncated file, naming it (unless `skip_bad_images`).
    """
    sizes, channels, kept, skipped = [], [], [], []
    for p in tqdm(paths, desc="checking image files", unit="file", disable=len(paths) < 5000, mininterval=2):
        try:
            with Image.open(p) as im:
                size, mode = im.size, im.mode
                im.verify() if im.format == "PNG" else im.load()
        except Exception as e:  # Pillow raises many types for a broken file (OSError, SyntaxError, ...)
            reason = f"{type(e).__name__}: {e}"
            if not skip_bad_images:
                raise InputError(f"image file {p} cannot be read ({reason}); it is corrupt or truncated. Remove it "
                                 "or pass --skip-bad-images to leave unreadable files out") from None
            skipped.append((str(p), reason))
            continue
        sizes.append((size[1], size[0]))
        channels.append(_channels_of(mode))
        kept.append(str(p))
    return sizes, channels, kept, skipped


def _folder_labels(root, paths):
    """Labels from one level of class subfolders under `root` (sorted names -> 0, 1, ...), or None."""
    parts = [Path(p).relative_to(root).parts for p in paths]
    if not parts or any(len(q) != 2 for q in parts):
        return None, None
    classes = sorted({q[0] for q in parts})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[q[0]] for q in parts], np.int64), classes


def _folder_source(folder, geometry, test_fraction, skip_bad_images):
    folder = Path(folder)
    roots = {s: folder / s for s in SPLITS} if all((folder / s).is_dir() for s in SPLITS) else None
    paths = {s: _image_files(r) for s, r in roots.items()} if roots else {"all": _image_files(folder)}
    for key, found in paths.items():
        if not found:
            where = roots[key] if roots else folder
            raise InputError(f"folder {where} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, searched "
                             "recursively)" + ("; it is empty" if not any(Path(where).iterdir()) else ""))
    scanned = {key: scan_images(p, skip_bad_images) for key, p in paths.items()}
    skipped = [s for r in scanned.values() for s in r[3]]
    sizes = [s for r in scanned.values() for s in r[0]]
    chans = [c for r in scanned.values() for c in r[1]]
    kept_all = [p for r in scanned.values() for p in r[2]]
    if not kept_all:
        raise InputError(f"folder {folder}: none of its {len(skipped)} image files can be read")
    if geometry.size is None and len(set(sizes)) > 1:
        a = sizes[0]
        b = next(s for s in sizes if s != a)
        fa, fb = kept_all[sizes.index(a)], kept_all[sizes.index(b)]
        raise InputError(f"folder {folder} mixes image sizes, e.g. {a[0]}x{a[1]} ({fa}) and {b[0]}x{b[1]} ({fb}); "
                         "pass --image-size H or HxW (and --crop center to keep the aspect ratio)")
    if geometry.channels is None and len(set(chans)) > 1:
        fa, fb = kept_all[chans.index(1)], kept_all[chans.index(3)]
        raise InputError(f"folder {folder} mixes grey ({fa}) and colour ({fb}) images; pass --channels 1 or 3")
    source_channels = geometry.channels or chans[0]
    shape = geometry.shape((*sizes[0], source_channels))
    if roots:
        kept = {s: scanned[s][2] for s in SPLITS}
        base = {s: roots[s] for s in SPLITS}
    else:
        if not 0 < test_fraction < 1:
            raise InputError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(kept_all))
        n_test = max(1, int(round(len(kept_all) * test_fraction)))
        if n_test >= len(kept_all):
            raise InputError(f"folder {folder}: {len(kept_all)} image(s) are too few to split into train and test")
        kept = dict(test=[kept_all[i] for i in sorted(order[:n_test])],
                    train=[kept_all[i] for i in sorted(order[n_test:])])
        base = dict(train=folder, test=folder)
    for s in SPLITS:
        if not kept[s]:
            raise InputError(f"folder {base[s]}: none of its image files can be read, so the {s} split is empty")
    splits = {}
    labels = {s: _folder_labels(base[s], kept[s]) for s in SPLITS}
    with_labels = all(labels[s][0] is not None for s in SPLITS) and labels["train"][1] == labels["test"][1]
    for s in SPLITS:
        splits[s] = Split("files", len(kept[s]), shape, 256, geometry, paths=np.array(kept[s], dtype=str),
                          labels=labels[s][0] if with_labels else None, source_channels=source_channels)
    return Source(folder.name, f"image folder {folder}", shape, 256, splits, skipped)


# ---------------------------------------------------------------- TFRecord shards

def _record_parser(has_labels):
    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, SHARD_SCHEMA)
        return ex["image"], ex["label"]
    parse.has_labels = has_labels
    return parse


def _shard_files(spec):
    """{split: sorted files} of a shard folder or glob, by file name (`train*`, `test*`)."""
    path = Path(spec)
    files = sorted(glob.glob(str(path / "*.tfrecord*"))) if path.is_dir() else sorted(glob.glob(spec))
    by_split = {s: [f for f in files if Path(f).name.startswith(s)] for s in SPLITS}
    if not files:
        raise InputError(f"no TFRecord files match {spec!r}")
    missing = [s for s in SPLITS if not by_split[s]]
    if missing:
        raise InputError(f"{spec}: no shard files for split(s) {', '.join(missing)}; shard files are assigned to a "
                         f"split by name (train-00000-of-00004.tfrecord, test-...); found {Path(files[0]).name}")
    return by_split


def _shard_source(spec, geometry, skip_bad_images=False):
    by_split = _shard_files(spec)
    folder = Path(by_split["train"][0]).parent
    info = json.loads((folder / SHARDS_INFO).read_text()) if (folder / SHARDS_INFO).exists() else {}
    try:
        first = next(iter(tf.data.TFRecordDataset(by_split["train"][:1]).take(1)), None)
    except tf.errors.DataLossError as e:
        raise InputError(f"shard file {by_split['train'][0]} is truncated or corrupt ({e.message.splitlines()[0]})") from None
    if first is None:
        raise InputError(f"shard file {by_split['train'][0]} holds no records")
    try:
        features = tf.train.Example.FromString(first.numpy()).features.feature
    except Exception as e:  # a protobuf DecodeError: not a tf.train.Example
        raise InputError(f"shard file {by_split['train'][0]}: its records are not tf.train.Example protos ({e})") from None
    if "image" not in features or not features["image"].bytes_list.value:
        raise InputError(f"shard file {by_split['train'][0]}: records need a bytes feature 'image' (an encoded "
                         f"PNG/JPEG), found {sorted(features) or 'no features'}; see tfp_ae.sources.SHARD_SCHEMA")
    num_levels = int(info.get("num_levels", 256))
    try:
        h, w, c = tf.io.decode_image(features["image"].bytes_list.value[0], expand_animations=False).shape
    except tf.errors.OpError as e:
        raise InputError(f"shard file {by_split['train'][0]}: its first image cannot be decoded ({e.message})") from None
    source_channels = geometry.channels or (1 if c <= 2 else 3)
    shape = geometry.shape((h, w, source_channels))
    has_labels = bool(info["has_labels"]) if "has_labels" in info else "label" in features
    splits = {}
    for s in SPLITS:
        try:
            count = int(info["counts"][s]) if "counts" in info else int(
                tf.data.TFRecordDataset(by_split[s]).reduce(np.int64(0), lambda n, _: n + 1))
        except tf.errors.DataLossError as e:
            raise InputError(f"{spec}: the {s} shards are truncated or corrupt ({e.message.splitlines()[0]})") from None
        if count == 0:
            raise InputError(f"{spec}: the {s} shards hold no records")
        splits[s] = Split("records", count, shape, num_levels, geometry, files=tuple(by_split[s]),
                          parse=_record_parser(has_labels), source_channels=source_channels, records_total=count,
                          skip_bad=skip_bad_images)
    name = info.get("name") or folder.name
    return Source(name, f"TFRecord shards {spec}", shape, num_levels, splits)


# ---------------------------------------------------------------- TFDS

def _tfds_source(spec, data_dir, geometry, download, skip_bad_images=False):
    import tensorflow_datasets as tfds  # heavy (about 2 s): imported only for a tfds: source
    name = spec[len("tfds:"):]
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise InputError(f"tfds:{name}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
        if not download:
            raise InputError(
                f"tfds:{name} is not prepared in {builder.data_dir_root if hasattr(builder, 'data_dir_root') else data_dir}. "
                f"Pass --download to download and prepare it (needs the internet), or prepare it elsewhere with "
                f"`tfds build {name} --data_dir DIR` and pass --data-dir DIR")
        builder.download_and_prepare()
    features = builder.info.features
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not images:
        raise InputError(f"tfds:{name} has no image feature (features: {', '.join(features)})")
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    image_key, label_key = images[0], ("label" if "label" in labels else labels[0] if labels else None)
    h, w, c = features[image_key].shape
    if (h is None or w is None) and geometry.size is None:
        raise InputError(f"tfds:{name} has images of varying size ({features[image_key].shape}); pass --image-size")
    test = "test" if "test" in builder.info.splits else "validation" if "validation" in builder.info.splits else None
    if "train" not in builder.info.splits or test is None:
        raise InputError(f"tfds:{name} needs a train and a test (or validation) split; it has "
                         f"{', '.join(builder.info.splits)}")
    decoders = {image_key: tfds.decode.SkipDecoding()}

    def parse(serialized):
        ex = features.deserialize_example(serialized, decoders=decoders)
        return ex[image_key], ex[label_key] if label_key else tf.constant(-1, tf.int64)
    parse.has_labels = label_key is not None
    source_channels = geometry.channels or c or 3
    shape = geometry.shape((h or 1, w or 1, source_channels))
    splits = {}
    for s, tfds_split in (("train", "train"), ("test", test)):
        info = builder.info.splits[tfds_split]
        files = tuple(str(p) for p in info.filepaths)
        splits[s] = Split("records", int(info.num_examples), shape, 256, geometry, files=files, parse=parse,
                          source_channels=source_channels, records_total=int(info.num_examples),
                          skip_bad=skip_bad_images)
    return Source(name.replace("/", "_"), f"tfds:{name} ({builder.data_dir})", shape, 256, splits)


def open_source(dataset, data_dir=None, image_size=None, crop="none", channels=None, test_fraction=0.1,
                download=False, skip_bad_images=False, rescale=False):
    """The `Source` a `--dataset` string names (see the module docstring for the kinds).

    Args:
      dataset: `mnist`, `fashion_mnist`, `digits`, a `.npz` path, `tfds:NAME[/CONFIG]`, a folder of
        images or of `*.tfrecord` shards, or a glob of shard files.
      data_dir: IDX folder for the named datasets; TFDS's data_dir for `tfds:`.
      image_size, crop, channels: the `Geometry` (`Geometry.parse`).
      test_fraction: a folder without `train/` and `test/`: the fraction of its files held out.
      download: `tfds:` only: download and prepare the dataset when it is not prepared.
      skip_bad_images: leave unreadable image files out (listed in `Source.skipped`) instead of raising.
      rescale: in-memory sources given as 0-255: divide by 255.
    Raises:
      InputError: an unknown name, an empty folder or one without images, a corrupt or truncated
        file (naming it), mixed sizes or channels without `--image-size` / `--channels`, shards
        without an `image` feature, an unprepared TFDS dataset without `download`.
      DataNotFoundError: a named dataset with no local copy.
    """
    geometry = Geometry.parse(image_size, crop, channels)
    spec = str(dataset)
    if spec.startswith("tfds:"):
        return _tfds_source(spec, data_dir, geometry, download, skip_bad_images)
    path = Path(spec)
    if path.is_dir():
        if glob.glob(str(path / "*.tfrecord*")):
            return _shard_source(spec, geometry, skip_bad_images)
        return _folder_source(path, geometry, test_fraction, skip_bad_images)
    if any(ch in spec for ch in "*?[") and not path.exists():
        return _shard_source(spec, geometry, skip_bad_images)
    if spec.endswith(".npz") or os.sep in spec:
        if not path.exists():
            raise InputError(f"dataset {spec} does not exist (no such file or folder)")
    return _array_source(load_dataset(spec, data_dir), geometry, rescale)


# ---------------------------------------------------------------- defect masks

MASK_SUFFIX = "_mask"  # MVTec AD names the mask of test/crack/000.png ground_truth/crack/000_mask.png


def _image_key(path, root=None):
    """The parts of an image path without its extension and a `MASK_SUFFIX` (relative to `root`)."""
    path = Path(path)
    rel = path.relative_to(root) if root else path
    stem = path.stem[:-len(MASK_SUFFIX)] if path.stem.endswith(MASK_SUFFIX) else path.stem
    return (*rel.parts[:-1], stem)


def _read_mask(path, split):
    """One mask image -> bool `[H, W]` (a non-zero pixel is a defect), shaped by the split's geometry."""
    try:
        with Image.open(path) as im:
            m = (np.asarray(im.convert("L")) > 0).astype(np.float32)
    except Exception as e:  # Pillow raises many types for a broken file
        raise InputError(f"mask file {path} cannot be read ({type(e).__name__}: {e})") from None
    if split.geometry.size is not None:
        m = Geometry(split.geometry.size, split.geometry.crop).apply(m[..., None]).numpy()[..., 0]
    if m.shape != tuple(split.image_shape[:2]):
        raise InputError(f"mask file {path} is {m.shape[0]}x{m.shape[1]}; the images are "
                         f"{split.image_shape[0]}x{split.image_shape[1]}")
    return m > 0.5


def load_masks(spec, split):
    """Defect masks of a test split, for the pixel AUROC and PRO of anomaly maps.

    Args:
      spec: an `.npz` holding `mask_test` `[N, H, W]` or `[N, H, W, C]` (non-zero = defect): the
        masks of the split's first N images; or a folder of mask images (found recursively; a
        non-zero pixel is a defect; resized like the images when the run has `--image-size`):
        - when `split` is a folder of image files, each mask is matched to the test image whose path
          ends in the mask's path relative to the folder, without extension and `_mask` suffix (the
          MVTec AD layout: `ground_truth/crack/000_mask.png` for `test/crack/000.png`); test images
          without a mask are defect-free;
        - for any other source, the mask files sorted by path are the masks of the first N images.
      split: the `Split` the masks belong to.
    Returns:
      bool `[N, H, W]`: the masks of the split's first N images.
    Raises:
      InputError: a missing file, an `.npz` without `mask_test`, a folder without mask images, an
        unreadable mask, a mask of another size than the images, more masks than images, a mask
        that matches no test image or more than one, two masks of one image.
    """
    path = Path(spec)
    if not path.exists():
        raise InputError(f"masks {spec} do not exist (no such file or folder)")
    if path.is_file():
        try:
            with np.load(path) as f:
                names, masks = f.files, (np.asarray(f["mask_test"]) != 0 if "mask_test" in f.files else None)
        except (OSError, ValueError) as e:
            raise InputError(f"masks {spec} cannot be read as .npz ({e})") from None
        if masks is None:
            raise InputError(f"masks {spec}: no array mask_test (found {', '.join(names) or 'none'})")
        return masks.any(-1) if masks.ndim == 4 else masks
    files = _image_files(path)
    if not files:
        raise InputError(f"mask folder {spec} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
    if len(files) > split.count:
        raise InputError(f"mask folder {spec} holds {len(files)} masks for {split.count} test images")
    if split.kind != "files":
        return np.stack([_read_mask(f, split) for f in files])
    by_key = {}
    for f in files:
        other = by_key.setdefault(_image_key(f, path), f)
        if other != f:
            raise InputError(f"masks {other} and {f} are the mask of the same image; keep one")
    owner = {}
    for i, p in enumerate(split.paths):
        key = _image_key(p)
        match = next((key[-k:] for k in range(len(key), 0, -1) if key[-k:] in by_key), None)
        if match is not None:
            if match in owner:
                raise InputError(f"mask {by_key[match]} matches two test images ({split.paths[owner[match]]} "
                                 f"and {p}); give the masks the test images' subfolders")
            owner[match] = i
    unmatched = [f for k, f in by_key.items() if k not in owner]
    if unmatched:
        raise InputError(f"mask {unmatched[0]} matches no test image ({len(unmatched)} such); a mask is named after "
                         f"its image: crack/000.png or crack/000{MASK_SUFFIX}.png for test/crack/000.png")
    masks = np.zeros((split.count, *split.image_shape[:2]), bool)
    for key, i in owner.items():
        masks[i] = _read_mask(by_key[key], split)
    return masks


# ---------------------------------------------------------------- writing shards

def _example(encoded, label):
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
    if label >= 0:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def convert(source, out, shards=1, overwrite=False):
    """Write a `Source` (after its geometry) as TFRecord shards: `out/{split}-{i:05d}-of-{n:05d}.tfrecord`
    in the split's fixed order (shard i holds a contiguous block), each record a `SHARD_SCHEMA`
    example (PNG of the levels `k`), plus `out/tfp_ae_shards.json` (name, counts, image shape,
    num_levels, labels). Files are written under temporary names and renamed when complete.

    Args:
      shards: files of the training split (at most one per image); the test split gets
        `min(shards, ceil(count / 1000))`, at least 1.
    Returns:
      the info dict written to `tfp_ae_shards.json`.
    Raises:
      InputError: `shards < 1`, or `out` holds files and `overwrite` is False.
      FileExistsError: `out` is a non-empty folder and `overwrite` is False.
    """
    if not isinstance(shards, int) or shards < 1:
        raise InputError(f"shards must be an integer >= 1; got {shards!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tfrecord*"):
        old.unlink()
    L = source.num_levels
    info = dict(name=source.name, converted_from=source.description, image_shape=list(source.image_shape),
                channels=int(source.image_shape[-1]), num_levels=L, has_labels=source.has_labels, counts={},
                schema="image: PNG bytes (pixel k / (num_levels - 1)); label: int64 (absent: none)")
    for split, s in source.splits.items():
        n = min(shards, s.count) if split == "train" else min(shards, max(1, math.ceil(s.count / 1000)))
        bounds = np.linspace(0, s.count, n + 1).astype(int)
        i, shard, writer = 0, -1, None
        ds = s.elements().map(lambda x, y: (tf.io.encode_png(tf.cast(tf.round(x * (L - 1)), tf.uint8)), y),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(64)
        for encoded, label in tqdm(ds.as_numpy_iterator(), total=s.count, desc=f"writing {split} shards",
                                   unit="image", mininterval=2, disable=s.count < 5000):
            while i >= bounds[shard + 1]:
                if writer:
                    writer.close()
                shard += 1
                writer = tf.io.TFRecordWriter(str(out / f".{split}-{shard:05d}-of-{n:05d}.tfrecord.tmp"))
            writer.write(_example(encoded, label if s.has_labels else -1))
            i += 1
        if writer:
            writer.close()
        for tmp in out.glob(f".{split}-*.tfrecord.tmp"):
            tmp.rename(out / tmp.name[1:-len(".tmp")])
        info["counts"][split] = i
    (out / SHARDS_INFO).write_text(json.dumps(info, indent=2))
    return info
