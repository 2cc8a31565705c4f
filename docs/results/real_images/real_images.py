"""Real images (issue 51): `mlp`, `cnn_dense` and `conv` with `normal_diag` on textures and photographs.

1. Textures: three photographs of scikit-image (`brick`, `grass`, `gravel`, 512 x 512 grey), each an
   MVTec-AD-like folder of 128 x 128 crops (`tfp_ae.anomaly.texture_defect_folder`: TRAIN training crops
   from the top three quarters, 50 good and 50 of each synthetic defect kind from the bottom quarter, the
   patches pasted from the next texture). Each model is trained on the good crops and scored with the
   masks (`tfp-ae score`): pixel AUROC and PRO of every anomaly map, image AUROC of every score.
2. Photographs: scikit-learn's two sample photos (427 x 640 colour), 128 x 128 crops (train from the
   left three quarters of each, test from the right quarter), trained at 128 and resized to 64.

Every run: `tfp-ae train --dequantize --latent-dim 100 --batch-size 32 --epochs EPOCHS` in its own process (its peak RSS
measured by /usr/bin/time), `--loss nll` and `--loss faithful`; metrics.json gives bits/dim, L2, SSIM
and seconds per epoch. `conv` trained by NLL uses Adam at CONV_NLL_LEARNING_RATE (at the default 1e-3
its loss jumped up by 32,000 nats in epoch 8 on brick and did not recover). Runs are kept in RUNS and
reused (delete a folder to retrain it); the CSVs keep the rows of runs not named by this invocation.

    python docs/results/real_images/real_images.py --runs runs/real_images --out docs/results/real_images
    python docs/results/real_images/real_images.py --archs conv --losses nll --parts textures   # a subset
"""
import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TEXTURES = ("brick", "grass", "gravel")
SIZE, TRAIN, GOOD, PER_DEFECT = 128, 4000, 50, 50
PHOTO_TRAIN, PHOTO_TEST = 2000, 200
PHOTO_SIZES = (64, 128)  # the photo crops are cut at 128 and trained at each size (64: resized by --image-size)
ARCHS, LOSSES = ("mlp", "cnn_dense", "conv"), ("nll", "faithful")
CONV_NLL_LEARNING_RATE = 3e-4
RUN = ("data", "arch", "loss")  # the columns that name a run in the CSVs
DETECTION = ("nll", "min_p", "neg_log_marginal_smooth_max", "abs_error_max", "ssim_smooth_max")


def texture_folder(root, i, name):
    import skimage.data

    from tfp_ae.anomaly import texture_defect_folder
    folder = Path(root) / "data" / name
    if not (folder / "ground_truth").exists():
        donor = TEXTURES[(i + 1) % len(TEXTURES)]
        texture_defect_folder(folder, getattr(skimage.data, name)() / 255.0, getattr(skimage.data, donor)() / 255.0,
                              size=SIZE, train=TRAIN, good=GOOD, per_defect=PER_DEFECT, seed=i)
    return folder


