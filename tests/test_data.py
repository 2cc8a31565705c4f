import gzip
import struct

import numpy as np
import pytest

from tests.conftest import require_dataset
from tfp_ae.data import DataNotFoundError, check_images, dequantize, find_idx_dir, load_dataset, make_pipeline, read_idx


def _write_idx(path, array, magic=None):
    magic = magic if magic is not None else 0x0800 + array.ndim
    data = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data)
    return data


def test_idx_roundtrip(tmp_path, rng):
    a = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "x.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), a)


def test_idx_rejects_wrong_magic(tmp_path, rng):
    a = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "x.gz", a, magic=0x00000C03)  # 0x0C = int32, not unsigned byte
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "x.gz")


def test_idx_rejects_truncated_payload(tmp_path, rng):
    a = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    data = _write_idx(tmp_path / "x.gz", a)
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(data[:-7])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_idx_rejects_truncated_gzip_stream(tmp_path, rng):
    a = rng.integers(0, 256, size=(50, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "x.gz", a)
    raw = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_idx(tmp_path / "cut.gz")


def test_missing_dataset_error_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TFP_AE_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr("tfp_ae.data.named.DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr("tfp_ae.data.named._from_tfds", lambda name: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert str(tmp_path / "nothing" / "fashion-mnist") in msg
    assert "tfds.load('fashion_mnist')" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_offline_a_missing_dataset_fails_within_seconds(tmp_path, monkeypatch):
    """Issue 40: offline, a dataset that is not on disk fails after one short probe of the download
    server (it used to take 3 min 31 s of tensorflow-datasets' download retries), with the message
    that names TFP_AE_DATA_DIR. Where this machine has a network, the probe is pointed at a closed
    local port, which is what an unreachable server looks like."""
    import time

    from tfp_ae.data import named, network_reachable
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TFP_AE_DATA_DIR", raising=False)
    if network_reachable():
        monkeypatch.setattr(named, "DOWNLOAD_PROBE", ("127.0.0.1", 9))
    assert not network_reachable(named.DOWNLOAD_PROBE)
    start = time.monotonic()
    with pytest.raises(DataNotFoundError, match="(?s)cannot be reached.*TFP_AE_DATA_DIR"):
        load_dataset("mnist")
    assert time.monotonic() - start < named.PROBE_SECONDS + 5


def test_search_order_prefers_explicit_dir(tmp_path, monkeypatch, rng):
    for root in (tmp_path / "a", tmp_path / "b"):
        folder = root / "mnist"
        folder.mkdir(parents=True)
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                     "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (folder / name).write_bytes(b"")
    monkeypatch.setenv("TFP_AE_DATA_DIR", str(tmp_path / "b"))
    assert find_idx_dir("mnist", tmp_path / "a") == tmp_path / "a" / "mnist"
    assert find_idx_dir("mnist") == tmp_path / "b" / "mnist"


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist"):
        load_dataset("cifar")


def test_digits(digits):
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.x_train.dtype == np.float32
    assert digits.x_train.min() == 0 and digits.x_train.max() == 1
    levels = np.unique(np.round(digits.x_train * 16))
    assert len(levels) == 17 and digits.num_levels == 17
    assert set(digits.y_test) == set(range(10))


@pytest.mark.parametrize("name,mean", [("mnist", 0.1307), ("fashion_mnist", 0.2860)])
def test_real_idx_datasets(name, mean):
    require_dataset(name)
    d = load_dataset(name)
    assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
    assert d.y_train.shape == (60000,) and d.num_levels == 256
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert abs(d.x_train.mean() - mean) < 1e-3


def test_dequantize_stays_in_its_bin(rng):
    k = rng.integers(0, 256, size=(100, 4, 4, 1))
    x = (k / 255).astype(np.float32)
    xd = dequantize(x, 256, seed=0)
    assert np.all(np.floor(xd * 256) == k)
    import tensorflow as tf
    xt = dequantize(tf.constant(x), 256, seed=(3, 4)).numpy()
    assert np.all(np.floor(xt * 256) == k)
    np.testing.assert_array_equal(dequantize(tf.constant(x), 256, seed=(3, 4)).numpy(), xt)  # stateless
    assert not np.array_equal(dequantize(tf.constant(x), 256, seed=(3, 5)).numpy(), xt)
    with pytest.raises(ValueError, match="stateless seed"):
        dequantize(tf.constant(x), 256)


def test_pipeline_noise_is_a_function_of_seed_and_step(digits):
    """The dequantised stream repeats exactly, and skipping epochs gives the same later batches."""
    x = digits.x_train[:300]

    def batches(skip, n):
        ds = make_pipeline(x, 128, num_levels=17, seed=7, repeat=True, skip_epochs=skip)
        return [b.numpy() for b, _ in ds.take(n)]

    full, again, resumed = batches(0, 9), batches(0, 9), batches(2, 3)  # 3 batches per epoch
    for a, b in zip(full, again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(full[6:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full[0], full[3][:len(full[0])])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 8, 8)), "4-D"),
    (np.zeros((0, 8, 8, 1)), "empty"),
    (np.full((2, 8, 8, 1), np.nan), "NaN"),
    (np.full((2, 8, 8, 1), 255.0), r"\[0, 1\]"),
])
def test_check_images_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        check_images(bad)


def test_pipeline_batches_pairs(digits):
    ds = make_pipeline(digits.x_train, batch_size=128, seed=0)
    x, y = next(iter(ds))
    assert x.shape == (128, 8, 8, 1)
    np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert sum(int(b[0].shape[0]) for b in ds) == 1437
