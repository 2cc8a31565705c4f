"""Output heads: the registry of distributions a decoder can end in.

Each head is a `tfp.layers.DistributionLambda` subclass that declares, once:

- `head_name` (the registry key used by the CLI, the tables and the tests) and the paper's `label`;
- `component_params_size(event_shape)`: how many numbers one component needs;
- `component(params)`: how a flat tensor `[..., P]` becomes one distribution (a batch of them);
- how its point estimate is read (`point`: mean, mode or mean of samples).

`num_components=K > 1` turns any mixable head into a `tfd.MixtureSameFamily` of K components,
built from one batched component distribution (never a Python list). Its flat parameter layout is
`[K mixture logits, K * P component parameters]`, i.e. `K * (P + 1)` numbers.

Every head's distribution has the image's event shape `[H, W, C]`: vector heads (full covariance,
Student-t) and matrix heads (matrix normal, matrix-t) live on their natural event shape
(`[D]` or `[H, W]`) and are wrapped in a `tfb.Reshape`, so `dist.log_prob(images)` works for all
heads and `model.fit(images, images)` is the same call for every head.

Strictly positive parameters use `1e-6 + softplus` (Ciobanu, Section 3).

Parameter counts against the paper (Tables 1, 2): the paper wraps even K=1 in a one-component
mixture, so its K=1 heads carry one extra output (a mixture logit whose gradient is identically
zero). Here K=1 is the plain distribution, which saves that output: one decoder unit fewer
(33 parameters for the MLP). For K > 1 the counts are the paper's.
"""
import functools
import math

import numpy as np

from tensorflow_probability.python.experimental import tangent_spaces

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


def _tril_size(n):
    return n * (n + 1) // 2


def _scale_params_size(kind, n):
    return {"identity": 0, "diag": n, "full": _tril_size(n)}[kind]


@functools.lru_cache(maxsize=None)
def _packed_diagonal(m):
    """`[n]` int: the positions in the packed vector (`m = n(n+1)/2` entries) that
    `fill_triangular` puts on the diagonal, in row order."""
    with tf.init_scope():  # eager, also while a graph is being traced
        filled = tfp.math.fill_triangular(tf.range(1, m + 1)).numpy()
    return np.diag(filled) - 1


def _unbroadcast(g, shape):
    """Sum `g` over the axes along which a tensor of `shape` was broadcast to `g`'s shape."""
    _, axes = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(g), s1=shape)
    return tf.reshape(tf.reduce_sum(g, axes), shape)


def _full_scale(params):
    """(tril, raw diagonal) of a full scale: L = fill_triangular(`params` `[..., n(n+1)/2]`)
    with its diagonal replaced by 1e-6 + softplus of itself, `[..., n, n]` (the same matrix as
    `tfb.FillScaleTriL(diag_bijector=Softplus(), diag_shift=1e-6)`, transforming only the n
    diagonal entries instead of the dense matrix), and those raw entries `[..., n]`."""
    d = tf.gather(params, _packed_diagonal(int(params.shape[-1])), axis=-1)
    return _set_diag(tfp.math.fill_triangular(params), positive(d)), d


@tf.custom_gradient
def _set_diag(matrix, diag):
    """`tf.linalg.set_diag(matrix [..., n, n], diag [..., n])`, with the gradient written with
    `zeros_like`: TF's own gradient builds `tf.zeros(shape)` from the runtime shape, which XLA
    cannot compile inside `model.fit`'s loop over `steps_per_execution` steps (the batch size is
    dynamic there: "Reading input as constant from a dynamic tensor")."""
    def grad(g):
        return tf.linalg.set_diag(g, tf.zeros_like(diag)), tf.linalg.diag_part(g)
    return tf.linalg.set_diag(matrix, diag), grad


