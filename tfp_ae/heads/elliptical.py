"""What the elliptical heads share: scale operators (identity, diagonal, lower-triangular) built
from flat parameters, the fast `log_prob` of full (lower-triangular) scales, and `_EllipticalHead`,
the base of the vector (`tfp_ae.heads.vector`, `tfp_ae.heads.lowrank`) and matrix
(`tfp_ae.heads.matrix`) heads: normal and Student-t families whose pixel marginals are closed-form.
"""
import functools

import numpy as np
from tensorflow_probability.python.experimental import tangent_spaces

from tfp_ae._tf import tf, tfd, tfp
from tfp_ae.errors import InputError
from tfp_ae.heads.base import Head, positive
from tfp_ae.heads.recalibrated import CopulaRecalibrated

T_OPTIONS = {"min_df": 0.0}  # the Student-t heads' option: df = min_df + 1e-6 + softplus (0: the paper's)
# the full-scale vector heads' option: what the packed lower-triangular L factors (`PARAMETERIZATIONS`)
FULL_OPTIONS = {"parameterization": "scale"}
PARAMETERIZATIONS = ("scale", "precision")  # covariance L L^T (the paper's FillScaleTriL) | precision L L^T


def _tril_size(n):
    return n * (n + 1) // 2


def _scale_params_size(kind, n):
    return {"identity": 0, "diag": n, "full": _tril_size(n)}[kind]


@functools.cache
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


def _packed_gradient(d_tril, d_diag, d):
    """The gradient on the packed parameters of `_full_scale` from the gradient `d_tril` `[..., n, n]` with
    respect to L (its lower part is read) plus `d_diag` `[..., n]` on its diagonal, the diagonal chained
    through dL_ii/dp = sigmoid(p) of the raw entries `d`: gathered back to the packed layout once."""
    diag = (tf.linalg.diag_part(d_tril) + d_diag) * tf.sigmoid(d)
    # fill_triangular_inverse reads a lower-triangular matrix (it adds the mirrored upper part)
    return tfp.math.fill_triangular_inverse(tf.linalg.band_part(tf.linalg.set_diag(d_tril, diag), -1, 0))


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
        d_params = _packed_gradient(big, g_log_det[..., None] / pos, d)
        d_r = (2.0 * gq)[..., None] * w[..., 0]
        return d_params, None, None, _unbroadcast(d_r, tf.shape(r))

    return (q, log_det), grad


@tf.custom_gradient
def _precision_quadratic_log_det(params, tril, d, r):
    """(q, log det S) `[...]` for r `[..., n]` when `tril` (from `_full_scale`) is a precision factor
    P: the covariance is (P P^T)^{-1}, the scale S = P^{-T}, q = ||P^T r||^2 and log det S = -sum log P_ii
    (Dorta et al., CVPR 2018, "Structured Uncertainty Prediction Networks", Section 3: no solve, so
    no overflow when the pixels are strongly correlated, and -q/2 + log det P is concave in P).

    Differentiated on the packed `params` like `_tril_quadratic_log_det`: with u = P^T r,
    dq/dP = 2 r u^T (lower part), dq/dr = 2 P u, d log det S / dP_ii = -1 / P_ii, the diagonal
    chained through dP_ii/dp = sigmoid(p).
    """
    with tf.name_scope("precision_log_prob"):
        u = tf.linalg.matvec(tril, r, adjoint_a=True)                        # P^T r, [..., n]
        pos = tf.linalg.diag_part(tril)
        q = tf.reduce_sum(tf.square(u), axis=-1)
        log_det = -tf.reduce_sum(tf.math.log(pos), axis=-1)

    def grad(gq, g_log_det):
        with tf.name_scope("precision_log_prob_grad"):
            big = _unbroadcast((2.0 * gq)[..., None, None] * r[..., :, None] * u[..., None, :], tf.shape(tril))
            d_params = _packed_gradient(big, -g_log_det[..., None] / pos, d)
            d_r = (2.0 * gq)[..., None] * tf.linalg.matvec(tril, u)
            return d_params, None, None, _unbroadcast(d_r, tf.shape(r))

    return (q, log_det), grad


def full_scale_operator(tril: tf.Tensor, f: tf.Tensor, parameterization: str) -> tf.linalg.LinearOperator:
    """The scale operator S (covariance S S^T) of a full-scale head from L `[..., n, n]` (`_full_scale`)
    and the sigma-scaling factor f: `scale`: S = f L (the paper's); `precision`: L is a factor of the
    precision, S = f L^{-T} (`tf.linalg.LinearOperatorInversion` of (L / f)^T: samples solve, no
    inverse is formed)."""
    if parameterization == "precision":
        factor = tf.linalg.LinearOperatorLowerTriangular(tril / f, is_non_singular=True)
        return tf.linalg.LinearOperatorInversion(tf.linalg.LinearOperatorAdjoint(factor))
    return tf.linalg.LinearOperatorLowerTriangular(f * tril, is_non_singular=True)


class _FastFullScale:
    """Mixin for the full-scale heads' distributions: `log_prob` through
    `_tril_quadratic_log_det` (or `_precision_quadratic_log_det`) when the scale operator carries its
    packed parameters (`_packed`, kept on the operator because TFP rebuilds distributions from their
    parameters), else TFP's."""

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
        """(q, log det) of the scale S (`full_scale_operator`), where `_packed` = (params, L, raw
        diagonal, f, parameterization): q(r) = ||S^{-1} r||^2 computed as ||L^{-1} r / f||^2 (scale) or
        ||L^T r / f||^2 (precision), log det S = +-log det L + n log f."""
        params, tril, d, f, parameterization = self._packed
        quadratic = _precision_quadratic_log_det if parameterization == "precision" else _tril_quadratic_log_det
        q, log_det = quadratic(params, tril, d, (x - self.loc) / f)
        return q, log_det + tf.cast(tf.shape(x)[-1], x.dtype) * tf.math.log(f)


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


