"""Novelty detection as the field measures it (`tfp-ae score RUN --data D --novelty`): a run trained on some
classes of a labelled dataset (`--classes` / `--exclude-classes`) scores the *whole* test split; the run's
classes are normal, every other class is novel.

Two protocols use it:

- one-class (Ruff et al., ICML 2018, "Deep One-Class Classification", and the papers after it): train on
  one class, the other nine are novel; AUROC per class, then the mean over the ten runs;
- leave-one-class-out: train on nine classes, the tenth is novel (where a likelihood model can rank the
  novelty as *more* normal: the trap, e.g. MNIST digit 1).

Every per-image score of `tfp_ae.scoring.SCORES` (p-value scores against the run's held-out images, else its
own class-selected training images: `tfp_ae.scoring.reference_split`), every per-image reduction of the
anomaly maps (`tfp_ae.anomaly.image_reductions`) and
`RECOMMENDED_NOVELTY` is measured by `tfp_ae.scoring.grouped_metrics` (`ood_metrics`: scikit-learn's AUROC, AUPRC, FPR at
95 % TPR), novel images the positive class: over all novel images and per novel class.

`RECOMMENDED_NOVELTY`, `fisher_complexity_error`: Fisher's method (`tfp_ae.scoring.fisher_score`) over the
one-sided p-values, against the same reference images, of `complexity` (the NLL minus the PNG-compressed
size, Serra et al. 2020) and `abs_error_smooth_top1` (the mean of the top 1 % of the smoothed
|x - point estimate| map): an image is novel when it is both hard to explain for its complexity and
reconstructed badly somewhere. Chosen on the one-class benchmark (docs/results/novelty), where it was the
best single score on MNIST and Fashion-MNIST together.
"""
from pathlib import Path

import numpy as np

from tfp_ae import plots
from tfp_ae.anomaly import RECOMMENDED_MAP, image_reductions, pixel_maps
from tfp_ae.data import Split, class_table, kept_classes, open_source
from tfp_ae.errors import InputError
from tfp_ae.models import ProbabilisticModel
from tfp_ae.predict import point_estimates
from tfp_ae.scoring import (
    RECOMMENDED,
    SCORES,
    fisher_score,
    grouped_metrics,
    image_scores,
    reference_split,
    write_scores,
)
from tfp_ae.train import load_model

NOVELTY_COMBINED = ("complexity", "abs_error_smooth_top1")  # the scores whose p-values it combines
RECOMMENDED_NOVELTY = "fisher_complexity_error"  # Fisher's method over NOVELTY_COMBINED (module docstring)
MAP_CHUNK = 1000  # test images whose anomaly maps are held at once (only their reductions are kept)
FIGURE_IMAGES = 5  # novelty_examples.png: the most novel test images, then the novel ones scored least novel


