"""What an architecture is asked to build: the head's parameter layout (`ParamLayout`) and the
architecture's settings (`ArchSettings`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tfp_ae.heads.base import Head


@dataclass(frozen=True)
class ParamLayout:
    """The flat parameters a decoder outputs for a head (`Head.pixel_layout`), for images
    `image_shape` `(H, W, C)` with D = H*W*C pixel values:

    - `widths`: per component, segments of w values per pixel value (`[H, W, C, w]` flattened);
    - `n_global`: per component, values that belong to no pixel;
    - `num_components` K (K > 1: K mixture logits first, then the components one after another).

    `size` equals the head's `params_size`. A dense decoder outputs the `size` values directly; a
    convolutional one outputs `channels_per_pixel` maps and `global_size` values from its code
    (`tfp_ae.architectures.layers.ParameterMaps` puts them in order)."""
    image_shape: tuple[int, int, int]
    widths: tuple[int, ...]
    n_global: int = 0
    num_components: int = 1

    @classmethod
    def of(cls, head: Head | type[Head], image_shape: tuple[int, int, int] | None = None, num_components: int | None = None,
           **options) -> ParamLayout:
        """The layout of a head instance (its event shape, options and K), or of a head class for
        `image_shape`, `num_components` and `options` (checked: `Head.check_options`)."""
        if isinstance(head, type):
            image_shape, options = tuple(image_shape), head.check_options(tuple(image_shape), **options)
        else:
            image_shape, num_components, options = tuple(head.event_shape), head.num_components, head.option_values
        widths, n_global = head.pixel_layout(image_shape, **options)
        return cls(image_shape, tuple(int(w) for w in widths), int(n_global), int(num_components or 1))

    @property
    def pixels(self) -> int:
        """D = H*W*C."""
        return math.prod(self.image_shape)

    @property
    def channels_per_pixel(self) -> int:
        """Values per pixel value of all components, K * sum(widths) (a map has C times as many channels)."""
        return self.num_components * sum(self.widths)

    @property
    def global_size(self) -> int:
        """Values not on the image: K * n_global, plus K mixture logits when K > 1."""
        k = self.num_components
        return k * self.n_global + (k if k > 1 else 0)

    @property
    def size(self) -> int:
        """All flat parameters (the head's `params_size`)."""
        return self.pixels * self.channels_per_pixel + self.global_size

    def location(self) -> ParamLayout:
        """The location alone (the first segment of a K = 1 head): what a `faithful` location decoder outputs."""
        return replace(self, widths=(1,), n_global=0, num_components=1)

    def dispersion(self) -> ParamLayout:
        """Everything after the location (a K = 1 head): what a `faithful` dispersion branch outputs."""
        return replace(self, widths=self.widths[1:], num_components=1)


@dataclass(frozen=True)
class ArchSettings:
    """An architecture's settings (`RunConfig` fields of the same names).

    latent_dim: the code's size (`mlp`, `cnn_dense`, `conv`; the paper's 32).
    conv_width: `conv`: filters of the first convolution, doubled at each level up to `MAX_FILTERS`
      (None: 32).
    conv_depth: `conv`: stride-2 levels (None: chosen from the image size, `tfp_ae.architectures.conv.depth`).
    """
    latent_dim: int = 32
    conv_width: int | None = None
    conv_depth: int | None = None
