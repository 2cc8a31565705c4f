"""The in-memory kind: the named datasets (`mnist`, `fashion_mnist`, `digits`) and `.npz` files,
loaded whole as arrays (`tfp_ae.data.named.load_dataset`); the geometry is applied as they stream.
It takes every `--dataset` string the other kinds leave, so it is last in the registry."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tfp_ae.data.arrays import prepare_images
from tfp_ae.data.named import load_dataset
from tfp_ae.data.split import Source, Split
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.data import SourceOptions
    from tfp_ae.data.arrays import Dataset
    from tfp_ae.data.geometry import Geometry


def claims(spec: str) -> bool:
    """Every spec: the in-memory kind is the registry's last resort (an unknown name is then an error)."""
    return True


def open_source(spec: str, geometry: Geometry, options: SourceOptions) -> Source:
    """The `Source` of a named dataset or an `.npz` file."""
    if (spec.endswith(".npz") or os.sep in spec) and not Path(spec).exists():
        raise InputError(f"dataset {spec} does not exist (no such file or folder)")
    return array_source(load_dataset(spec, options.data_dir), geometry, options.rescale)


def array_source(data: Dataset, geometry: Geometry, rescale: bool) -> Source:
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
    return Source(data.name, data.source, splits["train"].image_shape, data.num_levels, splits,
                  class_names=data.class_names)
