"""Command line: `tfp-ae train ...` runs (or resumes) an experiment, `tfp-ae grid` the paper's
grid, `tfp-ae table` merges grid results, `tfp-ae augment` writes mixture components as a
dataset, `tfp-ae export` writes a SavedModel, `tfp-ae toy2d` the VAE 2D study, `tfp-ae heads`
lists the heads."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from tfp_ae._tf import SHOW_TF_LOGS
from tfp_ae.config import (
    ARCHS,
    LOCATION_ACTIVATIONS,
    MODELS,
    OBJECTIVES,
    PRECISIONS,
    RECALIBRATION_CRITERIA,
    RECALIBRATION_METHODS,
    STRATEGIES,
    UNCERTAINTIES,
    RunConfig,
)
from tfp_ae.data import CROPS, DATASETS, convert, open_source
from tfp_ae.errors import InputError
from tfp_ae.export import export_run
from tfp_ae.figures import augment
from tfp_ae.grid import grid_cells, merge_results, run_grid
from tfp_ae.heads import DEFAULT_RANK, HEADS, LOSSES, PARAMETERIZATIONS, describe_heads
from tfp_ae.novelty import score_novelty
from tfp_ae.runtime import device_summary, make_strategy
from tfp_ae.scoring import score_run
from tfp_ae.toy2d import TOY_DATASETS, TOY_SETUPS, run_study
from tfp_ae.train import DivergedError, load_model, run

DATASET_HELP = (f"{', '.join(DATASETS)}; a .npz file (x_train, x_test [N, H, W, C]); tfds:NAME[/CONFIG]; a folder of "
                "images (PNG, JPEG, BMP, GIF; train/ and test/ subfolders, class subfolders as labels); a folder "
                "or glob of TFRecord shards (see `tfp-ae convert`)")


def _add_source_args(p):
    """Where images come from and how they are shaped: shared by `train`, `grid` and `convert`."""
    d = RunConfig()
    p.add_argument("--data-dir", default=None, help="folder with mnist/ and fashion-mnist/ IDX files; "
                   "for tfds:NAME, TFDS's data_dir")
    p.add_argument("--image-size", default=None, metavar="H|HxW", help="resize every image (antialiased, "
                   "re-quantised to the source's levels)")
    p.add_argument("--crop", default=d.crop, choices=CROPS, help="center: crop to --image-size's aspect ratio first")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="convert every image to grey (1) "
                   "or RGB (3)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="image folders without train/ "
                   "and test/ subfolders: the fraction of files held out for test (a fixed split)")
    p.add_argument("--download", action="store_true", help="tfds:NAME: download and prepare it if it is not "
                   "prepared in --data-dir (needs the internet)")
    p.add_argument("--skip-bad-images", action="store_true", help="leave unreadable image files out (each one "
                   "printed with its reason, and listed in metrics.json) instead of stopping with an error")
    p.add_argument("--rescale", action="store_true", help="divide the images by 255 (.npz data given as 0-255)")
    p.add_argument("--classes", default=None, metavar="C[,C...]", help="keep only these classes of a labelled "
                   "source, in every split (names or indices: 3, 0,1,2, bag); one class: one-class novelty detection")
    p.add_argument("--exclude-classes", default=None, metavar="C[,C...]", help="keep every class but these "
                   "(leave-one-class-out novelty detection)")


def _add_settings(p):
    """Flags for how every model is trained and evaluated: shared by `train` and `grid`."""
    d = RunConfig()
    p.add_argument("--objective", default=d.objective, choices=OBJECTIVES, help="vae: train on the elbo or the iwae bound")
    p.add_argument("--iw-samples", type=int, default=d.iw_samples, help="vae --objective iwae: importance samples k")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim, help="units of the code (the paper's 32)")
    p.add_argument("--conv-width", type=int, default=None, help="--arch conv: filters of its first level, doubled "
                   "at each level up to 256 (default 16; 32 takes about 4x the time)")
    p.add_argument("--conv-depth", type=int, default=None, help="--arch conv: stride-2 levels (default: halve the "
                   "shorter side down to 4-7 pixels; sizes not a multiple of 2^depth are zero-padded, and the output "
                   "cropped back)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (all replicas together)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw of the run")
    p.add_argument("--retries", type=int, default=d.retries, help="re-runs with a new seed after a NaN loss")
    p.add_argument("--dequantize", action="store_true", help="train on uniformly dequantised pixels")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--perturb-rate", type=float, default=d.perturb_rate, help="train a background model for "
                   "`tfp-ae score --background`: each pixel replaced by a random level at this rate (Ren et al. 2019)")
    p.add_argument("--eval-images", type=int, default=d.eval_images, help="test images for l2_percent")
    _add_source_args(p)
    p.add_argument("--jit", dest="jit_compile", action="store_true", help="compile training steps with XLA")
    p.add_argument("--steps-per-execution", type=int, default=d.steps_per_execution,
                   help="training steps per call of the compiled train function (fewer Python round trips; "
                   "same results; callbacks' batch hooks run once per call)")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="Keras mixed precision policy of the layers (the head stays float32)")
    p.add_argument("--validation-split", type=float, default=d.validation_split,
                   help="hold out the last fraction of the training images; val_loss is logged per epoch")
    p.add_argument("--recalibrate", action="store_true", help="sigma-scaling (Laves et al. 2021): after training, "
                   "fit one factor s of every scale on held-out images (--validation-split, or 0.1 when 0); "
                   "saved with the model")
    p.add_argument("--recalibration-criterion", default=d.recalibration_criterion, choices=RECALIBRATION_CRITERIA,
                   help="what sigma-scaling minimises on the held-out images: crps (minimum-CRPS estimation, "
                   "Gneiting et al. 2005; robust to outlying pixels), nll (Laves et al. 2021) or calibration "
                   "(the calibration error itself: mean |coverage - level|)")
    p.add_argument("--recalibration-method", default=d.recalibration_method, choices=RECALIBRATION_METHODS,
                   help="--recalibrate: scale (one factor on every scale) or local (then a factor per pixel that "
                   "depends on its scale, fitted within octiles of the scales: for the heads with per-pixel scales) or "
                   "pit (then each pixel's CDF composed with a histogram of the held-out PIT values of its 1/32 of the "
                   "scales, a density still: for the K = 1 normal and logistic factorised heads); both guarded like "
                   "sigma-scaling")
    p.add_argument("--force-recalibration", action="store_true", help="--recalibrate: apply the fitted scale even "
                   "where it makes the held-out bits/dim worse by more than 0.1 (by default such a scale is not applied)")
    p.add_argument("--risk", type=float, default=d.risk, metavar="ALPHA",
                   help="conformal risk control (RCPS, Angelopoulos et al. 2022): after training, fit one λ "
                   "scaling every 90 %% interval on held-out images (--validation-split, or 0.1 when 0) so that at "
                   "most this fraction of a new image's pixels fall outside, with probability 1 - DELTA; saved "
                   "with the model (the conformal_interval signature, the reconstructions' maps), e.g. 0.1")
    p.add_argument("--delta", type=float, default=d.delta,
                   help="--risk: the probability that the fitted λ's risk exceeds ALPHA")
    p.add_argument("--risk-groups", type=int, default=d.risk_groups, metavar="K",
                   help="--risk: K-RCPS (Teneggi et al. 2023): K groups of pixels (by how often each is outside "
                   "its 90 %% interval), each with its own λ, for narrower intervals at the same guarantee; half "
                   "of the held-out images choose the groups, the other half certify them (1: one λ, RCPS)")
    p.add_argument("--risk-strata", type=int, default=d.risk_strata, metavar="S",
                   help="--risk: a λ for each of S strata of images by their mean interval width (Mondrian RCPS), "
                   "so that images with narrow intervals keep the risk too; half of the held-out images place the "
                   "strata, the other half fit their λ's (1: one λ)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUT/logs "
                   "(pip install 'tfp_ae[tensorboard]')")
    p.add_argument("--strategy", default=d.strategy, choices=STRATEGIES,
                   help="tf.distribute strategy (mirrored: all GPUs, or all logical CPUs; multiworker: TF_CONFIG)")
    p.add_argument("--deterministic", action="store_true", help="enable TensorFlow's op determinism: GPU runs "
                   "repeat bit for bit (slower; ops without a deterministic GPU kernel raise an error)")
    p.add_argument("--no-fid", dest="fid", action="store_false", help="skip the FID metrics")
    p.add_argument("--fid-inception", action="store_true", help="also InceptionV3 FID (downloads its weights "
                   "through Keras if not cached; without this flag it is used only when they are cached)")
    p.add_argument("--uncertainty", default=d.uncertainty, choices=UNCERTAINTIES,
                   help="map in reconstructions.png: width of the central 90%% interval (every head), standard "
                   "deviation or variance (blank where the variance does not exist)")
    p.add_argument("--tsne-images", type=int, default=d.tsne_images, help="test latents in the t-SNE panel (0: none)")
    p.add_argument("--no-extra-figures", dest="extra_figures", action="store_false",
                   help="write only reconstructions.png, not samples.png / components.png (Figures 3 and 4)")


def _add_train_args(p):
    d = RunConfig()
    p.add_argument("--dataset", default=d.dataset,
                   help=DATASET_HELP)
    p.add_argument("--model", default=d.model, choices=MODELS, help="ae: the paper's autoencoders; vae: a VAE "
                   "with the head as decoder likelihood")
    p.add_argument("--head", default=d.head, help=f"output head, one of: {', '.join(HEADS)}")
    p.add_argument("--components", "-K", type=int, default=d.components, help="mixture components K (>= 1)")
    p.add_argument("--arch", default=d.arch, choices=ARCHS, help="mlp and cnn: the paper's; cnn_dense: every "
                   "decoder output used; conv: a deep convolutional autoencoder for 16-256 pixel images (per-pixel "
                   "and low-rank heads)")
    p.add_argument("--rank", type=int, default=None, help=f"low-rank heads ({', '.join(_heads_with('rank'))}): "
                   f"rank r of the covariance's V (default {DEFAULT_RANK})")
    p.add_argument("--min-df", type=float, default=None, help="Student-t heads: df = MIN_DF + 1e-6 + softplus "
                   "(default 0, the paper's; 2 or more makes the variance exist)")
    p.add_argument("--parameterization", default=None, choices=PARAMETERIZATIONS, help="full-scale heads "
                   f"({', '.join(_heads_with('parameterization'))}): scale: the packed lower-triangular L gives the "
                   "covariance L L^T (the paper's FillScaleTriL); precision: the precision L L^T (Dorta et al. 2018), "
                   "which --loss faithful needs (the paper's diverges) (default: scale)")
    p.add_argument("--loss", default=d.loss, choices=LOSSES, help="nll: the paper's; beta_nll: each pixel's "
                   "log-density weighted by stop_gradient(variance)^beta (Seitzer et al. 2022; normal_identity, "
                   "normal_diag, logistic); faithful: the location by squared error, the dispersion by the NLL through "
                   "its own branch (Stirn et al. 2023; K = 1 heads with a location)")
    p.add_argument("--beta", type=float, default=d.beta, help="--loss beta_nll: the exponent, in [0, 1] (0 = nll)")
    p.add_argument("--dispersion-units", type=int, default=d.dispersion_units, help="--loss faithful: hidden "
                   "units of the dispersion branch (0: a linear readout of the code, as the paper's decoder)")
    p.add_argument("--location-activation", default=d.location_activation, choices=LOCATION_ACTIVATIONS,
                   help="the location's output (K = 1 heads with a location, mse included, under every loss); "
                   "sigmoid keeps it in (0, 1): with --loss faithful near-NLL bits/dim and sharper means, a larger "
                   "calibration error (docs/results/uncertainty)")
    _add_settings(p)
    p.add_argument("--out", default=None, help="run folder (default runs/DATASET_ARCH_HEAD_kK); an unfinished "
                   "run there is resumed from its last finished epoch")
    p.add_argument("--overwrite", action="store_true", help="train again even if --out holds a finished run")


def _config(args):
    fields = {k.replace("-", "_"): v for k, v in vars(args).items() if k not in ("command", "func", "overwrite", "verbose")}
    cfg = RunConfig.from_dict(fields)
    prefix = "" if cfg.model == "ae" else f"{cfg.model}_{cfg.objective}_"
    options = "".join(f"_{k}{v:g}" if isinstance(v, (int, float)) else f"_{v}" for k, v in cfg.head_options.items())
    options += "" if cfg.loss == "nll" else f"_{cfg.loss}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.dataset.rstrip("/*")).stem).strip("_")
    cfg.out = cfg.out or f"runs/{slug}_{prefix}{cfg.arch}_{cfg.head}_k{cfg.components}{options}"
    cfg.verbose = 1 if sys.stdout.isatty() else 2
    return cfg.validate()


def cmd_train(args: argparse.Namespace):
    """`tfp-ae train`: train (or resume) and evaluate one model, print its headline metrics."""
    cfg = _config(args)
    strategy = make_strategy(cfg.strategy)
    print(f"training on {device_summary(strategy)}")
    _, m = run(cfg, overwrite=args.overwrite, strategy=strategy)
    if m.get("role") == "worker":
        return
    bpd = "n/a" if m["bits_per_dim"] is None else f"{m['bits_per_dim']:.4f}"
    if "test_elbo_nats" in m:
        print(f"{cfg.model} ({cfg.objective}): test ELBO {m['test_elbo_nats']:.2f} nats/image")
    print(f"{cfg.head} K={cfg.components} {cfg.arch} on {cfg.dataset}: l2 {m['l2_percent']:.3f} %, "
          f"test NLL {m['test_nll_nats']:.2f} nats/image, {bpd} bits/dim, "
          f"{sum(m['seconds_per_epoch']) / len(m['seconds_per_epoch']):.2f} s/epoch, {m['num_params']} params")
    if "nll_note" in m:
        print("note:", m["nll_note"])
    written = sorted(f.name + ("/" if f.is_dir() else "") for f in Path(cfg.out).iterdir())
    print(f"wrote {cfg.out}/: {', '.join(written)}")


def cmd_export(args: argparse.Namespace):
    """`tfp-ae export`: a run as a SavedModel (and TensorFlow Lite files with `--tflite`)."""
    names, report = export_run(args.run_dir, args.out, overwrite=args.overwrite, tflite=args.tflite)
    print(f"wrote SavedModel {args.out} with signatures: {', '.join(names)}")
    for name, result in (report or {}).items():
        print(f"tflite {name}: " + (f"wrote {args.out}/tflite/{name}.tflite" if result == "converted" else result))


def cmd_toy2d(args: argparse.Namespace):
    """`tfp-ae toy2d`: the VAE tutorial's 2D study; prints its table."""
    rows = run_study(args.out, setup=args.setup, steps=args.steps, growth=args.growth, datasets=args.datasets,
                     seed=args.seed)
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {args.out}/table.md, results.json and toy2d.png ({len(rows)} datasets)")


