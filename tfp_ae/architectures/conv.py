"""`conv`: a deep convolutional autoencoder for real images from 16 to 256 pixels a side, 1 or 3
channels (after Bergmann et al., VISAPP 2019, "Improving Unsupervised Defect Segmentation by
Applying Structural Similarity to Autoencoders": 4x4 stride-2 convolutions down to a small code, a
mirrored decoder).

- Encoder: `depth` levels of Conv2D(f_i, 4x4, stride 2, same, ReLU), f_i = `conv_width` x 2^i up to
  `MAX_FILTERS`; flatten; Dense(latent_dim) (a linear code).
- Decoder: Dense to the smallest maps (`f_{depth-1}` channels, ReLU), `depth` levels of
  Conv2DTranspose(4x4, stride 2, same, ReLU) (kernel a multiple of the stride: no checkerboard
  overlap pattern), a 3x3 Conv2D to the head's parameter maps
  (`ParamLayout.channels_per_pixel` per image channel), and Dense(code) for the head's global values
  (mixture logits, df, a matrix head's row and column scales); `ParameterMaps` orders them as the
  head reads them. Every pixel's location and scale come from the maps at that pixel.
- Sizes that are not a multiple of 2^depth are zero-padded at the bottom and right inside the
  encoder, and the decoder's maps are cropped back to H x W: the head's event shape is the image's.
- The ReLU layers start from He et al.'s (ICCV 2015) uniform initialisation: with Keras' Glorot default an
  MSE autoencoder of 1,024 brick tiles (128 x 128, batch 32) stayed at the mean image (MSE = the pixel
  variance, 0.0108) for 18 of 20 epochs; with He's it left it after 9 (test MSE 0.0067 against
  0.0080). BatchNorm did not help (0.0122).
- ReLU, not Bergmann et al.'s LeakyReLU(0.2): TensorFlow's CPU graph optimiser fails on the
  gradient of Conv2D + LeakyReLU and prints an error line in every run (TF 2.21).
- Heads whose parameters grow as D x D (`normal_full`, `student_t_full`) are refused (`check_head`).
"""
from __future__ import annotations

import math

from tfp_ae._tf import tfk
from tfp_ae.architectures.layers import ParameterMaps
from tfp_ae.architectures.layout import ArchSettings, ParamLayout
from tfp_ae.errors import InputError

L = tfk.layers
DEFAULT_WIDTH = 16   # filters of the first level (32: 4x the time; docs/benchmarks/conv.md)
MAX_FILTERS = 256    # the doubling stops here
MAX_DEPTH = 7        # 2^7 = 128: a 256-pixel image down to 2 x 2
SMALLEST_SIDE = 4    # the automatic depth halves the shorter side down to 4-7 pixels
ACTIVATION = "relu"  # LeakyReLU after Conv2D trips grappler's remapper on CPU (an error line per run)
INIT = "he_uniform"  # of the ReLU layers (He et al. 2015): Glorot's halves the signal at each of the ~12 layers


def depth(image_shape: tuple[int, int, int], settings: ArchSettings) -> int:
    """Stride-2 levels: `settings.conv_depth`, or by default the most that keep the shorter side at
    least `SMALLEST_SIDE` pixels (at least 1): 2 for 16-31 pixels (28x28: a 7x7 map), 5 for 128, 6 for 256."""
    if settings.conv_depth is not None:
        return int(settings.conv_depth)
    return max(1, int(math.floor(math.log2(min(image_shape[:2]) / SMALLEST_SIDE))))


def filters(image_shape: tuple[int, int, int], settings: ArchSettings) -> list[int]:
    """Filters of each encoder level: width x 2^i up to `MAX_FILTERS`."""
    width = DEFAULT_WIDTH if settings.conv_width is None else int(settings.conv_width)
    return [min(width * 2 ** i, MAX_FILTERS) for i in range(depth(image_shape, settings))]


def padding(image_shape: tuple[int, int, int], settings: ArchSettings) -> tuple[int, int]:
    """Rows and columns of zeros added at the bottom and right to reach a multiple of 2^depth."""
    m = 2 ** depth(image_shape, settings)
    return (-image_shape[0]) % m, (-image_shape[1]) % m


def smallest_maps(image_shape: tuple[int, int, int], settings: ArchSettings) -> tuple[int, int, int]:
    """`(h, w, f)` of the encoder's last maps (the decoder's first)."""
    m = 2 ** depth(image_shape, settings)
    pad = padding(image_shape, settings)
    return (image_shape[0] + pad[0]) // m, (image_shape[1] + pad[1]) // m, filters(image_shape, settings)[-1]


