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

Architectures: `mlp` (the paper's VAE: Dense(2L) encoder, Dense(params) decoder; 101984 parameters
for MNIST with `normal_diag`, as in Table 1; `hidden` adds ReLU layers to both) and `cnn_dense`
(the convolutional front end of `tfp_ae.models`).
"""
import math

import numpy as np

from tfp_ae._tf import tf, tfd, tfk
from tfp_ae.heads import make_head, positive
from tfp_ae.models import cnn_features

L = tfk.layers
OBJECTIVES = ("elbo", "iwae")
NLL_SAMPLES = 250
VAE_ARCHS = ("mlp", "cnn_dense")


class VAE(tfk.Model):
    """A VAE whose `fit` minimises -ELBO or -IWAE_k (nats per image).

    Args:
      encoder: images `[B, *event_shape]` -> `[B, 2 * latent_dim]` (posterior loc, raw scale).
      decoder: codes `[N, latent_dim]` -> head parameters `[N, head.size]`.
      head: a `tfp_ae.heads.Head`, the likelihood p(x|z).
      objective: `elbo` or `iwae`; iw_samples: k of the IWAE bound.
    Calling the model on images returns p(x | z = posterior mean), so `point_estimates`,
    `variance_maps` and the figures of the autoencoders work unchanged.
    Logged by `fit`: `loss` (-ELBO or -IWAE_k), `reconstruction` (-E_q log p(x|z)) and `kl`, all
    nats per image.
    Raises:
      ValueError: unknown objective, iw_samples < 1.
    """

    def __init__(self, encoder, decoder, head, latent_dim, objective="elbo", iw_samples=1, **kwargs):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        if isinstance(iw_samples, bool) or not isinstance(iw_samples, (int, np.integer)) or iw_samples < 1:
            raise ValueError(f"iw_samples (k) must be an integer >= 1, got {iw_samples!r}")
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.latent_dim, self.objective, self.iw_samples = int(latent_dim), objective, int(iw_samples)
        self._trackers = [tfk.metrics.Mean(n) for n in ("loss", "reconstruction", "kl")]

    @property
    def metrics(self):
        return self._trackers

    def get_config(self):
        """The VAE's own settings; encoder, decoder and head are rebuilt by `build_vae` (weights are
        saved with checkpoints and rebuilt from a run's `config.json`, see `tfp_ae.train.load_model`)."""
        return dict(name=self.name, latent_dim=self.latent_dim, objective=self.objective, iw_samples=self.iw_samples)

    def count_params(self):
        """Weights of encoder, decoder and head (not the loss trackers' counters)."""
        return int(sum(np.prod(w.shape) for w in self.encoder.weights + self.decoder.weights + self.head.weights))

    def prior(self):
        """p(z) = N(0, I), event `[latent_dim]`."""
        return tfd.MultivariateNormalDiag(tf.zeros([self.latent_dim]))

    def posterior(self, x):
        """q(z|x) = N(mu, diag sigma^2), batch `[B]`, event `[latent_dim]`."""
        loc, scale = tf.split(self.encoder(x), 2, axis=-1)
        return tfd.MultivariateNormalDiag(loc, positive(scale))

    def _decoder_params(self, z):
        """Head parameters `[..., head.size]` for codes `[..., latent_dim]` (any leading shape)."""
        p = self.decoder(tf.reshape(z, [-1, self.latent_dim]))
        return tf.reshape(p, tf.concat([tf.shape(z)[:-1], [self.head.size]], 0))

    def decode(self, z):
        """p(x|z): the head's distribution, batch `z.shape[:-1]`, event the image shape."""
        return self.head.new(self._decoder_params(z))

    def call(self, x, training=None):
        return self.head(self._decoder_params(self.posterior(x).mean()))

    def elbo(self, x, z=None):
        """(elbo, log p(x|z), KL) per image, `[B]` each, nats. One reparameterised sample z ~ q
        (or the given `z` `[B, L]`) for the reconstruction term, the KL in closed form
        (`tfd.kl_divergence`, the tutorial's Eq. 7)."""
        q = self.posterior(x)
        z = q.sample() if z is None else z
        rec = self.decode(z).log_prob(x)
        kl = tfd.kl_divergence(q, self.prior())
        return rec - kl, rec, kl

    def log_weights(self, x, num_samples, z=None, seed=None):
        """log p(x|z_i) + log p(z_i) - log q(z_i|x), `[num_samples, B]`, z_i ~ q (or `z` `[S, B, L]`);
        `seed`: optional stateless seed of the draw."""
        q = self.posterior(x)
        z = q.sample(num_samples, seed=seed) if z is None else z
        return self.decode(z).log_prob(x) + self.prior().log_prob(z) - q.log_prob(z)

    def iwae_bound(self, x, num_samples, z=None, seed=None):
        """IWAE_k lower bound on log p(x), `[B]` nats (Burda et al. 2016, Eq. 8)."""
        lw = self.log_weights(x, num_samples, z, seed)
        return tf.reduce_logsumexp(lw, axis=0) - math.log(num_samples)

    def importance_nll(self, x, num_samples=NLL_SAMPLES, seed=None):
        """-log p(x) estimated by importance sampling with q as proposal, `[B]` nats (tutorial Eq. 15)."""
        return -self.iwae_bound(x, num_samples, seed=seed)

    def sample_images(self, num_images, seed=None):
        """Point estimates of p(x|z) for z ~ N(0, I): `[num_images, *image_shape]` in [0, 1] (Figure 3, row 1)."""
        z = self.prior().sample(num_images, seed=seed)
        return self.head.point_estimate(self.decode(z))

    def _objective(self, x):
        if self.objective == "iwae":
            q = self.posterior(x)
            z = q.sample(self.iw_samples)
            bound = self.iwae_bound(x, self.iw_samples, z)
            rec = self.decode(z[0]).log_prob(x)
            kl = tfd.kl_divergence(q, self.prior())
            return -tf.reduce_mean(bound), -tf.reduce_mean(rec), tf.reduce_mean(kl)
        elbo, rec, kl = self.elbo(x)
        return -tf.reduce_mean(elbo), -tf.reduce_mean(rec), tf.reduce_mean(kl)

    def _log(self, values):
        for tracker, v in zip(self._trackers, values):
            tracker.update_state(v)
        return {t.name: t.result() for t in self._trackers}

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            values = self._objective(x)
            # gradients are summed over replicas: scale so the update is that of the global mean
            loss = values[0] / tf.distribute.get_strategy().num_replicas_in_sync
        self.optimizer.apply_gradients(zip(tape.gradient(loss, self.trainable_variables), self.trainable_variables))
        return self._log(values)

    def test_step(self, data):
        return self._log(self._objective(data[0] if isinstance(data, tuple) else data))


