"""Figures 1-4 and the augmentation: shapes, ordering, thresholds, errors."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from tfp_ae import figures, predict
from tfp_ae._tf import tf
from tfp_ae.models import build_model, compile_model
from tfp_ae.vae import build_vae


@pytest.fixture(scope="module")
def mixture(digits):
    tf.keras.utils.set_random_seed(0)
    model = compile_model(build_model("normal_diag", digits.image_shape, num_components=3))
    model.fit(digits.x_train, digits.x_train, batch_size=128, epochs=3, verbose=0)
    return model


def test_component_points_sorted_figure_and_augment(mixture, digits):
    x, y = digits.x_test[:20], digits.y_test[:20]
    pts, lps = predict.component_points(mixture, x)
    assert pts.shape == (20, 3, 8, 8, 1) and lps.shape == (20, 3)
    # the mixture log-density at each component mean, recomputed from the distribution
    dist = mixture(x)
    want = np.stack([dist.log_prob(pts[:, k]).numpy() for k in range(3)], axis=1)
    np.testing.assert_allclose(lps, want, rtol=1e-4)
    fig = figures.components_figure(mixture, x[:4])
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * (1 + 3)
    titles = [float(a.get_title()) for a in fig.axes if a.get_title() not in ("", "input")]
    rows = np.array(titles).reshape(4, 3)
    assert np.all(np.diff(rows, axis=1) <= 0.5)  # sorted, descending (printed rounded)

    t = float(np.median(lps))
    aug = figures.augment(mixture, x, y, min_log_prob=t)
    assert len(aug["images"]) == int(np.sum(lps >= t)) and np.all(aug["log_prob"] >= t)
    np.testing.assert_array_equal(aug["labels"], y[aug["source_index"]])
    np.testing.assert_allclose(aug["images"], pts[aug["source_index"], aug["component"]])
    assert len(figures.augment(mixture, x)["images"]) == 60  # no threshold keeps every component


def test_figures_reject_bad_input(digits):
    model = build_model("normal_diag", digits.image_shape)
    with pytest.raises(ValueError, match="mixture head"):
        predict.component_points(model, digits.x_test[:2])
    with pytest.raises(ValueError, match="no prior"):
        figures.latent_samples(model, 4, prior="fitted")
    with pytest.raises(ValueError, match="unknown prior"):
        figures.latent_samples(model, 4, digits.x_test[:10], prior="uniform")
    with pytest.raises(ValueError, match="images"):
        predict.component_points(model, digits.x_test[:2, :4])


def test_heads_and_latent_figures(mixture, digits):
    mse = compile_model(build_model("mse", digits.image_shape))
    vae = compile_model(build_vae("normal_diag", digits.image_shape, latent_dim=4))
    x = digits.x_test[:5]
    fig = figures.heads_figure([mse, mixture, vae], x, "t")
    assert len(fig.axes) == (1 + 2 * 3) * 5 + 3  # + a colour bar per uncertainty row
    for model in (mixture, vae):
        codes = predict.latents(model, x)
        assert codes.shape == (5, 32 if model is mixture else 4)
        s = figures.latent_samples(model, 6, digits.x_test[:100], prior="fitted")
        assert s.shape == (6, 8, 8, 1) and s.min() >= 0 and s.max() <= 1
        if model is mixture:  # the paper's Figure 3: decoded z ~ N(0, I)
            z = model.prior().sample(3, seed=(5, 1))
            assert z.shape == (3, 32)
            np.testing.assert_allclose(figures.latent_samples(model, 3, seed=5),
                                       model.head.point_estimate(model.decode(z)).numpy(), rtol=1e-6)
        o = figures.output_samples(model, x, 3)
        assert o.shape == (3, 5, 8, 8, 1)
        assert isinstance(figures.latent_figure(model, digits, tsne_images=60), Figure)
    emb = figures.tsne(np.random.default_rng(0).normal(size=(40, 5)))
    assert emb.shape == (40, 2)


def test_heads_figure_labels_say_what_differs(digits):
    """Models that share head, K and arch: the rows are named by their loss, the title says the rest once."""
    models = [build_model("normal_diag", digits.image_shape, loss=loss) for loss in ("nll", "faithful")]
    fig = figures.heads_figure(models, digits.x_test[:3], "maps")
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["input", "nll\npoint", "nll\n90 % interval\nwidth", "faithful\npoint",
                      "faithful\n90 % interval\nwidth"]
    assert fig._suptitle.get_text() == "maps (normal_diag K=1 (mlp))"


def test_collapsed_encoder_draws_figure_3_without_t_sne(digits):
    """Every ReLU latent dead (seen in a 20-epoch Fashion-MNIST cnn_dense run): all codes are 0,
    scikit-learn's t-SNE would divide by their zero spread and crash the process."""
    model = compile_model(build_model("normal_diag", digits.image_shape))
    for w in model.encoder.weights:
        w.assign(tf.zeros_like(w))
    assert not np.ptp(predict.latents(model, digits.x_test[:60])).any()
    fig = figures.latent_figure(model, digits, tsne_images=60)
    notes = [" ".join(t.get_text().split()) for a in fig.axes for t in a.texts]
    assert any("latents are all equal" in n for n in notes), notes
    assert figures.tsne(np.ones((40, 5))) is None
    assert figures.tsne(np.r_[np.eye(5), [[np.nan] * 5]]) is None


