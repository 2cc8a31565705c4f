"""Per-pixel heads: an `Independent` product over the H x W x C pixels of one univariate family
(normal, Bernoulli, continuous Bernoulli, logistic), and the plain MSE autoencoder."""
from __future__ import annotations

import numpy as np

from tfp_ae._tf import tf, tfd
from tfp_ae.heads.base import Head, _split, _unflatten, positive, squared_error
from tfp_ae.heads.readout import INTERVAL_LEVEL, SAMPLE_SEED


class PixelHead(Head):
    """A factorised head: `Independent` over the H x W x C pixels of one univariate family."""
    n_pixel_params = 1
    per_pixel_scales = True  # its scale is each pixel's (local recalibration applies)

    @classmethod
    def component_params_size(cls, event_shape: tuple[int, ...], **options) -> int:
        return cls.n_pixel_params * int(np.prod(event_shape))

    @classmethod
    def pixel_layout(cls, event_shape: tuple[int, ...], **options) -> tuple[tuple[int, ...], int]:
        """One segment per pixel parameter (location, scale, ...), nothing global."""
        return (1,) * cls.n_pixel_params, 0

    def pixel_distribution(self, *params) -> tfd.Distribution:
        """The univariate distribution of every pixel from its parameters, each `[..., H, W, C]`."""
        raise NotImplementedError

    def component(self, params: tf.Tensor) -> tfd.Distribution:
        d = int(np.prod(self._image_shape))
        parts = [_unflatten(t, self._image_shape) for t in _split(params, [d] * self.n_pixel_params)]
        return tfd.Independent(self.pit_recalibrated(self.pixel_distribution(*parts)), reinterpreted_batch_ndims=3)

    def marginal(self, comp: tfd.Distribution) -> tfd.Distribution:
        """The per-pixel distribution itself (`PITRecalibrated` for a head built with `pit_recalibration`)."""
        return comp.distribution


class NormalIdentity(PixelHead):
    """N(mu, I): multivariate normal with identity covariance (the paper's Nµ)."""
    head_name, label = "normal_identity", "Nµ"
    takes_beta_nll = has_location = location_output = True
    pit_family = "normal"

    def pixel_distribution(self, loc: tf.Tensor) -> tfd.Distribution:
        return tfd.Normal(loc, self.scaled(tf.ones_like(loc)))


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

    def variance(self, dist: tfd.Distribution, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """NaN `[B, H, W, C]`: MSE training fixes no variance (its NLL assumes 1, which is not learned)."""
        return tf.fill(tf.shape(self.mean(dist)), np.nan)

    def interval(self, dist: tfd.Distribution, level: float = INTERVAL_LEVEL,
                 seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED,
                 num_samples: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """NaN bounds `[B, H, W, C]`, as `variance`."""
        nan = self.variance(dist)
        return nan, nan

    def pit(self, dist: tfd.Distribution, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED,
            num_samples: int | None = None) -> tf.Tensor:
        """NaN `[B, H, W, C]`, as `variance`: no predictive spread to calibrate."""
        return self.variance(dist)

    nll_loss = staticmethod(squared_error)
    takes_beta_nll = has_location = False  # trains on squared error already


class NormalDiag(PixelHead):
    """N(mu, diag(sigma^2)), sigma = 1e-6 + softplus (the paper's Nµ,diag(Σ))."""
    head_name, label = "normal_diag", "Nµ,diag(Σ)"
    n_pixel_params = 2
    takes_beta_nll = has_location = location_output = True
    pit_family = "normal"

    def pixel_distribution(self, loc: tf.Tensor, s: tf.Tensor) -> tfd.Distribution:
        return tfd.Normal(loc, self.scaled(positive(s)))


class Bernoulli(PixelHead):
    """Bernoulli per pixel, i.e. binary cross-entropy on [0, 1] pixels.

    Its `log_prob` on non-binary x in [0, 1] is `x log p + (1 - x) log(1 - p)`, which is NOT a
    normalised density on [0, 1]: its NLL and bits/dim are not comparable with the other heads'
    (the continuous Bernoulli fixes this, Loaiza-Ganem & Cunningham 2019).
    """
    head_name, label = "bernoulli", "Bern"
    is_density = False
    nll_note = "bernoulli: not a normalised density on [0, 1]; NLL not comparable, no bits/dim"

    def pixel_distribution(self, logits: tf.Tensor) -> tfd.Distribution:
        return tfd.Bernoulli(logits=logits, dtype=tf.float32)

    def marginal(self, comp: tfd.Distribution) -> None:
        """None: a Bernoulli has no quantile function in TFP (its interval is read from samples)."""
        return None


class ContinuousBernoulli(PixelHead):
    """Continuous Bernoulli per pixel (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1]."""
    head_name, label = "continuous_bernoulli", "CB"

    def pixel_distribution(self, logits: tf.Tensor) -> tfd.Distribution:
        return tfd.ContinuousBernoulli(logits=logits)


class Logistic(PixelHead):
    """Logistic(mu, s) per pixel, s = 1e-6 + softplus (Kingma et al. 2016, VAE-IAF)."""
    head_name, label = "logistic", "Logistic"
    n_pixel_params = 2
    takes_beta_nll = has_location = location_output = True
    pit_family = "logistic"

    def pixel_distribution(self, loc: tf.Tensor, s: tf.Tensor) -> tfd.Distribution:
        return tfd.Logistic(loc, self.scaled(positive(s)))
