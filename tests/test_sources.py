"""Image sources (issue 32): TFDS datasets prepared locally from the real MNIST files, folders of
PNGs written from real digits, real colour photographs cut into crops, TFRecord shards written by
`tfp-ae convert`; geometry; streaming training and evaluation; bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_dataset, write_png
from PIL import Image

from tfp_ae import plots
from tfp_ae._tf import tf
from tfp_ae.config import RunConfig
from tfp_ae.data import SHARDS_INFO, Geometry, convert, load_dataset, open_source
from tfp_ae.errors import InputError
from tfp_ae.train import run

N_TRAIN, N_TEST = 600, 200


def fast_config(dataset, out, **kw):
    return RunConfig(**dict(dict(dataset=str(dataset), out=str(out), epochs=2, batch_size=64, fid=False,
                                 tsne_images=0, eval_images=50, extra_figures=False, verbose=0), **kw))


@pytest.fixture(scope="module")
def mnist():
    require_dataset("mnist")
    d = load_dataset("mnist")
    return (d.x_train[:N_TRAIN], d.y_train[:N_TRAIN]), (d.x_test[:N_TEST], d.y_test[:N_TEST])


@pytest.fixture(scope="module")
def png_folder(mnist, tmp_path_factory):
    """Real MNIST digits as PNG files: train/<label>/i.png and test/<label>/i.png."""
    root = tmp_path_factory.mktemp("pngs")
    for split, (x, y) in zip(("train", "test"), mnist):
        for i, (img, label) in enumerate(zip(x, y)):
            write_png(root / split / str(label) / f"{i:05d}.png", img)
    return root


@pytest.fixture(scope="module")
def tfds_dir(mnist, tmp_path_factory):
    """The same digits as a TFDS dataset `mnist_local`, written with TFDS's own builder API."""
    import tensorflow_datasets as tfds
    root = tmp_path_factory.mktemp("tfds")
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(28, 28, 1)),
                                           "label": tfds.features.ClassLabel(num_classes=10)})
    splits = {s: tf.data.Dataset.from_tensor_slices({"image": np.round(x * 255).astype(np.uint8), "label": y})
              for s, (x, y) in zip(("train", "test"), mnist)}
    tfds.dataset_builders.store_as_tfds_dataset("mnist_local", "1.0.0", features, splits, data_dir=str(root),
                                                   disable_shuffling=True)  # keep the files' order
    return root


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Crops of scikit-learn's two bundled colour photographs (427x640 RGB), of three sizes."""
    from sklearn.datasets import load_sample_images
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, img in enumerate(load_sample_images().images):
        for i in range(40):
            h, w = [(48, 48), (64, 80), (96, 72)][i % 3]
            r, c = rng.integers(0, img.shape[0] - h), rng.integers(0, img.shape[1] - w)
            Image.fromarray(img[r:r + h, c:c + w]).save(root / f"photo{k}_{i:03d}.png")
    return root


def test_png_folder_gives_the_digits_and_labels_back(png_folder, mnist):
    src = open_source(png_folder)
    assert src.image_shape == (28, 28, 1) and src.num_levels == 256 and src.has_labels
    assert src.splits["train"].count == N_TRAIN and src.splits["test"].count == N_TEST
    x, y = src.splits["test"].take()
    # files are sorted by class folder, then name: compare as sets of (label, image)
    (xt, yt) = mnist[1]
    order = np.lexsort((np.arange(len(yt)), yt))
    np.testing.assert_array_equal(y, yt[order])
    np.testing.assert_allclose(x, xt[order], atol=1e-6)


def test_tfds_source_reads_a_locally_prepared_dataset(tfds_dir, mnist):
    src = open_source("tfds:mnist_local", data_dir=str(tfds_dir))
    assert src.image_shape == (28, 28, 1) and src.has_labels
    assert src.splits["train"].count == N_TRAIN
    x, y = src.splits["train"].take(100)
    np.testing.assert_allclose(x, mnist[0][0][:100], atol=1e-6)
    np.testing.assert_array_equal(y, mnist[0][1][:100])
    assert src.class_names == [str(i) for i in range(10)]  # the ClassLabel's names


