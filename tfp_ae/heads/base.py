"""The base of every output head: the `Head` class, its losses and the shared small helpers.

Each head is a `tfp.layers.DistributionLambda` subclass that declares, once:

- `head_name` (the registry key used by the CLI, the tables and the tests) and the paper's `label`;
- `component_params_size(event_shape, **options)`: how many numbers one component needs;
- `component(params)`: how a flat tensor `[..., P]` becomes one distribution (a batch of them);
- `pixel_layout(event_shape, **options)`: which of those numbers belong to each pixel (the parameter
  maps a convolutional decoder outputs, `tfp_ae.architectures.ParamLayout`) and which are global;
- how its point estimate is read (`point`: mean, mode or mean of samples);
- `options`: the settings it takes beyond the image shape and K, with their defaults (`rank` of the
  low-rank heads, `min_df` of the Student-t heads), checked by `check_options`.

`num_components=K > 1` turns any mixable head into a `tfd.MixtureSameFamily` of K components,
built from one batched component distribution (never a Python list). Its flat parameter layout is
`[K mixture logits, K * P component parameters]`, i.e. `K * (P + 1)` numbers.

Every head's distribution has the image's event shape `[H, W, C]`: vector heads (full covariance,
Student-t, low rank) and matrix heads (matrix normal, matrix-t) live on their natural event shape
(`[D]` or `[H, W]`) and are wrapped in a `tfb.Reshape`, so `dist.log_prob(images)` works for all
heads and `model.fit(images, images)` is the same call for every head.

Strictly positive parameters use `1e-6 + softplus` (Ciobanu, Section 3).

Parameter counts against the paper (Tables 1, 2): the paper wraps even K=1 in a one-component
mixture, so its K=1 heads carry one extra output (a mixture logit whose gradient is identically
zero). Here K=1 is the plain distribution, which saves that output: one decoder unit fewer
(33 parameters for the MLP). For K > 1 the counts are the paper's.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tfp_ae._tf import tf, tfb, tfd, tfk, tfpl
from tfp_ae.errors import InputError
from tfp_ae.heads.readout import MAX_RISK_STRATA, Readouts
from tfp_ae.heads.recalibrated import PIT_GROUPS, identity_parameters, recalibrated_pixels, student_t_knot_ends

POSITIVE_SHIFT = 1e-6
MAF_SAMPLES = 50
LOCAL_KNOTS = 8  # local recalibration: knots of its piecewise-linear log-factor (one per octile of the scales)


def register(obj: Callable) -> Callable:
    """Register a class or function with Keras as `tfp_ae>Name`, so `tf_keras.models.load_model`
    finds it after `import tfp_ae` with default arguments."""
    return tfk.saving.register_keras_serializable(package="tfp_ae")(obj)


@register
def negative_log_likelihood(y_true: tf.Tensor, y_pred: tfd.Distribution) -> tf.Tensor:
    """Keras loss: `-log p(y_true)` under the distribution `y_pred` (a head's output), nats per
    image `[B]`; `y_true` `[B, H, W, C]`. Computed in the distribution's dtype (float32 under a
    mixed precision policy)."""
    return -y_pred.log_prob(tf.cast(y_true, y_pred.dtype))


@register
def squared_error(y_true: tf.Tensor, y_pred: tfd.Distribution) -> tf.Tensor:
    """Keras loss of the `mse` head: mean squared error per image `[B]` between `y_true`
    `[B, H, W, C]` and the mean of the distribution `y_pred` (pixels in [0, 1])."""
    mean = y_pred.mean()
    return tf.reduce_mean(tf.square(tf.cast(y_true, mean.dtype) - mean), axis=[-3, -2, -1])


LOSSES = ("nll", "beta_nll", "faithful")  # how a head's parameters are trained (`Head(loss=...)`)
DEFAULT_BETA = 0.5


def check_beta(beta: float) -> float:
    """`beta` as a float, checked: `beta_nll`'s exponent must be a number in [0, 1].

    Raises:
      InputError: a bool, a non-number, NaN or a value outside [0, 1].
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)) or not 0 <= beta <= 1:
        raise InputError(f"beta must be a number in [0, 1]; got {beta!r}")
    return float(beta)


