"""PIT recalibration as a density: a location-scale pixel distribution F(x) = F0((x - loc) / scale) whose CDF
is composed with a piecewise-linear map R of [0, 1], G(x) = R(F(x)), so its density is g(x) = r(F(x)) f(x) with
r = R' piecewise constant (`PITRecalibrated`). R goes through the points (F0(k_j), P_j): `k_j` knots in the
standardised variable z (a fit puts them at the held-out pixels' quantiles of z at the levels `PIT_EDGES`, so
that every central interval at those levels covers what it says), `P_j` the levels; the bin between two knots
has mass `m_j = P_{j+1} - P_j` and density ratio `m_j / p_j`, `p_j = F0(k_{j+1}) - F0(k_j)` its probability
under F. This is the recalibration of the CDF of Kuleshov, Fenner & Ermon, ICML 2018 ("Accurate uncertainties
for deep learning using calibrated regression"), with their isotonic map replaced by a histogram on the
quantiles, which is a density (`tfp_ae.calibration.pit_recalibration` fits it, per group of pixel scales).

Everything is computed from z and the standardised family's log-CDF and log-survival function, so pixels far
in a tail (z of 10 or 1,000: a confident model on 8-bit images), where F(x) rounds to 0 or 1, keep their bin
and density. A Student-t pixel's standardised shape depends on its df, so its knots are stored in L = logit
F_df(z), a standard logistic variable whatever the df (`StudentTRecalibrated`). The joint heads join the
recalibrated marginals by their own copula (`CopulaRecalibrated`).
"""
from __future__ import annotations

import numpy as np
from scipy import integrate, stats

from tfp_ae._tf import tf, tfd, tfp
from tfp_ae.errors import InputError

PIT_EDGES = (0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.995)  # the levels P_j of R's inner
#   knots: the ends of the central 50, 80, 90, 95 and 99 % intervals (`tfp_ae.calibration.LEVELS`), the median
PIT_GROUPS = 32  # the pixels' scales are cut into this many groups (quantiles on the held-out images), one R each
BIG_Z = 1e4  # the outer ends of the first and last bins in z (-inf and inf, finite so that in-bin sums stay finite)
STANDARD = {"normal": (tfd.Normal, stats.norm), "logistic": (tfd.Logistic, stats.logistic)}
KNOT_FAMILY = {"normal": "normal", "logistic": "logistic", "student_t": "logistic"}  # the standardised family in
#   whose variable R's knots are stored: a Student-t pixel's are in L = logit F_df(z), a standard logistic variable
#   whatever its df (`StudentTRecalibrated`)
T_LOG_TAIL_MIN = -85.0  # log of the smallest tail probability F_df(-|z|) a Student-t pixel keeps (float32's
#   smallest normal number is 1.2e-38): |L| <= 85


def level_widths() -> np.ndarray:
    """`m_j`: the widths of the levels' bins on [0, 1] (`PIT_EDGES` with 0 and 1), `[J]` float64."""
    return np.diff(np.concatenate([[0.0], PIT_EDGES, [1.0]]))


def family_of(distribution: tfd.Distribution) -> str:
    """`normal`, `logistic` or `student_t`: the standardised family of a pixel distribution.
    Raises:
      InputError: another family."""
    if type(distribution) is tfd.StudentT:
        return "student_t"
    for name, (cls, _) in STANDARD.items():
        if type(distribution) is cls:
            return name
    raise InputError(f"PIT recalibration takes a normal, logistic or Student-t distribution, got "
                     f"{type(distribution).__name__}")


def identity_parameters(family: str) -> dict[str, np.ndarray]:
    """The parameters with which `PITRecalibrated` (`StudentTRecalibrated` for `student_t`) is its distribution
    itself: knots at F0^-1 of the levels, log ratios 0, the family's standard moments (E Z, E Z^2) = (0, var),
    float32. `student_t`: the standard logistic's (`KNOT_FAMILY`; its moments are not used)."""
    ref = STANDARD[KNOT_FAMILY[family]][1]
    return dict(knots=ref.ppf(PIT_EDGES).astype(np.float32), log_ratios=np.zeros(len(PIT_EDGES) + 1, np.float32),
                moments=np.array([0.0, ref.var()], np.float32))


