"""Each head's log_prob against an independent reference (scipy or the density written out)."""
import numpy as np
import pytest
import scipy.optimize as so
import scipy.special as sp
import scipy.stats as st
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_ae.errors import InputError
from tfp_ae.heads import DEFAULT_RANK, HEADS, PARAMETERIZATIONS, bits_per_dim, get_head, make_head, mixable_heads

SHAPE = (3, 4, 1)          # non-square, so rows and columns cannot be confused
H, W, _ = SHAPE
D = H * W
RTOL = 1e-4


def softplus(x):
    return np.logaddexp(0, x) + 1e-6


def tril(p, n):
    """FillScaleTriL's layout (tfp.math.fill_triangular) with diagonal 1e-6 + softplus."""
    m = tfp.math.fill_triangular(tf.constant(p, tf.float64)).numpy()
    m[np.diag_indices(n)] = softplus(np.diag(m))
    return m


def scale_matrix(kind, p, n):
    """(scale matrix S, number of parameters used) for identity / diag / full."""
    if kind == "identity":
        return np.eye(n), 0
    if kind == "diag":
        return np.diag(softplus(p[:n])), n
    k = n * (n + 1) // 2
    return tril(p[:k], n), k


def reference_log_prob(name, p, x):
    """Independent log-density of one component with flat parameters p at image x, in nats."""
    xv = x.reshape(-1)
    if name in ("mse", "normal_identity"):
        return st.multivariate_normal(p[:D], np.eye(D)).logpdf(xv)
    if name == "normal_diag":
        return st.multivariate_normal(p[:D], np.diag(softplus(p[D:]) ** 2)).logpdf(xv)
    if name == "logistic":
        return st.logistic(p[:D], softplus(p[D:])).logpdf(xv).sum()
    if name == "bernoulli":
        q = sp.expit(p)
        return np.sum(xv * np.log(q) + (1 - xv) * np.log1p(-q))
    if name == "continuous_bernoulli":
        lam = sp.expit(p)  # C(lam) = 2 artanh(1 - 2 lam) / (1 - 2 lam), Loaiza-Ganem & Cunningham Eq. 7
        c = 2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam)
        return np.sum(np.log(c) + xv * np.log(lam) + (1 - xv) * np.log1p(-lam))
    cls = get_head(name)
    if name.endswith("_lowrank"):   # diag(sigma^2) + V V^T, layout [mu, sigma, V (D x r row-major), df]
        v = p[2 * D:2 * D + D * DEFAULT_RANK].reshape(D, DEFAULT_RANK)
        cov = np.diag(softplus(p[D:2 * D]) ** 2) + v @ v.T
        if name.startswith("normal_"):
            return st.multivariate_normal(p[:D], cov).logpdf(xv)
        return st.multivariate_t(p[:D], cov, df=softplus(p[-1])).logpdf(xv)
    if name.startswith(("normal_", "student_t_")):
        s, n = scale_matrix(cls.scale, p[D:], D)
        if name.startswith("normal_"):
            return st.multivariate_normal(p[:D], s @ s.T).logpdf(xv)
        return st.multivariate_t(p[:D], s @ s.T, df=softplus(p[-1])).logpdf(xv)
    if name.startswith("matrix_"):
        m = p[:D].reshape(H, W)
        u, nu = scale_matrix(cls.scale, p[D:], H)
        v, _ = scale_matrix(cls.scale, p[D + nu:], W)
        if name.startswith("matrix_normal"):
            return st.matrix_normal(m, u @ u.T, v @ v.T).logpdf(x.reshape(H, W))
        return matrix_t_log_prob(x.reshape(H, W), softplus(p[-1]), m, u @ u.T, v @ v.T)
    raise KeyError(name)


