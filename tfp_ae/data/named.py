"""The named datasets: MNIST and Fashion-MNIST (standard IDX `.gz` files) and scikit-learn's 8x8
digits, as float32 images `[N, H, W, 1]` with values `k / (L - 1)` for integer levels `k` in
`0..L-1` (`L = 256` for the 8-bit IDX datasets, `L = 17` for `digits`) and int64 labels `[N]`.

`load_dataset` is also the entry for `.npz` files (`tfp_ae.data.npz`).
"""
from __future__ import annotations

import gzip
import os
import socket
import struct
import threading
from pathlib import Path

import numpy as np

from tfp_ae.data.arrays import Dataset
from tfp_ae.data.npz import load_npz
from tfp_ae.errors import InputError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_FOLDERS = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
DATASETS = ("mnist", "fashion_mnist", "digits")
CLASS_NAMES = {  # the label names of tensorflow-datasets' ClassLabel features
    "mnist": [str(i) for i in range(10)],
    "digits": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_PROBE = ("storage.googleapis.com", 443)  # where tensorflow-datasets downloads from
PROBE_SECONDS = 3.0


class DataNotFoundError(FileNotFoundError):
    """No copy of a dataset was found; the message lists where we looked and how to get it."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 array.

    Format (LeCun et al.): big-endian magic `0x000008NN` (0x08 = unsigned byte, NN = number of
    dimensions), one uint32 per dimension, then the raw values.

    Returns:
      uint8 array of the shape the header declares.
    Raises:
      ValueError: wrong magic number, unsupported data type, or a file whose size does not
        match its header (truncated or padded); the message names the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these on a truncated/corrupt stream
        raise InputError(f"{path}: cannot read IDX file ({e}); the file is corrupt or truncated") from None
    if len(raw) < 4:
        raise InputError(f"{path}: IDX file too short ({len(raw)} bytes) for a header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise InputError(f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x00000801 "
                         "(labels) or 0x00000803 (images)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: IDX header truncated")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise InputError(f"{path}: IDX header declares shape {shape} ({expected} values) but the "
                         f"file holds {len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_candidates(name, data_dir):
    """Folders that may hold the IDX files of `name`, in search order."""
    folder = IDX_FOLDERS[name]
    places = []
    if data_dir:
        places += [Path(data_dir) / folder, Path(data_dir)]
    if os.environ.get("TFP_AE_DATA_DIR"):
        places.append(Path(os.environ["TFP_AE_DATA_DIR"]) / folder)
    if name == "fashion_mnist":
        places.append(DEBIAN_FASHION_MNIST)
    places.append(Path.home() / ".keras" / "datasets" / folder)
    return places


def _has_idx(folder):
    return all((folder / f).exists() for pair in IDX_FILES.values() for f in pair)


def find_idx_dir(name: str, data_dir: str | os.PathLike | None = None):
    """The first folder holding all four IDX files of `name`, or None.

    Search order: `data_dir` (or its `mnist/` / `fashion-mnist/` subfolder), `$TFP_AE_DATA_DIR/<folder>`,
    Debian's `/usr/share/datasets/fashion-mnist` (Fashion-MNIST only), `~/.keras/datasets/<folder>`.
    """
    for place in _idx_candidates(name, data_dir):
        if _has_idx(place):
            return place
    return None


def dataset_available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """True when `name` can be loaded without a download."""
    if name == "digits":
        return True
    return find_idx_dir(name, data_dir) is not None or _keras_npz(name).exists()


def _keras_npz(name):
    return Path.home() / ".keras" / "datasets" / f"{name}.npz"


def network_reachable(address: tuple[str, int] = DOWNLOAD_PROBE, timeout: float = PROBE_SECONDS) -> bool:
    """One short probe, no retries: can a TCP connection to `address` `(host, port)` be opened
    within `timeout` seconds (name lookup included)? Offline, a tensorflow-datasets download
    retries for minutes before it fails; this answers in at most `timeout` seconds."""
    result = []

    def connect():
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            pass
    probe = threading.Thread(target=connect, daemon=True)  # a hung name lookup cannot hold the caller
    probe.start()
    probe.join(timeout)
    return bool(result)


def _from_tfds(name):
    if not network_reachable():
        raise ConnectionError(f"the download server {DOWNLOAD_PROBE[0]} cannot be reached (no network)")
    import tensorflow_datasets as tfds  # heavy: imported only for a download
    arrays = {}
    for split in ("train", "test"):
        x, y = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, as_supervised=True))
        arrays[split] = (x.reshape(-1, 28, 28), y)
    return arrays


def _not_found(name, data_dir, error):
    looked = "\n  ".join(str(p) for p in _idx_candidates(name, data_dir) + [_keras_npz(name)])
    get = (f"  python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\"   (downloads; needs internet)\n"
           f"  or point TFP_AE_DATA_DIR (or --data-dir) at a folder holding {IDX_FOLDERS[name]}/ with the four IDX "
           ".gz files")
    if name == "fashion_mnist":
        get += "\n  or: sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu, no download at run time)"
    return DataNotFoundError(f"dataset {name!r} not found. Looked in:\n  {looked}\nand tensorflow-datasets "
                             f"failed ({type(error).__name__}: {error}).\nGet it with:\n{get}")


def _load_idx_dataset(name, data_dir):
    folder = find_idx_dir(name, data_dir)
    if folder is not None:
        arrays = {split: (read_idx(folder / fi), read_idx(folder / fl))
                  for split, (fi, fl) in IDX_FILES.items()}
        source = str(folder)
    elif _keras_npz(name).exists():
        with np.load(_keras_npz(name)) as f:
            arrays = {"train": (f["x_train"], f["y_train"]), "test": (f["x_test"], f["y_test"])}
        source = str(_keras_npz(name))
    else:
        try:
            arrays, source = _from_tfds(name), "tensorflow-datasets"
        except Exception as e:  # no network, tfds not configured, ...
            raise _not_found(name, data_dir, e) from e
    for split, (x, y) in arrays.items():
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise InputError(f"{name} {split}: images {x.shape} and labels {y.shape} do not match "
                             "the expected [N, 28, 28] / [N] layout")
    return arrays, source


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset as float32 images in [0, 1].

    Args:
      name: `mnist`, `fashion_mnist` (60000/10000 images, 28x28x1) or `digits` (scikit-learn's
        1797 real 8x8 digits: the first 1437 for training, the last 360 for test).
      data_dir: folder with the IDX files (or with `mnist/` and `fashion-mnist/` subfolders);
        see `find_idx_dir` for the search order when it is None.
    Returns:
      A `Dataset`.
    Raises:
      ValueError: unknown name (the message lists the valid ones) or corrupt IDX files.
      DataNotFoundError: no copy found and the tensorflow-datasets download failed; offline, within
        `PROBE_SECONDS` (one probe of the download server, no retries).
    """
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[..., None]
        y = d.target.astype(np.int64)
        n_train = 1437
        return Dataset(name, x[:n_train], y[:n_train], x[n_train:], y[n_train:], 17, "sklearn.datasets.load_digits",
                       CLASS_NAMES["digits"])
    if str(name).endswith(".npz"):
        return load_npz(name)
    if name not in IDX_FOLDERS:
        raise InputError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, a path to an .npz file "
                         f"with arrays x_train and x_test, tfds:NAME (e.g. tfds:{name}), a folder of images or "
                         "of TFRecord shards")
    arrays, source = _load_idx_dataset(name, data_dir)
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    scale = np.float32(1 / 255)
    return Dataset(name, (xtr[..., None] * scale), ytr.astype(np.int64),
                   (xte[..., None] * scale), yte.astype(np.int64), 256, source, CLASS_NAMES[name])