def test_cli_augment_writes_a_trainable_dataset(tmp_path):
    from tfp_ae.cli import main
    run = tmp_path / "run"
    main(["train", "--dataset", "digits", "--head", "normal_diag", "-K", "3", "--epochs", "1", "--train-limit", "256",
          "--no-fid", "--tsne-images", "0", "--out", str(run)])
    out = tmp_path / "aug.npz"
    main(["augment", str(run), "--out", str(out), "--min-log-prob=-1e9", "--limit", "50", "--include-originals"])
    with np.load(out) as f:
        assert f["x_train"].shape == (50 + 150, 8, 8, 1) and f["y_train"].shape == (200,)
        assert f["x_test"].shape == (360, 8, 8, 1) and len(f["log_prob"]) == 150
    with pytest.raises(SystemExit, match="exists"):
        main(["augment", str(run), "--out", str(out)])
    main(["train", "--dataset", str(out), "--head", "normal_diag", "--epochs", "1", "--no-fid", "--tsne-images", "0",
          "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "metrics.json").exists()


def test_reconstruction_figure_colour_images_colour_bar_and_t_heads(digits):
    rgb = build_model("normal_diag", (8, 8, 3))
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype(np.float32)
    x[0] = [0, 1, 0]  # pure green must show green, not black
    fig = figures.reconstruction_figure(rgb, x)
    image_axes = [a for a in fig.axes if a.images and a.get_label() != "<colorbar>"]
    shown = image_axes[0].images[0].get_array()
    assert shown.shape == (8, 8, 3) and np.allclose(shown[0, 0], [0, 1, 0])
    maps = [a.images[0] for a in image_axes[8:]]
    assert len(maps) == 4 and all(m.get_cmap().name == "viridis" for m in maps)
    assert len(fig.axes) == 3 * 4 + 1  # one colour bar
    # a t head at initialisation (df ~ 0.7 <= 2): the variance does not exist, the interval width does
    t = build_model("student_t_diag", digits.image_shape)
    for kind, blank in (("interval", False), ("std", True)):
        fig = figures.reconstruction_figure(t, digits.x_test[:3], uncertainty=kind)
        texts = [txt.get_text() for a in fig.axes for txt in a.texts]
        assert ("none" in texts) == blank, kind


def test_interval_map_of_a_degenerate_t_head_is_the_whole_pixel_range(digits):
    """A t head whose df collapsed to ~0.01 (as trained on 8-bit data) has an interval wider than
    float32 (inf); the map shows the fraction of [0, 1] it covers: 1, finite."""
    t = build_model("student_t_diag", digits.image_shape)
    dense = t.decoder.layers[-1]
    bias = dense.bias.numpy()
    bias[-1] = np.log(np.expm1(0.01))  # df = 0.01 for every input: zero kernel column
    kernel = dense.kernel.numpy()
    kernel[:, -1] = 0
    dense.set_weights([kernel, bias])
    x = digits.x_test[:3]
    assert np.all(np.isinf(t.head.interval_width(t(x)).numpy()))
    maps = predict.uncertainty_maps(t, x)
    np.testing.assert_allclose(maps, 1.0)
    normal = build_model("normal_diag", digits.image_shape)
    m = predict.uncertainty_maps(normal, x)
    assert m.shape == x.shape and np.all((m >= 0) & (m <= 1))
    with pytest.raises(ValueError, match="unknown uncertainty"):
        predict.uncertainty_maps(normal, x, "entropy")
