"""tfp_ae models used as a Keras user would: save / load_model with default arguments in a fresh
process, predict, clone_model, get_config / from_config, mixed precision, callbacks."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tf_keras as tfk

from tfp_ae._tf import tf, tfd
from tfp_ae.config import RunConfig
from tfp_ae.heads import HEADS
from tfp_ae.models import SAVE_FORMATS, Autoencoder, build_model, compile_model
from tfp_ae.runtime import precision_policy
from tfp_ae.train import run
from tfp_ae.vae import VAE, build_vae

IMAGE_SHAPE = (8, 8, 1)
CASES = [(kind, name, k) for kind in ("ae", "vae") for name, cls in HEADS.items()
         for k in ([1, 2] if cls.mixable else [1])]
# the convolutional architectures (their layers, e.g. BiasActivation, must save and load too)
# saved and loaded: every head and K as an autoencoder; as a VAE decoder every head with K = 1 and two
# mixtures (the head saves through the same config either way)
SAVE_CASES = [(*c, "mlp") for c in CASES if c[0] == "ae" or c[2] == 1 or c[1] in ("normal_diag", "student_t_diag")]
SAVE_CASES += [("ae", "matrix_normal_diag", 1, "cnn"), ("ae", "normal_diag", 2, "cnn_dense"),
               ("vae", "normal_diag", 1, "cnn_dense"), ("ae", "normal_lowrank", 2, "conv"), ("vae", "logistic", 1, "conv")]


SAVED_MODEL_HEADS = ("normal_diag", "student_t_full", "normal_lowrank", "student_t_lowrank", "matrix_t_full", "maf",
                     "bernoulli", "continuous_bernoulli", "logistic")  # each head module's kinds of parameters


def saved_model_too(kind, head, k, arch):
    """SavedModel (slow to write) for a head of each family (autoencoder, K = 1), a VAE with and
    without a mixture, and the convolutional architectures; the `.keras` format for every case."""
    return (kind == "ae" and k == 1 and head in SAVED_MODEL_HEADS) or head == "normal_diag" or arch != "mlp"


def _build(kind, head, k, arch="mlp"):
    if kind == "ae":
        return build_model(head, IMAGE_SHAPE, k, arch)
    return build_vae(head, IMAGE_SHAPE, k, arch=arch, latent_dim=4)


def _fresh_python(code, tmp_path):
    """Run `code` in a new Python process (no state shared with the test); returns its stdout."""
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(code))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_every_model_saves_and_loads_with_default_arguments_in_a_fresh_process(tmp_path, digits):
    """Every head (K = 1, and K = 2 where it mixes) as an autoencoder and (K = 1) as a VAE decoder in
    the `.keras` format, each head once as a SavedModel (`saved_model_too`), and the convolutional
    architectures (`cnn`, `cnn_dense`) for a few heads:
    `tf_keras.models.load_model(path)` after `import tfp_ae`, in a new process, gives the same
    class, a compiled model that returns a distribution with the same log_prob (1e-6) and `predict`
    equal to the point estimate; the models also saved as SavedModels (a head of each family, K = 1, the VAEs
    and the convolutional architectures) were trained for a step before saving and take one more `fit` step
    after loading (a `fit` traces a training graph: 5-10 s a model here, so not for all 60)."""
    x = digits.x_train[:32]
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for kind, head, k, arch in SAVE_CASES:
        tfk.utils.set_random_seed(0)
        model = compile_model(_build(kind, head, k, arch))
        fit = saved_model_too(kind, head, k, arch)
        if fit:
            model.fit(x, x, batch_size=32, epochs=1, verbose=0)
        key = f"{kind}-{head}-{k}-{arch}"
        formats = ["keras", "savedmodel"] if fit else ["keras"]
        for fmt in formats:
            model.save(str(tmp_path / (f"{key}.keras" if fmt == "keras" else key)))
        expected[key] = dict(log_prob=model.log_prob(x[:4]).numpy().tolist(), cls=type(model).__name__,
                             point=model.point_estimate(x[:4]).numpy().tolist(), formats=formats, fit=fit)
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    stdout = _fresh_python(f"""
        import json, numpy as np
        import tfp_ae
        import tf_keras
        from tensorflow_probability import distributions as tfd
        folder = {str(tmp_path)!r}
        x = np.load(folder + "/x.npy")
        results = {{}}
        for key, want in json.load(open(folder + "/expected.json")).items():
            for fmt in want["formats"]:
                path = f"{{folder}}/{{key}}.keras" if fmt == "keras" else f"{{folder}}/{{key}}"
                model = tf_keras.models.load_model(path)
                dist = model(x[:4])
                result = dict(cls=type(model).__name__, is_distribution=isinstance(dist, tfd.Distribution),
                              log_prob=model.log_prob(x[:4]).numpy().tolist(),
                              predict=model.predict(x[:4], verbose=0).tolist())
                if want["fit"]:  # compiled: trains on
                    result["loss"] = float(model.fit(x, x, batch_size=32, epochs=1, verbose=0).history["loss"][0])
                results[f"{{key}}/{{fmt}}"] = result
        print(json.dumps(results))
    """, tmp_path)
    results = json.loads(stdout.strip().splitlines()[-1])
    assert len(results) == sum(len(w["formats"]) for w in expected.values())
    assert sum("savedmodel" in w["formats"] for w in expected.values()) >= len(SAVED_MODEL_HEADS)
    for name, got in results.items():
        want = expected[name.split("/")[0]]
        assert got["cls"] == want["cls"] and got["is_distribution"], name
        np.testing.assert_allclose(got["log_prob"], want["log_prob"], rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["predict"], want["point"], rtol=1e-6, atol=1e-6, err_msg=name)
        assert ("loss" in got) == want["fit"] and np.isfinite(got.get("loss", 0.0)), name


LOSS_CASES = [("normal_diag", "faithful", "mlp"), ("student_t_diag", "faithful", "cnn_dense"),
              ("logistic", "beta_nll", "mlp"), ("normal_diag", "faithful", "conv")]


def test_models_trained_with_beta_nll_and_faithful_save_load_and_clone_in_a_fresh_process(tmp_path, digits):
    """Issue 41: a model built with `loss="faithful"` or `"beta_nll"` saves (`.keras` and SavedModel) and
    loads with default arguments in a new process as the same model, compiled with the same loss (the
    loss of one batch before and after loading agree), and `clone_model` keeps the loss and branch."""
    x = digits.x_train[:32]
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for head, loss, arch in LOSS_CASES:
        tfk.utils.set_random_seed(0)
        model = compile_model(build_model(head, IMAGE_SHAPE, arch=arch, loss=loss, beta=0.3 if loss == "beta_nll" else None,
                                          dispersion_units=8, min_df=3.0 if "student" in head else None,
                                          location_activation="sigmoid" if arch == "cnn_dense" else "linear"))
        model.fit(x, x, batch_size=32, epochs=1, verbose=0)
        copy = tfk.models.clone_model(model)
        assert copy.get_config() == model.get_config() and copy.head.training_loss == loss
        assert [w.shape for w in copy.weights] == [w.shape for w in model.weights]
        key = f"{head}-{loss}-{arch}"
        model.save(str(tmp_path / f"{key}.keras"))
        model.save(str(tmp_path / key))
        expected[key] = dict(log_prob=model.log_prob(x[:4]).numpy().tolist(),
                             point=model.point_estimate(x[:4]).numpy().tolist(),
                             loss=float(model.evaluate(x, x, batch_size=32, verbose=0)))
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    stdout = _fresh_python(f"""
        import json, numpy as np
        import tfp_ae
        import tf_keras
        folder = {str(tmp_path)!r}
        x = np.load(folder + "/x.npy")
        results = {{}}
        for key in json.load(open(folder + "/expected.json")):
            for path in (f"{{folder}}/{{key}}.keras", f"{{folder}}/{{key}}"):
                model = tf_keras.models.load_model(path)
                results[path] = dict(key=key, loss_name=model.head.training_loss,
                                     log_prob=model.log_prob(x[:4]).numpy().tolist(),
                                     predict=model.predict(x[:4], verbose=0).tolist(),
                                     loss=float(model.evaluate(x, x, batch_size=32, verbose=0)))
        print(json.dumps(results))
    """, tmp_path)
    results = json.loads(stdout.strip().splitlines()[-1])
    assert len(results) == 2 * len(LOSS_CASES)
    for path, got in results.items():
        want = expected[got["key"]]
        assert got["loss_name"] == got["key"].split("-")[1], path
        np.testing.assert_allclose(got["log_prob"], want["log_prob"], rtol=1e-6, atol=1e-6, err_msg=path)
        np.testing.assert_allclose(got["predict"], want["point"], rtol=1e-6, atol=1e-6, err_msg=path)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), path


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_hdf5_is_refused_with_the_supported_formats(kind, tmp_path):
    model = _build(kind, "normal_diag", 1)
    with pytest.raises(ValueError, match="HDF5.*'.keras'.*SavedModel"):
        model.save(str(tmp_path / "m.h5"))
    with pytest.raises(ValueError, match="HDF5"):
        model.save(str(tmp_path / "m"), save_format="h5")
    assert "SavedModel" in SAVE_FORMATS


@pytest.mark.parametrize("kind,head,k", [("ae", "maf", 1), ("ae", "matrix_t_full", 2), ("vae", "student_t_diag", 2)])
def test_clone_model_and_from_config_rebuild_the_same_model(kind, head, k):
    model = _build(kind, head, k)
    for copy in (tfk.models.clone_model(model), type(model).from_config(model.get_config())):
        assert type(copy) is type(model) and copy.get_config() == model.get_config()
        assert (copy.head.head_name, copy.head.num_components) == (head, k)
        assert [w.shape for w in copy.weights] == [w.shape for w in model.weights]
        assert isinstance(copy(np.zeros((2, *IMAGE_SHAPE), np.float32)), tfd.Distribution)


def _force_tiny_df(model):
    """Decoder output -5 everywhere: every df = 1e-6 + softplus(-5) ~ 0.0067 < 1 (no mean)."""
    dense = model.decoder.layers[-1]
    dense.kernel.assign(tf.zeros_like(dense.kernel))
    dense.bias.assign(tf.fill(dense.bias.shape, -5.0))


@pytest.mark.parametrize("kind,head,k", [c for c in CASES if c[0] == "ae"] + [("vae", "student_t_identity", 2)])
def test_predict_is_the_finite_point_estimate(kind, head, k, digits):
    x = digits.x_test[:6]
    model = _build(kind, head, k)
    np.testing.assert_allclose(model.predict(x, verbose=0), model.point_estimate(x).numpy(), rtol=1e-6, atol=1e-7)
    if HEADS[head].point == "mode":
        _force_tiny_df(model)
        assert np.all(model.head._parts(model(x))[2].df.numpy() < 1)  # no mean (NaN for multivariate t)
    got = model.predict(x, verbose=0)
    assert got.shape == x.shape and np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(got, model.point_estimate(x).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind,head", [("ae", h) for h in HEADS] + [("vae", "normal_diag"), ("vae", "maf")])
def test_every_head_fits_under_mixed_bfloat16(kind, head, digits):
    """Layers compute in bfloat16, the head (distribution and loss) in float32; the loss falls."""
    x = digits.x_train[:256]
    tfk.utils.set_random_seed(0)
    with precision_policy("mixed_bfloat16"):
        model = compile_model(_build(kind, head, 1))
    assert tfk.mixed_precision.global_policy().name == "float32"  # restored after building
    assert model.encoder.layers[-1].compute_dtype == "bfloat16"
    assert model.head.compute_dtype == "float32"
    assert model(x[:2]).log_prob(x[:2]).dtype == tf.float32
    loss = model.fit(x, x, batch_size=64, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0], loss


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="float16 is tested where a GPU is present")
@pytest.mark.parametrize("head", ["normal_diag", "student_t_full", "maf", "matrix_normal_full"])
def test_heads_fit_under_mixed_float16_on_gpu(head, digits):
    x = digits.x_train[:256]
    with precision_policy("mixed_float16"):
        model = compile_model(build_model(head, IMAGE_SHAPE))
    loss = model.fit(x, x, batch_size=64, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0], loss


def test_early_stopping_through_run_is_not_a_divergence_and_is_not_resumed(tmp_path, capsys):
    stop = tfk.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)  # stops after epoch 2
    config = RunConfig(dataset="digits", head="normal_diag", epochs=6, train_limit=256, eval_images=20,
                       fid=False, extra_figures=False, verbose=0, out=str(tmp_path / "r"))
    _, metrics = run(config, callbacks=[stop])
    assert len(metrics["train_loss"]) == 2 and metrics["attempts"] == [dict(seed=0, status="ok")]
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["stopped_early"] and len(state["epochs"]) == 2
    assert "stopped by a callback after epoch 2 of 6" in capsys.readouterr().out


def test_tensorboard_and_validation_split(tmp_path):
    pytest.importorskip("tensorboard")
    config = RunConfig(dataset="digits", head="normal_diag", epochs=2, train_limit=300, validation_split=0.2,
                       eval_images=20, fid=False, extra_figures=False, verbose=0, tensorboard=True,
                       out=str(tmp_path / "r"))
    _, metrics = run(config)
    assert len(metrics["val_loss"]) == 2 and all(np.isfinite(metrics["val_loss"]))
    assert metrics["train_images"] == 300
    for split in ("train", "validation"):
        assert list((tmp_path / "r" / "logs" / split).glob("events.out.tfevents.*")), split
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "r" / "logs" / "images"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"inputs", "point_estimates", "interval_width", "prior_samples", "bits_per_dim"} <= set(events.Tags()["tensors"])
    assert [e.step for e in events.Tensors("bits_per_dim")] == [0, 1]


def test_config_errors_name_the_setting():
    for bad, match in [(dict(arch="rnn"), "arch must be one of"), (dict(precision="float8"), "precision"),
                       (dict(components=0), "components must be an integer >= 1"),
                       (dict(head="mse", components=2), "does not mix"), (dict(validation_split=1.0), "validation_split"),
                       (dict(head="gauss"), "unknown head 'gauss'"), (dict(epochs=0), "epochs")]:
        with pytest.raises(ValueError, match=match):
            RunConfig(**bad).validate()


def test_autoencoder_and_vae_share_the_interface(digits):
    x = digits.x_test[:3]
    for model in (build_model("normal_diag", IMAGE_SHAPE), build_vae("normal_diag", IMAGE_SHAPE, latent_dim=4)):
        assert isinstance(model, (Autoencoder, VAE))
        assert model.encode(x).shape == (3, *model.code_shape)
        assert model.log_prob(x).shape == (3,)
        assert model.point_estimate(x).shape == model.variance(x).shape == x.shape
        assert isinstance(model.decode(np.zeros((3, *model.code_shape), np.float32)), tfd.Distribution)
        assert model.sample_images(2, seed=(1, 2)).shape == (2, *IMAGE_SHAPE)
