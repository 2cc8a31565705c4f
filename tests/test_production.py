"""Production use: SavedModel export reloaded in a fresh process, a killed run resumed, two-device
training, and clear errors for bad input."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfp_ae.cli import main
from tfp_ae.config import RunConfig
from tfp_ae.data import check_images, load_dataset, prepare_images
from tfp_ae.export import export_saved_model
from tfp_ae.heads import SAMPLE_SEED
from tfp_ae.predict import nll_per_image, point_estimates, variance_maps
from tfp_ae.rundir import STATE_FILE
from tfp_ae.train import load_model, run

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.getcwd())


def python(code, timeout=300):
    """Run `code` in a fresh Python process; return its stdout (fails the test on a non-zero exit)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=ENV,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def digits_config(out, **kw):
    """A short digits run without FID, t-SNE and Figures 3-4 (their 12-15 s of a 20 s run are tested in test_fid,
    test_figures and test_train's end-to-end run)."""
    return RunConfig(**dict(dict(dataset="digits", head="normal_diag", epochs=2, train_limit=512, verbose=0,
                                 eval_images=100, fid=False, tsne_images=0, extra_figures=False, out=str(out)), **kw))


# ---- export ---------------------------------------------------------------------------------
@pytest.mark.parametrize("head,k,kind", [("normal_diag", 3, "ae"), ("maf", 1, "ae"), ("logistic", 1, "vae")])
def test_saved_model_reloads_in_fresh_process_with_same_outputs(head, k, kind, tmp_path, digits):
    model, _ = run(digits_config(tmp_path / "run", head=head, components=k, model=kind))
    x = digits.x_test[:16]
    names = export_saved_model(model, tmp_path / "export")
    np.save(tmp_path / "x.npy", x)
    python(f"""
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(tmp_path / 'export')!r})
        x = tf.constant(np.load({str(tmp_path / 'x.npy')!r}))
        out = {{}}
        for name in {names!r}:
            out.update(getattr(m, name)(x, 3) if name == "sample" else getattr(m, name)(x))
        out["sig_log_prob"] = m.signatures["log_prob"](images=x)["log_prob"]
        out["default"] = m.signatures["serving_default"](images=x)["reconstruction"]
        np.savez({str(tmp_path / 'out.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})
    """)
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(got["reconstruction"], point_estimates(model, x), rtol=1e-6, atol=1e-6)
    if kind == "vae":  # marginal log p(x) by importance sampling with the fixed seed
        np.testing.assert_allclose(got["log_prob"], -model.importance_nll(x, seed=SAMPLE_SEED).numpy(), rtol=1e-5)
    else:
        np.testing.assert_allclose(got["log_prob"], -nll_per_image(model, x), rtol=1e-6)
    np.testing.assert_allclose(got["sig_log_prob"], got["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(got["variance"], variance_maps(model, x), rtol=1e-6, atol=1e-7)
    assert got["samples"].shape == (16, 3, 8, 8, 1) and np.all(np.isfinite(got["samples"]))  # batch-major
    np.testing.assert_allclose(got["default"], got["reconstruction"], rtol=1e-6)  # serving_default
    if k > 1:
        means, lp = model.head.component_points(model(x))
        assert got["component_means"].shape == (16, k, 8, 8, 1) and got["component_log_prob"].shape == (16, k)
        np.testing.assert_allclose(got["component_means"], means.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["component_log_prob"], lp.numpy(), rtol=1e-5)
    else:
        assert "component_means" not in got


BAD_SERVING_INPUTS = {  # name: (array, what the error must say)
    "rgb": (np.zeros((3, 8, 8, 3), np.float32), "wrong image shape"),
    "unbatched": (np.zeros((8, 8, 1), np.float32), "batch axis"),
    "too_large": (np.zeros((2, 9, 8, 1), np.float32), "wrong image shape"),
    "0-255": (np.full((2, 8, 8, 1), 255, np.float32), "divide 0-255 data by 255"),
    "negative": (np.full((2, 8, 8, 1), -0.5, np.float32), "in [0, 1]"),
    "nan": (np.full((2, 8, 8, 1), np.nan, np.float32), "finite"),
    "float64": (np.zeros((2, 8, 8, 1), np.float64), "expected to be a float tensor"),  # TensorFlow's own check
    "uint8": (np.zeros((2, 8, 8, 1), np.uint8), "expected to be a float tensor"),
}


def test_serving_signatures_check_their_inputs_in_a_process_without_the_package(tmp_path):
    from tfp_ae.models import build_model
    names = export_saved_model(build_model("normal_diag", (8, 8, 1), 2), tmp_path / "export")
    np.savez(tmp_path / "bad.npz", **{k: v[0] for k, v in BAD_SERVING_INPUTS.items()})
    out = python(f"""
        import json, sys
        import numpy as np, tensorflow as tf
        sig = tf.saved_model.load({str(tmp_path / 'export')!r}).signatures
        good = tf.constant(np.full((3, 8, 8, 1), 0.5, np.float32))
        res = dict(good={{}}, bad={{}})
        for name in [*{names!r}, "serving_default"]:
            args = dict(sample=dict(num_samples=tf.constant(2)), interval=dict(level=tf.constant(0.9))).get(name, {{}})
            res["good"][name] = [v.shape.as_list() for v in sig[name](images=good, **args).values()]
            for bad, x in np.load({str(tmp_path / 'bad.npz')!r}).items():
                try:
                    sig[name](images=tf.constant(x), **args)
                    res["bad"][name + " " + bad] = "accepted"
                except Exception as e:  # noqa: BLE001 (any error; the test checks its message)
                    res["bad"][name + " " + bad] = f"{{type(e).__name__}}: {{e}}"
        try:
            sig["sample"](images=good, num_samples=tf.constant(0))
            res["bad"]["sample num_samples=0"] = "accepted"
        except tf.errors.InvalidArgumentError as e:
            res["bad"]["sample num_samples=0"] = str(e)
        try:
            sig["interval"](images=good, level=tf.constant(1.5))
            res["bad"]["interval level=1.5"] = "accepted"
        except tf.errors.InvalidArgumentError as e:
            res["bad"]["interval level=1.5"] = str(e)
        res["package_imported"] = "tfp_ae" in sys.modules
        print(json.dumps(res))
    """)
    res = json.loads(out.strip().splitlines()[-1])
    assert not res["package_imported"]
    assert res["good"]["serving_default"] == [[3, 8, 8, 1]]
    assert res["good"]["sample"] == [[3, 2, 8, 8, 1]] and res["good"]["log_prob"] == [[3]]
    assert res["good"]["component_means"] == [[3, 2, 8, 8, 1]]
    assert res["good"]["interval"] == [[3, 8, 8, 1]] * 3
    assert len(res["bad"]) == (len(names) + 1) * len(BAD_SERVING_INPUTS) + 2
    for key, message in res["bad"].items():
        bad = key.split(" ", 1)[1]
        expected = dict(zip(["num_samples=0", "level=1.5"], ["num_samples", "interval level must be in (0, 1)"])).get(
            bad) or BAD_SERVING_INPUTS[bad][1]
        assert expected in message, (key, message)


@pytest.mark.parametrize("head,k", [("student_t_diag", 1), ("normal_diag", 2)])
def test_interval_signature_equals_the_model(head, k, tmp_path, digits):
    """`interval(images, level)`: lo, hi, width of the model's own `interval`, at the default 0.9
    and at another level; sample-based (mixture) intervals use a fixed seed, so two calls agree."""
    from tfp_ae.models import build_model
    model = build_model(head, digits.image_shape, k)
    export_saved_model(model, tmp_path / "export")
    served = tf.saved_model.load(str(tmp_path / "export"))
    x = digits.x_test[:5]
    for level, got in [(0.9, served.interval(tf.constant(x))), (0.5, served.interval(tf.constant(x), tf.constant(0.5)))]:
        lo, hi = model.interval(x, level)
        np.testing.assert_allclose(got["lo"], lo, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["width"], hi - lo, rtol=1e-5, atol=1e-6)
    again = served.signatures["interval"](images=tf.constant(x), level=tf.constant(0.5))
    np.testing.assert_array_equal(again["hi"], served.interval(tf.constant(x), tf.constant(0.5))["hi"])


def test_component_log_prob_is_mixture_density_at_each_component_mean(digits):
    from tfp_ae.models import build_model
    model = build_model("normal_diag", (8, 8, 1), 3)
    x = digits.x_test[:4]
    dist = model(x)
    means, lp = model.head.component_points(dist)
    comp = model.head._parts(dist)[2].mean().numpy()  # [4, 3, 8, 8, 1] unclipped
    for j in range(3):  # the density of the image shown: the clipped mean
        np.testing.assert_allclose(lp.numpy()[:, j], dist.log_prob(np.clip(comp[:, j], 0, 1)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(means.numpy(), np.clip(comp, 0, 1), rtol=1e-6)
    with pytest.raises(ValueError, match="needs a mixture"):
        single = build_model("normal_diag", (8, 8, 1), 1)
        single.head.component_points(single(x))


def test_cli_export_refuses_existing_folder_unless_overwrite(tmp_path, capsys):
    main(["train", "--dataset", "digits", "--head", "mse", "--epochs", "1", "--train-limit", "256",
          "--eval-images", "50", "--no-fid", "--no-extra-figures", "--out", str(tmp_path / "run")])
    main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")])
    assert "reconstruct, log_prob, sample" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already exists; pass --overwrite"):
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")])
    main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exp"), "--overwrite"])
    assert (tmp_path / "exp" / "saved_model.pb").exists() and not (tmp_path / "exp.tmp").exists()
    with pytest.raises(SystemExit, match="not a tfp-ae run folder"):
        main(["export", str(tmp_path), "--out", str(tmp_path / "exp2")])


def test_load_model_continues_training(tmp_path, digits):
    model, m = run(digits_config(tmp_path / "run"))
    again, cfg = load_model(tmp_path / "run")
    x = digits.x_test[:50]
    np.testing.assert_allclose(nll_per_image(again, x), nll_per_image(model, x), rtol=1e-6)
    assert cfg.head == "normal_diag" and again.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
    before = nll_per_image(again, digits.x_train[:512]).mean()
    again.fit(digits.x_train[:512], digits.x_train[:512], batch_size=128, epochs=2, verbose=0)
    assert nll_per_image(again, digits.x_train[:512]).mean() < before


# ---- resumable runs ---------------------------------------------------------------------------
def test_killed_run_resumes_and_matches_uninterrupted_run(tmp_path, capsys):
    cfg = digits_config(tmp_path / "resumed", epochs=4)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        import tfp_ae
        from tfp_ae._tf import tfk
        from tfp_ae.config import RunConfig
        from tfp_ae.train import run

        class Kill(tfk.callbacks.Callback):  # runs after the package's checkpointing callback
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 1:
                    os.kill(os.getpid(), signal.SIGKILL)

        run(RunConfig.from_dict({cfg.to_dict()!r}), callbacks=[Kill()])
    """)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]  # killed after its second epoch
    state = json.loads((tmp_path / "resumed" / STATE_FILE).read_text())
    assert len(state["epochs"]) == 2 and not (tmp_path / "resumed" / "metrics.json").exists()

    _, resumed = run(cfg)
    assert "resuming" in capsys.readouterr().out
    _, straight = run(digits_config(tmp_path / "straight", epochs=4))
    assert len(resumed["train_loss"]) == 4 and len(resumed["seconds_per_epoch"]) == 4
    np.testing.assert_allclose(resumed["train_loss"], straight["train_loss"], rtol=1e-5)
    for key in ("test_nll_nats", "bits_per_dim", "l2_percent"):
        np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-5)


def test_finished_run_is_not_retrained_and_changed_config_is_refused(tmp_path):
    run(digits_config(tmp_path / "run", epochs=1))
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        run(digits_config(tmp_path / "run", epochs=1))
    (tmp_path / "run" / "metrics.json").unlink()  # now an unfinished run with another config
    with pytest.raises(ValueError, match="another configuration.*head: 'normal_diag' -> 'logistic'"):
        run(digits_config(tmp_path / "run", epochs=1, head="logistic"))
    _, m = run(digits_config(tmp_path / "run", epochs=1, head="logistic"), overwrite=True)
    assert m["head"] == "logistic"


def test_a_run_started_before_a_setting_existed_resumes_under_its_default(tmp_path):
    """A state written before `location_activation` existed resumes under that setting's default (the
    behaviour it was trained with) and is refused under another value."""
    from tfp_ae.rundir import load_state
    cfg = RunConfig(dataset="digits", loss="faithful")
    state = dict(config={k: v for k, v in cfg.to_dict().items() if k != "location_activation"}, seed=0, attempts=[],
                 epochs=[dict(loss=1.0)])
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    assert load_state(tmp_path, cfg)["epochs"] == [dict(loss=1.0)]
    with pytest.raises(ValueError, match="location_activation: 'linear' -> 'sigmoid'"):
        load_state(tmp_path, RunConfig(dataset="digits", loss="faithful", location_activation="sigmoid"))


# ---- distributed ----------------------------------------------------------------------------
def test_mirrored_on_two_logical_cpus_matches_one_device():
    out = python("""
        import json
        import tfp_ae
        from tfp_ae._tf import tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfp_ae.config import RunConfig
        from tfp_ae.data import load_dataset
        from tfp_ae.runtime import device_summary, make_strategy
        from tfp_ae.train import fit
        x = load_dataset("digits").x_train[:512]
        res = {}
        for name in ("default", "mirrored"):
            s = make_strategy(name)
            cfg = RunConfig(dataset="digits", head="normal_diag", epochs=3, verbose=0, seed=5, strategy=name)
            res[name] = dict(loss=fit(cfg, x, 17, strategy=s)[1]["loss"], replicas=s.num_replicas_in_sync,
                             device=device_summary(s))
        print(json.dumps(res))
    """)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["default"]["replicas"] == 1 and res["mirrored"]["replicas"] == 2
    assert "2 x CPU" in res["mirrored"]["device"]
    np.testing.assert_allclose(res["mirrored"]["loss"], res["default"]["loss"], rtol=1e-4)


# ---- bad input ------------------------------------------------------------------------------
def test_model_functions_reject_wrong_image_shape(digits):
    from tfp_ae.models import build_model
    model = build_model("normal_diag", (8, 8, 1))
    with pytest.raises(ValueError, match=r"image shape \(28, 28, 1\) does not match the model's \(8, 8, 1\)"):
        point_estimates(model, np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match=r"expected a 4-D array.*add a channel axis"):
        nll_per_image(model, np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        x = digits.x_test[:2].copy()
        x[0, 0, 0, 0] = np.inf
        nll_per_image(model, x)


def test_rescale(digits):
    x255 = digits.x_test[:4] * 255
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*--rescale"):
        check_images(x255, "training images")
    np.testing.assert_allclose(prepare_images(x255, rescale=True), digits.x_test[:4], rtol=1e-6)
    with pytest.raises(ValueError, match="already lie in \\[0, 1\\].*drop --rescale"):
        prepare_images(digits.x_test[:4], rescale=True)


def _npz(path, digits, **arrays):
    base = dict(x_train=np.round(digits.x_train[:256] * 255), x_test=np.round(digits.x_test[:64] * 255))
    np.savez(path, **dict(base, **arrays))
    return str(path)


def test_cli_trains_on_user_npz_with_rescale(tmp_path, digits, capsys):
    data = _npz(tmp_path / "mine.npz", digits)
    with pytest.raises(SystemExit, match=r"training images: pixel values must lie in \[0, 1\], got range \[0, 255\]"):
        main(["train", "--dataset", data, "--epochs", "1", "--out", str(tmp_path / "a")])
    main(["train", "--dataset", data, "--rescale", "--epochs", "1", "--eval-images", "50", "--no-fid", "--no-extra-figures",
          "--out", str(tmp_path / "b")])
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["dataset"] == data and m["train_images"] == 256 and np.isfinite(m["test_nll_nats"])


@pytest.mark.parametrize("arrays,match", [
    (dict(x_train=np.zeros((0, 8, 8, 1))), "training images: the dataset is empty"),
    (dict(x_test=np.full((5, 8, 9, 1), 255.0)), r"test images: image shape \(8, 9, 1\) does not match"),
    (dict(x_train=np.full((4, 8, 8, 1), np.nan)), "training images: contains 256 NaN"),
])
def test_cli_bad_user_data(arrays, match, tmp_path, digits):
    data = _npz(tmp_path / "bad.npz", digits, **arrays)
    with pytest.raises(SystemExit, match=match):
        main(["train", "--dataset", data, "--rescale", "--epochs", "1", "--out", str(tmp_path / "r")])


def test_bad_dataset_arguments(tmp_path):
    np.savez(tmp_path / "nokeys.npz", images=np.zeros((3, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"missing arrays \['x_train', 'x_test'\]; found \['images'\]"):
        load_dataset(str(tmp_path / "nokeys.npz"))
    with pytest.raises(SystemExit, match="unknown dataset 'cifar'; valid: mnist, fashion_mnist, digits"):
        main(["train", "--dataset", "cifar", "--epochs", "1", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["train", "--dataset", str(tmp_path / "none.npz"), "--epochs", "1", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main(["train", "--dataset", "digits", "--strategy", "tpu"])


# ---- memory ---------------------------------------------------------------------------------
def test_memory_estimate_scales_and_too_big_runs_are_refused(monkeypatch, tmp_path):
    from tfp_ae import runtime, train
    from tfp_ae.heads import get_head
    est = lambda h, k, b=128: runtime.estimate_train_memory(get_head(h), (28, 28, 1), k, b)["total"]  # noqa: E731
    assert est("normal_full", 10) > 5 * est("normal_full", 1) > 5 * est("normal_diag", 1)
    assert est("normal_full", 10, 64) < 0.6 * est("normal_full", 10, 128)
    # calibration: measured peaks 2.4 / 4.2 / 22.6 GiB (K=1 / 2 / 10) at batch 128; the estimate may only overshoot
    gib = [est("normal_full", k) / 2 ** 30 for k in (1, 2, 10)]
    assert 2.4 < gib[0] < 3.5 and 4.2 < gib[1] < 5.8 and 22.6 < gib[2] < 25
    monkeypatch.setattr(runtime, "available_memory", lambda: 0.5 * est("normal_full", 2))
    cfg = RunConfig(dataset="digits", head="normal_full", components=2, epochs=1, verbose=0)
    with pytest.raises(MemoryError, match=r"needs about .* GiB.*only .* GiB are available: use --batch-size \d+"):
        train.fit(cfg, np.zeros((8, 28, 28, 1), np.float32), 256)
    with pytest.raises(SystemExit, match="needs about"):
        monkeypatch.setattr(runtime, "available_memory", lambda: 10 * 2 ** 20)
        main(["train", "--dataset", "digits", "--head", "normal_full", "--epochs", "1", "--out", str(tmp_path / "x")])


def test_tflite_files_match_the_saved_model_or_are_refused_with_a_reason(tmp_path, digits, capsys):
    """`tfp-ae export --tflite` of a `--dequantize` run (issue 40: its log_prob was refused when the
    check ran on uniform noise): every .tflite file, run by `tf.lite.Interpreter` on test images,
    equals the SavedModel signature of the same name (rtol 1e-5); the check ran on the run's own
    dequantised test images; a Student-t head's interval and log-density do not convert, and
    report.json gives the converter's reason."""
    from tfp_ae.export import export_tflite, tflite_probe
    from tfp_ae.models import build_model
    config = RunConfig(dataset="digits", head="normal_diag", epochs=1, train_limit=200, eval_images=10, fid=False,
                       extra_figures=False, verbose=0, out=str(tmp_path / "run"), dequantize=True)
    run(config)
    probe = tflite_probe(config)
    levels = np.round(digits.x_test[:8] * 16)
    assert probe.shape == (8, 8, 8, 1) and np.all(probe >= levels / 17) and np.all(probe < (levels + 1) / 17)
    main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export"), "--tflite"])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "export" / "tflite" / "report.json").read_text())
    assert report == dict(reconstruct="converted", interval="converted", conformal_interval="converted",
                          log_prob="converted")
    served = tf.saved_model.load(str(tmp_path / "export"))
    x = digits.x_test[:7]
    for name in report:
        assert f"tflite {name}: wrote" in printed
        runner = tf.lite.Interpreter(str(tmp_path / "export" / "tflite" / f"{name}.tflite")).get_signature_runner()
        got = runner(images=x)
        want = getattr(served, name)(tf.constant(x))
        for key in want:
            np.testing.assert_allclose(got[key], want[key].numpy(), rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want[key]).max()))
    t_report = export_tflite(build_model("student_t_diag", digits.image_shape), tmp_path / "t", probe=x[:4])
    assert t_report["reconstruct"] == "converted" and (tmp_path / "t" / "tflite" / "reconstruct.tflite").exists()
    for name in ("interval", "conformal_interval", "log_prob"):
        assert t_report[name].startswith("refused: ") and len(t_report[name]) > 30, t_report[name]
        assert "loc(" not in t_report[name] and "CONSTRUCTED_AT" not in t_report[name], t_report[name]  # no locations
        assert not (tmp_path / "t" / "tflite" / f"{name}.tflite").exists()


def test_a_faithful_beta_nll_run_exports_with_every_signature_and_tflite(tmp_path, digits):
    """Issue 41: runs trained with `--loss faithful` (dequantised) and `--loss beta_nll` export as
    SavedModels whose log_prob equals the run's model, and their TFLite functions convert."""
    from tfp_ae.export import export_run
    from tfp_ae.train import load_model
    for loss, head in (("faithful", "normal_diag"), ("beta_nll", "logistic")):
        out = tmp_path / loss
        run(RunConfig(dataset="digits", head=head, loss=loss, dispersion_units=8, epochs=1, train_limit=200,
                      eval_images=10, fid=False, extra_figures=False, verbose=0, dequantize=True, out=str(out / "run")))
        names, report = export_run(out / "run", out / "export", tflite=True)
        assert {"reconstruct", "log_prob", "interval", "variance"} <= set(names)
        assert report == dict(reconstruct="converted", interval="converted", conformal_interval="converted",
                              log_prob="converted"), report
        model, _ = load_model(out / "run")
        served = tf.saved_model.load(str(out / "export"))
        x = digits.x_test[:5]
        np.testing.assert_allclose(served.log_prob(tf.constant(x))["log_prob"].numpy(), model.log_prob(x).numpy(),
                                   rtol=1e-5)


def test_a_faithful_precision_normal_full_run_trains_saves_and_exports(tmp_path, digits):
    """`normal_full --parameterization precision --loss faithful` through the whole workflow: the run
    trains (finite, falling loss), `load_model` and the `.keras` file in a fresh process give its
    log_prob, the SavedModel's log_prob and variance equal the model's; TFLite converts or says why not."""
    from tfp_ae.export import export_run
    out = tmp_path / "run"
    _, m = run(RunConfig(dataset="digits", head="normal_full", parameterization="precision", loss="faithful",
                         dispersion_units=0, epochs=3, train_limit=400, eval_images=10, fid=False, extra_figures=False,
                         verbose=0, dequantize=True, out=str(out)))
    assert np.all(np.isfinite(m["train_loss"])) and m["train_loss"][-1] < m["train_loss"][0], m["train_loss"]
    model, cfg = load_model(out)
    assert cfg.parameterization == "precision" and model.head.parameterization == "precision"
    x = digits.x_test[:5]
    names, report = export_run(out, tmp_path / "export", tflite=True)
    served = tf.saved_model.load(str(tmp_path / "export"))
    np.testing.assert_allclose(served.log_prob(tf.constant(x))["log_prob"].numpy(), model.log_prob(x).numpy(), rtol=1e-5)
    np.testing.assert_allclose(served.variance(tf.constant(x))["variance"].numpy(),
                               model.head.variance(model(x)).numpy(), rtol=1e-4)
    assert all(v == "converted" or v.startswith("refused: ") for v in report.values()), report
    model.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", x)
    code = (f"import numpy as np, tfp_ae, tf_keras\nm = tf_keras.models.load_model({str(tmp_path / 'm.keras')!r})\n"
            f"print(m.head.parameterization, m.log_prob(np.load({str(tmp_path / 'x.npy')!r})).numpy().tolist())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    parameterization, log_prob = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert parameterization == "precision"
    np.testing.assert_allclose(json.loads(log_prob), model.log_prob(x).numpy(), rtol=1e-5)


def test_a_tflite_mismatch_names_the_output_the_largest_differences_and_where():
    from tfp_ae.export import TFLiteMismatch, check_tflite_output
    want = np.array([[1.0, -2000.0], [3.0, 4.0]])
    check_tflite_output("log_prob", "log_prob", want * (1 + 1e-6), want)  # within rtol 1e-5
    got = want.copy()
    got[0, 1] += 0.5    # the largest absolute difference
    got[1, 0] += 0.03   # the largest relative difference (1 %)
    with pytest.raises(TFLiteMismatch) as e:
        check_tflite_output("log_prob", "log_prob", got, want)
    text = str(e.value)
    assert text.startswith("log_prob/log_prob: TensorFlow Lite differs from TensorFlow by up to 0.5 absolute "
                           "at index (0, 1)")
    assert "(TensorFlow -2000, TensorFlow Lite -1999.5)" in text and "0.01 relative at (1, 0)" in text
    with pytest.raises(TFLiteMismatch, match=r"returns shape \(2,\), TensorFlow \(2, 2\)"):
        check_tflite_output("interval", "width", np.zeros(2), want)


def test_npz_sources_that_cannot_train_the_fid_classifier_say_why(tmp_path, digits):
    """An .npz without labels or with one class loads; fid_lenet is skipped with a note saying why,
    not computed from a meaningless classifier. An .npz of 1x1 images (whose classifier crashed in
    its pooling) trains and is evaluated, with the note in metrics.json."""
    from tfp_ae.data import load_dataset
    from tfp_ae.evaluate import fid_extractors
    cases = [(dict(x_train=digits.x_train[:200], x_test=digits.x_test[:40]), "no labels"),
             (dict(x_train=digits.x_train[:200], y_train=np.zeros(200, np.int64), x_test=digits.x_test[:40],
                   y_test=digits.y_test[:40]), "one class")]
    for i, (arrays, note) in enumerate(cases):
        np.savez(tmp_path / f"{i}.npz", **arrays)
        data = load_dataset(str(tmp_path / f"{i}.npz"))
        extractors, notes = fid_extractors(RunConfig(), data)
        assert not [e for e in extractors if e.name == "lenet"] and note in notes[0]
    np.savez(tmp_path / "tiny.npz", x_train=digits.x_train[:200, :1, :1], y_train=digits.y_train[:200],
             x_test=digits.x_test[:40, :1, :1], y_test=digits.y_test[:40])
    main(["train", "--dataset", str(tmp_path / "tiny.npz"), "--epochs", "1", "--eval-images", "20",
          "--tsne-images", "0", "--out", str(tmp_path / "r")])
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "fid_lenet" not in m and "at least 4 x 4" in m["fid_note"] and np.isfinite(m["test_nll_nats"])
