"""Variational autoencoder with any registered head as its decoder likelihood, trained with
`model.fit` on the ELBO or the IWAE bound.

Model (Kingma & Welling 2014): prior p(z) = N(0, I_L); posterior q(z|x) = N(mu(x), diag sigma(x)^2)
with sigma = 1e-6 + softplus; likelihood p(x|z) = the head's distribution of the decoder output
(`normal_diag` learns the decoder variance: never plain MSE, which fixes it).

- ELBO (nats per image) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), one reparameterised sample for the
  expectation, the KL in closed form (the VAE tutorial's Eq. 7:
  KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)).
- IWAE bound with k samples (Burda et al. 2016, Eq. 8): log 1/k sum_i p(x, z_i) / q(z_i|x), z_i ~ q;
  k = 1 is the ELBO with a sampled KL; it tightens as k grows.
- Importance-sampled NLL (the tutorial's Eq. 15): -log 1/S sum_s p(x|z_s) p(z_s) / q(z_s|x), S = 250.

- Free bits (Kingma et al. 2016, Sec. C.8; the VAE tutorial's 2D study): the training loss replaces
  each latent dimension's KL by max(KL_j, free_bits x ln 2) per data point (`free_bits` in bits),
  so dimensions below that information are not pushed to the prior; the logged `kl` and `elbo()`
  stay the true ones.

Architectures: `mlp` (the paper's VAE: Dense(2L) encoder, Dense(params) decoder; 101984 parameters
for MNIST with `normal_diag`, as in Table 1; `hidden` adds ReLU layers to both), `cnn_dense`
(the convolutional front end of `tfp_ae.architectures.cnn_dense`), `conv` (the deep convolutional
encoder and decoder of `tfp_ae.architectures.conv`) and `dense_block` (the VAE tutorial's 2D
networks: each hidden layer sees the concatenation of the input and all earlier hidden outputs,
DenseNet style, and every Dense layer is weight-normalised, Salimans & Kingma 2016).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from tfp_ae._tf import tf, tfd, tfk, tfp
from tfp_ae.architectures import ArchSettings, ParamLayout, check_arch, cnn_dense, conv
from tfp_ae.config import OBJECTIVES, VAE_ARCHS
from tfp_ae.errors import InputError
from tfp_ae.heads import SAMPLE_SEED, make_head, positive, register
from tfp_ae.models import ProbabilisticModel

if TYPE_CHECKING:
    from tfp_ae.heads.base import Head

L = tfk.layers
NLL_SAMPLES = 250


@register
class VAE(ProbabilisticModel):
    """A VAE whose `fit` minimises -ELBO or -IWAE_k (nats per image). Build it with `build_vae`.

    Args:
      encoder: images `[B, *event_shape]` -> `[B, 2 * latent_dim]` (posterior loc, raw scale).
      decoder: codes `[N, latent_dim]` -> head parameters `[N, head.size]`.
      head: a `tfp_ae.heads.Head`, the likelihood p(x|z).
      build_args: the `build_vae` arguments (`get_config`).
    Calling the model on images returns p(x | z = posterior mean); `encode(x)` is the posterior
    mean; `log_prob(x)` the importance-sampled marginal (`NLL_SAMPLES`, fixed seed).
    Logged by `fit`: `loss` (-ELBO or -IWAE_k), `reconstruction` (-E_q log p(x|z)) and `kl`, all
    nats per image.
    Training noise is stateless: the draws of the training step with optimizer iteration t on
    replica r use the seed `fold_in((seed, t), r)` (`seed`: `build_vae`'s), so a run repeats bit
    for bit and a run resumed from a checkpoint (which restores t) draws what the uninterrupted
    run drew. Validation batches and `objective(x)` use the fixed `SAMPLE_SEED`.
    Raises:
      ValueError: unknown objective, iw_samples < 1.
    """

    kind = "vae"
    trained_prior = True       # codes drawn from `prior()` decode to images like the data
    eval_batch_size = 50       # importance sampling holds NLL_SAMPLES decodings per image

    def __init__(self, encoder: tfk.Model, decoder: tfk.Model, head: Head, build_args: dict, **kwargs):
        super().__init__(encoder, decoder, head, build_args, **kwargs)
        objective, iw_samples = build_args["objective"], build_args["iw_samples"]
        if objective not in OBJECTIVES:
            raise InputError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        if isinstance(iw_samples, bool) or not isinstance(iw_samples, (int, np.integer)) or iw_samples < 1:
            raise InputError(f"iw_samples (k) must be an integer >= 1, got {iw_samples!r}")
        self.latent_dim, self.objective_name, self.iw_samples = int(build_args["latent_dim"]), objective, int(iw_samples)
        self.seed = int(build_args.get("seed", 0))
        self.free_bits = float(build_args.get("free_bits", 0.0))
        if not self.free_bits >= 0:
            raise InputError(f"free_bits must be >= 0 (bits per latent dimension), got {self.free_bits!r}")
        self._trackers = [tfk.metrics.Mean(n) for n in ("loss", "reconstruction", "kl")]

    @classmethod
    def from_config(cls, config: dict):
        return build_vae(**config)

    @property
    def loss_units(self) -> str:
        """-ELBO or the IWAE bound's negative, nats per image (`metrics.json` `loss_units`)."""
        what = "-ELBO" if self.objective_name == "elbo" else f"-IWAE bound (k={self.iw_samples})"
        return f"{what}, nats per image"

    @property
    def metrics(self):
        return self._trackers

    def count_params(self) -> int:
        """Trainable weights of encoder, decoder and head (not the loss trackers' counters, the boolean
        `initialized` flags of weight normalisation or the head's non-trainable `sigma_scale`)."""
        return int(sum(np.prod(w.shape) for w in self.encoder.weights + self.decoder.weights + self.head.weights
                       if w.trainable and w.dtype != tf.bool))

    def prior(self) -> tfd.Distribution:
        """p(z) = N(0, I), event `[latent_dim]`."""
        return tfd.MultivariateNormalDiag(tf.zeros([self.latent_dim]))

    def posterior(self, x: tf.Tensor) -> tfd.Distribution:
        """q(z|x) = N(mu, diag sigma^2), batch `[B]`, event `[latent_dim]`."""
        loc, scale = tf.split(tf.cast(self.encoder(x), self.head.compute_dtype), 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc, positive(scale))

    @property
    def code_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tfd.Distribution:
        return self.head(self._decoder_params(self.posterior(x).mean()))

    def encode(self, x: tf.Tensor) -> tf.Tensor:
        """The posterior mean `[B, latent_dim]`."""
        return self.posterior(x).mean()

    def log_prob(self, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """log p(x) `[B]` nats, by importance sampling (`importance_nll`, stateless `seed`)."""
        return -self.importance_nll(x, seed=seed)

    @property
    def log_prob_note(self):
        return f"VAE: test_nll_nats is -log p(x) by importance sampling ({NLL_SAMPLES} samples)"

    def objective(self, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """The training loss of a batch: -ELBO or -IWAE_k averaged over images (nats); `seed`:
        stateless seed of the posterior draws."""
        return self._objective(x, seed)[0]

    def elbo(self, x: tf.Tensor, z: tf.Tensor | None = None,
             seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(elbo, log p(x|z), KL) per image, `[B]` each, nats. One reparameterised sample z ~ q
        drawn with the stateless `seed` (or the given `z` `[B, L]`) for the reconstruction term,
        the KL in closed form (`tfd.kl_divergence`, the tutorial's Eq. 7)."""
        q = self.posterior(x)
        z = q.sample(seed=seed) if z is None else z
        rec = self.decode(z).log_prob(x)
        kl = tfd.kl_divergence(q, self.prior())
        return rec - kl, rec, kl

    def log_weights(self, x: tf.Tensor, num_samples: int, z: tf.Tensor | None = None,
                    seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """log p(x|z_i) + log p(z_i) - log q(z_i|x), `[num_samples, B]`, z_i ~ q (or `z` `[S, B, L]`);
        `seed`: stateless seed of the draw."""
        q = self.posterior(x)
        z = q.sample(num_samples, seed=seed) if z is None else z
        return self._log_weights(x, q, z)[1]

    def _log_weights(self, x, q, z):
        """(log p(x|z_i) `[S, B]`, the log weights `[S, B]`) for the posterior q of x and its draws z."""
        rec = self.decode(z).log_prob(x)
        return rec, rec + self.prior().log_prob(z) - q.log_prob(z)

    def iwae_bound(self, x: tf.Tensor, num_samples: int, z: tf.Tensor | None = None,
                   seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """IWAE_k lower bound on log p(x), `[B]` nats (Burda et al. 2016, Eq. 8)."""
        return _log_mean_exp(self.log_weights(x, num_samples, z, seed), num_samples)

    def importance_nll(self, x: tf.Tensor, num_samples: int = NLL_SAMPLES,
                       seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """-log p(x) estimated by importance sampling with q as proposal, `[B]` nats (tutorial Eq. 15)."""
        return -self.iwae_bound(x, num_samples, seed=seed)

    def step_seed(self) -> tf.Tensor:
        """The stateless seed of this training step's draws, int64 `[2]`: `(seed, t)` folded with
        the replica id (t = `optimizer.iterations`, restored with the checkpoint)."""
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        return tf.random.experimental.stateless_fold_in(seed, replica_id)

    def _objective(self, x, seed):
        if self.objective_name == "iwae":
            # one posterior and one decoder pass: the logged reconstruction is that of the first draw
            q = self.posterior(x)
            rec, lw = self._log_weights(x, q, q.sample(self.iw_samples, seed=seed))
            kl = tfd.kl_divergence(q, self.prior())
            return -tf.reduce_mean(_log_mean_exp(lw, self.iw_samples)), -tf.reduce_mean(rec[0]), tf.reduce_mean(kl)
        if self.free_bits > 0:  # the ELBO's terms from one posterior pass, the KL per latent dimension
            q = self.posterior(x)
            rec = self.decode(q.sample(seed=seed)).log_prob(x)
            kl_dims = tfd.kl_divergence(tfd.Normal(q.mean(), q.stddev()), tfd.Normal(0.0, 1.0))  # [B, L]
            loss = -rec + tf.reduce_sum(tf.maximum(kl_dims, self.free_bits * math.log(2)), -1)
            return tf.reduce_mean(loss), -tf.reduce_mean(rec), tf.reduce_mean(tf.reduce_sum(kl_dims, -1))
        elbo, rec, kl = self.elbo(x, seed=seed)
        return -tf.reduce_mean(elbo), -tf.reduce_mean(rec), tf.reduce_mean(kl)

    def _log(self, values):
        for tracker, v in zip(self._trackers, values):
            tracker.update_state(v)
        return {t.name: t.result() for t in self._trackers}

    def train_step(self, data: tuple) -> dict[str, tf.Tensor]:
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            values = self._objective(x, self.step_seed())
            # gradients are summed over replicas: scale so the update is that of the global mean
            loss = values[0] / tf.distribute.get_strategy().num_replicas_in_sync
        # minimize scales the loss when the optimizer is a LossScaleOptimizer (mixed_float16)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return self._log(values)

    def test_step(self, data: tuple) -> dict[str, tf.Tensor]:
        return self._log(self._objective(data[0] if isinstance(data, tuple) else data, SAMPLE_SEED))


def _log_mean_exp(log_weights, num_samples):
    """log (1/S) sum_i exp(w_i) over the sample axis 0 of `log_weights` `[S, B]`, S = `num_samples`: `[B]`."""
    return tf.reduce_logsumexp(log_weights, axis=0) - math.log(num_samples)


def _dense_block(inputs, hidden, outputs, name):
    """The VAE tutorial's network: h_0 = inputs; h_i = [h_{i-1}, ReLU(WN-Dense(hidden[i-1])(h_{i-1}))];
    then WN-Dense(outputs). WN = `tfp.layers.weight_norm.WeightNorm` (g initialised to |v|, as
    PyTorch's `weight_norm`)."""
    def wn_dense(units, activation=None):
        return tfp.layers.weight_norm.WeightNorm(L.Dense(units, activation), data_init=False)

    h = L.Flatten()(inputs)
    for units in hidden:
        h = L.Concatenate()([h, wn_dense(units, "relu")(h)])
    return tfk.Model(inputs, wn_dense(outputs)(h), name=name)


def build_vae(head: str, image_shape: tuple[int, int, int], num_components: int = 1, arch: str = "mlp",
              latent_dim: int = 32, objective: str = "elbo", iw_samples: int = 1, hidden: tuple = (),
              name: str | None = None, seed: int = 0, free_bits: float = 0.0, conv_width: int | None = None,
              conv_depth: int | None = None, **head_options) -> VAE:
    """Build a `VAE` (built: its weights exist; compile it with `tfp_ae.models.compile_model`).

    Args:
      head: head name (any registered head: `normal_diag` as in the paper, `continuous_bernoulli`,
        `logistic`, mixtures with `num_components` > 1, ...) or a `Head`.
      image_shape: `(H, W, C)`.
      arch: `mlp` or `cnn_dense` (the encoder's front end; the decoder is dense), `conv` (the deep
        convolutional encoder and decoder of `tfp_ae.architectures.conv`, `conv_width` and
        `conv_depth` as in `tfp_ae.models.build_model`; `hidden` is not used), or `dense_block`
        (encoder and decoder are weight-normalised dense blocks with layer widths `hidden`; the
        VAE tutorial's 2D study uses 6 layers of 1024).
      hidden: widths of extra ReLU layers in encoder and decoder (none in the paper).
      free_bits: bits per latent dimension below which the training loss does not charge the
        KL (0: the plain ELBO; the tutorial uses 0.05). Only the `elbo` objective uses it.
      name: the model's name (default `vae_ARCH_HEAD_kK`).
      seed: int, the seed of the training draws (see `VAE`).
      **head_options: the head's options (`rank`, `min_df`; see `tfp_ae.models.build_model`).
    Raises:
      ValueError: unknown head/arch/objective, K < 1, iw_samples < 1, free_bits < 0, an option the
        head does not take.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if arch not in VAE_ARCHS:
        raise InputError(f"unknown VAE arch {arch!r}; valid: {', '.join(VAE_ARCHS)} (the paper's `cnn` decoder "
                         "has no latent bottleneck to put a posterior on)")
    head = make_head(head, image_shape, num_components, **head_options)
    settings = ArchSettings(latent_dim, conv_width, conv_depth)
    if arch != "dense_block":
        check_arch(arch, image_shape, settings, head, head.num_components)
    if arch == "conv" and hidden:
        raise InputError("hidden layers (--hidden) belong to the dense VAE archs (mlp, cnn_dense, dense_block); "
                         "--arch conv sets its depth with --conv-depth")
    if arch == "dense_block":
        encoder = _dense_block(L.Input(image_shape), hidden, 2 * latent_dim, "encoder")
        decoder = _dense_block(L.Input((latent_dim,)), hidden, head.size, "decoder")
    elif arch == "conv":  # the posterior's loc and raw scale are the conv encoder's 2L-unit linear code
        encoder = conv.encoder(image_shape, replace(settings, latent_dim=2 * latent_dim))
        decoder = conv.decoder(image_shape, (latent_dim,), ParamLayout.of(head), settings)
    else:
        front = cnn_dense.features() if arch == "cnn_dense" else [L.Flatten()]
        dense = [L.Dense(h, "relu", kernel_initializer="glorot_uniform") for h in hidden]
        encoder = tfk.Sequential([L.InputLayer(image_shape), *front, *dense,
                                  L.Dense(2 * latent_dim, kernel_initializer="glorot_uniform")], name="encoder")
        decoder = tfk.Sequential([L.InputLayer((latent_dim,)),
                                  *[L.Dense(h, "relu", kernel_initializer="glorot_uniform") for h in hidden],
                                  L.Dense(head.size, kernel_initializer="glorot_uniform")], name="decoder")
    args = dict(head=head.head_name, image_shape=list(image_shape), num_components=head.num_components, arch=arch,
                latent_dim=int(latent_dim), objective=objective, iw_samples=iw_samples, hidden=[int(h) for h in hidden],
                seed=int(seed), free_bits=float(free_bits), **head.option_values)
    if arch == "conv":
        args.update(conv_width=conv_width, conv_depth=conv_depth)
    model = VAE(encoder, decoder, head, args, name=name or f"vae_{arch}_{head.head_name}_k{head.num_components}")
    model(tf.zeros([1, *image_shape]))  # build
    return model
