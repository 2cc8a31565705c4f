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

from tfp_ae._tf import tf, tfb, tfd, tfk, tfp, tfpl
from tfp_ae.errors import InputError

POSITIVE_SHIFT = 1e-6
MAF_SAMPLES = 50
SAMPLE_SEED = (20, 26)  # stateless seed of sample-based estimates (MAF mean / variance)
INTERVAL_LEVEL = 0.9    # uncertainty maps: width of the central 90 % (5-95 %) interval
INTERVAL_SAMPLES = 1000  # draws per pixel where the interval is estimated from samples


def sample_interval(samples, level):
    """Empirical central `level` interval `(lo, hi)` of draws `samples` `[S, ...]` along axis 0: the
    `(1 - level) / 2` and `(1 + level) / 2` percentiles (linear interpolation), each `[...]`."""
    return tf.unstack(tfp.stats.percentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=0,
                                           interpolation="linear"))


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


class Head(tfpl.DistributionLambda):
    """Base class of the output heads (see the module docstring for the contract).

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

    def _parts(self, dist):
        """(natural-shape distribution, mixture logits or None, component distribution)."""
        d = getattr(dist, "tensor_distribution", dist)
        if isinstance(getattr(d, "bijector", None), tfb.Reshape):  # our image-shape wrapper
            d = d.distribution
        if isinstance(d, tfd.MixtureSameFamily):
            return d, d.mixture_distribution.logits, d.components_distribution
        return d, None, d

    def _to_image(self, t):
        """`[..., *natural_event_shape]` -> `[..., H, W, C]`."""
        nd = len(self.natural_event_shape)
        return tf.reshape(t, tf.concat([tf.shape(t)[:tf.rank(t) - nd], self._image_shape], 0))

    def component_mean(self, comp):
        return comp.mean()

    def component_variance(self, comp):
        return comp.variance()

    def component_mode(self, comp):
        return comp.mode()

    def _mixture_moments(self, dist, seed=SAMPLE_SEED):
        """Mean and variance `[B, H, W, C]` (law of total variance over components)."""
        _, logits, comp = self._parts(dist)
        mean, var = self._to_image(self.component_mean(comp)), self._to_image(self.component_variance(comp))
        if logits is None:
            return mean, var
        w = tf.reshape(tf.nn.softmax(logits), tf.concat([tf.shape(logits), [1, 1, 1]], 0))
        m = tf.reduce_sum(w * mean, axis=-4)
        return m, tf.reduce_sum(w * (var + tf.square(mean)), axis=-4) - tf.square(m)

    def mean(self, dist, seed=SAMPLE_SEED):
        """Mean of the distribution, `[B, H, W, C]` (pixels, unclipped). `seed` is used only by
        heads whose mean is estimated from samples (MAF)."""
        _, logits, comp = self._parts(dist)
        return self._weighted(logits, self._to_image(self.component_mean(comp)))

    @staticmethod
    def _weighted(logits, x):
        """`sum_k softmax(logits)_k x_k` `[B, H, W, C]` of per-component images `x` `[B, K, H, W, C]`;
        `x` itself when `logits` is None (K = 1)."""
        if logits is None:
            return x
        w = tf.reshape(tf.nn.softmax(logits), tf.concat([tf.shape(logits), [1, 1, 1]], 0))
        return tf.reduce_sum(w * x, axis=-4)

    def variance(self, dist, seed=SAMPLE_SEED):
        """Per-pixel variance `[B, H, W, C]`; NaN where it does not exist (t with df <= 2, the
        `mse` head, which models no variance). `seed`: as in `mean`."""
        return self._mixture_moments(dist, seed)[1]

    def marginal(self, comp):
        """Each pixel's marginal distribution under the component distribution `comp`: batch
        `[..., *natural_event_shape]`, scalar event, with a `quantile`; None where it has no
        closed form (`interval` then samples). Overridden by the families."""
        return None

    def interval(self, dist, level=INTERVAL_LEVEL, seed=SAMPLE_SEED):
        """Per-pixel central `level` interval of p(x_pixel | input): `(lo, hi)`, each `[B, H, W, C]`
        in pixel units (pixels in [0, 1]; the bounds may lie outside, and are infinite where the
        quantile overflows float32, e.g. a t with df ~ 0.01), `lo = F^-1((1 - level) / 2)`,
        `hi = F^-1((1 + level) / 2)` of each pixel's marginal F. Unlike the variance it exists for
        every head (Student-t with df <= 2, MAF, mixtures, Bernoulli). Exact from the marginal's
        quantiles (`marginal`) for K = 1 normal, Student-t (Kotz & Nadarajah 2004: the marginals of
        a multivariate or elliptical matrix t are t with the same df), logistic and continuous
        Bernoulli heads; otherwise (mixtures, MAF, Bernoulli) the empirical percentiles of
        `INTERVAL_SAMPLES` draws with the stateless `seed` (linear interpolation). NaN for `mse`,
        which models no spread.
        Raises:
          InputError: `level` outside (0, 1).
        """
        if not 0 < level < 1:
            raise InputError(f"interval level must be in (0, 1), got {level!r}")
        _, logits, comp = self._parts(dist)
        marginal = self.marginal(comp) if logits is None else None
        if marginal is not None:
            return (self._to_image(marginal.quantile((1 - level) / 2)),
                    self._to_image(marginal.quantile((1 + level) / 2)))
        return sample_interval(self.sample(dist, INTERVAL_SAMPLES, seed=seed), level)

    def interval_width(self, dist, level=INTERVAL_LEVEL, seed=SAMPLE_SEED):
        """`hi - lo` of `interval`, `[B, H, W, C]`, pixel units (may exceed 1, or be inf)."""
        lo, hi = self.interval(dist, level, seed)
        return hi - lo

    def _mixture_log_prob_at(self, inner, points):
        """Mixture log-density at each component's point: points `[B, K, *natural]` -> `[B, K]`."""
        nd = len(self.natural_event_shape)
        r = points.shape.rank
        perm = [r - nd - 1] + list(range(r - nd - 1)) + list(range(r - nd, r))
        lp = inner.log_prob(tf.transpose(points, perm))  # [K, B]
        return tf.transpose(lp, list(range(1, lp.shape.rank)) + [0])

    def mode(self, dist):
        """Mode `[B, H, W, C]`. For a mixture: the mode of the component with the highest mixture
        density at its own mode (Ciobanu, Section 3), exact for K=1."""
        inner, logits, comp = self._parts(dist)
        modes = self.component_mode(comp)  # [B, (K,) *natural]
        if logits is not None:
            best = tf.argmax(self._mixture_log_prob_at(inner, modes), axis=-1)
            modes = tf.gather(modes, best, axis=1, batch_dims=1)
        return self._to_image(modes)

    def component_points(self, dist):
        """Every mixture component's point estimate and the mixture's log-density there.

        For Figure 4 of the paper (and the `component_means` / `component_log_prob` serving
        signatures): the mean of each component (the mode for t heads), clipped to [0, 1],
        `[B, K, H, W, C]`, and `log p_mixture(point_k)` in nats, `[B, K]`, at that clipped image
        (the image shown and saved, not the unclipped mean).
        Raises:
          ValueError: the head is not a mixture (K = 1).
        """
        inner, logits, comp = self._parts(dist)
        if logits is None:
            raise InputError(f"{self.head_name}: component_points needs a mixture (K > 1), got K=1")
        pts = self.component_mode(comp) if self.point == "mode" else self.component_mean(comp)
        pts = tf.clip_by_value(pts, 0.0, 1.0)
        return self._to_image(pts), self._mixture_log_prob_at(inner, pts)

    def point_estimate(self, dist, seed=SAMPLE_SEED):
        """The paper's point estimate `[B, H, W, C]` clipped to [0, 1]: mean for normals and
        per-pixel heads, mode for t heads, mean of 50 samples for MAF (drawn with the stateless
        `seed`, so the estimate is reproducible; None draws fresh samples)."""
        if self.point == "mode":
            x = self.mode(dist)
        else:
            x = self.mean(dist, seed=seed)
        return tf.clip_by_value(x, 0.0, 1.0)

    def point_and_variance(self, dist, seed=SAMPLE_SEED):
        """`point_estimate` and `variance` together, both `[B, H, W, C]` (heads that estimate
        them from samples draw the samples once)."""
        return self.point_estimate(dist, seed=seed), self.variance(dist, seed=seed)

    def _tensor(self, dist):
        """The cheap tensor the Keras layer carries (`convert_to_tensor_fn`), `[B, H, W, C]`:
        never a sample, finite for every head. The mean, or for heads whose point estimate is the
        mode (t heads, whose mean does not exist for df <= 1) the mixture-weighted component modes
        (the mode for K = 1). `model.predict` returns `point_estimate` instead."""
        if self.point != "mode":
            return self.mean(dist)
        _, logits, comp = self._parts(dist)
        return self._weighted(logits, self._to_image(self.component_mode(comp)))

    def sample(self, dist, num_samples, seed=None):
        """`num_samples` draws of `dist`, `[num_samples, B, H, W, C]` (`seed`: int or stateless pair)."""
        return dist.sample(num_samples, seed=seed)