def build_vae(head, image_shape, num_components=1, arch="mlp", latent_dim=32, objective="elbo", iw_samples=1,
              hidden=()):
    """Build (and compile-ready) a `VAE`.

    Args:
      head: head name (any registered head: `normal_diag` as in the paper, `continuous_bernoulli`,
        `logistic`, mixtures with `num_components` > 1, ...) or a `Head`.
      image_shape: `(H, W, C)`.
      arch: `mlp` or `cnn_dense` (the encoder's front end; the decoder is dense).
      hidden: widths of extra ReLU layers in encoder and decoder (none in the paper).
    Raises:
      ValueError: unknown head/arch/objective, K < 1, iw_samples < 1.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if isinstance(head, str):
        head = make_head(head, image_shape, num_components)
    if arch not in VAE_ARCHS:
        raise ValueError(f"unknown VAE arch {arch!r}; valid: {', '.join(VAE_ARCHS)} (the paper's `cnn` decoder "
                         "has no latent bottleneck to put a posterior on)")
    front = cnn_features() if arch == "cnn_dense" else [L.Flatten()]
    dense = [L.Dense(h, "relu", kernel_initializer="glorot_uniform") for h in hidden]
    encoder = tfk.Sequential([L.InputLayer(image_shape), *front, *dense,
                              L.Dense(2 * latent_dim, kernel_initializer="glorot_uniform")], name="encoder")
    decoder = tfk.Sequential([L.InputLayer((latent_dim,)),
                              *[L.Dense(h, "relu", kernel_initializer="glorot_uniform") for h in hidden],
                              L.Dense(head.size, kernel_initializer="glorot_uniform")], name="decoder")
    model = VAE(encoder, decoder, head, latent_dim, objective, iw_samples,
                name=f"vae_{arch}_{head.head_name}_k{head.num_components}")
    model(tf.zeros([1, *image_shape]))  # build
    return model


def compile_vae(model, learning_rate=1e-3, jit_compile=False):
    """Adam (Keras defaults); the loss is the model's own objective (no Keras loss)."""
    model.compile(optimizer=tfk.optimizers.Adam(learning_rate), jit_compile=jit_compile)
    return model