def cmd_grid(args: argparse.Namespace):
    """`tfp-ae grid`: the paper's grid of heads x K x datasets (resumable); prints the table."""
    # every training flag except the per-cell fields (dataset, arch, model, head, components, out)
    grid_only = ("dataset", "arch", "heads", "components", "out", "no_figures", "command", "func", "verbose")
    base = RunConfig.from_dict({k: v for k, v in vars(args).items() if k not in grid_only})
    base.verbose = 2
    cells = grid_cells(args.dataset, args.arch, args.heads, args.components)
    todo = [c for c in cells if not c.skip]
    print(f"grid: {len(todo)} cells to run or read, {len(cells) - len(todo)} skipped; folder {args.out}")

    def progress(cell, row):
        l2 = row.get("l2_percent")
        print(f"  {cell.key}: {row['status']}" + (f", l2 {l2:.3f} %" if isinstance(l2, float) else ""), flush=True)

    rows = run_grid(args.out, cells, base, on_cell=progress, figures=not args.no_figures)
    failed = [r for r in rows if r["status"].startswith("failed")]
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {args.out}/results.csv and table.md; {len(failed)} failed cell(s)")


def cmd_table(args: argparse.Namespace):
    """`tfp-ae table`: merge grid `results.csv` files into one table."""
    rows = merge_results(args.results, args.out, args.epochs)
    print((Path(args.out) / "table.md").read_text())
    print(f"wrote {args.out}/results.csv and table.md ({len(rows)} cells from {len(args.results)} file(s))")


