"""sigma-scaling (issue 41; Laves et al., MELBA 2021): the head's non-trainable `sigma_scale` s
multiplies every scale (checked against scipy's densities with the scaled covariance), a fit on
images drawn with a known s recovers it, `--recalibrate` records it and it survives load_model and
export, and bad settings are refused before anything is written."""
import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfp_ae.calibration import fit_sigma_scale
from tfp_ae.calibration.fit import held_out_parts
from tfp_ae.calibration.scaling import _held_out_bits
from tfp_ae.cli import main
from tfp_ae.config import RunConfig
from tfp_ae.data import open_source
from tfp_ae.heads import make_head
from tfp_ae.models import build_model
from tfp_ae.train import hold_out, load_model, run

SHAPE = (4, 4, 1)


@pytest.mark.parametrize("name", ["normal_diag", "normal_full", "normal_lowrank", "student_t_full", "logistic",
                                  "matrix_normal_full"])
def test_sigma_scale_multiplies_every_scale(name):
    """log p under sigma_scale = s equals the density with every scale multiplied by s: scipy's normal,
    multivariate normal and t with covariance s^2 Sigma, and per-pixel marginals scaled by s."""
    rng = np.random.default_rng(0)
    head = make_head(name, SHAPE, rank=2 if "lowrank" in name else None, min_df=3.0 if "student" in name else None)
    params = tf.constant(rng.normal(size=(2, head.size)).astype(np.float32) * 0.3)
    x = tf.constant(rng.uniform(size=(2, *SHAPE)).astype(np.float32))
    s = 1.7
    one = head(params)
    mean, var = head.mean(one).numpy().reshape(2, -1), head.variance(one).numpy().reshape(2, -1)
    head.sigma_scale.assign(s)
    scaled = head(params)
    got = scaled.log_prob(x).numpy()
    np.testing.assert_allclose(head.variance(scaled).numpy().reshape(2, -1), s ** 2 * var, rtol=1e-4)
    np.testing.assert_allclose(head.mean(scaled).numpy().reshape(2, -1), mean, rtol=1e-5, atol=1e-6)
    _, _, comp = head._parts(scaled)
    for b in range(2):
        xb = x.numpy()[b].ravel()
        if name == "logistic":
            scale = np.sqrt(var[b] * 3) / np.pi * s
            want = stats.logistic.logpdf(xb, mean[b], scale).sum()
        elif name == "normal_diag":
            want = stats.norm.logpdf(xb, mean[b], np.sqrt(var[b]) * s).sum()
        else:
            cov = _covariance(head, comp, b)
            if name == "student_t_full":
                df = float(np.ravel(comp.df)[b])
                want = stats.multivariate_t.logpdf(xb, mean[b], cov, df=df)
            else:
                want = stats.multivariate_normal.logpdf(xb, mean[b], cov)
        assert got[b] == pytest.approx(want, rel=1e-4, abs=1e-3), name


def _covariance(head, comp, b):
    """The dense D x D covariance (t: scale matrix) of image b of a scaled component, in pixel order."""
    if hasattr(comp, "scale_row"):  # matrix normal: vec(X) row-major has covariance U U^T (x) V V^T
        u, v = comp.scale_row.to_dense().numpy()[b], comp.scale_column.to_dense().numpy()[b]
        return np.kron(u @ u.T, v @ v.T)
    if hasattr(comp, "cov_perturb_factor"):  # diag + low rank
        f = comp.cov_perturb_factor.numpy()[b]
        return np.diag(comp.cov_diag_factor.numpy()[b]) + f @ f.T
    s = comp.scale.to_dense().numpy()[b]
    return s @ s.T


@pytest.mark.parametrize("name,criterion", [("normal_diag", "nll"), ("normal_diag", "crps"), ("student_t_diag", "nll"),
                                            ("student_t_diag", "crps"), ("normal_full", "nll"), ("logistic", "crps"),
                                            ("normal_diag", "calibration"), ("logistic", "calibration")])
def test_sigma_scaling_recovers_a_known_scale(name, criterion, digits):
    """Targets drawn from the model with every scale multiplied by 2.5: either proper scoring rule
    (NLL, CRPS) is minimised in expectation by the true s, and so is the calibration error (the
    intervals cover what they say only at the true s); the fit finds s = 2.5."""
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, digits.image_shape, min_df=4.0 if "student" in name else None)
    x = tf.constant(digits.x_test[:300])
    model.head.sigma_scale.assign(2.5)
    y = tf.cast(model.head.sample(model(x), 1, seed=(1, 2))[0], tf.float32)
    model.head.sigma_scale.assign(1.0)
    s, before, after = fit_sigma_scale(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(100), criterion)
    assert s == pytest.approx(2.5, rel=0.03) and after < before
    assert float(model.head.sigma_scale.numpy()) == pytest.approx(s)


