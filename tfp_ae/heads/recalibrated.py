"""PIT recalibration as a density: a location-scale pixel distribution F whose CDF is composed with a
piecewise-linear map R of [0, 1], G(x) = R(F(x)), so its density is g(x) = r(F(x)) f(x) with r = R' piecewise
constant (`PITRecalibrated`). A model that is miscalibrated in shape (a pixel's PIT values are not uniform)
is then fixed by a histogram of its held-out PIT values (`tfp_ae.calibration.fit_pit_recalibration`) and
stays a normalised density: `log_prob` gains `log r(F(x))`, the intervals are `F^-1(R^-1(q))`, the mean and
variance are closed forms of R's bin masses. This is the recalibration of the CDF of Kuleshov, Fenner &
Ermon, ICML 2018 ("Accurate uncertainties for deep learning using calibrated regression"), with their
isotonic map replaced by the maximum-likelihood histogram of the PIT on fixed bins, so that the result is
a density whose held-out likelihood cannot fall below the model's in-sample (the histogram is the
likelihood's maximiser among densities constant on the bins, the identity among them).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import stats

from tfp_ae._tf import tf, tfd, tfp
from tfp_ae.errors import InputError

PIT_EDGES = (0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.995)  # inner edges of R's bins: the
#   ends of the central 50, 80, 90, 95 and 99 % intervals (`tfp_ae.calibration.LEVELS`) and the median
PIT_GROUPS = 8  # the pixels' scales are cut into this many groups (octiles on the held-out images), one R each
STANDARD = {"normal": stats.norm, "logistic": stats.logistic}  # families with a fixed standardised shape


def bin_widths() -> np.ndarray:
    """The widths of R's bins on [0, 1] (`PIT_EDGES` with 0 and 1), `[J]` float64: R's masses when it is the
    identity."""
    return np.diff(np.concatenate([[0.0], PIT_EDGES, [1.0]]))


@functools.cache
def bin_moments(family: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the standardised `family` (`STANDARD`) with CDF F0: the bins' ends in z, `[J + 1]` (F0^-1 of 0,
    `PIT_EDGES`, 1: -inf and inf at the ends), and each bin's conditional first and second moments
    E[Z | bin] and E[Z^2 | bin], `[J]` each (SciPy's `expect` over the bin, divided by its probability)."""
    dist = STANDARD[family]
    z = dist.ppf(np.concatenate([[0.0], PIT_EDGES, [1.0]]))
    w = bin_widths()
    first = np.array([dist.expect(lambda t: t, lb=a, ub=b) for a, b in zip(z[:-1], z[1:], strict=True)]) / w
    second = np.array([dist.expect(lambda t: t * t, lb=a, ub=b) for a, b in zip(z[:-1], z[1:], strict=True)]) / w
    return z, first, second


