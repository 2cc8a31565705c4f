"""Training losses (issue 41): beta-NLL (Seitzer et al. 2022) and faithful heteroscedastic training
(Stirn et al. 2023), checked against their definitions: beta = 0 is the NLL bit for bit, beta = 1
gives the mean the squared error's gradient, faithful's location gradient is the squared error's
and its dispersion gradient the NLL's; short fits lower the loss; bad settings are refused."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfp_ae.cli import main
from tfp_ae.heads import BetaNLL, faithful_loss, make_head, negative_log_likelihood
from tfp_ae.models import build_model, compile_model

SHAPE = (8, 8, 1)


def _params_and_images(head, seed=0):
    rng = np.random.default_rng(seed)
    params = tf.constant(rng.normal(size=(3, head.size)).astype(np.float32))
    x = tf.constant(rng.uniform(size=(3, *SHAPE)).astype(np.float32))
    return params, x


def _loss_and_grad(loss_fn, head, params, x):
    """Per-image loss `[B]` (a Keras `Loss` object's `call`, before Keras averages over the batch) and
    its gradient with respect to the head's flat parameters."""
    per_image = getattr(loss_fn, "call", loss_fn)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = per_image(x, head(params))
    return loss.numpy(), tape.gradient(loss, params).numpy()


@pytest.mark.parametrize("name", ["normal_diag", "logistic", "normal_identity"])
def test_beta_zero_is_the_nll_bit_for_bit(name):
    head = make_head(name, SHAPE)
    params, x = _params_and_images(head)
    want = _loss_and_grad(negative_log_likelihood, head, params, x)
    got = _loss_and_grad(BetaNLL(0.0), make_head(name, SHAPE, loss="beta_nll", beta=0.0), params, x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_beta_one_gives_the_mean_the_squared_errors_gradient():
    """Seitzer et al. 2022, Eq. 7: with beta = 1 the gradient of the mean is mu - y, whatever sigma."""
    head = make_head("normal_diag", SHAPE, loss="beta_nll", beta=1.0)
    params, x = _params_and_images(head, seed=1)
    _, grad = _loss_and_grad(head.loss, head, params, x)
    d = int(np.prod(SHAPE))
    np.testing.assert_allclose(grad[:, :d], params.numpy()[:, :d] - x.numpy().reshape(3, d), rtol=1e-4, atol=1e-5)
    # and the weighted loss is sum_i sigma_i^2 * (-log N(y_i; mu_i, sigma_i)) (stop_gradient only changes gradients)
    dist = head(params).tensor_distribution.distribution
    want = -np.sum(dist.variance().numpy() * dist.log_prob(x).numpy(), axis=(1, 2, 3))
    np.testing.assert_allclose(head.loss.call(x, head(params)).numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("name", ["normal_diag", "student_t_diag", "normal_full", "normal_lowrank", "matrix_t_diag",
                                  "logistic"])
def test_faithful_location_gradient_is_the_squared_errors_and_dispersion_gradient_the_nlls(name):
    head = make_head(name, SHAPE, loss="faithful", rank=2 if "lowrank" in name else None)
    params, x = _params_and_images(head, seed=2)
    d = int(np.prod(SHAPE))
    _, grad = _loss_and_grad(faithful_loss, head, params, x)
    np.testing.assert_allclose(grad[:, :d], params.numpy()[:, :d] - x.numpy().reshape(3, d), rtol=1e-4, atol=1e-5)
    _, nll_grad = _loss_and_grad(negative_log_likelihood, make_head(name, SHAPE, rank=2 if "lowrank" in name else None),
                                 params, x)
    np.testing.assert_allclose(grad[:, d:], nll_grad[:, d:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("location_activation", ["linear", "sigmoid"])
def test_faithful_model_trains_the_encoder_by_squared_error_alone(location_activation, digits):
    """The dispersion branch reads the code under stop_gradient: the encoder's gradient under the
    faithful loss equals its gradient under half the squared error of the location (with either
    location activation)."""
    tf.keras.utils.set_random_seed(0)
    model = build_model("normal_diag", digits.image_shape, loss="faithful", dispersion_units=16,
                        location_activation=location_activation)
    assert [layer.name for layer in model.decoder.layers if "dispersion" in layer.name] == ["dispersion_hidden",
                                                                                             "dispersion"]
    x = tf.constant(digits.x_train[:16])
    with tf.GradientTape(persistent=True) as tape:
        dist = model(x, training=True)
        faithful = tf.reduce_mean(faithful_loss(x, dist))
        se = tf.reduce_mean(0.5 * tf.reduce_sum(tf.square(x - dist.tensor_distribution.faithful_location), [1, 2, 3]))
    for a, b in zip(tape.gradient(faithful, model.encoder.trainable_variables),
                    tape.gradient(se, model.encoder.trainable_variables)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    linear = build_model("normal_diag", digits.image_shape, loss="faithful", dispersion_units=0)
    assert not any("dispersion_hidden" in layer.name for layer in linear.decoder.layers)


def test_a_sigmoid_location_lies_in_the_unit_interval_and_the_default_is_linear(digits):
    """`location_activation="sigmoid"`: the location is sigmoid(the linear decoder's output), inside
    (0, 1) even for inputs far outside the pixels' range; the default keeps tfp_ae 0.3's linear location."""
    x = tf.constant(np.concatenate([digits.x_test[:4], 50 * digits.x_test[4:8] - 25]))
    models = {}
    for activation in ("linear", "sigmoid"):
        tf.keras.utils.set_random_seed(0)
        models[activation] = build_model("normal_diag", digits.image_shape, loss="faithful", dispersion_units=8,
                                         location_activation=activation)
    assert build_model("normal_diag", digits.image_shape, loss="faithful").get_config()["location_activation"] == "linear"
    linear, sigmoid = (models[a](x).tensor_distribution.faithful_location.numpy() for a in ("linear", "sigmoid"))
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-linear)), rtol=1e-5, atol=1e-6)
    assert linear.min() < 0 and linear.max() > 1 and 0 <= sigmoid.min() and sigmoid.max() <= 1
    from tfp_ae.figures import model_label
    assert model_label(models["sigmoid"]) == "normal_diag K=1 faithful (sigmoid location) (mlp)"
    assert model_label(models["linear"]) == "normal_diag K=1 faithful (mlp)"
    with pytest.raises(ValueError, match=r"location_activation must be one of linear, sigmoid; got 'tanh'"):
        build_model("normal_diag", digits.image_shape, loss="faithful", location_activation="tanh")
    for head, k in (("maf", 1), ("normal_diag", 3), ("bernoulli", 1)):  # no single location: refused, not ignored
        with pytest.raises(ValueError, match=f"needs a head whose first outputs are its location.*got {head} K={k}"):
            build_model(head, digits.image_shape, k, location_activation="sigmoid")


@pytest.mark.parametrize("head,loss", [("mse", "nll"), ("normal_diag", "nll"), ("logistic", "beta_nll"),
                                       ("normal_lowrank", "nll")])
def test_a_sigmoid_location_is_honoured_under_every_loss(head, loss, digits, tmp_path):
    """Issue 50, item 5: `--location-activation sigmoid` was silently ignored outside `faithful`. Now the
    decoder's first D outputs (the location) pass through the sigmoid and the rest (scales) unchanged:
    the same weights give sigmoid(linear location) and identical other parameters; the mean lies in
    (0, 1) for inputs far outside the pixels; the setting survives save / load_model in a fresh process."""
    x = tf.constant(np.concatenate([digits.x_test[:3], 50 * digits.x_test[3:6] - 25]))
    opts = dict(rank=2) if "lowrank" in head else {}
    sigmoid = build_model(head, digits.image_shape, loss=loss, location_activation="sigmoid", **opts)
    linear = build_model(head, digits.image_shape, loss=loss, **opts)
    linear.set_weights(sigmoid.get_weights())
    d = int(np.prod(digits.image_shape))
    p_lin = linear.decoder(linear.encoder(x)).numpy()
    p_sig = sigmoid.decoder(sigmoid.encoder(x)).numpy()
    np.testing.assert_allclose(p_sig[:, :d], 1 / (1 + np.exp(-p_lin[:, :d])), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(p_sig[:, d:], p_lin[:, d:])
    mean = sigmoid(x).mean().numpy()
    assert 0 <= mean.min() and mean.max() <= 1 and sigmoid.get_config()["location_activation"] == "sigmoid"
    from tfp_ae.figures import model_label
    assert "(sigmoid location)" in model_label(sigmoid)
    sigmoid.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x.numpy())
    code = textwrap.dedent(f"""
        import numpy as np, tf_keras, tfp_ae
        m = tf_keras.models.load_model({str(tmp_path / 'm.keras')!r})
        np.save({str(tmp_path / 'mean.npy')!r}, m(np.load({str(tmp_path / 'x.npy')!r})).mean().numpy())
        print(m.get_config()["location_activation"])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split()[-1] == "sigmoid", r.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "mean.npy"), mean, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,loss", [("normal_diag", "beta_nll"), ("logistic", "beta_nll"), ("normal_diag", "faithful"),
                                       ("student_t_diag", "faithful"), ("matrix_normal_diag", "faithful")])
def test_a_short_fit_lowers_the_loss(name, loss, digits):
    tf.keras.utils.set_random_seed(0)
    model = compile_model(build_model(name, digits.image_shape, loss=loss, min_df=3.0 if "student" in name else None,
                                      location_activation="sigmoid" if name == "student_t_diag" else "linear"))
    history = model.fit(digits.x_train, digits.x_train, batch_size=64, epochs=5, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]


@pytest.mark.parametrize("argv,match", [
    (["--loss", "beta_nll", "--beta", "1.5"], r"beta must be a number in \[0, 1\]; got 1.5"),
    (["--loss", "beta_nll", "--beta", "nan"], r"beta must be a number in \[0, 1\]; got nan"),
    (["--loss", "beta_nll", "--head", "student_t_diag"], "cannot take --loss beta_nll.*heads that take it: logistic"),
    (["--loss", "faithful", "--head", "maf"], "cannot take --loss faithful: maf has no location"),
    (["--loss", "faithful", "-K", "3"], "mixtures have no single location"),
    (["--loss", "faithful", "--dispersion-units", "-1"], r"dispersion_units must be an integer >= 0; got -1"),
    (["--loss", "faithful", "--model", "vae"], "a vae trains on its bound"),
    (["--head", "maf", "--location-activation", "sigmoid"], r"--location-activation sigmoid applies to an autoencoder "
     r"whose head has a location output.*--head maf .*would be ignored"),
    (["-K", "3", "--location-activation", "sigmoid"], r"--components 3, where it would be ignored"),
    (["--model", "vae", "--location-activation", "sigmoid"], r"got --model vae"),
])
def test_bad_loss_settings_are_refused_before_anything_is_written(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x")] + argv)
    assert not (tmp_path / "x").exists()


def test_an_unknown_location_activation_is_refused_by_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x"), "--loss", "faithful",
              "--location-activation", "tanh"])
    assert "--location-activation: invalid choice: 'tanh'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