def test_recalibrate_writes_the_scale_and_it_survives_load_model(tmp_path):
    out = tmp_path / "run"
    _, m = run(RunConfig(dataset="digits", head="normal_diag", dequantize=True, recalibrate=True, epochs=3, fid=False,
                         extra_figures=False, eval_images=50, verbose=0, out=str(out)))
    rec, cal = m["recalibration"], m["calibration"]
    assert rec["validation_images"] == 143 and rec["validation_score"] <= rec["validation_score_before"]
    assert rec["criterion"] == "calibration" and np.isfinite(rec["bits_per_dim_before"])
    assert rec["bits_per_dim_median_before"] != m["bits_per_dim_median"]  # s changes the density
    assert cal["sigma_scale"] == pytest.approx(rec["sigma_scale"]) and rec["sigma_scale"] != 1.0
    assert set(cal["before_recalibration"]) == {"coverage", "calibration_error"}
    assert json.loads((out / "metrics.json").read_text())["recalibration"]["sigma_scale"] == rec["sigma_scale"]
    assert (out / "calibration.png").exists()
    model, _ = load_model(out)
    assert float(model.head.sigma_scale.numpy()) == pytest.approx(rec["sigma_scale"])
    # killed while the fitted model was written: the training checkpoints are intact (s = 1 there), and
    # the run resumes without training, fits s again and finishes
    from tfp_ae.rundir import RECALIBRATED_DIR, checkpoint_manager
    manager = checkpoint_manager(model, out)
    restored = tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(manager.latest_checkpoint)
    restored.assert_existing_objects_matched()
    assert float(model.head.sigma_scale.numpy()) == 1.0
    # what metrics.json says of the held-out images is what the run's own model gives: its first held-out part,
    # dequantised as recalibrate does, under the last epoch's checkpoint (s = 1)
    config = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    held_out = hold_out(open_source("digits").splits["train"].subset(0, config.train_limit), config)[1]
    again_bits = _held_out_bits(model, held_out_parts(held_out, config)[0], 17, config.seed)
    assert again_bits["bits_per_dim"] == pytest.approx(rec["validation_bits_per_dim_before"], rel=1e-6)
    assert again_bits["bits_per_dim_median"] == pytest.approx(rec["validation_bits_per_dim_median_before"], rel=1e-6)
    (out / "metrics.json").unlink()
    data = next((out / RECALIBRATED_DIR).glob("*.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    _, again = run(RunConfig(dataset="digits", head="normal_diag", dequantize=True, recalibrate=True, epochs=3, fid=False,
                             extra_figures=False, eval_images=50, verbose=0, out=str(out)))
    assert again["train_loss"] == m["train_loss"] and again["recalibration"]["sigma_scale"] == rec["sigma_scale"]
    assert float(load_model(out)[0].head.sigma_scale.numpy()) == pytest.approx(rec["sigma_scale"])


def test_recalibration_by_crps_bounds_its_batches_like_pit_values(digits, monkeypatch):
    """A full covariance ran out of memory in sigma-scaling's batches of 500 images (1.2 GB a tensor at
    28 x 28): the CRPS batches are `pit_batch_size`'s, bounded by `SAMPLE_FLOATS`."""
    from tfp_ae import predict
    from tfp_ae.calibration import pit_batch_size, scaling
    from tfp_ae.data import array_split
    model = build_model("normal_full", (8, 8, 1))
    monkeypatch.setattr(predict, "SAMPLE_FLOATS", 3 * 100 * 64)  # 3 images of 8 x 8 with 100 draws each
    assert pit_batch_size(model) == 3
    sizes, scales = [], []

    def fit(model, pairs, criterion):
        sizes.extend(len(x) for x, _ in pairs)
        scales.append(float(model.head.sigma_scale.numpy()))
        return 1.0, 0.0, 0.0
    monkeypatch.setattr(scaling, "fit_sigma_scale", fit)
    split = array_split(digits.x_train[:10], 17)
    model.head.sigma_scale.assign(7.0)  # a resumed run whose checkpoint holds a fitted s: fitted afresh from 1
    for criterion in ("calibration", "crps"):
        sizes.clear()
        scaling.recalibrate(model, split, 17, 0, digits.x_test[:4], array_split(digits.x_test[:4], 17), criterion)
        assert sizes == [3, 3, 3, 1]
    assert scales == [1.0, 1.0]


