"""Sharp means and calibrated intervals (docs/results/uncertainty): the paper's Table 1 K = 1 MLP heads on
MNIST and Fashion-MNIST, trained with every loss each head takes (`nll`, the paper's; `beta_nll`,
Seitzer et al. 2022; `faithful`, Stirn et al. 2023; `mse` also with a sigmoid location), all with
`--dequantize`, `--recalibrate` (sigma-scaling on half of the last 10 % of the training split, which is then
not trained on, followed by the best refinement the head takes: `--recalibration-method pit` for the
normal heads (the joint ones through a copula) and logistic, `local` for the other heads with per-pixel or
low-rank scales; `method`)
and `--risk 0.1` (conformal risk control, on the other half of those images).

Each cell is one `tfp-ae train` in its own process, its folder kept in RUNS (an interrupted benchmark
resumes: finished cells are read, the unfinished one continues from its last epoch). Writes
`results.csv` (one row per cell) and prints the Markdown table of docs/results/uncertainty/README.md.

    python benchmarks/uncertainty.py --runs runs/uncertainty --out docs/results/uncertainty [--epochs 20]
        [--datasets mnist fashion_mnist] [--heads normal_diag logistic ...] [--localisation normal_diag]
"""
import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

from tfp_ae.heads import get_head

FAITHFUL = ["faithful", "faithful_sigmoid"]
HEADS = {  # head -> (extra flags, the losses it takes here)
    "mse": ([], ["nll", "nll_sigmoid"]),  # nll_sigmoid: the sigmoid location of faithful_sigmoid, by MSE
    "normal_diag": ([], ["nll", "beta_nll", *FAITHFUL]),
    # faithful with the paper's scale L diverges in its first epoch (docs/results/uncertainty); with the
    # precision factor it trains (faithful_precision: a linear dispersion readout, as the 256-unit one makes
    # the 307,720-output layer 79 M weights, 2 s a step here)
    "normal_full": ([], ["nll", "faithful_precision"]),
    "normal_lowrank": (["--rank", "4"], ["nll", *FAITHFUL]),
    "student_t_diag": (["--min-df", "3"], ["nll", *FAITHFUL]),
    "matrix_normal_full": ([], ["nll", *FAITHFUL]),
    "logistic": ([], ["nll", "beta_nll", *FAITHFUL]),
}
LOSS_FLAGS = {"faithful_sigmoid": ["--loss", "faithful", "--location-activation", "sigmoid"],  # else --loss LOSS
              "nll_sigmoid": ["--loss", "nll", "--location-activation", "sigmoid"],
              "faithful_precision": ["--loss", "faithful", "--parameterization", "precision", "--dispersion-units", "0"]}
RISK = "0.1"  # --risk of every head with intervals: conformal risk control at α = δ = 0.1


def method(head):
    """The --recalibration-method of a head's cells: pit where it takes it, else local where it takes it, else scale."""
    cls = get_head(head)
    return "pit" if cls.takes_pit_recalibration() else "local" if cls.takes_local_scales() else "scale"


COLUMNS = ["dataset", "head", "loss", "l2_percent", "bits_per_dim_before", "bits_per_dim_median_before", "bits_per_dim",
           "bits_per_dim_median", "bits_per_dim_finite", "crps", "calibration_error_before", "calibration_error",
           "calibration_error_by_std", "calibration_error_worst_std_quartile", "recalibration_method",
           "sigma_scale", "coverage_50", "coverage_90", "calibration_inputs", "conformal_lambda", "conformal_risk",
           "conformal_mean_width", "conformal_width_over_oracle", "conformal_splits_over_alpha", "seconds_per_epoch",
           "epochs", "run_dir"]


def cell(runs, dataset, head, loss, epochs):
    """Train (or read) one cell; returns its metrics.json as a dict."""
    flags, _ = HEADS[head]
    out = Path(runs) / f"{dataset}_{head}_{loss}"
    if not (out / "metrics.json").exists():
        argv = [sys.executable, "-m", "tfp_ae", "train", "--dataset", dataset, "--head", head,
                *LOSS_FLAGS.get(loss, ["--loss", loss]), "--epochs", str(epochs), "--dequantize",
                "--no-fid", "--tsne-images", "0", "--out", str(out), *flags]
        if head != "mse":
            argv += ["--recalibrate", "--recalibration-method", method(head), "--risk", RISK]
        print(" ".join(argv[2:]), flush=True)
        subprocess.run(argv, check=True)
    return json.loads((out / "metrics.json").read_text())