def matrix_t_log_prob(x, df, m, rowcov, colcov):
    """TFP's matrix-t, written out: vec(X) ~ multivariate t(df, vec(M), V V^T (x) U U^T) with
    column-stacking vec. (This is the elliptical matrix-t; Gupta & Nagar's Theorem 4.2.1 matrix
    variate t is another distribution, see `test_matrix_t_is_not_gupta_nagar`.)"""
    vec = lambda a: a.T.reshape(-1)  # noqa: E731
    return st.multivariate_t(vec(m), np.kron(colcov, rowcov), df=df).logpdf(vec(x))


def gupta_nagar_matrix_t_log_prob(x, nu, m, sigma, omega):
    """Gupta & Nagar (2000), Theorem 4.2.1: T_{n,p}(nu, M, Sigma, Omega) density."""
    n, p = x.shape
    a = np.eye(n) + np.linalg.solve(sigma, x - m) @ np.linalg.solve(omega, (x - m).T)
    return (sp.multigammaln((nu + n + p - 1) / 2, n) - sp.multigammaln((nu + n - 1) / 2, n)
            - n * p / 2 * np.log(np.pi) - p / 2 * np.linalg.slogdet(sigma)[1]
            - n / 2 * np.linalg.slogdet(omega)[1] - (nu + n + p - 1) / 2 * np.linalg.slogdet(a)[1])


def random_params(rng, size, batch=2):
    return rng.normal(0, 0.5, size=(batch, size)).astype(np.float32)


def random_images(rng, batch=2):
    return rng.uniform(0.01, 0.99, size=(batch,) + SHAPE).astype(np.float32)


ANALYTIC = [n for n in HEADS if n != "maf"]


@pytest.mark.parametrize("name", ANALYTIC)
def test_log_prob_matches_reference(name, rng):
    head = make_head(name, SHAPE)
    p, x = random_params(rng, head.size), random_images(rng)
    got = head.new(tf.constant(p)).log_prob(x).numpy()
    want = [reference_log_prob(name, p[i].astype(np.float64), x[i].astype(np.float64)) for i in range(len(x))]
    np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("name", [n for n in ANALYTIC if n in mixable_heads()])
def test_mixture_is_logsumexp_of_weighted_components(name, rng):
    k = 3
    head = make_head(name, SHAPE, num_components=k)
    p, x = random_params(rng, head.size), random_images(rng)
    got = head.new(tf.constant(p)).log_prob(x).numpy()
    size = get_head(name).component_params_size(SHAPE)
    for i in range(len(x)):
        pi = p[i].astype(np.float64)
        logw = pi[:k] - sp.logsumexp(pi[:k])
        comps = pi[k:].reshape(k, size)
        want = sp.logsumexp([logw[j] + reference_log_prob(name, comps[j], x[i].astype(np.float64))
                             for j in range(k)])
        np.testing.assert_allclose(got[i], want, rtol=RTOL)


def test_maf_matches_change_of_variables(rng):
    head = make_head("maf", SHAPE)
    p, x = random_params(rng, head.size), random_images(rng)
    for w in head.made.trainable_weights:  # a non-trivial flow; masks act as kernel constraints
        value = tf.constant(rng.normal(0, 0.3, size=w.shape), tf.float32)
        w.assign(w.constraint(value) if getattr(w, "constraint", None) else value)
    got = head.new(tf.constant(p)).log_prob(x).numpy()
    y = x.reshape(2, D)
    shift, log_scale = np.moveaxis(head.made(y).numpy(), -1, 0)
    z = (y - shift) * np.exp(-log_scale)  # inverse of y = z * exp(log_scale) + shift
    want = [st.multivariate_normal(p[i], np.eye(D)).logpdf(z[i]) - log_scale[i].sum() for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=RTOL)
    # autoregressive: shift/scale of pixel i must not depend on pixels >= i
    y2 = y.copy()
    y2[:, 5:] += 1.0
    np.testing.assert_allclose(head.made(y2).numpy()[:, :6], head.made(y).numpy()[:, :6], rtol=1e-6)