def test_unprepared_tfds_name_offline_says_how_to_prepare_it(tmp_path):
    with pytest.raises(InputError, match="not prepared.*--download.*tfds build cifar10"):
        open_source("tfds:cifar10", data_dir=str(tmp_path))
    with pytest.raises(InputError, match="tfds:no_such_dataset_xyz"):
        open_source("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


def test_convert_writes_shards_that_read_back_equal(tfds_dir, tmp_path):
    src = open_source("tfds:mnist_local", data_dir=str(tfds_dir))
    info = convert(src, tmp_path / "shards", shards=3)
    assert info["counts"] == {"train": N_TRAIN, "test": N_TEST}
    assert len(list((tmp_path / "shards").glob("train-*.tfrecord"))) == 3
    back = open_source(tmp_path / "shards")
    assert back.image_shape == (28, 28, 1) and back.has_labels and back.num_levels == 256
    assert back.class_names == src.class_names == [str(i) for i in range(10)]
    for s in ("train", "test"):
        (x0, y0), (x1, y1) = src.splits[s].take(), back.splits[s].take()
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    glob_src = open_source(str(tmp_path / "shards" / "*.tfrecord"))
    assert glob_src.splits["train"].count == N_TRAIN


def test_convert_keeps_a_source_with_17_levels_exact(tmp_path, digits):
    info = convert(open_source("digits"), tmp_path / "d", shards=2)
    back = open_source(tmp_path / "d")
    assert info["num_levels"] == back.num_levels == 17
    np.testing.assert_array_equal(back.splits["test"].take()[0], digits.x_test)


def test_geometry_resizes_crops_and_converts_channels(photo_folder):
    with pytest.raises(InputError, match="mixes image sizes, e.g. .*--image-size"):
        open_source(photo_folder)
    src = open_source(photo_folder, image_size="32", crop="center", test_fraction=0.25)
    assert src.image_shape == (32, 32, 3) and not src.has_labels
    assert src.splits["test"].count == 20 and src.splits["train"].count == 60
    x, y = src.splits["train"].take()
    assert y is None and x.shape == (60, 32, 32, 3)
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-3)  # re-quantised to 8 bits
    grey = open_source(photo_folder, image_size="16x24", channels=1).splits["train"].take(5)[0]
    assert grey.shape == (5, 16, 24, 1)
    # a flat colour image stays that colour through crop, resize and the grey conversion
    flat = tf.fill([40, 60, 3], 0.5)
    np.testing.assert_allclose(Geometry.parse("8", "center", 1).apply(flat).numpy(), 0.5, atol=1 / 255)


@pytest.mark.parametrize("bad,match", [("0", "positive"), ("12x", "H or HxW"), ("axb", "H or HxW")])
def test_bad_geometry_is_refused(bad, match):
    with pytest.raises(InputError, match=match):
        Geometry.parse(bad)
    with pytest.raises(InputError, match="--image-size too"):
        Geometry.parse(None, "center")
    with pytest.raises(InputError, match="channels must be 1"):
        Geometry.parse(None, "none", 2)


def test_the_folder_split_is_fixed_and_disjoint(photo_folder):
    a = open_source(photo_folder, image_size="8", test_fraction=0.25)
    b = open_source(photo_folder, image_size="8", test_fraction=0.25)
    assert list(a.splits["test"].paths) == list(b.splits["test"].paths)
    assert not set(a.splits["test"].paths) & set(a.splits["train"].paths)


def test_bad_files_are_named_or_skipped_and_counted(png_folder, tmp_path, capsys):
    folder = tmp_path / "f"
    for split in ("train", "test"):
        for p in sorted((png_folder / split / "3").glob("*.png"))[:20]:
            (folder / split / "3").mkdir(parents=True, exist_ok=True)
            (folder / split / "3" / p.name).write_bytes(p.read_bytes())
        (folder / split / "7").mkdir()
        for p in sorted((png_folder / split / "7").glob("*.png"))[:20]:
            (folder / split / "7" / p.name).write_bytes(p.read_bytes())
    broken = folder / "train" / "3" / "broken.png"
    broken.write_bytes((folder / "train" / "3").glob("*.png").__next__().read_bytes()[:60])
    with pytest.raises(InputError, match="broken.png cannot be read.*--skip-bad-images"):
        open_source(folder)
    src = open_source(folder, skip_bad_images=True)
    assert [Path(p).name for p, _ in src.skipped] == ["broken.png"]
    assert src.splits["train"].count == 40
    src.print_skipped()  # what `tfp-ae train` and `convert` print (issue 40: they said "counted" and printed nothing)
    assert f"skipped unreadable image {broken}: " in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no image files.*empty"):
        open_source(empty)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="holds no image files"):
        open_source(tmp_path / "text")


