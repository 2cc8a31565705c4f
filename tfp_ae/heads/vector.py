"""Vector heads: one multivariate normal or Student-t over the D = H*W*C pixels of the image, with
an identity, diagonal or full (lower-triangular) scale (Ciobanu, Section 3)."""
from __future__ import annotations

import numpy as np

from tfp_ae._tf import tf, tfd
from tfp_ae.heads.base import _split
from tfp_ae.heads.elliptical import (
    FULL_OPTIONS,
    T_OPTIONS,
    MultivariateNormalFullScale,
    MultivariateStudentTFullScale,
    _EllipticalHead,
    _full_scale,
    _row_variance,
    _scale_operator,
    _scale_params_size,
    full_scale_operator,
)


class VectorHead(_EllipticalHead):
    """Multivariate normal / Student-t over the flattened image, with an identity, diagonal or
    full (lower-triangular, `FillScaleTriL`) scale. Student-t heads add one df per component."""
    per_pixel_scales = True  # identity and diagonal scales are each pixel's (the full ones say False)

    @property
    def natural_event_shape(self) -> tuple[int, ...]:
        return (int(np.prod(self._image_shape)),)

    @classmethod
    def component_params_size(cls, event_shape: tuple[int, ...], **options) -> int:
        d = int(np.prod(event_shape))
        return d + _scale_params_size(cls.scale, d) + int(cls.student_t)

    @classmethod
    def pixel_layout(cls, event_shape: tuple[int, ...], **options) -> tuple[tuple[int, ...], int]:
        """The location, then a diagonal scale per pixel; a full scale and df are global."""
        d = int(np.prod(event_shape))
        widths = (1, 1) if cls.scale == "diag" else (1,)
        return widths, (_scale_params_size("full", d) if cls.scale == "full" else 0) + int(cls.student_t)

    def component(self, params: tf.Tensor) -> tfd.Distribution:
        d = self.natural_event_shape[0]
        n_scale = _scale_params_size(self.scale, d)
        loc, s, df = _split(params, [d, n_scale, int(self.student_t)])
        if self.scale == "full":  # log_prob differentiated on the packed parameters
            tril, diag = _full_scale(s)
            f = self.scaled(tf.ones([], tril.dtype))  # sigma-scaling
            scale = full_scale_operator(tril, f, self.parameterization)
            scale._packed = (s, tril, diag, f, self.parameterization)
            return (MultivariateStudentTFullScale(self.df_from(df), loc, scale) if self.student_t
                    else MultivariateNormalFullScale(loc, scale))
        if self.student_t:
            return tfd.MultivariateStudentTLinearOperator(
                df=self.df_from(df), loc=loc, scale=_scale_operator(self.scale, s, d, self.scaled))
        return tfd.MultivariateNormalLinearOperator(loc, _scale_operator(self.scale, s, d, self.scaled))

    def _squared_scale(self, comp):
        """Pixel i: sum_j L_ij^2, `[..., D]`."""
        return _row_variance(comp.scale) * tf.ones_like(comp.loc)


class NormalFull(VectorHead):
    """N(mu, L L^T), L from `FillScaleTriL` (the paper's Nµ,Σ; D(D+1)/2 scale parameters); with
    `parameterization="precision"` N(mu, (L L^T)^{-1}) (Dorta et al., CVPR 2018), which trains with
    `loss="faithful"` where the paper's diverges (docs/results/uncertainty)."""
    head_name, label, scale = "normal_full", "Nµ,Σ", "full"
    pit_family = "normal"  # PIT recalibration through a Gaussian copula (`_EllipticalHead.joint_recalibrated`)
    options = FULL_OPTIONS
    per_pixel_scales = False  # a full scale is not each pixel's
    full_covariance = True


class StudentTIdentity(VectorHead):
    """Multivariate t(df, mu, I) (the paper's tdf,µ). Point estimate: the mode."""
    head_name, label, scale, student_t, point = "student_t_identity", "tdf,µ", "identity", True, "mode"
    pit_family = "student_t"  # PIT recalibration through a t copula (`StudentTRecalibrated` marginals)
    options = T_OPTIONS
    variance_note = "variance exists only where df > 2 (blank elsewhere)"


class StudentTDiag(StudentTIdentity):
    """Multivariate t(df, mu, diag(sigma)^2) (the paper's tdf,µ,diag(Σ))."""
    head_name, label, scale = "student_t_diag", "tdf,µ,diag(Σ)", "diag"


class StudentTFull(StudentTIdentity):
    """Multivariate t(df, mu, L L^T) with L from `FillScaleTriL` (the paper's tdf,µ,Σ); with
    `parameterization="precision"` the scale matrix is (L L^T)^{-1}, as for `NormalFull`."""
    head_name, label, scale = "student_t_full", "tdf,µ,Σ", "full"
    options = {**T_OPTIONS, **FULL_OPTIONS}
    per_pixel_scales = False
    full_covariance = True
