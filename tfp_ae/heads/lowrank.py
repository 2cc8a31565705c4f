"""Low-rank heads: a normal or Student-t over the D = H*W*C pixels whose covariance (for the t, its
scale matrix) is `diag(sigma^2) + V V^T`, with `V` `[D, r]` of rank r (`rank`, default 10).

They model correlations between all pixels (and channels) with `D (r + 2)` decoder outputs per
component instead of the `D (D + 3) / 2` of a full covariance, as structured-uncertainty networks
do (Dorta et al., CVPR 2018; Monteiro et al., NeurIPS 2020, "Stochastic Segmentation Networks").
`log_prob` costs O(D r^2): Woodbury's identity for the quadratic form and the matrix determinant
lemma for the log-determinant (TensorFlow's `LinearOperatorLowRankUpdate`), never a D x D matrix.

This module is the example to copy for a new head: a distribution (here TFP's
`MultivariateNormalDiagPlusLowRankCovariance`, and a small Student-t beside it, since TFP has no
multivariate t with a low-rank scale), then a `Head` subclass that declares its name, its options,
its parameter count and how a flat tensor becomes the distribution, then one line in the registry
(`tfp_ae/heads/__init__.py`).
"""
import numpy as np

from tensorflow_probability.python.internal import dtype_util

from tfp_ae._tf import tf, tfd, tfp
from tfp_ae.errors import InputError
from tfp_ae.heads.base import _split, _unflatten, positive
from tfp_ae.heads.elliptical import T_OPTIONS, _EllipticalHead

DEFAULT_RANK = 10


def low_rank_covariance(sigma, factor):
    """`diag(sigma^2) + V V^T` as a positive definite `LinearOperatorLowRankUpdate` `[..., D, D]`
    from `sigma` `[..., D]` (> 0) and `factor` V `[..., D, r]`; never formed densely."""
    base = tf.linalg.LinearOperatorDiag(tf.square(sigma), is_self_adjoint=True, is_positive_definite=True)
    return tf.linalg.LinearOperatorLowRankUpdate(base, factor, is_self_adjoint=True, is_positive_definite=True)


