"""Defect masks of a test split (an `.npz` or a folder of mask images in MVTec AD's layout), for the
pixel AUROC and PRO of anomaly maps."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tfp_ae.data.folders import IMAGE_EXTENSIONS, image_files
from tfp_ae.data.geometry import Geometry
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.data.split import Split

MASK_SUFFIX = "_mask"  # MVTec AD names the mask of test/crack/000.png ground_truth/crack/000_mask.png


def _image_key(path, root=None):
    """The parts of an image path without its extension and a `MASK_SUFFIX` (relative to `root`)."""
    path = Path(path)
    rel = path.relative_to(root) if root else path
    stem = path.stem[:-len(MASK_SUFFIX)] if path.stem.endswith(MASK_SUFFIX) else path.stem
    return (*rel.parts[:-1], stem)


def _read_mask(path, split):
    """One mask image -> bool `[H, W]` (a non-zero pixel is a defect), shaped by the split's geometry."""
    try:
        with Image.open(path) as im:
            m = (np.asarray(im.convert("L")) > 0).astype(np.float32)
    except Exception as e:  # Pillow raises many types for a broken file
        raise InputError(f"mask file {path} cannot be read ({type(e).__name__}: {e})") from None
    if split.geometry.size is not None:
        m = Geometry(split.geometry.size, split.geometry.crop).apply(m[..., None]).numpy()[..., 0]
    if m.shape != tuple(split.image_shape[:2]):
        raise InputError(f"mask file {path} is {m.shape[0]}x{m.shape[1]}; the images are "
                         f"{split.image_shape[0]}x{split.image_shape[1]}")
    return m > 0.5


def load_masks(spec: str | os.PathLike, split: Split) -> np.ndarray:
    """Defect masks of a test split, for the pixel AUROC and PRO of anomaly maps.

    Args:
      spec: an `.npz` holding `mask_test` `[N, H, W]` or `[N, H, W, C]` (non-zero = defect): the
        masks of the split's first N images; or a folder of mask images (found recursively; a
        non-zero pixel is a defect; resized like the images when the run has `--image-size`):

        - when `split` is a folder of image files, each mask is matched to the test image whose path
          ends in the mask's path relative to the folder, without extension and `_mask` suffix (the
          MVTec AD layout: `ground_truth/crack/000_mask.png` for `test/crack/000.png`); test images
          without a mask are defect-free;
        - for any other source, the mask files sorted by path are the masks of the first N images.
      split: the `Split` the masks belong to.
    Returns:
      bool `[N, H, W]`: the masks of the split's first N images.
    Raises:
      InputError: a missing file, an `.npz` without `mask_test`, a folder without mask images, an
        unreadable mask, a mask of another size than the images, more masks than images, a mask
        that matches no test image or more than one, two masks of one image.
    """
    path = Path(spec)
    if not path.exists():
        raise InputError(f"masks {spec} do not exist (no such file or folder)")
    if path.is_file():
        try:
            with np.load(path) as f:
                names, masks = f.files, (np.asarray(f["mask_test"]) != 0 if "mask_test" in f.files else None)
        except (OSError, ValueError) as e:
            raise InputError(f"masks {spec} cannot be read as .npz ({e})") from None
        if masks is None:
            raise InputError(f"masks {spec}: no array mask_test (found {', '.join(names) or 'none'})")
        return masks.any(-1) if masks.ndim == 4 else masks
    files = image_files(path)
    if not files:
        raise InputError(f"mask folder {spec} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
    if len(files) > split.count:
        raise InputError(f"mask folder {spec} holds {len(files)} masks for {split.count} test images")
    if split.kind != "files":
        return np.stack([_read_mask(f, split) for f in files])
    by_key = {}
    for f in files:
        other = by_key.setdefault(_image_key(f, path), f)
        if other != f:
            raise InputError(f"masks {other} and {f} are the mask of the same image; keep one")
    owner = {}
    for i, p in enumerate(split.paths):
        key = _image_key(p)
        match = next((key[-k:] for k in range(len(key), 0, -1) if key[-k:] in by_key), None)
        if match is not None:
            if match in owner:
                raise InputError(f"mask {by_key[match]} matches two test images ({split.paths[owner[match]]} "
                                 f"and {p}); give the masks the test images' subfolders")
            owner[match] = i
    unmatched = [f for k, f in by_key.items() if k not in owner]
    if unmatched:
        raise InputError(f"mask {unmatched[0]} matches no test image ({len(unmatched)} such); a mask is named after "
                         f"its image: crack/000.png or crack/000{MASK_SUFFIX}.png for test/crack/000.png")
    masks = np.zeros((split.count, *split.image_shape[:2]), bool)
    for key, i in owner.items():
        masks[i] = _read_mask(by_key[key], split)
    return masks
