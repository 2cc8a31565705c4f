"""What the uncertainty is for: per-image scores, how well they separate in-distribution images from
out-of-distribution (OOD) ones and good test images from defective ones (`tfp-ae score`).

Per-image scores (`SCORES`), all oriented so that higher means more anomalous:

- `nll`: -log p(x) in nats of the pixels in [0, 1];
- `bits_per_dim`: of the uniformly dequantised image (Theis et al. 2016), bits;
- `likelihood_ratio`: bits/dim under the model minus bits/dim under a background model trained on
  perturbed inputs (`tfp-ae train --perturb-rate MU`), i.e. -LLR of Ren et al., NeurIPS 2019, Eq. 5,
  in bits/dim;
- `complexity`: bits/dim minus the bits/dim of the image losslessly compressed as PNG
  (`tf.io.encode_png`): S(x) of Serra et al., ICLR 2020, Eq. 2;
- `typicality`: |bits/dim - mean bits/dim of the reference images| (Nalisnick et al. 2019, the typicality
  test with a batch of one image; the reference: the run's held-out images, else training images,
  `reference_split`);
- `min_p` (`RECOMMENDED`): -log of the Bonferroni-adjusted smaller of the one-sided p-values of
  `nll` and `complexity` against the same scores of the reference images (Tippett's method,
  `min_p_score`): an image is anomalous if either is unusually high, so it holds where raw
  likelihood falls into the "OOD looks likely" trap and where complexity is weak (docs/results/ood);
- `fisher`: Fisher's method over the same two p-values (`fisher_score`); in docs/results/ood it
  scored below `min_p` in 9 of 12 cells (0.955 against 0.988 for the trapped continuous Bernoulli),
  because the test that carries no signal still adds its spread to the in-distribution images'
  statistic.
The per-pixel anomaly maps and their per-image reductions are in `tfp_ae.anomaly`.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn import metrics as skm

from tfp_ae import plots
from tfp_ae._tf import tf
from tfp_ae.anomaly import GOOD, RECOMMENDED_MAP, defect_labels, image_reductions, localisation_metrics, pixel_maps
from tfp_ae.data import Split, array_split, folders, load_masks, open_source
from tfp_ae.errors import InputError
from tfp_ae.heads import bits_per_dim
from tfp_ae.predict import point_estimates, split_log_probs
from tfp_ae.train import hold_out, load_model

if TYPE_CHECKING:
    from tfp_ae.config import RunConfig
    from tfp_ae.models import ProbabilisticModel

SCORES = ("nll", "bits_per_dim", "likelihood_ratio", "complexity", "typicality", "min_p", "fisher")
RECOMMENDED = "min_p"
COMBINED = ("nll", "complexity")  # the scores whose p-values `min_p` and `fisher` combine
TRAIN_IMAGES = 2000  # training images in the reference of a run that held none out (`reference_split`)
FIGURE_IMAGES = (4, 4)  # anomaly_maps.png: the highest-scored test images, then random others


def png_bits_per_dim(x: np.ndarray, num_levels: int = 256) -> np.ndarray:
    """Bits per dimension of each image `[N, H, W, C]` (pixels `k / (L - 1)`) compressed losslessly
    as PNG (`tf.io.encode_png` of the levels k, zlib at its default level), `[N]`: the complexity
    L(x) of Serra et al. (ICLR 2020), who used PNG among their compressors."""
    x = np.asarray(x)
    levels = np.round(x * (num_levels - 1)).astype(np.uint16 if num_levels > 256 else np.uint8)
    d = int(np.prod(x.shape[1:]))
    return np.array([8 * len(tf.io.encode_png(img).numpy()) / d for img in levels])


def _bits(model, split, num_levels, seed):
    """Per-image NLL (nats) and bits/dim of the dequantised images of `split`, streamed
    (`tfp_ae.predict.split_log_probs`)."""
    s = split_log_probs(model, split, num_levels, seed, elbo=False)
    return -s["log_prob"], bits_per_dim(-s["log_prob_dequantized"], int(np.prod(split.image_shape)), num_levels)


def image_scores(model: ProbabilisticModel, split: Split | np.ndarray, num_levels: int = 256,
                 background: ProbabilisticModel | None = None, reference: dict[str, np.ndarray] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Every per-image score (`SCORES`) of the images of `split` (streamed), `[N]` each.

    Args:
      model: a trained `ProbabilisticModel`.
      split: a `tfp_ae.data.Split` (or an array `[N, H, W, C]`).
      background: a second model over the same images for `likelihood_ratio` (None: no such column).
      reference: the scores of the reference images (`reference_split`; this function's output on them), for `typicality`
        (centred on their mean bits/dim), `min_p` and `fisher` (None: none of these columns).
      seed: the dequantisation noise (the same for the model and the background).
    Raises:
      InputError: images or a background model of another shape than the model's, an empty set.
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
    if reference is not None:
        out["typicality"] = np.abs(bits - np.mean(reference["bits_per_dim"]))
        out["min_p"] = min_p_score(out, reference)
        out["fisher"] = fisher_score(out, reference)
    return out


def reference_split(config: RunConfig, training: Split, **geometry) -> tuple[Split, str]:
    """The images the p-values (`min_p`, `fisher`) and `typicality` measure a new image against, and which they
    are: the run's held-out training images (`tfp_ae.train.hold_out`: the last `config.held_out_fraction` of
    its training split, never trained on, so exchangeable with new images as a conformal p-value needs: Vovk
    et al. 2005), `"held_out"`, where the run held some out (`--validation-split`, `--recalibrate`, `--risk`);
    else the first `TRAIN_IMAGES` of `training`, `"training"`: images the model has fitted, against which every
    new image looks unusual (on a texture's 4,000 overlapping crops every test crop got the floor p-value).
    `geometry`: the `image_size`, `crop` and `channels` the scored images are read with (the run's when absent)."""
    if config.held_out_fraction:
        source = open_source(config.dataset, **dict(config.source_options, **geometry))
        held_out = hold_out(source.splits["train"].subset(0, config.train_limit), config)[1]
        if held_out.count:
            return held_out, "held_out"
    return training.subset(0, TRAIN_IMAGES), "training"


def p_values(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """One-sided empirical p-values of `scores` `[N]` against `reference` `[M]` (scores of the reference
    images, `reference_split`): (1 + #{reference >= score}) / (M + 1), the conformal p-value (Vovk et al. 2005), in
    [1 / (M + 1), 1]; small = unusually high. NaN counts as +infinity."""
    ref = np.sort(np.nan_to_num(np.asarray(reference, np.float64), nan=np.inf))
    s = np.nan_to_num(np.asarray(scores, np.float64), nan=np.inf)
    return (1 + len(ref) - np.searchsorted(ref, s, side="left")) / (len(ref) + 1)


def min_p_score(scores: dict[str, np.ndarray], reference: dict[str, np.ndarray], of: Sequence[str] = COMBINED) -> np.ndarray:
    """Tippett's combined test (L. H. C. Tippett, "The Methods of Statistics", 1931): the smallest of the
    p-values (`p_values`) of the scores `of` (default raw `nll` and `complexity`) against the reference
    images', Bonferroni-adjusted (times `len(of)`, at most 1); returned as -log of that p-value, `[N]`
    (nats of evidence; higher = more anomalous; >= -log(alpha) rejects "in-distribution" at level
    alpha). At most `log((M + 1) / len(of))`.

    Args:
      scores: a dict of `[N]` arrays holding the scores `of`.
      reference: a dict of `[M]` arrays holding them (the reference images', `reference_split`).
    """
    p = np.min([p_values(scores[c], reference[c]) for c in of], axis=0)
    return -np.log(np.minimum(1.0, len(of) * p))


def fisher_score(scores: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                 of: Sequence[str] = COMBINED) -> np.ndarray:
    """Fisher's combined statistic -2 sum_k log p_k over the p-values (`p_values`) of the scores `of`
    (default raw `nll` and `complexity`) against the reference images' (R. A. Fisher, "Statistical
    Methods for Research Workers", 1925, Sec. 21.1; Bergamin et al., AISTATS 2022, combine OOD test
    statistics this way), `[N]`. Higher = more anomalous; at most `2 len(of) log(M + 1)`.

    Args:
      scores: a dict of `[N]` arrays holding the scores `of`.
      reference: a dict of `[M]` arrays holding them (the reference images', `reference_split`).
    """
    return -2 * sum(np.log(p_values(scores[c], reference[c])) for c in of)


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches `tpr`."""
    fpr, tprs, _ = skm.roc_curve(labels, scores)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def ood_metrics(scores_in: np.ndarray, scores_ood: np.ndarray) -> dict[str, float]:
    """`{"auroc", "auprc", "fpr_at_95_tpr"}` of one score, OOD (or defective) as the positive class
    (scikit-learn).

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


def detection_metrics(scores: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Image-level detection as MVTec AD users measure it: good test images against defective ones.

    Args:
      scores: {name: `[N]`}, higher = more anomalous.
      labels: `[N]` defect types, `GOOD` for a defect-free image (`tfp_ae.anomaly.defect_labels`).
    Returns:
      `{"good": n, "defective": m, "overall": {name: ood_metrics}, "per_defect": {type: {name:
      ood_metrics}}}`, defective images the positive class; each defect type against all good images.
    Raises:
      InputError: no good or no defective images.
    """
    labels = np.asarray(labels)
    bad = labels != GOOD
    if bad.all() or not bad.any():
        raise InputError(f"detection needs good and defective test images ({int((~bad).sum())} good, "
                         f"{int(bad.sum())} defective)")
    overall, per_defect = grouped_metrics(scores, bad, labels)
    return dict(good=int((~bad).sum()), defective=int(bad.sum()), overall=overall,
                per_defect={str(d): m for d, m in per_defect.items()})


def grouped_metrics(scores: dict[str, np.ndarray], positive: np.ndarray, groups: np.ndarray) -> tuple[dict, dict]:
    """`ood_metrics` of every score, the positive images against all the others, overall and per group.

    Args:
      scores: {name: `[N]`}, higher = more anomalous.
      positive: bool `[N]`, the positive class (defective, novel).
      groups: `[N]`, the group of each image (a defect type, a class); read for the positives only.
    Returns:
      (`{name: ood_metrics}` of all positives, `{group: {name: ood_metrics}}` of each group's positives
      alone, groups in sorted order), against all negatives.
    """
    positive, groups = np.asarray(positive, bool), np.asarray(groups)
    scores = {k: np.asarray(v, np.float64) for k, v in scores.items()}
    overall = {k: ood_metrics(v[~positive], v[positive]) for k, v in scores.items()}
    per_group = {g: {k: ood_metrics(v[~positive], v[positive & (groups == g)]) for k, v in scores.items()}
                 for g in sorted(set(groups[positive].tolist()))}
    return overall, per_group


def score_run(run_dir: str | os.PathLike, data: str, ood: str | None = None, background: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, masks: np.ndarray | str | os.PathLike | None = None,
              limit: int | None = None, seed: int = 0, image_size: int | tuple[int, int] | None = None,
              crop: str | None = None, channels: int | None = None,
              ood_test_fraction: float | None = None) -> tuple[list[dict], dict]:
    """`tfp-ae score`: every score of a trained run on a dataset and (optionally) an OOD dataset, the
    detection of defective test images and the localisation of their defects.

    Args:
      run_dir: a run folder (`tfp-ae train`).
      data: the in-distribution dataset string (its test split is scored).
      ood: the OOD dataset string (its test split; a folder of images without `train/` and `test/`
        subfolders: all its images, unless `ood_test_fraction` is given), or None.
      background: a run folder of a background model (likelihood ratio), or None.
      out: folder for `scores.csv`, `metrics.json`, `roc.png`, `histograms.png`, `anomaly_maps.png`.
      masks: defect masks `[N, H, W(, C)]` of `data`'s first N test images (pixel AUROC, PRO), the
        path of an `.npz` or a folder of mask images (`tfp_ae.data.load_masks`), or None.
      limit: score only the first `limit` test images of each set.
      image_size: `H` or `HxW`: resize both sets (`tfp_ae.data.Geometry`); None keeps the run's (an
        OOD set of another size needs it).
      crop: `none` or `center`; None keeps the run's.
      channels: 1 or 3 (an OOD set of another colour needs it); None keeps the run's.
      ood_test_fraction: split a flat OOD folder like a training folder and score its test part.
    Returns:
      (rows, metrics): rows of `scores.csv` (dicts), and the metrics dict: `counts`, `reference` (`images`, `kind`:
      `held_out` or `training`, `reference_split`), `train_bits_per_dim` (the reference images') and
      `test_bits_per_dim` (means over the scored images, bits per dimension of
      the dequantised pixels), `scores` (OOD
      metrics of each score; defective test images are left out of the in-distribution set),
      `recommended` (`RECOMMENDED`), and with masks or `test/good/` + `test/<defect>/` folders
      (`tfp_ae.anomaly.defect_labels`) `bits_per_dim_by_label` (`{"good": mean, defect: mean}`: the
      test mean mixes good and defective images, and only the good ones measure the density's fit),
      `detection` (`detection_metrics` of every score and of the
      per-image reductions of every map), `localisation` (with masks) and `recommended_map`.
    Raises:
      InputError: a dataset or background run whose image shape differs from the run's, an empty OOD
        set, masks of the wrong shape or more masks than test images, a geometry that cannot apply.
    """
    model, config = load_model(run_dir)
    bg = load_model(background)[0] if background else None
    geometry = {k: v for k, v in dict(image_size=image_size, crop=crop, channels=channels).items() if v is not None}
    options = dict(config.source_options, data_dir=config.data_dir, **geometry)
    source = open_source(data, **options)
    if tuple(source.image_shape) != tuple(model.image_shape):
        raise InputError(f"--data {data}: images {source.image_shape} do not match the run's {tuple(model.image_shape)}")
    test = source.splits["test"].subset(0, limit)
    if masks is not None:  # checked before anything is scored
        masks = load_masks(masks, source.splits["test"]) if isinstance(masks, (str, Path)) else np.asarray(masks) != 0
        masks = (masks.any(-1) if masks.ndim == 4 else masks)[:test.count]
        if masks.shape[1:] != tuple(test.image_shape[:2]):
            raise InputError(f"masks {masks.shape} do not match the images {tuple(test.image_shape[:2])} ([N, H, W])")
    labels = defect_labels(test, masks)
    n = max(len(labels) if labels is not None else 0, len(masks) if masks is not None else 0)
    if n > test.count:
        raise InputError(f"{n} masks for {test.count} test images")
    reference_images, reference_kind = reference_split(config, source.splits["train"], **geometry)
    with source.reading():
        reference = image_scores(model, reference_images, source.num_levels, seed=seed + 1)
        sets = [("in", image_scores(model, test, source.num_levels, bg, reference, seed))]
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
                                             bg, reference, seed)))
    columns = [c for c in SCORES if c in sets[0][1]]
    result = dict(run=str(run_dir), data=data, ood=ood, background=background,
                  reference=dict(images=reference_images.count, kind=reference_kind),
                  train_bits_per_dim=float(np.mean(reference["bits_per_dim"])),
                  counts={name: len(s["nll"]) for name, s in sets}, orientation="higher = more anomalous",
                  recommended=RECOMMENDED)
    result["test_bits_per_dim"] = float(np.mean(sets[0][1]["bits_per_dim"]))
    if labels is not None:  # a test folder of good and defective images: its mean mixes the two
        bits = sets[0][1]["bits_per_dim"][:n]
        result["bits_per_dim_by_label"] = {g: float(np.mean(bits[labels == g])) for g in sorted(set(labels.tolist()))}
    reductions, maps, x = {}, None, None
    if n:
        with source.reading():
            x = test.take(n)[0]
        maps = pixel_maps(model, x)
        reductions = image_reductions(maps)
        result["recommended_map"] = RECOMMENDED_MAP
        if masks is not None:
            result["localisation"] = localisation_metrics({k: v[:len(masks)] for k, v in maps.items()}, masks)
        if labels is not None:
            try:
                result["detection"] = detection_metrics(
                    {**{c: sets[0][1][c][:n] for c in columns}, **reductions}, labels)
            except InputError as e:
                result["detection_skipped"] = str(e)
    in_dist = np.ones(test.count, bool)  # OOD metrics: defective test images are not in-distribution
    if labels is not None:
        in_dist[:n] = labels == GOOD
    if ood:
        result["scores"] = {c: ood_metrics(sets[0][1][c][in_dist], sets[1][1][c]) for c in columns}
    rows = [dict(set=name, index=i, **({"defect": labels[i] if name == "in" and i < n else ""} if labels is not None
                                       else {}),
                 **{c: float(s[c][i]) for c in columns},
                 **{c: float(v[i]) if name == "in" and i < n else "" for c, v in reductions.items()})
            for name, s in sets for i in range(len(s["nll"]))]
    if out:
        _write_outputs(Path(out), rows, result, sets, in_dist, columns, model, x, maps, reductions, masks, labels)
    return rows, result


def write_scores(out: str | os.PathLike, rows: list[dict], result: dict,
                 pairs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 labels: tuple[str, str] = ("in", "OOD")) -> None:
    """Write `scores.csv` (`rows`, dicts with the same keys), `metrics.json` (`result`) and, with `pairs`
    `{score: (in-distribution or normal [N], OOD or novel [M])}`, `roc.png` and `histograms.png` (the two
    sets named by `labels`) into the folder `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    if pairs:
        plots.save(plots.roc_figure(pairs), out / "roc.png")
        plots.save(plots.score_histograms(pairs, labels=labels), out / "histograms.png")


def _write_outputs(out, rows, result, sets, in_dist, columns, model, x, maps, reductions, masks, labels):
    """scores.csv, metrics.json and the figures of `score_run`."""
    pairs = {c: (sets[0][1][c][in_dist], sets[1][1][c]) for c in columns} if result["ood"] else None
    write_scores(out, rows, result, pairs)
    if maps is not None:
        top, others = FIGURE_IMAGES
        order = np.argsort(-reductions[f"{RECOMMENDED_MAP}_max"], kind="stable")
        rest = order[top:]
        pick = np.r_[order[:top], np.sort(np.random.default_rng(0).permutation(rest)[:others])].astype(int)
        shown_masks = None
        if masks is not None:
            shown_masks = np.zeros((len(pick), *x.shape[1:3], 1), np.float32)
            inside = pick < len(masks)
            shown_masks[inside] = masks[pick[inside]][..., None]
        names = [f"{i}" + (f" {labels[i]}" if labels is not None else "") for i in pick]
        plots.save(plots.anomaly_figure(x[pick], point_estimates(model, x[pick]), maps[RECOMMENDED_MAP][pick],
                                        shown_masks, names, RECOMMENDED_MAP, top), out / "anomaly_maps.png")
