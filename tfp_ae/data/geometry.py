"""How every decoded image is shaped (`Geometry`: channels, centre crop, antialiased resize,
re-quantised to the source's levels) and how encoded image bytes are decoded (`decode_image`)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from tfp_ae._tf import tf
from tfp_ae.errors import InputError

CROPS = ("none", "center")


@dataclass(frozen=True)
class Geometry:
    """How every decoded image is shaped: `channels` (1 grey, 3 RGB; None keeps the source's),
    `crop` (`center`: crop to the target's aspect ratio before resizing), `size` `(H, W)` (None
    keeps the source's). Resizing is `tf.image.resize(..., antialias=True)` (bilinear), and the
    result is re-quantised to the source's `num_levels` (pixels `k / (L - 1)`)."""
    size: tuple | None = None
    crop: str = "none"
    channels: int | None = None

    @classmethod
    def parse(cls, image_size: int | None = None, crop: str = "none", channels: int | None = None):
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

    def shape(self, source_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The `(H, W, C)` of a source image of shape `source_shape` after this geometry."""
        h, w, c = source_shape
        return (*(self.size or (h, w)), self.channels or c)

    def apply(self, x: tf.Tensor, num_levels: int = 256) -> tf.Tensor:
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


def decode_image(encoded: tf.Tensor, channels: int, num_levels: int = 256) -> tf.Tensor:
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
