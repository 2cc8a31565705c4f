"""OOD scores and anomaly maps (issue 34): each score on cases with known answers, the metrics against
scikit-learn on scores.csv, per-pixel marginals against scipy, PRO on constructed maps, bad input."""
import csv
import json
import re

import numpy as np
import pytest
from conftest import write_png
from scipy import stats

from tfp_ae._tf import tf
from tfp_ae.anomaly import MAPS, localisation_metrics, pixel_maps, pro_score, synthetic_defects
from tfp_ae.cli import main
from tfp_ae.config import RunConfig
from tfp_ae.data import perturb
from tfp_ae.errors import InputError
from tfp_ae.models import build_model
from tfp_ae.scoring import image_scores, ood_metrics, png_bits_per_dim, score_run
from tfp_ae.train import run

FAST = dict(epochs=3, fid=False, tsne_images=0, eval_images=50, extra_figures=False, verbose=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """A digits model, a background model trained on perturbed digits, and an OOD set of noise images."""
    root = tmp_path_factory.mktemp("score")
    run(RunConfig(dataset="digits", out=str(root / "model"), **FAST))
    run(RunConfig(dataset="digits", out=str(root / "background"), perturb_rate=0.3, **FAST))
    rng = np.random.default_rng(0)
    noise = np.round(rng.uniform(size=(60, 8, 8, 1)) * 16) / 16
    np.savez(root / "noise.npz", x_train=noise, x_test=noise)
    return root


def test_a_model_scores_noise_as_more_anomalous_than_its_test_images(runs, tmp_path):
    rows, m = score_run(runs / "model", "digits", str(runs / "noise.npz"), str(runs / "background"), tmp_path / "s")
    assert m["counts"] == {"in": 360, "ood": 60}
    for name in ("nll", "bits_per_dim", "typicality"):
        assert m["scores"][name]["auroc"] > 0.95, (name, m["scores"][name])
    # metrics.json is scikit-learn on scores.csv
    from sklearn.metrics import roc_auc_score
    with open(tmp_path / "s" / "scores.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 420 and set(table[0]) == {"set", "index", "nll", "bits_per_dim", "likelihood_ratio",
                                                   "complexity", "typicality", "min_p", "fisher"}
    labels = [r["set"] == "ood" for r in table]
    for name in ("nll", "likelihood_ratio", "complexity", "min_p", "fisher"):
        assert m["scores"][name]["auroc"] == pytest.approx(roc_auc_score(labels, [float(r[name]) for r in table]))
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["scores"] == m["scores"]
    assert (tmp_path / "s" / "roc.png").exists() and (tmp_path / "s" / "histograms.png").exists()


def test_the_p_values_are_taken_against_the_runs_held_out_images(runs, tmp_path):
    """A run that held images out of training (`validation_split`) is scored against them (never fitted, so
    exchangeable with new images: a valid conformal p-value); one that held none out against its first
    `TRAIN_IMAGES` training images; `metrics.json` `reference` says which, `train_bits_per_dim` is theirs."""
    from tfp_ae.data import open_source
    from tfp_ae.scoring import TRAIN_IMAGES
    from tfp_ae.train import load_model
    run(RunConfig(dataset="digits", out=str(tmp_path / "held"), validation_split=0.2, **FAST))
    _, m = score_run(tmp_path / "held", "digits", limit=60)
    train = open_source("digits").splits["train"]
    held_out = train.subset(train.count - int(train.count * 0.2))  # the last fifth: the run's held-out images
    assert m["reference"] == dict(images=held_out.count, kind="held_out") and held_out.count == int(train.count * 0.2)
    model = load_model(tmp_path / "held")[0]
    assert m["train_bits_per_dim"] == pytest.approx(image_scores(model, held_out, 17, seed=1)["bits_per_dim"].mean())
    assert m["train_bits_per_dim"] != pytest.approx(
        image_scores(model, train.subset(0, TRAIN_IMAGES), 17, seed=1)["bits_per_dim"].mean())
    _, m = score_run(runs / "model", "digits", limit=60)  # trained on every training image
    assert m["reference"] == dict(images=min(TRAIN_IMAGES, train.count), kind="training")


def test_scores_are_their_definitions(runs, digits):
    from tfp_ae.train import load_model
    model, bg = load_model(runs / "model")[0], load_model(runs / "background")[0]
    x = digits.x_test[:40]
    reference = image_scores(model, digits.x_train[:50], 17)
    s = image_scores(model, x, 17, background=bg, reference=reference)
    s_model, s_bg = image_scores(model, x, 17), image_scores(bg, x, 17)
    np.testing.assert_allclose(s["likelihood_ratio"], s_model["bits_per_dim"] - s_bg["bits_per_dim"], rtol=1e-6)
    np.testing.assert_allclose(s["typicality"], np.abs(s["bits_per_dim"] - reference["bits_per_dim"].mean()))
    # fisher: -2 (log p_nll + log p_complexity), p = (1 + #{training scores >= score}) / (M + 1)
    p = {c: np.array([(1 + np.sum(reference[c] >= v)) / 51 for v in s[c]]) for c in ("nll", "complexity")}
    np.testing.assert_allclose(s["fisher"], -2 * (np.log(p["nll"]) + np.log(p["complexity"])), rtol=1e-12)
    assert s["fisher"].max() <= 4 * np.log(51) + 1e-9
    # min_p: -log of the Bonferroni-adjusted smaller p-value
    np.testing.assert_allclose(s["min_p"], -np.log(np.minimum(1, 2 * np.minimum(p["nll"], p["complexity"]))),
                               rtol=1e-12)
    assert s["min_p"].min() >= 0 and s["min_p"].max() <= np.log(51 / 2) + 1e-9
    np.testing.assert_allclose(s["complexity"], s["bits_per_dim"] - png_bits_per_dim(x, 17))
    np.testing.assert_allclose(s["nll"], -model.log_prob(x).numpy(), rtol=1e-5)


def test_png_complexity_orders_flat_below_noise():
    flat = np.zeros((1, 32, 32, 1), np.float32)
    noise = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 1)).astype(np.float32) / 255
    b = png_bits_per_dim(np.concatenate([flat, noise]))
    assert b[0] < 1 < 7 < b[1]
    assert b[1] == 8 * len(tf.io.encode_png(np.round(noise[0] * 255).astype(np.uint8)).numpy()) / 1024