def _unwrapped(y_pred):
    """The distribution a head built (`Head.new`) behind the Keras layer's tensor-coercible wrapper."""
    return getattr(y_pred, "tensor_distribution", y_pred)


@register
class BetaNLL(tfk.losses.Loss):
    """Keras loss of `loss="beta_nll"` (Seitzer et al., ICLR 2022, "On the pitfalls of heteroscedastic
    uncertainty estimation with probabilistic neural networks", Eq. 6): minus the sum over pixels of
    each pixel's log-density weighted by stop_gradient(variance)^beta, nats-like units per image
    `[B]`. beta = 0 is the NLL exactly; beta = 1 gives the mean the gradient of squared error.
    For heads whose log-density is a sum over pixels (`Head.takes_beta_nll`).

    Args:
      beta: in [0, 1].
    """

    def __init__(self, beta: float = DEFAULT_BETA, name: str = "beta_nll", **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = float(beta)

    def call(self, y_true: tf.Tensor, y_pred: tfd.Distribution):
        pixels = _unwrapped(y_pred).distribution  # Independent over [H, W, C] of a univariate family
        lp = pixels.log_prob(tf.cast(y_true, pixels.dtype))
        weight = tf.pow(tf.stop_gradient(pixels.variance()), self.beta)
        return -tf.reduce_sum(weight * lp, axis=[-3, -2, -1])

    def get_config(self):
        return dict(super().get_config(), beta=self.beta)


@register
def faithful_loss(y_true: tf.Tensor, y_pred: tfd.Distribution) -> tf.Tensor:
    """Keras loss of `loss="faithful"` (Stirn et al., AISTATS 2023, "Faithful heteroscedastic
    regression with neural networks", Section 3): half the squared error of the location (the
    mean's parameter, which alone trains it) plus the NLL of the distribution built with that
    location under stop_gradient (which trains only the dispersion parameters: scales, df,
    covariance factors), per image `[B]`, nats-like units. `y_pred` is a head's distribution
    built with `loss="faithful"` (`Head.new` attaches `faithful_location` and `faithful_dispersion`)."""
    d = _unwrapped(y_pred)
    y = tf.cast(y_true, d.faithful_location.dtype)
    se = 0.5 * tf.reduce_sum(tf.square(y - d.faithful_location), axis=[-3, -2, -1])
    return se - d.faithful_dispersion.log_prob(y)


def positive(x: tf.Tensor) -> tf.Tensor:
    """`1e-6 + softplus(x)`: the map of every strictly positive parameter (scale, df)."""
    return POSITIVE_SHIFT + tf.math.softplus(x)


def _unflatten(t, shape):
    """Reshape the last axis of `t` `[..., prod(shape)]` to `[..., *shape]`."""
    return tf.reshape(t, tf.concat([tf.shape(t)[:-1], shape], axis=0))


def _split(params, sizes):
    """Consecutive pieces of the last axis of `params` `[..., sum(sizes)]`. `tf.split`, not
    slicing: the gradient of a slice writes a full-size zero tensor per piece (the profiler's
    top op for `normal_diag`), the gradient of a split is one concat."""
    return tf.split(params, sizes, axis=-1)


def _subclasses(cls):
    """`cls` and every class derived from it."""
    return [cls] + [d for c in cls.__subclasses__() for d in _subclasses(c)]


def head_names(wanted: Callable[[type], bool]) -> str:
    """The sorted names of every defined head class for which `wanted(cls)` holds, comma-separated (read
    from the class tree: the registry in `tfp_ae.heads` imports this module), for error messages."""
    return ", ".join(sorted({c.head_name for c in _subclasses(Head) if c.head_name and wanted(c)}))


class Head(Readouts, tfpl.DistributionLambda):
    """Base class of the output heads (see the module docstring for the contract); what a head
    reads from its distribution (moments, intervals, mode, point estimate, samples) is `Readouts`.

    Args:
      event_shape: image shape `(H, W, C)`.
      num_components: K >= 1; K > 1 makes a `MixtureSameFamily` (only for `mixable` heads).
      loss: how the parameters are trained (`LOSSES`): `nll` (the paper's; `mse` trains on squared
        error), `beta_nll` (`BetaNLL`, heads with `takes_beta_nll`) or `faithful` (`faithful_loss`,
        K = 1 heads with `has_location`; the model gives the dispersion its own branch).
      beta: `beta_nll`'s exponent, in [0, 1] (default 0.5).
      **kwargs: the head's `options` (e.g. `rank=4`; defaults from `options`), then Keras layer
        arguments (`name`, `dtype`).
    Raises:
      InputError (a ValueError): K is not an integer >= 1, or K > 1 for a head that does not mix,
        an event shape the head cannot take, a bad option (`check_options`), an unknown loss or
        one this head cannot take (the message names the heads that take it), beta outside [0, 1].
    """
    head_name = None
    label = None
    mixable = True
    is_density = True      # a normalised density on pixel space (False: Bernoulli on [0, 1])
    point = "mean"         # "mean" | "mode" | "sample_mean": how the point estimate is read
    variance_note = None   # caveat shown on variance maps, if any
    has_variance = True    # False: the head models no variance (its `variance` is NaN)
    full_covariance = False  # True: a dense D x D scale (D(D+1)/2 outputs; K > 1 only when asked for)
    loss_units = "NLL, nats per image"
    nll_note = None        # what the reported NLL means, where it is not simply -log p(x)
    options = {}           # settings beyond shape and K: name -> default (`rank`, `min_df`)
    takes_beta_nll = False  # log-density a sum over pixels of a family with a variance (beta_nll)
    has_location = False    # the first D = H*W*C parameters are a location (the mean or mode): faithful,
    #                         and every scale is multiplied by the non-trainable `sigma_scale` (`scaled`)
    per_pixel_scales = False  # every scale passed to `scaled` is one pixel's marginal scale: local recalibration
    joint_local_scales = False  # local recalibration as Sigma' = D Sigma D, applied by the family (low-rank heads)
    pit_family = None  # "normal" | "logistic" | "student_t": the pixels' family where the head takes PIT
    #                    recalibration (factorised heads per pixel, joint normal and t heads through a copula)
    location_output = False  # the first D parameters are the location (has_location heads, and mse):
    #                          `--location-activation` applies to them

    def __init__(self, event_shape: tuple[int, ...], num_components: int = 1, loss: str = "nll", beta: float | None = None,
                 local_scales: bool = False, pit_recalibration: bool = False, **kwargs):
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in self.options}
        event_shape = tuple(int(d) for d in event_shape)
        if len(event_shape) != 3 or min(event_shape) < 1:
            raise InputError(f"{self.head_name}: event_shape must be (H, W, C), got {event_shape}")
        if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)) \
                or num_components < 1:
            raise InputError(f"num_components (K) must be an integer >= 1, got {num_components!r}")
        if num_components > 1 and not self.mixable:
            raise InputError(f"head {self.head_name!r} does not mix: K must be 1, got {num_components} "
                             "(the paper never mixed MSE or MAF)")
        self._image_shape = event_shape
        self.num_components = int(num_components)
        self.training_loss, self.beta = self.check_loss(loss, beta, self.num_components)
        self._check_event_shape(event_shape)
        self.option_values = self.check_options(event_shape, **given)
        for name, value in self.option_values.items():
            setattr(self, name, value)
        kwargs.setdefault("name", f"{self.head_name}_head")
        kwargs.setdefault("dtype", "float32")  # the distribution and loss stay float32 under mixed precision
        super().__init__(self.new, convert_to_tensor_fn=self._tensor, **kwargs)
        if self.has_location:  # sigma-scaling (`tfp_ae.calibration.fit_sigma_scale`): 1 until recalibrated
            self.sigma_scale = self.add_weight(name="sigma_scale", shape=[], initializer="ones", trainable=False,
                                               dtype="float32")
        self.local_scales = bool(local_scales)
        if self.local_scales:  # local recalibration (`tfp_ae.calibration.fit_local_scales`): log-factors, 0 until fitted
            if not self.takes_local_scales(self.num_components):
                takes = head_names(lambda c: c.takes_local_scales())
                raise InputError(f"local_scales (--recalibration-method local) takes K = 1 heads with per-pixel scales "
                                 f"or a low-rank covariance ({takes}); got {self.head_name} K={self.num_components}")
            self.local_knots = self.add_weight(name="local_knots", shape=[LOCAL_KNOTS], trainable=False, dtype="float32",
                                               initializer=tfk.initializers.Constant(np.arange(LOCAL_KNOTS, dtype=float)))
            self.local_log_factors = self.add_weight(name="local_log_factors", shape=[LOCAL_KNOTS], initializer="zeros",
                                                     trainable=False, dtype="float32")
        self.pit_recalibration = bool(pit_recalibration)
        self._training_call = False  # set by `call`: a training step skips PIT recalibration (`pit_recalibrated`)
        if self.pit_recalibration:  # PIT recalibration (`tfp_ae.calibration.fit_pit_recalibration`): identity until fitted
            if not self.takes_pit_recalibration(self.num_components) or self.local_scales:
                takes = head_names(lambda c: c.takes_pit_recalibration())
                raise InputError(f"pit_recalibration (--recalibration-method pit) takes K = 1 normal, logistic or "
                                 f"Student-t heads ({takes}), without local_scales; got {self.head_name} "
                                 f"K={self.num_components}")
            self.pit_scale_edges = self.add_weight(
                name="pit_scale_edges", shape=[PIT_GROUPS - 1], trainable=False, dtype="float32",
                initializer=tfk.initializers.Constant(float(np.finfo(np.float32).max)))
            for key, value in identity_parameters(self.pit_family).items():  # per group: knots, log_ratios, moments
                setattr(self, f"pit_{key}", self.add_weight(
                    name=f"pit_{key}", shape=[PIT_GROUPS, len(value)], trainable=False, dtype="float32",
                    initializer=tfk.initializers.Constant(np.tile(value, (PIT_GROUPS, 1)))))
        if self.has_variance:  # conformal risk control (`tfp_ae.calibration.fit_conformal`): 1 until fitted
            self.conformal_lambda = self.add_weight(name="conformal_lambda", shape=[], initializer="ones",
                                                    trainable=False, dtype="float32")
            # K-RCPS: one λ per pixel (its group's), times conformal_lambda
            self.conformal_lambda_map = self.add_weight(name="conformal_lambda_map", shape=list(event_shape),
                                                        initializer="ones", trainable=False, dtype="float32")
            # conformal risk control within strata of images by interval width: edges (none until fitted), λ's
            self.conformal_strata_edges = self.add_weight(
                name="conformal_strata_edges", shape=[MAX_RISK_STRATA - 1], trainable=False, dtype="float32",
                initializer=tfk.initializers.Constant(float(np.finfo(np.float32).max)))
            self.conformal_strata_lambdas = self.add_weight(name="conformal_strata_lambdas", shape=[MAX_RISK_STRATA],
                                                            initializer="ones", trainable=False, dtype="float32")

    @classmethod
    def takes_local_scales(cls, num_components: int = 1) -> bool:
        """Whether local recalibration applies: K = 1 and every scale is a pixel's (`per_pixel_scales`) or the
        family applies it to its covariance (`joint_local_scales`)."""
        return cls.has_location and (cls.per_pixel_scales or cls.joint_local_scales) and num_components == 1

    @classmethod
    def takes_pit_recalibration(cls, num_components: int = 1) -> bool:
        """Whether PIT recalibration applies: K = 1 and pixels of a family with a PIT map (`pit_family`: normal,
        logistic, student_t): factorised heads, where the product of the recalibrated pixel densities is the
        image's, and the joint normal and Student-t heads, through their own copula (`CopulaRecalibrated`; a t
        pixel's map is stored in logit F_df, `StudentTRecalibrated`). Not mixtures."""
        return cls.has_location and cls.pit_family is not None and num_components == 1

    def pit_recalibrated(self, pixels: tfd.Distribution) -> tfd.Distribution:
        """The pixel distributions `pixels` (normal, logistic or Student-t, batch `[..., H, W, C]`) recalibrated
        through their CDFs (`recalibrated_pixels`) when the head was built with `pit_recalibration`, else `pixels`:
        each pixel takes the row g of `pit_knots`, `pit_log_ratios` and `pit_moments`, g its scale's group, the
        number of `pit_scale_edges` below its log scale (the scale after σ-scaling; group 0 and the identity until fitted).
        Not in a training step (`call` with `training` True): the map is fitted after training and is the identity
        until then, and its ops tripled the time of a `normal_diag` MLP's step on a CPU; a model trained further
        trains its distribution before recalibration."""
        if not self.pit_recalibration or self._training_call:
            return pixels
        log_scale = tf.math.log(tf.broadcast_to(pixels.scale, tf.shape(pixels.loc)))
        above = tf.cast(log_scale[..., None] > tf.cast(self.pit_scale_edges, log_scale.dtype), tf.int32)
        group = tf.reduce_sum(above, -1)
        rows = [tf.gather(tf.cast(w, log_scale.dtype), group)
                for w in (self.pit_knots, self.pit_log_ratios, self.pit_moments)]
        if not isinstance(pixels, tfd.StudentT):
            return recalibrated_pixels(pixels, *rows)
        # a t pixel's knots in z: F_df^-1 once per (image's df, group, knot), then each pixel's group's row
        # (TFP's t quantile per pixel and knot made the moments 20x slower than the normal's)
        knots = tf.cast(self.pit_knots, log_scale.dtype)  # [G, J - 1]
        table = student_t_knot_ends(tf.convert_to_tensor(pixels.df)[..., None, None], knots)  # [..., 1.., G, J - 1]
        one_hot = tf.one_hot(group, PIT_GROUPS, dtype=log_scale.dtype)[..., None]  # [..., H, W, C, G, 1]
        return recalibrated_pixels(pixels, *rows, knot_ends=tf.reduce_sum(one_hot * table, -2))

    def joint_recalibrated(self, comp: tfd.Distribution) -> tfd.Distribution:
        """The K = 1 component `comp` with PIT recalibration applied to its joint distribution: `comp` itself here
        (per-pixel heads recalibrate each pixel in `component`); the joint normal and t heads return their copula
        with recalibrated marginals (`_EllipticalHead.joint_recalibrated`)."""
        return comp

    @classmethod
    def check_loss(cls, loss: str, beta: float | None = None, num_components: int = 1) -> tuple[str, float | None]:
        """`(loss, beta)` checked for this head: beta is None unless the loss is `beta_nll`.

        Raises:
          InputError: an unknown loss, one this head (or K > 1) cannot take, naming the heads that
            take it, or a beta that is not a number in [0, 1].
        """
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
        if loss == "beta_nll":
            if not cls.takes_beta_nll:
                takes = head_names(lambda c: c.takes_beta_nll)
                raise InputError(f"head {cls.head_name!r} cannot take --loss beta_nll: it needs a log-density that is a "
                                 f"sum over pixels of a family with a variance; heads that take it: {takes} "
                                 "(a multivariate t with a diagonal scale does not factor over pixels)")
            return loss, check_beta(DEFAULT_BETA if beta is None else beta)
        if loss == "faithful" and (not cls.has_location or num_components > 1):
            takes = head_names(lambda c: c.has_location)
            why = ("mixtures have no single location to fit by squared error" if num_components > 1 else
                   f"{cls.head_name} has no location parameter to fit by squared error")
            raise InputError(f"head {cls.head_name!r} (K={num_components}) cannot take --loss faithful: {why}; heads that "
                             f"take it with K = 1: {takes}")
        return loss, None

    def scaled(self, scale: tf.Tensor) -> tf.Tensor:
        """`scale` times the head's `sigma_scale` s (a non-trainable weight, 1 unless recalibrated;
        Laves et al., MELBA 2021, "Recalibration of aleatoric and epistemic regression uncertainty
        in medical imaging": sigma-scaling). Every family passes each scale factor (a pixel's scale,
        a diagonal or Cholesky factor, a low-rank factor, a matrix head's row scale) through it, so
        the covariance of every component is multiplied by s^2 and each pixel's marginal is the
        same family with its scale multiplied by s. Heads without a location (`mse` included) have
        no `sigma_scale`: `scale` itself.

        A head built with `local_scales` (a head whose scales are per pixel, `per_pixel_scales`: normal
        identity/diag, logistic, Student-t identity/diag) then multiplies each pixel's scale by
        `exp(local_log_factor(scale))`, a function of the scale itself (local recalibration,
        `tfp_ae.calibration.fit_local_scales`; 1 until fitted). Only then: its ops doubled the time of a
        `normal_diag` MLP's training step on a CPU, so the other heads do not carry them. A family with
        `joint_local_scales` applies that factor itself, to its covariance (Σ' = D Σ D)."""
        if not self.has_location:
            return scale
        scale = scale * tf.cast(self.sigma_scale, scale.dtype)
        if self.local_scales and self.per_pixel_scales:
            scale = scale * tf.exp(self.local_log_factor(scale))
        return scale

    def local_log_factor(self, scale: tf.Tensor) -> tf.Tensor:
        """The log of local recalibration's factor for pixel scales `scale` (any shape, > 0): piecewise
        linear in log scale through `(local_knots[k], local_log_factors[k])`, constant beyond the first
        and last knot (`numpy.interp`'s rule), written with elementwise ops only (TensorFlow Lite
        runs it). 0 everywhere until fitted."""
        x = tf.math.log(scale)
        t = tf.cast(self.local_knots, x.dtype)
        v = tf.cast(self.local_log_factors, x.dtype)
        h = v[0] + tf.zeros_like(x)
        for k in range(LOCAL_KNOTS - 1):
            step = tf.maximum(t[k + 1] - t[k], tf.constant(1e-6, x.dtype))
            h = h + (v[k + 1] - v[k]) * tf.clip_by_value((x - t[k]) / step, 0.0, 1.0)
        return h

    # ---- declaration, overridden by families -------------------------------------------------
    def _check_event_shape(self, event_shape):
        pass

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The image shape `(H, W, C)` this head's distributions are over."""
        return self._image_shape

    @property
    def natural_event_shape(self) -> tuple[int, ...]:
        """Event shape of the component before the reshape to the image: `[H,W,C]`, `[D]` or `[H,W]`."""
        return self._image_shape

    @classmethod
    def component_params_size(cls, event_shape: tuple[int, ...], **options) -> int:
        """Number of flat parameters of one component for images of shape `event_shape` with the
        head's `options` (validated, defaults filled)."""
        raise NotImplementedError

    @classmethod
    def check_option(cls, name: str, value: object, event_shape: tuple[int, ...]) -> object:
        """Check one option's value for images of `event_shape` (or None: unknown); returns it.
        Families override this for their options.

        Raises:
          InputError: a bad value, naming the option's flag and what is allowed.
        """
        return value

    @classmethod
    def pixel_layout(cls, event_shape: tuple[int, ...], **options) -> tuple[tuple[int, ...], int]:
        """Where one component's flat parameters sit on the image, for decoders that output
        parameter maps (`--arch conv`): `(widths, n_global)`. The component's `component_params_size`
        values are first one segment per width w, each `[H, W, C, w]` flattened (w values for every
        pixel value: a location or scale is w = 1, a low-rank factor's row w = rank), then `n_global`
        values that belong to no pixel (df, a matrix head's row and column scales, a full scale), so
        `sum(widths) * H*W*C + n_global == component_params_size`."""
        raise NotImplementedError

    def component(self, params: tf.Tensor) -> tfd.Distribution:
        """Distribution from flat parameters `[..., P]`; batch `[...]`, event `natural_event_shape`."""
        raise NotImplementedError

    # ---- shared machinery ---------------------------------------------------------------------
    @classmethod
    def check_options(cls, event_shape: tuple[int, ...] | None = None, **options) -> dict:
        """The head's options `{name: value}` with defaults filled in; a None value means the default.
        `event_shape` `(H, W, C)` or None (then checks that need the image size are skipped).

        Raises:
          InputError: an option this head does not take (e.g. `rank` for `normal_diag`), or a bad
            value (`check_option`).
        """
        for name, value in options.items():
            if name not in cls.options and value is not None:
                takes = ", ".join(f"--{o.replace('_', '-')}" for o in cls.options) or "no options"
                raise InputError(f"head {cls.head_name!r} has no {name} (--{name.replace('_', '-')}); it takes {takes}")
        values = {name: default if options.get(name) is None else options[name]
                  for name, default in cls.options.items()}
        shape = None if event_shape is None else tuple(event_shape)
        return {name: cls.check_option(name, v, shape) for name, v in values.items()}

    @classmethod
    def params_size(cls, event_shape: tuple[int, ...], num_components: int = 1, **options) -> int:
        """Flat parameter count the decoder must output: `P` for K=1, `K * (P + 1)` for K > 1."""
        p = cls.component_params_size(tuple(event_shape), **cls.check_options(event_shape, **options))
        return p if num_components == 1 else num_components * (p + 1)

    @property
    def size(self) -> int:
        """`params_size` of this instance."""
        return self.params_size(self._image_shape, self.num_components, **self.option_values)

    def new(self, params: tf.Tensor) -> tfd.Distribution:
        """Turn decoder outputs `[B, params_size]` into a distribution, event shape `[H, W, C]`.

        With `loss="faithful"` the distribution also carries `faithful_location` (the location,
        `[B, H, W, C]`) and `faithful_dispersion` (the same distribution built with the location under
        stop_gradient), which `faithful_loss` reads."""
        dist = self._distribution(params)
        if self.training_loss == "faithful":
            d = int(np.prod(self._image_shape))
            loc, rest = _split(params, [d, params.shape[-1] - d])
            dist.faithful_location = _unflatten(loc, self._image_shape)
            dist.faithful_dispersion = self._distribution(tf.concat([tf.stop_gradient(loc), rest], axis=-1))
        return dist

    def _distribution(self, params):
        k = self.num_components
        if k == 1:
            dist = self.joint_recalibrated(self.component(params))
        else:
            p = self.component_params_size(self._image_shape, **self.option_values)
            logits, comp = _split(params, [k, k * p])
            dist = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), self.component(_unflatten(comp, [k, p])))
        if tuple(self.natural_event_shape) != self._image_shape:
            dist = tfd.TransformedDistribution(
                dist, tfb.Reshape(self._image_shape, event_shape_in=self.natural_event_shape))
        return dist

    def call(self, inputs, *args, training=None, **kwargs):
        """The Keras call (`DistributionLambda`'s), noting whether it is a training step (`pit_recalibrated`)."""
        self._training_call = training is True
        try:
            return super().call(inputs, *args, **kwargs)
        finally:
            self._training_call = False

    # The head's own loss for `loss="nll"` (a registered function, so compiled models save and load)
    nll_loss = staticmethod(negative_log_likelihood)

    @property
    def loss(self) -> Callable:
        """The Keras loss `compile` gets: `nll_loss`, `BetaNLL(beta)` or `faithful_loss` (`training_loss`)."""
        if self.training_loss == "beta_nll":
            return BetaNLL(self.beta)
        if self.training_loss == "faithful":
            return faithful_loss
        return self.nll_loss

    @property
    def loss_description(self) -> str:
        """What the training loss is, with its units (`metrics.json` `loss_units`)."""
        if self.training_loss == "beta_nll":
            return f"beta-NLL (beta={self.beta:g}; Seitzer et al. 2022), nats per image weighted per pixel"
        if self.training_loss == "faithful":
            return "faithful (Stirn et al. 2023): squared error / 2 of the location + NLL with the location fixed, per image"
        return self.loss_units

    def get_config(self):
        config = tfk.layers.Layer.get_config(self)  # skip DistributionLambda's pickled function
        config.update(event_shape=list(self._image_shape), num_components=self.num_components, **self.option_values)
        if self.training_loss != "nll":
            config.update(loss=self.training_loss, beta=self.beta)
        if self.local_scales:
            config.update(local_scales=True)
        if self.pit_recalibration:
            config.update(pit_recalibration=True)
        return config

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)
