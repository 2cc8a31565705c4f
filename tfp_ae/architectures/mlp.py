"""`mlp`, the paper's MLP autoencoder (Ciobanu, Section 4): flatten, Dense(latent_dim, ReLU, Glorot
uniform) | Dense(params_size), the head."""
from __future__ import annotations

import math

from tfp_ae._tf import tfk
from tfp_ae.architectures.layout import ArchSettings, ParamLayout

L = tfk.layers


def encoder(image_shape: tuple[int, int, int], settings: ArchSettings) -> tfk.Model:
    """Images `[B, H, W, C]` -> codes `[B, latent_dim]`: flatten, Dense(latent_dim, ReLU)."""
    return tfk.Sequential([L.InputLayer(image_shape), L.Flatten(),
                           L.Dense(settings.latent_dim, "relu", kernel_initializer="glorot_uniform")], name="encoder")


def dense_decoder(code_shape: tuple[int, ...], size: int) -> tfk.Model:
    """Codes `[B, *code_shape]` -> `[B, size]`: Dense(size, Glorot uniform) (flattening first)."""
    layers = [L.InputLayer(code_shape)] + ([L.Flatten()] if len(code_shape) > 1 else [])
    return tfk.Sequential([*layers, L.Dense(size, kernel_initializer="glorot_uniform")], name="decoder")


def decoder(image_shape: tuple[int, int, int], code_shape: tuple[int, ...], layout: ParamLayout,
            settings: ArchSettings) -> tfk.Model:
    """Codes -> the head's `layout.size` parameters: one Dense layer."""
    return dense_decoder(code_shape, layout.size)


def activation_values(image_shape: tuple[int, int, int], layout: ParamLayout, settings: ArchSettings) -> int:
    """Activations per image besides the decoder outputs (which `tfp_ae.runtime` counts): the code."""
    return settings.latent_dim + math.prod(image_shape)


def check(image_shape: tuple[int, int, int] | None, settings: ArchSettings) -> None:
    """Every image size works."""
