"""`cnn`, the paper's CNN autoencoder (Ciobanu, Section 4), faithful: Conv2D(320, 3x3, same, ReLU),
MaxPool 2x2 | Conv2D(F, 3x3, same), UpSampling 2x2, flatten, the first `params_size` values."""
from __future__ import annotations

import math

from tfp_ae._tf import tfk
from tfp_ae.architectures.layers import BiasActivation, TakeFirst
from tfp_ae.architectures.layout import ArchSettings, ParamLayout
from tfp_ae.errors import InputError

L = tfk.layers
FILTERS = 320  # the paper's first convolution


def conv_relu_pool(filters: int = FILTERS) -> list[tfk.layers.Layer]:
    """Ciobanu, Section 4's first block, Conv2D(filters, 3x3, same, ReLU) then MaxPool 2x2, computed
    as Conv2D without bias -> MaxPool 2x2 -> `BiasActivation` (bias, ReLU). The two are the same
    function: max(relu(a_i + b)) = relu(max(a_i) + b) exactly in floating point, since adding b
    (rounded) and ReLU are monotone; the gradients agree except where a pooled pre-activation ties
    or is exactly 0. The bias and ReLU then run, forward and backward, on the pooled tensor, 4x
    smaller than the conv output: a CNN training step 1.1-1.3x faster on a CPU
    (docs/benchmarks/cpu_cnn.md). Same parameters as Conv2D with bias (3x3xCxfilters + filters)."""
    return [L.Conv2D(filters, 3, padding="same", use_bias=False), L.MaxPool2D(2), BiasActivation("relu")]


def encoder(image_shape: tuple[int, int, int], settings: ArchSettings) -> tfk.Model:
    """Images -> feature maps `[B, H/2, W/2, 320]` (`conv_relu_pool`): the code has no bottleneck."""
    return tfk.Sequential([L.InputLayer(image_shape), *conv_relu_pool()], name="encoder")


def decoder(image_shape: tuple[int, int, int], code_shape: tuple[int, ...], layout: ParamLayout,
            settings: ArchSettings) -> tfk.Model:
    """Conv2D(F, 3x3, same), UpSampling 2x2, flatten, the first `layout.size` values;
    F = ceil(size / (H'*W')) with H' = 2 floor(H/2), W' = 2 floor(W/2) the upsampled size
    (H*W for even sizes, as in the paper)."""
    h, w, _ = image_shape
    filters = math.ceil(layout.size / ((2 * (h // 2)) * (2 * (w // 2))))
    return tfk.Sequential([L.InputLayer(code_shape), L.Conv2D(filters, 3, padding="same"), L.UpSampling2D(2),
                           L.Flatten(), TakeFirst(layout.size)], name="decoder")


def activation_values(image_shape: tuple[int, int, int], layout: ParamLayout, settings: ArchSettings) -> int:
    """The full-resolution 320-channel convolution, its pooled copy, the upsampled decoder maps."""
    d = math.prod(image_shape[:2])
    return FILTERS * d + FILTERS * d // 4 + 2 * layout.size


def check(image_shape: tuple[int, int, int] | None, settings: ArchSettings) -> None:
    """Raises `InputError` unless H, W >= 2 (the 2x2 max pooling)."""
    if image_shape is not None and min(image_shape[:2]) < 2:
        raise InputError(f"arch 'cnn' pools 2x2: images must be at least 2x2, got {tuple(image_shape[:2])}; "
                         "use --arch mlp")
