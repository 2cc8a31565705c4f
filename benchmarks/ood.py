"""OOD detection and anomaly localisation benchmark (docs/results/ood): Fashion-MNIST in / MNIST out
and MNIST in / Fashion-MNIST out, for several heads, with a background model per model for the
likelihood ratio; then synthetic defects in Fashion-MNIST test images (`tfp_ae.scoring.synthetic_defects`,
seed 0, MNIST digits as patch donors) scored by every anomaly map against |x - point|.

Every model: the paper's MLP, `--dequantize`, EPOCHS epochs; its background: the same settings with
`--perturb-rate 0.2` (Ren et al. 2019 chose the rate in [0.1, 0.3] on validation OOD data; we fix it).
Runs are kept in RUNS and reused (delete a folder to retrain it).

    python benchmarks/ood.py --runs runs/ood --out docs/results/ood [--epochs 10] [--models normal_diag ...]
"""
import argparse
import csv
import json
from pathlib import Path

MODELS = {  # name -> RunConfig fields
    "normal_diag": dict(head="normal_diag"),
    "normal_diag_k10": dict(head="normal_diag", components=10),
    "continuous_bernoulli": dict(head="continuous_bernoulli"),
    "normal_lowrank": dict(head="normal_lowrank"),
    "vae": dict(model="vae", head="normal_diag"),
    "maf": dict(head="maf"),
}
PAIRS = [("fashion_mnist", "mnist"), ("mnist", "fashion_mnist")]
SCORE_COLUMNS = ("nll", "likelihood_ratio", "complexity", "typicality")


def train(runs, name, dataset, epochs, perturb=0.0):
    import tfp_ae  # noqa: F401
    from tfp_ae.config import RunConfig
    from tfp_ae.train import run
    out = Path(runs) / (f"{dataset}_{name}" + ("_background" if perturb else ""))
    if not (out / "metrics.json").exists():
        cfg = RunConfig(dataset=dataset, epochs=epochs, dequantize=True, perturb_rate=perturb, fid=False,
                        tsne_images=0, extra_figures=False, eval_images=200, verbose=2, out=str(out), **MODELS[name])
        print(f"training {out}", flush=True)
        run(cfg)
    return out


def write_rows(path, rows, models):
    """Write `rows` to the CSV `path`, keeping its rows of models other than `models` (so that a run
    with `--models maf` adds MAF's rows to the table instead of replacing it)."""
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r["model"] not in models]
    order = {m: i for i, m in enumerate(MODELS)}
    rows = sorted(kept + rows, key=lambda r: order.get(r["model"], len(order)))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/ood")
    p.add_argument("--out", default="docs/results/ood")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--defect-images", type=int, default=600)
    args = p.parse_args()

    from tfp_ae import plots
    from tfp_ae.data import load_dataset
    from tfp_ae.predict import point_estimates
    from tfp_ae.scoring import localisation_metrics, pixel_maps, score_run, synthetic_defects
    from tfp_ae.train import load_model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        for data, ood in PAIRS:
            model_dir = train(args.runs, name, data, args.epochs)
            bg_dir = train(args.runs, name, data, args.epochs, perturb=0.2)
            folder = out / "scores" / f"{data}_vs_{ood}_{name}"
            _, m = score_run(model_dir, data, ood, str(bg_dir), folder)
            bits = json.loads((model_dir / "metrics.json").read_text())["bits_per_dim"]
            rows.append(dict(model=name, in_dist=data, ood=ood, test_bits_per_dim=round(bits, 4),
                             **{f"auroc_{c}": round(m["scores"][c]["auroc"], 4) for c in SCORE_COLUMNS},
                             **{f"fpr95_{c}": round(m["scores"][c]["fpr_at_95_tpr"], 4) for c in SCORE_COLUMNS}))
            print(rows[-1], flush=True)
    write_rows(out / "results.csv", rows, args.models)
    # localisation: synthetic defects in Fashion-MNIST test images, MNIST digits as patch donors
    fashion, mnist = load_dataset("fashion_mnist"), load_dataset("mnist")
    x, masks = synthetic_defects(fashion.x_test[:args.defect_images], mnist.x_test[:1000], seed=0)
    loc_rows = []
    for name in args.models:
        model = load_model(Path(args.runs) / f"fashion_mnist_{name}")[0]
        maps = pixel_maps(model, x)
        for map_name, v in localisation_metrics(maps, masks).items():
            loc_rows.append(dict(model=name, map=map_name, pixel_auroc=round(v["pixel_auroc"], 4), pro=round(v["pro"], 4)))
            print(loc_rows[-1], flush=True)
        if name == "normal_diag":
            k = 6
            fig = plots.reconstruction_figure(x[:k], point_estimates(model, x[:k]), maps["neg_log_marginal"][:k],
                                              title="Fashion-MNIST with synthetic defects: point estimate and "
                                                    "-log p(x_pixel | input)", label="-log marginal (nats)")
            plots.save(fig, out / "defect_maps.png")
    write_rows(out / "localisation.csv", loc_rows, args.models)
    print(f"wrote {out}/results.csv, localisation.csv")


if __name__ == "__main__":
    main()
