"""VAE: the KL term, ELBO vs IWAE vs importance-sampled NLL, training with model.fit, the CLI."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tfp_ae._tf import tfd
from tfp_ae.cli import main
from tfp_ae.models import compile_model
from tfp_ae.vae import build_vae


@pytest.fixture(scope="module")
def trained(digits):
    """A small VAE trained for a few epochs on digits (shared by the bound tests)."""
    tf.keras.utils.set_random_seed(0)
    vae = compile_model(build_vae("normal_diag", (8, 8, 1), latent_dim=4, hidden=(64,)))
    vae.fit(digits.x_train, digits.x_train, batch_size=64, epochs=15, verbose=0)
    return vae


def test_paper_vae_parameter_count():
    # Table 1, VAE row: 101984 = Dense(784 -> 2*32) + Dense(32 -> 2*784)
    assert build_vae("normal_diag", (28, 28, 1)).count_params() == 101984


def test_kl_is_closed_form_of_tutorial_eq7(digits):
    vae = build_vae("normal_diag", (8, 8, 1), latent_dim=5)
    x = digits.x_test[:6]
    q = vae.posterior(x)
    _, _, kl = vae.elbo(x)
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    closed = 0.5 * np.sum(mu ** 2 + sigma ** 2 - 1 - np.log(sigma ** 2), axis=-1)
    np.testing.assert_allclose(kl.numpy(), closed, rtol=1e-5)
    np.testing.assert_allclose(kl.numpy(), tfd.kl_divergence(q, vae.prior()).numpy(), rtol=1e-6)


def test_dense_block_networks_have_the_tutorials_shape():
    # encoder: layer i maps 2 + g*i -> g (weights, bias, weight-norm gain g), then 2 + 6g -> 2L; decoder likewise
    g, depth, latent = 16, 6, 2
    vae = build_vae("normal_diag", (1, 2, 1), latent_dim=latent, arch="dense_block", hidden=(g,) * depth)
    block = sum((2 + g * i) * g + 2 * g for i in range(depth))
    head = (2 + g * depth) * 4 + 2 * 4  # both nets end in 4 outputs (2L = 4; normal_diag on 2 pixels = 4)
    assert vae.count_params() == 2 * (block + head)
    # weight normalisation: every Dense layer computes x (g * v / |v|) + b (column norms), g starts at |v|
    wn = [layer for layer in vae.encoder.layers if "weight_norm" in layer.name][0]
    v, b = wn.v.numpy(), wn.layer.bias.numpy()
    np.testing.assert_allclose(wn.g.numpy(), np.linalg.norm(v, axis=0), rtol=1e-5)
    wn.g.assign(np.linspace(0.5, 2, g).astype(np.float32))
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    expected = np.maximum(x @ (wn.g.numpy() * v / np.linalg.norm(v, axis=0)) + b, 0)
    np.testing.assert_allclose(wn(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_free_bits_loss_charges_each_dimension_at_least_its_floor(digits):
    vae = build_vae("normal_diag", (8, 8, 1), latent_dim=6, free_bits=0.5)
    x = tf.constant(digits.x_test[:16])
    seed = (4, 5)
    loss, rec, kl = vae._objective(x, seed)
    q = vae.posterior(x)
    mu, sigma = q.mean().numpy().astype(np.float64), q.stddev().numpy().astype(np.float64)
    kl_dims = 0.5 * (mu ** 2 + sigma ** 2 - 1 - np.log(sigma ** 2))  # [B, L], tutorial Eq. 7 per dimension
    expected = rec.numpy() + np.mean(np.sum(np.maximum(kl_dims, 0.5 * np.log(2)), -1))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(kl.numpy(), kl_dims.sum(-1).mean(), rtol=1e-5)  # the logged KL is the true one
    elbo, elbo_rec, _ = vae.elbo(x, seed=seed)
    np.testing.assert_allclose(rec.numpy(), -elbo_rec.numpy().mean(), rtol=1e-6)  # the ELBO's own draw of z
    assert loss.numpy() > -elbo.numpy().mean()  # the floor only adds
    with pytest.raises(ValueError, match="free_bits"):
        build_vae("normal_diag", (8, 8, 1), free_bits=-1.0)


def test_iwae_training_objective_is_the_bound_of_its_draws(digits):
    """`--objective iwae`: the loss is -IWAE_k of the step's k draws (one posterior and one decoder
    pass), the logged reconstruction that of the first draw, the logged KL the analytic one."""
    vae = build_vae("normal_diag", (8, 8, 1), latent_dim=4, objective="iwae", iw_samples=5)
    x = tf.constant(digits.x_test[:16])
    loss, rec, kl = vae._objective(x, (4, 5))
    q = vae.posterior(x)
    z = q.sample(5, seed=(4, 5))
    np.testing.assert_allclose(loss.numpy(), -vae.iwae_bound(x, 5, z=z).numpy().mean(), rtol=1e-5)
    np.testing.assert_allclose(rec.numpy(), -vae.decode(z[0]).log_prob(x).numpy().mean(), rtol=1e-5)
    np.testing.assert_allclose(kl.numpy(), tfd.kl_divergence(q, vae.prior()).numpy().mean(), rtol=1e-6)


def test_iwae_with_one_sample_is_the_elbo_on_the_same_sample(digits):
    tf.keras.utils.set_random_seed(0)  # the weights: this test must not depend on the tests run before it
    vae = build_vae("logistic", (8, 8, 1), latent_dim=3)
    x = digits.x_test[:8]
    q = vae.posterior(x)
    z = q.sample(seed=(1, 2))
    _, rec, _ = vae.elbo(x, z=z)
    sampled_kl = q.log_prob(z) - vae.prior().log_prob(z)
    np.testing.assert_allclose(vae.iwae_bound(x, 1, z=z[None]).numpy(), (rec - sampled_kl).numpy(), rtol=1e-5)
    # and in expectation (sampled KL -> closed-form KL): on the same 2000 draws, the mean log weight
    # and the ELBO differ only by the Monte-Carlo error of the sampled KL
    z = q.sample(2000, seed=(3, 4))
    iwae1 = tf.reduce_mean(vae.log_weights(x, 2000, z=z), axis=0).numpy()
    elbo = tf.reduce_mean(vae.decode(z).log_prob(x), axis=0).numpy() - vae.elbo(x)[2].numpy()
    np.testing.assert_allclose(iwae1, elbo, atol=0.5)


def test_bounds_are_ordered_on_a_trained_model(trained, digits):
    x = digits.x_test[:200]
    elbo = np.mean([trained.elbo(x, seed=(s, 0))[0].numpy() for s in range(5)])
    iwae10 = np.mean([trained.iwae_bound(x, 10, seed=(s, 1)).numpy() for s in range(5)])
    nll = trained.importance_nll(x).numpy().mean()
    assert iwae10 >= elbo, (iwae10, elbo)
    assert nll <= -elbo and -nll >= iwae10 - 0.05, (nll, iwae10, elbo)
    assert np.isfinite(nll)


@pytest.mark.parametrize("objective,head,k", [("elbo", "normal_diag", 1), ("iwae", "continuous_bernoulli", 3)])
def test_short_fit_lowers_negative_elbo(objective, head, k, digits):
    tf.keras.utils.set_random_seed(0)
    vae = compile_model(build_vae(head, (8, 8, 1), k, latent_dim=8, objective=objective, iw_samples=5))
    x = digits.x_train[:512]
    before = -vae.elbo(x)[0].numpy().mean()
    h = vae.fit(x, x, batch_size=64, epochs=4, verbose=0).history
    after = -vae.elbo(x)[0].numpy().mean()
    assert after < before - 1.0, (before, after)
    assert set(h) == {"loss", "reconstruction", "kl"} and all(np.isfinite(h["kl"]))
    grads = tf.GradientTape()
    with grads:
        loss = -tf.reduce_mean(vae.iwae_bound(x[:32], 3))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads.gradient(loss, vae.trainable_variables))


def test_cli_vae_run(tmp_path, capsys):
    out = tmp_path / "vae"
    main(["train", "--model", "vae", "--dataset", "digits", "--head", "normal_diag", "--epochs", "3",
          "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "vae" and m["objective"] == "elbo" and "-ELBO" in m["loss_units"]
    assert m["test_nll_nats"] <= -m["test_elbo_nats"] + 0.5  # importance sampling tightens the bound
    assert np.isfinite(m["bits_per_dim"]) and 0 < m["l2_percent"] < 100
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert "test ELBO" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--objective", "iwae"], "needs --model vae"),
    (["--model", "vae", "--objective", "iwae", "--iw-samples", "0"], "iw_samples"),
    (["--model", "vae", "--arch", "cnn"], "arch must be one of mlp, cnn_dense, conv, dense_block; got 'cnn'"),
])
def test_cli_vae_bad_arguments(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x")] + argv)