def test_ood_metrics_on_known_cases():
    m = ood_metrics([0, 1, 2], [3, 4, 5])
    assert m == dict(auroc=1.0, auprc=1.0, fpr_at_95_tpr=0.0)
    m = ood_metrics([3, 4, 5], [0, 1, 2])
    assert m["auroc"] == 0.0 and m["fpr_at_95_tpr"] == 1.0
    assert ood_metrics([1, 1], [1, 1])["auroc"] == 0.5
    with pytest.raises(InputError, match="need images"):
        ood_metrics([1.0], [])


def test_pixel_marginals_match_scipy():
    x = np.random.default_rng(1).uniform(size=(3, 4, 4, 1)).astype(np.float32)
    model = build_model("normal_diag", (4, 4, 1))
    dist = model(x)
    comp = dist.tensor_distribution if hasattr(dist, "tensor_distribution") else dist
    mean, var = model.head.mean(comp).numpy(), model.head.variance(comp).numpy()
    lp = model.head.pixel_log_prob(comp, tf.constant(x)).numpy()
    np.testing.assert_allclose(lp, stats.norm.logpdf(x, mean, np.sqrt(var)), rtol=1e-4, atol=1e-5)
    # a mixture's pixel marginal integrates to one (trapezoid over a fine grid of one pixel)
    model = build_model("normal_diag", (2, 2, 1), 3)
    grid = np.linspace(-30, 30, 200001, dtype=np.float32)
    imgs = np.tile(x[:1, :2, :2], (len(grid), 1, 1, 1))
    imgs[:, 0, 0, 0] = grid
    dd = model.head.new(tf.repeat(model.decoder(model.encoder(x[:1, :2, :2])), len(grid), axis=0))
    p = np.exp(model.head.pixel_log_prob(dd, tf.constant(imgs)).numpy()[:, 0, 0, 0])
    assert np.trapezoid(p, grid) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("head,k", [("normal_diag", 1), ("normal_diag", 3), ("maf", 1), ("bernoulli", 1),
                                    ("matrix_t_full", 1), ("normal_lowrank", 2)])