class PITRecalibrated(tfd.Distribution):
    """A location-scale distribution (`tfd.Normal` or `tfd.Logistic`, any batch) recalibrated through its
    CDF: G(x) = R(F(x)), R piecewise linear on the bins of [0, 1] with ends `PIT_EDGES` and bin masses
    `masses` (`[..., J]`, broadcast against the batch, each row positive and summing to 1). With
    `m_j` the masses, `p_j` the bins' left ends, `w_j` their widths:

    - `cdf(x) = sum_j m_j clip((F(x) - p_j) / w_j, 0, 1)`;
    - `log_prob(x) = log f(x) + log(m_j / w_j)` for the bin j of F(x) (chosen on z = (x - loc) / scale, so
      that a pixel far in a tail, where F(x) rounds to 0 or 1, keeps its bin);
    - `quantile(q) = F^-1(sum_j w_j clip((q - M_j) / m_j, 0, 1))`, `M_j = m_0 + ... + m_{j-1}`;
    - `mean = loc + scale sum_j m_j E[Z | bin j]`, `variance = scale^2 (sum_j m_j E[Z^2 | bin j] - (sum_j
      m_j E[Z | bin j])^2)` (`bin_moments`: exact, Z the standardised family);
    - samples: `quantile` of stateless uniforms.

    With masses equal to the widths (`bin_widths`) it is the distribution itself.
    Raises:
      InputError: a family other than normal or logistic.
    """

    def __init__(self, distribution: tfd.Distribution, masses: tf.Tensor, validate_args: bool = False,
                 allow_nan_stats: bool = True, name: str = "PITRecalibrated"):
        parameters = dict(locals())
        family = {tfd.Normal: "normal", tfd.Logistic: "logistic"}.get(type(distribution))
        if family is None:
            raise InputError(f"PIT recalibration takes a normal or logistic distribution, got {type(distribution).__name__}")
        self._family = family
        self._base = distribution
        self._masses = tf.convert_to_tensor(masses, distribution.dtype)
        super().__init__(dtype=distribution.dtype, reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                         validate_args=validate_args, allow_nan_stats=allow_nan_stats, parameters=parameters, name=name)

    @property
    def distribution(self) -> tfd.Distribution:
        """The distribution before recalibration (F)."""
        return self._base

    @property
    def masses(self) -> tf.Tensor:
        """R's bin masses `[..., J]`."""
        return self._masses

    def _constants(self):
        z, first, second = bin_moments(self._family)
        c = lambda v: tf.constant(v, self.dtype)  # noqa: E731
        p = np.concatenate([[0.0], PIT_EDGES])
        return c(z), c(first), c(second), c(p), c(bin_widths())

    def _batch_shape(self):
        return self._base.batch_shape

    def _batch_shape_tensor(self):
        return self._base.batch_shape_tensor()

    def _event_shape(self):
        return tf.TensorShape([])

    def _event_shape_tensor(self):
        return tf.constant([], tf.int32)

    def _masses_like(self, x):
        """The masses broadcast to the batch of `x` against the distribution's, `[..., J]`."""
        shape = tf.broadcast_dynamic_shape(tf.shape(x), self._base.batch_shape_tensor())
        return tf.broadcast_to(self._masses, tf.concat([shape, [len(PIT_EDGES) + 1]], 0))

    def _log_prob(self, x):
        z_ends, _, _, _, w = self._constants()
        z = (x - self._base.loc) / self._base.scale
        above = tf.cast(z[..., None] >= z_ends[1:-1], self.dtype)  # [..., J - 1]
        ones = tf.ones_like(z)[..., None]
        in_bin = tf.concat([ones, above], -1) - tf.concat([above, tf.zeros_like(ones)], -1)  # one-hot of z's bin
        density = tf.reduce_sum(in_bin * self._masses_like(x) / w, -1)
        return self._base.log_prob(x) + tf.math.log(density)

    def _cdf(self, x):
        _, _, _, p, w = self._constants()
        u = self._base.cdf(x)[..., None]
        return tf.reduce_sum(self._masses_like(x) * tf.clip_by_value((u - p) / w, 0.0, 1.0), -1)

    def _quantile(self, q):
        _, _, _, p, w = self._constants()
        q = tf.convert_to_tensor(q, self.dtype)
        m = self._masses_like(q)
        ends = tf.math.cumsum(m, axis=-1, exclusive=True)
        v = tf.reduce_sum(w * tf.clip_by_value((q[..., None] - ends) / m, 0.0, 1.0), -1)
        return self._base.quantile(tf.clip_by_value(v, 0.0, 1.0))

    def _moments(self):
        _, first, second, _, _ = self._constants()
        m = self._masses
        return tf.reduce_sum(m * first, -1), tf.reduce_sum(m * second, -1)

    def _mean(self):
        mu, _ = self._moments()
        loc, scale = self._base.loc, self._base.scale
        return tf.broadcast_to(loc + scale * mu, self._base.batch_shape_tensor())

    def _variance(self):
        mu, s2 = self._moments()
        return tf.broadcast_to(tf.square(self._base.scale) * (s2 - tf.square(mu)), self._base.batch_shape_tensor())

    def _stddev(self):
        return tf.sqrt(self._variance())

    def _sample_n(self, n, seed=None):
        shape = tf.concat([[n], self._base.batch_shape_tensor()], 0)
        u = tf.random.stateless_uniform(shape, tfp.random.sanitize_seed(seed), dtype=self.dtype)
        return self._quantile(u)