def photo_folder(root):
    """128 x 128 colour crops of the two sample photographs, flipped at random: train/ from the left three
    quarters of each photo, test/ from its right quarter (no overlap)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    folder = Path(root) / "data" / "photos"
    if (folder / "test").exists():
        return folder
    rng = np.random.default_rng(0)
    for split, n in (("train", PHOTO_TRAIN), ("test", PHOTO_TEST)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            photo = load_sample_images().images[j % 2]
            h, w = photo.shape[:2]
            cut = w * 3 // 4
            left, right = (0, cut - SIZE) if split == "train" else (cut, w - SIZE)
            top, x0 = rng.integers(0, h - SIZE + 1), rng.integers(left, right + 1)
            crop = photo[top:top + SIZE, x0:x0 + SIZE]
            Image.fromarray(crop[:, ::-1] if rng.random() < 0.5 else crop).save(folder / split / f"{j:05d}.png")
    return folder


def train(runs, data, arch, loss, epochs, extra=()):
    """The run folder of one model (trained unless it has metrics.json) and its peak RSS in GiB."""
    out = Path(runs) / f"{Path(data).name}{'_'.join([''] + list(extra)).replace('--', '')}_{arch}_{loss}"
    rss_file = out.parent / f"{out.name}.rss"
    if not (out / "metrics.json").exists():
        args = ["train", "--dataset", str(data), "--arch", arch, "--head", "normal_diag", "--loss", loss,
                "--dequantize", "--latent-dim", "100", "--epochs", str(epochs), "--batch-size", "32", "--eval-images", "200",
                "--no-fid",
                "--tsne-images", "0", "--no-extra-figures", "--out", str(out), *extra]  # an unfinished run resumes
        if loss == "faithful":
            args += ["--location-activation", "sigmoid"]
        if arch == "conv" and loss == "nll":  # at 1e-3 the brick model's NLL jumped from -13,693 to +18,871 nats
            args += ["--learning-rate", str(CONV_NLL_LEARNING_RATE)]  # in epoch 8 and never recovered (L2 12.7 %)
        print("training", out, flush=True)
        r = subprocess.run(["/usr/bin/time", "-f", "RSS %M", sys.executable, "-m", "tfp_ae", *args],
                           capture_output=True, text=True)
        rss = [ln for ln in r.stderr.splitlines() if ln.startswith("RSS ")]
        if r.returncode:
            raise SystemExit(f"{out}: {r.stderr[-2000:]}")
        rss_file.write_text(str(int(rss[-1].split()[1]) * 1024 / 2 ** 30))
    return out, float(rss_file.read_text()) if rss_file.exists() else float("nan")


def row(data, arch, loss, run_dir, rss, good_bits=None):
    """One line of results.csv: `bits_per_dim` is the run's (its whole test folder, three quarters of a
    texture's defective), `bits_per_dim_good` the good test crops' alone (`good_bits`, from `tfp-ae score`),
    the density's fit; None: every test image is good (the photos), the run's own."""
    m = json.loads((run_dir / "metrics.json").read_text())
    return dict(data=data, arch=arch, loss=loss, params=m["num_params"], bits_per_dim=round(m["bits_per_dim"], 4),
                bits_per_dim_good=round(m["bits_per_dim"] if good_bits is None else good_bits, 4),
                l2_percent=round(m["l2_percent"], 3), ssim=round(m["ssim"], 4),
                seconds_per_epoch=round(float(np.median(m["seconds_per_epoch"])), 1), peak_rss_gib=round(rss, 2),
                train_images=m["train_images"])


def write(path, rows, key):
    """Write `rows` to the CSV `path`, keeping its rows of other runs (those whose `key` columns match none of
    `rows`): a subset rerun (`--textures gravel`) adds to the table; a column an old row lacks is nan."""
    new = {tuple(r[k] for k in key) for r in rows}
    kept = [r for r in read(path) if tuple(r[k] for k in key) not in new] if Path(path).exists() else []
    columns = list(dict.fromkeys([*rows[0], *(c for r in kept for c in r)]))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, restval="nan")
        w.writeheader()
        w.writerows(kept + rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/real_images")
    p.add_argument("--out", default=str(Path(__file__).parent))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--textures", nargs="+", default=list(TEXTURES), choices=TEXTURES)
    p.add_argument("--parts", nargs="+", default=["textures", "photos"], choices=["textures", "photos"])
    p.add_argument("--photo-sizes", nargs="+", type=int, default=list(PHOTO_SIZES), choices=PHOTO_SIZES)
    args = p.parse_args()

    from tfp_ae.scoring import score_run
    out = Path(args.out)
    rows, loc_rows, det_rows = [], [], []
    for i, name in enumerate(TEXTURES if "textures" in args.parts else ()):
        if name not in args.textures:
            continue
        folder = texture_folder(args.runs, i, name)
        for arch in args.archs:
            for loss in args.losses:
                run_dir, rss = train(args.runs, folder, arch, loss, args.epochs)
                scores = Path(args.runs) / "scores" / f"{name}_{arch}_{loss}"
                if (scores / "metrics.json").exists():  # scored before: reused
                    m = json.loads((scores / "metrics.json").read_text())
                else:
                    _, m = score_run(run_dir, str(folder), masks=str(folder / "ground_truth"), out=scores)
                good = m.get("bits_per_dim_by_label", {}).get("good", float("nan"))  # nan: scored by an older version
                rows.append(row(name, arch, loss, run_dir, rss, good))
                for map_name, v in m["localisation"].items():
                    loc_rows.append(dict(data=name, arch=arch, loss=loss, map=map_name,
                                         pixel_auroc=round(v["pixel_auroc"], 4), pro=round(v["pro"], 4)))
                d = m["detection"]["overall"]
                det_rows.append(dict(data=name, arch=arch, loss=loss,
                                     **{c: round(d[c]["auroc"], 4) for c in DETECTION if c in d}))
                print(rows[-1], det_rows[-1], flush=True)
    if "photos" in args.parts:
        folder = photo_folder(args.runs)
        for size in args.photo_sizes:
            extra = ("--image-size", str(size)) if size != SIZE else ()
            for arch in args.archs:
                for loss in args.losses:
                    run_dir, rss = train(args.runs, folder, arch, loss, args.epochs, extra)
                    rows.append(row(f"photos_{size}", arch, loss, run_dir, rss))
                    print(rows[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for name, r, key in (("results.csv", rows, RUN), ("localisation.csv", loc_rows, RUN + ("map",)),
                         ("detection.csv", det_rows, RUN)):
        if r:
            write(out / name, r, key)
    (out / "tables.md").write_text(markdown(out))
    print(f"wrote {out}: results.csv, localisation.csv, detection.csv, tables.md")


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def markdown(out):
    """tables.md: every run's likelihood, reconstruction and cost; the localisation of the recommended
    map, `abs_error_smooth` and `ssim_smooth`; the image AUROC of each detection score."""
    lines = ["# Real images: the measured tables", "",
             "Written by `real_images.py` from results.csv, localisation.csv and detection.csv.", "",
             "| data | arch | loss | params | bits/dim (all test) | bits/dim (good test) | L2 % | SSIM | s/epoch "
             "| peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['arch']} | {r['loss']} | {int(r['params']):,} | {r['bits_per_dim']} | "
              f"{r.get('bits_per_dim_good', 'nan')} | "
              f"{r['l2_percent']} | {r['ssim']} | {r['seconds_per_epoch']} | {r['peak_rss_gib']} |"
              for r in read(Path(out) / "results.csv")]
    if (Path(out) / "localisation.csv").exists():
        maps = ("neg_log_marginal_smooth", "abs_error_smooth", "ssim_smooth", "neg_log_marginal", "abs_error", "ssim")
        lines += ["", "Pixel AUROC / PRO of each map (`neg_log_marginal_smooth` is the recommended one):", "",
                  "| texture | arch | loss | " + " | ".join(maps) + " |", "|---|---|---|" + "---|" * len(maps)]
        loc = {(r["data"], r["arch"], r["loss"], r["map"]): r for r in read(Path(out) / "localisation.csv")}
        for key in dict.fromkeys(k[:3] for k in loc):
            cells = [f"{loc[(*key, m)]['pixel_auroc']} / {loc[(*key, m)]['pro']}" if (*key, m) in loc else "" for m in maps]
            lines.append(f"| {' | '.join(key)} | " + " | ".join(cells) + " |")
    if (Path(out) / "detection.csv").exists():
        lines += ["", "Image AUROC (50 good against 150 defective test images):", "",
                  "| texture | arch | loss | " + " | ".join(DETECTION) + " |", "|---|---|---|" + "---|" * len(DETECTION)]
        lines += [f"| {r['data']} | {r['arch']} | {r['loss']} | " + " | ".join(r.get(c, "") for c in DETECTION) + " |"
                  for r in read(Path(out) / "detection.csv")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
