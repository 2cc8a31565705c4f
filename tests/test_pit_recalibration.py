"""PIT recalibration (issue 50, item 1; `--recalibration-method pit`): the recalibrated pixel distribution's
log_prob, CDF, quantile, mean and variance against SciPy's density composed with the histogram by hand and
integrated numerically; the Student-t pixel's (its map in logit F_df) against SciPy's t composed with the map
by hand and its bins' moments integrated by SciPy; the joint normal and t heads' copulas against SciPy's
multivariate normal and t and the change of variables by hand; a synthetic model whose shape is wrong in a
different way in each group of scales is fixed in every group and never loses held-out likelihood (a t head's
groups fixed too); a run records, saves, loads and exports it."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

from tfp_ae._tf import tfd
from tfp_ae.calibration import LEVELS, fit_pit_recalibration
from tfp_ae.config import RunConfig
from tfp_ae.heads.recalibrated import (
    PIT_EDGES,
    PIT_GROUPS,
    CopulaRecalibrated,
    PITRecalibrated,
    StudentTRecalibrated,
    fitted_parameters,
    identity_parameters,
    recalibrated_pixels,
)
from tfp_ae.models import build_model
from tfp_ae.train import load_model, run

FAMILIES = {"normal": (tfd.Normal, stats.norm), "logistic": (tfd.Logistic, stats.logistic)}
LEVEL_ENDS = np.concatenate([[0.0], PIT_EDGES, [1.0]])


def reference(ref, z_sample):
    """R fitted by hand to standardised residuals `z_sample` of the SciPy distribution `ref` (loc, scale): knots
    at their quantiles at the levels, and R(F(x)) and its log-density, by SciPy and NumPy in float64."""
    knots = np.quantile(z_sample, PIT_EDGES).astype(np.float32).astype(np.float64)
    u_knots = np.concatenate([[0.0], ref.cdf(knots_to_x(ref, knots)), [1.0]])

    def cdf(x):
        return np.interp(ref.cdf(x), u_knots, LEVEL_ENDS)

    def logpdf(x):
        j = np.clip(np.searchsorted(u_knots, ref.cdf(x), side="right") - 1, 0, len(PIT_EDGES))
        return ref.logpdf(x) + np.log(np.diff(LEVEL_ENDS)[j] / np.diff(u_knots)[j])
    return knots, cdf, logpdf


def knots_to_x(ref, knots):
    loc, scale = ref.args
    return loc + scale * knots


@pytest.mark.parametrize("family", list(FAMILIES))
def test_recalibrated_density_against_scipy(family, rng):
    """log_prob, cdf, quantile, mean, variance and samples of `PITRecalibrated` with R fitted to skewed residuals
    against R(F(x)) built by hand from SciPy's F and the quantiles, and its density integrated numerically."""
    tf_family, scipy_family = FAMILIES[family]
    loc, scale = 0.3, 0.2
    ref = scipy_family(loc, scale)
    z_sample = rng.gamma(2.0, 1.0, 20_000) - 2.0  # skewed: no scale of F fits it
    knots, cdf, logpdf = reference(ref, z_sample)
    params = fitted_parameters(family, z_sample)
    np.testing.assert_allclose(params["knots"], knots, rtol=1e-6)
    d = PITRecalibrated(tf_family(np.float32(loc), np.float32(scale)), *(params[k] for k in ("knots", "log_ratios",
                                                                                             "moments")))
    x = np.linspace(-1.0, 2.5, 57)
    np.testing.assert_allclose(d.log_prob(x.astype(np.float32)).numpy(), logpdf(x), atol=5e-5)
    np.testing.assert_allclose(d.cdf(x.astype(np.float32)).numpy(), cdf(x), atol=1e-5)
    q = np.array([0.001, 0.005, 0.05, 0.3, 0.5, 0.77, 0.95, 0.995, 0.999], np.float32)
    np.testing.assert_allclose(cdf(d.quantile(q).numpy().astype(np.float64)), q, atol=1e-5)
    pdf = lambda t: np.exp(logpdf(np.atleast_1d(t)))[0]  # noqa: E731
    breaks = list(knots_to_x(ref, knots))
    total = integrate.quad(pdf, -40, 40, points=breaks, limit=500)[0]
    mean = integrate.quad(lambda t: t * pdf(t), -40, 40, points=breaks, limit=500)[0]
    var = integrate.quad(lambda t: (t - mean) ** 2 * pdf(t), -40, 40, points=breaks, limit=500)[0]
    assert abs(total - 1) < 1e-5
    np.testing.assert_allclose(d.mean().numpy(), mean, rtol=1e-4)
    np.testing.assert_allclose(d.variance().numpy(), var, rtol=1e-4)
    draws = d.sample(40_000, seed=(3, 4)).numpy().astype(np.float64)
    assert stats.kstest(draws, cdf).pvalue > 1e-3
    identity = PITRecalibrated(tf_family(np.float32(loc), np.float32(scale)),
                               *(identity_parameters(family)[k] for k in ("knots", "log_ratios", "moments")))
    np.testing.assert_allclose(identity.log_prob(x.astype(np.float32)).numpy(), ref.logpdf(x), atol=2e-5)
    np.testing.assert_allclose(identity.cdf(x.astype(np.float32)).numpy(), ref.cdf(x), atol=2e-6)
    np.testing.assert_allclose(identity.variance().numpy(), ref.var(), rtol=1e-5)


