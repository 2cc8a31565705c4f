"""Matrix heads: matrix normal and matrix-t on the H x W rows and columns of a grayscale image, with
identity, diagonal or lower-triangular row and column scales (Ciobanu, Section 3; Dawid 1981;
Gupta & Nagar 2000). `log_prob` works on the small row and column factors, never on the
HW x HW Kronecker operator."""
from __future__ import annotations

import numpy as np

from tfp_ae._tf import tf, tfd, tfp
from tfp_ae.errors import InputError
from tfp_ae.heads.base import _split, _unflatten
from tfp_ae.heads.elliptical import T_OPTIONS, _EllipticalHead, _row_variance, _scale_operator, _scale_params_size


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
    pit_family = "normal"  # matrix normal: PIT recalibration through a Gaussian copula (`joint_recalibrated`)

    def _check_event_shape(self, event_shape):
        if event_shape[2] != 1:
            raise InputError(f"{self.head_name}: matrix heads need one channel, got event_shape {event_shape}")

    @property
    def natural_event_shape(self) -> tuple[int, ...]:
        return self._image_shape[:2]

    @classmethod
    def component_params_size(cls, event_shape: tuple[int, ...], **options) -> int:
        h, w = event_shape[:2]
        return h * w + _scale_params_size(cls.scale, h) + _scale_params_size(cls.scale, w) + int(cls.student_t)

    @classmethod
    def pixel_layout(cls, event_shape: tuple[int, ...], **options) -> tuple[tuple[int, ...], int]:
        """The location per pixel; the row and column scales and df are global."""
        h, w = event_shape[:2]
        return (1,), _scale_params_size(cls.scale, h) + _scale_params_size(cls.scale, w) + int(cls.student_t)

    def component(self, params: tf.Tensor) -> tfd.Distribution:
        h, w = self.natural_event_shape
        nr, nc = _scale_params_size(self.scale, h), _scale_params_size(self.scale, w)
        loc, r, c, df = _split(params, [h * w, nr, nc, int(self.student_t)])
        loc = _unflatten(loc, [h, w])
        # sigma-scaling multiplies the row scale: V (x) (s U) is s times the Kronecker scale
        rows, cols = _scale_operator(self.scale, r, h, self.scaled), _scale_operator(self.scale, c, w)
        if self.student_t:
            return MatrixT(self.df_from(df), loc, rows, cols)
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
    options = T_OPTIONS
    pit_family = "student_t"  # through a t copula (`StudentTRecalibrated` marginals)
    variance_note = "variance = df/(df-2) x row variance x column variance, only where df > 2 (blank elsewhere)"


class MatrixTDiag(MatrixTIdentity):
    """Matrix-t with diagonal row and column scales (the paper's Tdf,µ,diag(U,V))."""
    head_name, label, scale = "matrix_t_diag", "Tdf,µ,diag(U,V)", "diag"


class MatrixTFull(MatrixTIdentity):
    """Matrix-t with lower-triangular row and column scales (the paper's Tdf,µ,U,V)."""
    head_name, label, scale = "matrix_t_full", "Tdf,µ,U,V", "full"