def fitted_parameters(family: str, z: np.ndarray) -> dict[str, np.ndarray]:
    """R fitted to standardised residuals `z` `[N]` (z = (x - loc) / scale of held-out pixels; float64): knots at
    their quantiles at `PIT_EDGES` (raised where needed to increase strictly), each bin's log density ratio
    `log(m_j / p_j)` and the moments (E Z, E Z^2) of the recalibrated standardised variable, sum_j m_j E[Z^k |
    bin j] (SciPy's `quad` of z^k f(z) / p_j, the ratio computed in logs, around where the bin's mass is),
    float32 as the head stores them.
    `student_t`: `z` are the pixels' L = logit F_df(z) and the fit is the standard logistic's (`KNOT_FAMILY`).
    With no pixels: `identity_parameters`."""
    family = KNOT_FAMILY[family]
    if len(z) == 0:
        return identity_parameters(family)
    ref = STANDARD[family][1]
    knots = np.quantile(np.asarray(z, np.float64), PIT_EDGES)
    for j in range(1, len(knots)):  # strictly increasing, and still so in float32
        knots[j] = max(knots[j], knots[j - 1] + 1e-4 * (1 + abs(knots[j - 1])))
    knots = knots.astype(np.float32).astype(np.float64)
    lo, hi = np.concatenate([[-np.inf], knots]), np.concatenate([knots, [np.inf]])
    # log p_j, the bin's probability under F0, from whichever tail keeps it exact
    log_p = np.array([ref.logsf(a) + np.log(-np.expm1(ref.logsf(b) - ref.logsf(a))) if a >= 0 else
                      ref.logcdf(b) + np.log(-np.expm1(ref.logcdf(a) - ref.logcdf(b))) for a, b in zip(lo, hi, strict=True)])
    m = level_widths()
    def moment(k, a, b, lp):
        """E[Z^k | a < Z < b] = int z^k exp(log f(z) - log p) dz around the bin's point c nearest the mode (0), in
        units of the conditional spread there (a normal's 1 / |c| in its tails): z = c + s w, |s| <= 60."""
        c = min(max(0.0, a), b)
        w = 1.0 / max(1.0, abs(c)) if family == "normal" else 1.0
        lo_s, hi_s = max((a - c) / w, -60.0), min((b - c) / w, 60.0)
        return integrate.quad(lambda t: (c + t * w) ** k * np.exp(ref.logpdf(c + t * w) - lp) * w, lo_s, hi_s,
                              limit=200)[0]
    first = np.array([moment(1, a, b, lp) for a, b, lp in zip(lo, hi, log_p, strict=True)])
    second = np.array([moment(2, a, b, lp) for a, b, lp in zip(lo, hi, log_p, strict=True)])
    return dict(knots=knots.astype(np.float32), log_ratios=(np.log(m) - log_p).astype(np.float32),
                moments=np.array([m @ first, m @ second], np.float32))


class _RecalibratedPixels(tfd.Distribution):
    """What the recalibrated pixel distributions share: `distribution` F (set as `_base` by the subclass), its
    batch shape, a scalar event, and samples that are `quantile`s of stateless uniforms
    (`tfp.random.sanitize_seed`)."""

    @property
    def distribution(self) -> tfd.Distribution:
        """F, the distribution before recalibration."""
        return self._base

    def _batch_shape(self):
        return self._base.batch_shape

    def _batch_shape_tensor(self):
        return self._base.batch_shape_tensor()

    def _event_shape(self):
        return tf.TensorShape([])

    def _event_shape_tensor(self):
        return tf.constant([], tf.int32)

    def _sample_n(self, n, seed=None):
        shape = tf.concat([[n], self._base.batch_shape_tensor()], 0)
        # in (0, 1): a uniform of exactly 0 would be the quantile -inf
        q = tf.random.stateless_uniform(shape, tfp.random.sanitize_seed(seed), minval=2.0 ** -24, dtype=self.dtype)
        return self._quantile(q)


