"""Training: a short fit lowers the NLL, the CLI writes its outputs, NaN runs are retried."""
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import FOREIGN_LINE, require_dataset
from tfp_ae.cli import main
from tfp_ae.config import RunConfig
from tfp_ae.heads import HEADS
from tfp_ae.models import build_model, compile_model
from tfp_ae.predict import nll_per_image
from tfp_ae.train import DivergedError, fit

CASES = [(name, k) for name, cls in HEADS.items() for k in ([1, 3] if cls.mixable else [1])]


@pytest.mark.parametrize("name,k", CASES)
def test_short_fit_lowers_nll(name, k, digits):
    tf.keras.utils.set_random_seed(0)
    x = digits.x_train[:512]
    model = compile_model(build_model(name, x.shape[1:], k))
    before = nll_per_image(model, x).mean()
    model.fit(x, x, batch_size=64, epochs=3, verbose=0)
    after = nll_per_image(model, x).mean()
    assert np.isfinite(after) and after < before - 1.0, (before, after)


def test_cli_train_writes_metrics_and_figure(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--dataset", "digits", "--head", "normal_diag", "--epochs", "2", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    for key in ("dataset", "head", "components", "arch", "epochs", "num_params", "seconds_per_epoch",
                "test_nll_nats", "l2_percent", "bits_per_dim", "psnr", "ssim", "calibration"):
        assert key in m, key
    assert m["dataset"] == "digits" and m["epochs"] == 2 and len(m["seconds_per_epoch"]) == 2
    assert m["num_params"] == build_model("normal_diag", (8, 8, 1)).count_params()
    assert 0 < m["l2_percent"] < 100 and np.isfinite(m["test_nll_nats"])
    # bits/dim = NLL on dequantised data / (D ln 2) + log2(17) for the 17-level digits
    assert np.isclose(m["bits_per_dim"], m["test_nll_dequantized_nats"] / (64 * np.log(2)) + np.log2(17))
    png = (out / "reconstructions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "bits/dim" in capsys.readouterr().out


def test_cli_mse_reports_its_nll_meaning(tmp_path, capsys):
    main(["train", "--dataset", "digits", "--head", "mse", "--epochs", "1", "--no-fid", "--no-extra-figures",
          "--out", str(tmp_path / "r")])
    assert "unit-variance normal" in capsys.readouterr().out
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "unit-variance" in m["nll_note"]


@pytest.mark.parametrize("argv,match", [
    (["--head", "gauss"], "unknown head 'gauss'"),
    (["--head", "normal_diag", "--components", "0"], "components must be an integer >= 1; got 0"),
    (["--head", "mse", "--components", "10"], "does not mix"),
])
def test_cli_bad_arguments_exit_with_clear_error(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x")] + argv)


def test_cli_lists_heads(capsys):
    main(["heads"])
    out = capsys.readouterr().out
    assert all(name in out for name in HEADS)
    assert "308504" in out  # normal_full on 28x28: 784 + 784*785/2


def test_the_cli_prints_no_tensorflow_log_lines_unless_verbose():
    """Issue 40: `tfp-ae heads` and `--help` in a fresh process print no C++ log line of
    TensorFlow (`I0000 ...`, `E0000 ... cuInit`, absl's notice), whatever TF_CPP_MIN_LOG_LEVEL the
    caller has; `-v` starts again with them shown and still works."""
    import os
    import re
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFP_AE_TF_LOGS")}
    native = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)", re.M)
    for argv in (["heads"], ["train", "--help"]):
        done = subprocess.run([sys.executable, "-m", "tfp_ae", *argv], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert not native.search(done.stderr), done.stderr
        assert "normal_diag" in done.stdout or "(default: fashion_mnist)" in done.stdout
    loud = subprocess.run([sys.executable, "-m", "tfp_ae", "-v", "heads"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert loud.returncode == 0 and "normal_diag" in loud.stdout, loud.stderr


def test_documented_commands_print_only_the_package_lines(tmp_path):
    """Issue 48: in fresh processes, `train`, `export --tflite` (TensorFlow Lite's deprecation warning
    and XNNPACK INFO line) and `score --novelty` write no TensorFlow, TensorFlow Lite or absl line."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFP_AE_TF_LOGS")}
    run_dir = str(tmp_path / "run")
    for argv in (["train", "--dataset", "digits", "--classes", "3", "--epochs", "1", "--no-fid", "--tsne-images", "0",
                  "--out", run_dir],
                 ["export", run_dir, "--out", str(tmp_path / "export"), "--tflite"],
                 ["score", run_dir, "--data", "digits", "--novelty", "--out", str(tmp_path / "novelty")]):
        done = subprocess.run([sys.executable, "-m", "tfp_ae", *argv], capture_output=True, text=True, env=env,
                              timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        for stream in (done.stdout, done.stderr):
            assert not FOREIGN_LINE.search(stream), (argv[0], stream[-3000:])
        if argv[0] == "train":  # its last line names the run folder and every file in it
            last = done.stdout.strip().splitlines()[-1]
            assert last.startswith(f"wrote {run_dir}/: "), last
            for name in ("calibration.png", "checkpoints/", "config.json", "metrics.json", "reconstructions.png",
                         "samples.png", "state.json"):
                assert name in last, (name, last)
    assert (tmp_path / "export" / "tflite" / "log_prob.tflite").exists()


def test_the_other_commands_print_only_the_package_lines(tmp_path):
    """Issue 48: `grid`, `table`, `convert`, `toy2d` and `augment` (of a mixture run) also write no
    TensorFlow, TensorFlow Lite or absl line, in fresh processes in a user's environment."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFP_AE_TF_LOGS")}
    quick = ["--epochs", "1", "--no-fid", "--tsne-images", "0", "--eval-images", "20", "--train-limit", "256",
             "--no-extra-figures"]
    for argv in (["grid", "--dataset", "digits", "--heads", "mse", "-K", "1", "--out", "grid", *quick],
                 ["table", "grid/results.csv", "--out", "table"],
                 ["convert", "digits", "shards"],
                 ["toy2d", "--steps", "20", "--datasets", "8gaussians", "--out", "toy"],
                 ["train", "--dataset", "digits", "--head", "normal_diag", "-K", "2", "--out", "mix", *quick],
                 ["augment", "mix", "--out", "augmented.npz", "--limit", "20"]):
        done = subprocess.run([sys.executable, "-m", "tfp_ae", *argv], capture_output=True, text=True, env=env,
                              timeout=600, cwd=tmp_path)
        assert done.returncode == 0, (argv[0], done.stderr[-3000:])
        for stream in (done.stdout, done.stderr):
            assert not FOREIGN_LINE.search(stream), (argv[0], stream[-3000:])
    assert (tmp_path / "augmented.npz").exists() and list((tmp_path / "shards").glob("*.tfrecord"))


class _PoisonWeights(tf.keras.callbacks.Callback):
    """Sets the decoder bias to NaN at the start of epoch 2, as a diverging run would."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            w = self.model.trainable_weights[-1]  # decoder bias: NaN reaches the loss
            w.assign(tf.fill(w.shape, np.nan))


def test_nan_loss_is_retried_then_reported(digits):
    cfg = RunConfig(dataset="digits", head="normal_diag", epochs=3, retries=1, verbose=0)
    with pytest.raises(DivergedError, match="NaN loss in all 2 attempt") as e:
        fit(cfg, digits.x_train[:256], 17, callbacks=[_PoisonWeights()])
    assert "'seed': 0" in str(e.value) and "'seed': 1" in str(e.value)


def test_same_seed_same_result(digits):
    cfg = RunConfig(dataset="digits", head="normal_diag", epochs=2, verbose=0, seed=3)
    losses = [fit(cfg, digits.x_train[:256], 17)[1]["loss"] for _ in range(2)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_one_epoch_on_real_data(name, tmp_path):
    require_dataset(name)
    # --no-fid: the FID classifier would train on all 60,000 images (1.5 min); FID is tested on digits (test_fid),
    # Figures 3-4 (a t-SNE of 1,000 test images) in test_figures and the end-to-end digits run above
    main(["train", "--dataset", name, "--head", "normal_diag", "--epochs", "1", "--train-limit", "2048",
          "--out", str(tmp_path / name), "--no-fid", "--no-extra-figures"])
    m = json.loads((tmp_path / name / "metrics.json").read_text())
    assert m["num_params"] == 76864 and m["train_images"] == 2048
    assert 0 < m["l2_percent"] < 20 and np.isfinite(m["bits_per_dim"])


CALIBRATION_HEADS = [("normal_diag", 1), ("normal_diag", 3), ("student_t_diag", 1), ("logistic", 1), ("maf", 1),
                     ("normal_lowrank", 1), ("matrix_normal_diag", 1), ("continuous_bernoulli", 1)]


@pytest.mark.parametrize("name,k", CALIBRATION_HEADS)
def test_pixels_drawn_from_the_model_itself_cover_every_level(name, k, digits):
    """Issue 41: the PIT of a draw of the model's own distribution is uniform, so the coverage of
    every central interval equals its level (exact CDFs, mixtures of them, and the randomised ranks
    of the sample-based MAF), and the PIT histogram is flat."""
    from tfp_ae.calibration import LEVELS, coverage_at
    tf.keras.utils.set_random_seed(1)
    model = build_model(name, digits.image_shape, num_components=k, min_df=3.0 if "student" in name else None)
    x = tf.constant(digits.x_test[:200])
    dist = model(x, training=False)
    drawn = tf.cast(model.head.sample(dist, 1, seed=(3, 4))[0], tf.float32)
    u = model.head.pit(dist, drawn, seed=tf.constant([5, 6], tf.int32)).numpy()
    assert u.shape == x.shape and np.all((u >= 0) & (u <= 1))
    np.testing.assert_allclose(coverage_at(u), LEVELS, atol=0.02)
    hist = np.histogram(u, bins=10, range=(0, 1))[0] / u.size
    np.testing.assert_allclose(hist, 0.1, atol=0.02)


def test_pit_and_crps_against_scipy_references(digits):
    """PIT = the marginal CDF (scipy.stats.norm / t), and CRPS = the integral of (F(z) - 1{z >= y})^2
    (scipy.integrate.quad), for one-component normal and Student-t heads and a normal mixture."""
    from scipy import integrate, stats

    from tfp_ae.calibration import pixel_crps
    x = tf.constant(digits.x_test[:3])
    for name, k in (("normal_diag", 1), ("student_t_diag", 1), ("normal_diag", 2)):
        tf.keras.utils.set_random_seed(2)
        model = build_model(name, digits.image_shape, num_components=k, min_df=1.5 if "student" in name else None)
        dist = model(x, training=False)
        u, crps = model.head.pit(dist, x).numpy(), pixel_crps(model.head, dist, x.numpy())
        _, logits, comp = model.head._parts(dist)
        marginal = model.head.marginal(comp)
        loc = np.asarray(marginal.loc).reshape(*np.shape(marginal.loc)[:-1], -1) if k == 1 else np.asarray(marginal.loc)
        scale = np.broadcast_to(np.asarray(marginal.scale), np.shape(marginal.loc))
        w = None if logits is None else np.asarray(tf.nn.softmax(logits))
        for b, i in ((0, 5), (1, 20), (2, 40)):
            y = float(x.numpy()[b].ravel()[i])
            if name == "student_t_diag":
                df = float(np.ravel(marginal.df)[b])
                cdf = lambda z: stats.t.cdf(z, df, loc.reshape(3, -1)[b, i], scale.reshape(3, -1)[b, i])  # noqa: E731
            elif k == 1:
                cdf = lambda z: stats.norm.cdf(z, loc.reshape(3, -1)[b, i], scale.reshape(3, -1)[b, i])  # noqa: E731
            else:
                lo, sc = loc.reshape(3, k, -1)[b, :, i], scale.reshape(3, k, -1)[b, :, i]
                cdf = lambda z: float(np.sum(w[b] * stats.norm.cdf(z, lo, sc)))  # noqa: E731
            assert u[b].ravel()[i] == pytest.approx(cdf(y), abs=2e-5)
            below = integrate.quad(lambda z: cdf(z) ** 2, -np.inf, y, limit=200)[0]
            above = integrate.quad(lambda z: (1 - cdf(z)) ** 2, y, np.inf, limit=200)[0]
            assert crps[b].ravel()[i] == pytest.approx(below + above, rel=2e-3, abs=1e-6)


def test_psnr_ssim_and_calibration_metrics(digits):
    from tfp_ae.calibration import calibration
    from tfp_ae.evaluate import psnr_ssim
    from tfp_ae.predict import point_estimates
    x = digits.x_test[:50]
    tf.keras.utils.set_random_seed(0)
    model = compile_model(build_model("normal_diag", x.shape[1:]))
    model.fit(digits.x_train, digits.x_train, batch_size=64, epochs=10, verbose=0)
    point = point_estimates(model, x)
    psnr, ssim = psnr_ssim(x, point)
    want = np.mean(10 * np.log10(1 / np.mean((x - point) ** 2, axis=(1, 2, 3))))
    assert psnr == pytest.approx(want, rel=1e-4) and 0 < ssim <= 1
    c = calibration(model, x, num_levels=17)
    assert c["levels"] == [0.5, 0.8, 0.9, 0.95, 0.99] and len(c["coverage"]) == 5 and c["images"] == 50
    assert all(0 <= v <= 1 for v in c["coverage"]) and c["mean_predicted_std"] > 0 and c["sigma_scale"] == 1.0
    assert c["calibration_error"] == pytest.approx(np.mean(np.abs(np.array(c["coverage"]) - c["levels"])))
    assert len(c["pit_histogram"]) == 20 and sum(c["pit_histogram"]) == pytest.approx(1) and c["crps"] > 0
    assert c["mean_abs_error"] == pytest.approx(np.mean(np.abs(x - point)), rel=1e-5)
    by = c["by_std"]
    assert len(by["calibration_error"]) == 4 and len(by["std_edges"]) == 5 and by["std_edges"] == sorted(by["std_edges"])
    assert by["mean_calibration_error"] == pytest.approx(np.mean(by["calibration_error"]))
    assert calibration(compile_model(build_model("mse", x.shape[1:])), x[:4], num_levels=17)["by_std"] is None


def test_calibration_of_a_t_without_a_variance_is_grouped_by_its_interquartile_range(digits):
    """A Student-t head with df <= 2 (an untrained `student_t_diag`: df = softplus(0) + 1e-6) has no finite std;
    its `by_std` groups the pixels by the width of their central 50 % interval (`"spread": "iqr"`): the
    groups' coverages are those of the PIT values grouped by hi - lo of `model.interval(x, 0.5)`."""
    from tfp_ae.calibration import calibration, calibration_by_std, pit_values
    from tfp_ae.data import dequantize
    tf.keras.utils.set_random_seed(0)
    model = compile_model(build_model("student_t_diag", digits.image_shape))
    x = digits.x_test[:20]
    assert not np.isfinite(model.variance(x).numpy()).any()
    c = calibration(model, x, num_levels=17, seed=3)
    by = c["by_std"]
    assert by["spread"] == "iqr" and by["iqr_edges"] == sorted(by["iqr_edges"]) and by["iqr_edges"][0] > 0
    lo, hi = model.interval(x, 0.5)
    u, _ = pit_values(model, x, 3, targets=dequantize(x, 17, seed=3))
    want = calibration_by_std(u, (hi - lo).numpy())
    np.testing.assert_allclose(by["coverage"], want["coverage"])
    assert by["iqr_edges"] == pytest.approx(want["std_edges"], rel=1e-6)


def test_calibration_by_std_shows_errors_that_cancel_over_all_pixels():
    """Half the pixels (small std) with intervals too wide (u in the middle half), half (large std) too
    narrow (u in the outer quarters): over all pixels the PIT is uniform and the calibration error about
    0, but within the std groups it is large; pixels whose u is uniform in every group are calibrated in
    every group."""
    from tfp_ae.calibration import LEVELS, calibration_by_std, coverage_at
    rng = np.random.default_rng(0)
    n = 200_000
    std = np.r_[rng.uniform(0.01, 0.02, n), rng.uniform(0.1, 0.2, n)]
    outer = rng.uniform(0, 0.5, n)
    u = np.r_[rng.uniform(0.25, 0.75, n), np.where(outer < 0.25, outer, outer + 0.5)]
    assert np.mean(np.abs(np.array(coverage_at(u)) - LEVELS)) < 0.005
    by = calibration_by_std(u, std, bins=2)
    assert min(by["calibration_error"]) > 0.1 and by["std_edges"][1] <= 0.02 < by["std_edges"][2]
    uniform = calibration_by_std(rng.uniform(size=2 * n), std)
    assert max(uniform["calibration_error"]) < 0.005
    assert calibration_by_std(u, np.r_[std[:-1], np.nan]) is None


@pytest.mark.parametrize("name,k", [("maf", 1), ("normal_diag", 3), ("mse", 1)])
def test_point_and_variance_in_one_pass_equal_the_separate_ones(name, k, digits):
    """MAF draws its 50 samples once for both (same stateless seed and batches: the same numbers)."""
    from tfp_ae.predict import point_and_variance, point_estimates, variance_maps
    x = digits.x_test[:20]
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, x.shape[1:], k)
    point, var = point_and_variance(model, x, batch_size=8)
    assert point.shape == var.shape == x.shape
    np.testing.assert_allclose(point, point_estimates(model, x, batch_size=8), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(var, variance_maps(model, x, batch_size=8), rtol=1e-5, atol=1e-7)
    assert np.isnan(var).all() == (name == "mse")


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_steps_per_execution_gives_the_same_training(kind, digits):
    """Several steps per compiled call (the default) only changes how often Python is entered:
    the loss curve and the weights equal one step per call, bit for bit, including the truncated
    last call of an epoch (1000 images / 64 = 16 steps, 5 per call) and a VAE's per-step seeds."""
    config = RunConfig(dataset="digits", model=kind, head="normal_diag", epochs=2, batch_size=64, train_limit=1000,
                       dequantize=True, latent_dim=4, verbose=0)
    calls = {1: [], 5: []}
    runs = [fit(RunConfig(**{**config.to_dict(), "steps_per_execution": spe}), digits.x_train[:1000], 17,
                callbacks=[tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs, c=calls[spe]:
                                                             c.append(b))])
            for spe in (1, 5)]
    (one, h1, _), (five, h5, _) = runs
    assert len(calls[1]) == 2 * 16 and calls[5] == [4, 9, 14, 15] * 2  # Keras reports the last step of each call
    assert h1["loss"] == h5["loss"]
    for a, b in zip(one.weights, five.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert int(one.optimizer.iterations) == int(five.optimizer.iterations) == 2 * 16


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_compiles_with_xla(name, digits):
    """`--jit`: one training step of every head compiles with XLA at an unknown batch size (as in
    `model.fit`), so `probe_jit` never has to fall back."""
    from tfp_ae.runtime import probe_jit
    model = build_model(name, digits.x_train.shape[1:], 1)
    assert probe_jit(model, digits.x_train[:16]) == (True, "")


def test_xla_fit_of_a_full_scale_matrix_mixture_lowers_the_loss(digits):
    """`model.fit` with `jit_compile=True`, several steps per call and a ragged last batch (300 / 64)
    on the head whose `set_diag` gradient XLA used to refuse."""
    tf.keras.utils.set_random_seed(0)
    x = digits.x_train[:300]
    model = compile_model(build_model("matrix_normal_full", x.shape[1:], 3), jit_compile=True, steps_per_execution=4)
    history = model.fit(x, x, batch_size=64, epochs=3, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0] - 1.0, history


def test_steps_per_execution_must_be_positive():
    with pytest.raises(ValueError, match="steps_per_execution must be an integer >= 1"):
        RunConfig(steps_per_execution=0).validate()


@pytest.mark.parametrize("command", ["train", "grid", "score", "export", "convert", "toy2d", "augment", "table"])
def test_help_shows_each_default_once_and_none_for_flags(command, capsys):
    """Issue 48: `--help` said "(default 0, the paper's) (default: None)" and "--no-fid ... (default: True)"."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    for option in re.split(r"\s(?=--?[a-z])", text.split("options:", 1)[1]):
        assert option.count("(default") <= 1, option
