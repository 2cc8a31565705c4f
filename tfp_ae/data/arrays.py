"""Images held in memory: the `Dataset` record every in-memory loader returns, and the checks
every array of images passes (`check_images`, `prepare_images`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfp_ae.errors import InputError


@dataclass
class Dataset:
    """A dataset split into train and test arrays.

    Attributes:
      name: dataset name (`mnist`, `fashion_mnist`, `digits`, the stem of an `.npz`, ...).
      x_train, x_test: float32 images `[N, H, W, C]` in [0, 1].
      y_train, y_test: int64 labels `[N]`, or None for a source without labels.
      num_levels: number of intensity levels L of the quantised pixels (256 for 8 bits).
      source: where the data was read from.
      class_names: the name of each label index (`class_names[y]`), or None when the labels are
        bare indices.
    """
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_levels: int
    source: str
    class_names: list | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def check_images(x: np.ndarray, name: str = "images", image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
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


def prepare_images(x: np.ndarray, rescale: bool = False, name: str = "images",
                   image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
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