class PITRecalibrated(_RecalibratedPixels):
    """A location-scale distribution (`tfd.Normal` or `tfd.Logistic`, batch `[...]`) recalibrated through its
    CDF: G(x) = R(F(x)) (module docstring), scalar event.

    Args:
      distribution: F, with `loc` and `scale`.
      knots: `[..., J - 1]` the inner knots k_j in z = (x - loc) / scale, strictly increasing.
      log_ratios: `[..., J]` log(m_j / p_j), each bin's log density ratio (nats).
      moments: `[..., 2]` (E Z, E Z^2) of the recalibrated standardised variable.
      The last three broadcast against the batch (a head gathers them per pixel by its scale's group).

    With z in bin j = [a, b] (the ends -`BIG_Z`, k_1, ..., k_{J-1}, `BIG_Z`), P_j the level of its lower knot and
    m_j = P_{j+1} - P_j:

    - `log_prob(x) = log f(x) + log_ratios_j`;
    - `cdf(x) = P_j + m_j t`, t = (F0(z) - F0(a)) / (F0(b) - F0(a)) from log-CDFs (a < 0) or log-survival
      functions (a >= 0), clipped to [0, 1];
    - `quantile(q)`: that t inverted in the bin where P_j <= q < P_{j+1} (`from_standard` of F0^-1(q));
    - `mean = loc + scale E Z`, `variance = scale^2 (E Z^2 - (E Z)^2)`;
    - samples: `quantile` of stateless uniforms (`tfp.random.sanitize_seed`).
    Raises:
      InputError: a family other than normal or logistic (`family_of`).
    """

    def __init__(self, distribution: tfd.Distribution, knots: tf.Tensor, log_ratios: tf.Tensor, moments: tf.Tensor,
                 validate_args: bool = False, allow_nan_stats: bool = True, name: str = "PITRecalibrated"):
        parameters = dict(locals())
        self._family = family_of(distribution)
        if self._family not in STANDARD:
            raise InputError(f"PITRecalibrated takes a normal or logistic distribution, got "
                             f"{type(distribution).__name__} (a Student-t: StudentTRecalibrated)")
        self._base = distribution
        dtype = distribution.dtype
        self._knots = tf.convert_to_tensor(knots, dtype)
        self._log_ratios = tf.convert_to_tensor(log_ratios, dtype)
        self._moments = tf.convert_to_tensor(moments, dtype)
        self._standard = STANDARD[self._family][0](tf.zeros([], dtype), tf.ones([], dtype))
        super().__init__(dtype=dtype, reparameterization_type=tfd.FULLY_REPARAMETERIZED, validate_args=validate_args,
                         allow_nan_stats=allow_nan_stats, parameters=parameters, name=name)

    def _broadcast(self, t, like):
        """`t` `[..., n]` broadcast to the batch of `like` against the distribution's, `[..., n]`."""
        shape = tf.broadcast_dynamic_shape(tf.shape(like), self._base.batch_shape_tensor())
        return tf.broadcast_to(t, tf.concat([shape, tf.shape(t)[-1:]], 0))

    def _ends(self, like):
        """Each bin's ends in z, `([..., J], [..., J])`, broadcast like `like`."""
        k = self._broadcast(self._knots, like)
        big = tf.fill(tf.shape(k[..., :1]), tf.constant(BIG_Z, self.dtype))
        return tf.concat([-big, k], -1), tf.concat([k, big], -1)

    @staticmethod
    def _levels(dtype):
        return tf.constant(np.concatenate([[0.0], PIT_EDGES]), dtype), tf.constant(level_widths(), dtype)

    def _bin(self, z, lo):
        """One-hot of z's bin `[..., J]`: the inner knots at or below z, counted (`lo[..., 1:]`)."""
        above = tf.cast(z[..., None] >= lo[..., 1:], self.dtype)
        ones = tf.ones_like(above[..., :1])
        return tf.concat([ones, above], -1) - tf.concat([above, tf.zeros_like(ones)], -1)

    def _z(self, x):
        return (x - self._base.loc) / self._base.scale

    def knot_coordinate(self, x: tf.Tensor) -> tf.Tensor:
        """The variable in which R's knots live, `[...]`: z = (x - loc) / scale (`fitted_parameters` takes it)."""
        return self._z(x)

    def _log_prob(self, x):
        z = self._z(x)
        lo, _ = self._ends(z)
        return self._base.log_prob(x) + tf.reduce_sum(self._bin(z, lo) * self._broadcast(self._log_ratios, z), -1)

    def _cdf(self, x):
        z = self._z(x)
        lo, hi = self._ends(z)
        one_hot = self._bin(z, lo)
        a, b = tf.reduce_sum(one_hot * lo, -1), tf.reduce_sum(one_hot * hi, -1)
        s = self._standard
        upper = (tf.math.expm1(s.log_survival_function(z) - s.log_survival_function(a))
                 / tf.math.expm1(s.log_survival_function(b) - s.log_survival_function(a)))
        lower = (tf.exp(s.log_cdf(z) - s.log_cdf(b)) * tf.math.expm1(s.log_cdf(a) - s.log_cdf(z))
                 / tf.math.expm1(s.log_cdf(a) - s.log_cdf(b)))
        t = tf.clip_by_value(tf.where(a >= 0, upper, lower), 0.0, 1.0)
        starts, widths = self._levels(self.dtype)
        return tf.reduce_sum(one_hot * (starts + widths * t[..., None]), -1)

    def _quantile(self, q):
        """`loc + scale G0^-1(q)`, G0^-1(q) = `from_standard(F0^-1(q))` (q's bin and its fraction within it through
        log-CDFs, so a q of 1e-14 keeps its tail)."""
        q = tf.convert_to_tensor(q, self.dtype)
        q = q + tf.zeros(tf.broadcast_dynamic_shape(tf.shape(q), self._base.batch_shape_tensor()), self.dtype)
        # F0 symmetric: F0^-1(q) = -F0^-1(1 - q)
        z = tf.where(q < 0.5, self._standard_quantile(tf.math.log(q)), -self._standard_quantile(tf.math.log1p(-q)))
        return self._base.loc + self._base.scale * self.from_standard(z)

    def _standard_quantile(self, log_p):
        """F0^-1(exp(log_p)), finite where exp(log_p) underflows float32 (a bin far in a tail): a logistic's
        log p - log(1 - p); a normal's `ndtri` above log p = -80, below it three Newton steps on its log-CDF from the
        asymptote z = -sqrt(-2 log p - log(-2 log p) - log 2 pi) (the leading terms of the tail expansion)."""
        if self._family == "logistic":
            return log_p - tf.math.log(-tf.math.expm1(tf.minimum(log_p, -1e-7)))
        lp = tf.minimum(log_p, -80.0)
        z = -tf.sqrt(-2 * lp - tf.math.log(-2 * lp) - np.log(2 * np.pi))
        for _ in range(3):
            log_cdf = self._standard.log_cdf(z)
            z = z - (log_cdf - lp) * tf.exp(log_cdf + 0.5 * tf.square(z) + 0.5 * np.log(2 * np.pi))
        return tf.where(log_p < -80.0, z, self._standard.quantile(tf.exp(tf.maximum(log_p, -80.0))))

    def _level_ends(self, like):
        """Each level bin's ends in z under F0, `([..., J], [..., J])`: F0^-1 of the levels (-`BIG_Z`, `BIG_Z` at
        the ends), so that F0 gives the bin between them the mass m_j; broadcast like `like`."""
        inner = STANDARD[self._family][1].ppf(PIT_EDGES)
        lo = tf.constant(np.concatenate([[-BIG_Z], inner]), self.dtype) + tf.zeros_like(like)[..., None]
        hi = tf.constant(np.concatenate([inner, [BIG_Z]]), self.dtype) + tf.zeros_like(like)[..., None]
        return lo, hi

    def _transfer(self, x, src, dst):
        """`x` `[...]` in the bins `src` (`(lo, hi)`, each `[..., J]`) sent to the same bin of `dst` so that the
        fraction of F0's probability below it within the bin is kept: F0(y) = F0(a') + t (F0(b') - F0(a')) with
        t = (F0(x) - F0(a)) / (F0(b) - F0(a)). Computed from log-CDFs (in bins below the median level; above it
        the same on -x and the reflected bins, F0 being symmetric), so a bin in a far tail keeps t and y finite.
        Returns `(y, one_hot)`, `one_hot` `[..., J]` the bin."""
        one_hot = self._bin(x, src[0])
        a, b, a2, b2 = (tf.reduce_sum(one_hot * e, -1) for e in (*src, *dst))
        upper = tf.reduce_sum(one_hot[..., PIT_EDGES.index(0.5) + 1:], -1) > 0
        # above the median the reflected problem (-x in the bin (-b, -a) sent to (-b2, -a2)), then negated: each
        # pixel's own side only, and each log-CDF once (the normal's log_ndtr is most of the cost)
        sign = tf.where(upper, -tf.ones_like(x), tf.ones_like(x))
        xs, lo, hi = sign * x, tf.where(upper, -b, a), tf.where(upper, -a, b)
        lo2, hi2 = tf.where(upper, -b2, a2), tf.where(upper, -a2, b2)
        log_x, log_lo, log_hi, log_lo2, log_hi2 = (self._standard.log_cdf(v) for v in
                                                   (tf.clip_by_value(xs, lo, hi), lo, hi, lo2, hi2))
        # float32's log-CDF is not monotone within an ulp or two (a z one ulp above a knot had a log-CDF below the
        # knot's, log(-expm1(+)) was NaN and so was the image's log-density): differences capped at 0, so such a z
        # is at its bin's end (t = 0); a bin of no width in float32 takes its middle
        gap = tf.minimum(log_lo - log_hi, 0.0)
        log_t = (log_x - log_hi + tf.math.log(-tf.math.expm1(tf.minimum(log_lo - log_x, 0.0)))
                 - tf.math.log(-tf.math.expm1(gap)))
        log_t = tf.where(gap < 0, tf.minimum(log_t, 0.0), np.log(0.5))
        log_mass = log_hi2 + tf.math.log(-tf.math.expm1(tf.minimum(log_lo2 - log_hi2, 0.0)))
        y = sign * self._standard_quantile(tf.math.reduce_logsumexp(tf.stack([log_lo2, log_t + log_mass]), 0))
        return tf.clip_by_value(y, a2, b2), one_hot

    def from_standard(self, z: tf.Tensor) -> tf.Tensor:
        """`w = G0^-1(F0(z))` `[...]`: a standardised draw z of F0 (z = (x - loc) / scale) sent to the recalibrated
        standardised variable (`CopulaRecalibrated`'s samples)."""
        return self._transfer(z, self._level_ends(z), self._ends(z))[0]

    def to_standard(self, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The inverse of `from_standard`, `z = F0^-1(G0(w))` `[...]`, and `log dz/dw = log r_j + log f0(w) - log
        f0(z)` `[...]` (nats; g0 = r f0), for `CopulaRecalibrated.log_prob`."""
        z, one_hot = self._transfer(w, self._ends(w), self._level_ends(w))
        log_r = tf.reduce_sum(one_hot * self._broadcast(self._log_ratios, w), -1)
        return z, log_r + self._standard.log_prob(w) - self._standard.log_prob(z)

    def _mean(self):
        m = self._broadcast(self._moments, self._base.loc)
        return self._base.loc + self._base.scale * m[..., 0]

    def _variance(self):
        m = self._broadcast(self._moments, self._base.loc)
        return tf.square(self._base.scale) * (m[..., 1] - tf.square(m[..., 0])) + tf.zeros_like(self._base.loc)

    def _stddev(self):
        return tf.sqrt(self._variance())


class StudentTRecalibrated(_RecalibratedPixels):
    """A Student-t pixel distribution F = t(df, loc, scale) (`tfd.StudentT`, batch `[...]`) recalibrated through
    its CDF, G(x) = R(F(x)), R the piecewise-linear map of `PITRecalibrated` (module docstring), scalar event.

    A t pixel's shape depends on its df (one per image in the joint t heads), so R's knots cannot be stored in z
    as for a normal. They are stored in L = logit F_df(z), which is a standard logistic variable whatever the df:
    R acting on F is the logistic `PITRecalibrated` acting on L (same levels, same bins, same density ratios
    r_j = m_j / p_j, p_j the bin's probability, which is df-free), and this class carries its results between z
    and L = logit F_df(z) (`tfd.StudentT`'s CDF and quantile from the lower tail F_df(-|z|), kept >=
    exp(`T_LOG_TAIL_MIN`), so |L| <= 85 and both tails are exact to float32):

    - `log_prob(x) = log f(x) + log r_j`, j the bin of L;
    - `cdf(x)`: the logistic map's cdf at L; `quantile(q) = loc + scale F_df^-1(sigmoid(L_q))`, L_q its quantile;
    - `mean = loc + scale E W`, `variance = scale^2 (E W^2 - (E W)^2)`, `E W^k = sum_j r_j int_bin z^k f_df(z) dz`
      in closed form (by parts: `int z f = -(df + z^2) f / (df - 1)`, `int z^2 f = (df F - z (df + z^2) f) /
      (df - 2)`); as the t's own where they do not exist (the mean NaN for df <= 1; the variance infinite for
      1 < df <= 2, NaN for df <= 1);
    - `mode`: each pixel's argmax of g = r_j f, among the points of each bin nearest 0 (loc for the identity);
    - samples: `quantile` of stateless uniforms.

    Args:
      distribution: F, a `tfd.StudentT`.
      knots: `[..., J - 1]` the inner knots in L, strictly increasing.
      log_ratios: `[..., J]` log r_j (nats).
      moments: `[..., 2]` stored with the knots (the logistic's); not used (the t's depend on df).
      knot_ends: optional `[..., J - 1]`, the knots in z, F_df^-1(sigmoid(knots)) (`student_t_knot_ends`), where
        the caller has them cheaper (a head: once per image and group of scales, not per pixel); else computed.
    Raises:
      InputError: `distribution` is not a `tfd.StudentT`.
    """

    def __init__(self, distribution: tfd.Distribution, knots: tf.Tensor, log_ratios: tf.Tensor, moments: tf.Tensor,
                 knot_ends: tf.Tensor | None = None, validate_args: bool = False, allow_nan_stats: bool = True,
                 name: str = "StudentTRecalibrated"):
        parameters = dict(locals())
        if family_of(distribution) != "student_t":
            raise InputError(f"StudentTRecalibrated takes a tfd.StudentT, got {type(distribution).__name__}")
        self._base = distribution
        dtype = distribution.dtype
        zeros = tf.zeros(tf.broadcast_dynamic_shape(tf.shape(distribution.loc), distribution.batch_shape_tensor()),
                         dtype)
        self._standard = tfd.StudentT(distribution.df + zeros, zeros, tf.ones_like(zeros))
        self._logit = PITRecalibrated(tfd.Logistic(zeros, tf.ones_like(zeros)), knots, log_ratios, moments)
        self._knot_ends = None if knot_ends is None else tf.convert_to_tensor(knot_ends, dtype)
        super().__init__(dtype=dtype, reparameterization_type=tfd.FULLY_REPARAMETERIZED, validate_args=validate_args,
                         allow_nan_stats=allow_nan_stats, parameters=parameters, name=name)

    def _to_logit(self, z):
        """L = logit F_df(z) `[...]`, from the lower tail F_df(-|z|) (clipped at exp(`T_LOG_TAIL_MIN`))."""
        tail = tf.maximum(self._standard.cdf(-tf.abs(z)), tf.exp(tf.constant(T_LOG_TAIL_MIN, self.dtype)))
        lower = tf.math.log(tail) - tf.math.log1p(-tail)
        return tf.where(z > 0, -lower, lower)

    def _from_logit(self, logit):
        """z = F_df^-1(sigmoid(L)) `[...]` (`student_t_knot_ends`)."""
        return student_t_knot_ends(self._standard.df, logit)

    def knot_coordinate(self, x: tf.Tensor) -> tf.Tensor:
        """The variable in which R's knots live, `[...]`: L = logit F_df((x - loc) / scale)."""
        return self._to_logit((x - self._base.loc) / self._base.scale)

    def _log_ratio(self, logit):
        """log r_j `[...]` of the bin of L."""
        return self._logit.log_prob(logit) - self._logit.distribution.log_prob(logit)

    def _log_prob(self, x):
        return self._base.log_prob(x) + self._log_ratio(self.knot_coordinate(x))

    def _cdf(self, x):
        return self._logit.cdf(self.knot_coordinate(x))

    def _quantile(self, q):
        return self._base.loc + self._base.scale * self._from_logit(self._logit.quantile(q))

    def from_standard(self, z: tf.Tensor) -> tf.Tensor:
        """`w = G0^-1(F0(z))` `[...]`: a standardised draw of t(df) sent to the recalibrated variable."""
        return self._from_logit(self._logit.from_standard(self._to_logit(z)))

    def to_standard(self, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The inverse of `from_standard`, `z = F0^-1(G0(w))` `[...]`, and `log dz/dw = log r_j + log f0(w) -
        log f0(z)` `[...]` (nats), for `CopulaRecalibrated.log_prob`."""
        logit = self._to_logit(w)
        z = self._from_logit(self._logit.to_standard(logit)[0])
        return z, self._log_ratio(logit) + self._standard.log_prob(w) - self._standard.log_prob(z)

    def _bins(self):
        """Each bin's inner ends in z `[..., J - 1]` (F_df^-1 of the knots), the knots in L `[..., J - 1]` and the
        bins' ratios r_j `[..., J]`."""
        knots = self._logit._broadcast(self._logit._knots, self._standard.df)
        ratios = tf.exp(self._logit._broadcast(self._logit._log_ratios, self._standard.df))
        ends = student_t_knot_ends(self._standard.df[..., None], knots) if self._knot_ends is None else \
            self._knot_ends + tf.zeros_like(knots)
        return ends, knots, ratios

    def _per_knot(self):
        """t(df, 0, 1) with df `[..., 1]`, against `[..., J - 1]` knots."""
        return tfd.StudentT(self._standard.df[..., None], tf.zeros([], self.dtype), tf.ones([], self.dtype))

    def _moments(self):
        """(E W, E W^2) `[...]` of the recalibrated standardised variable: `sum_j r_j int_bin z^k f_df(z) dz`
        (class docstring). The first moment's antiderivative is even (0 at both infinities); the second's is
        taken from the lower tail, T2(z) = int_-inf^z s^2 f = (df F(z) - z (df + z^2) f(z)) / (df - 2) for z <= 0,
        the part of a bin above 0 by symmetry, so a bin far in the upper tail keeps its precision."""
        z, knots, r = self._bins()
        df = self._standard.df[..., None]
        f = tf.exp(self._per_knot().log_prob(z))  # at the knots
        zero = tf.zeros_like(z[..., :1])
        first = tf.concat([zero, -(df + tf.square(z)) * f / (df - 1), zero], -1)  # at the ends -inf, z_j, inf
        lower = tf.concat([zero, (df * tf.math.sigmoid(-tf.abs(knots)) + tf.abs(z) * (df + tf.square(z)) * f)
                           / (df - 2), zero], -1)  # T2(-|e|) at each end e
        big = tf.fill(tf.shape(zero), tf.constant(np.inf, self.dtype))
        ends = tf.concat([-big, z, big], -1)
        half = df / (2 * (df - 2))  # T2(0)
        below = tf.where(ends < 0, lower, half)  # T2(min(e, 0))
        above = tf.where(ends > 0, lower, half)  # T2(-max(e, 0)) = int_max(e, 0)^inf s^2 f
        second = below[..., 1:] - below[..., :-1] + above[..., :-1] - above[..., 1:]
        return tf.reduce_sum(r * (first[..., 1:] - first[..., :-1]), -1), tf.reduce_sum(r * second, -1)

    def _mean(self):
        first, _ = self._moments()
        nan = tf.constant(np.nan, self.dtype)
        return tf.where(self._standard.df > 1, self._base.loc + self._base.scale * first, nan)

    def _variance(self):
        first, second = self._moments()
        df = self._standard.df
        beyond = tf.where(df > 1, tf.constant(np.inf, self.dtype), tf.constant(np.nan, self.dtype))  # as tfd.StudentT
        return tf.where(df > 2, tf.square(self._base.scale) * (second - tf.square(first)), beyond)

    def _stddev(self):
        return tf.sqrt(self._variance())

    def _mode(self):
        z, _, r = self._bins()
        big = tf.fill(tf.shape(z[..., :1]), tf.constant(np.inf, self.dtype))
        nearest = tf.clip_by_value(tf.zeros_like(r), tf.concat([-big, z], -1), tf.concat([z, big], -1))
        df = self._standard.df[..., None]
        score = tf.math.log(r) - (df + 1) / 2 * tf.math.log1p(tf.square(nearest) / df)  # log g up to a constant
        best = tf.reduce_sum(tf.one_hot(tf.argmax(score, -1), tf.shape(score)[-1], dtype=self.dtype) * nearest, -1)
        return self._base.loc + self._base.scale * best


def student_t_knot_ends(df: tf.Tensor, logit: tf.Tensor) -> tf.Tensor:
    """z = F_df^-1(sigmoid(L)) of standard t's with `df` at L = `logit` (broadcast against each other), from the
    lower tail's quantile (TFP's `StudentT.quantile`), the upper by symmetry."""
    standard = tfd.StudentT(df, tf.zeros([], logit.dtype), tf.ones([], logit.dtype))
    lower = standard.quantile(tf.math.sigmoid(-tf.abs(logit)))
    return tf.where(logit > 0, -lower, lower)


def recalibrated_pixels(pixels: tfd.Distribution, knots: tf.Tensor, log_ratios: tf.Tensor, moments: tf.Tensor,
                        knot_ends: tf.Tensor | None = None) -> tfd.Distribution:
    """`pixels` (batch `[...]`) recalibrated through their CDFs: `StudentTRecalibrated` for a `tfd.StudentT`
    (`knot_ends` as its), else `PITRecalibrated` (normal, logistic); the parameters as theirs."""
    if family_of(pixels) == "student_t":
        return StudentTRecalibrated(pixels, knots, log_ratios, moments, knot_ends=knot_ends)
    return PITRecalibrated(pixels, knots, log_ratios, moments)


class CopulaRecalibrated(tfd.Distribution):
    """A joint normal or Student-t over the pixels (`distribution`, event `[...E]`: a vector or a matrix) whose
    every marginal F_i is replaced by its PIT recalibration G_i = R_i∘F_i (`marginal`, a `PITRecalibrated` or
    `StudentTRecalibrated` of batch `[..., ...E]`), the dependence kept: Y_i = G_i^-1(F_i(X_i)), X ~
    `distribution`, a Gaussian (or t) copula with recalibrated marginals (Sklar 1959; Nelsen 2006, "An
    Introduction to Copulas", 2.3; the t copula: Demarta & McNeil 2005, "The t copula and related copulas").
    Y_i's CDF is G_i, so every per-pixel readout (mean, variance, intervals, PIT) is the marginal's.

    `log_prob(y) = log p_X(x) + sum_i log dx_i/dy_i`, `x_i = loc_i + s_i F0^-1(G0_i(w_i))`,
    `w_i = (y_i - loc_i) / s_i` (`PITRecalibrated.to_standard`); with R the identity it is `distribution`'s.
    Samples: `distribution`'s sent through `PITRecalibrated.from_standard`.

    Args:
      distribution: the joint normal or t X, with `loc` `[..., ...E]`.
      marginal: the recalibrated marginals of X (N(loc_i, s_i), or t(df, loc_i, s_i) with X's df), batch
        `[..., ...E]` (`recalibrated_pixels`).
    """

    def __init__(self, distribution: tfd.Distribution, marginal: tfd.Distribution, validate_args: bool = False,
                 allow_nan_stats: bool = True, name: str = "CopulaRecalibrated"):
        parameters = dict(locals())
        self._joint = distribution
        self._marginal = marginal
        super().__init__(dtype=distribution.dtype, reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                         validate_args=validate_args, allow_nan_stats=allow_nan_stats, parameters=parameters,
                         name=name)

    @property
    def distribution(self) -> tfd.Distribution:
        """X, the joint distribution before recalibration."""
        return self._joint

    @property
    def marginal(self) -> tfd.Distribution:
        """The recalibrated marginals G_i, batch `[..., ...E]`."""
        return self._marginal

    def _batch_shape(self):
        return self._joint.batch_shape

    def _batch_shape_tensor(self):
        return self._joint.batch_shape_tensor()

    def _event_shape(self):
        return self._joint.event_shape

    def _event_shape_tensor(self):
        return self._joint.event_shape_tensor()

    def _standardised(self, y):
        base = self._marginal.distribution
        return (y - base.loc) / base.scale, base

    def _log_prob(self, y):
        w, base = self._standardised(y)
        z, log_dz = self._marginal.to_standard(w)
        event_axes = tf.range(-tf.size(self._joint.event_shape_tensor()), 0)
        return self._joint.log_prob(base.loc + base.scale * z) + tf.reduce_sum(log_dz, event_axes)

    def _sample_n(self, n, seed=None):
        z, base = self._standardised(self._joint.sample(n, seed=seed))
        return base.loc + base.scale * self._marginal.from_standard(z)

    def _mean(self):
        return self._marginal.mean()

    def _mode(self):
        """Each pixel's marginal mode (the Student-t heads' point estimate; the joint's mode, loc, for R the
        identity)."""
        return self._marginal.mode()

    def _variance(self):
        return self._marginal.variance()

    def _stddev(self):
        return self._marginal.stddev()
