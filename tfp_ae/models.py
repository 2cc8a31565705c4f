"""The models: one interface (`ProbabilisticModel`) and the paper's autoencoders (`Autoencoder`
with the MLP and CNN architectures); the VAE (`tfp_ae.vae`) shares the interface.

Every model is a `tf_keras.Model` subclass from images `[B, H, W, C]` in [0, 1] to a distribution
over images (its head's), registered with Keras, so after `import tfp_ae`:

- `model.fit(x, x)` trains it (the compiled loss is a registered function of the head);
- `model.predict(x)` returns the head's point estimate `[B, H, W, C]` in [0, 1];
- `model.save("m.keras")` / `model.save("folder")` (SavedModel) and `tf_keras.models.load_model`
  with default arguments restore the compiled model, which again returns distributions;
- `tf_keras.models.clone_model(model)` rebuilds it with fresh weights;
- under a mixed precision policy the encoder and decoder compute in the policy's dtype and the
  head (distribution and loss) in float32.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from tfp_ae._tf import tf, tfd, tfk
from tfp_ae.config import ARCHS, LOCATION_ACTIVATIONS, STEPS_PER_EXECUTION
from tfp_ae.errors import InputError
from tfp_ae.heads import INTERVAL_LEVEL, SAMPLE_SEED, make_head, register

if TYPE_CHECKING:
    from tfp_ae.heads.base import Head

L = tfk.layers
SAVE_FORMATS = "'.keras' (Keras v3 zip) or a folder path (TensorFlow SavedModel)"


class ProbabilisticModel(tfk.Model):
    """The interface every tfp_ae model has (`Autoencoder`, `tfp_ae.vae.VAE`).

    Attributes: `encoder` (images -> code), `decoder` (code `[N, latent]` -> head parameters
    `[N, head.size]`), `head` (a `tfp_ae.heads.Head`), `image_shape` `(H, W, C)`.
    Subclasses define `call(x)` (the distribution over images given `x`), `encode(x)`,
    `log_prob(x)`, `objective(x)` and `build_args` (the keyword arguments of their builder, which
    `get_config` returns and `from_config` passes back).
    """

    kind = "ae"                # the RunConfig `model` value
    trained_prior = False      # True: `prior()` is the model's own (a VAE's); False: the paper's N(0, I)
    eval_batch_size = 500      # images per batch in evaluation
    log_prob_note = None       # how `log_prob` is computed, where it is not exact

    def __init__(self, encoder: tfk.Model, decoder: tfk.Model, head: Head, build_args: dict, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.image_shape = tuple(head.event_shape)
        self.build_args = dict(build_args)

    @property
    def code_shape(self) -> tuple[int, ...]:
        """Shape of one code (`encode`'s output without the batch axis)."""
        return tuple(self.encoder.output_shape[1:])

    def _decoder_params(self, z):
        """Head parameters `[..., head.size]` (the head's dtype, float32) for codes `[..., *code_shape]`."""
        nd = len(self.code_shape)
        p = self.decoder(tf.reshape(z, [-1, *self.code_shape]))
        p = tf.reshape(p, tf.concat([tf.shape(z)[:tf.rank(z) - nd], [self.head.size]], 0))
        return tf.cast(p, self.head.compute_dtype)

    def decode(self, z: tf.Tensor) -> tfd.Distribution:
        """p(x | z): the head's distribution for codes `z` `[..., *code_shape]`; batch `z`'s leading
        shape (any rank: built by `head.new`, not through the Keras layer), event `[H, W, C]`."""
        return self.head.new(self._decoder_params(z))

    def log_prob(self, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """log p(x) `[B]` in nats of images `x` `[B, H, W, C]` in [0, 1] (`seed`: used only by
        models that estimate it by sampling, the VAE)."""
        return self(x, training=False).log_prob(x)

    def prior(self) -> tfd.Distribution:
        """The distribution of codes to sample from: N(0, I) over `code_shape` (the paper's
        Figure 3 for an autoencoder, whose codes were not trained to follow it; a VAE's prior)."""
        return tfd.Independent(tfd.Normal(tf.zeros(self.code_shape), 1.0), len(self.code_shape))

    def sample_images(self, num_images: int, seed: tuple[int, int] | tf.Tensor | None = None) -> tf.Tensor:
        """Point estimates of p(x|z) for z ~ `prior()`: `[num_images, H, W, C]` in [0, 1]
        (Figure 3, row 1); `seed`: stateless seed of the draw."""
        return self.head.point_estimate(self.decode(self.prior().sample(num_images, seed=seed)))

    def point_estimate(self, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """The head's point estimate `[B, H, W, C]` in [0, 1] (mean; mode for t heads; mean of 50
        samples with the stateless `seed` for MAF), Ciobanu Section 3."""
        return self.head.point_estimate(self(x, training=False), seed=seed)

    def variance(self, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """Per-pixel variance `[B, H, W, C]` of p(x | input); NaN where it does not exist (`mse`;
        t heads with df <= 2)."""
        return self.head.variance(self(x, training=False), seed=seed)

    def interval(self, x: tf.Tensor, level: float = INTERVAL_LEVEL,
                 seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-pixel central `level` interval `(lo, hi)` of p(x | input), each `[B, H, W, C]` in pixel
        units (`tfp_ae.heads.Head.interval`); exists for every head but `mse`."""
        return self.head.interval(self(x, training=False), level, seed=seed)

    def conformal_interval(self, x: tf.Tensor,
                           seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-pixel risk-controlled interval `(lo, hi)` of p(x | input), each `[B, H, W, C]` in pixel
        units (`tfp_ae.heads.Head.conformal_interval`: the 90 % interval scaled by the head's fitted
        `conformal_lambda`; the central 90 % interval until `tfp_ae.calibration.fit_conformal` runs)."""
        return self.head.conformal_interval(self(x, training=False), seed=seed)

    def point_and_variance(self, x: tf.Tensor,
                           seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tuple[tf.Tensor, tf.Tensor]:
        """`point_estimate` and `variance` in one pass (MAF draws its samples once)."""
        return self.head.point_and_variance(self(x, training=False), seed=seed)

    @property
    def keras_loss(self) -> Callable | None:
        """The loss `compile` gets: None for a model that trains on its own objective (the VAE)."""
        return None

    def count_params(self) -> int:
        """The trainable parameters (the paper's counts; not the head's non-trainable `sigma_scale`)."""
        return int(sum(math.prod(w.shape) for w in self.trainable_weights))

    def predict_step(self, data: tuple):
        """`model.predict(x)` returns `point_estimate(x)` `[B, H, W, C]`."""
        x = data[0] if isinstance(data, (tuple, list)) else data
        return self.point_estimate(x)

    def get_config(self):
        return dict(self.build_args, name=self.name)

    def save(self, filepath: str | os.PathLike, *args, **kwargs) -> None:
        """Keras' `save`; HDF5 (`.h5`) cannot hold a subclassed model.

        Raises:
          ValueError: `filepath` ends in `.h5` / `.hdf5` or `save_format="h5"` is given; the
            message names the supported formats.
        """
        if str(filepath).endswith((".h5", ".hdf5")) or kwargs.get("save_format") in ("h5", "hdf5"):
            raise InputError(f"cannot save {type(self).__name__} {self.name!r} as HDF5 ({filepath}): Keras' HDF5 "
                             f"format holds only Functional and Sequential models; use {SAVE_FORMATS}, or "
                             "`save_weights('w.h5')` for the weights alone")
        return super().save(filepath, *args, **kwargs)


@register
class Autoencoder(ProbabilisticModel):
    """The paper's probabilistic autoencoder: p(x | encoder(x)), the head's distribution of the
    decoder's output (Ciobanu, Section 3). Trained by `fit(x, x)` on the head's loss (NLL in nats
    per image; MSE for the `mse` head). Build it with `build_model`."""

    def call(self, x: tf.Tensor, training: bool | None = None) -> tfd.Distribution:
        return self.head(self.decoder(self.encoder(x, training=training), training=training))

    @property
    def keras_loss(self) -> Callable:
        """The head's registered loss function (NLL in nats per image; MSE for `mse`)."""
        return self.head.loss

    def encode(self, x: tf.Tensor) -> tf.Tensor:
        """The code `[B, *code_shape]` (the bottleneck; the faithful `cnn`'s feature maps)."""
        return self.encoder(x, training=False)

    def objective(self, x: tf.Tensor) -> tf.Tensor:
        """The training loss of a batch `x` `[B, H, W, C]`: the head's loss averaged over images."""
        return tf.reduce_mean(self.head.loss(x, self(x, training=True)))

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        return build_model(**config)


def _mlp(image_shape, size, latent_dim):
    """Ciobanu, Section 4: flatten, Dense(32, ReLU, Glorot uniform), Dense(size), head."""
    encoder = tfk.Sequential([L.InputLayer(image_shape), L.Flatten(),
                              L.Dense(latent_dim, "relu", kernel_initializer="glorot_uniform")],
                             name="encoder")
    return encoder, _dense_decoder(size, latent_dim)


def _dense_decoder(size, latent_dim):
    """Dense(latent_dim -> size, Glorot uniform): the head's parameters."""
    return tfk.Sequential([L.InputLayer((latent_dim,)), L.Dense(size, kernel_initializer="glorot_uniform")],
                          name="decoder")


@register
class StopGradient(L.Layer):
    """`tf.stop_gradient`: the input passes forward, no gradient flows back to it."""

    def call(self, x: tf.Tensor):
        return tf.stop_gradient(x)


@register
class LeadingActivation(L.Layer):
    """`activation` on the first `n` features of the last axis, the others passed unchanged: a location
    output in (0, 1) (`sigmoid`) ahead of a head's other parameters."""

    def __init__(self, n: int, activation: str, **kwargs):
        super().__init__(**kwargs)
        self.n, self.activation = int(n), activation
        self._fn = tfk.activations.get(activation)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.concat([self._fn(x[..., :self.n]), x[..., self.n:]], axis=-1)

    def get_config(self) -> dict:
        return dict(super().get_config(), n=self.n, activation=self.activation)


def faithful_decoder(location_decoder: tfk.Model, code_shape: tuple[int, ...], dispersion_size: int, dispersion_units: int,
                     location_activation: str = "linear") -> tfk.Model:
    """The decoder of `loss="faithful"` (Stirn et al., AISTATS 2023, Section 3 and their Figure 2):
    the arch's own decoder outputs only the location (the first D head parameters); a separate
    dispersion branch reads the code under stop_gradient (so the NLL cannot move the encoder or
    the location) through Dense(`dispersion_units`, ReLU) (none when 0: a linear readout, like
    the paper's decoder) and a Dense layer to the `dispersion_size` remaining head parameters
    (scales, df, covariance factors). Code `[B, *code_shape]` -> `[B, D + dispersion_size]`.

    `location_activation`: `linear` (the default) or `sigmoid`, which puts the location in (0, 1),
    where the pixels' mean lies. Trained by squared error alone, a linear location misses the black
    pixels (half of Fashion-MNIST's) by a median 0.027, 24 times the spread of a dequantised level
    (1 / (256 sqrt(12)) = 0.0011), so the precise variances the likelihood rewards there cannot be
    used; a saturating sigmoid gets within 0.006 (NLL training: 0.0027; docs/results/conformal/black_pixels.csv).
    Measured (docs/results/uncertainty, `normal_diag`, 20 epochs): bits/dim 6.25 -> 5.25 on
    Fashion-MNIST, L2 1.53 % -> 1.27 %; but a normal cannot match a dequantised constant pixel's
    uniform spread, and the calibration error grows from about 0.005 to 0.014-0.025.
    Raises:
      InputError: an unknown `location_activation`.
    """
    if location_activation not in LOCATION_ACTIVATIONS:
        raise InputError(f"location_activation must be one of {', '.join(LOCATION_ACTIVATIONS)}; "
                         f"got {location_activation!r}")
    code = L.Input(code_shape)
    location = location_decoder(code)
    if location_activation != "linear":
        location = L.Activation(location_activation, name="location")(location)
    if not dispersion_size:  # e.g. normal_identity: nothing to disperse (faithful = squared error)
        return tfk.Model(code, location, name="decoder")
    h = L.Flatten()(StopGradient()(code))
    if dispersion_units:
        h = L.Dense(dispersion_units, "relu", kernel_initializer="glorot_uniform", name="dispersion_hidden")(h)
    dispersion = L.Dense(dispersion_size, kernel_initializer="glorot_uniform", name="dispersion")(h)
    return tfk.Model(code, L.Concatenate()([location, dispersion]), name="decoder")


def conv_relu_pool(filters: int = 320) -> list[tfk.layers.Layer]:
    """Ciobanu, Section 4's first block, Conv2D(filters, 3x3, same, ReLU) then MaxPool 2x2, computed
    as Conv2D without bias -> MaxPool 2x2 -> `BiasActivation` (bias, ReLU). The two are the same
    function: max(relu(a_i + b)) = relu(max(a_i) + b) exactly in floating point, since adding b
    (rounded) and ReLU are monotone; the gradients agree except where a pooled pre-activation ties
    or is exactly 0. The bias and ReLU then run, forward and backward, on the pooled tensor, 4x
    smaller than the conv output: a CNN training step 1.1-1.3x faster on a CPU
    (docs/benchmarks/cpu_cnn.md). Same parameters as Conv2D with bias (3x3xCxfilters + filters)."""
    return [L.Conv2D(filters, 3, padding="same", use_bias=False), L.MaxPool2D(2), BiasActivation("relu")]


@register
class BiasActivation(L.Layer):
    """`activation(x + bias)` with one bias per channel (the last axis), initialised to zeros as
    Conv2D's: `[..., C]` -> `[..., C]`."""

    def __init__(self, activation: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.activation = tfk.activations.get(activation)

    def build(self, input_shape: tf.TensorShape):
        self.bias = self.add_weight(name="bias", shape=[input_shape[-1]], initializer="zeros")
        super().build(input_shape)

    def call(self, x: tf.Tensor):
        return self.activation(tf.nn.bias_add(x, tf.cast(self.bias, x.dtype)))

    def get_config(self):
        return dict(super().get_config(), activation=tfk.activations.serialize(self.activation))


def _cnn(image_shape, size):
    """Ciobanu, Section 4: Conv2D(320, 3x3, same, ReLU), MaxPool 2x2 (`conv_relu_pool`) |
    Conv2D(F, 3x3, same), UpSampling 2x2, flatten, the first `size` (params_size) values;
    F = ceil(size / (H'*W')) with H' = 2 floor(H/2), W' = 2 floor(W/2) the upsampled size
    (H*W for even sizes, as in the paper)."""
    h, w, _ = image_shape
    filters = math.ceil(size / ((2 * (h // 2)) * (2 * (w // 2))))
    encoder = tfk.Sequential([L.InputLayer(image_shape), *conv_relu_pool()], name="encoder")
    decoder = tfk.Sequential([L.InputLayer(encoder.output_shape[1:]), L.Conv2D(filters, 3, padding="same"),
                              L.UpSampling2D(2), L.Flatten(), TakeFirst(size)], name="decoder")
    return encoder, decoder


@register
class TakeFirst(L.Layer):
    """The first `n` values of the last axis, `[B, m]` -> `[B, n]` (the faithful `cnn` discards the
    conv outputs beyond `params_size`)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, x: tf.Tensor):
        return x[:, :self.n]

    def get_config(self):
        return dict(super().get_config(), n=self.n)


def _cnn_dense(image_shape, size, latent_dim):
    """The paper's CNN front end with a decoder that learns: Conv2D(320, 3x3, same, ReLU),
    MaxPool 2x2, a 1x1 Conv2D to 16 channels (ReLU), flatten, Dense(latent_dim, ReLU) | Dense to
    exactly `params_size`, head. Every decoder output is used (the paper's `cnn` discards the conv
    outputs beyond `params_size`, and a 2x2 upsampling makes its means blocky); the 1x1 reduction
    keeps the dense layer at 16*(H/2)*(W/2)*latent_dim weights instead of 320*(H/2)*(W/2)*params_size
    (about 100k instead of 98M for a 28x28 `normal_diag`)."""
    encoder = tfk.Sequential([L.InputLayer(image_shape), *cnn_features(),
                              L.Dense(latent_dim, "relu", kernel_initializer="glorot_uniform")], name="encoder")
    return encoder, _dense_decoder(size, latent_dim)


def cnn_features():
    """The `cnn_dense` front end: Conv2D(320, 3x3, same, ReLU), MaxPool 2x2 (`conv_relu_pool`),
    Conv2D(16, 1x1, ReLU), flatten."""
    return [*conv_relu_pool(), L.Conv2D(16, 1, activation="relu"), L.Flatten()]


def check_image_shape(image_shape: tuple[int, int, int], arch: str) -> None:
    """Raises `InputError` unless H, W >= 2 for the convolutional architectures (their 2x2 max
    pooling). The head has already checked that `image_shape` is `(H, W, C)` with positive sizes."""
    if arch in ("cnn", "cnn_dense") and min(image_shape[:2]) < 2:
        raise InputError(f"arch {arch!r} pools 2x2: images must be at least 2x2, got {tuple(image_shape[:2])}; "
                         "use --arch mlp")


DISPERSION_UNITS = 256  # hidden units of the faithful dispersion branch (0: a linear readout)


def build_model(head: str, image_shape: tuple[int, int, int], num_components: int = 1, arch: str = "mlp",
                latent_dim: int = 32, name: str | None = None, loss: str = "nll", beta: float | None = None,
                dispersion_units: int = DISPERSION_UNITS, location_activation: str = "linear",
                local_scales: bool = False, **head_options) -> Autoencoder:
    """Build a probabilistic autoencoder (built: its weights exist).

    Args:
      head: a head name from `tfp_ae.heads.HEADS`.
      image_shape: `(H, W, C)`.
      num_components: K, mixture components of the head.
      arch: `mlp`, `cnn` (the paper's, faithful) or `cnn_dense` (a CNN whose decoder learns).
      latent_dim: bottleneck width of `mlp` and `cnn_dense` (32 in the paper).
      name: the model's name (default `ARCH_HEAD_kK`).
      loss: `nll` (the paper's), `beta_nll` (Seitzer et al. 2022; `beta` in [0, 1], default 0.5) or
        `faithful` (Stirn et al. 2023: the location by squared error, the dispersion by the NLL
        through its own branch, `faithful_decoder`); see `tfp_ae.heads.Head`.
      dispersion_units: `faithful` only: hidden units of the dispersion branch (0: linear readout).
      location_activation: the activation of the location output (the first D head parameters),
        `linear` (the default) or `sigmoid`, which keeps it in (0, 1) where pixels lie: under `faithful`
        the location branch's output (`faithful_decoder`: better bits/dim and L2, worse calibration);
        under `nll` and `beta_nll` the first D outputs of the decoder (`LeadingActivation`; K = 1 heads
        with a location, `mse` included: the sigmoid baseline of docs/results/uncertainty).
      local_scales: give the head local recalibration's weights (`tfp_ae.calibration.fit_local_scales`;
        `--recalibration-method local`).
      **head_options: the head's options (`Head.options`): `rank` (low-rank heads, default 10),
        `min_df` (Student-t heads, default 0); None means the default.
    Returns:
      an uncompiled `Autoencoder`; `model.head` is the head.
    Raises:
      ValueError: unknown head or architecture, invalid K, an option the head does not take, a
        loss the head cannot take, a bad beta, a negative `dispersion_units`, an unknown
        `location_activation` or one other than `linear` for a head without a location or with K > 1.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if arch not in ARCHS:
        raise InputError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    if isinstance(dispersion_units, bool) or not isinstance(dispersion_units, int) or dispersion_units < 0:
        raise InputError(f"dispersion_units must be an integer >= 0; got {dispersion_units!r}")
    if location_activation not in LOCATION_ACTIVATIONS:
        raise InputError(f"location_activation must be one of {', '.join(LOCATION_ACTIVATIONS)}; "
                         f"got {location_activation!r}")
    head_obj = make_head(head, image_shape, num_components, loss=loss, beta=beta, local_scales=local_scales,
                         **head_options)
    if location_activation != "linear" and (not head_obj.location_output or head_obj.num_components > 1):
        raise InputError(f"location_activation {location_activation!r} needs a head whose first outputs are its "
                         f"location (K = 1: mse, normal, Student-t, low-rank, matrix, logistic); got {head} "
                         f"K={head_obj.num_components}")
    check_image_shape(image_shape, arch)
    faithful = head_obj.training_loss == "faithful"
    size = int(math.prod(image_shape)) if faithful else head_obj.size  # faithful: the arch decodes the location
    if arch == "mlp":
        encoder, decoder = _mlp(image_shape, size, latent_dim)
    elif arch == "cnn":
        encoder, decoder = _cnn(image_shape, size)
    else:
        encoder, decoder = _cnn_dense(image_shape, size, latent_dim)
    if faithful:
        decoder = faithful_decoder(decoder, encoder.output_shape[1:], head_obj.size - size, dispersion_units,
                                   location_activation)
    elif location_activation != "linear":  # the first D outputs, the location, through the activation
        code = L.Input(encoder.output_shape[1:])
        location = LeadingActivation(math.prod(image_shape), location_activation, name="location")
        decoder = tfk.Model(code, location(decoder(code)), name="decoder")
    args = dict(head=head_obj.head_name, image_shape=list(image_shape), num_components=head_obj.num_components,
                arch=arch, latent_dim=int(latent_dim), **head_obj.option_values)
    if head_obj.training_loss != "nll":  # only then, so the configs of nll models stay as they were
        args.update(loss=head_obj.training_loss, beta=head_obj.beta)
    if faithful:
        args.update(dispersion_units=int(dispersion_units), location_activation=location_activation)
    elif location_activation != "linear":
        args.update(location_activation=location_activation)
    if local_scales:
        args.update(local_scales=True)
    model = Autoencoder(encoder, decoder, head_obj, args,
                        name=name or f"{arch}_{head_obj.head_name}_k{head_obj.num_components}")
    model(tf.zeros([1, *image_shape]))  # build
    return model


def compile_model(model: ProbabilisticModel, learning_rate: float = 1e-3, jit_compile: bool = False,
                  steps_per_execution: int = STEPS_PER_EXECUTION, amsgrad: bool = False) -> ProbabilisticModel:
    """Compile with Adam (Keras defaults; `learning_rate` a float or a Keras schedule, `amsgrad`
    Adam's AMSGrad variant) on the head's registered loss (NLL in nats per image; MSE for `mse`).
    A VAE's loss is its own objective (no Keras loss).

    `steps_per_execution` (Keras' compile argument) runs that many training steps in one call of
    the compiled train function, so Python and the TF runtime are entered once per call instead of
    once per step: the same updates in the same order (the weights are bit-identical to 1 step
    per call), a small model's epoch is shorter (docs/benchmarks/cpu_mlp_bounds.md). Keras truncates the
    last call to the end of the epoch; callbacks' `on_train_batch_*` hooks run once per call."""
    model.compile(optimizer=tfk.optimizers.Adam(learning_rate, amsgrad=amsgrad), loss=model.keras_loss,
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    return model

