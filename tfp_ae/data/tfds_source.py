"""A TensorFlow Datasets dataset (`tfds:NAME[/CONFIG]`) prepared in `--data-dir` as a `Source`: its
first image feature, its `ClassLabel` (labels and class names) when it has one, its train and test
(or validation) splits, read from the prepared record files."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tfp_ae._tf import tf
from tfp_ae.data.split import Source, Split
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.data import SourceOptions
    from tfp_ae.data.geometry import Geometry

PREFIX = "tfds:"


def claims(spec: str) -> bool:
    """`tfds:NAME[/CONFIG]`."""
    return spec.startswith(PREFIX)


def open_source(spec: str, geometry: Geometry, options: SourceOptions) -> Source:
    """The `Source` of `tfds:NAME`; `options.download` downloads and prepares it when it is not prepared."""
    return tfds_source(spec, options.data_dir, geometry, options.download, options.skip_bad_images)


def tfds_source(spec: str, data_dir: str | os.PathLike, geometry: Geometry, download: bool,
                skip_bad_images: bool = False) -> Source:
    """The `Source` of a TFDS dataset prepared in `data_dir` (`download`: prepare it first).

    Raises:
      InputError: an unknown or unprepared dataset (without `download`), no image feature, images of
        varying size without `--image-size`, no train and test (or validation) split.
    """
    import tensorflow_datasets as tfds  # heavy (about 2 s): imported only for a tfds: source
    name = spec[len(PREFIX):]
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise InputError(f"tfds:{name}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
        if not download:
            where = builder.data_dir_root if hasattr(builder, "data_dir_root") else data_dir
            raise InputError(
                f"tfds:{name} is not prepared in {where}. "
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
    names = list(features[label_key].names) if label_key else None
    return Source(name.replace("/", "_"), f"tfds:{name} ({builder.data_dir})", shape, 256, splits,
                  class_names=names)
