"""FID: the Fréchet distance against closed forms, the cached lenet extractor, the run metrics."""
import json

import numpy as np
import pytest

from tfp_ae import fid
from tfp_ae.data import Dataset


def test_frechet_distance_closed_forms(rng):
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    want = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-8)
    # general SPD: Tr sqrt(C1 C2) = sum of sqrt of the (real, positive) eigenvalues of C1 C2
    x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = x @ x.T + np.eye(6), y @ y.T + np.eye(6)
    tr = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real))
    assert fid.frechet_distance(m1[:1].repeat(6), c1, m1[:1].repeat(6), c2) == pytest.approx(
        np.trace(c1) + np.trace(c2) - 2 * tr, rel=1e-6)


def test_fid_from_features(rng):
    f = rng.normal(size=(500, 4))
    assert fid.fid_from_features(f, f) == pytest.approx(0, abs=1e-6)
    assert fid.fid_from_features(f, f + [1, 2, 0, 0]) == pytest.approx(5, rel=1e-6)
    with pytest.raises(ValueError, match=r"\[N, F\] and \[M, F\]"):
        fid.fid_from_features(f, f[:, :3])
    with pytest.raises(ValueError, match="N, M >= 2"):
        fid.fid_from_features(f[:1], f)


def test_lenet_extractor_trains_once_and_separates_noise(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("TFP_AE_CACHE_DIR", str(tmp_path))
    ext = fid.lenet_extractor(digits)
    assert ext.info["test_accuracy"] > 0.8 and (tmp_path / "fid").is_dir()
    x = digits.x_test
    assert ext.features(x[:10]).shape == (10, 128)
    m = fid.fid_metrics(ext, x[:180], x[180:])
    assert m["fid_lenet"] < m["fid_lenet_vs_noise"] and m["fid_lenet"] < m["fid_lenet_real_vs_noise"]
    # second call loads from the cache: no training, same features
    monkeypatch.setattr(fid.tfk.Model, "fit", lambda *a, **k: pytest.fail("retrained instead of loading the cache"))
    again = fid.lenet_extractor(digits)
    np.testing.assert_allclose(again.features(x[:10]), ext.features(x[:10]), rtol=1e-5)
    assert again.info["test_accuracy"] == ext.info["test_accuracy"]


def test_lenet_needs_labels(digits):
    unlabelled = Dataset("x.npz", digits.x_train, None, digits.x_test, None, 17, "test")
    with pytest.raises(ValueError, match="needs class labels"):
        fid.lenet_extractor(unlabelled)


def test_run_writes_fid_and_paper_figures(tmp_path, monkeypatch):
    from tfp_ae.cli import main
    monkeypatch.setenv("TFP_AE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    main(["train", "--dataset", "digits", "--head", "normal_diag", "-K", "3", "--epochs", "2",
          "--train-limit", "512", "--eval-images", "100", "--tsne-images", "100", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    for key in ("fid_lenet", "fid_lenet_vs_noise", "fid_lenet_real_vs_noise"):
        assert np.isfinite(m[key]) and m[key] >= 0
    assert m["fid_lenet_info"]["test_accuracy"] > 0.8
    for png in ("reconstructions.png", "samples.png", "components.png"):
        assert (out / png).stat().st_size > 5000