def before_scaling(run_dir):
    """Bits/dim (mean, median) of a run's test split with its sigma_scale set back to 1, for runs whose
    `recalibration` does not record them (written before it did)."""
    import numpy as np

    from tfp_ae.data import open_source
    from tfp_ae.predict import bits_per_dim_summary, split_log_probs
    from tfp_ae.train import load_model
    model, cfg = load_model(run_dir)
    model.head.sigma_scale.assign(1.0)
    source = open_source(cfg.dataset, **cfg.source_options)
    scores = split_log_probs(model, source.splits["test"], source.num_levels, cfg.seed, elbo=False, raw=False)
    s = bits_per_dim_summary(scores["log_prob_dequantized"], int(np.prod(source.image_shape)), source.num_levels)
    return dict(bits_per_dim_before=s["bits_per_dim"], bits_per_dim_median_before=s["bits_per_dim_median"])


def applied(rec):
    """What recalibration a run's model carries: `scale` (σ-scaling), its refinement (`local`, `pit`), both joined
    by `+`, or `none` (each refused by the guard or not asked for)."""
    refined = rec.get("method") not in (None, "scale") and (rec.get(rec["method"]) or {}).get("applied")
    return "+".join((["scale"] if rec.get("applied") else []) + ([rec["method"]] if refined else [])) or "none"


def row(dataset, head, loss, m):
    cal = m.get("calibration") or {}
    rec = m.get("recalibration") or {}
    quartiles = (cal.get("by_std") or {}).get("calibration_error")  # None in rows without a finite std
    if rec and "bits_per_dim_before" not in rec:
        rec = dict(rec, **before_scaling(m["config"]["out"]))
    cover = dict(zip(cal.get("levels", []), cal.get("coverage", []), strict=True))
    before = cal.get("before_recalibration") or {}
    conf = m.get("conformal") or {}
    return dict(dataset=dataset, head=head, loss=loss, l2_percent=m["l2_percent"],
                bits_per_dim_before=rec.get("bits_per_dim_before", m["bits_per_dim"]),
                bits_per_dim_median_before=rec.get("bits_per_dim_median_before", m.get("bits_per_dim_median")),
                bits_per_dim=m["bits_per_dim"],
                bits_per_dim_median=m.get("bits_per_dim_median"), bits_per_dim_finite=m.get("bits_per_dim_finite"),
                crps=m.get("crps"), calibration_error_before=before.get("calibration_error"),
                calibration_error=cal.get("calibration_error"), sigma_scale=cal.get("sigma_scale"),
                calibration_error_by_std=(cal.get("by_std") or {}).get("mean_calibration_error"),
                calibration_error_worst_std_quartile=max(quartiles) if quartiles else None,
                recalibration_method=applied(rec) if rec else None,
                coverage_50=cover.get(0.5), coverage_90=cover.get(0.9),
                calibration_inputs=cal.get("inputs", "dequantized" if m.get("dequantize") else "raw") if cal else None,
                conformal_lambda=conf.get("lambda"), conformal_risk=conf.get("risk"),
                conformal_mean_width=conf.get("mean_width"), conformal_width_over_oracle=conf.get("width_over_oracle"),
                conformal_splits_over_alpha=conf.get("splits_over_alpha"),
                seconds_per_epoch=statistics.median(m["seconds_per_epoch"]), epochs=len(m["seconds_per_epoch"]),
                run_dir=m.get("config", {}).get("out"))


def fmt(v, digits=3):
    return "-" if v in (None, "") else f"{float(v):.{digits}f}"