def test_every_map_exists_and_is_finite(head, k, digits):
    model = build_model(head, (8, 8, 1), k)
    maps = pixel_maps(model, digits.x_test[:5])
    for name, m in maps.items():
        assert m.shape == (5, 8, 8, 1) and np.isfinite(m).all(), name
        assert (m >= 0).all() or name.startswith("neg_log_marginal")
    assert set(maps) == set(MAPS)


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 3), (5, 9, 1)])
def test_the_ssim_map_is_one_minus_the_local_ssim_of_its_definition(shape):
    """Issue 51, item 3: `ssim` = 1 - local SSIM (Wang et al. 2004) of x and its point estimate with a
    Gaussian window (σ 1.5, truncated at 3.5 σ: 11 x 11; smaller images the largest that fits), checked
    against the definition written with scipy's Gaussian filter; identical images give 0."""
    from scipy import ndimage

    from tfp_ae.anomaly import SSIM_SIGMA, ssim_map
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, *shape)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    sigma = min(SSIM_SIGMA, (min(shape[:2]) - 2) / 7)
    g = lambda a: ndimage.gaussian_filter(a, sigma=(sigma, sigma), truncate=3.5, mode="reflect")  # noqa: E731
    for i in range(2):
        for c in range(shape[2]):
            a, b = x[i, ..., c].astype(np.float64), y[i, ..., c].astype(np.float64)
            ma, mb = g(a), g(b)
            va, vb, cov = g(a * a) - ma ** 2, g(b * b) - mb ** 2, g(a * b) - ma * mb
            c1, c2 = 0.01 ** 2, 0.03 ** 2
            want = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
            np.testing.assert_allclose(ssim_map(x, y)[i, ..., c], 1 - want, atol=1e-5)
    np.testing.assert_allclose(ssim_map(x, x), 0, atol=1e-6)


def test_pixel_maps_bound_their_batches_by_the_draws_they_hold(digits, monkeypatch):
    """Large images get fewer images per batch (`SAMPLE_FLOATS` / `MAP_SAMPLES` draws); maps with
    exact marginals do not depend on the batching."""
    from tfp_ae import anomaly, predict
    model = build_model("normal_diag", (8, 8, 1), 1)
    x = digits.x_test[:10]
    whole = pixel_maps(model, x)
    sizes = []
    step = anomaly._score_step(model)
    monkeypatch.setattr(predict, "SAMPLE_FLOATS", 3 * anomaly.MAP_SAMPLES * 64)  # 3 images of 8x8
    monkeypatch.setattr(anomaly, "_score_step", lambda m: lambda b: sizes.append(len(b)) or step(b))
    batched = pixel_maps(model, x)
    assert sizes == [3, 3, 3, 1]
    for name in MAPS:
        np.testing.assert_allclose(batched[name], whole[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_pro_and_pixel_auroc_on_constructed_maps():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:4, 2:4] = masks[1, 5:9, 1:3] = True
    perfect = masks.astype(float)[..., None] + 0.01 * np.random.default_rng(0).uniform(size=(2, 10, 10, 1))
    half = perfect.copy()
    half[1, 5:9, 1:3] = 0  # the second region is missed
    m = localisation_metrics({"perfect": perfect, "half": half}, masks)
    assert m["perfect"] == dict(pixel_auroc=1.0, pro=pytest.approx(1.0, abs=0.02))
    assert m["half"]["pro"] == pytest.approx(0.5, abs=0.05) and m["half"]["pixel_auroc"] < 1
    with pytest.raises(InputError, match="masks .* do not match"):
        localisation_metrics({"perfect": perfect}, masks[:, :5])
    with pytest.raises(InputError, match="defect regions"):
        pro_score(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))


