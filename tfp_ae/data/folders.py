"""A folder of image files (PNG, JPEG, BMP, GIF, found recursively) as a `Source`.

The folder's `train/` and `test/` subfolders are the splits when it has both, otherwise a fixed
split of the sorted file list (seed `SPLIT_SEED`, `test_fraction` of the files for test); when
every image sits in a subfolder one level below the split's folder, the sorted subfolder names
are the class names and their indices the labels.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from tfp_ae.data.split import SPLITS, Source, Split
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.data import SourceOptions
    from tfp_ae.data.geometry import Geometry

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_SEED = 0  # the fixed shuffle of a folder without train/ and test/ before its test fraction is cut off


def claims(spec: str) -> bool:
    """A folder that holds no TFRecord shards (`tfp_ae.data.shards` is asked first)."""
    return Path(spec).is_dir()


def has_split_folders(folder: str | os.PathLike) -> bool:
    """True when `folder` has both `train/` and `test/` subfolders (they are then its splits)."""
    return all((Path(folder) / s).is_dir() for s in SPLITS)


def open_source(spec: str, geometry: Geometry, options: SourceOptions) -> Source:
    """The `Source` of the image folder `spec` (see the module docstring)."""
    return folder_source(Path(spec), geometry, options.test_fraction, options.skip_bad_images)


def image_files(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder`, recursively, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _channels_of(mode):
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "F") else 3


def scan_images(paths: Sequence[str], skip_bad_images: bool = False):
    """Check every image file with Pillow (headers, PNG chunk checksums, a full decode of other
    formats). Returns (sizes `[(h, w)]`, channels `[c]`, kept paths, skipped `[(path, reason)]`).

    Raises:
      InputError: an unreadable, corrupt or truncated file, naming it (unless `skip_bad_images`).
    """
    sizes, channels, kept, skipped = [], [], [], []
    for p in tqdm(paths, desc="checking image files", unit="file", disable=len(paths) < 5000, mininterval=2):
        try:
            with Image.open(p) as im:
                size, mode = im.size, im.mode
                im.verify() if im.format == "PNG" else im.load()
        except Exception as e:  # Pillow raises many types for a broken file (OSError, SyntaxError, ...)
            reason = f"{type(e).__name__}: {e}"
            if not skip_bad_images:
                raise InputError(f"image file {p} cannot be read ({reason}); it is corrupt or truncated. Remove it "
                                 "or pass --skip-bad-images to leave unreadable files out") from None
            skipped.append((str(p), reason))
            continue
        sizes.append((size[1], size[0]))
        channels.append(_channels_of(mode))
        kept.append(str(p))
    return sizes, channels, kept, skipped


def _folder_labels(root, paths):
    """Labels from one level of class subfolders under `root` (sorted names -> 0, 1, ...), or None."""
    parts = [Path(p).relative_to(root).parts for p in paths]
    if not parts or any(len(q) != 2 for q in parts):
        return None, None
    classes = sorted({q[0] for q in parts})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[q[0]] for q in parts], np.int64), classes


def folder_source(folder: str | os.PathLike, geometry: Geometry, test_fraction: float, skip_bad_images: bool) -> Source:
    """The `Source` of an image folder (module docstring): checks every file (`scan_images`), splits,
    labels from class subfolders.

    Raises:
      InputError: an empty folder or split, unreadable files (unless `skip_bad_images`), mixed sizes
        or channels without a geometry that fixes them, a bad `test_fraction`.
    """
    folder = Path(folder)
    roots = {s: folder / s for s in SPLITS} if has_split_folders(folder) else None
    paths = {s: image_files(r) for s, r in roots.items()} if roots else {"all": image_files(folder)}
    for key, found in paths.items():
        if not found:
            where = roots[key] if roots else folder
            raise InputError(f"folder {where} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, searched "
                             "recursively)" + ("; it is empty" if not any(Path(where).iterdir()) else ""))
    scanned = {key: scan_images(p, skip_bad_images) for key, p in paths.items()}
    skipped = [s for r in scanned.values() for s in r[3]]
    sizes = [s for r in scanned.values() for s in r[0]]
    chans = [c for r in scanned.values() for c in r[1]]
    kept_all = [p for r in scanned.values() for p in r[2]]
    if not kept_all:
        raise InputError(f"folder {folder}: none of its {len(skipped)} image files can be read")
    if geometry.size is None and len(set(sizes)) > 1:
        a = sizes[0]
        b = next(s for s in sizes if s != a)
        fa, fb = kept_all[sizes.index(a)], kept_all[sizes.index(b)]
        raise InputError(f"folder {folder} mixes image sizes, e.g. {a[0]}x{a[1]} ({fa}) and {b[0]}x{b[1]} ({fb}); "
                         "pass --image-size H or HxW (and --crop center to keep the aspect ratio)")
    if geometry.channels is None and len(set(chans)) > 1:
        fa, fb = kept_all[chans.index(1)], kept_all[chans.index(3)]
        raise InputError(f"folder {folder} mixes grey ({fa}) and colour ({fb}) images; pass --channels 1 or 3")
    source_channels = geometry.channels or chans[0]
    shape = geometry.shape((*sizes[0], source_channels))
    if roots:
        kept = {s: scanned[s][2] for s in SPLITS}
        base = {s: roots[s] for s in SPLITS}
    else:
        if not 0 < test_fraction < 1:
            raise InputError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(kept_all))
        n_test = max(1, int(round(len(kept_all) * test_fraction)))
        if n_test >= len(kept_all):
            raise InputError(f"folder {folder}: {len(kept_all)} image(s) are too few to split into train and test")
        kept = dict(test=[kept_all[i] for i in sorted(order[:n_test])],
                    train=[kept_all[i] for i in sorted(order[n_test:])])
        base = dict(train=folder, test=folder)
    for s in SPLITS:
        if not kept[s]:
            raise InputError(f"folder {base[s]}: none of its image files can be read, so the {s} split is empty")
    splits = {}
    labels = {s: _folder_labels(base[s], kept[s]) for s in SPLITS}
    with_labels = all(labels[s][0] is not None for s in SPLITS) and labels["train"][1] == labels["test"][1]
    for s in SPLITS:
        splits[s] = Split("files", len(kept[s]), shape, 256, geometry, paths=np.array(kept[s], dtype=str),
                          labels=labels[s][0] if with_labels else None, source_channels=source_channels)
    return Source(folder.name, f"image folder {folder}", shape, 256, splits, skipped,
                  class_names=labels["train"][1] if with_labels else None)