@tf.custom_gradient
def _tril_quadratic_log_det(params, tril, d, r):
    """(q, log det L) `[...]` for r `[..., n]`: q = ||L^{-1} r||^2, L = `tril` from `_full_scale`.

    Differentiated with respect to the packed `params` directly (`tril` and `d` get no gradient;
    they are functions of `params`): with z = L^{-1} r and w = L^{-T} z,
    dq/dr = 2 w and dq/dL = -2 w z^T (lower part; the upstream factor scales w, [..., n, 1], before
    the outer product, not the n x n result); d log det / dL_ii = 1 / L_ii; the diagonal
    chains through dL_ii/dp = sigmoid(p). The n x n gradient is gathered back to the packed layout
    once (`fill_triangular_inverse`); no autodiff through `fill_triangular`, `set_diag` or the
    elementwise maps of all n(n+1)/2 entries.
    """
    with tf.name_scope("full_scale_log_prob"):
        z = tf.linalg.triangular_solve(tril, r[..., None], lower=True)      # [..., n, 1]
        pos = tf.linalg.diag_part(tril)
        q = tf.reduce_sum(tf.square(z), axis=[-2, -1])
        log_det = tf.reduce_sum(tf.math.log(pos), axis=-1)

    def grad(gq, g_log_det):
        with tf.name_scope("full_scale_log_prob_grad"):
            return _grad(gq, g_log_det)

    def _grad(gq, g_log_det):
        w = tf.linalg.triangular_solve(tril, z, lower=True, adjoint=True)   # L^{-T} z
        # dL: summed over any axes r was broadcast along (e.g. samples), before the diagonal terms
        big = _unbroadcast(tf.matmul((-2.0 * gq)[..., None, None] * w, z, adjoint_b=True), tf.shape(tril))
        diag = (tf.linalg.diag_part(big) + g_log_det[..., None] / pos) * tf.sigmoid(d)
        # fill_triangular_inverse reads a lower-triangular matrix (it adds the mirrored upper part)
        d_params = tfp.math.fill_triangular_inverse(tf.linalg.band_part(tf.linalg.set_diag(big, diag), -1, 0))
        d_r = (2.0 * gq)[..., None] * w[..., 0]
        return d_params, None, None, _unbroadcast(d_r, tf.shape(r))

    return (q, log_det), grad


class _FastFullScale:
    """Mixin for the full-scale heads' distributions: `log_prob` through
    `_tril_quadratic_log_det` when the scale operator carries its packed parameters (`_packed`,
    kept on the operator because TFP rebuilds distributions from their parameters), else TFP's."""

    @property
    def _packed(self):
        return getattr(self.scale, "_packed", None)

    def experimental_local_measure(self, x, backward_compat=False, **kwargs):
        # a TransformedDistribution around this one (the head's reshape to the image) asks for
        # the local measure instead of log_prob; answer with the fast log_prob
        if self._packed is None:
            return super().experimental_local_measure(x, backward_compat=backward_compat, **kwargs)
        return self.log_prob(x), tangent_spaces.FullSpace()

    def _quadratic_log_det(self, x):
        params, tril, d = self._packed
        return _tril_quadratic_log_det(params, tril, d, x - self.loc)


class MultivariateNormalFullScale(_FastFullScale, tfd.MultivariateNormalLinearOperator):
    """N(loc, L L^T): log p(x) = -q/2 - log det L - n/2 log(2 pi), q = ||L^{-1}(x - loc)||^2."""

    def _log_prob(self, x):
        if self._packed is None:
            return super()._log_prob(x)
        q, log_det = self._quadratic_log_det(x)
        n = tf.cast(tf.shape(x)[-1], x.dtype)
        return -0.5 * q - log_det - 0.5 * n * np.log(2 * np.pi)


class MultivariateStudentTFullScale(_FastFullScale, tfd.MultivariateStudentTLinearOperator):
    """t(df, loc, L): log p(x) = lgamma((df + n)/2) - lgamma(df/2) - n/2 log(df pi) - log det L
    - (df + n)/2 log(1 + q/df) (Kotz & Nadarajah 2004, Eq. 1.1), q as for the normal."""

    def _log_prob(self, x):
        if self._packed is None:
            return super()._log_prob(x)
        q, log_det = self._quadratic_log_det(x)
        n = tf.cast(tf.shape(x)[-1], x.dtype)
        df = tf.convert_to_tensor(self.df)
        return (tf.math.lgamma(0.5 * (df + n)) - tf.math.lgamma(0.5 * df) - 0.5 * n * tf.math.log(df * np.pi)
                - log_det - 0.5 * (df + n) * tf.math.log1p(q / df))