@pytest.mark.parametrize("df", [1.5, 4.0, 40.0])
def test_student_t_recalibrated_against_scipy(df, rng):
    """A t pixel recalibrated by a map fitted in L = logit F_df(z) to skewed, wider residuals: log_prob and CDF are
    SciPy's t composed with the map by hand (bins at F_df^-1 of the knots, r_j = m_j / p_j); the quantile inverts
    SciPy's; the mean and variance are the bins' SciPy integrals (the variance infinite where df <= 2, as the t's); the mode
    is the density's argmax on a grid; with the identity map every readout is the t's own; the held-out PIT values
    are uniform at the levels; samples follow the CDF."""
    loc, scale = 0.3, 0.05
    w_heldout = (rng.gamma(2.0, 1.0, 20_000) - 2.0) * 1.7
    params = fitted_parameters("student_t", stats.t.logcdf(w_heldout, df) - stats.t.logsf(w_heldout, df))
    base = tfd.StudentT(np.float32(df), np.float32(loc), np.float32(scale))
    d = StudentTRecalibrated(base, *(params[k] for k in ("knots", "log_ratios", "moments")))
    ends = np.concatenate([[-np.inf], stats.t.ppf(stats.logistic.cdf(params["knots"].astype(np.float64)), df),
                           [np.inf]])
    r = np.exp(params["log_ratios"].astype(np.float64))
    np.testing.assert_allclose(r * np.diff(stats.t.cdf(ends, df)), np.diff(LEVEL_ENDS), rtol=1e-4)
    w = np.linspace(-12, 12, 97)
    x = (loc + scale * w).astype(np.float32)
    j = np.searchsorted(ends, (x - loc) / scale) - 1
    f_ends = stats.t.cdf(ends, df)
    cdf = LEVEL_ENDS[j] + np.diff(LEVEL_ENDS)[j] * (stats.t.cdf((x - loc) / scale, df) - f_ends[j]) / np.diff(f_ends)[j]
    np.testing.assert_allclose(d.cdf(x).numpy(), cdf, atol=2e-6)
    np.testing.assert_allclose(d.log_prob(x).numpy(), stats.t.logpdf(x, df, loc, scale) + np.log(r[j]), atol=2e-5)
    q = d.cdf(x).numpy().astype(np.float64)  # float32 levels, some within 1e-7 of 1: their quantiles by SciPy, the
    #                                           upper ones from the survival function (float64 rounds 1 - 1e-16)
    upper = stats.t.isf(np.interp(1 - q, 1 - LEVEL_ENDS[::-1], stats.t.sf(ends[::-1], df)), df)
    np.testing.assert_allclose(d.quantile(q.astype(np.float32)).numpy(), loc + scale * np.where(
        q < 0.5, stats.t.ppf(np.interp(q, LEVEL_ENDS, f_ends), df), upper), atol=5e-6)
    u_heldout = d.cdf((loc + scale * w_heldout).astype(np.float32)).numpy()
    np.testing.assert_allclose(np.quantile(u_heldout, PIT_EDGES), PIT_EDGES, atol=2e-3)
    moment = [sum(rj * integrate.quad(lambda t: t ** k * stats.t.pdf(t, df), a, b)[0]
                  for rj, a, b in zip(r, ends[:-1], ends[1:], strict=True)) for k in (1, 2) if k < df]
    np.testing.assert_allclose(d.mean().numpy(), loc + scale * moment[0], rtol=1e-5)  # df > 1 here
    np.testing.assert_allclose(d.variance().numpy(), scale ** 2 * (moment[1] - moment[0] ** 2) if df > 2 else np.inf,
                               rtol=1e-4)
    grid = np.linspace(loc - 1, loc + 1, 200_001).astype(np.float32)
    assert abs(d.mode().numpy() - grid[np.argmax(d.log_prob(grid).numpy())]) <= 2e-5
    draws = d.sample(20_000, seed=(1, 2)).numpy()
    assert stats.kstest(draws, lambda t: d.cdf(t.astype(np.float32)).numpy()).pvalue > 1e-3
    identity = StudentTRecalibrated(base, *(identity_parameters("student_t")[k] for k in ("knots", "log_ratios",
                                                                                           "moments")))
    np.testing.assert_allclose(identity.log_prob(x).numpy(), base.log_prob(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(identity.cdf(x).numpy(), base.cdf(x).numpy(), atol=1e-6)
    for read in ("mean", "variance", "mode"):
        np.testing.assert_allclose(getattr(identity, read)().numpy(), getattr(base, read)().numpy(), rtol=1e-6)


@pytest.mark.parametrize("family", ["normal", "student_t"])
def test_copula_density_samples_and_dependence_against_scipy(family, rng):
    """The joint normal's (a Gaussian copula) and the joint t's (a t copula, df 8) recalibrated marginals:
    log_prob is SciPy's multivariate normal or t at the mapped point plus the log-Jacobian of the per-pixel map,
    by hand; with R the identity it is the joint's; samples have the recalibrated marginals (KS) and the rank
    correlations of the joint's (a monotone map of each pixel), and the closed-form mean and variance; far-tail
    pixels stay finite."""
    d, df = 5, 8.0
    loc = rng.uniform(0, 1, d)
    a = rng.normal(0, 0.3, (d, d))
    cov = a @ a.T + np.diag(rng.uniform(0.01, 0.05, d))
    s = np.sqrt(np.diag(cov))
    chol = np.linalg.cholesky(cov).astype(np.float32)
    heldout = rng.gamma(2.0, 1.0, 20_000) - 2.0
    if family == "normal":
        ref, ref_joint, knot_ref = stats.norm, stats.multivariate_normal(loc, cov), stats.norm
        params = fitted_parameters("normal", heldout)
        joint = tfd.MultivariateNormalTriL(loc.astype(np.float32), chol)
        pixels = tfd.Normal(loc.astype(np.float32), s.astype(np.float32))
    else:
        ref, ref_joint, knot_ref = stats.t(df), stats.multivariate_t(loc, cov, df=df), stats.logistic
        params = fitted_parameters("student_t", ref.logcdf(heldout) - ref.logsf(heldout))
        joint = tfd.MultivariateStudentTLinearOperator(np.float32(df), loc.astype(np.float32),
                                                       tf.linalg.LinearOperatorLowerTriangular(chol))
        pixels = tfd.StudentT(np.float32(df), loc.astype(np.float32), s.astype(np.float32))

    def copula(p):
        return CopulaRecalibrated(joint, recalibrated_pixels(pixels, *(p[k] for k in ("knots", "log_ratios",
                                                                                       "moments"))))
    u_knots = np.concatenate([[0.0], knot_ref.cdf(params["knots"].astype(np.float64)), [1.0]])

    def reference_log_prob(y):
        w = (y - loc) / s
        j = np.clip(np.searchsorted(u_knots, ref.cdf(w), side="right") - 1, 0, len(PIT_EDGES))
        log_g = ref.logpdf(w) + np.log(np.diff(LEVEL_ENDS)[j] / np.diff(u_knots)[j])
        z = ref.ppf(np.interp(ref.cdf(w), u_knots, LEVEL_ENDS))
        return ref_joint.logpdf(loc + s * z) + np.sum(log_g - ref.logpdf(z), -1)

    c = copula(params)
    y = (loc + s * rng.normal(0, 1.5, (50, d))).astype(np.float32)
    np.testing.assert_allclose(c.log_prob(y).numpy(), reference_log_prob(y.astype(np.float64)), atol=1e-4)
    np.testing.assert_allclose(copula(identity_parameters(family)).log_prob(y).numpy(), joint.log_prob(y).numpy(),
                               atol=1e-4)
    draws = c.sample(20_000, seed=(1, 2)).numpy()
    for i in range(d):
        w = (draws[:, i].astype(np.float64) - loc[i]) / s[i]
        assert stats.kstest(w, lambda t: np.interp(ref.cdf(t), u_knots, LEVEL_ENDS)).pvalue > 1e-3
    same_seed = joint.sample(20_000, seed=(1, 2)).numpy()
    np.testing.assert_allclose(stats.spearmanr(draws).statistic, stats.spearmanr(same_seed).statistic, atol=1e-6)
    assert np.all(np.abs(draws.mean(0) - c.mean().numpy()) <= 4 * np.sqrt(c.variance().numpy() / 20_000))
    np.testing.assert_allclose(draws.var(0), c.variance().numpy(), rtol=0.06)
    far = (loc + s * np.array([-300.0, -40.0, 0.1, 40.0, 300.0])).astype(np.float32)
    assert np.isfinite(c.log_prob(far).numpy())


def test_a_far_tail_pixel_keeps_its_bin_and_its_density():
    """A confident model's pixel 300 and 3,000 scales out (F(x) is 1 in float32; the last knot is near 129): log_prob
    is log f + the last bin's log ratio, the CDF is between the last knot's level and 1, both finite; the moments
    of bins whose mass sits at their far end are SciPy's truncated normal's (a logistic's finite); samples and
    quantiles there are finite."""
    z_sample = np.random.default_rng(0).normal(0, 50, 10_000)  # residuals far wider than F
    params = fitted_parameters("normal", z_sample)
    d = PITRecalibrated(tfd.Normal(np.float32(0), np.float32(1)), params["knots"], params["log_ratios"],
                        params["moments"])
    for z in (300.0, 3000.0):
        want = stats.norm.logpdf(z) + params["log_ratios"][-1]
        np.testing.assert_allclose(d.log_prob(np.float32(z)).numpy(), want, rtol=1e-5)
        assert PIT_EDGES[-1] < d.cdf(np.float32(z)).numpy() <= 1.0
    assert np.isfinite(d.log_prob(np.float32(-3000.0)).numpy())
    # the moments of bins whose mass sits at a far end (a normal conditioned beyond z = 129): SciPy's truncnorm
    ends = np.concatenate([[-np.inf], params["knots"].astype(np.float64), [np.inf]])
    bins = [stats.truncnorm(a, b) for a, b in zip(ends[:-1], ends[1:], strict=True)]
    m = np.diff(LEVEL_ENDS)
    want = [m @ [b.mean() for b in bins], m @ [b.moment(2) for b in bins]]
    np.testing.assert_allclose(params["moments"], want, rtol=1e-5)
    logistic = fitted_parameters("logistic", z_sample)["moments"]
    assert np.isfinite(logistic).all() and logistic[1] - logistic[0] ** 2 > 100
    # samples and quantiles stay finite where F0 of the outer bins underflows float32 (knots near z = -129, 129)
    draws = d.sample(200_000, seed=(5, 6)).numpy()
    assert np.isfinite(draws).all() and draws.min() < params["knots"][0] and draws.max() > params["knots"][-1]
    q = np.array([1e-6, 0.001, 0.999, 1 - 1e-6], np.float32)
    assert np.isfinite(d.quantile(q).numpy()).all()
    np.testing.assert_allclose(d.cdf(d.quantile(q)).numpy(), q, rtol=0.05)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_values_within_ulps_of_a_knot_are_finite_and_monotone(family):
    """float32's log-CDF is not monotone within an ulp or two: a z one ulp above the identity map's knot at the
    0.25 level had a log-CDF below the knot's, its transfer was NaN, and a `matrix_normal_full` run's held-out
    log-density with it (1 pixel of 5 images in 6,000). Every value within 8 ulps of each knot (identity and a
    fitted map) maps to a finite z and log-Jacobian, non-decreasing in w up to float32 rounding."""
    tf_family = FAMILIES[family][0]
    skewed = np.random.default_rng(0).gamma(2.0, 1.0, 20_000) - 2.0
    for params in (identity_parameters(family), fitted_parameters(family, skewed)):
        d = PITRecalibrated(tf_family(np.float32(0), np.float32(1)),
                            *(params[k] for k in ("knots", "log_ratios", "moments")))
        knots = np.asarray(params["knots"], np.float32)
        w, lo, hi = [knots], knots, knots
        for _ in range(8):  # the floats 8 ulps either side
            lo, hi = np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))
            w += [lo, hi]
        w = np.sort(np.concatenate(w))
        z, log_dz = (t.numpy() for t in d.to_standard(tf.constant(w)))
        back = d.from_standard(tf.constant(z)).numpy()
        assert np.isfinite(z).all() and np.isfinite(log_dz).all() and np.isfinite(back).all()
        for v in (z, back):  # non-decreasing up to float32 rounding
            assert np.all(np.diff(v) >= -1e-6 * (1 + np.abs(v[1:])))


