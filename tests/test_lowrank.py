"""Low-rank heads against a dense-covariance SciPy reference, and the Student-t `min_df` option."""
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st
import tensorflow as tf

from tfp_ae.cli import main
from tfp_ae.config import RunConfig
from tfp_ae.heads import HEADS, make_head
from tfp_ae.models import build_model

SHAPE = (3, 2, 2)          # colour-like: the covariance spans H*W*C = 12 values
D = 12
RANK = 3
LOWRANK = ["normal_lowrank", "student_t_lowrank"]
T_HEADS = [name for name, cls in HEADS.items() if "min_df" in cls.options]


def softplus(x):
    return np.logaddexp(0, x) + 1e-6


def dense_log_prob(name, p, x, rank=RANK, min_df=0.0):
    """One component with flat parameters `p` (float64), written out with a dense D x D covariance:
    layout [mu (D), sigma (D), V (D x rank, row-major), df]."""
    mu, sigma = p[:D], softplus(p[D:2 * D])
    v = p[2 * D:2 * D + D * rank].reshape(D, rank)
    cov = np.diag(sigma ** 2) + v @ v.T
    if name == "normal_lowrank":
        return st.multivariate_normal(mu, cov).logpdf(x.reshape(-1))
    return st.multivariate_t(mu, cov, df=min_df + softplus(p[-1])).logpdf(x.reshape(-1))


def reference(name, k, p, x, **options):
    """log p(x) of the head's flat parameters `p` `[size]` at one image `x`: the mixture written out."""
    if k == 1:
        return dense_log_prob(name, p, x, **options)
    logw = p[:k] - sp.logsumexp(p[:k])
    comps = p[k:].reshape(k, -1)
    return sp.logsumexp([logw[j] + dense_log_prob(name, comps[j], x, **options) for j in range(k)])


@pytest.mark.parametrize("name", LOWRANK)
@pytest.mark.parametrize("k", [1, 3])
def test_log_prob_and_gradient_equal_a_dense_covariance_reference(name, k, rng):
    """float64 end to end: the head's log_prob and d log_prob / d params equal SciPy's dense density
    and its central finite differences (rtol 1e-5)."""
    opts = dict(rank=RANK, min_df=0.5) if name.startswith("student") else dict(rank=RANK)
    head = make_head(name, SHAPE, k, **opts)
    per_component = D * (RANK + 2) + name.startswith("student")    # D (r + 2) (+ df)
    assert head.size == (per_component if k == 1 else k * (per_component + 1))
    p = rng.normal(0, 0.5, size=head.size)
    x = rng.uniform(0.05, 0.95, size=SHAPE)
    params = tf.Variable(p[None])
    with tf.GradientTape() as tape:
        lp = head.new(params).log_prob(x[None])
    grad = tape.gradient(lp, params).numpy()[0]
    ref_opts = dict(opts)
    np.testing.assert_allclose(lp.numpy()[0], reference(name, k, p, x, **ref_opts), rtol=1e-5)
    eps = 1e-6
    fd = np.array([(reference(name, k, p + eps * e, x, **ref_opts) - reference(name, k, p - eps * e, x, **ref_opts))
                   / (2 * eps) for e in np.eye(len(p))])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


def test_zero_factor_is_normal_diag(rng):
    """V = 0 leaves diag(sigma^2): the same density as `normal_diag` with the same mu and sigma."""
    low, diag = make_head("normal_lowrank", SHAPE, rank=2), make_head("normal_diag", SHAPE)
    p = rng.normal(size=(4, 2 * D)).astype(np.float32)
    x = rng.uniform(size=(4, *SHAPE)).astype(np.float32)
    padded = np.concatenate([p, np.zeros((4, D * 2), np.float32)], axis=1)
    np.testing.assert_allclose(low.new(padded).log_prob(x), diag.new(p).log_prob(x), rtol=1e-5)