def _scale_operator(kind, params, n, scaled=lambda t: t):
    """An n x n scale operator from its flat parameters `[..., _scale_params_size(kind, n)]`.

    identity: I (no parameters); diag: diag(1e-6 + softplus(p)); full: `_full_scale(p)`; each
    passed through `scaled` (the head's sigma-scaling, `Head.scaled`).
    """
    if kind == "identity":
        # LinearOperatorIdentity inside a Kronecker product fails to solve in graph mode
        # (TF 2.21: UnboundLocalError in the Kronecker solve), so identity is a diagonal of ones.
        return tf.linalg.LinearOperatorDiag(scaled(tf.ones([n], params.dtype)), is_non_singular=True,
                                            is_positive_definite=True)
    if kind == "diag":
        return tf.linalg.LinearOperatorDiag(scaled(positive(params)), is_non_singular=True,
                                            is_positive_definite=True)
    return tf.linalg.LinearOperatorLowerTriangular(scaled(_full_scale(params)[0]), is_non_singular=True)


def _row_variance(op):
    """diag(S S^T) of a scale operator `S`, `[..., n]`, without forming S S^T. For a precision factor P
    (`full_scale_operator`: S = P^{-T}) the column norms of P^{-1}, one triangular solve (1.5x faster
    than densifying the operator)."""
    if isinstance(op, tf.linalg.LinearOperatorDiag):
        return tf.square(op.diag)
    if isinstance(op, tf.linalg.LinearOperatorInversion):
        factor = op.operator.operator.to_dense()  # P, inside the adjoint
        eye = tf.eye(tf.shape(factor)[-1], batch_shape=tf.shape(factor)[:-2], dtype=factor.dtype)
        return tf.reduce_sum(tf.square(tf.linalg.triangular_solve(factor, eye, lower=True)), axis=-2)
    return tf.reduce_sum(tf.square(op.to_dense()), axis=-1)


class _EllipticalHead(Head):
    """Normal or Student-t heads with a scale operator (vector and matrix heads): each pixel's
    marginal is N(mu, s^2) or, for Student-t heads, t(df, mu, s) with the same df (Kotz &
    Nadarajah 2004), where s^2 (`_squared_scale`) is the pixel's diagonal entry of the scale's
    outer product. Student-t heads take `min_df` (`T_OPTIONS`): df = min_df + 1e-6 + softplus."""
    scale = "identity"
    student_t = False
    has_location = location_output = True  # loc (the mean; the mode of a t) is the first D parameters

    @classmethod
    def check_option(cls, name, value, event_shape):
        """`min_df`: a finite number >= 0 (0: the paper's df = 1e-6 + softplus; 2: the variance exists);
        `parameterization`: one of `PARAMETERIZATIONS` (full-scale heads: what L L^T is)."""
        if name == "parameterization":
            if value not in PARAMETERIZATIONS:
                raise InputError(f"parameterization (--parameterization) must be one of {', '.join(PARAMETERIZATIONS)}; "
                                 f"got {value!r}")
            return value
        if name == "min_df":
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(value) or value < 0:
                raise InputError(f"min_df (--min-df) must be a finite number >= 0; got {value!r}")
            return float(value)
        return super().check_option(name, value, event_shape)

    def df_from(self, raw):
        """Degrees of freedom `[...]` from the raw decoder output `[..., 1]`: `min_df + 1e-6 + softplus`."""
        return self.min_df + positive(tf.squeeze(raw, -1))

    def _squared_scale(self, comp):
        """s^2 of every pixel, `[..., *natural_event_shape]`."""
        raise NotImplementedError

    def _pixel_df(self, comp):
        """df `[...]` broadcastable against the pixels `[..., *natural_event_shape]`."""
        return comp.df[(Ellipsis,) + (None,) * len(self.natural_event_shape)]

    def joint_recalibrated(self, comp):
        """A joint normal or t `comp` with PIT-recalibrated marginals, `CopulaRecalibrated` (a Gaussian or t copula),
        where the head was built with `pit_recalibration` (not in a training step, as `Head.pit_recalibrated`); else
        `comp`."""
        if not self.pit_recalibration or self._training_call:
            return comp
        return CopulaRecalibrated(comp, self.pit_recalibrated(self.marginal(comp)))

    def marginal(self, comp):
        if isinstance(comp, CopulaRecalibrated):
            return comp.marginal
        scale = tf.sqrt(self._squared_scale(comp))
        if self.student_t:
            return tfd.StudentT(self._pixel_df(comp), comp.loc, scale)
        return tfd.Normal(comp.loc, scale)

    def component_variance(self, comp):
        """s^2, or df / (df - 2) s^2 for Student-t heads, NaN where df <= 2."""
        if isinstance(comp, CopulaRecalibrated):  # the recalibrated marginals' (a t's: infinite for 1 < df <= 2)
            var = comp.variance()
            return tf.where(tf.math.is_inf(var), np.nan, var) if self.student_t else var
        var = self._squared_scale(comp)
        if self.student_t:
            df = self._pixel_df(comp)
            var = tf.where(df > 2, var * df / (df - 2), np.nan)
        return var