def test_pit_recalibration_fixes_a_wrong_shape_in_every_group(digits):
    """Targets whose noise has the wrong shape, and a different one by scale (uniform where the predicted scale
    is below its median: too short-tailed; Student-t with 2 df above it: too heavy-tailed), which no factor on
    the scales can fix: after the fit every quartile of the predicted std is within 0.02 of calibrated on the
    held-out pixels; the head's log_prob is SciPy's normal density times the fitted histogram density of its
    group; the held-out log-likelihood rises; a training call gives the distribution before recalibration."""
    model = build_model("normal_diag", digits.image_shape, pit_recalibration=True)
    x = digits.x_train[:400]
    dist = model(x)
    loc, scale = dist.mean().numpy(), dist.stddev().numpy()
    rng = np.random.default_rng(0)
    small = scale < np.median(scale)
    noise = np.where(small, rng.uniform(-1, 1, loc.shape), rng.standard_t(2, loc.shape))
    y = (loc + scale * noise).astype(np.float32)
    before = model(x).log_prob(y).numpy().sum()
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    info = fit_pit_recalibration(model, pairs)
    assert min(info["calibration_error_by_std_before"]) > 0.05, info["calibration_error_by_std_before"]
    assert max(info["calibration_error_by_std_after"]) <= 0.02, info["calibration_error_by_std_after"]
    after = model(x).log_prob(y).numpy().sum()
    assert after - before > 0.05 * y.size, (before, after)  # nats: the held-out likelihood rises
    # a training step trains the distribution before recalibration (the map is fitted after training)
    np.testing.assert_allclose(model(x, training=True).log_prob(y).numpy().sum(), before, rtol=1e-6)
    edges, knots = np.array(info["scale_edges"]), np.array(info["knots"])
    group = np.searchsorted(edges, np.log(scale[:3]).astype(np.float32), side="left")
    z = (y[:3] - loc[:3]) / scale[:3]
    k = knots[group]  # [3, 8, 8, 1, J - 1]
    inf = np.full_like(k[..., :1], np.inf)
    j = (z[..., None] >= k).sum(-1)[..., None]
    lo = np.take_along_axis(np.concatenate([-inf, k], -1), j, -1)[..., 0]
    hi = np.take_along_axis(np.concatenate([k, inf], -1), j, -1)[..., 0]
    j = j[..., 0]  # the bin's probability from the tail it lies in (a knot at z = 12 has cdf 1 in float64)
    p_bin = np.where(lo >= 0, stats.norm.sf(lo) - stats.norm.sf(hi), stats.norm.cdf(hi) - stats.norm.cdf(lo))
    want = stats.norm.logpdf(y[:3], loc[:3], scale[:3]) + np.log(np.diff(LEVEL_ENDS)[j] / p_bin)
    np.testing.assert_allclose(model(x[:3]).log_prob(y[:3]).numpy(), want.reshape(3, -1).sum(axis=1), rtol=1e-4)
    lo, hi = (t.numpy() for t in model.head.interval(model(x), 0.9))  # the head's own 90 % intervals now cover
    inside = (y >= lo) & (y <= hi)
    for quartile in np.array_split(np.argsort(scale.ravel(), kind="stable"), 4):
        assert abs(inside.ravel()[quartile].mean() - 0.9) <= 0.02