@pytest.mark.parametrize("name", LOWRANK)
def test_marginals_interval_and_samples_match_the_dense_covariance(name, rng):
    """Variance = df/(df-2) diag(cov) (t) or diag(cov); the 90 % interval from the exact marginal
    quantiles; 40000 samples have that mean and covariance (off-diagonal terms included)."""
    head = make_head(name, SHAPE, rank=RANK, **({"min_df": 6.0} if name.startswith("student") else {}))
    p = rng.normal(0, 0.5, size=head.size).astype(np.float32)
    dist = head.new(p[None])
    sigma, v = softplus(p[D:2 * D].astype(np.float64)), p[2 * D:2 * D + D * RANK].reshape(D, RANK)
    cov = np.diag(sigma ** 2) + v @ v.T
    df = 6.0 + softplus(float(p[-1])) if name.startswith("student") else None
    want_var = np.diag(cov) * (df / (df - 2) if df else 1.0)
    np.testing.assert_allclose(head.variance(dist).numpy().reshape(-1), want_var, rtol=1e-4)
    marg = st.t(df, p[:D], np.sqrt(np.diag(cov))) if df else st.norm(p[:D], np.sqrt(np.diag(cov)))
    np.testing.assert_allclose(head.interval_width(dist).numpy().reshape(-1), marg.ppf(0.95) - marg.ppf(0.05), rtol=1e-4)
    x = head.sample(dist, 40000, seed=(1, 2)).numpy().reshape(40000, D).astype(np.float64)
    np.testing.assert_allclose(x.mean(0), p[:D], atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), cov * (df / (df - 2) if df else 1.0), atol=0.12 * np.abs(cov).max())


@pytest.mark.parametrize("name", T_HEADS)
def test_min_df_bounds_every_t_head(name, rng):
    """df = min_df + 1e-6 + softplus(raw): above min_df for any raw value, so with min_df = 2 the
    variance exists everywhere; the default (0) is the paper's df = 1e-6 + softplus."""
    shape = (4, 3, 1)
    bounded, paper = make_head(name, shape, 2, min_df=2.0), make_head(name, shape, 2)
    assert paper.min_df == 0.0 and bounded.get_config()["min_df"] == 2.0
    p = rng.normal(0, 3, size=(5, bounded.size)).astype(np.float32)
    p[:, -1] = -30.0                                   # a raw df that collapses to ~1e-6 without the bound
    comp = bounded._parts(bounded.new(p))[2]
    raw = p[:, 2:].reshape(5, 2, -1)[..., -1]          # [K logits, K components], df last in each
    np.testing.assert_allclose(comp.df.numpy(), 2.0 + softplus(raw.astype(np.float64)), rtol=1e-6)
    assert np.all(comp.df.numpy() > 2.0)
    assert np.all(np.isfinite(bounded.variance(bounded.new(p)).numpy()))
    assert not np.all(np.isfinite(paper.variance(paper.new(p)).numpy()))


def test_min_df_log_prob_is_the_t_density_with_the_shifted_df(rng):
    """student_t_diag with min_df = 3: SciPy's multivariate t with df = 3 + 1e-6 + softplus(raw)."""
    shape, d = (2, 3, 1), 6
    head = make_head("student_t_diag", shape, min_df=3.0)
    p = rng.normal(0, 0.5, size=head.size)
    x = rng.uniform(size=shape)
    want = st.multivariate_t(p[:d], np.diag(softplus(p[d:2 * d]) ** 2), df=3.0 + softplus(p[-1])).logpdf(x.reshape(-1))
    np.testing.assert_allclose(head.new(p[None]).log_prob(x[None]).numpy()[0], want, rtol=1e-6)