def test_sigma_scaling_builds_no_distribution_eagerly(digits, monkeypatch):
    """The search evaluates the criterion some 20 times over the held-out images: each distribution built
    eagerly stays alive until Python's cycle collector runs, and a full covariance's piled up to 24 GB
    (MNIST `normal_full`). Every evaluation runs in a compiled graph: the model is called eagerly only
    while tracing, a few times, not once per batch and evaluation."""
    model = build_model("normal_full", digits.image_shape)
    x = tf.constant(digits.x_test[:120])
    calls = []
    call = model.call
    monkeypatch.setattr(model, "call", lambda *a, **k: calls.append(tf.executing_eagerly()) or call(*a, **k))
    for criterion in ("crps", "nll", "calibration"):
        calls.clear()
        s, before, after = fit_sigma_scale(model, tf.data.Dataset.from_tensor_slices((x, x)).batch(50), criterion)
        assert after <= before and not any(calls) and 0 < len(calls) <= 4, (criterion, len(calls))


@pytest.mark.parametrize("argv,match", [
    (["--recalibrate", "--train-limit", "500"],
     r"--recalibrate needs at least 100 held-out images; 0.1 of the training images gives 50"),
    (["--recalibrate", "--head", "maf"], r"--recalibrate \(sigma-scaling\) takes an autoencoder"),
    (["--recalibrate", "--head", "continuous_bernoulli"], r"takes an autoencoder .* got ae continuous_bernoulli"),
    (["--recalibrate", "--model", "vae"], r"takes an autoencoder \(--model ae\)"),
])
def test_bad_recalibration_settings_are_refused_before_anything_is_written(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x")] + argv)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("target", [0.3, 1.0, 7.0, 900.0])
def test_the_scale_search_finds_the_minimum_anywhere_in_the_range(target):
    """The calibration error is flat far from its minimum (every interval covers all or none of the
    pixels), where a bounded search over the whole range was lost (a digits run kept s = 1 at error
    0.119; bracketed: s = 0.57, 0.015). Stepping from s = 1 by factors of 2 downhill to a bracket
    finds the minimum of a V that is flat beyond a factor e^8 of it, up to the range's bound."""
    from tfp_ae.calibration.scaling import SIGMA_SCALE_BOUNDS, _minimise_log_scale
    bounds = tuple(np.log(SIGMA_SCALE_BOUNDS))
    f = lambda x: min(0.5, abs(x - np.log(target)) / 16)  # noqa: E731
    log_s, best, at_one = _minimise_log_scale(f, bounds)
    assert np.exp(log_s) == pytest.approx(target, rel=1e-3) and best == pytest.approx(0, abs=1e-3)
    assert at_one == f(0.0)


@pytest.mark.parametrize("scale,force", [(50.0, False), (50.0, True), (float("nan"), False)])
def test_a_scale_that_wrecks_the_held_out_likelihood_is_not_applied(scale, force, tmp_path, monkeypatch, capsys):
    """Issue 50: σ-scaling took MNIST low-rank bits/dim from 4.77 to 49,444 and wrote that model as the one
    load_model and export prefer. A fitted s = 50 (forced here) costs the held-out images far more than
    0.1 bits/dim: the run keeps s = 1 and says so, unless --force-recalibration; a scale whose likelihood
    is not finite (NaN) is not applied either."""
    import tfp_ae.calibration.scaling

    def wrecking(model, pairs, criterion="calibration", bounds=None):
        model.head.sigma_scale.assign(scale)
        return scale, 0.2, 0.1

    monkeypatch.setattr(tfp_ae.calibration.scaling, "fit_sigma_scale", wrecking)
    out = tmp_path / "run"
    _, m = run(RunConfig(dataset="digits", head="normal_diag", dequantize=True, recalibrate=True, epochs=2, fid=False,
                         extra_figures=False, eval_images=50, verbose=0, out=str(out), force_recalibration=force))
    rec = m["recalibration"]
    assert rec["applied"] is force
    if scale == scale:  # not NaN
        assert rec["fitted_sigma_scale"] == scale
        assert rec["validation_bits_per_dim_after"] > rec["validation_bits_per_dim_before"] + 0.1
        assert rec["validation_bits_per_dim_median_after"] > rec["validation_bits_per_dim_median_before"]
    else:
        assert np.isnan(rec["validation_bits_per_dim_after"]) and np.isfinite(rec["validation_bits_per_dim_before"])
    from tfp_ae.rundir import RECALIBRATED_DIR
    s = float(load_model(out)[0].head.sigma_scale.numpy())
    if force:
        assert rec["sigma_scale"] == 50.0 and s == 50.0 and (out / RECALIBRATED_DIR).exists()
    else:
        assert rec["sigma_scale"] == 1.0 and m["calibration"]["sigma_scale"] == 1.0 and s == 1.0
        assert not (out / RECALIBRATED_DIR).exists()
        assert m["bits_per_dim"] == pytest.approx(rec["bits_per_dim_before"])  # the model it had
        harm = "worse by" if scale == scale else "non-finite (bits/dim NaN or infinite)"
        assert f"sigma-scaling not applied: it makes the held-out likelihood {harm}" in capsys.readouterr().out


def test_the_reported_calibration_is_what_a_user_gets_from_raw_images(tmp_path):
    """Issue 50, item 4: a `--dequantize` run's calibration was measured on dequantised inputs (0.0023 where
    users, feeding raw images, got 0.0126). Now the model is given the raw test images and scored at their
    dequantised pixels: `load_model(run)` recomputes the reported coverage exactly, and the coverage of
    `model.interval` on the raw 8-bit pixels, what `predict` and the maps show, agrees with it to 0.003."""
    from tfp_ae.calibration import LEVELS, calibration
    from tfp_ae.data import load_dataset
    out = tmp_path / "run"
    _, m = run(RunConfig(dataset="mnist", head="normal_diag", epochs=1, train_limit=3000, dequantize=True, recalibrate=True,
                         fid=False, extra_figures=False, eval_images=200, verbose=0, out=str(out)))
    reported = m["calibration"]
    assert reported["inputs"] == "raw" and reported["targets"] == "dequantized"
    model, _ = load_model(out)
    x = load_dataset("mnist").x_test[:200]
    assert calibration(model, x, num_levels=256, seed=0)["coverage"] == reported["coverage"]
    for level, want in zip(LEVELS, reported["coverage"]):
        lo, hi = (t.numpy() for t in model.interval(x, level))
        assert abs(np.mean((x >= lo) & (x <= hi)) - want) <= 0.003, level


def test_local_recalibration_fixes_a_known_miscalibration_in_every_group(digits):
    """Issue 50, item 1: targets drawn with each pixel's scale squared (a miscalibration that grows with the
    predicted scale: intervals too wide where the scale is small, too narrow where it is large, so it
    cancels in part over all pixels) are fixed within every quartile of the scale; the recalibrated head's
    log_prob is scipy's normal density with each scale multiplied by its factor, `exp(interp(log s))`."""
    import tensorflow as tf

    from tfp_ae.calibration import fit_local_scales
    model = build_model("normal_diag", digits.image_shape, local_scales=True)
    x = digits.x_train[:400]
    dist = model(x)
    loc, scale = dist.mean().numpy(), dist.stddev().numpy()
    assert scale.min() < 0.5 and scale.max() > 1.0, (scale.min(), scale.max())  # spreads over a range
    y = (loc + scale ** 2 * np.random.default_rng(0).standard_normal(loc.shape)).astype(np.float32)
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    info = fit_local_scales(model, pairs)
    assert max(info["calibration_error_by_std_before"]) > 0.1
    assert max(info["calibration_error_by_std_after"]) <= 0.02, info
    np.testing.assert_allclose(info["log_factors"], info["knots"], atol=0.15)  # the factor is the scale itself
    new = model(x[:3])
    want_scale = scale[:3] * np.exp(np.interp(np.log(scale[:3]), info["knots"], info["log_factors"]))
    np.testing.assert_allclose(new.stddev().numpy(), want_scale, rtol=2e-4)
    want = stats.norm.logpdf(y[:3], loc[:3], want_scale).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(new.log_prob(y[:3]).numpy(), want, rtol=1e-4)


@pytest.mark.parametrize("name", ["normal_lowrank", "student_t_lowrank"])
def test_local_recalibration_of_a_low_rank_head_is_d_sigma_d(name, rng):
    """Issue 50, item 1 (joint heads): local recalibration of a low-rank head is Sigma' = D Sigma D with
    D_ii = exp(h(log s_i)), s_i pixel i's marginal scale: log_prob equals SciPy's density with that
    covariance (scale matrix of the t), and each pixel's marginal scale is s_i times its factor."""
    shape, rank = (3, 4, 1), 2
    head = make_head(name, shape, rank=rank, local_scales=True)
    d = 12
    p = rng.normal(0, 0.7, size=(2, head.size)).astype(np.float32)
    knots, values = np.linspace(-0.5, 0.8, 8), np.array([0.4, 0.3, 0.1, 0.0, -0.2, -0.3, -0.3, -0.5])
    head.local_knots.assign(knots.astype(np.float32))
    head.local_log_factors.assign(values.astype(np.float32))
    x = rng.uniform(size=(2,) + shape).astype(np.float32)
    dist = head.new(p)
    softplus = lambda t: np.logaddexp(0, t) + 1e-6  # noqa: E731
    for i in range(2):
        loc, sigma = p[i, :d].astype(np.float64), softplus(p[i, d:2 * d].astype(np.float64))
        v = p[i, 2 * d:2 * d + d * rank].astype(np.float64).reshape(d, rank)
        cov = np.diag(sigma ** 2) + v @ v.T
        s = np.sqrt(np.diag(cov))
        assert s.min() < np.exp(knots[3]) < s.max()  # the scales span several knots
        dd = np.diag(np.exp(np.interp(np.log(s), knots, values)))
        cov2 = dd @ cov @ dd
        if head.student_t:
            want = stats.multivariate_t(loc, cov2, df=softplus(np.float64(p[i, -1]))).logpdf(x[i].ravel())
        else:
            want = stats.multivariate_normal(loc, cov2).logpdf(x[i].ravel())
        np.testing.assert_allclose(dist.log_prob(x).numpy()[i],
                                   want, rtol=1e-4)
        np.testing.assert_allclose(head.marginal(head._parts(dist)[2]).scale.numpy()[i], np.sqrt(np.diag(cov2)), rtol=1e-4)


@pytest.mark.parametrize("head", ["logistic", "normal_lowrank"])
def test_local_recalibration_is_saved_guarded_and_exported(head, tmp_path):
    """`--recalibration-method local`: metrics.json's `recalibration.local` (knots, factors, held-out numbers,
    applied), the factors restored by load_model and used by the SavedModel's log_prob (a per-pixel head and
    a joint one)."""
    import tensorflow as tf

    from tfp_ae.data import load_dataset
    from tfp_ae.export import export_run
    out = tmp_path / "run"
    _, m = run(RunConfig(dataset="digits", head=head, dequantize=True, recalibrate=True, recalibration_method="local",
                         force_recalibration=True, epochs=2, fid=False, extra_figures=False, eval_images=50, verbose=0,
                         out=str(out)))
    local = m["recalibration"]["local"]
    assert m["recalibration"]["method"] == "local" and local["applied"] and len(local["knots"]) == 8
    assert np.all(np.diff(local["knots"]) >= 0) and local["validation_bits_per_dim_after"] is not None
    model, _ = load_model(out)
    np.testing.assert_allclose(model.head.local_log_factors.numpy(), local["log_factors"], rtol=1e-6)
    export_run(out, tmp_path / "export")
    x = load_dataset("digits").x_test[:4]
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    # nats per image, sums of 64 float32 pixel terms: an absolute tolerance where an image's total is near 0
    np.testing.assert_allclose(loaded.log_prob(tf.constant(x))["log_prob"].numpy(), model.log_prob(x).numpy(),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("argv,match", [
    (["--recalibration-method", "local"], "--recalibration-method local takes --recalibrate .* without --recalibrate"),
    (["--recalibrate", "--recalibration-method", "local", "--head", "normal_full"], "got --head normal_full"),
    (["--recalibrate", "--recalibration-method", "local", "--head", "matrix_normal_diag"], "low-rank covariance .*"
     "normal_lowrank, .*student_t_lowrank.* got --head matrix_normal_diag"),
    (["--recalibrate", "--recalibration-method", "local", "-K", "2"], "--components 2"),
    (["--recalibration-method", "pit"], "--recalibration-method pit takes --recalibrate .* without --recalibrate"),
    (["--recalibrate", "--recalibration-method", "pit", "-K", "2"], r"normal, logistic or Student-t head \(joint "
     r"heads through a copula\) \(logistic, matrix_normal_diag, matrix_normal_full, matrix_normal_identity, "
     r"matrix_t_diag, matrix_t_full, matrix_t_identity, normal_diag, normal_full, normal_identity, normal_lowrank, "
     r"student_t_diag, student_t_full, student_t_identity, student_t_lowrank\); got .*--components 2"),
])
def test_bad_recalibration_method_settings_are_refused(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x")] + argv)
    assert not (tmp_path / "x").exists()