def test_pit_recalibration_of_a_t_head_fixes_every_group(digits):
    """A joint t head (`student_t_diag`, df >= 3 so that the std exists) whose pixels' noise has the wrong shape
    by scale (as above): the map, fitted in logit F_df per group, makes every quartile of the predicted std
    within 0.02 of calibrated and the head's own 90 % intervals cover 90 % of the held-out pixels in each; the
    marginals are `StudentTRecalibrated`, joined by the model's t copula, their moments and modes those of the
    map gathered per pixel."""
    model = build_model("student_t_diag", digits.image_shape, pit_recalibration=True, min_df=3.0)
    x = digits.x_train[:400]
    marginal = model.head.marginal(model.head._parts(model(x))[2])
    loc, scale = (t.numpy().reshape(x.shape) for t in (marginal.distribution.loc, marginal.distribution.scale))
    rng = np.random.default_rng(0)
    small = scale < np.median(scale)
    y = (loc + scale * np.where(small, rng.uniform(-1, 1, loc.shape), rng.standard_t(1.5, loc.shape))).astype(
        np.float32)
    info = fit_pit_recalibration(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(100))
    assert min(info["calibration_error_by_std_before"]) > 0.05, info["calibration_error_by_std_before"]
    assert max(info["calibration_error_by_std_after"]) <= 0.02, info["calibration_error_by_std_after"]
    _, _, comp = model.head._parts(model(x[:20]))
    assert isinstance(comp, CopulaRecalibrated) and isinstance(comp.marginal, StudentTRecalibrated)
    # the head's knots in z, computed once per image and group, are the per-pixel ones; each pixel's group from the
    # same call's scale, as the head takes it (a batch of 400 gives scales an ulp apart, and an edge is a pixel's log
    # scale: one pixel of 1,280 fell in the next group in a CI run)
    log_scale = tf.math.log(comp.marginal.distribution.scale).numpy().reshape(20, -1)
    group = np.searchsorted(np.array(info["scale_edges"], np.float32), log_scale, side="left")
    per_pixel = StudentTRecalibrated(comp.marginal.distribution, *(getattr(model.head, f"pit_{k}").numpy()[group]
                                                                   for k in ("knots", "log_ratios", "moments")))
    for read in ("variance", "mean"):
        np.testing.assert_allclose(getattr(comp.marginal, read)().numpy(), getattr(per_pixel, read)().numpy(),
                                   rtol=1e-5)
    # the mode is the recalibrated density's maximum over the bins: where two bins' maxima are equal to rounding the
    # two computations may pick different ones (1 pixel in 1,280 in one CI run), so the densities there are compared
    modes = [d.mode() for d in (comp.marginal, per_pixel)]
    np.testing.assert_allclose(*(per_pixel.log_prob(m).numpy() for m in modes), rtol=1e-5, atol=1e-5)
    assert np.mean(modes[0].numpy() == modes[1].numpy()) > 0.99
    lo, hi = (t.numpy() for t in model.head.interval(model(x), 0.9))
    inside = (y >= lo) & (y <= hi)
    for quartile in np.array_split(np.argsort(scale.ravel(), kind="stable"), 4):
        assert abs(inside.ravel()[quartile].mean() - 0.9) <= 0.02


