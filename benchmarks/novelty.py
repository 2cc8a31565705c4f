"""Novelty detection as the field measures it (docs/results/novelty): MNIST and Fashion-MNIST, two protocols,
ten classes each, one model per (dataset, protocol, class): 40 runs.

- one_class (Ruff et al., ICML 2018): train on the training images of one class (`--classes c`); score
  the whole test split (10,000 images), that class normal, the other nine novel.
- leave_one_out: train on the other nine classes (`--exclude-classes c`); class c is the novelty.

Each run: `tfp-ae train` with CONFIG (the package's recommended configuration for novelty, see the
results README), then `tfp-ae score --novelty` (`tfp_ae.novelty.score_novelty`). Runs and their score
folders are kept in RUNS and reused (delete a folder to redo it), so an interrupted benchmark resumes.
Writes OUT/results.csv (one row per run and score: AUROC, AUPRC, FPR at 95 % TPR, seconds), OUT/tables.md
(AUROC % per class and mean for the main scores, beside the published rows) and OUT/timing.json.

    python benchmarks/novelty.py --runs runs/novelty --out docs/results/novelty [--epochs 20] [--config faithful_sigmoid]
"""
import argparse
import csv
import json
import time
from pathlib import Path

CONFIGS = {  # name -> RunConfig fields of the model trained per class
    "normal_diag": dict(head="normal_diag", dequantize=True),
    "normal_diag_latent8": dict(head="normal_diag", dequantize=True, latent_dim=8),
    "faithful_sigmoid": dict(head="normal_diag", dequantize=True, loss="faithful", location_activation="sigmoid"),
    "cnn_dense": dict(head="normal_diag", dequantize=True, arch="cnn_dense"),
}
DATASETS = ("mnist", "fashion_mnist")
PROTOCOLS = ("one_class", "leave_one_out")
TABLE_SCORES = ("fisher_complexity_error", "min_p", "fisher", "nll", "complexity", "abs_error_smooth_top1",
                "neg_log_marginal_smooth_max")

# Published AUROC (%) per class 0-9 and mean; (method, per-class or None, mean, where it was read).
# Read in ../shared/paper/novelty_published.md (secondary copies of the tables; see the source column).
PUBLISHED = {
    ("mnist", "one_class"): [
        ("Deep SVDD, one-class", [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5], 94.8,
         "Ruff et al. ICML 2018 Table 1, as reproduced in a README of its table"),
        ("AnoGAN", [99.0, 99.8, 88.8, 91.3, 94.4, 91.2, 92.5, 96.4, 88.3, 95.8], 93.7, "as reproduced in AGAD Table 1"),
        ("OCGAN", [99.8, 99.9, 94.2, 96.3, 97.5, 98.0, 99.1, 98.1, 93.9, 98.1], 97.5, "as reproduced in AGAD Table 1"),
        ("GeoTrans (re-run)", [98.2, 91.6, 99.4, 99.0, 99.1, 99.6, 99.9, 96.3, 97.2, 99.2], 98.0,
         "as reproduced in AGAD Table 1"),
        ("ARNet", [98.6, 99.9, 99.0, 99.1, 98.1, 98.1, 99.7, 99.0, 93.6, 97.8], 98.3, "as reproduced in AGAD Table 1"),
    ],
    ("fashion_mnist", "one_class"): [
        ("GEOM", [99.4, 97.6, 91.1, 89.9, 92.1, 93.4, 83.3, 98.9, 90.8, 99.2], 93.5,
         "Golan & El-Yaniv NeurIPS 2018, as reproduced in AGAD Table 1"),
        ("ARNet", [92.7, 99.3, 89.1, 93.6, 90.8, 93.1, 85.0, 98.4, 97.8, 98.4], 93.9, "as reproduced in AGAD Table 1"),
        ("RAW-OC-SVM (tuned on test labels)", None, 92.8, "GEOM's baselines, from a summary of the paper"),
        ("CAE-OC-SVM (tuned on test labels)", None, 91.7, "GEOM's baselines, from a summary of the paper"),
        ("ADGAN", None, 88.4, "GEOM's baselines, from a summary of the paper"),
        ("DSEBM", None, 86.6, "GEOM's baselines, from a summary of the paper"),
    ],
    ("mnist", "leave_one_out"): [
        ("VAE ELBO, latent 2", [96, 73, 97, 94, 73, 92, 95, 77, 92, 66], 85.5, "Tonnaer, PhD thesis, Table 3.3"),
        ("VAE ELBO, latent 32", [81, 9, 92, 87, 78, 86, 87, 51, 89, 58], 71.8, "Tonnaer, PhD thesis, Table 3.3"),
    ],
    ("fashion_mnist", "leave_one_out"): [],
}


