"""The base of every output head: the `Head` class, its losses and the shared small helpers.

Each head is a `tfp.layers.DistributionLambda` subclass that declares, once:

- `head_name` (the registry key used by the CLI, the tables and the tests) and the paper's `label`;
- `component_params_size(event_shape, **options)`: how many numbers one component needs;
- `component(params)`: how a flat tensor `[..., P]` becomes one distribution (a batch of them);
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

import numpy as np

from tfp_ae._tf import tf, tfb, tfd, tfk, tfpl
from tfp_ae.errors import InputError
from tfp_ae.heads.readout import Readouts

POSITIVE_SHIFT = 1e-6
MAF_SAMPLES = 50


def register(obj):
    """Register a class or function with Keras as `tfp_ae>Name`, so `tf_keras.models.load_model`
    finds it after `import tfp_ae` with default arguments."""
    return tfk.saving.register_keras_serializable(package="tfp_ae")(obj)


@register
def negative_log_likelihood(y_true, y_pred):
    """Keras loss: `-log p(y_true)` under the distribution `y_pred` (a head's output), nats per
    image `[B]`; `y_true` `[B, H, W, C]`. Computed in the distribution's dtype (float32 under a
    mixed precision policy)."""
    return -y_pred.log_prob(tf.cast(y_true, y_pred.dtype))


@register
def squared_error(y_true, y_pred):
    """Keras loss of the `mse` head: mean squared error per image `[B]` between `y_true`
    `[B, H, W, C]` and the mean of the distribution `y_pred` (pixels in [0, 1])."""
    mean = y_pred.mean()
    return tf.reduce_mean(tf.square(tf.cast(y_true, mean.dtype) - mean), axis=[-3, -2, -1])


def positive(x):
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


class Head(Readouts, tfpl.DistributionLambda):
    """Base class of the output heads (see the module docstring for the contract); what a head
    reads from its distribution (moments, intervals, mode, point estimate, samples) is `Readouts`.

    Args:
      event_shape: image shape `(H, W, C)`.
      num_components: K >= 1; K > 1 makes a `MixtureSameFamily` (only for `mixable` heads).
      **kwargs: the head's `options` (e.g. `rank=4`; defaults from `options`), then Keras layer
        arguments (`name`, `dtype`).
    Raises:
      InputError (a ValueError): K is not an integer >= 1, or K > 1 for a head that does not mix,
        an event shape the head cannot take, or a bad option (`check_options`).
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

    def __init__(self, event_shape, num_components=1, **kwargs):
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
        self._check_event_shape(event_shape)
        self.option_values = self.check_options(event_shape, **given)
        for name, value in self.option_values.items():
            setattr(self, name, value)
        kwargs.setdefault("name", f"{self.head_name}_head")
        kwargs.setdefault("dtype", "float32")  # the distribution and loss stay float32 under mixed precision
        super().__init__(self.new, convert_to_tensor_fn=self._tensor, **kwargs)

    # ---- declaration, overridden by families -------------------------------------------------
    def _check_event_shape(self, event_shape):
        pass

    @property
    def event_shape(self):
        """The image shape `(H, W, C)` this head's distributions are over."""
        return self._image_shape

    @property
    def natural_event_shape(self):
        """Event shape of the component before the reshape to the image: `[H,W,C]`, `[D]` or `[H,W]`."""
        return self._image_shape

    @classmethod
    def component_params_size(cls, event_shape, **options):
        """Number of flat parameters of one component for images of shape `event_shape` with the
        head's `options` (validated, defaults filled)."""
        raise NotImplementedError

    @classmethod
    def check_option(cls, name, value, event_shape):
        """Check one option's value for images of `event_shape` (or None: unknown); returns it.
        Families override this for their options.

        Raises:
          InputError: a bad value, naming the option's flag and what is allowed.
        """
        return value

    def component(self, params):
        """Distribution from flat parameters `[..., P]`; batch `[...]`, event `natural_event_shape`."""
        raise NotImplementedError

    # ---- shared machinery ---------------------------------------------------------------------
    @classmethod
    def check_options(cls, event_shape=None, **options):
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
    def params_size(cls, event_shape, num_components=1, **options):
        """Flat parameter count the decoder must output: `P` for K=1, `K * (P + 1)` for K > 1."""
        p = cls.component_params_size(tuple(event_shape), **cls.check_options(event_shape, **options))
        return p if num_components == 1 else num_components * (p + 1)

    @property
    def size(self):
        """`params_size` of this instance."""
        return self.params_size(self._image_shape, self.num_components, **self.option_values)

    def new(self, params):
        """Turn decoder outputs `[B, params_size]` into a distribution, event shape `[H, W, C]`."""
        k = self.num_components
        if k == 1:
            dist = self.component(params)
        else:
            p = self.component_params_size(self._image_shape, **self.option_values)
            logits, comp = _split(params, [k, k * p])
            dist = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), self.component(_unflatten(comp, [k, p])))
        if tuple(self.natural_event_shape) != self._image_shape:
            dist = tfd.TransformedDistribution(
                dist, tfb.Reshape(self._image_shape, event_shape_in=self.natural_event_shape))
        return dist

    # Training loss for `model.compile` (a registered function, so compiled models save and load)
    loss = staticmethod(negative_log_likelihood)

    def get_config(self):
        config = tfk.layers.Layer.get_config(self)  # skip DistributionLambda's pickled function
        config.update(event_shape=list(self._image_shape), num_components=self.num_components, **self.option_values)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
