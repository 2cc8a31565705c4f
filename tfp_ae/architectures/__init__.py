"""Architectures: how images become a code and a code becomes a head's parameters. One module per
architecture, one registry (`ARCHITECTURES`), each module with the same functions:

- `encoder(image_shape, settings)`: images `[B, H, W, C]` -> codes;
- `decoder(image_shape, code_shape, layout, settings)`: codes -> the head's flat parameters
  `[B, layout.size]` (`ParamLayout`, declared by the head's `pixel_layout`);
- `activation_values(image_shape, layout, settings)`: per-image activation values (the memory guard,
  `tfp_ae.runtime.estimate_train_memory`);
- `check(image_shape, settings)`: raises `InputError` for sizes or settings it cannot take;
- optionally `dispersion_decoder(...)`: the `faithful` dispersion branch (default `dense_dispersion`).

`mlp` and `cnn` are the paper's (Ciobanu, Section 4); `cnn_dense` the paper's CNN front end with a
learning decoder; `conv` a deep convolutional autoencoder for 16-256 pixel images.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING

from tfp_ae._tf import tfk
from tfp_ae.architectures import cnn, cnn_dense, conv, mlp
from tfp_ae.architectures.layers import (
    BiasActivation,
    LeadingActivation,
    ParameterMaps,
    StopGradient,
    TakeFirst,
)
from tfp_ae.architectures.layout import ArchSettings, ParamLayout
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.heads.base import Head

L = tfk.layers
ARCHITECTURES: dict[str, ModuleType] = {"mlp": mlp, "cnn": cnn, "cnn_dense": cnn_dense, "conv": conv}
PARAMETER_MAP_ARCHS = ("conv",)  # decoders that output parameter maps: heads with D x D parameters refused

__all__ = ["ARCHITECTURES", "ArchSettings", "ParamLayout", "BiasActivation", "LeadingActivation", "ParameterMaps",
           "StopGradient", "TakeFirst", "get_arch", "check_arch", "dense_dispersion", "dispersion_branch"]


def get_arch(name: str) -> ModuleType:
    """The module of architecture `name`.

    Raises:
      InputError: an unknown name (the message lists the valid ones)."""
    if name not in ARCHITECTURES:
        raise InputError(f"unknown arch {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def check_arch(name: str, image_shape: tuple[int, int, int] | None, settings: ArchSettings,
               head: Head | type[Head] | None = None, num_components: int = 1) -> None:
    """Check that architecture `name` can take images `image_shape` (None: not known yet, the size
    checks are skipped) with `settings` (and `head`).

    Raises:
      InputError: an unknown arch; images too small for it; a `latent_dim` <= 0; `conv_width` /
        `conv_depth` given for an arch other than `conv`, or not positive integers; a head with
        D x D parameters (`normal_full`, `student_t_full`) on `conv` (when `image_shape` is known),
        with the memory its parameters alone would take.
    """
    module = get_arch(name)
    if isinstance(settings.latent_dim, bool) or not isinstance(settings.latent_dim, int) or settings.latent_dim < 1:
        raise InputError(f"latent_dim (--latent-dim) must be an integer >= 1; got {settings.latent_dim!r}")
    if module is not conv and (settings.conv_width is not None or settings.conv_depth is not None):
        raise InputError(f"--conv-width and --conv-depth set the conv architecture; got --arch {name}")
    module.check(None if image_shape is None else tuple(image_shape), settings)
    if head is not None and image_shape is not None and name in PARAMETER_MAP_ARCHS and head.full_covariance:
        d, size = math.prod(image_shape), head.params_size(tuple(image_shape), num_components)
        raise InputError(f"arch {name!r} decodes per-pixel parameter maps; head {head.head_name!r} has D(D+1)/2 scale "
                         f"parameters for D = {d:,} pixel values: {size:,} outputs, {size * 4 / 2 ** 20:,.1f} MiB per "
                         "image in float32 before any gradient; use a per-pixel or low-rank head (normal_diag, "
                         "normal_lowrank)")


def dense_dispersion(code, size: int, hidden_units: int):
    """The `faithful` dispersion branch of the dense decoders on the (stop-gradient) code tensor:
    flatten, Dense(hidden_units, ReLU) (none when 0: a linear readout, like the paper's decoder),
    Dense(size): `[B, size]`."""
    h = L.Flatten()(code)
    if hidden_units:
        h = L.Dense(hidden_units, "relu", kernel_initializer="glorot_uniform", name="dispersion_hidden")(h)
    return L.Dense(size, kernel_initializer="glorot_uniform", name="dispersion")(h)


def dispersion_branch(name: str, code, image_shape: tuple[int, int, int], layout: ParamLayout,
                      settings: ArchSettings, hidden_units: int):
    """The `faithful` dispersion branch of architecture `name` applied to the code tensor `code`
    (already under stop_gradient), for the dispersion `layout` (`ParamLayout.dispersion`): the arch's
    own `dispersion_decoder`, else `dense_dispersion`. Returns `[B, layout.size]`."""
    module = get_arch(name)
    if hasattr(module, "dispersion_decoder"):
        return module.dispersion_decoder(image_shape, tuple(code.shape[1:]), layout, settings, hidden_units)(code)
    return dense_dispersion(code, layout.size, hidden_units)
