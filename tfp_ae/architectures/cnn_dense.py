"""`cnn_dense`: the paper's CNN front end with a decoder that learns (every decoder output used):
Conv2D(320, 3x3, same, ReLU), MaxPool 2x2, a 1x1 Conv2D to 16 channels (ReLU), flatten,
Dense(latent_dim, ReLU) | Dense to exactly `params_size`, the head. The 1x1 reduction keeps the dense
layer at 16*(H/2)*(W/2)*latent_dim weights instead of 320*(H/2)*(W/2)*params_size (about 100k
instead of 98M for a 28x28 `normal_diag`)."""
from __future__ import annotations

import math

from tfp_ae._tf import tfk
from tfp_ae.architectures import cnn, mlp
from tfp_ae.architectures.layout import ArchSettings, ParamLayout
from tfp_ae.errors import InputError

L = tfk.layers


def features() -> list[tfk.layers.Layer]:
    """The front end: Conv2D(320, 3x3, same, ReLU), MaxPool 2x2 (`cnn.conv_relu_pool`),
    Conv2D(16, 1x1, ReLU), flatten (also a VAE's, `tfp_ae.vae`)."""
    return [*cnn.conv_relu_pool(), L.Conv2D(16, 1, activation="relu"), L.Flatten()]


def encoder(image_shape: tuple[int, int, int], settings: ArchSettings) -> tfk.Model:
    """Images -> codes `[B, latent_dim]`: `features`, Dense(latent_dim, ReLU)."""
    return tfk.Sequential([L.InputLayer(image_shape), *features(),
                           L.Dense(settings.latent_dim, "relu", kernel_initializer="glorot_uniform")], name="encoder")


def decoder(image_shape: tuple[int, int, int], code_shape: tuple[int, ...], layout: ParamLayout,
            settings: ArchSettings) -> tfk.Model:
    """Codes -> the head's `layout.size` parameters: one Dense layer."""
    return mlp.dense_decoder(code_shape, layout.size)


def activation_values(image_shape: tuple[int, int, int], layout: ParamLayout, settings: ArchSettings) -> int:
    """The full-resolution 320-channel convolution, its pooled copy, the 16-channel reduction."""
    d = math.prod(image_shape[:2])
    return cnn.FILTERS * d + cnn.FILTERS * d // 4 + 4 * d + settings.latent_dim


def check(image_shape: tuple[int, int, int] | None, settings: ArchSettings) -> None:
    """Raises `InputError` unless H, W >= 2 (the 2x2 max pooling)."""
    if image_shape is not None and min(image_shape[:2]) < 2:
        raise InputError(f"arch 'cnn_dense' pools 2x2: images must be at least 2x2, got {tuple(image_shape[:2])}; "
                         "use --arch mlp")
