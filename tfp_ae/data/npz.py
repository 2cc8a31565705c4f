"""A user's dataset as one `.npz` file of arrays."""
from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from tfp_ae.data.arrays import Dataset
from tfp_ae.errors import InputError


def load_npz(path: str | os.PathLike) -> Dataset:
    """A user's dataset: an `.npz` file with `x_train`, `x_test` (`[N, H, W, C]`, real numbers) and
    optional integer labels `y_train`, `y_test` (`[N]`). Pixels in [0, 1] (or 0-255 with
    `--rescale`); assumed 8-bit (L = 256). An optional string array `class_names` names the
    label indices.

    Raises:
      FileNotFoundError: no such file.
      InputError: a folder, a file that is not a readable .npz archive (truncated, corrupt,
        pickled objects), missing arrays, non-real dtypes, labels of the wrong shape or length.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"dataset {path} is a folder; expected an .npz file with arrays x_train and x_test")
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, AttributeError) as e:
        raise InputError(f"dataset file {path} is not a readable .npz archive ({type(e).__name__}: {e}); write it "
                         "with numpy.savez(path, x_train=..., x_test=...)") from None
    missing = [k for k in ("x_train", "x_test") if k not in arrays]
    if missing:
        raise InputError(f"dataset file {path}: missing arrays {missing}; found {sorted(arrays)} "
                         "(need x_train and x_test, [N, H, W, C])")
    for k, a in arrays.items():
        if k in ("x_train", "x_test", "y_train", "y_test") and a.dtype.kind not in "biuf":
            raise InputError(f"dataset file {path}: {k} has dtype {a.dtype}; expected real numbers (float, int, "
                             "uint or bool)")
    xtr, xte = arrays["x_train"], arrays["x_test"]
    labels = {}
    for k, x in (("y_train", xtr), ("y_test", xte)):
        y = arrays.get(k)
        if y is None:  # no labels: None (not zeros, which would train the FID classifier on one class)
            labels[k] = None
            continue
        if y.ndim != 1 or x.ndim == 0 or len(y) != len(x):
            raise InputError(f"dataset file {path}: {k} must have shape [N] with N = {len(x) if x.ndim else 0} "
                             f"(the images of x_{k[2:]}); got shape {y.shape}")
        if not np.all(np.isfinite(y)) or not np.all(np.asarray(y) == np.round(y)) or (y.size and y.min() < 0):
            raise InputError(f"dataset file {path}: {k} must hold class indices (integers >= 0)")
        labels[k] = y.astype(np.int64)
    names = arrays.get("class_names")
    names = [str(n) for n in names.ravel()] if names is not None and names.dtype.kind in "US" else None
    return Dataset(path.stem, xtr.astype(np.float32), labels["y_train"], xte.astype(np.float32), labels["y_test"],
                   256, str(path), names)
