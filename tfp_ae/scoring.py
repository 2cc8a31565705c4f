"""What the uncertainty is for: out-of-distribution scores per image and anomaly maps per pixel,
and how well they separate in-distribution from out-of-distribution (OOD) images.

Per-image scores (`SCORES`), all oriented so that higher means more anomalous:
- `nll`: -log p(x) in nats of the pixels in [0, 1];
- `bits_per_dim`: of the uniformly dequantised image (Theis et al. 2016), bits;
- `likelihood_ratio`: bits/dim under the model minus bits/dim under a background model trained on
  perturbed inputs (`tfp-ae train --perturb-rate MU`), i.e. -LLR of Ren et al., NeurIPS 2019, Eq. 5,
  in bits/dim;
- `complexity`: bits/dim minus the bits/dim of the image losslessly compressed as PNG
  (`tf.io.encode_png`): S(x) of Serra et al., ICLR 2020, Eq. 2;
- `typicality`: |bits/dim - mean bits/dim of training images| (Nalisnick et al. 2019, the typicality
  test with a batch of one image).
Per-pixel maps (`MAPS`), `[N, H, W, C]`:
- `neg_log_marginal`: -log p(x_pixel | input), nats (`Head.pixel_log_prob`);
- `standardized_error`: |x - point estimate| / s, s the half-width of the central 68.27 % interval
  (the standard deviation for a normal; exists for every head but `mse`);
- `outside_interval`: distance of x outside the central 95 % interval (0 inside), pixel units.
The baseline map is `abs_error`, |x - point estimate|.
"""
import csv
import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn import metrics as skm

from tfp_ae import plots
from tfp_ae._tf import tf
from tfp_ae.data import Split, array_split, folders, load_masks, open_source
from tfp_ae.errors import InputError
from tfp_ae.evaluate import split_log_probs
from tfp_ae.heads import SAMPLE_SEED, bits_per_dim
from tfp_ae.predict import sample_batch_size
from tfp_ae.train import load_model

SCORES = ("nll", "bits_per_dim", "likelihood_ratio", "complexity", "typicality")
MAPS = ("neg_log_marginal", "standardized_error", "outside_interval", "abs_error")
ONE_SIGMA = 0.682689492137  # central probability of +-1 standard deviation of a normal
TRAIN_IMAGES = 2000  # training images whose mean bits/dim centres the typicality score
PRO_MAX_FPR = 0.3    # PRO is integrated up to this false-positive rate (Bergmann et al., MVTec AD)
MAP_SAMPLES = 200    # draws per image for the maps of heads without exact marginals (intervals, MAF's density)


def png_bits_per_dim(x, num_levels=256):
    """Bits per dimension of each image `[N, H, W, C]` (pixels `k / (L - 1)`) compressed losslessly
    as PNG (`tf.io.encode_png` of the levels k, zlib at its default level), `[N]`: the complexity
    L(x) of Serra et al. (ICLR 2020), who used PNG among their compressors."""
    x = np.asarray(x)
    levels = np.round(x * (num_levels - 1)).astype(np.uint16 if num_levels > 256 else np.uint8)
    d = int(np.prod(x.shape[1:]))
    return np.array([8 * len(tf.io.encode_png(img).numpy()) / d for img in levels])


def _score_step(model, quantity):
    steps = model.__dict__.setdefault("_tfp_ae_score_steps", {})
    if quantity not in steps:
        spec = tf.TensorSpec([None, *model.image_shape], tf.float32)
        if quantity == "maps":
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
                            abs_error=tf.abs(x - point))
        steps[quantity] = tf.function(fn, input_signature=[spec], autograph=False)
    return steps[quantity]