def test_shards_without_an_image_feature_are_refused(tmp_path):
    tmp_path.joinpath("s").mkdir()
    for split in ("train", "test"):
        with tf.io.TFRecordWriter(str(tmp_path / "s" / f"{split}-00000-of-00001.tfrecord")) as w:
            ex = tf.train.Example(features=tf.train.Features(feature={
                "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5] * 4))}))
            w.write(ex.SerializeToString())
    with pytest.raises(InputError, match="bytes feature 'image'.*found \\['pixels'\\]"):
        open_source(tmp_path / "s")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "data.tfrecord").write_bytes(b"")
    with pytest.raises(InputError, match="no shard files for split"):
        open_source(tmp_path / "only")


def test_mixed_grey_and_colour_without_channels_is_refused(tmp_path):
    write_png(tmp_path / "m" / "a.png", np.zeros((8, 8, 1)))
    write_png(tmp_path / "m" / "b.png", np.zeros((8, 8, 3)))
    with pytest.raises(InputError, match="mixes grey .*a.png.* and colour .*b.png.*--channels"):
        open_source(tmp_path / "m")
    assert open_source(tmp_path / "m", channels=3, test_fraction=0.5).image_shape == (8, 8, 3)


def test_training_streams_a_png_folder_and_evaluates_the_whole_test_split(png_folder, tmp_path):
    model, m = run(fast_config(png_folder, tmp_path / "run", dequantize=True))
    assert m["test_images"] == N_TEST and m["train_images"] == N_TRAIN
    assert m["train_loss"][1] < m["train_loss"][0]
    assert np.isfinite(m["bits_per_dim"]) and m["image_shape"] == [28, 28, 1]
    # the streamed NLL equals the NLL of the same images held in memory
    from tfp_ae.predict import nll_per_image
    x, _ = open_source(png_folder).splits["test"].take()
    np.testing.assert_allclose(m["test_nll_nats"], np.mean(nll_per_image(model, x)), rtol=1e-5)


def test_training_on_shards_repeats_the_in_memory_run_of_the_same_images(tfds_dir, tmp_path):
    """The same images from a TFDS dataset and from `convert`ed shards give the same run."""
    src = open_source("tfds:mnist_local", data_dir=str(tfds_dir))
    convert(src, tmp_path / "shards", shards=1)
    a = run(fast_config("tfds:mnist_local", tmp_path / "a", data_dir=str(tfds_dir)))[1]
    b = run(fast_config(tmp_path / "shards", tmp_path / "b"))[1]
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-6)
    assert a["test_nll_nats"] == pytest.approx(b["test_nll_nats"], rel=1e-6)


class Interrupt(Exception):
    pass


def test_a_resumed_streamed_run_equals_the_uninterrupted_one(png_folder, tmp_path):
    from tfp_ae._tf import tfk

    class StopAfterFirstEpoch(tfk.callbacks.Callback):  # runs after the package's checkpointing callback
        def on_epoch_end(self, epoch, logs=None):
            raise Interrupt

    full = run(fast_config(png_folder, tmp_path / "full", epochs=3, dequantize=True))[1]
    cfg = fast_config(png_folder, tmp_path / "part", epochs=3, dequantize=True)
    with pytest.raises(Interrupt):
        run(cfg, callbacks=[StopAfterFirstEpoch()])
    resumed = run(cfg)[1]
    assert resumed["train_loss"] == full["train_loss"]


def test_colour_photo_crops_train_at_64x64(photo_folder, tmp_path):
    m = run(fast_config(photo_folder, tmp_path / "p", image_size="64", crop="center", arch="cnn_dense",
                        head="normal_diag"))[1]
    assert m["image_shape"] == [64, 64, 3] and np.isfinite(m["bits_per_dim"])
    assert "fid_lenet" not in m


def test_cli_convert_and_train_on_shards(png_folder, tmp_path):
    out = tmp_path / "shards"
    r = subprocess.run([sys.executable, "-m", "tfp_ae", "convert", str(png_folder), str(out), "--shards", "2",
                        "--image-size", "16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((out / SHARDS_INFO).read_text())
    assert info["image_shape"] == [16, 16, 1] and info["counts"]["train"] == N_TRAIN
    r = subprocess.run([sys.executable, "-m", "tfp_ae", "convert", str(png_folder), str(out)], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "tfp-ae: error:" in r.stderr and "--overwrite" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tfp_ae", "train", "--dataset", str(tmp_path / "nowhere"),
                        "--epochs", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "tfp-ae: error:" in r.stderr and "nowhere" in r.stderr


def test_class_names_travel_from_folders_to_metrics_and_the_legend(tmp_path):
    """Issue 40: a two-class folder (crops of scikit-learn's two photographs, in china/ and flower/)
    names its classes in the Source, in metrics.json and in the t-SNE legend of samples.png."""
    from sklearn.datasets import load_sample_images
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name, img in zip(("china", "flower"), load_sample_images().images):
        for split, n in (("train", 40), ("test", 12)):
            for i in range(n):
                r, c = rng.integers(0, img.shape[0] - 16), rng.integers(0, img.shape[1] - 16)
                write_png(root / split / name / f"{i:03d}.png", img[r:r + 16, c:c + 16] / 255)
    src = open_source(root)
    assert src.class_names == ["china", "flower"]
    assert sorted(set(src.splits["test"].take()[1])) == [0, 1]
    _, m = run(fast_config(root, tmp_path / "run", epochs=1, tsne_images=24, extra_figures=True))
    assert m["class_names"] == ["china", "flower"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["class_names"] == ["china", "flower"]
    emb = rng.normal(size=(6, 2))
    fig = plots.latent_panels(np.zeros((4, 16, 16, 3)), np.zeros((1, 16, 16, 3)), np.zeros((2, 1, 16, 16, 3)), emb,
                              np.array([0, 1, 0, 1, 1, 0]), class_names=src.class_names)
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert [t.get_text() for t in legends[0].get_texts()] == ["china", "flower"]