def run_one(runs, config_name, dataset, protocol, c, epochs):
    """Train (unless done) and score (unless done) one run; returns (score folder, seconds: spent now on
    training and evaluating, on scoring, and the run's training epochs in all, from its metrics.json)."""
    import tfp_ae  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
    from tfp_ae._tf import tfk
    from tfp_ae.config import RunConfig
    from tfp_ae.novelty import score_novelty
    from tfp_ae.train import run
    folder = Path(runs) / config_name / f"{dataset}_{protocol}_{c}"
    scored = folder / "novelty"
    start = time.perf_counter()
    if not (folder / "metrics.json").exists():
        select = dict(classes=str(c)) if protocol == "one_class" else dict(exclude_classes=str(c))
        run(RunConfig(dataset=dataset, epochs=epochs, fid=False, tsne_images=0, extra_figures=False, eval_images=200,
                      verbose=0, out=str(folder), **select, **CONFIGS[config_name]), overwrite=True)
    trained = time.perf_counter()
    if not (scored / "metrics.json").exists():
        score_novelty(folder, dataset, out=scored)
    tfk.backend.clear_session()
    epochs = json.loads((folder / "metrics.json").read_text())["seconds_per_epoch"]
    return scored, dict(train_and_evaluate_seconds=trained - start, epoch_seconds=sum(epochs),
                        score_seconds=time.perf_counter() - trained)


def _pct(v):
    return "" if v is None else f"{v:.1f}"


def tables(rows):
    """Markdown: one table per (dataset, protocol): AUROC % per class and mean, ours then published."""
    out = []
    for dataset in DATASETS:
        for protocol in PROTOCOLS:
            mine = [r for r in rows if r["data"] == dataset and r["protocol"] == protocol]
            if not mine:
                continue
            out += [f"### {dataset}, {protocol.replace('_', '-')} (AUROC %)", "",
                    "| method | score | " + " | ".join(str(c) for c in range(10)) + " | mean | min |",
                    "|---|---|" + "---|" * 12]
            for score in TABLE_SCORES:
                by_class = {int(r["class"]): 100 * float(r["auroc"]) for r in mine if r["score"] == score}
                if len(by_class) < 10:
                    continue
                vals = [by_class[c] for c in range(10)]
                out.append(f"| tfp_ae ({mine[0]['config']}) | `{score}` | " + " | ".join(_pct(v) for v in vals)
                           + f" | **{sum(vals) / 10:.1f}** | {min(vals):.1f} |")
            for method, per, mean, source in PUBLISHED[(dataset, protocol)]:
                cells = [_pct(v) for v in per] if per else [""] * 10
                low = f"{min(per):.1f}" if per else ""
                out.append(f"| {method} ({source}) | published | " + " | ".join(cells) + f" | {mean:.1f} | {low} |")
            out.append("")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/novelty")
    p.add_argument("--out", default="docs/results/novelty")
    p.add_argument("--config", default="faithful_sigmoid", choices=list(CONFIGS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--classes", nargs="+", type=int, default=list(range(10)))
    args = p.parse_args()
    from tqdm import tqdm
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(d, pr, c) for d in args.datasets for pr in args.protocols for c in args.classes]
    rows, timing = [], {}
    start = time.perf_counter()
    for dataset, protocol, c in tqdm(jobs, desc="novelty runs", unit="run"):
        scored, seconds = run_one(args.runs, args.config, dataset, protocol, c, args.epochs)
        timing[f"{dataset}_{protocol}_{c}"] = seconds
        m = json.loads((scored / "metrics.json").read_text())["novelty"]
        for score, v in m["overall"].items():
            rows.append(dict(config=args.config, data=dataset, protocol=protocol, **{"class": c},
                             class_name=_class_name(m, c, protocol),
                             score=score, auroc=v["auroc"], auprc=v["auprc"], fpr_at_95_tpr=v["fpr_at_95_tpr"]))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "tables.md").write_text(tables(rows) + "\n")
    total = time.perf_counter() - start
    (out / "timing.json").write_text(json.dumps(dict(config=args.config, epochs=args.epochs, wall_seconds=total,
                                                     runs=timing), indent=2))
    print(tables(rows))
    print(f"{len(jobs)} runs in {total / 60:.1f} min; wrote {out}/results.csv, tables.md, timing.json")


def _class_name(m, c, protocol):
    """The name of class `c` from a novelty result: a normal class (one-class) or a novel one (leave-one-out)."""
    if protocol == "one_class":
        return m["normal_classes"][str(c)]
    return next(iter(m["per_class"]))


if __name__ == "__main__":
    main()