def cmd_augment(args: argparse.Namespace):
    """`tfp-ae augment`: a mixture's component images above a log-density threshold as an `.npz` dataset."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    model, cfg = load_model(args.run_dir)
    source = open_source(cfg.dataset, **cfg.source_options)
    x, y = source.splits[args.split].take(args.limit)
    if tuple(x.shape[1:]) != tuple(model.head.event_shape):
        raise InputError(f"{args.split} images {tuple(x.shape[1:])} do not match the run's {tuple(model.head.event_shape)}")
    x_test, y_test = source.splits["test"].take()
    aug = augment(model, x, y, args.min_log_prob)
    q = np.percentile(aug["all_log_prob"], [5, 25, 50, 75, 95])
    print(f"component log-densities (nats) over {aug['all_log_prob'].size} components: "
          f"5/25/50/75/95 % = {', '.join(f'{v:.1f}' for v in q)}")
    new_x, new_y = aug["images"], aug["labels"]
    if args.include_originals:
        new_x, new_y = np.concatenate([x, new_x]), np.concatenate([-np.ones(len(x), np.int64) if y is None else y, new_y])
    tmp = out.with_name(out.stem + ".tmp.npz")
    labels = {} if y is None or y_test is None else dict(y_train=new_y, y_test=y_test)  # none: none written
    np.savez_compressed(tmp, x_train=new_x, x_test=x_test, **labels,
                        log_prob=aug["log_prob"], source_index=aug["source_index"], component=aug["component"])
    tmp.replace(out)
    print(f"kept {len(aug['images'])} of {aug['all_log_prob'].size} component images "
          f"(log p >= {args.min_log_prob}); wrote {out} (x_train {new_x.shape}, usable as --dataset {out})")


def cmd_convert(args: argparse.Namespace):
    """`tfp-ae convert`: any source as TFRecord shards (after its geometry)."""
    source = open_source(args.source, args.data_dir, args.image_size, args.crop, args.channels, args.test_fraction,
                         args.download, args.skip_bad_images, args.rescale, args.classes, args.exclude_classes)
    source.print_skipped()
    info = convert(source, args.out, args.shards, overwrite=args.overwrite)
    skipped = f"; skipped {len(source.skipped)} unreadable file(s)" if source.skipped else ""
    print(f"wrote {args.out}: {info['counts']['train']} train and {info['counts']['test']} test images "
          f"{'x'.join(map(str, info['image_shape']))}, {info['num_levels']} levels{skipped}; "
          f"train with --dataset {args.out}")


def cmd_score(args: argparse.Namespace):
    """`tfp-ae score`: OOD scores, defect detection and anomaly maps of a run; prints AUROC / AUPRC / FPR,
    detection AUROC and localisation. With `--novelty`: `cmd_novelty`."""
    if args.novelty:
        return cmd_novelty(args)
    _, m = score_run(args.run_dir, args.data, args.ood, args.background, args.out, args.masks, args.limit, args.seed,
                     args.image_size, args.crop, args.channels, args.test_fraction)
    print("scored " + ", ".join(f"{n} {'in-distribution' if s == 'in' else 'OOD'}" for s, n in m["counts"].items())
          + " test images")
    by_label = m.get("bits_per_dim_by_label", {})
    ref = m["reference"]
    print(f"bits/dim: reference images ({ref['images']} {ref['kind'].replace('_', '-')}) {m['train_bits_per_dim']:.3f}, "
          f"test images {m['test_bits_per_dim']:.3f}"
          + "".join(f"; {g} {v:.3f}" for g, v in by_label.items()))
    for name, v in m.get("scores", {}).items():
        mark = "  (recommended)" if name == m["recommended"] else ""
        print(f"{name:18s} AUROC {v['auroc']:.3f}  AUPRC {v['auprc']:.3f}  FPR@95%TPR {v['fpr_at_95_tpr']:.3f}{mark}")
    if "detection" in m:
        d = m["detection"]
        print(f"detection, {d['good']} good against {d['defective']} defective test images (AUROC overall; "
              f"per defect: {', '.join(d['per_defect'])}):")
        for name, v in d["overall"].items():
            per = "  ".join(f"{v2[name]['auroc']:.3f}" for v2 in d["per_defect"].values())
            print(f"  {name:32s} {v['auroc']:.3f}   {per}")
    elif "detection_skipped" in m:
        print(f"no detection metrics: {m['detection_skipped']}")
    for name, v in m.get("localisation", {}).items():
        mark = "  (recommended)" if name == m.get("recommended_map") else ""
        print(f"map {name:24s} pixel AUROC {v['pixel_auroc']:.3f}  PRO {v['pro']:.3f}{mark}")
    figures = (["roc.png", "histograms.png"] if args.ood else []) + (["anomaly_maps.png"] if "recommended_map" in m
                                                                      else [])
    print(f"wrote {args.out}/scores.csv, metrics.json" + "".join(f", {f}" for f in figures))


def cmd_novelty(args: argparse.Namespace):
    """`tfp-ae score --novelty`: the run's classes normal, the other classes of the test split novel
    (`tfp_ae.novelty.score_novelty`); prints AUROC overall and per novel class."""
    given = [f for f in ("ood", "masks", "image_size", "crop", "channels", "test_fraction") if getattr(args, f) is not None]
    if given:
        raise InputError(f"--novelty scores the test split of --data with the run's geometry; it does not take "
                         f"{', '.join('--' + f.replace('_', '-') for f in given)} (score again without --novelty)")
    _, m = score_novelty(args.run_dir, args.data, args.out, args.background, args.limit, args.seed)
    nov = m["novelty"]
    per = list(nov["per_class"])
    print(f"scored {nov['counts']['normal']} normal (classes {', '.join(nov['normal_classes'].values())}) and "
          f"{nov['counts']['novel']} novel test images; AUROC overall, then per novel class ({', '.join(per)}):")
    for name, v in nov["overall"].items():
        mark = "  (recommended)" if name == nov["recommended"] else ""
        print(f"  {name:32s} {v['auroc']:.3f}   " + "  ".join(f"{nov['per_class'][c][name]['auroc']:.3f}" for c in per)
              + mark)
    print(f"wrote {args.out}/scores.csv, metrics.json, roc.png, histograms.png, novelty_examples.png")


class HELP_FORMAT(argparse.ArgumentDefaultsHelpFormatter):
    """Every --help shows each default once: argparse's "(default: X)", except for on/off flags (their
    default is the flag's absence), and where the help already names the default or it is None (unset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.default is None
                or "default" in text):
            return text
        return super()._get_help_string(action)


