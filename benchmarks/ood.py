"""OOD detection, defect detection and anomaly localisation benchmark (docs/results/ood).

1. Fashion-MNIST in / MNIST out and MNIST in / Fashion-MNIST out, for six models, with a background
   model per model for the likelihood ratio: the AUROC and FPR at 95 % TPR of every score
   (`tfp_ae.scoring.SCORES`, `min_p` the recommended one) -> results.csv.
2. Synthetic defects in Fashion-MNIST test images (`tfp_ae.anomaly.synthetic_defects`, seed 0, MNIST
   digits as patch donors), scored by every anomaly map -> localisation.csv (data fashion_mnist).
3. MVTec-AD-like folders cut from three texture photographs of scikit-image (`skimage.data.brick`,
   `grass`, `gravel`, at half resolution; `tfp_ae.anomaly.texture_defect_folder`: 64 x 64 crops, 2000
   training, 50 good and 50 of each defect kind in test), a `normal_diag` model each: localisation.csv
   (data = the texture) and detection.csv (image AUROC per score and defect type), the figures
   scores/texture_*/anomaly_maps.png.

Every model: the paper's MLP, `--dequantize`, EPOCHS epochs (texture models TEXTURE_EPOCHS); each
background: the same settings with `--perturb-rate 0.2` (Ren et al. 2019 chose the rate in [0.1, 0.3]
on validation OOD data; we fix it). Runs are kept in RUNS and reused (delete a folder to retrain it).

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
SCORE_COLUMNS = ("nll", "likelihood_ratio", "complexity", "typicality", "min_p", "fisher")
TEXTURES = ("brick", "grass", "gravel")  # skimage.data photographs; each one's patch donor is the next one
TEXTURE_EPOCHS = 100
PARTS = ("ood", "localisation", "textures")
DETECTION_COLUMNS = ("nll", "complexity", "min_p", "abs_error_max", "abs_error_top1", "neg_log_marginal_top1",
                     "neg_log_marginal_smooth_max", "neg_log_marginal_smooth_top1")


def train(runs, name, dataset, epochs, perturb=0.0, out=None):
    import tfp_ae  # noqa: F401
    from tfp_ae.config import RunConfig
    from tfp_ae.train import run
    out = Path(out or Path(runs) / (f"{dataset}_{name}" + ("_background" if perturb else "")))
    if not (out / "metrics.json").exists():
        cfg = RunConfig(dataset=dataset, epochs=epochs, dequantize=True, perturb_rate=perturb, fid=False,
                        tsne_images=0, extra_figures=False, eval_images=200, verbose=2, out=str(out), **MODELS[name])
        print(f"training {out}", flush=True)
        run(cfg)
    return out


def write_rows(path, rows, models):
    """Write `rows` to the CSV `path`, keeping its rows of models other than `models` (names, or
    (data, model) pairs for tables with a `data` column; so that a run
    with `--models maf` adds MAF's rows to the table instead of replacing it) if they have the same
    columns."""
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if set(r) == set(rows[0])
                    and r["model"] not in models and (r.get("data"), r["model"]) not in models]
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
    p.add_argument("--background-models", nargs="*", default=list(MODELS), choices=list(MODELS),
                   help="the models that get a background model (the likelihood_ratio column; the others: none)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="which tables to remake")
    p.add_argument("--print-tables", action="store_true", help="only print the README's tables from OUT's CSVs")
    args = p.parse_args()
    if args.print_tables:
        print_tables(Path(args.out))
        return

    from tfp_ae import plots
    from tfp_ae.anomaly import RECOMMENDED_MAP, localisation_metrics, pixel_maps, synthetic_defects
    from tfp_ae.data import load_dataset
    from tfp_ae.predict import point_estimates
    from tfp_ae.scoring import score_run
    from tfp_ae.train import load_model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models if "ood" in args.parts else []:
        for data, ood in PAIRS:
            model_dir = train(args.runs, name, data, args.epochs)
            bg_dir = train(args.runs, name, data, args.epochs, perturb=0.2) if name in args.background_models else None
            folder = out / "scores" / f"{data}_vs_{ood}_{name}"
            _, m = score_run(model_dir, data, ood, bg_dir and str(bg_dir), folder)
            bits = json.loads((model_dir / "metrics.json").read_text())["bits_per_dim"]
            rows.append(dict(model=name, in_dist=data, ood=ood, test_bits_per_dim=round(bits, 4),
                             **{f"auroc_{c}": round(m["scores"][c]["auroc"], 4) if c in m["scores"] else ""
                                for c in SCORE_COLUMNS},
                             **{f"fpr95_{c}": round(m["scores"][c]["fpr_at_95_tpr"], 4) if c in m["scores"] else ""
                                for c in SCORE_COLUMNS}))
            print(rows[-1], flush=True)
    if rows:
        write_rows(out / "results.csv", rows, args.models)
    # localisation: synthetic defects in Fashion-MNIST test images, MNIST digits as patch donors
    fashion, mnist = load_dataset("fashion_mnist"), load_dataset("mnist")
    x, masks = synthetic_defects(fashion.x_test[:args.defect_images], mnist.x_test[:1000], seed=0)
    loc_rows = []
    for name in args.models if "localisation" in args.parts else []:
        model = load_model(Path(args.runs) / f"fashion_mnist_{name}")[0]
        maps = pixel_maps(model, x)
        for map_name, v in localisation_metrics(maps, masks).items():
            loc_rows.append(dict(data="fashion_mnist", model=name, map=map_name, pixel_auroc=round(v["pixel_auroc"], 4),
                                 pro=round(v["pro"], 4)))
            print(loc_rows[-1], flush=True)
        if name == "normal_diag":
            k = 8
            fig = plots.anomaly_figure(x[:k], point_estimates(model, x[:k]), maps[RECOMMENDED_MAP][:k],
                                       masks[:k, ..., None].astype("float32"), [str(i) for i in range(k)],
                                       RECOMMENDED_MAP, 0)
            plots.save(fig, out / "defect_maps.png")
    det_rows = []
    for name, folder, run_dir in texture_runs(args.runs) if "textures" in args.parts else []:
        _, m = score_run(run_dir, str(folder), masks=str(folder / "ground_truth"), out=out / "scores" / f"texture_{name}")
        for map_name, v in m["localisation"].items():
            loc_rows.append(dict(data=name, model="normal_diag", map=map_name, pixel_auroc=round(v["pixel_auroc"], 4),
                                 pro=round(v["pro"], 4)))
        d = m["detection"]
        for c in DETECTION_COLUMNS:
            det_rows.append(dict(data=name, score=c, overall=round(d["overall"][c]["auroc"], 4),
                                 **{k: round(v[c]["auroc"], 4) for k, v in d["per_defect"].items()}))
            print(det_rows[-1], flush=True)
    if loc_rows:
        write_rows(out / "localisation.csv", loc_rows, sorted({(r["data"], r["model"]) for r in loc_rows}))
    if det_rows:
        write_rows(out / "detection.csv", [dict(model="normal_diag", **r) for r in det_rows], ["normal_diag"])
    print(f"wrote {out}/results.csv, localisation.csv, detection.csv")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v):
    return f"{float(v):.3f}" if v not in ("", None) else "-"


def print_tables(out):
    """The README's Markdown tables from results.csv, localisation.csv and detection.csv in `out`."""
    results = _read(out / "results.csv")
    for data, ood in PAIRS:
        print(f"\n{data} in, {ood} out (AUROC; FPR at 95 % TPR of min_p)\n")
        print("| model | test bits/dim | " + " | ".join(SCORE_COLUMNS) + " | FPR95 min_p |")
        print("|---" * (len(SCORE_COLUMNS) + 3) + "|")
        for r in results:
            if r["in_dist"] == data:
                print(f"| {r['model']} | {_fmt(r['test_bits_per_dim'])} | "
                      + " | ".join(_fmt(r[f"auroc_{c}"]) for c in SCORE_COLUMNS) + f" | {_fmt(r['fpr95_min_p'])} |")
    loc = _read(out / "localisation.csv")
    print("\nlocalisation (pixel AUROC / PRO)\n")
    maps = list(dict.fromkeys(r["map"] for r in loc))
    print("| data | model | " + " | ".join(maps) + " |")
    print("|---" * (len(maps) + 2) + "|")
    for key in dict.fromkeys((r["data"], r["model"]) for r in loc):
        cells = {r["map"]: f"{_fmt(r['pixel_auroc'])} / {_fmt(r['pro'])}" for r in loc if (r["data"], r["model"]) == key}
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells.get(m, "-") for m in maps) + " |")
    det = _read(out / "detection.csv")
    kinds = [k for k in det[0] if k not in ("model", "data", "score", "overall")]
    print("\ndetection (image AUROC, good against defective)\n")
    print("| texture | score | overall | " + " | ".join(kinds) + " |")
    print("|---" * (len(kinds) + 3) + "|")
    for r in det:
        print(f"| {r['data']} | {r['score']} | {_fmt(r['overall'])} | " + " | ".join(_fmt(r[k]) for k in kinds) + " |")


def texture_runs(runs):
    """(texture, folder, run folder) of each texture of `TEXTURES`: its MVTec-AD-like folder and a
    `normal_diag` model trained on it (kept in `runs`/textures and reused)."""
    import skimage.data
    import skimage.transform

    from tfp_ae.anomaly import texture_defect_folder

    def photo(name):
        return skimage.transform.rescale(getattr(skimage.data, name)() / 255.0, 0.5, anti_aliasing=True)
    for i, name in enumerate(TEXTURES):
        root = Path(runs) / "textures"
        folder = root / name
        if not (folder / "ground_truth").exists():
            texture_defect_folder(folder, photo(name), photo(TEXTURES[(i + 1) % len(TEXTURES)]))
        yield name, folder, train(runs, "normal_diag", str(folder), TEXTURE_EPOCHS, out=root / f"{name}_normal_diag")


if __name__ == "__main__":
    main()
