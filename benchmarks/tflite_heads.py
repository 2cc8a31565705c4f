"""Which heads' serving functions TensorFlow Lite converts (built-in ops) and reproduces to rtol 1e-5
(`tfp_ae.export.export_tflite`), for every head with K = 1 and, for mixable heads, K = 2, and the VAE;
untrained MLP models on 8 x 8 digits (conversion depends on the ops, not on the weights).

    python benchmarks/tflite_heads.py --out docs/benchmarks/tflite.md
"""
import argparse
import tempfile


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out")
    args = p.parse_args()
    import tfp_ae  # noqa: F401  (Keras 2)
    from tfp_ae.data import load_dataset
    from tfp_ae.export import export_tflite
    from tfp_ae.heads import HEADS
    from tfp_ae.models import build_model
    from tfp_ae.vae import build_vae

    d = load_dataset("digits")
    cases = [("ae", h, k) for h, cls in HEADS.items() for k in ([1, 2] if cls.mixable else [1])]
    cases += [("vae", "normal_diag", 1)]
    rows = ["| model | head | K | reconstruct | interval | log_prob |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, head, k in cases:
        model = build_vae(head, d.image_shape, k, latent_dim=4) if kind == "vae" else build_model(head, d.image_shape, k)
        with tempfile.TemporaryDirectory() as out:
            report = export_tflite(model, out, probe=d.x_test[:4])
        cells = [report.get(n, "n/a (no such signature)").replace("|", "/") for n in ("reconstruct", "interval", "log_prob")]
        rows.append(f"| {kind} | {head} | {k} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    text = "\n".join(["# TensorFlow Lite conversion of the serving functions, per head", "",
                      "`python benchmarks/tflite_heads.py`: built-in ops only; `converted` means the file "
                      "reproduces the SavedModel to rtol 1e-5 on 4 test images.", "", *rows, ""])
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
