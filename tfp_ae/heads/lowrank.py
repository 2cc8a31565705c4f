"""Low-rank heads: a normal or Student-t over the D = H*W*C pixels whose covariance (for the t, its
scale matrix) is `diag(sigma^2) + V V^T`, with `V` `[D, r]` of rank r (`rank`, default 10).

They model correlations between all pixels (and channels) with `D (r + 2)` decoder outputs per
component instead of the `D (D + 3) / 2` of a full covariance, as structured-uncertainty networks
do (Dorta et al., CVPR 2018; Monteiro et al., NeurIPS 2020, "Stochastic Segmentation Networks").
`log_prob` costs O(D r^2): Woodbury's identity for the quadratic form and the matrix determinant
lemma for the log-determinant, from one r x r Cholesky factor (`low_rank_quadratic_log_det`; TFP's
`LinearOperatorLowRankUpdate` forms that capacitance matrix twice, once for the solve and once for
the determinant: 1.2x the step time at rank 16, 1.9x at rank 64), never a D x D matrix.

This module is the example to copy for a new head: a distribution (here TFP's
`MultivariateNormalDiagPlusLowRankCovariance` with that `log_prob`, and a small Student-t beside
it, since TFP has no multivariate t with a low-rank scale), then a `Head` subclass that declares its name, its options,
its parameter count and how a flat tensor becomes the distribution, then one line in the registry
(`tfp_ae/heads/__init__.py`).
"""
from __future__ import annotations

import numpy as np
from tensorflow_probability.python.internal import dtype_util

from tfp_ae._tf import tf, tfd, tfp
from tfp_ae.errors import InputError
from tfp_ae.heads.base import _split, _unflatten, positive
from tfp_ae.heads.elliptical import T_OPTIONS, _EllipticalHead

DEFAULT_RANK = 10