def _with_defaults_shown(add_parser):
    def add(*args, **kwargs):
        return add_parser(*args, formatter_class=HELP_FORMAT, **kwargs)
    return add


def _heads_with(option):
    return [name for name, cls in HEADS.items() if option in cls.options]


def cmd_heads(args: argparse.Namespace):
    """`tfp-ae heads`: every head with its parameter count for an image shape."""
    shape = tuple(args.shape)
    print(f"{'head':24s} {'paper label':18s} {'params K=1':>12s} {'params K=10':>12s}   (decoder outputs for {shape}"
          f"; low-rank heads at rank {args.rank})")
    for name, label, sizes in describe_heads(shape, rank=args.rank):
        k10 = "-" if sizes[10] is None else str(sizes[10])
        print(f"{name:24s} {label:18s} {sizes[1]:>12d} {k10:>12s}")


def main(argv: list[str] | None = None) -> None:
    """The `tfp-ae` command line (`argv`: the arguments, default `sys.argv[1:]`); bad input exits with
    one `tfp-ae: error: ...` line."""
    parser = argparse.ArgumentParser(prog="tfp-ae", description="Probabilistic autoencoders (TFP + Keras).",
                                     formatter_class=HELP_FORMAT)
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's own C++ log lines "
                        "(hidden by default; the same as TFP_AE_TF_LOGS=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = _with_defaults_shown(sub.add_parser)
    p = sub.add_parser("train", help="train and evaluate one model")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("export", help="write a trained run as a SavedModel with tensor serving signatures")
    p.add_argument("run_dir", help="a run folder written by `tfp-ae train`")
    p.add_argument("--out", required=True, help="SavedModel folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--tflite", action="store_true", help="also write OUT/tflite/{reconstruct,interval,log_prob}.tflite "
                   "where TensorFlow Lite converts and reproduces them (OUT/tflite/report.json says why not)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("toy2d", help="the VAE tutorial's 2D study: VAE and IWAE on toy densities vs their entropy")
    p.add_argument("--out", default="runs/toy2d")
    p.add_argument("--setup", default="laptop", choices=list(TOY_SETUPS),
                   help="laptop: FFJORD scales, MLP 128-128, 30000 steps; tutorial: the VAE tutorial's own set-up "
                        "(its scales, weight-normalised dense blocks 6 x 1024, free bits, Adam 1e-4 AMSGrad halved, "
                        "60000 VAE / 30000 IWAE steps)")
    p.add_argument("--steps", type=int, default=None, help="VAE Adam steps at batch 200 (IWAE: the set-up's ratio)")
    p.add_argument("--growth", type=int, default=None, help="width of every hidden layer (the dense block's growth)")
    p.add_argument("--datasets", nargs="+", default=list(TOY_DATASETS), choices=TOY_DATASETS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_toy2d)
    p = sub.add_parser("grid", help="the paper's grid of heads x K x datasets (resumable), results.csv + table.md")
    p.add_argument("--dataset", nargs="+", default=["mnist", "fashion_mnist"])
    p.add_argument("--arch", default="mlp", choices=ARCHS)
    p.add_argument("--heads", nargs="+", default=["all"], help="head names, vae, all (every head + the VAE "
                   "row) or paper (the paper's rows)")
    p.add_argument("--components", "-K", nargs="+", type=int, default=[1, 10])
    _add_settings(p)
    p.add_argument("--no-figures", action="store_true", help="skip Figures 1/2 of the grid")
    p.add_argument("--out", default="runs/grid")
    p.set_defaults(func=cmd_grid)
    p = sub.add_parser("table", help="merge grid results.csv files (cells run in other folders, sessions or "
                       "machines) into one results.csv + table.md")
    p.add_argument("results", nargs="+", help="results.csv files written by `tfp-ae grid`; a cell in several "
                   "takes the last finished row")
    p.add_argument("--out", required=True, help="folder for the merged results.csv and table.md")
    p.add_argument("--epochs", type=int, default=None, help="epochs to name in the table headings")
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("augment", help="write a mixture's component images above a log-density threshold as a "
                       "new .npz dataset (the paper's augmentation)")
    p.add_argument("run_dir", help="a run folder of a mixture head (K > 1)")
    p.add_argument("--out", required=True, help=".npz file to write (x_train, y_train, x_test, y_test, log_prob, ...)")
    p.add_argument("--min-log-prob", type=float, default=None, help="keep components with mixture log p >= this "
                   "(nats per image); default keeps all and prints the quantiles to choose from")
    p.add_argument("--split", default="train", choices=["train", "test"], help="images whose components are taken")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    p.add_argument("--include-originals", action="store_true", help="x_train = originals + kept components")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_augment)
    p = sub.add_parser("convert", help="write any source as TFRecord shards (after --image-size/--crop/--channels), "
                       "to stream from and to shard between workers")
    p.add_argument("source", help=DATASET_HELP)
    p.add_argument("out", help="folder for {train,test}-NNNNN-of-NNNNN.tfrecord and tfp_ae_shards.json")
    p.add_argument("--shards", type=int, default=1, help="files per split (the test split: one per 1000 images, "
                   "at most this many)")
    p.add_argument("--overwrite", action="store_true", help="replace the shards in OUT")
    _add_source_args(p)
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("score", help="OOD scores of a run's test images (and an OOD set's): scores.csv, metrics.json "
                       "(AUROC, AUPRC, FPR at 95%% TPR), roc.png and histograms.png with --ood; with a folder in MVTec "
                       "AD's layout (test/good and test/<defect> folders) or --masks, detection of the defective test "
                       "images and anomaly_maps.png; with --novelty, novelty by class")
    p.add_argument("run_dir", help="a run folder written by `tfp-ae train`")
    p.add_argument("--data", required=True, help="in-distribution dataset (its test split is scored; a folder in "
                   "MVTec AD's layout, test/good/ beside test/<defect>/, also gets detection metrics per defect type)")
    p.add_argument("--ood", default=None, help="out-of-distribution dataset: its test split, or every image of a "
                   "folder without train/ and test/ subfolders")
    p.add_argument("--background", default=None, help="run folder of a background model (tfp-ae train "
                   "--perturb-rate) for the likelihood ratio")
    p.add_argument("--masks", default=None, help="defect masks of --data's test images (pixel AUROC and PRO of "
                   "each anomaly map): an .npz with mask_test [N, H, W] (the first N images), or a folder of mask "
                   "images (non-zero = defect), matched by name to an image folder's test images "
                   "(crack/000_mask.png -> test/crack/000.png; MVTec AD's layout), else in sorted order")
    p.add_argument("--limit", type=int, default=None, help="score only the first N test images of each set")
    p.add_argument("--image-size", default=None, metavar="H|HxW", help="resize the images of --data and --ood "
                   "(None: the run's geometry)")
    p.add_argument("--crop", default=None, choices=CROPS, help="center: crop to --image-size's aspect ratio first "
                   "(None: the run's)")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3], help="convert the images to grey (1) or "
                   "RGB (3) (None: the run's)")
    p.add_argument("--test-fraction", type=float, default=None, help="a flat --ood folder (no train/ and test/): "
                   "score only this held-out fraction of it (None: all its images)")
    p.add_argument("--novelty", action="store_true", help="novelty detection: score the whole test split of --data, "
                   "the run's classes (train --classes / --exclude-classes) normal and every other class novel; "
                   "AUROC overall and per novel class, novelty_examples.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the dequantisation noise")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("heads", help="list the output heads and their parameter counts")
    p.add_argument("--shape", type=int, nargs=3, default=[28, 28, 1], metavar=("H", "W", "C"))
    p.add_argument("--rank", type=int, default=DEFAULT_RANK, help="rank of the low-rank heads")
    p.set_defaults(func=cmd_heads)
    args = parser.parse_args(argv)
    if args.verbose and not SHOW_TF_LOGS and argv is None:
        # TensorFlow is already imported, quietly: start again with its logs on (tfp_ae._tf)
        os.environ["TFP_AE_TF_LOGS"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "tfp_ae", *sys.argv[1:]])
    try:
        args.func(args)
    except (InputError, FileNotFoundError, FileExistsError, DivergedError, MemoryError, ImportError) as e:
        raise SystemExit(f"tfp-ae: error: {e}") from None


if __name__ == "__main__":
    main()