def test_matrix_t_is_not_gupta_nagar(rng):
    """tfd.MatrixTLinearOperator is the elliptical matrix-t (a multivariate t of vec(X)), not the
    matrix variate t of Gupta & Nagar Theorem 4.2.1: both are densities, they differ for n, p > 1."""
    x, m = rng.uniform(size=(H, W)), rng.uniform(size=(H, W))
    a, b = rng.normal(size=(H, H)), rng.normal(size=(W, W))
    sigma, omega, nu = a @ a.T + np.eye(H), b @ b.T + np.eye(W), 5.0
    assert abs(matrix_t_log_prob(x, nu, m, sigma, omega)
               - gupta_nagar_matrix_t_log_prob(x, nu, m, sigma, omega)) > 1e-2
    # one row: Gupta & Nagar's T_{1,p}(nu, m, s, Omega) is the multivariate t(nu, m, s Omega / nu)
    xr, mr = x[:1], m[:1]
    np.testing.assert_allclose(gupta_nagar_matrix_t_log_prob(xr, nu, mr, np.eye(1) * 2.0, omega),
                               st.multivariate_t(mr[0], 2.0 * omega / nu, df=nu).logpdf(xr[0]), rtol=1e-8)


@pytest.mark.parametrize("name", list(HEADS))
def test_point_estimate_and_variance_shapes(name, rng):
    for k in ([1, 3] if get_head(name).mixable else [1]):
        head = make_head(name, SHAPE, num_components=k)
        dist = head.new(tf.constant(random_params(rng, head.size, batch=5)))
        pe, var = head.point_estimate(dist).numpy(), head.variance(dist).numpy()
        assert pe.shape == (5,) + SHAPE and var.shape == (5,) + SHAPE
        assert np.all((pe >= 0) & (pe <= 1))
        finite = var[np.isfinite(var)]
        assert np.all(finite >= 0)


def test_variance_values(rng):
    # normal_diag: sigma^2; full: row sums of L^2; mixture: law of total variance
    head = make_head("normal_diag", SHAPE)
    p = random_params(rng, head.size, batch=1)
    np.testing.assert_allclose(head.variance(head.new(p)).numpy().reshape(-1), softplus(p[0, D:]) ** 2, rtol=1e-5)
    head = make_head("normal_full", SHAPE)
    p = random_params(rng, head.size, batch=1)
    s = tril(p[0, D:].astype(np.float64), D)
    np.testing.assert_allclose(head.variance(head.new(p)).numpy().reshape(-1), np.diag(s @ s.T), rtol=1e-5)
    head = make_head("matrix_normal_full", SHAPE)
    p = random_params(rng, head.size, batch=1)
    dist = head.new(p)
    np.testing.assert_allclose(head.variance(dist).numpy()[0, ..., 0],
                               head._parts(dist)[0].variance().numpy()[0], rtol=1e-5)
    head = make_head("normal_diag", SHAPE, num_components=3)
    p = random_params(rng, head.size, batch=1)
    samples = head.new(p).sample(200000, seed=1).numpy()
    np.testing.assert_allclose(head.variance(head.new(p)).numpy(), samples.var(0), rtol=0.03)
    np.testing.assert_allclose(head.mean(head.new(p)).numpy(), samples.mean(0), atol=0.01)


def test_t_mixture_point_estimate_is_best_component_mode(rng):
    head = make_head("student_t_diag", SHAPE, num_components=3)
    p = random_params(rng, head.size, batch=4)
    dist = head.new(p)
    pe = head.mode(dist).numpy()
    size = get_head("student_t_diag").component_params_size(SHAPE)
    for i in range(4):
        modes = p[i, 3:].reshape(3, size)[:, :D]  # the mode of a t is its location
        lp = [dist.log_prob(np.broadcast_to(mo.reshape(SHAPE), (4,) + SHAPE)).numpy()[i] for mo in modes]
        np.testing.assert_allclose(pe[i].reshape(-1), modes[int(np.argmax(lp))], rtol=1e-6)


