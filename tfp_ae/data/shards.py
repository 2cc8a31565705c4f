"""TFRecord shards as a `Source` (`SHARD_SCHEMA`: one `tf.train.Example` per image), and `convert`,
which writes any `Source` as shards. Shard files are assigned to a split by name (`train*`,
`test*`); `convert` also writes `SHARDS_INFO` (counts, shape, pixel levels, class names)."""
from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from tfp_ae._tf import tf
from tfp_ae.data.split import SPLITS, Source, Split
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.data import SourceOptions
    from tfp_ae.data.geometry import Geometry

SHARDS_INFO = "tfp_ae_shards.json"
SHARD_SCHEMA = {  # one tf.train.Example per image
    "image": tf.io.FixedLenFeature([], tf.string),  # the encoded image (PNG from `convert`; any format decode_image reads)
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),  # class index; -1 or absent: no label
}


def claims(spec: str) -> bool:
    """A folder holding `*.tfrecord*` files, or a glob pattern that is not an existing path."""
    path = Path(spec)
    if path.is_dir():
        return bool(glob.glob(str(path / "*.tfrecord*")))
    return any(ch in spec for ch in "*?[") and not path.exists()


def open_source(spec: str, geometry: Geometry, options: SourceOptions) -> Source:
    """The `Source` of the shard folder or glob `spec`."""
    return shard_source(spec, geometry, options.skip_bad_images)


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


def shard_source(spec: str, geometry: Geometry, skip_bad_images: bool = False) -> Source:
    """The `Source` of TFRecord shards (`SHARD_SCHEMA`) in a folder or matching a glob, with the counts,
    shape, levels and class names of their `SHARDS_INFO` when present.

    Raises:
      InputError: no files, a split without files, truncated or corrupt records, records without an
        `image` feature or whose first image cannot be decoded.
    """
    by_split = _shard_files(spec)
    folder = Path(by_split["train"][0]).parent
    info = json.loads((folder / SHARDS_INFO).read_text()) if (folder / SHARDS_INFO).exists() else {}
    try:
        first = next(iter(tf.data.TFRecordDataset(by_split["train"][:1]).take(1)), None)
    except tf.errors.DataLossError as e:
        raise InputError(f"shard file {by_split['train'][0]} is truncated or corrupt "
                         f"({e.message.splitlines()[0]})") from None
    if first is None:
        raise InputError(f"shard file {by_split['train'][0]} holds no records")
    try:
        features = tf.train.Example.FromString(first.numpy()).features.feature
    except Exception as e:  # a protobuf DecodeError: not a tf.train.Example
        raise InputError(f"shard file {by_split['train'][0]}: its records are not tf.train.Example protos ({e})") from None
    if "image" not in features or not features["image"].bytes_list.value:
        raise InputError(f"shard file {by_split['train'][0]}: records need a bytes feature 'image' (an encoded "
                         f"PNG/JPEG), found {sorted(features) or 'no features'}; see tfp_ae.data.SHARD_SCHEMA")
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
    return Source(name, f"TFRecord shards {spec}", shape, num_levels, splits,
                  class_names=info.get("class_names") if has_labels else None)


# ---------------------------------------------------------------- writing shards

def _example(encoded, label):
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
    if label >= 0:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def convert(source: Source, out: str | os.PathLike, shards: int = 1, overwrite: bool = False):
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
                channels=int(source.image_shape[-1]), num_levels=L, has_labels=source.has_labels,
                class_names=source.class_names, counts={},
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