class MultivariateStudentTDiagPlusLowRank(tfd.distribution.AutoCompositeTensorDistribution):
    """Multivariate t(df, loc, S) with scale matrix `S = diag(scale_diag^2) + V V^T`, event `[D]`.

    `log p(x) = lgamma((df + D)/2) - lgamma(df/2) - D/2 log(df pi) - 1/2 log det S
    - (df + D)/2 log(1 + q/df)`, `q = (x - loc)^T S^{-1} (x - loc)` (Kotz & Nadarajah 2004,
    Eq. 1.1), with `S^{-1}` and `det S` from `low_rank_covariance` (Woodbury, determinant lemma).
    Samples: `loc + sqrt(df / g) (scale_diag * z1 + V z2)`, `z1 ~ N(0, I_D)`, `z2 ~ N(0, I_r)`,
    `g ~ chi2(df)`. Mean `loc` (df > 1), mode `loc`, variance `df / (df - 2) diag(S)` (df > 2).

    Args: df `[...]` > 0, loc `[..., D]`, scale_diag `[..., D]` > 0, scale_perturb_factor `[..., D, r]`.
    """

    def __init__(self, df, loc, scale_diag, scale_perturb_factor, validate_args=False, allow_nan_stats=True,
                 name="MultivariateStudentTDiagPlusLowRank"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            dtype = dtype_util.common_dtype([df, loc, scale_diag, scale_perturb_factor], tf.float32)
            self._df = tf.convert_to_tensor(df, dtype)
            self._loc = tf.convert_to_tensor(loc, dtype)
            self._scale_diag = tf.convert_to_tensor(scale_diag, dtype)
            self._scale_perturb_factor = tf.convert_to_tensor(scale_perturb_factor, dtype)
            super().__init__(dtype=dtype, reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                             validate_args=validate_args, allow_nan_stats=allow_nan_stats,
                             parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        props = tfp.util.ParameterProperties
        return dict(df=props(), loc=props(event_ndims=1), scale_diag=props(event_ndims=1),
                    scale_perturb_factor=props(event_ndims=2))

    df = property(lambda self: self._df)
    loc = property(lambda self: self._loc)
    scale_diag = property(lambda self: self._scale_diag)
    scale_perturb_factor = property(lambda self: self._scale_perturb_factor)

    def _event_shape(self):
        return self._loc.shape[-1:]

    def _event_shape_tensor(self):
        return tf.shape(self._loc)[-1:]

    def _log_prob(self, x):
        r = x - self._loc
        s = low_rank_covariance(self._scale_diag, self._scale_perturb_factor)
        q = tf.reduce_sum(r * s.solvevec(r), axis=-1)
        d = tf.cast(tf.shape(x)[-1], self.dtype)
        df = self._df
        return (tf.math.lgamma(0.5 * (df + d)) - tf.math.lgamma(0.5 * df) - 0.5 * d * tf.math.log(df * np.pi)
                - 0.5 * s.log_abs_determinant() - 0.5 * (df + d) * tf.math.log1p(q / df))

    def _sample_n(self, n, seed=None):
        normal_seed, perturb_seed, gamma_seed = tfp.random.split_seed(seed, n=3)
        batch = self.batch_shape_tensor()
        z1 = tf.random.stateless_normal(tf.concat([[n], batch, self._event_shape_tensor()], 0), normal_seed,
                                        dtype=self.dtype)
        z2 = tf.random.stateless_normal(tf.concat([[n], batch, tf.shape(self._scale_perturb_factor)[-1:]], 0),
                                        perturb_seed, dtype=self.dtype)
        df = tf.broadcast_to(self._df, batch)
        g = 2.0 * tf.random.stateless_gamma(tf.concat([[n], batch], 0), gamma_seed, alpha=0.5 * df, dtype=self.dtype)
        noise = self._scale_diag * z1 + tf.linalg.matvec(self._scale_perturb_factor, z2)
        return self._loc + tf.sqrt(df / g)[..., None] * noise

    def squared_scale(self):
        """`diag(S)`, `[..., D]`: each pixel's squared scale (its marginal is t(df, loc_i, sqrt(S_ii)))."""
        return tf.square(self._scale_diag) + tf.reduce_sum(tf.square(self._scale_perturb_factor), axis=-1)

    def _mode(self):
        return tf.broadcast_to(self._loc, tf.concat([self.batch_shape_tensor(), self._event_shape_tensor()], 0))

    def _mean(self):
        return tf.where(self._df[..., None] > 1, self._mode(), np.nan)

    def _variance(self):
        df = self._df[..., None]
        return tf.where(df > 2, df / (df - 2) * self.squared_scale(), np.nan)


class NormalLowRank(_EllipticalHead):
    """N(mu, diag(sigma^2) + V V^T), sigma = 1e-6 + softplus, V `[D, rank]` unconstrained
    (`tfd.MultivariateNormalDiagPlusLowRankCovariance`). Flat layout `[mu (D), sigma (D), V (D*r),
    df (Student-t only)]`; with V = 0 it is `normal_diag`. Pixel marginals N(mu_i, sigma_i^2 + |V_i|^2)."""
    head_name, label = "normal_lowrank", "Nµ,diag(Σ)+VVᵀ"
    options = {"rank": DEFAULT_RANK}

    @classmethod
    def check_option(cls, name, value, event_shape):
        """`rank`: an integer >= 1, and below D = H*W*C when the image shape is known."""
        if name == "rank":
            d = None if event_shape is None else int(np.prod(event_shape))
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 \
                    or (d is not None and value >= d):
                allowed = "an integer >= 1" if d is None else f"an integer in [1, {d}) for {event_shape} images"
                raise InputError(f"rank (--rank) must be {allowed} (below the number of pixel values); got {value!r}")
            return int(value)
        return super().check_option(name, value, event_shape)

    @property
    def natural_event_shape(self):
        return (int(np.prod(self._image_shape)),)

    @classmethod
    def component_params_size(cls, event_shape, rank=DEFAULT_RANK, **options):
        d = int(np.prod(event_shape))
        return d * (rank + 2) + int(cls.student_t)

    def component(self, params):
        d = self.natural_event_shape[0]
        loc, s, v, df = _split(params, [d, d, d * self.rank, int(self.student_t)])
        factor = _unflatten(v, [d, self.rank])
        if self.student_t:
            return MultivariateStudentTDiagPlusLowRank(self.df_from(df), loc, positive(s), factor)
        return tfd.MultivariateNormalDiagPlusLowRankCovariance(loc, tf.square(positive(s)), factor)

    def _squared_scale(self, comp):
        """Pixel i: sigma_i^2 + sum_j V_ij^2, `[..., D]`."""
        if self.student_t:
            return comp.squared_scale()
        return comp.cov_diag_factor + tf.reduce_sum(tf.square(comp.cov_perturb_factor), axis=-1)


class StudentTLowRank(NormalLowRank):
    """Multivariate t(df, mu, diag(sigma^2) + V V^T) (`MultivariateStudentTDiagPlusLowRank`), one df per
    component. Point estimate: the mode."""
    head_name, label, student_t, point = "student_t_lowrank", "tdf,µ,diag(Σ)+VVᵀ", True, "mode"
    options = dict(NormalLowRank.options, **T_OPTIONS)
    variance_note = "variance exists only where df > 2 (blank elsewhere)"
