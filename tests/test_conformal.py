"""Conformal risk control of the per-pixel intervals (issue 50, item 3; RCPS, Bates et al. JACM 2021, as
Angelopoulos et al. ICML 2022 apply it to images): the Hoeffding-Bentkus p-value is valid and matches
its closed form at a zero loss, RCPS's guarantee holds over random draws of synthetic data with a
known risk, the fitted λ is stored in the model and used by `conformal_interval`, the maps and the
SavedModel, the reported risk is what the loaded model gives on the raw test images, and bad settings
are refused before anything is written."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfp_ae.calibration import (
    conformal_report,
    fit_conformal,
    hb_p_value,
    krcps_lambdas,
    min_calibration_images,
    pixel_groups,
    rcps_lambda,
)
from tfp_ae.calibration.conformal import LAMBDA_GRID, grid_losses, interval_losses, stratified_lambdas
from tfp_ae.cli import main
from tfp_ae.config import RunConfig
from tfp_ae.models import build_model
from tfp_ae.predict import uncertainty_maps
from tfp_ae.train import load_model, run


@pytest.mark.parametrize("alpha,delta", [(0.1, 0.1), (0.05, 0.1), (0.1, 0.01), (0.2, 0.05)])
def test_the_fewest_calibration_images_match_the_closed_form(alpha, delta):
    """At a loss of 0 the Hoeffding term (1 - α)^n is the smaller: n is the first with (1 - α)^n < δ."""
    want = math.floor(math.log(delta) / math.log(1 - alpha)) + 1
    assert min_calibration_images(alpha, delta) == want
    assert hb_p_value(0.0, want, alpha) < delta <= hb_p_value(0.0, want - 1, alpha)


def test_the_hoeffding_bentkus_p_value_is_valid_at_the_null():
    """Losses whose mean is exactly α (the null's boundary): P(p < δ) <= δ over 4000 draws, for bounded
    losses of two shapes (Bernoulli pixels-outside indicators, and image fractions of 50 pixels)."""
    rng = np.random.default_rng(0)
    alpha, delta, n = 0.1, 0.1, 200
    bern = rng.random((4000, n)) < alpha
    frac = (rng.random((4000, n, 50)) < alpha).mean(axis=2)
    for losses in (bern, frac):
        p = hb_p_value(losses.mean(axis=1), n, alpha)
        assert np.mean(p < delta) <= delta
    assert hb_p_value(0.3, n, alpha) == 1.0 and hb_p_value(0.0, n, alpha) < 1e-8


def _synthetic_losses(rng, n, pixels=100):
    """Image i's pixels deviate from their interval's midpoint by |z| c_i (z standard normal, c_i a
    per-image miscalibration 0.5, 1 or 2): the loss at λ is the fraction with |z| c_i > λ, whose
    expectation is the mean over c of 2 (1 - Φ(λ / c))."""
    c = rng.choice([0.5, 1.0, 2.0], size=(n, 1))
    ratio = np.sort(np.abs(rng.standard_normal((n, pixels))) * c, axis=1)
    return 1 - np.stack([np.searchsorted(r, LAMBDA_GRID, side="right") for r in ratio]) / pixels


def _true_risk(lam):
    return float(np.mean([2 * stats.norm.sf(lam / c) for c in (0.5, 1.0, 2.0)]))


@pytest.mark.parametrize("n", [30, 200])
def test_the_rcps_guarantee_holds_over_random_calibration_sets(n):
    """Over 300 calibration sets of n images, the true risk of RCPS's λ exceeds α in at most a fraction δ
    of them (plus Monte-Carlo slack); with 200 images it is not vacuous: the λ is within 1.3x the oracle's
    (with 30, barely above the 22 the bound needs, it doubles it)."""
    rng = np.random.default_rng(1)
    alpha, delta = 0.1, 0.1
    lams = np.array([rcps_lambda(_synthetic_losses(rng, n), alpha, delta) for _ in range(300)])
    risks = np.array([_true_risk(lam) for lam in lams])
    assert np.mean(risks > alpha) <= delta + 0.03
    oracle = LAMBDA_GRID[np.argmax([_true_risk(lam) <= alpha for lam in LAMBDA_GRID])]
    assert oracle <= np.median(lams) < (1.3 if n >= 200 else 2.5) * oracle


def test_too_few_images_or_zero_width_intervals_are_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="needs at least 22 held-out images; got 21"):
        rcps_lambda(_synthetic_losses(rng, 21), 0.1, 0.1)
    with pytest.raises(ValueError, match="outside even the widest intervals"):
        rcps_lambda(np.full((100, len(LAMBDA_GRID)), 0.5), 0.1, 0.1)


Z90 = stats.norm.ppf(0.95)  # a normal's central 90 % interval: mean -/+ Z90 std (scipy)


def _normal_conformal_interval(model, x, lam):
    """`model.conformal_interval(x)` of a normal head, checked against mean -/+ lam Z90 σ (`lam` a number,
    a per-pixel map or one per image `[N, 1, 1, 1]`); returns `(lo, hi)` as numpy."""
    dist = model(x)
    mean, std = dist.mean().numpy(), dist.stddev().numpy()
    lo, hi = (t.numpy() for t in model.conformal_interval(x))
    np.testing.assert_allclose(lo, mean - lam * Z90 * std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hi, mean + lam * Z90 * std, rtol=1e-4, atol=1e-5)
    return lo, hi


def _outside(x, lo, hi):
    """Each image's fraction of pixels outside `[lo, hi]`, `[N]`."""
    return ((x < lo) | (x > hi)).reshape(len(x), -1).mean(axis=1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("conformal") / "run"
    _, metrics = run(RunConfig(dataset="digits", head="normal_diag", epochs=2, risk=0.1, fid=False, extra_figures=False,
                               eval_images=200, verbose=0, out=str(out)))
    return out, metrics


def test_the_fitted_lambda_is_stored_and_scales_the_90_percent_interval(fitted, digits):
    """`conformal_interval` = midpoint -/+ λ z σ of a normal head (z = Φ^-1(0.95), scipy: `Z90`), λ restored by
    load_model; the `conformal` map and the SavedModel's `conformal_interval` signature use it."""
    out, metrics = fitted
    model, _ = load_model(out)
    lam = metrics["conformal"]["lambda"]
    assert float(model.head.conformal_lambda.numpy()) == pytest.approx(lam) and lam != 1.0
    x = digits.x_test[:5]
    lo, hi = _normal_conformal_interval(model, x, lam)
    np.testing.assert_allclose(uncertainty_maps(model, x, "conformal"), np.clip(hi, 0, 1) - np.clip(lo, 0, 1),
                               rtol=1e-5, atol=1e-6)
    main(["export", str(out), "--out", str(out.parent / "export")])
    loaded = tf.saved_model.load(str(out.parent / "export"))
    served = loaded.conformal_interval(tf.constant(x))
    np.testing.assert_allclose(served["lo"].numpy(), lo, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served["width"].numpy(), hi - lo, rtol=1e-5, atol=1e-6)


def test_the_reported_risk_is_what_the_loaded_model_gives_on_raw_test_images(fitted, digits):
    """metrics.json's risk recomputed from load_model(run) on the raw test images: the fraction of each
    image's pixels outside `conformal_interval`, averaged; and every reported number is in range."""
    out, metrics = fitted
    c = json.loads((out / "metrics.json").read_text())["conformal"]
    assert c == json.loads(json.dumps(metrics["conformal"]))
    model, _ = load_model(out)
    x = digits.x_test[:200]
    lo, hi = (t.numpy() for t in model.conformal_interval(x))
    assert c["risk"] == pytest.approx(np.mean(_outside(x, lo, hi)), abs=1e-6)
    assert c["alpha"] == 0.1 and c["delta"] == 0.1 and c["test_images"] == 200 and c["inputs"] == "raw"
    assert c["calibration_images"] == 143 and 0 <= c["splits_over_alpha"] <= 1 and c["splits"] == 100
    assert 0 < c["mean_width"] <= 1 and c["oracle_lambda"] <= c["lambda"] * 1.5
    assert len(c["risk_by_width"]) == 4 and sum(g["images"] for g in c["risk_by_width"]) == 200
    assert np.mean([g["risk"] for g in c["risk_by_width"]]) == pytest.approx(c["risk"], abs=1e-9)


def test_interval_losses_equal_the_fraction_outside_the_scaled_interval(digits):
    """The loss matrix RCPS reads, at a few λ, equals the fraction of pixels outside `conformal_interval`
    with the head's λ set to that value (an untrained model: intervals of every width)."""
    model = build_model("normal_diag", digits.image_shape)
    x = digits.x_test[:7]
    losses = interval_losses(model, x)
    for g in (0, 1000, 2000, 2800):
        model.head.conformal_lambda.assign(LAMBDA_GRID[g])
        lo, hi = (t.numpy() for t in model.conformal_interval(x))
        np.testing.assert_allclose(losses[:, g], _outside(x, lo, hi), atol=1e-12)
    assert np.all(np.diff(losses, axis=1) <= 0)


def test_fit_conformal_controls_the_risk_of_a_model_on_new_images(digits):
    """An untrained model's intervals, fitted on 300 digits: the risk on the other 1,000-odd digits is
    at most α (with margin: at n = 300 RCPS is conservative) and the report agrees."""
    model = build_model("logistic", digits.image_shape)
    lam = fit_conformal(model, digits.x_train[:300], 0.2, 0.1)["lambda"]
    assert lam == float(model.head.conformal_lambda.numpy()) > 0
    report = conformal_report(model, digits.x_train[300:], 0.2, 0.1, splits=20)
    assert report["risk"] <= 0.2 and report["lambda"] == lam
    assert report["oracle_lambda"] <= lam and report["width_over_oracle"] >= 1


@pytest.mark.parametrize("argv,match", [
    (["--risk", "1.5"], r"--risk \(alpha\) must be a number in \(0, 1\); got 1.5"),
    (["--risk", "0.1", "--delta", "0"], r"--delta \(delta\) must be a number in \(0, 1\); got 0"),
    (["--delta", "0.05"], "--delta applies to conformal risk control: give --risk too"),
    (["--risk", "0.1", "--head", "mse"], "needs a head with intervals; 'mse' models no spread"),
    (["--risk", "0.1", "--train-limit", "150"], r"--risk 0.1 --delta 0.1 needs at least 22 held-out images; .* gives 15"),
    (["--risk", "0.1", "--recalibrate", "--train-limit", "1200"],
     r"needs at least 100 held-out images \(half of the held-out images"),
    (["--risk", "0.1", "--risk-groups", "0"], r"--risk-groups \(pixel groups of K-RCPS\) must be an integer >= 1; got 0"),
    (["--risk-groups", "4"], "--risk-groups applies to conformal risk control: give --risk too"),
    (["--risk", "0.1", "--risk-groups", "4", "--train-limit", "300"],
     r"--risk 0.1 --delta 0.1 --risk-groups 4 needs at least 44 held-out images; .* gives 30"),
    (["--risk", "0.1", "--risk-strata", "17"], r"--risk-strata \(strata of images by interval width\) must be an integer "
     ">= 1 and <= 16; got 17"),
    (["--risk", "0.1", "--risk-strata", "2", "--risk-groups", "2"], "choose one"),
    (["--risk-strata", "2"], "--risk-strata applies to conformal risk control: give --risk too"),
    (["--risk", "0.1", "--risk-strata", "3", "--train-limit", "1000"],
     r"--risk 0.1 --delta 0.1 --risk-strata 3 needs at least 132 held-out images; .* gives 100"),
])
def test_bad_conformal_settings_are_refused_before_anything_is_written(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x")] + argv)
    assert not (tmp_path / "x").exists()


# K-RCPS (Teneggi et al., ICML 2023): one λ per pixel group


def _grouped_ratios(rng, n, pixels=200, wide=0.5):
    """Pixels of two kinds: a fraction `wide` deviate by |z| 3 from their midpoint (intervals far too
    narrow), the rest by |z| 0.5 (too wide); half-widths 1. Returns ratios `[n, pixels]`, half-widths and
    each pixel's c."""
    c = np.where(np.arange(pixels) < wide * pixels, 3.0, 0.5)
    return np.abs(rng.standard_normal((n, pixels))) * c, np.ones((n, pixels)), c


def _true_pixel_risk(lam, c):
    return float(np.mean(2 * stats.norm.sf(lam / c)))


def test_krcps_finds_the_groups_keeps_the_guarantee_and_narrows_the_intervals():
    """Over 200 calibration sets of 400 images: the two kinds of pixels (as many of each: K-RCPS's groups
    are quantiles, of equal size) are the two groups found, the true
    risk of K-RCPS's per-pixel λ exceeds α in at most a fraction δ of them (plus Monte-Carlo slack), and
    its mean width is below RCPS's one λ in every draw (the narrow pixels need a far smaller λ)."""
    rng = np.random.default_rng(3)
    alpha, delta = 0.1, 0.1
    risks, widths, one_widths = [], [], []
    for _ in range(200):
        ratio, half, c = _grouped_ratios(rng, 400)
        lam, labels, _ = krcps_lambdas(ratio, half, alpha, delta, 2, rng)
        assert len(np.unique(labels)) == 2 and np.array_equal(labels, (c == 3.0).astype(int))
        risks.append(_true_pixel_risk(lam, c))
        widths.append(lam.mean())
        one_widths.append(rcps_lambda(grid_losses(ratio), alpha, delta))
    assert np.mean(np.array(risks) > alpha) <= delta + 0.03
    assert np.all(np.array(widths) < np.array(one_widths))
    assert np.median(widths) < 0.8 * np.median(one_widths)


def test_pixel_groups_are_quantiles_of_how_often_a_pixel_misses():
    """Four groups of a hundred pixels that miss their 90 % interval at rates 0, 0.1, 0.3, 0.6 (two
    hundred images): groups in that order; tied rates (every pixel always inside) merge into one group."""
    rng = np.random.default_rng(4)
    rates = np.repeat([0.0, 0.1, 0.3, 0.6], 100)
    ratio = np.where(rng.random((2000, 400)) < rates, 2.0, 0.5)
    np.testing.assert_array_equal(pixel_groups(ratio, 4), np.repeat(np.arange(4), 100))
    assert np.all(pixel_groups(np.zeros((10, 50)), 4) == 0)


@pytest.fixture(scope="module")
def fitted_groups(tmp_path_factory):
    out = tmp_path_factory.mktemp("krcps") / "run"
    main(["train", "--dataset", "digits", "--epochs", "2", "--risk", "0.1", "--risk-groups", "4", "--no-fid",
          "--no-extra-figures", "--eval-images", "200", "--out", str(out)])
    return out, json.loads((out / "metrics.json").read_text())


def test_krcps_lambdas_are_stored_per_pixel_and_used_by_every_interval(fitted_groups, digits):
    """`--risk-groups 4`: metrics give each group's λ, the head's `conformal_lambda_map` holds them (one value
    per group, restored by load_model), `conformal_interval` is mean -/+ λ_j z σ pixel by pixel, the
    reported risk is the loaded model's on the raw test images, and the SavedModel serves the same."""
    out, metrics = fitted_groups
    c = metrics["conformal"]
    assert 2 <= c["groups"] <= 4 and len(c["group_lambdas"]) == c["groups"] and c["lambda"] == 1.0
    model, _ = load_model(out)
    lam_map = model.head.conformal_lambda_map.numpy()
    assert lam_map.shape == digits.image_shape
    np.testing.assert_allclose(np.unique(lam_map), np.unique(np.float32(c["group_lambdas"])))
    x = digits.x_test[:200]
    lo, hi = _normal_conformal_interval(model, x, lam_map)
    assert c["risk"] == pytest.approx(np.mean(_outside(x, lo, hi)), abs=1e-6) and 0 <= c["splits_over_alpha"] <= 1
    main(["export", str(out), "--out", str(out.parent / "export")])
    loaded = tf.saved_model.load(str(out.parent / "export"))
    served = loaded.conformal_interval(tf.constant(x[:5]))
    np.testing.assert_allclose(served["hi"].numpy(), hi[:5], rtol=1e-5, atol=1e-6)


# RCPS within strata of images by mean interval width (Mondrian)


def _two_kinds_of_images(rng, n, pixels=100):
    """Half the images are confident and wrong (half-widths 0.05-0.055, deviations |z| 3 of them: far
    outside), half are wide and cautious (half-widths 0.3-0.33, deviations |z| 0.5 of them). Returns ratios and
    half-widths."""
    confident = rng.random(n) < 0.5
    c = np.where(confident, 3.0, 0.5)[:, None]
    half = np.where(confident, 0.05, 0.3)[:, None] * (1 + 0.1 * rng.random((n, 1))) * np.ones((1, pixels))
    return np.abs(rng.standard_normal((n, pixels))) * c, half


def _true_stratum_risk(lam, lo, hi):
    """The true risk at λ of the images whose width lies in (lo, hi]: each kind's share of that range
    (widths uniform over 0.05-0.055 and 0.3-0.33, half the images each) weighs its risk."""
    share = [max(0.0, min(hi, top) - max(lo, bottom)) / (top - bottom) for bottom, top in ((0.05, 0.055), (0.3, 0.33))]
    return (share[0] * _true_pixel_risk(lam, 3.0) + share[1] * _true_pixel_risk(lam, 0.5)) / sum(share)


def test_strata_keep_the_risk_of_confident_images_where_one_lambda_does_not():
    """One λ holds the average risk but lets the confident images' true risk exceed α (in >= 90 % of draws); with two
    strata each stratum's true risk exceeds α in at most a fraction δ of 200 calibration sets of 400
    images (plus Monte-Carlo slack), and the narrow stratum gets the larger λ."""
    rng = np.random.default_rng(5)
    alpha, delta = 0.1, 0.1
    over, one_over = np.zeros(2), 0
    for _ in range(200):
        ratio, half = _two_kinds_of_images(rng, 400)
        edges, lambdas = stratified_lambdas(ratio, half, alpha, delta, 2, rng)
        over += [_true_stratum_risk(lambdas[0], 0, edges[0]) > alpha, _true_stratum_risk(lambdas[1], edges[0], 1) > alpha]
        assert lambdas[0] > 1.5 * lambdas[1]
        one = rcps_lambda(grid_losses(ratio), alpha, delta)
        assert _true_stratum_risk(one, 0, 1) <= alpha
        one_over += _true_pixel_risk(one, 3.0) > alpha
    assert np.all(over / 200 <= delta + 0.03) and one_over / 200 >= 0.9


@pytest.fixture(scope="module")
def fitted_strata(tmp_path_factory):
    out = tmp_path_factory.mktemp("strata") / "run"
    main(["train", "--dataset", "digits", "--epochs", "2", "--risk", "0.1", "--risk-strata", "2", "--validation-split",
          "0.3", "--no-fid", "--no-extra-figures", "--eval-images", "300", "--out", str(out)])
    return out, json.loads((out / "metrics.json").read_text())


def test_strata_lambdas_are_stored_and_chosen_by_each_images_width(fitted_strata, digits):
    """`--risk-strata 2`: metrics give the edge and each stratum's λ, load_model restores them,
    `conformal_interval` is mean -/+ λ_s z σ with s from the image's mean half-width of its 90 % interval,
    the reported risk is the loaded model's on the raw test images, and the SavedModel serves the same."""
    out, metrics = fitted_strata
    c = metrics["conformal"]
    assert c["strata"] == 2 and len(c["strata_edges"]) == 1 and len(c["strata_lambdas"]) == 2
    model, _ = load_model(out)
    np.testing.assert_allclose(model.head.conformal_strata_lambdas.numpy()[:2], c["strata_lambdas"])
    x = digits.x_test[:300]
    width = (Z90 * model(x).stddev().numpy()).reshape(len(x), -1).mean(axis=1)
    lam = np.where(width > c["strata_edges"][0], c["strata_lambdas"][1], c["strata_lambdas"][0])[:, None, None, None]
    lo, hi = _normal_conformal_interval(model, x, lam)
    assert 0 < np.mean(width > c["strata_edges"][0]) < 1
    assert c["risk"] == pytest.approx(np.mean(_outside(x, lo, hi)), abs=1e-6)
    main(["export", str(out), "--out", str(out.parent / "export")])
    loaded = tf.saved_model.load(str(out.parent / "export"))
    served = loaded.conformal_interval(tf.constant(x[:8]))
    np.testing.assert_allclose(served["lo"].numpy(), lo[:8], rtol=1e-5, atol=1e-6)