def test_perturbation_replaces_the_given_fraction_by_levels():
    x = tf.fill([200, 8, 8, 1], 0.5)
    y = perturb(x, 0.3, 17, tf.constant([1, 2], tf.int64)).numpy()
    changed = y != 0.5
    assert 0.25 < changed.mean() < 0.31  # 0.3 x 16/17 of draws land on another level
    np.testing.assert_allclose(y * 16, np.round(y * 16), atol=1e-5)
    np.testing.assert_array_equal(perturb(x, 0.0, 17, tf.constant([1, 2], tf.int64)).numpy(), x.numpy())


def test_bad_scoring_input_is_refused(runs, tmp_path):
    np.savez(tmp_path / "big.npz", x_train=np.zeros((4, 9, 9, 1)), x_test=np.zeros((4, 9, 9, 1)))
    with pytest.raises(InputError, match="do not match the run's"):
        score_run(runs / "model", "digits", str(tmp_path / "big.npz"))
    with pytest.raises(InputError, match="do not match the run's"):
        score_run(runs / "model", str(tmp_path / "big.npz"))
    np.savez(tmp_path / "empty.npz", x_train=np.zeros((4, 8, 8, 1)), x_test=np.zeros((0, 8, 8, 1)))
    with pytest.raises(InputError, match="empty"):
        score_run(runs / "model", "digits", str(tmp_path / "empty.npz"))
    with pytest.raises(InputError, match="masks"):
        score_run(runs / "model", "digits", masks=np.zeros((5, 7, 7)))
    run(RunConfig(dataset=str(tmp_path / "big.npz"), out=str(tmp_path / "other"), **dict(FAST, epochs=1)))
    with pytest.raises(InputError, match="background run's images"):
        score_run(runs / "model", "digits", background=str(tmp_path / "other"))