def encoder(image_shape: tuple[int, int, int], settings: ArchSettings) -> tfk.Model:
    """Images `[B, H, W, C]` -> codes `[B, latent_dim]` (see the module docstring)."""
    pad = padding(image_shape, settings)
    layers = [L.InputLayer(image_shape)] + ([L.ZeroPadding2D(((0, pad[0]), (0, pad[1])))] if any(pad) else [])
    for f in filters(image_shape, settings):
        layers += [L.Conv2D(f, 4, strides=2, padding="same", activation=ACTIVATION, kernel_initializer=INIT)]
    layers += [L.Flatten(), L.Dense(settings.latent_dim)]
    return tfk.Sequential(layers, name="encoder")


def decoder(image_shape: tuple[int, int, int], code_shape: tuple[int, ...], layout: ParamLayout,
            settings: ArchSettings, hidden_units: int = 0, name: str = "decoder") -> tfk.Model:
    """Codes `[B, *code_shape]` -> the head's flat parameters `[B, layout.size]` (see the module
    docstring). `hidden_units` > 0 puts a Dense(hidden_units, ReLU) layer first (the `faithful`
    dispersion branch's `dispersion_units`)."""
    code = L.Input(code_shape)
    h = L.Flatten()(code) if len(code_shape) > 1 else code
    if hidden_units:
        h = L.Dense(hidden_units, "relu", kernel_initializer="glorot_uniform")(h)
    if not layout.channels_per_pixel:  # only global values (a faithful student_t_identity's df)
        return tfk.Model(code, L.Dense(layout.global_size)(h), name=name)
    rows, cols, top = smallest_maps(image_shape, settings)
    x = L.Dense(rows * cols * top, activation=ACTIVATION, kernel_initializer=INIT)(h)
    x = L.Reshape((rows, cols, top))(x)
    sizes = filters(image_shape, settings)
    for f in [*sizes[-2::-1], sizes[0]]:  # mirrored: f_{depth-2}, ..., f_0, then f_0 at full size
        x = L.Conv2DTranspose(f, 4, strides=2, padding="same", activation=ACTIVATION, kernel_initializer=INIT)(x)
    x = L.Conv2D(image_shape[2] * layout.channels_per_pixel, 3, padding="same")(x)
    pad = padding(image_shape, settings)
    if any(pad):
        x = L.Cropping2D(((0, pad[0]), (0, pad[1])))(x)
    parameter_maps = ParameterMaps(image_shape, layout.widths, layout.n_global, layout.num_components)
    out = parameter_maps([x, L.Dense(layout.global_size)(h)] if layout.global_size else x)
    return tfk.Model(code, out, name=name)


def dispersion_decoder(image_shape: tuple[int, int, int], code_shape: tuple[int, ...], layout: ParamLayout,
                       settings: ArchSettings, hidden_units: int) -> tfk.Model:
    """The `faithful` dispersion branch: a second `decoder` (its own weights) of the scales' maps."""
    return decoder(image_shape, code_shape, layout, settings, hidden_units, name="dispersion")


def activation_values(image_shape: tuple[int, int, int], layout: ParamLayout, settings: ArchSettings) -> int:
    """Values of every layer's output per image, each counted once: the encoder's maps, the decoder's
    (the same sizes, then `conv_width` maps at full size) and the parameter maps. What training keeps
    for the backward pass, with its gradients, is a small multiple of it (`tfp_ae.runtime.ACTIVATION_COPIES`;
    the resulting estimate is 1.3-1.7x the peak RSS measured in docs/benchmarks/cpu_conv.md)."""
    h, w = image_shape[0] + padding(image_shape, settings)[0], image_shape[1] + padding(image_shape, settings)[1]
    sizes = filters(image_shape, settings)
    maps = sum((h // 2 ** (i + 1)) * (w // 2 ** (i + 1)) * f for i, f in enumerate(sizes))
    return 2 * maps + h * w * sizes[0] + h * w * image_shape[2] * layout.channels_per_pixel


def check(image_shape: tuple[int, int, int] | None, settings: ArchSettings) -> None:
    """Raises `InputError`: a `conv_width` or `conv_depth` that is not a positive integer (depth at
    most `MAX_DEPTH`), or images (`image_shape`, None: not known yet) whose shorter side is below
    2^depth (the code would sit on padding)."""
    for name, v, high in (("conv_width", settings.conv_width, None), ("conv_depth", settings.conv_depth, MAX_DEPTH)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or (high and v > high)):
            raise InputError(f"{name} (--{name.replace('_', '-')}) must be an integer >= 1"
                             + (f" and <= {high}" if high else "") + f"; got {v!r}")
    if image_shape is None:
        return
    d = depth(image_shape, settings)
    if min(image_shape[:2]) < 2 ** d:
        raise InputError(f"arch 'conv' halves the images {d} times: they must be at least {2 ** d} pixels a side, got "
                         f"{tuple(image_shape[:2])}; give a smaller --conv-depth or larger --image-size")
