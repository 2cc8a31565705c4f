"""`Split` (the images of one split in a fixed order, read lazily: arrays in memory, image files or
TFRecord records) and `Source` (a dataset's train and test splits with what they share): what
every source kind returns, and what training, evaluation and scoring read."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.data.arrays import Dataset
from tfp_ae.data.geometry import Geometry, decode_image
from tfp_ae.data.pipeline import BATCH_SIZE, SHUFFLE_BUFFER, array_images, batch_stream
from tfp_ae.errors import InputError

SPLITS = ("train", "test")
SAMPLE_BYTES = 256 * 2 ** 20  # bound on the training images held as an array (the FID classifier's training set)


@dataclass
class Split:
    """The images of one split in a fixed order, read lazily.

    `kind`:

    - `array`: `x` float32 `[N, H, W, C]` in memory, `y` int64 `[N]` or None;
    - `files`: `paths` `[N]` of image files, `labels` int64 `[N]` or None;
    - `records`: the records `start..stop` of the shard `files` in order (`parse`: a serialised
      record -> (encoded image, label)); with `keep`, only the records whose label is in `keep`
      (a filter as they stream; `start`, `count` and `records_total` count the kept records).
    `image_shape` is the shape after `geometry`; `count` the number of images.
    """
    kind: str
    count: int
    image_shape: tuple
    num_levels: int
    geometry: Geometry = Geometry()
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    paths: np.ndarray | None = None
    labels: np.ndarray | None = None
    files: tuple = ()
    parse: Callable | None = None
    source_channels: int = 1
    start: int = 0
    records_total: int = 0   # records: how many records the files hold
    skip_bad: bool = False   # records: drop records whose image cannot be decoded (`skip_bad_images`)
    keep: tuple = ()         # records: the class indices kept (filtered as they stream; `select`); () keeps all

    @property
    def has_labels(self) -> bool:
        return self.y is not None if self.kind == "array" else self.labels is not None if self.kind == "files" \
            else self.parse is not None and getattr(self.parse, "has_labels", False)

    def subset(self, start: int = 0, stop: int | None = None) -> Split:
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
    def whole_files(self) -> bool:
        """True when this split is all the records of its files (so files can be shuffled and sharded)."""
        return self.kind == "records" and self.start == 0 and self.count == self.records_total

    @property
    def reshaped(self) -> bool:
        """True when the geometry changes the images (arrays are then reshaped as they stream)."""
        return self.geometry != Geometry()

    def _shape_array(self, x):
        return tf.ensure_shape(self.geometry.apply(x, self.num_levels), self.image_shape)

    def _decode(self, encoded, label):
        x = decode_image(encoded, self.source_channels, self.num_levels)
        x = tf.ensure_shape(self.geometry.apply(x, self.num_levels), self.image_shape)
        return x, label

    def _records(self, files):
        return self._parsed(tf.data.TFRecordDataset(files, num_parallel_reads=None))

    def _parsed(self, records):
        """(encoded image, label) of serialised records, only those of the `keep` classes when set."""
        ds = records.map(self.parse)
        if not self.keep:
            return ds
        keep = tf.constant(self.keep, tf.int64)
        return ds.filter(lambda e, y: tf.reduce_any(tf.equal(tf.cast(y, tf.int64), keep)))

    def label_values(self) -> np.ndarray | None:
        """The label of every image in the fixed order, int64 `[count]`, or None without labels (records
        are read once for their labels; the images are not decoded)."""
        if not self.has_labels:
            return None
        if self.kind == "array":
            return np.asarray(self.y, np.int64)
        if self.kind == "files":
            return np.asarray(self.labels, np.int64)
        labels = self._records(list(self.files)).skip(self.start).take(self.count).map(lambda e, y: y)
        return np.concatenate([np.zeros(0, np.int64), *labels.batch(8192).as_numpy_iterator()]).astype(np.int64)

    def select(self, keep: Sequence[int], labels: np.ndarray | None = None) -> Split:
        """This split restricted to the images whose label is in `keep` (class indices), in the same
        order: arrays and file lists are indexed (no image is read); records are filtered as they
        stream (`keep`), after one pass over their labels to count them (`labels`: those already read
        by `label_values`, so they are not read again).

        Raises:
          InputError: the split has no labels; records already cut to a range (select first).
        """
        keep = tuple(sorted({int(k) for k in keep}))
        labels = self.label_values() if labels is None else labels
        if labels is None:
            raise InputError("class selection needs labels, and these images have none")
        mask = np.isin(labels, keep)
        n = int(mask.sum())
        if self.kind == "array":
            return replace(self, count=n, x=self.x[mask], y=self.y[mask])
        if self.kind == "files":
            return replace(self, count=n, paths=self.paths[mask], labels=self.labels[mask])
        if not self.whole_files or self.keep:
            raise InputError("select classes before cutting records to a range or selecting again")
        return replace(self, count=n, records_total=n, keep=keep)

    def elements(self) -> tf.data.Dataset:
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

    def shuffled_images(self, seed: int, worker: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
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
            ds = self._parsed(files.interleave(lambda f: tf.data.TFRecordDataset(f), cycle_length=min(4, len(self.files)),
                                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        else:  # a range of the records (train_limit, validation split): the fixed order, buffer-shuffled
            ds = self._records(list(self.files)).skip(self.start).take(self.count)
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        return self._drop_bad(ds.map(lambda e, y: self._decode(e, y)[0], num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True))

    def shard_policy(self, num_workers: int = 1):
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

    def pipeline(self, batch_size: int = BATCH_SIZE, shuffle: bool = True, num_levels: int | None = None, seed: int = 0,
                 repeat: bool = False, skip_epochs: int = 0, worker: tuple[int, int] = (0, 1),
                 perturb_rate: float = 0.0) -> tf.data.Dataset:
        """`(images, images)` batches for `model.fit` (`tfp_ae.data.batch_stream`): `shuffled_images`
        when `shuffle`, else the fixed order. `worker` `(index, count)` of a multi-worker run: with
        `shard_policy` FILE the worker reads only its files; `perturb_rate`: see `tfp_ae.data.perturb`
        (the files are split here, and TensorFlow's auto-sharding is turned off: it cannot see through
        the pipeline's scan)."""
        policy, why = self.shard_policy(worker[1])
        if why:
            print(f"multi-worker input: {why}", flush=True)
        if policy == tf.data.experimental.AutoShardPolicy.FILE:
            images, policy = self.shuffled_images(seed, worker), tf.data.experimental.AutoShardPolicy.OFF
        else:
            images = self.shuffled_images(seed) if shuffle else self.elements().map(lambda x, y: x)
        return batch_stream(images, self.count, batch_size, num_levels, seed, repeat, skip_epochs, policy,
                            perturb_rate, self.num_levels)

    def take(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
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
      class_names: the name of each label index (folder names, a TFDS `ClassLabel`'s names), or None.
      selected_classes: `{index: name}` of the classes every split was restricted to
        (`tfp_ae.data.classes.select_classes`), or None (all images).
    """
    name: str
    description: str
    image_shape: tuple
    num_levels: int
    splits: dict
    skipped: list = field(default_factory=list)
    class_names: list | None = None
    selected_classes: dict | None = None

    @property
    def has_labels(self) -> bool:
        return all(s.has_labels for s in self.splits.values())

    def all_images(self) -> Split:
        """One `Split` of every image of an image-file source, train and test together, sorted by path
        (e.g. a flat folder of OOD images, scored whole).

        Raises:
          InputError: the source is not a folder of image files.
        """
        train, test = self.splits["train"], self.splits["test"]
        if train.kind != "files":
            raise InputError(f"{self.description}: only a folder of image files can be taken whole")
        paths = np.sort(np.concatenate([train.paths, test.paths]))
        return replace(train, count=len(paths), paths=paths, labels=None)

    def print_skipped(self) -> None:
        """Print one line per image file left out by `skip_bad_images` (path and reason)."""
        for path, reason in self.skipped:
            print(f"skipped unreadable image {path}: {reason}", flush=True)

    def metrics(self) -> dict:
        """What `metrics.json` records of the source beyond its size: `skipped_files` (the first 100),
        `class_names` (when every split is labelled) and `classes` (`selected_classes`), each where it applies."""
        out = {}
        if self.skipped:
            out["skipped_files"] = [p for p, _ in self.skipped[:100]]
        if self.class_names is not None and self.has_labels:
            out["class_names"] = list(self.class_names)
        if self.selected_classes is not None:
            out["classes"] = dict(indices=list(self.selected_classes), names=list(self.selected_classes.values()))
        return out

    @property
    def streamed(self) -> bool:
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

    def sample(self, test_images: int, train_bytes: int = SAMPLE_BYTES) -> Dataset:
        """A bounded in-memory `tfp_ae.data.Dataset`: the first `test_images` test images and as many
        training images as fit in `train_bytes` of float32 (all of MNIST's 60,000; none when 0), for
        what needs arrays: L2 %, calibration, figures, the FID classifier and its features."""
        n_train = train_bytes // (4 * int(np.prod(self.image_shape)))
        (xtr, ytr), (xte, yte) = self.splits["train"].take(n_train), self.splits["test"].take(test_images)
        if ytr is None or yte is None:
            ytr = yte = None
        return Dataset(self.name, xtr, ytr, xte, yte, self.num_levels, self.description,
                       self.class_names if ytr is not None else None)


def array_split(x: np.ndarray, num_levels: int = 256, y: np.ndarray | None = None) -> Split:
    """A `Split` over images in memory, float32 `[N, H, W, C]` in [0, 1] (labels `y` `[N]` or None)."""
    return Split("array", len(x), tuple(x.shape[1:]), num_levels, x=x, y=y)