def test_cli_score_with_masks(runs, tmp_path, digits, capsys):
    masks = np.zeros((20, 8, 8), bool)
    masks[:, 2:5, 2:5] = True
    np.savez(tmp_path / "m.npz", mask_test=masks)
    main(["score", str(runs / "model"), "--data", "digits", "--ood", str(runs / "noise.npz"), "--masks",
          str(tmp_path / "m.npz"), "--limit", "50", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "nll" in out and "AUROC" in out and "pixel AUROC" in out
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["counts"] == {"in": 50, "ood": 50} and set(m["localisation"]) == set(MAPS)
    # every masked image is defective: no good images to detect them against, said and printed
    assert "detection" not in m and "1 good" not in m["detection_skipped"] and "0 good" in m["detection_skipped"]
    assert "no detection metrics: detection needs good and defective test images" in out


def test_mask_folders_match_test_images_by_name(runs, tmp_path, digits):
    """An MVTec-AD-like folder: test/good (no masks) and test/defect with ground_truth/defect/NNN_mask.png."""
    from tfp_ae.data import load_masks, open_source
    from tfp_ae.train import load_model
    data, gt = tmp_path / "parts", tmp_path / "ground_truth"
    bad, bad_masks = synthetic_defects(digits.x_test[:4], digits.x_train[:50], seed=1)
    for i in range(6):
        write_png(data / "train" / "good" / f"{i:03d}.png", digits.x_train[i, ..., 0])
    for i in range(3):
        write_png(data / "test" / "good" / f"{i:03d}.png", digits.x_test[10 + i, ..., 0])
    for i in range(4):
        write_png(data / "test" / "defect" / f"{i:03d}.png", bad[i, ..., 0])
        write_png(gt / "defect" / f"{i:03d}_mask.png", bad_masks[i])
    test = open_source(str(data)).splits["test"]  # sorted: test/defect/000..003, then test/good/000..002
    masks = load_masks(str(gt), test)
    np.testing.assert_array_equal(masks, np.concatenate([bad_masks, np.zeros((3, 8, 8), bool)]))
    _, m = score_run(runs / "model", str(data), masks=str(gt))
    x = test.take()[0]
    expected = localisation_metrics(pixel_maps(load_model(runs / "model")[0], x), masks)
    assert set(m["localisation"]) == set(expected)
    for name, v in expected.items():
        assert m["localisation"][name] == pytest.approx(v), name
    # the same masks in an .npz, and a folder read in sorted order for a source that is not a folder
    np.savez(tmp_path / "m.npz", mask_test=masks[..., None].astype(np.uint8))
    np.testing.assert_array_equal(load_masks(str(tmp_path / "m.npz"), test), masks)
    for i in range(3):
        write_png(tmp_path / "plain" / f"{i}.png", bad_masks[i])
    np.testing.assert_array_equal(load_masks(str(tmp_path / "plain"), open_source("digits").splits["test"]),
                                  bad_masks[:3])
    # masks shaped like the images: --image-size 4 halves a 4x4 block to 2x2
    block = np.zeros((8, 8), bool)
    block[:4, :4] = True
    write_png(tmp_path / "small" / "defect" / "000.png", block)
    small = load_masks(str(tmp_path / "small"), open_source(str(data), image_size=4).splits["test"])
    assert small.shape == (7, 4, 4) and small[0].sum() == 4 and small[0, :2, :2].all() and not small[1:].any()


def test_bad_mask_folders_are_refused(tmp_path, digits):
    from tfp_ae.data import load_masks, open_source
    data = tmp_path / "parts"
    for split, kind in (("train", "good"), ("test", "good"), ("test", "defect")):
        for i in range(2):
            write_png(data / split / kind / f"{i:03d}.png", digits.x_test[i, ..., 0])
    test = open_source(str(data)).splits["test"]
    cases = {"no image files": {}, "matches no test image": {"defect/007_mask.png": np.ones((8, 8))},
             "is 9x9": {"defect/000_mask.png": np.ones((9, 9))},
             "matches two test images": {"000.png": np.ones((8, 8))},
             "the mask of the same image": {"defect/000.png": np.ones((8, 8)), "defect/000_mask.png": np.ones((8, 8))},
             "5 masks for 4 test images": {f"{i}.png": np.ones((8, 8)) for i in range(5)}}
    for i, (message, files) in enumerate(cases.items()):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        for name, a in files.items():
            write_png(folder / name, a)
        with pytest.raises(InputError, match=message):
            load_masks(str(folder), test)
    (tmp_path / "m9" / "defect").mkdir(parents=True)
    (tmp_path / "m9" / "defect" / "000_mask.png").write_bytes(b"\x89PNG not an image")
    with pytest.raises(InputError, match="000_mask.png cannot be read"):
        load_masks(str(tmp_path / "m9"), test)
    np.savez(tmp_path / "x.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="no array mask_test"):
        load_masks(str(tmp_path / "x.npz"), test)
    with pytest.raises(InputError, match="do not exist"):
        load_masks(str(tmp_path / "nothing"), test)


def test_exported_score_signature_equals_the_python_maps(runs, tmp_path, digits):
    from tfp_ae.export import export_run
    from tfp_ae.train import load_model
    names, _ = export_run(runs / "model", tmp_path / "export")
    assert "score" in names
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["score"](images=tf.constant(digits.x_test[:6]))
    model = load_model(runs / "model")[0]
    np.testing.assert_allclose(served["neg_log_marginal"].numpy(), pixel_maps(model, digits.x_test[:6])["neg_log_marginal"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served["nll"].numpy(), -model.log_prob(digits.x_test[:6]).numpy(), rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixels must be finite"):
        tf.saved_model.load(str(tmp_path / "export")).signatures["score"](images=tf.fill([1, 8, 8, 1], 2.0))


def test_synthetic_defects_are_fixed_and_masked(digits):
    x = digits.x_test[:30]
    a, ma = synthetic_defects(x, digits.x_train[:50], seed=3)
    b, mb = synthetic_defects(x, digits.x_train[:50], seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert ma.shape == (30, 8, 8) and ma.any(axis=(1, 2)).mean() > 0.8
    changed = (np.abs(a - x) > 1.5 / 255).any(-1)
    np.testing.assert_array_equal(changed, ma)
    np.testing.assert_allclose(a * 255, np.round(a * 255), atol=1e-3)


def test_a_flat_ood_folder_is_scored_whole_and_takes_the_geometry_options(runs, tmp_path, digits, capsys):
    """Issue 42: a folder of OOD images without train/ and test/ is scored whole by default (it was cut
    to its 10 % test fraction, silently), --test-fraction splits it, the counts are printed, and an
    OOD set of another size is resized by score's own --image-size (the error named flags score lacked)."""
    for i, img in enumerate(np.asarray(digits.x_train[:30])):
        big = np.kron(img[..., 0], np.ones((2, 2)))  # 16 x 16: another size than the run's 8 x 8
        write_png(tmp_path / "ood" / f"{i:03d}.png", 1 - big)
    base = ["score", str(runs / "model"), "--data", "digits", "--limit", "40", "--ood", str(tmp_path / "ood")]
    with pytest.raises(SystemExit, match=r"images \(16, 16, 1\) do not match the run's \(8, 8, 1\); pass --image-size"):
        main(base + ["--out", str(tmp_path / "a")])
    main(base + ["--image-size", "8", "--out", str(tmp_path / "b")])
    assert "scored 40 in-distribution, 30 OOD test images" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["counts"] == {"in": 40, "ood": 30}
    main(base + ["--image-size", "8", "--test-fraction", "0.2", "--out", str(tmp_path / "c")])
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["counts"] == {"in": 40, "ood": 6}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="holds no image files"):
        main(base[:-1] + [str(empty), "--out", str(tmp_path / "d")])


@pytest.fixture(scope="module")
def defect_folder(tmp_path_factory, digits):
    """An MVTec-AD-like folder from digits: train/good, test/good, test/line and test/blob with their masks."""
    from tfp_ae.anomaly import write_defect_folder
    root = tmp_path_factory.mktemp("defects") / "parts"
    defects = {k: synthetic_defects(digits.x_test[40 + 20 * i:60 + 20 * i], digits.x_train[:50], seed=i, kinds=(k,))
               for i, k in enumerate(("line", "blob"))}
    return write_defect_folder(root, digits.x_train[:300], digits.x_test[:40], defects), defects


def test_defect_folders_round_trip_to_labels_and_masks(defect_folder):
    from tfp_ae.anomaly import defect_labels, write_defect_folder
    from tfp_ae.data import load_masks, open_source
    folder, defects = defect_folder
    test = open_source(str(folder)).splits["test"]  # sorted: blob, good, line
    labels = defect_labels(test)
    assert list(labels) == ["blob"] * 20 + ["good"] * 40 + ["line"] * 20
    masks = load_masks(str(folder / "ground_truth"), test)
    np.testing.assert_array_equal(masks[:20], defects["blob"][1])
    np.testing.assert_array_equal(masks[60:], defects["line"][1])
    assert not masks[20:60].any()
    # without a test/good folder the labels come from masks; without either there are none
    assert list(defect_labels(open_source("digits").splits["test"], masks[18:22])) == ["defect", "defect", "good", "good"]
    assert defect_labels(open_source("digits").splits["test"]) is None
    with pytest.raises(InputError, match="cannot be named 'good'"):
        write_defect_folder(folder.parent / "x", [], [], {"good": defects["line"]})
    with pytest.raises(InputError, match="masks .* do not match"):
        write_defect_folder(folder.parent / "y", [], [], {"line": (defects["line"][0], defects["line"][1][:, :4])})


def test_detection_metrics_are_scikit_learn_on_scores_csv(runs, defect_folder, tmp_path, capsys):
    """Issue 42: good against defective test images, overall and per defect type, for every score and
    every map reduction; the OOD metrics count only good test images as in-distribution; bits/dim of the
    good and of each defect's test images apart (issue 51)."""
    from sklearn.metrics import roc_auc_score
    folder, _ = defect_folder
    main(["score", str(runs / "model"), "--data", str(folder), "--masks", str(folder / "ground_truth"),
          "--ood", str(runs / "noise.npz"), "--out", str(tmp_path / "s")])
    printed = capsys.readouterr().out
    assert "detection, 40 good against 40 defective test images" in printed and "(recommended)" in printed
    assert re.search(r"bits/dim: reference images \(\d+ training\) \d+\.\d{3}, test images \d+\.\d{3}; blob \d+\.\d{3}; "
                     r"good", printed)
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    d = m["detection"]
    assert d["good"] == 40 and d["defective"] == 40 and set(d["per_defect"]) == {"line", "blob"}
    with open(tmp_path / "s" / "scores.csv") as f:
        table = list(csv.DictReader(f))
    test = [r for r in table if r["set"] == "in"]
    for name in ("nll", "min_p", "abs_error_max", "neg_log_marginal_smooth_top1"):
        assert d["overall"][name]["auroc"] == pytest.approx(
            roc_auc_score([r["defect"] != "good" for r in test], [float(r[name]) for r in test])), name
        line = [r for r in test if r["defect"] in ("good", "line")]
        assert d["per_defect"]["line"][name]["auroc"] == pytest.approx(
            roc_auc_score([r["defect"] == "line" for r in line], [float(r[name]) for r in line])), name
    # the density's fit is the good test images' bits/dim; the test mean mixes in the defective ones
    bits = {g: np.mean([float(r["bits_per_dim"]) for r in test if r["defect"] == g]) for g in ("good", "line", "blob")}
    assert m["bits_per_dim_by_label"] == pytest.approx(bits)
    assert m["test_bits_per_dim"] == pytest.approx(np.mean([float(r["bits_per_dim"]) for r in test]))
    kept = [r for r in table if r["set"] == "ood" or r["defect"] == "good"]
    assert m["scores"]["nll"]["auroc"] == pytest.approx(
        roc_auc_score([r["set"] == "ood" for r in kept], [float(r["nll"]) for r in kept]))
    assert m["recommended"] == "min_p" and m["recommended_map"] in m["localisation"]
    for name in ("anomaly_maps.png", "histograms.png", "roc.png"):
        assert (tmp_path / "s" / name).stat().st_size > 10_000, name


def test_image_reductions_and_smoothing_on_constructed_maps():
    from tfp_ae.anomaly import image_reductions, multiscale, smooth, smoothing_sigma
    m = np.zeros((2, 10, 10, 1))
    m[0, 3, 4] = 5.0
    m[1] = np.arange(100).reshape(10, 10, 1)
    r = image_reductions({"m": m})
    np.testing.assert_allclose(r["m_max"], [5, 99])
    np.testing.assert_allclose(r["m_top1"], [5, 99])  # 1 % of 100 pixels: the largest one
    r = image_reductions({"m": np.repeat(m, 4, axis=1)})  # 400 pixels: the mean of the top 4
    np.testing.assert_allclose(r["m_top1"], [5, 99])
    s = smooth(m, 1.0)
    assert s[0].sum() == pytest.approx(5.0, rel=1e-5) and s[0, 3, 4, 0] == s[0].max() < 5
    assert np.isfinite(smooth(np.where(m > 98, np.inf, m), 1.0)).all()
    np.testing.assert_allclose(multiscale(m, 1.5), (smooth(m, 1.5) + smooth(m, 3.0)) / 2, rtol=1e-6)
    assert smoothing_sigma((28, 28, 1)) == 1.0 and smoothing_sigma((56, 84, 3)) == 2.0 and smoothing_sigma((8, 8)) == 1


def test_synthetic_defects_scale_with_the_image_and_take_kinds(digits):
    big = np.kron(digits.x_test[:6, ..., 0], np.ones((7, 7)))[..., None]  # 56 x 56: sizes twice 28 x 28's
    x, masks = synthetic_defects(big, big, seed=0, kinds=("patch",))
    rows, cols = np.nonzero(masks[0])
    assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16 and masks.any(axis=(1, 2)).all()
    with pytest.raises(InputError, match="unknown defect kinds"):
        synthetic_defects(big, big, kinds=("scratch",))


def test_histograms_clip_extremes_and_say_how_many():
    from tfp_ae import plots
    a = np.r_[np.linspace(1, 2, 200), 1e12, np.inf]
    fig = plots.score_histograms({"nll": (a, np.linspace(1.5, 3, 100))})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("in 4, OOD 1" in t for t in texts), texts  # the 1 % quantiles: 2 + 1e12 + inf, and 1
    fig = plots.score_histograms({"bits": (np.geomspace(1, 1e3, 300), -np.geomspace(10, 1e9, 300))})
    assert "log10" in fig.axes[0].get_xlabel()  # heavy tails of both signs: a signed log axis
    assert "log10" not in plots.score_histograms({"nll": (a, a)}).axes[0].get_xlabel()


def test_histograms_are_a_grid_readable_at_page_scale():
    """Issue 48: seven scores were one 1920 x 300 strip; now three panels a row, the sets named."""
    from tfp_ae import plots
    a = np.linspace(0, 1, 50)
    fig = plots.score_histograms({f"s{i}": (a, a + 1) for i in range(7)}, labels=("normal", "novel"))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 7 and len(fig.axes) == 9
    width, height = fig.get_size_inches()
    assert width / height < 2 and min(t.get_fontsize() for ax in shown for t in ax.texts) >= 8
    assert [t.get_text() for t in shown[0].get_legend().get_texts()] == ["normal", "novel"]


def test_a_texture_folder_has_mvtec_ad_layout_and_disjoint_crops(tmp_path):
    from tfp_ae.anomaly import texture_defect_folder
    from tfp_ae.data import load_masks, open_source
    rng = np.random.default_rng(0)
    texture = np.round(rng.uniform(size=(40, 40)) * 255) / 255
    texture[:30] = np.round(texture[:30] * 127) / 255  # top three quarters (training crops) darker than the test rows
    folder = texture_defect_folder(tmp_path / "t", texture, rng.uniform(size=(40, 40)), size=8, train=20, good=4,
                                   per_defect=3)
    source = open_source(str(folder))
    assert source.splits["train"].count == 20 and source.splits["test"].count == 13
    assert sorted(p.name for p in (folder / "test").iterdir()) == ["blob", "good", "line", "patch"]
    train, test = source.splits["train"].take()[0], source.splits["test"].take()[0]
    assert train.max() <= 0.5 and test.max() > 0.5  # the crops come from their own rows
    masks = load_masks(str(folder / "ground_truth"), source.splits["test"])
    assert masks.shape == (13, 8, 8) and masks[:3].any(axis=(1, 2)).all() and not masks[3:7].any()
    with pytest.raises(InputError, match="too small"):
        texture_defect_folder(tmp_path / "u", texture[:20], texture, size=8)


def test_a_defect_folder_without_masks_gets_detection_only(runs, defect_folder, tmp_path, capsys):
    """Issue 42's bad input: a defect folder without masks is allowed (detection, maps without a mask
    row); a geometry that cannot apply and masks that match no image are `tfp-ae: error:`."""
    folder, _ = defect_folder
    main(["score", str(runs / "model"), "--data", str(folder), "--out", str(tmp_path / "s")])
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert set(m["detection"]["per_defect"]) == {"line", "blob"} and "localisation" not in m
    assert (tmp_path / "s" / "anomaly_maps.png").exists() and "anomaly_maps.png" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="image_size must be H or HxW"):
        main(["score", str(runs / "model"), "--data", str(folder), "--image-size", "0x5", "--out", str(tmp_path / "t")])
    stray = tmp_path / "stray" / "scratch"
    write_png(stray / "000_mask.png", np.ones((8, 8)))
    with pytest.raises(SystemExit, match="matches no test image"):
        main(["score", str(runs / "model"), "--data", str(folder), "--masks", str(tmp_path / "stray"),
              "--out", str(tmp_path / "u")])