@pytest.mark.parametrize("make,match", [
    (lambda: make_head("normal_lowrank", SHAPE, rank=0), r"rank \(--rank\) must be"),
    (lambda: make_head("normal_lowrank", SHAPE, rank=D), r"\[1, 12\)"),
    (lambda: make_head("normal_lowrank", SHAPE, rank=2.5), "rank"),
    (lambda: make_head("normal_diag", SHAPE, rank=4), "has no rank"),
    (lambda: make_head("matrix_normal_diag", (4, 4, 1), min_df=2.0), "has no min_df"),
    (lambda: make_head("student_t_full", SHAPE, min_df=-1.0), r"min_df \(--min-df\) must be a finite number >= 0"),
    (lambda: make_head("matrix_t_diag", (4, 4, 1), min_df=float("nan")), "finite"),
    (lambda: RunConfig(head="normal_diag", rank=3).validate(), "has no rank"),
    (lambda: RunConfig(head="normal_lowrank", rank=64).validate((8, 8, 1)), r"\[1, 64\)"),
])
def test_bad_head_options_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_cli_refuses_bad_options_before_writing(tmp_path, capsys):
    for argv, match in [(["--head", "normal_diag", "--rank", "3"], "has no rank"),
                        (["--head", "normal_lowrank", "--rank", "64"], "must be an integer in"),
                        (["--head", "student_t_diag", "--min-df", "nan"], "must be a finite number")]:
        with pytest.raises(SystemExit, match=f"tfp-ae: error: .*{match}"):
            main(["train", "--dataset", "digits", *argv, "--out", str(tmp_path / "run")])
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch", ["mlp", "cnn", "cnn_dense"])
def test_every_arch_fits_on_colour_images(arch, rng):
    """The covariance spans all H*W*C values of a colour image; a short fit lowers the NLL."""
    from tfp_ae.models import compile_model
    x = rng.uniform(size=(64, 6, 6, 3)).astype(np.float32)
    x = np.clip(x.mean(axis=-1, keepdims=True) * 0.5 + x * 0.5, 0, 1)    # correlated channels
    model = compile_model(build_model("normal_lowrank", x.shape[1:], 2, arch, latent_dim=8, rank=4), 3e-3,
                          steps_per_execution=4)
    assert model.head.size == 2 * (108 * 6 + 1)
    before = float(model.evaluate(x, x, verbose=0))
    model.fit(x, x, batch_size=16, epochs=5, verbose=0)
    assert float(model.evaluate(x, x, verbose=0)) < before


def test_saves_loads_and_exports_in_a_fresh_process(tmp_path, digits):
    """rank and min_df travel in the config: `load_model` rebuilds the same head, and the exported
    SavedModel's log_prob (no tfp_ae in that process) equals the model's."""
    from tfp_ae.export import export_saved_model
    x = digits.x_test[:6]
    model = build_model("student_t_lowrank", digits.image_shape, 2, rank=5, min_df=2.0)
    model.save(tmp_path / "m.keras")
    export_saved_model(model, tmp_path / "export")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "lp.npy", model.log_prob(x).numpy())
    code = f"""
import json, numpy as np, tfp_ae, tf_keras as keras, tensorflow as tf
m = keras.models.load_model({str(tmp_path / 'm.keras')!r})
x, lp = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'lp.npy')!r})
s = tf.saved_model.load({str(tmp_path / 'export')!r})
print(json.dumps(dict(rank=m.head.rank, min_df=m.head.min_df, size=m.head.size,
    keras=float(np.abs(m.log_prob(x).numpy() - lp).max()),
    served=float(np.abs(s.log_prob(tf.constant(x))["log_prob"].numpy() - lp).max()))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rank"] == 5 and got["min_df"] == 2.0 and got["size"] == model.head.size
    assert got["keras"] < 1e-3 and got["served"] < 1e-3


def test_single_capacitance_log_prob_equals_tfp_linear_operator(rng):
    """`low_rank_quadratic_log_det` (one Cholesky) against TFP's `LinearOperatorLowRankUpdate` path,
    value and gradients, with sample and mixture axes broadcast against the parameters."""
    from tfp_ae._tf import tfd
    from tfp_ae.heads.lowrank import MultivariateNormalDiagPlusLowRank
    loc = tf.constant(rng.normal(size=(2, 3, D)))
    var = tf.constant(rng.uniform(0.1, 1.0, size=(2, 3, D)))
    v = tf.constant(rng.normal(size=(2, 3, D, RANK)))
    x = tf.constant(rng.uniform(size=(5, 2, 1, D)))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([loc, var, v])
        ours = MultivariateNormalDiagPlusLowRank(loc, var, v).log_prob(x)
        theirs = tfd.MultivariateNormalDiagPlusLowRankCovariance(loc, var, v).log_prob(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    for a, b in zip(tape.gradient(ours, [loc, var, v]), tape.gradient(theirs, [loc, var, v])):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
