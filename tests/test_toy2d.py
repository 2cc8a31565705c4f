"""The 2D study: toy datasets, their entropies, and a short VAE/IWAE study run."""
import json
import math

import numpy as np
import pytest
from scipy.integrate import quad

from tfp_ae.toy2d import TOY_DATASETS, TUTORIAL, resolve_setup, run_study, sample_toy, toy_entropy, toy_log_prob


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_shapes_and_reproducibility(name):
    x = sample_toy(name, 1000, seed=3)
    assert x.shape == (1000, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, sample_toy(name, 1000, seed=3))
    assert np.all(np.isfinite(toy_log_prob(name, x)))  # every sample lies in the support


def test_sample_moments_match_definitions():
    # 8gaussians: E x = 0, E|x|^2 = r^2 + 2 sigma^2 with r = 4/sqrt(2), sigma = 0.5/sqrt(2)
    x = sample_toy("8gaussians", 200_000, 1)
    np.testing.assert_allclose(x.mean(0), 0, atol=0.02)
    np.testing.assert_allclose(np.mean(np.sum(x ** 2, 1)), 8 + 0.25, rtol=0.01)
    # checkerboard: both coordinates uniform on [-4, 4] (std 8/sqrt(12)), half of the square covered
    x = sample_toy("checkerboard", 200_000, 1)
    np.testing.assert_allclose(x.std(0), 8 / math.sqrt(12), rtol=0.01)
    assert x.min() >= -4 and x.max() <= 4
    # 2spirals: E|x|^2 = (E|s|^2 + 2 E[s].E[u] + E|u|^2) / 9 + 2 * 0.1^2, n = 3 pi sqrt(t)
    x = sample_toy("2spirals", 200_000, 1)
    n = lambda t: 3 * np.pi * np.sqrt(t)  # noqa: E731
    es = [quad(lambda t: -np.cos(n(t)) * n(t), 0, 1, limit=200)[0], quad(lambda t: np.sin(n(t)) * n(t), 0, 1, limit=200)[0]]
    expected = (9 * np.pi ** 2 / 2 + 2 * 0.25 * sum(es) + 2 * (0.25 ** 2 + 0.5 ** 2 / 12)) / 9 + 0.02
    np.testing.assert_allclose(np.mean(np.sum(x ** 2, 1)), expected, rtol=0.01)
    np.testing.assert_allclose(x.mean(0), 0, atol=0.02)


def _grid(lo=-4.6, hi=4.6, step=0.04):
    g = np.arange(lo, hi + 1e-9, step)
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], 1), step ** 2


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_density_integrates_to_one(name):
    pts, cell = _grid()
    np.testing.assert_allclose(np.exp(toy_log_prob(name, pts)).sum() * cell, 1.0, atol=0.01)


def test_entropies_agree_with_independent_estimates():
    # 8gaussians (grid integration) vs Monte Carlo -E log p: within 4 standard errors (~0.01 nats)
    h = toy_entropy("8gaussians")
    lp = toy_log_prob("8gaussians", sample_toy("8gaussians", 200_000, 99))
    assert abs(h["H"] + lp.mean()) < 4 * lp.std() / math.sqrt(len(lp))
    assert abs(h["H"] - (math.log(8) + 1 + math.log(2 * math.pi * 0.125))) < 0.02  # well-separated limit
    # checkerboard: exactly log 32
    assert toy_entropy("checkerboard")["H"] == pytest.approx(math.log(32))
    # 2spirals (Monte Carlo) vs grid integration of -p log p: within 0.05 nats
    pts, cell = _grid(step=0.03)
    lp = toy_log_prob("2spirals", pts)
    grid_h = -np.sum(np.exp(lp) * lp) * cell
    mc = toy_entropy("2spirals", num_samples=5000)
    assert abs(mc["H"] - grid_h) < 0.05 and mc["stderr"] < 0.02, (mc, grid_h)


def test_study_runs_writes_table_and_resumes(tmp_path):
    kw = dict(steps=300, datasets=("8gaussians",), num_train=3000, num_test=500, log=lambda *a: None)
    rows = run_study(tmp_path, **kw)
    r = rows[0]
    assert r["dataset"] == "8gaussians" and r["tutorial_H"] == -1.92 and r["H"] > 4  # bits at FFJORD's scale
    assert r["vae_nll"] <= r["vae_neg_elbo"] + 0.05 and r["iwae_nll"] <= r["iwae_loss"] + 0.05
    assert r["vae_nll"] > r["H"] - 0.1  # a model cannot beat the entropy (up to Monte-Carlo error)
    assert "| 8gaussians |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "toy2d.png").read_bytes()[:4] == b"\x89PNG"
    first = json.loads((tmp_path / "results.json").read_text())
    assert run_study(tmp_path, **kw) == rows  # resumed: finished cells reloaded, not retrained
    assert json.loads((tmp_path / "results.json").read_text()) == first


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_tutorial_scale_matches_the_tutorials_entropy_and_normalises(name):
    # the tutorial's H (bits, computed by its notebook on a 1024^2 grid) from our density at its scale
    h = toy_entropy(name, num_samples=20_000, scale="tutorial")
    assert abs(h["H"] / math.log(2) - TUTORIAL[name][0]) < 0.01 + 4 * h["stderr"] / math.log(2), h
    pts, cell = _grid(-0.575, 0.575, 0.005)
    np.testing.assert_allclose(np.exp(toy_log_prob(name, pts, "tutorial")).sum() * cell, 1.0, atol=0.01)
    x = sample_toy(name, 2000, 3, "tutorial")
    assert np.all(np.isfinite(toy_log_prob(name, x, "tutorial"))) and np.abs(x).max() < 0.575
    if name != "2spirals":  # the same points divided by 8 (the spirals also drop the uniform term)
        np.testing.assert_allclose(x, sample_toy(name, 2000, 3) / 8, rtol=1e-6)


def test_setup_presets_and_overrides():
    t = resolve_setup("tutorial", steps=600, growth=32)
    assert t.hidden == (32,) * 6 and (t.vae_steps, t.iwae_steps) == (600, 300) and t.free_bits == 0.05
    assert t.num_train is None and t.scale == "tutorial"
    lr = t.learning_rate_schedule(1000)
    want = [1e-4, 1e-4, 5e-5, 2.5e-5, 1.25e-5, 6.25e-6]
    assert [float(lr(s)) for s in (0, 600, 601, 701, 900, 901)] == pytest.approx(want)
    assert resolve_setup().hidden == (128, 128)
    with pytest.raises(ValueError, match="unknown toy2d setup 'paper'"):
        resolve_setup("paper")
    with pytest.raises(ValueError, match="growth"):
        resolve_setup("tutorial", growth=0)


def test_tutorial_study_runs_in_bits_and_refuses_another_setup(tmp_path):
    kw = dict(setup="tutorial", steps=300, growth=8, datasets=("checkerboard",), num_test=300, log=lambda *a: None)
    r = run_study(tmp_path, **kw)[0]
    assert r["H"] == pytest.approx(-1.0) and r["tutorial_H"] == -1.0  # bits, the tutorial's scale
    assert r["vae_nll"] > r["H"] - 0.1 and r["vae_nll"] <= r["vae_neg_elbo"] + 0.05
    assert "at the tutorial's data scale" in (tmp_path / "table.md").read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["setup"]["hidden"] == [8] * 6 and saved["checkerboard/iwae"]["steps"] == 150
    with pytest.raises(ValueError, match="another set-up"):
        run_study(tmp_path, **dict(kw, growth=16))