def low_rank_quadratic_log_det(r: tf.Tensor, sigma: tf.Tensor, factor: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(q, log det S)`, each `[...]`, of `S = diag(sigma^2) + V V^T` at `r` `[..., D]`:
    `q = r^T S^{-1} r`. `sigma` `[..., D]` > 0 and `factor` V `[..., D, k]` broadcast against `r`.

    With `W = V / sigma`, `z = r / sigma` and the k x k capacitance `C = I + W^T W = L L^T`:
    Woodbury's identity gives `q = |z|^2 - |L^{-1} W^T z|^2` and the matrix determinant lemma
    `log det S = 2 sum log sigma + 2 sum log diag L` (Golub & Van Loan 2013, 2.1.4); O(D k^2).
    """
    w = factor / sigma[..., None]
    z = r / sigma
    chol = tf.linalg.cholesky(tf.linalg.matmul(w, w, transpose_a=True) + tf.eye(tf.shape(factor)[-1], dtype=r.dtype))
    y = tf.linalg.triangular_solve(chol, tf.linalg.matvec(w, z, transpose_a=True)[..., None])
    q = tf.reduce_sum(tf.square(z), axis=-1) - tf.reduce_sum(tf.square(y), axis=[-2, -1])
    log_det = 2.0 * (tf.reduce_sum(tf.math.log(sigma), axis=-1)
                     + tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)), axis=-1))
    return q, log_det


class MultivariateNormalDiagPlusLowRank(tfd.MultivariateNormalDiagPlusLowRankCovariance):
    """`tfd.MultivariateNormalDiagPlusLowRankCovariance(loc, sigma^2, V)` (its sampling, moments and
    parameters) whose `log_prob` is `-q/2 - log det S / 2 - D/2 log(2 pi)` from
    `low_rank_quadratic_log_det` (one capacitance factorisation instead of two)."""

    def _log_prob(self, x):
        q, log_det = low_rank_quadratic_log_det(x - self.loc, tf.sqrt(self.cov_diag_factor), self.cov_perturb_factor)
        d = tf.cast(tf.shape(x)[-1], x.dtype)
        return -0.5 * q - 0.5 * log_det - 0.5 * d * np.log(2 * np.pi)


class MultivariateStudentTDiagPlusLowRank(tfd.distribution.AutoCompositeTensorDistribution):
    """Multivariate t(df, loc, S) with scale matrix `S = diag(scale_diag^2) + V V^T`, event `[D]`.

    `log p(x) = lgamma((df + D)/2) - lgamma(df/2) - D/2 log(df pi) - 1/2 log det S
    - (df + D)/2 log(1 + q/df)`, `q = (x - loc)^T S^{-1} (x - loc)` (Kotz & Nadarajah 2004,
    Eq. 1.1), with `q` and `det S` from `low_rank_quadratic_log_det` (Woodbury, determinant lemma).
    Samples: `loc + sqrt(df / g) (scale_diag * z1 + V z2)`, `z1 ~ N(0, I_D)`, `z2 ~ N(0, I_r)`,
    `g ~ chi2(df)`. Mean `loc` (df > 1), mode `loc`, variance `df / (df - 2) diag(S)` (df > 2).

    Args: df `[...]` > 0, loc `[..., D]`, scale_diag `[..., D]` > 0, scale_perturb_factor `[..., D, r]`.
    """

    def __init__(self, df: tf.Tensor, loc: tf.Tensor, scale_diag: tf.Tensor, scale_perturb_factor: tf.Tensor,
                 validate_args: bool = False, allow_nan_stats: bool = True,
                 name: str = "MultivariateStudentTDiagPlusLowRank"):
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
        q, log_det = low_rank_quadratic_log_det(x - self._loc, self._scale_diag, self._scale_perturb_factor)
        d = tf.cast(tf.shape(x)[-1], self.dtype)
        df = self._df
        return (tf.math.lgamma(0.5 * (df + d)) - tf.math.lgamma(0.5 * df) - 0.5 * d * tf.math.log(df * np.pi)
                - 0.5 * log_det - 0.5 * (df + d) * tf.math.log1p(q / df))

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

    def squared_scale(self) -> tf.Tensor:
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
    (`MultivariateNormalDiagPlusLowRank`). Flat layout `[mu (D), sigma (D), V (D*r),
    df (Student-t only)]`; with V = 0 it is `normal_diag`. Pixel marginals N(mu_i, sigma_i^2 + |V_i|^2)."""
    head_name, label = "normal_lowrank", "Nµ,diag(Σ)+VVᵀ"
    options = {"rank": DEFAULT_RANK}
    pit_family = "normal"  # PIT recalibration through a Gaussian copula (`_EllipticalHead.joint_recalibrated`)
    joint_local_scales = True  # local recalibration scales sigma_i and V's row i by pixel i's factor: D Sigma D

    @classmethod
    def check_option(cls, name: str, value: object, event_shape: tuple[int, ...]) -> object:
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
    def natural_event_shape(self) -> tuple[int, ...]:
        return (int(np.prod(self._image_shape)),)

    @classmethod
    def component_params_size(cls, event_shape: tuple[int, ...], rank: int = DEFAULT_RANK, **options) -> int:
        d = int(np.prod(event_shape))
        return d * (rank + 2) + int(cls.student_t)

    @classmethod
    def pixel_layout(cls, event_shape: tuple[int, ...], rank: int = DEFAULT_RANK, **options) -> tuple[tuple[int, ...], int]:
        """mu and sigma per pixel, V's row (`rank` values) per pixel; df global."""
        return (1, 1, rank), int(cls.student_t)

    def component(self, params: tf.Tensor) -> tfd.Distribution:
        d = self.natural_event_shape[0]
        loc, s, v, df = _split(params, [d, d, d * self.rank, int(self.student_t)])
        factor = _unflatten(v, [d, self.rank])
        sigma, factor = self.scaled(positive(s)), self.scaled(factor)
        if self.local_scales:  # local recalibration: Sigma' = D Sigma D, D_ii = exp(h(log s_i)), s_i pixel i's scale
            d = tf.exp(self.local_log_factor(tf.sqrt(tf.square(sigma) + tf.reduce_sum(tf.square(factor), axis=-1))))
            sigma, factor = d * sigma, d[..., None] * factor
        if self.student_t:
            return MultivariateStudentTDiagPlusLowRank(self.df_from(df), loc, sigma, factor)
        return MultivariateNormalDiagPlusLowRank(loc, tf.square(sigma), factor)

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
    pit_family = "student_t"  # through a t copula (`StudentTRecalibrated` marginals)
    variance_note = "variance exists only where df > 2 (blank elsewhere)"