@pytest.mark.parametrize("head", ["logistic", "normal_lowrank"])
def test_pit_recalibration_is_saved_guarded_and_exported(head, digits, tmp_path):
    """`--recalibration-method pit` (a factorised head, and a joint one through the copula): metrics.json's
    `recalibration.pit` (edges, masses, held-out numbers, applied), restored by load_model; the test calibration
    within std quartiles is what the loaded model gives on raw test images; the SavedModel's log_prob and
    intervals are the eager model's; TensorFlow Lite converts the logistic head's log_prob."""
    from tfp_ae.calibration import CALIBRATION_IMAGES, calibration
    from tfp_ae.export import export_run, export_tflite
    out = tmp_path / "run"
    _, m = run(RunConfig(dataset="digits", head=head, dequantize=True, recalibrate=True, recalibration_method="pit",
                         epochs=3, fid=False, extra_figures=False, eval_images=100, verbose=0, out=str(out)))
    pit = m["recalibration"]["pit"]
    assert m["recalibration"]["method"] == "pit" and m["recalibration"]["local"] is None
    assert pit["applied"] and np.shape(pit["knots"]) == (PIT_GROUPS, len(PIT_EDGES))
    assert len(pit["scale_edges"]) == PIT_GROUPS - 1
    assert pit["validation_bits_per_dim_after"] <= m["recalibration"]["validation_bits_per_dim_before"] + 0.1
    model, _ = load_model(out)
    np.testing.assert_allclose(model.head.pit_knots.numpy(), pit["knots"], rtol=1e-6)
    x = digits.x_test[:CALIBRATION_IMAGES]
    assert calibration(model, x, num_levels=digits.num_levels, seed=0)["coverage"] == m["calibration"]["coverage"]
    export_run(out, tmp_path / "export")
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    probe = tf.constant(x[:4])
    np.testing.assert_allclose(loaded.log_prob(probe)["log_prob"].numpy(), model.log_prob(x[:4]).numpy(),
                               rtol=1e-5, atol=1e-4)
    lo, hi = (t.numpy() for t in model.head.interval(model(x[:4]), 0.9))
    served = loaded.interval(probe)
    np.testing.assert_allclose(served["lo"].numpy(), lo, atol=1e-5)
    np.testing.assert_allclose(served["hi"].numpy(), hi, atol=1e-5)
    if head == "logistic":  # the low-rank head's Cholesky has no TensorFlow Lite kernel, recalibrated or not
        report = export_tflite(model, tmp_path / "tflite", probe=x[:4])
        assert report["log_prob"] == "converted", report