# Paper Table 1 (MLP, 784 pixels). The paper's K=1 heads are one-component mixtures with one
# mixture logit more (33 parameters: 32 weights + bias); ours are the plain distributions.
PAPER_MLP = {("mse", 1): 50992, ("normal_identity", 1): 51025, ("normal_diag", 1): 76897,
             ("normal_full", 1): 10205785, ("student_t_identity", 1): 51058, ("student_t_diag", 1): 76930,
             ("student_t_full", 1): 10205818, ("maf", 1): 76090, ("matrix_normal_identity", 1): 51025,
             ("matrix_normal_diag", 1): 52873, ("matrix_normal_full", 1): 77821, ("matrix_t_identity", 1): 51058,
             ("matrix_t_diag", 1): 52906, ("matrix_t_full", 1): 77854,
             ("normal_identity", 10): 284170, ("normal_diag", 10): 542890, ("student_t_identity", 10): 284500,
             ("student_t_diag", 10): 543220, ("matrix_normal_identity", 10): 284170,
             ("matrix_normal_diag", 10): 302650, ("matrix_normal_full", 10): 552130,
             ("matrix_t_identity", 10): 284500, ("matrix_t_diag", 10): 302980, ("matrix_t_full", 10): 552460}


@pytest.mark.parametrize("name,k", list(PAPER_MLP))
def test_mlp_parameter_counts_match_paper(name, k):
    """MLP parameters = encoder (784*32 + 32) + decoder (33 * params_size) + head weights (MAF's MADE)."""
    cls = get_head(name)
    made = 784 * 10 + 10 + 10 * 2 * 784 + 2 * 784 if name == "maf" else 0
    ours = 784 * 32 + 32 + 33 * cls.params_size((28, 28, 1), k) + made
    dead_logit = 33 if (k == 1 and cls.mixable) else 0
    assert ours + dead_logit == PAPER_MLP[name, k]


def test_built_model_counts_parameters_like_the_formula():
    from tfp_ae.models import build_model
    assert build_model("normal_diag", (28, 28, 1)).count_params() == 76897 - 33
    assert build_model("maf", (28, 28, 1)).count_params() == 76090
    assert build_model("normal_identity", (28, 28, 1), 10).count_params() == 284170


def test_unknown_head_lists_valid_names():
    with pytest.raises(ValueError, match="unknown head 'gauss'.*normal_diag"):
        make_head("gauss", SHAPE)


@pytest.mark.parametrize("k", [0, -1, 1.5, "2"])
def test_bad_num_components(k):
    with pytest.raises(ValueError, match="num_components"):
        make_head("normal_diag", SHAPE, num_components=k)


@pytest.mark.parametrize("name", ["mse", "maf"])
def test_non_mixing_heads_refuse_k(name):
    with pytest.raises(ValueError, match="does not mix"):
        make_head(name, SHAPE, num_components=10)


def test_matrix_heads_need_one_channel():
    with pytest.raises(ValueError, match="one channel"):
        make_head("matrix_normal_diag", (4, 4, 3))


def test_mse_loss_is_mean_squared_error(rng):
    head = make_head("mse", SHAPE)
    p, x = random_params(rng, head.size), random_images(rng)
    dist = head.new(p)
    np.testing.assert_allclose(head.loss(x, dist).numpy(), ((x.reshape(2, -1) - p) ** 2).mean(1), rtol=1e-5)
    # and its NLL is the unit-variance normal's: D/2 (MSE + log 2 pi)
    np.testing.assert_allclose(-dist.log_prob(x).numpy(), D / 2 * (((x.reshape(2, -1) - p) ** 2).mean(1)
                                                                    + np.log(2 * np.pi)), rtol=1e-5)


def test_bits_per_dim():
    assert bits_per_dim(0.0, 784) == 8.0  # the uniform density on [0, 1]^D
    assert np.isclose(bits_per_dim(784 * np.log(2), 784), 9.0)
    assert np.isclose(bits_per_dim(0.0, 64, num_levels=17), np.log2(17))


def test_gradients_are_finite_for_every_head(digits):
    from tfp_ae.models import build_model
    x = tf.constant(digits.x_train[:16])
    for name, cls in HEADS.items():
        for k in ([1, 3] if cls.mixable else [1]):
            model = build_model(name, x.shape[1:], k)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(model.head.loss(x, model(x)))
            grads = tape.gradient(loss, model.trainable_variables)
            assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads), (name, k)


