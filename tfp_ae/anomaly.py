"""Where an image is anomalous: per-pixel anomaly maps, their per-image reductions, how well they
localise defect masks (pixel AUROC, PRO), the defect labels of a test split, and synthetic defects
with their masks (for benchmarks, tests and MVTec-AD-like folders).

Per-pixel maps (`MAPS`), `[N, H, W, C]`, higher = more anomalous:

- `neg_log_marginal`: -log p(x_pixel | input), nats (`Head.pixel_log_prob`);
- `standardized_error`: |x - point estimate| / s, s the half-width of the central 68.27 % interval
  (the standard deviation for a normal; exists for every head but `mse`);
- `outside_interval`: distance of x outside the central 95 % interval (0 inside), pixel units;
- `abs_error`: |x - point estimate|, the baseline;
- `ssim`: 1 - the local structural similarity of x and its point estimate (Wang et al., IEEE TIP 2004;
  `skimage.metrics.structural_similarity` with `full=True`: an 11 x 11 Gaussian window of σ 1.5, as
  the AE-SSIM baseline of Bergmann et al., VISAPP 2019; the window shrinks on images under 11 pixels;
  channels separately), in [0, 2];
- `<map>_smooth` (`SMOOTHED`): the mean of the map filtered by Gaussians of s and 2s pixels over
  height and width, s = `smoothing_sigma(image_shape)` (`multiscale`; the MVTec AD baselines smooth
  their maps with a Gaussian: Bergmann et al., IJCV 2021; a defect covers many pixels, pixel noise
  does not, and two scales serve defects of several sizes).
`RECOMMENDED_MAP` is the map `tfp-ae score` draws and recommends (docs/results/ood: it beat
`abs_error` on the synthetic Fashion-MNIST defects and on three real textures, as every other map
did not).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity
from sklearn import metrics as skm

from tfp_ae._tf import tf
from tfp_ae.errors import InputError
from tfp_ae.heads import SAMPLE_SEED
from tfp_ae.predict import sample_batch_size

if TYPE_CHECKING:
    from tfp_ae.data.split import Split
    from tfp_ae.models import ProbabilisticModel

RAW_MAPS = ("neg_log_marginal", "standardized_error", "outside_interval", "abs_error", "ssim")
SMOOTHED = ("neg_log_marginal", "abs_error", "ssim")  # the maps that are also given smoothed, as `<map>_smooth`
SSIM_SIGMA, SSIM_TRUNCATE = 1.5, 3.5  # the Gaussian window of `ssim_map`: 2 * int(3.5 * 1.5 + 0.5) + 1 = 11 pixels
SCALES = (1, 2)  # `multiscale` averages the map smoothed at these multiples of `smoothing_sigma`
MAPS = RAW_MAPS + tuple(f"{m}_smooth" for m in SMOOTHED)
RECOMMENDED_MAP = "neg_log_marginal_smooth"
REDUCTIONS = ("max", "top1")  # per-image reductions of a map: its maximum, the mean of its top 1 % of pixels
TOP_FRACTION = 0.01
ONE_SIGMA = 0.682689492137  # central probability of +-1 standard deviation of a normal
PRO_MAX_FPR = 0.3    # PRO is integrated up to this false-positive rate (Bergmann et al., MVTec AD)
MAP_SAMPLES = 200    # draws per image for the maps of heads without exact marginals (intervals, MAF's density)
GOOD = "good"        # MVTec AD's name of the defect-free test images' folder (test/good)


def smoothing_sigma(image_shape: tuple[int, int, int]) -> float:
    """The Gaussian filter's standard deviation in pixels for images `[H, W, C]`: `min(H, W) / 28`,
    at least 1 (1 pixel on 28 x 28 images, about 2.3 on 64 x 64)."""
    return max(1.0, min(image_shape[:2]) / 28)


def _score_step(model):
    steps = model.__dict__.setdefault("_tfp_ae_score_steps", {})
    if "maps" not in steps:
        spec = tf.TensorSpec([None, *model.image_shape], tf.float32)

        def fn(x):
            dist = model(x, training=False)
            head = model.head
            point = head.point_estimate(dist)
            lo, hi = head.interval(dist, ONE_SIGMA, seed=SAMPLE_SEED, num_samples=MAP_SAMPLES)
            lo95, hi95 = head.interval(dist, 0.95, seed=SAMPLE_SEED, num_samples=MAP_SAMPLES)
            scale = tf.maximum((hi - lo) / 2, 1e-6)
            return dict(neg_log_marginal=-head.pixel_log_prob(dist, x, num_samples=MAP_SAMPLES),
                        standardized_error=tf.abs(x - point) / scale,
                        outside_interval=tf.maximum(lo95 - x, 0.0) + tf.maximum(x - hi95, 0.0),
                        abs_error=tf.abs(x - point), point=point)
        steps["maps"] = tf.function(fn, input_signature=[spec], autograph=False)
    return steps["maps"]


def smooth(amap: np.ndarray, sigma: float) -> np.ndarray:
    """`amap` `[N, H, W, C]` filtered by a Gaussian of `sigma` pixels over H and W
    (`scipy.ndimage.gaussian_filter`, borders reflected). Non-finite values are first replaced by the
    map's largest finite value (NaN by its smallest), so one pixel cannot spread infinity."""
    a = np.asarray(amap, np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    return ndimage.gaussian_filter(a, sigma=(0, sigma, sigma, 0)).astype(np.float32)


def multiscale(amap: np.ndarray, sigma: float, scales: Sequence[float] = SCALES) -> np.ndarray:
    """The mean of `smooth(amap, k * sigma)` over `k` in `scales`, `[N, H, W, C]`."""
    return np.mean([smooth(amap, k * sigma) for k in scales], axis=0).astype(np.float32)


def pixel_maps(model: ProbabilisticModel, x: np.ndarray, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """The anomaly maps (`MAPS`) of images `x` `[N, H, W, C]` in [0, 1]: dict of `[N, H, W, C]` arrays.

    Batches default to at most 100 images and `SAMPLE_FLOATS` drawn values (`MAP_SAMPLES` draws per
    image, `tfp_ae.predict.sample_batch_size`), so heads that sample (mixtures, MAF, Bernoulli) stay
    within memory on large images. Their maps are
    Monte-Carlo estimates with a fixed seed per batch: the same images in other batches give the
    same maps up to that noise.

    Raises:
      InputError: images of another shape than the model's.
    """
    x = np.asarray(x, np.float32)
    if tuple(x.shape[1:]) != tuple(model.image_shape):
        raise InputError(f"images {tuple(x.shape[1:])} do not match the model's {tuple(model.image_shape)}")
    batch_size = batch_size or sample_batch_size(model, MAP_SAMPLES, 100)
    step = _score_step(model)
    outs = [step(tf.constant(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    maps = {k: np.concatenate([o[k].numpy() for o in outs]) for k in RAW_MAPS if k != "ssim"}
    maps["ssim"] = ssim_map(x, np.concatenate([o["point"].numpy() for o in outs]))
    sigma = smoothing_sigma(model.image_shape)
    maps.update({f"{k}_smooth": multiscale(maps[k], sigma) for k in SMOOTHED})
    return maps


def ssim_map(x: np.ndarray, point: np.ndarray) -> np.ndarray:
    """1 - the local SSIM of each image `x` `[N, H, W, C]` in [0, 1] and its point estimate `point` (same
    shape), per pixel and channel, `[N, H, W, C]` in [0, 2] (0: identical neighbourhoods), by scikit-image
    (`structural_similarity(..., gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
    data_range=1, full=True)`, Wang et al. 2004's constants). Images smaller than the 11-pixel window
    get the largest Gaussian window that fits (σ = (min(H, W) - 2) / 7)."""
    x, point = np.asarray(x, np.float64), np.asarray(point, np.float64)
    sigma = min(SSIM_SIGMA, (min(x.shape[1:3]) - 2) / (2 * SSIM_TRUNCATE))
    if sigma <= 0:
        raise InputError(f"the ssim map needs images of at least 3 x 3 pixels; got {tuple(x.shape[1:3])}")
    out = np.empty_like(x)
    for i in range(len(x)):
        _, s = structural_similarity(x[i], point[i], gaussian_weights=True, sigma=sigma,
                                     use_sample_covariance=False, data_range=1.0, full=True, channel_axis=-1)
        out[i] = 1.0 - s
    return out.astype(np.float32)


def image_reductions(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image scores from pixel maps: for each map `m` `[N, H, W, C]` (channel mean, non-finite values
    as in `smooth`), `m_max` (its largest pixel) and `m_top1` (the mean of its top `TOP_FRACTION` of
    pixels, at least one pixel), `[N]` each. Higher = more anomalous."""
    out = {}
    for name, m in maps.items():
        m = np.asarray(m, np.float64).mean(-1).reshape(len(m), -1)
        finite = m[np.isfinite(m)]
        m = np.nan_to_num(m, nan=finite.min() if finite.size else 0.0, posinf=np.finfo(np.float64).max)
        k = max(1, int(round(TOP_FRACTION * m.shape[1])))
        out[f"{name}_max"] = m.max(1)
        out[f"{name}_top1"] = np.sort(m, axis=1)[:, -k:].mean(1)
    return out


def pro_score(masks: np.ndarray, amap: np.ndarray, max_fpr: float = PRO_MAX_FPR, thresholds: int = 100) -> float:
    """Per-region overlap (Bergmann et al., "MVTec AD", CVPR 2019): for thresholds of the map, the
    mean over connected defect regions of the fraction of the region above threshold, against the
    false-positive rate on defect-free pixels; the area under this curve up to `max_fpr`, divided by
    `max_fpr` (1 is perfect). `masks` bool `[N, H, W]`, `amap` `[N, H, W]`.

    Raises:
      InputError: masks without a defect region, or without a defect-free pixel.
    """
    masks, amap = np.asarray(masks, bool), np.asarray(amap, np.float64)
    regions = [(i, r) for i in range(len(masks)) for r in _regions(masks[i])]
    if not regions or masks.all():
        raise InputError("PRO needs defect regions and defect-free pixels in the masks")
    normal = amap[~masks]
    levels = np.quantile(normal, np.linspace(1 - max_fpr, 1, thresholds))
    fprs, pros = [], []
    for t in levels[::-1]:
        fprs.append(np.mean(normal > t))
        pros.append(np.mean([np.mean(amap[i][r] > t) for i, r in regions]))
    fprs, pros = np.r_[0.0, fprs], np.r_[0.0, pros]
    keep = fprs <= max_fpr
    return float(np.trapezoid(pros[keep], fprs[keep]) / max_fpr)


def _regions(mask):
    labelled, n = ndimage.label(mask)
    return [labelled == k for k in range(1, n + 1)]


def localisation_metrics(maps: dict[str, np.ndarray], masks: np.ndarray) -> dict[str, dict[str, float]]:
    """Pixel AUROC (scikit-learn) and PRO (`pro_score`) of each map against defect masks `[N, H, W]`
    (or `[N, H, W, C]`; a pixel is defective where any channel is). Maps are averaged over channels.

    Raises:
      InputError: masks whose shape does not match the maps'.
    """
    masks = np.asarray(masks) > 0
    first = next(iter(maps.values()))
    if masks.ndim == 4:
        masks = masks.any(-1)
    if masks.shape != first.shape[:3]:
        raise InputError(f"masks {masks.shape} do not match the images {first.shape[:3]} ([N, H, W])")
    out = {}
    for name, m in maps.items():
        m = np.nan_to_num(np.asarray(m, np.float64).mean(-1), nan=0.0, posinf=1e30)
        out[name] = dict(pixel_auroc=float(skm.roc_auc_score(masks.ravel(), m.ravel())), pro=pro_score(masks, m))
    return out


def defect_labels(split: Split, masks: np.ndarray | None = None) -> np.ndarray | None:
    """The defect type of each test image (`GOOD` for a defect-free one), `[N]` strings, or None when
    the split says nothing about defects.

    - A folder in MVTec AD's layout (a `test/good/` subfolder beside `test/<defect>/` subfolders):
      each image's subfolder name.
    - Otherwise, with `masks` `[M, H, W]` of the first M images: `GOOD` where the mask is empty,
      `defect` elsewhere (M labels).
    """
    if split.kind == "files" and split.paths is not None:
        folders = np.array([Path(p).parent.name for p in split.paths])
        if (folders == GOOD).any():
            return folders
    if masks is not None:
        return np.where(np.asarray(masks).reshape(len(masks), -1).any(1), "defect", GOOD)
    return None


DEFECT_KINDS = ("patch", "line", "blob")


def synthetic_defects(x: np.ndarray, donors: np.ndarray, seed: int = 0,
                      kinds: Sequence[str] = DEFECT_KINDS) -> tuple[np.ndarray, np.ndarray]:
    """Paste one synthetic defect into each image, with its mask: the fixed localisation protocol of
    docs/results/ood.

    Image i gets defect `kinds[i % len(kinds)]`, placed by `numpy.random.default_rng(seed)`; sizes are
    given for 28 x 28 images and scale with s = max(1, min(H, W) / 28):

    - `patch`: a random 8s x 8s crop of a random `donors` image (another dataset's), pasted at a
      random place;
    - `line`: a straight line 2s pixels wide between two random points, of a random level in [0.5, 1];
    - `blob`: a Gaussian blob (sigma 1.5s-3s pixels, peak +-0.6) added at a random centre, clipped
      to [0, 1].
    The mask marks the pixels the defect changed by more than 1/255. Results are re-quantised to
    8 bits, so they stay valid 8-bit images.

    Args:
      x: images `[N, H, W, C]` in [0, 1], H, W >= 8; donors: `[M, H, W, C]`.
      kinds: the defect kinds to cycle through (a subset of `DEFECT_KINDS`).
    Returns:
      (defective images `[N, H, W, C]`, masks bool `[N, H, W]`).
    Raises:
      InputError: an unknown defect kind.
    """
    unknown = set(kinds) - set(DEFECT_KINDS)
    if unknown or not kinds:
        raise InputError(f"unknown defect kinds {sorted(unknown)}: choose from {', '.join(DEFECT_KINDS)}")
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    out = x.copy()
    n, h, w, c = x.shape
    s = max(1.0, min(h, w) / 28)
    p = min(h, w, int(round(8 * s)))
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "patch":
            d = donors[rng.integers(len(donors))]
            r, q = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
            r0, q0 = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
            out[i, r:r + p, q:q + p] = d[r0:r0 + p, q0:q0 + p]
        elif kind == "line":
            (r0, q0), (r1, q1) = rng.uniform([0, 0], [h - 1, w - 1], (2, 2))
            t = np.clip(((yy - r0) * (r1 - r0) + (xx - q0) * (q1 - q0)) / max((r1 - r0) ** 2 + (q1 - q0) ** 2, 1e-9), 0, 1)
            dist = np.hypot(yy - (r0 + t * (r1 - r0)), xx - (q0 + t * (q1 - q0)))
            out[i][dist <= s] = rng.uniform(0.5, 1.0)
        else:
            r, q, sd = rng.uniform(0, h), rng.uniform(0, w), s * rng.uniform(1.5, 3.0)
            bump = rng.choice([-0.6, 0.6]) * np.exp(-((yy - r) ** 2 + (xx - q) ** 2) / (2 * sd * sd))
            out[i] = np.clip(out[i] + bump[..., None], 0, 1)
    out = np.round(out * 255) / 255
    masks = (np.abs(out - x) > 1.5 / 255).any(-1)
    return out.astype(np.float32), masks


def _write_png(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.round(np.clip(np.asarray(img, np.float64), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).save(path)


def write_defect_folder(out: str | os.PathLike, train: np.ndarray, test_good: np.ndarray,
                        defects: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write images in MVTec AD's layout, for `tfp-ae train --dataset OUT` and `tfp-ae score --data OUT
    --masks OUT/ground_truth`: `train/good/NNN.png`, `test/good/NNN.png`, `test/<defect>/NNN.png` and
    `ground_truth/<defect>/NNN_mask.png` (255 = defect), 8-bit PNGs.

    Args:
      out: the folder (created).
      train: defect-free training images `[N, H, W, C]` in [0, 1], C = 1 or 3.
      test_good: defect-free test images, the same.
      defects: {defect type: (images `[M, H, W, C]`, masks bool `[M, H, W]`)}, e.g. from
        `synthetic_defects(..., kinds=(kind,))`.
    Returns:
      the folder, a `Path`.
    Raises:
      InputError: a defect type named `GOOD`, or masks that do not match their images.
    """
    out = Path(out)
    if GOOD in defects:
        raise InputError(f"a defect type cannot be named {GOOD!r} (the defect-free test images' folder)")
    for i, img in enumerate(train):
        _write_png(out / "train" / GOOD / f"{i:03d}.png", img)
    for i, img in enumerate(test_good):
        _write_png(out / "test" / GOOD / f"{i:03d}.png", img)
    for name, (images, masks) in defects.items():
        if np.shape(masks) != np.shape(images)[:3]:
            raise InputError(f"defect {name}: masks {np.shape(masks)} do not match the images {np.shape(images)[:3]}")
        for i, (img, m) in enumerate(zip(images, masks)):
            _write_png(out / "test" / name / f"{i:03d}.png", img)
            _write_png(out / "ground_truth" / name / f"{i:03d}_mask.png", np.asarray(m, np.float32))
    return out


def texture_defect_folder(out: str | os.PathLike, texture: np.ndarray, donor: np.ndarray, size: int = 64, train: int = 2000,
                          good: int = 50, per_defect: int = 50, seed: int = 0) -> Path:
    """An MVTec-AD-like folder (`write_defect_folder`) cut from one texture photograph: training
    crops from its top three quarters, test crops from its bottom quarter (no overlap), and
    `per_defect` test crops with each synthetic defect (`synthetic_defects`; patches from `donor`, a
    photograph of another texture), named by kind.

    Args:
      out: the folder (created).
      texture: a grey image `[H, W]` in [0, 1] (e.g. `skimage.data.brick() / 255`), H / 4 >= size.
      donor: a grey image of the same kind, the source of the pasted patches.
      size: the crops' height and width, pixels; crops are flipped left-right at random.
      train: how many training crops.
      good: how many defect-free test crops.
      per_defect: how many defective test crops of each kind.
      seed: crops and defects (`numpy.random.default_rng`).
    Returns:
      the folder, a `Path`.
    Raises:
      InputError: a texture too small for `size`.
    """
    texture, donor = np.asarray(texture, np.float32), np.asarray(donor, np.float32)
    h, w = texture.shape[:2]
    cut = h * 3 // 4
    if h - cut < size or w < size or min(donor.shape[:2]) < size:
        raise InputError(f"a texture of {h}x{w} (donor {donor.shape[0]}x{donor.shape[1]}) is too small for "
                         f"{size}x{size} crops from its bottom quarter")
    rng = np.random.default_rng(seed)

    def crops(img, n, top, bottom):
        out = []
        for _ in range(n):
            r, q = rng.integers(top, bottom - size + 1), rng.integers(0, img.shape[1] - size + 1)
            c = img[r:r + size, q:q + size]
            out.append(c[:, ::-1] if rng.random() < 0.5 else c)
        return np.stack(out)[..., None]

    train_x, test_x = crops(texture, train, 0, cut), crops(texture, good + per_defect * len(DEFECT_KINDS), cut, h)
    donors = crops(donor, 200, 0, donor.shape[0])
    defects = {kind: synthetic_defects(test_x[good + i * per_defect:good + (i + 1) * per_defect], donors,
                                       seed=seed + i, kinds=(kind,)) for i, kind in enumerate(DEFECT_KINDS)}
    return write_defect_folder(out, train_x, test_x[:good], defects)