@pytest.mark.parametrize("head", ["normal_diag", "normal_lowrank", "matrix_normal_full", "student_t_diag",
                                  "student_t_lowrank", "matrix_t_full"])
def test_identity_until_fitted_and_levels_match_the_bins(head):
    """Built with PIT recalibration's weights and not fitted, a head is its family; the bins' inner ends are the
    ends of the central intervals whose coverage is reported (and the median), so a fit covers every level."""
    assert {round((1 - lv) / 2, 6) for lv in LEVELS} | {round((1 + lv) / 2, 6) for lv in LEVELS} | {0.5} \
        == {round(p, 6) for p in PIT_EDGES}
    plain = build_model(head, (4, 4, 1))
    recal = build_model(head, (4, 4, 1), pit_recalibration=True)
    recal.encoder.set_weights(plain.encoder.get_weights())
    recal.decoder.set_weights(plain.decoder.get_weights())
    x = np.random.default_rng(0).uniform(size=(3, 4, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(recal.log_prob(x).numpy(), plain.log_prob(x).numpy(), rtol=1e-5)
    for read in ("variance", "interval", "point_estimate"):
        np.testing.assert_allclose(getattr(recal.head, read)(recal(x)), getattr(plain.head, read)(plain(x)), rtol=1e-5,
                                   atol=1e-6)
    if head != "normal_diag":  # the copula sends the joint's own draws through the identity map
        np.testing.assert_allclose(recal(x).sample(2, seed=(1, 2)), plain(x).sample(2, seed=(1, 2)), rtol=1e-4,
                                   atol=1e-5)