def pixel_maps(model, x, batch_size=None):
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
    step = _score_step(model, "maps")
    outs = [step(tf.constant(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return {k: np.concatenate([o[k].numpy() for o in outs]) for k in MAPS}


def _bits(model, split, num_levels, seed):
    """Per-image NLL (nats) and bits/dim of the dequantised images of `split`, streamed
    (`tfp_ae.evaluate.split_log_probs`)."""
    s = split_log_probs(model, split, num_levels, seed, elbo=False)
    return -s["log_prob"], bits_per_dim(-s["log_prob_dequantized"], int(np.prod(split.image_shape)), num_levels)


def image_scores(model, split, num_levels=256, background=None, train_bits=None, seed=0):
    """Every per-image score (`SCORES`) of the images of `split` (streamed), `[N]` each.

    Args:
      model: a trained `ProbabilisticModel`.
      split: a `tfp_ae.data.Split` (or an array `[N, H, W, C]`).
      background: a second model over the same images for `likelihood_ratio` (None: no such column).
      train_bits: mean bits/dim of training images, for `typicality` (None: no such column).
      seed: the dequantisation noise (the same for the model and the background).
    Raises:
      InputError: images or a background model of another shape than the model's.
    """
    split = split if isinstance(split, Split) else array_split(np.asarray(split, np.float32), num_levels)
    if tuple(split.image_shape) != tuple(model.image_shape):
        raise InputError(f"the images {tuple(split.image_shape)} do not match the run's {tuple(model.image_shape)}")
    if split.count == 0:
        raise InputError("no images to score (the set is empty)")
    nll, bits = _bits(model, split, num_levels, seed)
    out = dict(nll=nll, bits_per_dim=bits)
    if background is not None:
        if tuple(background.image_shape) != tuple(model.image_shape):
            raise InputError(f"the background run's images {tuple(background.image_shape)} do not match the run's "
                             f"{tuple(model.image_shape)}")
        out["likelihood_ratio"] = bits - _bits(background, split, num_levels, seed)[1]
    batches = split.elements().map(lambda x, y: x).batch(500).as_numpy_iterator()  # streamed, not held whole
    out["complexity"] = bits - np.concatenate([png_bits_per_dim(b, num_levels) for b in batches])
    if train_bits is not None:
        out["typicality"] = np.abs(bits - train_bits)
    return out


def fpr_at_tpr(labels, scores, tpr=0.95):
    """False-positive rate at the first threshold whose true-positive rate reaches `tpr`."""
    fpr, tprs, _ = skm.roc_curve(labels, scores)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def ood_metrics(scores_in, scores_ood):
    """`{"auroc", "auprc", "fpr_at_95_tpr"}` of one score, OOD as the positive class (scikit-learn).

    Raises:
      InputError: an empty set, or non-finite scores.
    """
    a, b = np.asarray(scores_in, np.float64), np.asarray(scores_ood, np.float64)
    if not len(a) or not len(b):
        raise InputError("both the in-distribution and the OOD set need images")
    labels, s = np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]
    if not np.isfinite(s).all():
        s = np.nan_to_num(s, nan=np.inf, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)
    return dict(auroc=float(skm.roc_auc_score(labels, s)), auprc=float(skm.average_precision_score(labels, s)),
                fpr_at_95_tpr=fpr_at_tpr(labels, s))


def pro_score(masks, amap, max_fpr=PRO_MAX_FPR, thresholds=100):
    """Per-region overlap (Bergmann et al., "MVTec AD", CVPR 2019): for thresholds of the map, the
    mean over connected defect regions of the fraction of the region above threshold, against the
    false-positive rate on defect-free pixels; the area under this curve up to `max_fpr`, divided by
    `max_fpr` (1 is perfect). `masks` bool `[N, H, W]`, `amap` `[N, H, W]`."""
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


def localisation_metrics(maps, masks):
    """Pixel AUROC and PRO of each map against defect masks `[N, H, W]` (or `[N, H, W, C]`; a pixel
    is defective where any channel is). Maps are averaged over channels.

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


def score_run(run_dir, data, ood=None, background=None, out=None, masks=None, limit=None, seed=0, image_size=None,
              crop=None, channels=None, ood_test_fraction=None):
    """`tfp-ae score`: every score of a trained run on a dataset and (optionally) an OOD dataset.

    Args:
      run_dir: a run folder (`tfp-ae train`).
      data: the in-distribution dataset string (its test split is scored).
      ood: the OOD dataset string (its test split; a folder of images without `train/` and `test/`
        subfolders: all its images, unless `ood_test_fraction` is given), or None.
      background: a run folder of a background model (likelihood ratio), or None.
      out: folder for `scores.csv`, `metrics.json`, `roc.png`, `histograms.png`.
      masks: defect masks `[N, H, W(, C)]` of `data`'s first N test images (pixel AUROC, PRO), the
        path of an `.npz` or a folder of mask images (`tfp_ae.data.load_masks`), or None.
      limit: score only the first `limit` test images of each set.
      image_size: `H` or `HxW`: resize both sets (`tfp_ae.data.Geometry`); None keeps the run's (an
        OOD set of another size needs it).
      crop: `none` or `center`; None keeps the run's.
      channels: 1 or 3 (an OOD set of another colour needs it); None keeps the run's.
      ood_test_fraction: split a flat OOD folder like a training folder and score its test part.
    Returns:
      (rows, metrics): rows of `scores.csv` (dicts), and the metrics dict.
    Raises:
      InputError: a dataset or background run whose image shape differs from the run's, an empty OOD
        set, masks of the wrong shape, a geometry that cannot apply.
    """
    model, config = load_model(run_dir)
    bg = load_model(background)[0] if background else None
    options = dict(config.source_options, data_dir=config.data_dir)
    options.update({k: v for k, v in dict(image_size=image_size, crop=crop, channels=channels).items() if v is not None})
    source = open_source(data, **options)
    train_split = source.splits["train"].subset(0, TRAIN_IMAGES)
    if tuple(source.image_shape) != tuple(model.image_shape):
        raise InputError(f"--data {data}: images {source.image_shape} do not match the run's {tuple(model.image_shape)}")
    with source.reading():
        train_bits = float(np.mean(_bits(model, train_split, source.num_levels, seed + 1)[1]))
        sets = [("in", image_scores(model, source.splits["test"].subset(0, limit), source.num_levels, bg, train_bits,
                                    seed))]
    if ood:
        ood_source = open_source(ood, **dict(options, test_fraction=ood_test_fraction or options["test_fraction"]))
        # a folder of image files without train/ and test/: its split into them is ours, so score all of it
        flat = ood_test_fraction is None and ood_source.splits["test"].kind == "files" \
            and not folders.has_split_folders(ood)
        if tuple(ood_source.image_shape) != tuple(model.image_shape):
            raise InputError(f"--ood {ood}: images {ood_source.image_shape} do not match the run's "
                             f"{tuple(model.image_shape)}; pass --image-size / --channels")
        ood_split = ood_source.all_images() if flat else ood_source.splits["test"]
        with ood_source.reading():
            sets.append(("ood", image_scores(model, ood_split.subset(0, limit), ood_source.num_levels,
                                             bg, train_bits, seed)))
    columns = [c for c in SCORES if c in sets[0][1]]
    rows = [dict(set=name, index=i, **{c: float(s[c][i]) for c in columns})
            for name, s in sets for i in range(len(s["nll"]))]
    result = dict(run=str(run_dir), data=data, ood=ood, background=background, train_bits_per_dim=train_bits,
                  counts={name: len(s["nll"]) for name, s in sets}, orientation="higher = more anomalous")
    if ood:
        result["scores"] = {c: ood_metrics(sets[0][1][c], sets[1][1][c]) for c in columns}
    if masks is not None:
        masks = load_masks(masks, source.splits["test"]) if isinstance(masks, (str, Path)) else np.asarray(masks)
        with source.reading():
            x = source.splits["test"].take(len(masks))[0]
        if len(x) != len(masks):
            raise InputError(f"{len(masks)} masks for {len(x)} test images")
        result["localisation"] = localisation_metrics(pixel_maps(model, x), masks)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "scores.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["set", "index", *columns])
            w.writeheader()
            w.writerows(rows)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        if ood:
            plots.save(plots.roc_figure({c: (sets[0][1][c], sets[1][1][c]) for c in columns}), out / "roc.png")
            plots.save(plots.score_histograms({c: (sets[0][1][c], sets[1][1][c]) for c in columns}),
                       out / "histograms.png")
    return rows, result


DEFECT_KINDS = ("patch", "line", "blob")


def synthetic_defects(x, donors, seed=0):
    """Paste one synthetic defect into each image, with its mask: the fixed localisation protocol of
    docs/results/ood.

    Image i gets defect `DEFECT_KINDS[i % 3]`, placed by `numpy.random.default_rng(seed)`:
    - `patch`: a random 8 x 8 crop of a random `donors` image (another dataset's), pasted at a
      random place;
    - `line`: a straight line 2 pixels wide between two random border points, of a random level
      in [0.5, 1];
    - `blob`: a Gaussian blob (sigma 1.5-3 pixels, peak +-0.6) added at a random centre, clipped
      to [0, 1].
    The mask marks the pixels the defect changed by more than 1/255. Results are re-quantised to
    8 bits, so they stay valid 8-bit images.

    Args:
      x: images `[N, H, W, C]` in [0, 1], H, W >= 8; donors: `[M, H, W, C]`.
    Returns:
      (defective images `[N, H, W, C]`, masks bool `[N, H, W]`).
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    out = x.copy()
    n, h, w, c = x.shape
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
        if kind == "patch":
            d = donors[rng.integers(len(donors))]
            r, q = rng.integers(0, h - 7), rng.integers(0, w - 7)
            r0, q0 = rng.integers(0, h - 7), rng.integers(0, w - 7)
            out[i, r:r + 8, q:q + 8] = d[r0:r0 + 8, q0:q0 + 8]
        elif kind == "line":
            (r0, q0), (r1, q1) = rng.uniform([0, 0], [h - 1, w - 1], (2, 2))
            t = np.clip(((yy - r0) * (r1 - r0) + (xx - q0) * (q1 - q0)) / max((r1 - r0) ** 2 + (q1 - q0) ** 2, 1e-9), 0, 1)
            dist = np.hypot(yy - (r0 + t * (r1 - r0)), xx - (q0 + t * (q1 - q0)))
            out[i][dist <= 1.0] = rng.uniform(0.5, 1.0)
        else:
            r, q, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 3.0)
            bump = rng.choice([-0.6, 0.6]) * np.exp(-((yy - r) ** 2 + (xx - q) ** 2) / (2 * s * s))
            out[i] = np.clip(out[i] + bump[..., None], 0, 1)
    out = np.round(out * 255) / 255
    masks = (np.abs(out - x) > 1.5 / 255).any(-1)
    return out.astype(np.float32), masks
