"""Fuzzing the boundaries (hypothesis, derandomised so CI sees the same cases): data files, the
Python entry points and the command line. Every generated input either works or fails with the
package's own error (`InputError`, `FileNotFoundError`; on the command line a one-line
`tfp-ae: error: ...` exit or argparse's usage exit), never with a traceback from below."""
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfp_ae.cli import main
from tfp_ae.config import ARCHS
from tfp_ae.data import load_dataset, prepare_images
from tfp_ae.errors import InputError
from tfp_ae.heads import HEADS
from tfp_ae.models import build_model
from tfp_ae.vae import build_vae


def fuzz(max_examples):
    """hypothesis settings: derandomised (the same cases every run), no example database, no deadline."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int64, np.int8, np.bool_,
                          np.complex64])
shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, shapes))


@fuzz(150)
@given(x_train=arrays, x_test=arrays, y_train=st.none() | arrays, rescale=st.booleans(),
       corruption=st.sampled_from(["none", "truncate", "garbage", "folder", "missing_key"]),
       cut=st.floats(0, 1))
def test_fuzz_dataset_files(tmp_path_factory, x_train, x_test, y_train, rescale, corruption, cut):
    """Random arrays (dtype, rank, shape, values incl. NaN/inf/out of range), truncated or garbage
    files, folders: loading and checking either gives valid images or an `InputError`."""
    folder = tmp_path_factory.mktemp("npz")
    path = folder / "data.npz"
    arrays = dict(x_train=x_train, x_test=x_test)
    if y_train is not None:
        arrays["y_train"] = y_train
    if corruption == "missing_key":
        arrays.pop("x_test")
    if corruption == "folder":
        path.mkdir()
    else:
        np.savez(path, **arrays)
        raw = path.read_bytes()
        if corruption == "truncate":
            path.write_bytes(raw[:int(len(raw) * cut)])
        elif corruption == "garbage":
            path.write_bytes(np.random.default_rng(int(cut * 1e6)).bytes(int(len(raw) * cut) + 1))
    try:
        data = load_dataset(str(path))
        x = prepare_images(data.x_train, rescale, "training images")
        prepare_images(data.x_test, rescale, "test images", image_shape=x.shape[1:])
    except InputError as e:
        assert str(e)
        return
    assert x.ndim == 4 and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert data.y_train is None if y_train is None else len(data.y_train) == len(data.x_train)


@fuzz(60)
@given(head=st.sampled_from(list(HEADS) + ["gauss", "", "MSE"]), k=st.integers(0, 3),
       shape=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)) | st.tuples(
           st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
       arch=st.sampled_from(list(ARCHS) + ["rnn"]), latent_dim=st.integers(1, 4), vae=st.booleans())
def test_fuzz_model_builders(head, k, shape, arch, latent_dim, vae):
    """`build_model` / `build_vae` with random heads, K, image shapes and architectures: a model
    that maps images of that shape to a distribution, or an `InputError`."""
    try:
        model = (build_vae(head, shape, k, arch, latent_dim) if vae else build_model(head, shape, k, arch, latent_dim))
    except InputError:
        return
    x = np.full((2, *shape), 0.5, np.float32)
    assert model.log_prob(x).shape == (2,) and np.isfinite(model.log_prob(x).numpy()).all()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    digits = load_dataset("digits")
    np.savez(path, x_train=digits.x_train[:48], y_train=digits.y_train[:48], x_test=digits.x_test[:12],
             y_test=digits.y_test[:12])
    return str(path)


GOOD_FLAGS = dict(epochs=["1", "2"], batch_size=["16", "64"], components=["1", "2"],
                  head=["normal_diag", "mse", "student_t_identity", "matrix_normal_diag", "maf", "bernoulli"],
                  model=["ae", "vae"], arch=["mlp", "cnn_dense"], learning_rate=["1e-3", "0.01"],
                  latent_dim=["2", "4"], train_limit=["24", "48"], validation_split=["0", "0.25"])
BAD_FLAGS = dict(epochs=["0", "-1", "x"], batch_size=["0", "-5"], components=["0", "-1"], head=["bogus", ""],
                 model=["gan"], arch=["rnn"], learning_rate=["0", "-1", "nan", "inf", "abc"], latent_dim=["0", "-2"],
                 train_limit=["0", "-3"], validation_split=["-0.1", "1", "2", "nan"], iw_samples=["0", "-1"],
                 objective=["x"], out=["an existing file"], dataset=["a folder", "a truncated file"])


@fuzz(20)
@given(good=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in GOOD_FLAGS.items()}),
       bad=st.none() | st.sampled_from(sorted(BAD_FLAGS)).flatmap(
           lambda k: st.tuples(st.just(k), st.sampled_from(BAD_FLAGS[k]))))
def test_fuzz_cli_train(tmp_path_factory, tiny_data, capsys, good, bad):
    """`tfp-ae train` on a tiny dataset with random valid flags, one of them (or none) replaced by
    a bad value: it trains (the run folder gets metrics.json), or exits with `tfp-ae: error: ...`
    (the package's message) or argparse's usage error; never a traceback."""
    folder = tmp_path_factory.mktemp("run")
    flags = dict(good, dataset=tiny_data, out=str(folder / "r"), objective="elbo", iw_samples="2")
    if good["head"] in ("mse", "maf"):
        flags["components"] = "1"
    if bad:
        name, value = bad
        if value == "an existing file":
            (folder / "r").write_text("not a folder")
        elif value == "a folder":
            (folder / "d.npz").mkdir()
            value = str(folder / "d.npz")
        elif value == "a truncated file":
            raw = open(tiny_data, "rb").read()
            (folder / "t.npz").write_bytes(raw[:len(raw) // 3])
            value = str(folder / "t.npz")
        if name != "out":
            flags[name] = value
    argv = ["train", *[a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", v)],
            "--no-fid", "--no-extra-figures", "--eval-images", "8"]
    try:
        main(argv)
    except SystemExit as e:
        assert bad, f"valid flags were refused: {e.code}"
        if e.code == 2:   # argparse: bad choice or type; it printed the usage
            assert "usage:" in capsys.readouterr().err
            return
        assert str(e.code).startswith("tfp-ae: error: "), e.code
        return
    assert bad is None, f"trained with the bad value {bad}"
    assert (folder / "r" / "metrics.json").exists()


def test_truncated_and_folder_npz_get_clear_errors(tmp_path, tiny_data):
    raw = open(tiny_data, "rb").read()
    (tmp_path / "t.npz").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(InputError, match="not a readable .npz archive"):
        load_dataset(str(tmp_path / "t.npz"))
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        load_dataset(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "c.npz", x_train=np.zeros((2, 2, 2, 1), np.complex64), x_test=np.zeros((2, 2, 2, 1)))
    with pytest.raises(InputError, match="x_train has dtype complex64"):
        load_dataset(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "y.npz", x_train=np.zeros((3, 2, 2, 1)), x_test=np.zeros((2, 2, 2, 1)), y_train=np.zeros(2))
    with pytest.raises(InputError, match=r"y_train must have shape \[N\] with N = 3"):
        load_dataset(str(tmp_path / "y.npz"))
    assert zipfile.is_zipfile(tiny_data)


def _random_image_file(path, rng, kind, size):
    """A file named like an image: a valid PNG/JPEG/BMP/GIF of `size` (None: random) and a random
    mode, or a broken one."""
    from PIL import Image
    h, w = rng.integers(1, 9, 2) if size is None else size
    mode = rng.choice(["L", "RGB", "RGBA", "LA", "P"])
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP", ".gif": "GIF"}[path.suffix]
    if fmt in ("JPEG", "BMP") and mode in ("LA", "RGBA", "P"):
        img = img.convert("RGB")
    img.save(path, fmt)
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[:max(1, len(raw) // 2)])
    elif kind == "garbage":
        path.write_bytes(rng.bytes(int(rng.integers(0, 64))))


@fuzz(60)
@given(files=st.lists(st.tuples(st.sampled_from([".png", ".jpg", ".bmp", ".gif", ".txt"]),
                                st.sampled_from(["ok"] * 6 + ["truncated", "garbage"]),
                                st.sampled_from(["", "", "a", "b", "train/a", "test/a", "train", "test", "x/y/z"])),
                      min_size=0, max_size=12),
       mixed_sizes=st.booleans(),
       geometry=st.sampled_from([(None, "none"), ("4", "none"), ("3x5", "center"), ("4", "center"), ("6x2", "none"),
                                 ("0", "none"), ("z", "none"), (None, "center")]),
       channels=st.sampled_from([None, 1, 3]), skip=st.booleans(), shards=st.integers(0, 3), seed=st.integers(0, 99))
def test_fuzz_image_folders_and_shards(tmp_path_factory, files, mixed_sizes, geometry, channels, skip, shards, seed):
    """Random folders (valid, truncated and garbage files of every format and mode, random sizes, text
    files, nesting, train/test subfolders) read with random geometry: a source whose splits stream
    (read, converted to TFRecord shards and read back, scored by a model: the evaluation stage), or
    an `InputError`."""
    from tfp_ae.data import convert, open_source
    from tfp_ae.predict import split_log_probs
    image_size, crop = geometry
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("folder")
    for i, (ext, kind, sub) in enumerate(files):
        (root / sub).mkdir(parents=True, exist_ok=True)
        if ext == ".txt":
            (root / sub / f"{i}.txt").write_text("not an image")
        else:
            _random_image_file(root / sub / f"{i}{ext}", rng, kind, None if mixed_sizes else (5, 4))
    try:
        source = open_source(root, image_size=image_size, crop=crop, channels=channels, skip_bad_images=skip,
                             test_fraction=0.5)
        if shards:
            convert(source, root.parent / (root.name + "_shards"), shards=shards)
            source = open_source(root.parent / (root.name + "_shards"), skip_bad_images=skip)
        with source.reading():
            x, _ = source.splits["train"].take()
            model = build_model("normal_diag", source.image_shape)
            scores = split_log_probs(model, source.splits["test"], source.num_levels)
    except InputError as e:
        assert str(e)
        return
    assert x.ndim == 4 and x.shape[1:] == source.image_shape and 0 <= x.min() and x.max() <= 1
    assert np.isfinite(scores["log_prob"]).all() and len(scores["log_prob"]) == source.splits["test"].count
