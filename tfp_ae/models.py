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

import functools
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from tfp_ae._tf import tf, tfd, tfk
from tfp_ae.architectures import (
    ArchSettings,
    LeadingActivation,
    ParamLayout,
    StopGradient,
    check_arch,
    dispersion_branch,
    get_arch,
)
from tfp_ae.config import LOCATION_ACTIVATIONS, STEPS_PER_EXECUTION
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
    def loss_units(self) -> str:
        """What `fit` minimises, with its units (`metrics.json` `loss_units`)."""
        return self.head.loss_description

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


def faithful_decoder(location_decoder: tfk.Model, code_shape: tuple[int, ...], dispersion: Callable | None,
                     location_activation: str = "linear") -> tfk.Model:
    """The decoder of `loss="faithful"` (Stirn et al., AISTATS 2023, Section 3 and their Figure 2):
    the arch's own decoder outputs only the location (the first D head parameters); a separate
    dispersion branch reads the code under stop_gradient (so the NLL cannot move the encoder or
    the location) and outputs the remaining head parameters (scales, df, covariance factors):
    `dispersion(code)`, the arch's (`tfp_ae.architectures.dispersion_branch`: Dense(`dispersion_units`,
    ReLU) and a Dense layer for the dense archs, a second convolutional decoder for `conv`), or None
    when there is nothing to disperse. Code `[B, *code_shape]` -> `[B, D + the dispersion outputs]` (the head's size).

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
    if dispersion is None:  # e.g. normal_identity: nothing to disperse (faithful = squared error)
        return tfk.Model(code, location, name="decoder")
    return tfk.Model(code, L.Concatenate()([location, dispersion(StopGradient()(code))]), name="decoder")


DISPERSION_UNITS = 256  # hidden units of the faithful dispersion branch (0: a linear readout)


def build_model(head: str, image_shape: tuple[int, int, int], num_components: int = 1, arch: str = "mlp",
                latent_dim: int = 32, name: str | None = None, loss: str = "nll", beta: float | None = None,
                dispersion_units: int = DISPERSION_UNITS, location_activation: str = "linear",
                local_scales: bool = False, pit_recalibration: bool = False, conv_width: int | None = None,
                conv_depth: int | None = None,
                **head_options) -> Autoencoder:
    """Build a probabilistic autoencoder (built: its weights exist).

    Args:
      head: a head name from `tfp_ae.heads.HEADS`.
      image_shape: `(H, W, C)`.
      num_components: K, mixture components of the head.
      arch: `mlp`, `cnn` (the paper's, faithful), `cnn_dense` (a CNN whose decoder learns) or `conv`
        (a deep convolutional autoencoder for 16-256 pixel images); `tfp_ae.architectures`.
      latent_dim: bottleneck width of `mlp`, `cnn_dense` and `conv` (32 in the paper).
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
      pit_recalibration: give the head PIT recalibration's weights (`tfp_ae.calibration.fit_pit_recalibration`;
        `--recalibration-method pit`; K = 1 normal, logistic and Student-t heads, the joint ones through a copula).
      conv_width: `conv` only: filters of its first level (None: 16; `tfp_ae.architectures.conv`).
      conv_depth: `conv` only: its number of stride-2 levels (None: as many as keep the shorter side
        at least 4 pixels).
      **head_options: the head's options (`Head.options`): `rank` (low-rank heads, default 10),
        `min_df` (Student-t heads, default 0); None means the default.
    Returns:
      an uncompiled `Autoencoder`; `model.head` is the head.
    Raises:
      ValueError: unknown head or architecture, invalid K, an option the head does not take, a
        loss the head cannot take, images or settings the arch cannot take (`check_arch`: too small,
        `latent_dim` <= 0, D x D heads on `conv`), a bad beta, a negative `dispersion_units`, an unknown
        `location_activation` or one other than `linear` for a head without a location or with K > 1.
    """
    image_shape = tuple(int(d) for d in image_shape)
    get_arch(arch)
    if isinstance(dispersion_units, bool) or not isinstance(dispersion_units, int) or dispersion_units < 0:
        raise InputError(f"dispersion_units must be an integer >= 0; got {dispersion_units!r}")
    if location_activation not in LOCATION_ACTIVATIONS:
        raise InputError(f"location_activation must be one of {', '.join(LOCATION_ACTIVATIONS)}; "
                         f"got {location_activation!r}")
    head_obj = make_head(head, image_shape, num_components, loss=loss, beta=beta, local_scales=local_scales,
                         pit_recalibration=pit_recalibration, **head_options)
    if location_activation != "linear" and (not head_obj.location_output or head_obj.num_components > 1):
        raise InputError(f"location_activation {location_activation!r} needs a head whose first outputs are its "
                         f"location (K = 1: mse, normal, Student-t, low-rank, matrix, logistic); got {head} "
                         f"K={head_obj.num_components}")
    settings = ArchSettings(latent_dim, conv_width, conv_depth)
    check_arch(arch, image_shape, settings, head_obj, head_obj.num_components)
    module, layout = get_arch(arch), ParamLayout.of(head_obj)
    faithful = head_obj.training_loss == "faithful"
    encoder = module.encoder(image_shape, settings)
    code_shape = tuple(encoder.output_shape[1:])
    decoder = module.decoder(image_shape, code_shape, layout.location() if faithful else layout, settings)
    if faithful:  # the arch decodes the location; the dispersion has its own branch
        rest = layout.dispersion()
        dispersion = (None if not rest.size else
                      functools.partial(dispersion_branch, arch, image_shape=image_shape, layout=rest, settings=settings,
                                        hidden_units=dispersion_units))
        decoder = faithful_decoder(decoder, code_shape, dispersion, location_activation)
    elif location_activation != "linear":  # the first D outputs, the location, through the activation
        code = L.Input(code_shape)
        location = LeadingActivation(math.prod(image_shape), location_activation, name="location")
        decoder = tfk.Model(code, location(decoder(code)), name="decoder")
    args = dict(head=head_obj.head_name, image_shape=list(image_shape), num_components=head_obj.num_components,
                arch=arch, latent_dim=int(latent_dim), **head_obj.option_values)
    if arch == "conv":
        args.update(conv_width=conv_width, conv_depth=conv_depth)
    if head_obj.training_loss != "nll":  # only then, so the configs of nll models stay as they were
        args.update(loss=head_obj.training_loss, beta=head_obj.beta)
    if faithful:
        args.update(dispersion_units=int(dispersion_units), location_activation=location_activation)
    elif location_activation != "linear":
        args.update(location_activation=location_activation)
    if local_scales:
        args.update(local_scales=True)
    if pit_recalibration:
        args.update(pit_recalibration=True)
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