def table(rows):
    lines = ["| dataset | head | loss | L2 % | bits/dim (median) before recalibration | after | CRPS "
             "| cal. error before -> after | within std quartiles: mean / worst | recalibration | s "
             "| cover 50 % / 90 % | conformal λ | risk (α 0.1) | width (x oracle) | splits > α | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['head']} | {r['loss']} | {fmt(r['l2_percent'])} "
                     f"| {fmt(r['bits_per_dim_before'])} ({fmt(r['bits_per_dim_median_before'])}) "
                     f"| {fmt(r['bits_per_dim'])} ({fmt(r['bits_per_dim_median'])}) | {fmt(r['crps'], 4)} "
                     f"| {fmt(r['calibration_error_before'])} -> {fmt(r['calibration_error'])} "
                     f"| {fmt(r['calibration_error_by_std'])} / {fmt(r.get('calibration_error_worst_std_quartile'))} "
                     f"| {r.get('recalibration_method') or '-'} | {fmt(r['sigma_scale'])} "
                     f"| {fmt(r['coverage_50'])} / {fmt(r['coverage_90'])} | {fmt(r.get('conformal_lambda'))} "
                     f"| {fmt(r.get('conformal_risk'), 4)} | {fmt(r.get('conformal_mean_width'))} "
                     f"({fmt(r.get('conformal_width_over_oracle'), 2)}) | {fmt(r.get('conformal_splits_over_alpha'), 2)} "
                     f"| {fmt(r['seconds_per_epoch'], 2)} |")
    return "\n".join(lines)


def localisation(runs, heads, defect_images=600):
    """Pixel AUROC and PRO of every anomaly map (`tfp_ae.anomaly.pixel_maps`) of the Fashion-MNIST runs
    of `heads` with each loss, on the synthetic defects of docs/results/ood (Fashion-MNIST test
    images with patches of MNIST digits, seed 0). Rows: head, loss, map, pixel_auroc, pro."""
    from tfp_ae.anomaly import localisation_metrics, pixel_maps, synthetic_defects
    from tfp_ae.data import load_dataset
    from tfp_ae.train import load_model
    fashion, mnist = load_dataset("fashion_mnist"), load_dataset("mnist")
    x, masks = synthetic_defects(fashion.x_test[:defect_images], mnist.x_test[:1000], seed=0)
    rows = []
    for head in heads:
        for loss in HEADS[head][1]:
            run_dir = Path(runs) / f"fashion_mnist_{head}_{loss}"
            if not (run_dir / "metrics.json").exists():
                continue
            model, _ = load_model(run_dir)
            for name, v in localisation_metrics(pixel_maps(model, x), masks).items():
                rows.append(dict(head=head, loss=loss, map=name, pixel_auroc=round(v["pixel_auroc"], 4),
                                 pro=round(v["pro"], 4)))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/uncertainty")
    p.add_argument("--out", default="docs/results/uncertainty")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    p.add_argument("--losses", nargs="+", default=None, help="only these of each head's losses (default: all)")
    p.add_argument("--localisation", nargs="*", default=[], choices=list(HEADS),
                   help="also the anomaly maps' pixel AUROC and PRO on synthetic defects for these heads' "
                   "Fashion-MNIST runs, with each loss (localisation.csv)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.csv"
    rows = {}
    if path.exists():  # the cells of other --heads / --datasets stay in the table
        with open(path, newline="") as f:
            rows = {(r["dataset"], r["head"], r["loss"]): r for r in csv.DictReader(f)}
    for dataset in a.datasets:
        for head in a.heads:
            for loss in [lo for lo in HEADS[head][1] if a.losses is None or lo in a.losses]:
                rows[(dataset, head, loss)] = row(dataset, head, loss, cell(a.runs, dataset, head, loss, a.epochs))
                order = [(d, h, lo) for d in ("mnist", "fashion_mnist") for h in HEADS for lo in HEADS[h][1]]
                ordered = sorted(rows.values(), key=lambda r: order.index((r["dataset"], r["head"], r["loss"]))
                                 if (r["dataset"], r["head"], r["loss"]) in order else len(order))
                with open(path, "w", newline="") as f:  # after every cell: a partial table survives
                    w = csv.DictWriter(f, COLUMNS)
                    w.writeheader()
                    w.writerows(ordered)
    print(table(ordered))
    if a.localisation:
        loc = localisation(a.runs, a.localisation)
        with open(out / "localisation.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["head", "loss", "map", "pixel_auroc", "pro"])
            w.writeheader()
            w.writerows(loc)
        print("\n| head | loss | map | pixel AUROC | PRO |\n|---|---|---|---|---|")
        for r in loc:
            print(f"| {r['head']} | {r['loss']} | {r['map']} | {r['pixel_auroc']:.3f} | {r['pro']:.3f} |")


if __name__ == "__main__":
    main()
