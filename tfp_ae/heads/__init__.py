"""Output heads: the registry of distributions a decoder can end in.

One module per family, each head declared once (see `tfp_ae.heads.base` for the contract):
`base` (the `Head` class, losses, helpers), `readout` (moments, intervals, point estimates),
`pixel` (per-pixel heads and MSE), `recalibrated` (a pixel distribution recalibrated through its CDF),
`elliptical` (scale operators and the fast full-scale `log_prob` the elliptical heads share), `vector`
(normal and t with identity, diagonal or full scale), `lowrank` (normal and t with diagonal plus
low-rank covariance), `matrix` (matrix normal and matrix-t) and `maf`. A new head is one module
and one line in `HEADS` below.
"""
from __future__ import annotations

import math

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.errors import InputError
from tfp_ae.heads.base import (
    DEFAULT_BETA,
    LOSSES,
    MAF_SAMPLES,
    POSITIVE_SHIFT,
    BetaNLL,
    Head,
    check_beta,
    faithful_loss,
    head_names,
    negative_log_likelihood,
    positive,
    register,
    squared_error,
)
from tfp_ae.heads.elliptical import PARAMETERIZATIONS
from tfp_ae.heads.lowrank import DEFAULT_RANK, MultivariateStudentTDiagPlusLowRank, NormalLowRank, StudentTLowRank
from tfp_ae.heads.maf import MAF
from tfp_ae.heads.matrix import (
    MatrixHead,
    MatrixNormal,
    MatrixNormalDiag,
    MatrixNormalFull,
    MatrixNormalIdentity,
    MatrixT,
    MatrixTDiag,
    MatrixTFull,
    MatrixTIdentity,
)
from tfp_ae.heads.pixel import MSE, Bernoulli, ContinuousBernoulli, Logistic, NormalDiag, NormalIdentity, PixelHead
from tfp_ae.heads.readout import (
    INTERVAL_LEVEL,
    INTERVAL_SAMPLES,
    MAX_RISK_STRATA,
    PIT_SAMPLES,
    SAMPLE_SEED,
    Readouts,
    sample_interval,
)
from tfp_ae.heads.vector import NormalFull, StudentTDiag, StudentTFull, StudentTIdentity, VectorHead

__all__ = [  # the public names (the head classes are reached through HEADS)
    "HEADS",
    "LOSSES",
    "DEFAULT_BETA",
    "BetaNLL",
    "check_beta",
    "faithful_loss",
    "DEFAULT_RANK",
    "PARAMETERIZATIONS",
    "INTERVAL_LEVEL",
    "INTERVAL_SAMPLES",
    "MAX_RISK_STRATA",
    "PIT_SAMPLES",
    "MAF_SAMPLES",
    "POSITIVE_SHIFT",
    "SAMPLE_SEED",
    "Head",
    "Readouts",
    "negative_log_likelihood",
    "positive",
    "register",
    "sample_interval",
    "squared_error",
    "bits_per_dim",
    "describe_heads",
    "get_head",
    "head_names",
    "make_head",
    "mixable_heads",
    "PixelHead",
    "VectorHead",
    "MatrixHead",
    "MatrixNormal",
    "MatrixT",
    "MultivariateStudentTDiagPlusLowRank",
]

HEADS = {cls.head_name: register(cls) for cls in [
    MSE, NormalIdentity, NormalDiag, NormalFull,
    StudentTIdentity, StudentTDiag, StudentTFull, MAF,
    NormalLowRank, StudentTLowRank,
    MatrixNormalIdentity, MatrixNormalDiag, MatrixNormalFull,
    MatrixTIdentity, MatrixTDiag, MatrixTFull,
    Bernoulli, ContinuousBernoulli, Logistic,
]}


def mixable_heads() -> list[str]:
    """The names of the heads that take K > 1 (`Head.mixable`)."""
    return [n for n, c in HEADS.items() if c.mixable]


def get_head(name: str) -> type[Head]:
    """The head class registered as `name`.

    Raises:
      ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return HEADS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}") from None


def make_head(name: str, event_shape: tuple[int, ...], num_components: int = 1, loss: str = "nll",
              beta: float | None = None, local_scales: bool = False, pit_recalibration: bool = False,
              **options) -> Head:
    """Instantiate the head `name` for images of shape `event_shape` with K components, trained by
    `loss` (`LOSSES`; `beta` for `beta_nll`, see `Head`), with the weights of local recalibration when
    `local_scales` (`Head.scaled`), with PIT recalibration's when `pit_recalibration`
    (`Head.pit_recalibrated`), and the head's `options` (e.g. `rank=4` for `normal_lowrank`,
    `min_df=2.0` for t heads; None means the default).

    Raises:
      InputError: unknown head, bad K or event shape, a loss the head cannot take, or an option
        the head does not take or a bad value of one (`Head.check_options`).
    """
    cls = get_head(name)
    cls.check_options(event_shape, **options)  # an option the head does not take never reaches Keras
    return cls(event_shape, num_components, loss=loss, beta=beta, local_scales=local_scales,
               pit_recalibration=pit_recalibration, **{k: v for k, v in options.items() if v is not None})


def describe_heads(event_shape: tuple[int, ...] = (28, 28, 1), components: tuple[int, ...] = (1, 10),
                   **options) -> list[tuple[str, str, dict[int, int | None]]]:
    """Rows `(name, label, {K: params_size or None})` for every registered head; each option in
    `options` (e.g. `rank=4`) applies to the heads that take it, the others use their defaults."""
    rows = []
    for name, cls in HEADS.items():
        own = {k: v for k, v in options.items() if k in cls.options}
        sizes = {k: cls.params_size(event_shape, k, **own) if (k == 1 or cls.mixable) else None for k in components}
        rows.append((name, cls.label, sizes))
    return rows


def bits_per_dim(nll_nats: float | np.ndarray | tf.Tensor, num_dims: int,
                 num_levels: int = 256) -> float | np.ndarray | tf.Tensor:
    """Bits per dimension of a density on dequantised pixels: `nll / (D ln 2) + log2(L)`.

    `nll_nats` is -log p(x_deq) per image (nats) for a density on [0, 1]^D evaluated at uniformly
    dequantised pixels; `log2(L)` converts the density on bins of width 1/L into a probability
    of the discrete image (Theis et al. 2016). For L = 256: `nll / (D ln 2) + 8`.
    """
    return nll_nats / (num_dims * math.log(2)) + math.log2(num_levels)
