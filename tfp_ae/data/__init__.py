"""Data: every `--dataset` string becomes a `Source`, whose train and test `Split`s stream through
`tf.data` (never loaded whole, except the in-memory kinds), and every training pipeline ends in
`batch_stream` (batching, stateless dequantisation and perturbation).

One module per source kind, tried in the order of `SOURCE_KINDS` (the first whose `claims(spec)`
is true opens it):

    tfds:NAME[/CONFIG]                          `tfds_source`: a TFDS dataset prepared in --data-dir
    FOLDER of *.tfrecord, or a glob             `shards`: TFRecord shards (`SHARD_SCHEMA`), e.g. from `convert`
    FOLDER of image files                       `folders`: PNG, JPEG, BMP, GIF, found recursively
    mnist | fashion_mnist | digits | FILE.npz   `memory`: arrays in memory (`load_dataset`)

`classes` (`select_classes`) then restricts every split of a labelled source to some of its classes.

A new source kind is one module with `claims(spec) -> bool` and
`open_source(spec, geometry, options) -> Source`, plus one line in `SOURCE_KINDS`.

The rest of the package: `geometry` (`Geometry`, `decode_image`), `split` (`Split`, `Source`),
`arrays` (`Dataset`, `check_images`), `named` (IDX files, digits), `npz`, `masks` (defect masks),
`pipeline` (`batch_stream`, `dequantize`, `perturb`, `make_pipeline`).

Every image is decoded to float32 `[H, W, C]` in [0, 1], then shaped by a `Geometry` (`--channels`,
`--crop center`, `--image-size`, resized with antialiasing and re-quantised to the source's
levels), so `num_levels` (256 for 8-bit files) stays true and `bits_per_dim` / `--dequantize`
stay honest.

Moved in 0.2.0: `tfp_ae.sources` is now this package; `tfp_ae.sources` still imports and re-exports
these names.
"""
from dataclasses import dataclass

from tfp_ae.data import folders, memory, shards, tfds_source
from tfp_ae.data.arrays import Dataset, check_images, prepare_images
from tfp_ae.data.classes import class_table, describe_classes, kept_classes, resolve_classes, select_classes
from tfp_ae.data.folders import IMAGE_EXTENSIONS, scan_images
from tfp_ae.data.geometry import CROPS, Geometry, decode_image
from tfp_ae.data.masks import MASK_SUFFIX, load_masks
from tfp_ae.data.named import (
    CLASS_NAMES,
    DATASETS,
    DataNotFoundError,
    dataset_available,
    find_idx_dir,
    load_dataset,
    network_reachable,
    read_idx,
)
from tfp_ae.data.pipeline import BATCH_SIZE, SHUFFLE_BUFFER, array_images, batch_stream, dequantize, make_pipeline, perturb
from tfp_ae.data.shards import SHARD_SCHEMA, SHARDS_INFO, convert
from tfp_ae.data.split import SAMPLE_BYTES, SPLITS, Source, Split, array_split

SOURCE_KINDS = (tfds_source, shards, folders, memory)  # the order in which a --dataset string is claimed


@dataclass(frozen=True)
class SourceOptions:
    """What a source kind may need besides the spec and the geometry (see `open_source`)."""
    data_dir: str | None = None
    test_fraction: float = 0.1
    download: bool = False
    skip_bad_images: bool = False
    rescale: bool = False


def open_source(dataset: str, data_dir: str | None = None, image_size: str | int | None = None, crop: str = "none",
                channels: int | None = None, test_fraction: float = 0.1, download: bool = False,
                skip_bad_images: bool = False, rescale: bool = False, classes: str | int | list | None = None,
                exclude_classes: str | int | list | None = None) -> Source:
    """The `Source` a `--dataset` string names (see the module docstring for the kinds).

    Args:
      dataset: `mnist`, `fashion_mnist`, `digits`, a `.npz` path, `tfds:NAME[/CONFIG]`, a folder of
        images or of `*.tfrecord` shards, or a glob of shard files.
      data_dir: IDX folder for the named datasets; TFDS's data_dir for `tfds:`.
      image_size: `H` or `HxW`: resize (`Geometry.parse`).
      crop: `none` or `center` (`Geometry.parse`).
      channels: 1, 3 or None (`Geometry.parse`).
      test_fraction: a folder without `train/` and `test/`: the fraction of its files held out.
      download: `tfds:` only: download and prepare the dataset when it is not prepared.
      skip_bad_images: leave unreadable image files out (listed in `Source.skipped`) instead of raising.
      rescale: in-memory sources given as 0-255: divide by 255.
      classes: keep only these classes in every split (names or indices, comma-separated;
        `select_classes`), or None.
      exclude_classes: keep every class but these, or None.
    Returns:
      a `Source`; its `class_names` name the labels where the source has names, its `selected_classes`
        the classes kept.
    Raises:
      InputError: an unknown name, an empty folder or one without images, a corrupt or truncated
        file (naming it), mixed sizes or channels without `--image-size` / `--channels`, shards
        without an `image` feature, an unprepared TFDS dataset without `download`.
        A class selection on a source without labels, an unknown class (naming those that exist), a
        selection that keeps no class or a class without training images.
      DataNotFoundError: a named dataset with no local copy (offline: within seconds).
    """
    geometry = Geometry.parse(image_size, crop, channels)
    options = SourceOptions(data_dir, test_fraction, download, skip_bad_images, rescale)
    spec = str(dataset)
    kind = next(k for k in SOURCE_KINDS if k.claims(spec))
    return select_classes(kind.open_source(spec, geometry, options), classes, exclude_classes)


__all__ = ["BATCH_SIZE", "CLASS_NAMES", "CROPS", "DATASETS", "DataNotFoundError", "Dataset", "Geometry",
           "IMAGE_EXTENSIONS", "MASK_SUFFIX", "SAMPLE_BYTES", "SHARDS_INFO", "SHARD_SCHEMA", "SHUFFLE_BUFFER",
           "SOURCE_KINDS", "SPLITS", "Source", "SourceOptions", "Split", "array_images", "array_split",
           "folders", "shards", "batch_stream", "check_images", "class_table", "convert", "describe_classes",
           "dataset_available", "decode_image", "dequantize", "find_idx_dir", "kept_classes", "load_dataset",
           "load_masks", "make_pipeline", "network_reachable", "open_source", "perturb", "prepare_images",
           "read_idx", "resolve_classes", "scan_images", "select_classes"]