def test_maf_fast_sampler_equals_tfp_flow(rng):
    # the O(D H) sampler must reproduce TFP's MaskedAutoregressiveFlow sample exactly (same draws)
    head = make_head("maf", SHAPE)
    for w in head.made.trainable_weights:  # non-trivial weights, kept autoregressive by the masks
        value = tf.constant(rng.normal(0, 0.2, size=w.shape), tf.float32)
        w.assign(w.constraint(value) if getattr(w, "constraint", None) else value)
    dist = head.new(tf.constant(random_params(rng, head.size, batch=4)))
    fast = head.sample(dist, 6, seed=(3, 4)).numpy()
    assert fast.shape == (6, 4) + SHAPE
    np.testing.assert_allclose(fast, dist.sample(6, seed=(3, 4)).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 28])
def test_scale_tril_equals_fill_scale_tril(n, rng):
    from tfp_ae._tf import tfb
    from tfp_ae.heads.elliptical import _full_scale
    p = tf.constant(rng.normal(size=(3, n * (n + 1) // 2)), tf.float32)
    want = tfb.FillScaleTriL(diag_bijector=tfb.Softplus(), diag_shift=1e-6)(p).numpy()
    np.testing.assert_allclose(_full_scale(p)[0].numpy(), want, rtol=1e-6, atol=1e-7)


def test_scale_tril_gradient_equals_fill_scale_tril(rng):
    """`_full_scale`'s hand-written `set_diag` gradient equals autodiff through FillScaleTriL."""
    from tfp_ae._tf import tfb
    from tfp_ae.heads.elliptical import _full_scale
    p = tf.constant(rng.normal(size=(3, 15)), tf.float32)
    w = tf.constant(rng.normal(size=(3, 5, 5)), tf.float32)
    grads = []
    for fn in (lambda q: _full_scale(q)[0], tfb.FillScaleTriL(diag_bijector=tfb.Softplus(), diag_shift=1e-6)):
        with tf.GradientTape() as tape:
            tape.watch(p)
            total = tf.reduce_sum(w * fn(p))
        grads.append(tape.gradient(total, p).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["matrix_normal_full", "matrix_t_diag"])
def test_matrix_samples_match_mean_and_variance_in_graph_mode(name, rng):
    head = make_head(name, SHAPE, num_components=2)
    p = random_params(rng, head.size, batch=2)
    if name.startswith("matrix_t"):  # large df so the variance exists and converges quickly
        size = get_head(name).component_params_size(SHAPE)
        for k in range(2):
            p[:, 2 + (k + 1) * size - 1] = 30.0
    draw = tf.function(lambda q: head.sample(head.new(q), 20000, seed=(5, 6)), autograph=False)
    samples = draw(tf.constant(p)).numpy()
    dist = head.new(tf.constant(p))
    assert samples.shape == (20000, 2) + SHAPE
    np.testing.assert_allclose(samples.mean(0), head.mean(dist).numpy(), atol=0.08)
    np.testing.assert_allclose(samples.var(0), head.variance(dist).numpy(), rtol=0.08, atol=0.02)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("name,k", [("normal_full", 1), ("normal_full", 2), ("student_t_full", 1), ("student_t_full", 2)])
def test_full_scale_log_prob_and_gradient_equal_tfp(name, k, parameterization, rng):
    """The packed-parameter gradient (`_tril_quadratic_log_det`, `_precision_quadratic_log_det`)
    equals autodiff through TFP's FillScaleTriL distributions (precision: the scale operator
    (L^T)^{-1}), also for x broadcast against the batch (extra sample axis)."""
    from tfp_ae._tf import tfb, tfd
    head = make_head(name, (3, 3, 1), k, parameterization=parameterization)
    params = tf.constant(random_params(rng, head.size, batch=4))
    x = tf.constant(rng.uniform(size=(5, 4, 3, 3, 1)), tf.float32)  # [sample, batch, H, W, C]

    def reference(p):
        d, m = 9, 9 * 10 // 2
        per = d + m + int(head.student_t)
        if k > 1:
            logits, comp = p[..., :k], tf.reshape(p[..., k:], [-1, k, per])
        else:
            comp = p
        loc, s = comp[..., :d], comp[..., d:d + m]
        tril = tf.linalg.LinearOperatorLowerTriangular(tfb.FillScaleTriL(diag_bijector=tfb.Softplus(),
                                                                         diag_shift=1e-6)(s))
        if parameterization == "precision":
            tril = tf.linalg.LinearOperatorInversion(tf.linalg.LinearOperatorAdjoint(tril))
        if head.student_t:
            dist = tfd.MultivariateStudentTLinearOperator(1e-6 + tf.math.softplus(comp[..., -1]), loc, tril)
        else:
            dist = tfd.MultivariateNormalLinearOperator(loc, tril)
        if k > 1:
            dist = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), dist)
        return dist.log_prob(tf.reshape(x, [5, 4, 9]))

    results = []
    for fn in (lambda p: head.new(p).log_prob(x), reference):
        with tf.GradientTape() as tape:
            tape.watch(params)
            lp = fn(params)
            total = tf.reduce_sum(lp)
        results.append((lp.numpy(), tape.gradient(total, params).numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["normal_full", "student_t_full"])
def test_precision_parameterization_matches_scipy(name, rng):
    """`parameterization="precision"`: L L^T is the precision (Dorta et al. 2018), so the covariance
    (scale matrix of a t) is (L L^T)^{-1}: log_prob against SciPy, the pixel variances against its
    diagonal, and samples' mean and variance against both."""
    head = make_head(name, SHAPE, parameterization="precision")
    p, x = random_params(rng, head.size), random_images(rng)
    p[:, -1] = 3.0  # the t's df: 3 + 1e-6 (the variance exists)
    dist = head.new(tf.constant(p))
    m = D * (D + 1) // 2
    covs = [np.linalg.inv(tril(p[i, D:D + m].astype(np.float64), D) @ tril(p[i, D:D + m].astype(np.float64), D).T)
            for i in range(len(p))]
    if head.student_t:
        df = softplus(np.float64(p[0, -1]))
        want = [st.multivariate_t(p[i, :D], covs[i], df=df).logpdf(x[i].ravel()) for i in range(len(p))]
        var = [np.diag(c) * df / (df - 2) for c in covs]
    else:
        want = [st.multivariate_normal(p[i, :D], covs[i]).logpdf(x[i].ravel()) for i in range(len(p))]
        var = [np.diag(c) for c in covs]
    np.testing.assert_allclose(dist.log_prob(x).numpy(), want, rtol=RTOL)
    np.testing.assert_allclose(head.variance(dist).numpy().reshape(len(p), D), var, rtol=1e-4)
    n = 20000
    samples = head.sample(dist, n, seed=(1, 2)).numpy().reshape(n, len(p), D)
    assert np.all(np.abs(samples.mean(0) - p[:, :D]) < 5 * np.sqrt(np.array(var) / n))  # 5 standard errors
    if not head.student_t:  # a t with df 3 has no fourth moment: its sample variance does not settle
        np.testing.assert_allclose(samples.var(0), var, rtol=0.08)


def test_parameterization_bad_value_is_named():
    with pytest.raises(InputError, match="parameterization .*scale, precision.*'cholesky'"):
        make_head("normal_full", SHAPE, parameterization="cholesky")
    with pytest.raises(InputError, match="has no parameterization"):
        make_head("normal_diag", SHAPE, parameterization="precision")


# ---- uncertainty maps: central-interval width (issue 18) ---------------------------------------
def _params(name, k, seed, batch=3):
    head = make_head(name, SHAPE, k)
    return head, tf.constant(np.random.default_rng(seed).normal(0, 0.5, (batch, head.size)), tf.float32)


def _sampled_width(head, dist, n=4000, level=0.9):
    x = head.sample(dist, n, seed=(1, 2)).numpy()
    return np.percentile(x, 100 * (1 + level) / 2, axis=0) - np.percentile(x, 100 * (1 - level) / 2, axis=0)


def test_interval_width_of_a_normal_is_its_quantile_range():
    head, p = _params("normal_diag", 1, 0)
    sigma = softplus(p.numpy()[:, D:]).reshape(-1, *SHAPE)
    want = (st.norm.ppf(0.95) - st.norm.ppf(0.05)) * sigma
    np.testing.assert_allclose(head.interval_width(head.new(p)).numpy(), want, rtol=1e-5)
    want80 = (st.norm.ppf(0.9) - st.norm.ppf(0.1)) * sigma
    np.testing.assert_allclose(head.interval_width(head.new(p), level=0.8).numpy(), want80, rtol=1e-5)
    with pytest.raises(ValueError, match="level"):
        head.interval_width(head.new(p), level=1.0)


@pytest.mark.parametrize("df", [0.4, 0.9, 5.0])
def test_interval_width_of_student_t_exists_for_df_below_one(df):
    """A t with df < 1 has no mean or variance, but its quantiles exist (scipy's t.ppf)."""
    head, p = _params("student_t_diag", 1, 1)
    p = p.numpy()
    p[:, -1] = np.log(np.expm1(df - 1e-6))  # raw df so that 1e-6 + softplus(raw) = df
    dist = head.new(tf.constant(p))
    scale = softplus(p[:, D:2 * D]).reshape(-1, *SHAPE)
    want = 2 * st.t.ppf(0.95, df) * scale
    got = head.interval_width(dist).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)
    if df <= 2:
        assert np.all(np.isnan(head.variance(dist).numpy()))  # the variance does not exist; the width does


def test_interval_width_of_a_mixture_matches_its_exact_quantiles():
    """Mixtures read the width from samples: compare with the mixture CDF inverted by root finding."""
    head, p = _params("normal_diag", 2, 2)
    got = head.interval_width(head.new(p)).numpy()
    pn = p.numpy()
    w = sp.softmax(pn[:, :2], axis=1)
    comp = pn[:, 2:].reshape(-1, 2, 2 * D)
    loc, sigma = comp[..., :D], softplus(comp[..., D:])
    for b in range(3):
        for i in range(D):
            def cdf(x, q):
                return float(np.sum(w[b] * st.norm.cdf(x, loc[b, :, i], sigma[b, :, i]))) - q
            lo, hi = (st.norm.ppf(0.05) * 5, st.norm.ppf(0.95) * 5)
            width = so.brentq(cdf, lo, hi, args=(0.95,)) - so.brentq(cdf, lo, hi, args=(0.05,))
            np.testing.assert_allclose(got.reshape(3, -1)[b, i], width, rtol=0.08)


@pytest.mark.parametrize("name", ["student_t_full", "matrix_t_diag", "matrix_normal_full", "continuous_bernoulli",
                                  "logistic"])
def test_closed_form_interval_width_matches_samples(name):
    """The marginal used for the exact width is the one the head samples from (t heads at df = 4:
    at df < 1 the sample quantiles are too noisy to compare)."""
    head, p = _params(name, 1, 3)
    if getattr(head, "student_t", False):
        p = tf.concat([p[:, :-1], tf.fill([3, 1], float(np.log(np.expm1(4.0))))], axis=1)
    dist = head.new(p)
    np.testing.assert_allclose(head.interval_width(dist).numpy(), _sampled_width(head, dist), rtol=0.12)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_has_a_finite_uncertainty_map(name):
    for k in ([1, 2] if get_head(name).mixable else [1]):
        head, p = _params(name, k, 4)
        width = head.interval_width(head.new(p)).numpy()
        assert width.shape == (3, *SHAPE)
        if name == "mse":  # models no spread
            assert np.all(np.isnan(width))
        else:
            assert np.all(np.isfinite(width)) and np.all(width >= 0), (name, k)