def _scale_operator(kind, params, n):
    """An n x n scale operator from its flat parameters `[..., _scale_params_size(kind, n)]`.

    identity: I (no parameters); diag: diag(1e-6 + softplus(p)); full: `_full_scale(p)`.
    """
    if kind == "identity":
        # LinearOperatorIdentity inside a Kronecker product fails to solve in graph mode
        # (TF 2.21: UnboundLocalError in the Kronecker solve), so identity is a diagonal of ones.
        return tf.linalg.LinearOperatorDiag(tf.ones([n], params.dtype), is_non_singular=True,
                                            is_positive_definite=True)
    if kind == "diag":
        return tf.linalg.LinearOperatorDiag(positive(params), is_non_singular=True,
                                            is_positive_definite=True)
    return tf.linalg.LinearOperatorLowerTriangular(_full_scale(params)[0], is_non_singular=True)


def _row_variance(op):
    """diag(S S^T) of a scale operator `S`, `[..., n]`, without forming S S^T."""
    if isinstance(op, tf.linalg.LinearOperatorDiag):
        return tf.square(op.diag)
    return tf.reduce_sum(tf.square(op.to_dense()), axis=-1)


class Head(tfpl.DistributionLambda):
    """Base class of the output heads (see the module docstring for the contract).

    Args:
      event_shape: image shape `(H, W, C)`.
      num_components: K >= 1; K > 1 makes a `MixtureSameFamily` (only for `mixable` heads).
    Raises:
      ValueError: K is not an integer >= 1, or K > 1 for a head that does not mix, or an event
        shape the head cannot take.
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

    def __init__(self, event_shape, num_components=1, **kwargs):
        event_shape = tuple(int(d) for d in event_shape)
        if len(event_shape) != 3 or min(event_shape) < 1:
            raise InputError(f"{self.head_name}: event_shape must be (H, W, C), got {event_shape}")
        if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)) \
                or num_components < 1:
            raise InputError(f"num_components (K) must be an integer >= 1, got {num_components!r}")
        if num_components > 1 and not self.mixable:
            raise InputError(f"head {self.head_name!r} does not mix: K must be 1, got {num_components} "
                             f"(the paper never mixed MSE or MAF). Mixable heads: {', '.join(mixable_heads())}")
        self._image_shape = event_shape
        self.num_components = int(num_components)
        self._check_event_shape(event_shape)
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
    def component_params_size(cls, event_shape):
        """Number of flat parameters of one component for images of shape `event_shape`."""
        raise NotImplementedError

    def component(self, params):
        """Distribution from flat parameters `[..., P]`; batch `[...]`, event `natural_event_shape`."""
        raise NotImplementedError

    # ---- shared machinery ---------------------------------------------------------------------
    @classmethod
    def params_size(cls, event_shape, num_components=1):
        """Flat parameter count the decoder must output: `P` for K=1, `K * (P + 1)` for K > 1."""
        p = cls.component_params_size(tuple(event_shape))
        return p if num_components == 1 else num_components * (p + 1)

    @property
    def size(self):
        """`params_size` of this instance."""
        return self.params_size(self._image_shape, self.num_components)

    def new(self, params):
        """Turn decoder outputs `[B, params_size]` into a distribution, event shape `[H, W, C]`."""
        k = self.num_components
        if k == 1:
            dist = self.component(params)
        else:
            p = self.component_params_size(self._image_shape)
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
        config.update(event_shape=list(self._image_shape), num_components=self.num_components)
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


# ---- per-pixel heads -----------------------------------------------------------------------
class PixelHead(Head):
    """A factorised head: `Independent` over the H x W x C pixels of one univariate family."""
    n_pixel_params = 1

    @classmethod
    def component_params_size(cls, event_shape):
        return cls.n_pixel_params * int(np.prod(event_shape))

    def pixel_distribution(self, *params):
        raise NotImplementedError

    def component(self, params):
        d = int(np.prod(self._image_shape))
        parts = [_unflatten(t, self._image_shape) for t in _split(params, [d] * self.n_pixel_params)]
        return tfd.Independent(self.pixel_distribution(*parts), reinterpreted_batch_ndims=3)

    def marginal(self, comp):
        """The per-pixel distribution itself."""
        return comp.distribution


class NormalIdentity(PixelHead):
    """N(mu, I): multivariate normal with identity covariance (the paper's Nµ)."""
    head_name, label = "normal_identity", "Nµ"

    def pixel_distribution(self, loc):
        return tfd.Normal(loc, tf.ones_like(loc))


class MSE(NormalIdentity):
    """The plain autoencoder: trained on per-pixel mean squared error.

    MSE is the unit-variance normal up to an affine map: `-log N(x; mu, I) =
    D/2 * (MSE + log 2 pi)`, so its distribution (used for the reported NLL) is N(mu, I).
    """
    head_name, label = "mse", "MSE"
    mixable = False
    has_variance = False
    loss_units = "MSE"
    nll_note = "mse head: NLL of the unit-variance normal N(mean, I) that MSE training implies"
    variance_note = "the MSE autoencoder models no variance"

    def variance(self, dist, seed=SAMPLE_SEED):
        """NaN `[B, H, W, C]`: MSE training fixes no variance (its NLL assumes 1, which is not learned)."""
        return tf.fill(tf.shape(self.mean(dist)), np.nan)

    def interval(self, dist, level=INTERVAL_LEVEL, seed=SAMPLE_SEED):
        """NaN bounds `[B, H, W, C]`, as `variance`."""
        nan = self.variance(dist)
        return nan, nan

    loss = staticmethod(squared_error)


class NormalDiag(PixelHead):
    """N(mu, diag(sigma^2)), sigma = 1e-6 + softplus (the paper's Nµ,diag(Σ))."""
    head_name, label = "normal_diag", "Nµ,diag(Σ)"
    n_pixel_params = 2

    def pixel_distribution(self, loc, s):
        return tfd.Normal(loc, positive(s))


class Bernoulli(PixelHead):
    """Bernoulli per pixel, i.e. binary cross-entropy on [0, 1] pixels.

    Its `log_prob` on non-binary x in [0, 1] is `x log p + (1 - x) log(1 - p)`, which is NOT a
    normalised density on [0, 1]: its NLL and bits/dim are not comparable with the other heads'
    (the continuous Bernoulli fixes this, Loaiza-Ganem & Cunningham 2019).
    """
    head_name, label = "bernoulli", "Bern"
    is_density = False
    nll_note = "bernoulli: not a normalised density on [0, 1]; NLL not comparable, no bits/dim"

    def pixel_distribution(self, logits):
        return tfd.Bernoulli(logits=logits, dtype=tf.float32)

    def marginal(self, comp):
        """None: a Bernoulli has no quantile function in TFP (its interval is read from samples)."""
        return None


class ContinuousBernoulli(PixelHead):
    """Continuous Bernoulli per pixel (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1]."""
    head_name, label = "continuous_bernoulli", "CB"

    def pixel_distribution(self, logits):
        return tfd.ContinuousBernoulli(logits=logits)


class Logistic(PixelHead):
    """Logistic(mu, s) per pixel, s = 1e-6 + softplus (Kingma et al. 2016, VAE-IAF)."""
    head_name, label = "logistic", "Logistic"
    n_pixel_params = 2

    def pixel_distribution(self, loc, s):
        return tfd.Logistic(loc, positive(s))


# ---- vector heads: one multivariate distribution over the D = H*W*C pixels -------------------
class _EllipticalHead(Head):
    """Normal or Student-t heads with a scale operator (vector and matrix heads): each pixel's
    marginal is N(mu, s^2) or, for Student-t heads, t(df, mu, s) with the same df (Kotz &
    Nadarajah 2004), where s^2 (`_squared_scale`) is the pixel's diagonal entry of the scale's
    outer product."""
    scale = "identity"
    student_t = False

    def _squared_scale(self, comp):
        """s^2 of every pixel, `[..., *natural_event_shape]`."""
        raise NotImplementedError

    def _pixel_df(self, comp):
        """df `[...]` broadcastable against the pixels `[..., *natural_event_shape]`."""
        return comp.df[(Ellipsis,) + (None,) * len(self.natural_event_shape)]

    def marginal(self, comp):
        scale = tf.sqrt(self._squared_scale(comp))
        if self.student_t:
            return tfd.StudentT(self._pixel_df(comp), comp.loc, scale)
        return tfd.Normal(comp.loc, scale)

    def component_variance(self, comp):
        """s^2, or df / (df - 2) s^2 for Student-t heads, NaN where df <= 2."""
        var = self._squared_scale(comp)
        if self.student_t:
            df = self._pixel_df(comp)
            var = tf.where(df > 2, var * df / (df - 2), np.nan)
        return var


class VectorHead(_EllipticalHead):
    """Multivariate normal / Student-t over the flattened image, with an identity, diagonal or
    full (lower-triangular, `FillScaleTriL`) scale. Student-t heads add one df per component."""

    @property
    def natural_event_shape(self):
        return (int(np.prod(self._image_shape)),)

    @classmethod
    def component_params_size(cls, event_shape):
        d = int(np.prod(event_shape))
        return d + _scale_params_size(cls.scale, d) + int(cls.student_t)

    def component(self, params):
        d = self.natural_event_shape[0]
        n_scale = _scale_params_size(self.scale, d)
        loc, s, df = _split(params, [d, n_scale, int(self.student_t)])
        if self.scale == "full":  # log_prob differentiated on the packed parameters
            tril, diag = _full_scale(s)
            scale = tf.linalg.LinearOperatorLowerTriangular(tril, is_non_singular=True)
            scale._packed = (s, tril, diag)
            return (MultivariateStudentTFullScale(positive(tf.squeeze(df, -1)), loc, scale) if self.student_t
                    else MultivariateNormalFullScale(loc, scale))
        if self.student_t:
            return tfd.MultivariateStudentTLinearOperator(
                df=positive(tf.squeeze(df, -1)), loc=loc, scale=_scale_operator(self.scale, s, d))
        return tfd.MultivariateNormalLinearOperator(loc, _scale_operator(self.scale, s, d))

    def _squared_scale(self, comp):
        """Pixel i: sum_j L_ij^2, `[..., D]`."""
        return _row_variance(comp.scale) * tf.ones_like(comp.loc)


class NormalFull(VectorHead):
    """N(mu, L L^T), L from `FillScaleTriL` (the paper's Nµ,Σ; D(D+1)/2 scale parameters)."""
    head_name, label, scale = "normal_full", "Nµ,Σ", "full"
    full_covariance = True


class StudentTIdentity(VectorHead):
    """Multivariate t(df, mu, I) (the paper's tdf,µ). Point estimate: the mode."""
    head_name, label, scale, student_t, point = "student_t_identity", "tdf,µ", "identity", True, "mode"
    variance_note = "variance exists only where df > 2 (blank elsewhere)"


class StudentTDiag(StudentTIdentity):
    """Multivariate t(df, mu, diag(sigma)^2) (the paper's tdf,µ,diag(Σ))."""
    head_name, label, scale = "student_t_diag", "tdf,µ,diag(Σ)", "diag"


class StudentTFull(StudentTIdentity):
    """Multivariate t(df, mu, L L^T) with L from `FillScaleTriL` (the paper's tdf,µ,Σ)."""
    head_name, label, scale = "student_t_full", "tdf,µ,Σ", "full"
    full_covariance = True


# ---- matrix heads: rows x columns of a grayscale image --------------------------------------
def _matrix_mahalanobis(x, loc, scale_row, scale_column):
    """`||U^{-1} (X - M) V^{-T}||_F^2` `[...]`: two small solves instead of one on `V (x) U`."""
    a = scale_row.solve(x - loc)                                   # U^{-1} R         [..., n, p]
    return tf.reduce_sum(tf.square(scale_column.solve(a, adjoint_arg=True)), axis=[-2, -1])


def _kron_log_det(scale_row, scale_column):
    """`log|det(V (x) U)| = p log|det U| + n log|det V|` for U n x n and V p x p."""
    n = tf.cast(scale_row.range_dimension_tensor(), scale_row.dtype)
    p = tf.cast(scale_column.range_dimension_tensor(), scale_row.dtype)
    return p * scale_row.log_abs_determinant() + n * scale_column.log_abs_determinant()


def _matrix_noise(dist, n, seed):
    """`U Z V^T` `[n, *batch, H, W]`, Z standard normal, for row scale U and column scale V (the
    Kronecker operator TFP samples with fails on unknown static shapes in graph mode)."""
    shape = tf.concat([[n], dist.batch_shape_tensor(), dist.event_shape_tensor()], 0)
    uz = dist.scale_row.matmul(tf.random.stateless_normal(shape, seed=seed, dtype=dist.dtype))
    return tf.linalg.matrix_transpose(dist.scale_column.matmul(uz, adjoint_arg=True))


class MatrixNormal(tfd.MatrixNormalLinearOperator):
    """`tfd.MatrixNormalLinearOperator` whose `log_prob` works on the n x p matrices:

    `log p(X) = -np/2 log(2 pi) - log|det(V (x) U)| - 1/2 ||U^{-1} (X - M) V^{-T}||_F^2` (Dawid 1981),
    the same density as TFP's (tested against `scipy.stats.matrix_normal`), in O(n p (n + p))
    without a Kronecker operator (whose solve also fails on unknown static shapes in graph mode).
    """

    def _log_prob(self, x):
        d = tf.cast(tf.reduce_prod(tf.shape(x)[-2:]), x.dtype)
        return (-0.5 * d * np.log(2 * np.pi) - _kron_log_det(self.scale_row, self.scale_column)
                - 0.5 * _matrix_mahalanobis(x, self.loc, self.scale_row, self.scale_column))

    def _sample_n(self, n, seed=None):
        """X = M + U Z V^T, Z standard normal."""
        return self.loc + _matrix_noise(self, n, tfp.random.sanitize_seed(seed))


class MatrixT(tfd.MatrixTLinearOperator):
    """`tfd.MatrixTLinearOperator` (vec(X) ~ multivariate t(df, vec(M), V (x) U)) with `log_prob`
    computed on the matrices, as `MatrixNormal`:

    `log p(X) = lgamma((df + d)/2) - lgamma(df/2) - d/2 log(df pi) - log|det(V (x) U)|
    - (df + d)/2 log(1 + q/df)`, `q = ||U^{-1} (X - M) V^{-T}||_F^2`, `d = np`.
    Note: this elliptical matrix-t is TFP's (and the paper's); it is not the matrix variate t of
    Gupta & Nagar (2000, Theorem 4.2.1), with which it agrees only for one row or one column.
    """

    def _log_prob(self, x):
        d = tf.cast(tf.reduce_prod(tf.shape(x)[-2:]), x.dtype)
        df = tf.convert_to_tensor(self.df)
        q = _matrix_mahalanobis(x, self.loc, self.scale_row, self.scale_column)
        return (tf.math.lgamma(0.5 * (df + d)) - tf.math.lgamma(0.5 * df) - 0.5 * d * tf.math.log(df * np.pi)
                - _kron_log_det(self.scale_row, self.scale_column) - 0.5 * (df + d) * tf.math.log1p(q / df))

    def _sample_n(self, n, seed=None):
        """X = M + sqrt(df / g) U Z V^T, Z standard normal, g ~ chi2(df) (a multivariate t of vec X)."""
        normal_seed, gamma_seed = tfp.random.split_seed(seed, n=2)
        df = tf.convert_to_tensor(self.df)
        g = 2.0 * tf.random.stateless_gamma(tf.concat([[n], tf.shape(df)], 0), seed=gamma_seed, alpha=0.5 * df,
                                            dtype=self.dtype)
        return self.loc + tf.sqrt(df / g)[..., None, None] * _matrix_noise(self, n, normal_seed)


class MatrixHead(_EllipticalHead):
    """Matrix normal MN(M, U, V) or matrix-t on the H x W image, with row scale U (H x H) and
    column scale V (W x W) each identity, diagonal or lower-triangular (Dawid 1981; Gupta & Nagar
    2000). Its variance map is the product of row and column variances."""
    variance_note = "variance = row variance x column variance"

    def _check_event_shape(self, event_shape):
        if event_shape[2] != 1:
            raise InputError(f"{self.head_name}: matrix heads need one channel, got event_shape {event_shape}")

    @property
    def natural_event_shape(self):
        return self._image_shape[:2]

    @classmethod
    def component_params_size(cls, event_shape):
        h, w = event_shape[:2]
        return h * w + _scale_params_size(cls.scale, h) + _scale_params_size(cls.scale, w) + int(cls.student_t)

    def component(self, params):
        h, w = self.natural_event_shape
        nr, nc = _scale_params_size(self.scale, h), _scale_params_size(self.scale, w)
        loc, r, c, df = _split(params, [h * w, nr, nc, int(self.student_t)])
        loc = _unflatten(loc, [h, w])
        rows, cols = _scale_operator(self.scale, r, h), _scale_operator(self.scale, c, w)
        if self.student_t:
            return MatrixT(positive(tf.squeeze(df, -1)), loc, rows, cols)
        return MatrixNormal(loc, rows, cols)

    def _squared_scale(self, comp):
        """Pixel (i, j): u_i v_j, `[..., H, W]`, with u, v the row and column variances (the squared
        row norms of the row and column scales)."""
        var = _row_variance(comp.scale_row)[..., :, None] * _row_variance(comp.scale_column)[..., None, :]
        return var * tf.ones_like(comp.loc)


class MatrixNormalIdentity(MatrixHead):
    """Matrix normal MN(M, I, I) (the paper's MNµ)."""
    head_name, label = "matrix_normal_identity", "MNµ"


class MatrixNormalDiag(MatrixHead):
    """Matrix normal with diagonal row and column scales (the paper's MNµ,diag(U,V))."""
    head_name, label, scale = "matrix_normal_diag", "MNµ,diag(U,V)", "diag"


class MatrixNormalFull(MatrixHead):
    """Matrix normal with lower-triangular row and column scales (the paper's MNµ,U,V)."""
    head_name, label, scale = "matrix_normal_full", "MNµ,U,V", "full"


class MatrixTIdentity(MatrixHead):
    """Matrix-t (`tfd.MatrixTLinearOperator`) with identity scales (the paper's Tdf,µ)."""
    head_name, label, student_t, point = "matrix_t_identity", "Tdf,µ", True, "mode"
    variance_note = "variance = df/(df-2) x row variance x column variance, only where df > 2 (blank elsewhere)"


class MatrixTDiag(MatrixTIdentity):
    """Matrix-t with diagonal row and column scales (the paper's Tdf,µ,diag(U,V))."""
    head_name, label, scale = "matrix_t_diag", "Tdf,µ,diag(U,V)", "diag"


class MatrixTFull(MatrixTIdentity):
    """Matrix-t with lower-triangular row and column scales (the paper's Tdf,µ,U,V)."""
    head_name, label, scale = "matrix_t_full", "Tdf,µ,U,V", "full"


# ---- masked autoregressive flow ------------------------------------------------------------
class MAF(Head):
    """Masked autoregressive flow (Papamakarios et al. 2017) on a unit-variance normal whose mean
    the decoder outputs; the MADE has one 10-unit ReLU hidden layer (Ciobanu, Section 3).

    The MADE's weights belong to this layer (input-independent, as in the paper). `log_prob` is one
    network pass; sampling is D sequential passes, so the point estimate (mean of 50 samples) is
    slow and is never computed during training.
    """
    head_name, label = "maf", "MAF"
    mixable = False
    point = "sample_mean"
    variance_note = "variance estimated from 50 samples"

    def __init__(self, event_shape, num_components=1, hidden_units=10, **kwargs):
        super().__init__(event_shape, num_components, **kwargs)
        d = int(np.prod(self._image_shape))
        self.hidden_units = int(hidden_units)
        self.made = tfb.AutoregressiveNetwork(params=2, event_shape=[d], hidden_units=[self.hidden_units],
                                              activation="relu", name="made", dtype="float32")
        self.made.build([None, d])

    @property
    def natural_event_shape(self):
        return (int(np.prod(self._image_shape)),)

    @classmethod
    def component_params_size(cls, event_shape):
        return int(np.prod(event_shape))

    def component(self, params):
        base = tfd.MultivariateNormalDiag(params, tf.ones_like(params))
        return tfd.TransformedDistribution(base, tfb.MaskedAutoregressiveFlow(self.made))

    def get_config(self):
        return dict(super().get_config(), hidden_units=self.hidden_units)

    def _mixture_moments(self, dist, seed=SAMPLE_SEED):
        x = self.sample(dist, MAF_SAMPLES, seed=seed)
        return tf.reduce_mean(x, 0), tf.math.reduce_variance(x, 0)

    def sample(self, dist, num_samples, seed=None):
        """Samples `[num_samples, B, H, W, C]` of the flow, exactly as `dist.sample` computes them
        (x_i = u_i exp(log_scale_i(x_<i)) + shift_i(x_<i), u ~ base), but in D cheap steps.

        TFP's `MaskedAutoregressiveFlow` inverts the MADE by D full network passes (cost
        O(D^2 H) per sample). With one hidden layer the pre-activations can be accumulated
        instead: after x_i is known, add x_i W1[i, :]; output i reads only hidden units whose
        inputs are all known (the MADE's masks zero the rest), so each step costs O(H).
        """
        base = self._parts(dist)[2].distribution           # N(loc, I), batch [B], event [D]
        u = base.sample(num_samples, seed=seed)               # [S, B, D]
        shape = tf.shape(u)
        x = self._flow_forward(tf.reshape(u, [-1, shape[-1]]))
        return self._to_image(tf.reshape(x, shape))

    def _flow_forward(self, u):
        """The flow's forward map on `[N, D]` base draws (see `sample`)."""
        dense = [layer for layer in self.made._network.layers if isinstance(layer, tfk.layers.Dense)]
        if len(dense) != 2:  # only the one-hidden-layer MADE has the incremental form
            return tfb.MaskedAutoregressiveFlow(self.made).forward(u)
        (w1, b1), (w2, b2) = [(layer.kernel, layer.bias) for layer in dense]
        d, h = self.natural_event_shape[0], self.hidden_units
        w2, b2 = tf.reshape(w2, [h, d, 2]), tf.reshape(b2, [d, 2])   # output layout [D, (shift, log_scale)]
        n = tf.shape(u)[0]

        def body(i, a, xs):
            p = tf.nn.relu(a) @ w2[:, i, :] + b2[i]                  # [N, 2]
            xi = u[:, i] * tf.exp(p[:, 1]) + p[:, 0]
            return i + 1, a + xi[:, None] * w1[i][None, :], xs.write(i, xi)

        _, _, xs = tf.while_loop(lambda i, a, xs: i < d, body,
                                 (0, tf.broadcast_to(b1, [n, h]), tf.TensorArray(u.dtype, size=d)))
        return tf.transpose(xs.stack())

    def mean(self, dist, seed=SAMPLE_SEED):
        return self._mixture_moments(dist, seed)[0]

    def point_and_variance(self, dist, seed=SAMPLE_SEED):
        mean, var = self._mixture_moments(dist, seed)
        return tf.clip_by_value(mean, 0.0, 1.0), var

    def _tensor(self, dist):
        """The base distribution's mean, reshaped (cheap; the flow's mean needs sampling)."""
        return self._to_image(self._parts(dist)[2].distribution.mean())


HEADS = {cls.head_name: register(cls) for cls in [
    MSE, NormalIdentity, NormalDiag, NormalFull,
    StudentTIdentity, StudentTDiag, StudentTFull, MAF,
    MatrixNormalIdentity, MatrixNormalDiag, MatrixNormalFull,
    MatrixTIdentity, MatrixTDiag, MatrixTFull,
    Bernoulli, ContinuousBernoulli, Logistic,
]}


def mixable_heads():
    return [n for n, c in HEADS.items() if c.mixable]


def get_head(name):
    """The head class registered as `name`.

    Raises:
      ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return HEADS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}") from None


def make_head(name, event_shape, num_components=1, **kwargs):
    """Instantiate the head `name` for images of shape `event_shape` with K components."""
    return get_head(name)(event_shape, num_components, **kwargs)


def describe_heads(event_shape=(28, 28, 1), components=(1, 10)):
    """Rows `(name, label, {K: params_size or None})` for every registered head."""
    rows = []
    for name, cls in HEADS.items():
        sizes = {k: cls.params_size(event_shape, k) if (k == 1 or cls.mixable) else None for k in components}
        rows.append((name, cls.label, sizes))
    return rows


def bits_per_dim(nll_nats, num_dims, num_levels=256):
    """Bits per dimension of a density on dequantised pixels: `nll / (D ln 2) + log2(L)`.

    `nll_nats` is -log p(x_deq) per image (nats) for a density on [0, 1]^D evaluated at uniformly
    dequantised pixels; `log2(L)` converts the density on bins of width 1/L into a probability
    of the discrete image (Theis et al. 2016). For L = 256: `nll / (D ln 2) + 8`.
    """
    return nll_nats / (num_dims * math.log(2)) + math.log2(num_levels)