def map_reductions(model: ProbabilisticModel, split: Split, chunk: int = MAP_CHUNK) -> dict[str, np.ndarray]:
    """`tfp_ae.anomaly.image_reductions` of the anomaly maps of every image of `split`, `{name: [N]}`,
    computed `chunk` images at a time (the maps of a whole test split are never held)."""
    parts = []
    for start in range(0, split.count, chunk):
        x = split.subset(start, start + chunk).take()[0]
        parts.append(image_reductions(pixel_maps(model, x)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def novelty_metrics(scores: dict[str, np.ndarray], labels: np.ndarray, normal: list[int],
                    names: dict[int, str]) -> dict:
    """Novelty metrics of per-image scores.

    Args:
      scores: `{name: [N]}`, higher = more novel.
      labels: int `[N]` class indices of the images.
      normal: the normal class indices (the run's classes).
      names: `{index: name}` of every class.
    Returns:
      a dict with `normal_classes` (index to name), `counts` (`normal`, `novel`), `overall` (score to
        `ood_metrics`: every novel image against all normal images, novel positive) and `per_class`
        (novel class name to score to `ood_metrics`: that class alone against all normal images).
    Raises:
      InputError: no normal or no novel image among `labels`.
    """
    labels = np.asarray(labels)
    novel = ~np.isin(labels, list(normal))
    if novel.all() or not novel.any():
        raise InputError(f"novelty needs normal and novel test images ({int((~novel).sum())} normal, "
                         f"{int(novel.sum())} novel)")
    overall, per_class = grouped_metrics(scores, novel, labels)
    return dict(normal_classes={int(i): names[int(i)] for i in normal},
                counts=dict(normal=int((~novel).sum()), novel=int(novel.sum())),
                overall=overall, per_class={names[int(c)]: m for c, m in per_class.items()})


def score_novelty(run_dir: str | Path, data: str, out: str | Path | None = None, background: str | Path | None = None,
                  limit: int | None = None, seed: int = 0, maps: bool = True) -> tuple[list[dict], dict]:
    """`tfp-ae score --novelty`: every score of a class-selected run on the whole test split of `data`.

    Args:
      run_dir: a run folder trained with `--classes` or `--exclude-classes`.
      data: the labelled dataset string (the run's classes are normal, the others novel); its geometry
        and class names are the run's.
      out: folder for `scores.csv` (one row per test image: index, label, class, novel, every score and
        reduction), `metrics.json` (`"novelty"`, `novelty_metrics` plus `recommended` and
        `recommended_map`), `roc.png`, `histograms.png` and `novelty_examples.png` (the most novel test
        images by the recommended score, then the novel images it scored least novel: its misses); or None.
      background: a background run folder (the `likelihood_ratio` score), or None.
      limit: score only the first `limit` test images.
      maps: also the per-image reductions of the anomaly maps (of the test images and of the reference
        training images) and `RECOMMENDED_NOVELTY`, the recommended score (without maps: `min_p`).
    Returns:
      (rows, metrics).
    Raises:
      InputError: a run trained on every class, a dataset without labels or of another image shape,
        a test split without normal or without novel images.
    """
    model, config = load_model(run_dir)
    if config.classes is None and config.exclude_classes is None:
        raise InputError(f"--novelty needs a run trained on some classes (tfp-ae train --classes C or "
                         f"--exclude-classes C); {run_dir} was trained on every class of {config.dataset}")
    options = dict(config.source_options, classes=None, exclude_classes=None)
    source = open_source(data, **options)
    if tuple(source.image_shape) != tuple(model.image_shape):
        raise InputError(f"--data {data}: images {source.image_shape} do not match the run's {tuple(model.image_shape)}")
    table = class_table(source)
    normal = kept_classes(table, config.classes, config.exclude_classes)
    bg = load_model(background)[0] if background else None
    test = source.splits["test"].subset(0, limit)
    with source.reading():
        labels = test.label_values()
        train, reference_kind = reference_split(config, source.splits["train"].select(normal))
        reference = image_scores(model, train, source.num_levels, seed=seed + 1)
        scores = image_scores(model, test, source.num_levels, bg, reference, seed)
        reductions = map_reductions(model, test) if maps else {}
        if maps:
            reference.update(map_reductions(model, train))
    columns = [c for c in SCORES if c in scores]
    all_scores = {**{c: scores[c] for c in columns}, **reductions}
    if maps:
        all_scores[RECOMMENDED_NOVELTY] = fisher_score(all_scores, reference, of=NOVELTY_COMBINED)
        columns.append(RECOMMENDED_NOVELTY)
    result = dict(run=str(run_dir), data=data, background=background, orientation="higher = more novel",
                  reference=dict(images=train.count, kind=reference_kind),
                  novelty=dict(novelty_metrics(all_scores, labels, normal, table),
                               recommended=RECOMMENDED_NOVELTY if maps else RECOMMENDED,
                               **({"recommended_map": f"{RECOMMENDED_MAP}_max"} if maps else {})))
    novel = ~np.isin(labels, normal)
    rows = [dict(index=i, label=int(labels[i]), **{"class": table[int(labels[i])]}, novel=int(novel[i]),
                 **{c: float(v[i]) for c, v in all_scores.items()}) for i in range(test.count)]
    if out:
        _write_outputs(Path(out), rows, result, all_scores, novel, columns, model, test, table, labels)
    return rows, result


def _write_outputs(out, rows, result, all_scores, novel, columns, model, test, table, labels):
    """scores.csv, metrics.json and the figures of `score_novelty`."""
    write_scores(out, rows, result, {c: (all_scores[c][~novel], all_scores[c][novel]) for c in columns},
                 labels=("normal", "novel"))
    order = np.argsort(-all_scores[result["novelty"]["recommended"]], kind="stable")
    missed = order[novel[order]][-FIGURE_IMAGES:]  # the novel images scored least novel
    pick = np.r_[order[:FIGURE_IMAGES], missed]
    x = np.stack([test.subset(int(i), int(i) + 1).take()[0][0] for i in pick])
    amap = pixel_maps(model, x)[RECOMMENDED_MAP]
    names = [(f"most novel\n{table[int(labels[i])]} ({'novel' if novel[i] else 'normal'})" if k < FIGURE_IMAGES
              else f"novel, scored low\n{table[int(labels[i])]}") for k, i in enumerate(pick)]
    plots.save(plots.anomaly_figure(x, point_estimates(model, x), amap, None, names, RECOMMENDED_MAP, 0),
               out / "novelty_examples.png")
