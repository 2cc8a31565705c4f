"""The masked autoregressive flow head (Papamakarios et al. 2017) with the paper's one-layer MADE."""
from __future__ import annotations

import numpy as np

from tfp_ae._tf import tf, tfb, tfd, tfk
from tfp_ae.heads.base import MAF_SAMPLES, Head
from tfp_ae.heads.readout import SAMPLE_SEED


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

    def __init__(self, event_shape: tuple[int, ...], num_components: int = 1, hidden_units: int = 10, **kwargs):
        super().__init__(event_shape, num_components, **kwargs)
        d = int(np.prod(self._image_shape))
        self.hidden_units = int(hidden_units)
        self.made = tfb.AutoregressiveNetwork(params=2, event_shape=[d], hidden_units=[self.hidden_units],
                                              activation="relu", name="made", dtype="float32")
        self.made.build([None, d])

    @property
    def natural_event_shape(self) -> tuple[int, ...]:
        return (int(np.prod(self._image_shape)),)

    @classmethod
    def component_params_size(cls, event_shape: tuple[int, ...], **options) -> int:
        return int(np.prod(event_shape))

    @classmethod
    def pixel_layout(cls, event_shape: tuple[int, ...], **options) -> tuple[tuple[int, ...], int]:
        """The base normal's mean per pixel."""
        return (1,), 0

    def component(self, params: tf.Tensor) -> tfd.Distribution:
        base = tfd.MultivariateNormalDiag(params, tf.ones_like(params))
        return tfd.TransformedDistribution(base, tfb.MaskedAutoregressiveFlow(self.made))

    def get_config(self):
        return dict(super().get_config(), hidden_units=self.hidden_units)

    def _mixture_moments(self, dist, seed=SAMPLE_SEED):
        x = self.sample(dist, MAF_SAMPLES, seed=seed)
        return tf.reduce_mean(x, 0), tf.math.reduce_variance(x, 0)

    def sample(self, dist: tfd.Distribution, num_samples: int, seed: tuple[int, int] | tf.Tensor | None = None) -> tf.Tensor:
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

    def mean(self, dist: tfd.Distribution, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        return self._mixture_moments(dist, seed)[0]

    def point_and_variance(self, dist: tfd.Distribution,
                           seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tuple[tf.Tensor, tf.Tensor]:
        mean, var = self._mixture_moments(dist, seed)
        return tf.clip_by_value(mean, 0.0, 1.0), var

    def _tensor(self, dist):
        """The base distribution's mean, reshaped (cheap; the flow's mean needs sampling)."""
        return self._to_image(self._parts(dist)[2].distribution.mean())
