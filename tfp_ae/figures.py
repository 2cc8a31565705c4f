"""The paper's figures from trained models (Ciobanu, Figures 1-4) and the augmentation idea.

- Figures 1/2 (`heads_figure`): for several heads side by side, rows of input, point estimate and
  per-pixel uncertainty map (90 % interval width by default, or standard deviation or variance),
  on one colour scale with colour bars.
- Figure 3 (`latent_figure`): decoded samples from the latent space, samples of the output
  distribution given an input, and a t-SNE of test latents coloured by label.
- Figure 4 (`components_figure`): for a mixture head, every component's mean (mode for t heads)
  with its mixture log-density, sorted; `augment` keeps the component images whose log-density
  passes a threshold (Ciobanu, Section 5: mixture components as data augmentation).

Every function returns a matplotlib `Figure` (or arrays); `plots.save` writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfp_ae import plots
from tfp_ae.data import check_images
from tfp_ae.errors import InputError
from tfp_ae.heads import SAMPLE_SEED
from tfp_ae.predict import component_points, latents, point_estimates, uncertainty_maps

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tfp_ae.data.arrays import Dataset
    from tfp_ae.models import ProbabilisticModel

FULL_COVARIANCE_MAX = 512  # latent sizes up to this get a full-covariance Gaussian fit


def model_label_parts(model: ProbabilisticModel) -> list[str]:
    """`[HEAD, K=k, *options, LOSS, (ACTIVATION location), (ARCH)]`: what names a model, options only where
    not their defaults, the location's activation only where not linear (`model_label` joins them)."""
    head = model.head
    kind = "VAE" if model.kind == "vae" else model.build_args["arch"]
    options = [f"{k}={v:g}" if isinstance(v, (int, float)) else str(v)
               for k, v in head.option_values.items() if v != head.options[k]]
    activation = model.build_args.get("location_activation", "linear")
    return [head.head_name, f"K={head.num_components}", *options, head.training_loss,
            *([f"({activation} location)"] if activation != "linear" else []), f"({kind})"]


def model_label(model: ProbabilisticModel) -> str:
    """`HEAD K=k [options] [loss [(ACTIVATION location)]] (arch)`: how figures name a model (the loss where
    it is not `nll`, the location's activation where it is not linear)."""
    return " ".join(p for p in model_label_parts(model) if p != "nll")


def _uncertainty_note(head, kind):
    if kind in ("interval", "conformal") and not head.has_variance:
        return "the MSE autoencoder models no spread"
    if kind == "interval":
        return "part of the pixel range [0, 1] inside each pixel's 5-95 % quantile range"
    if kind == "conformal":
        lam = float(head.conformal_lambda.numpy()) * np.unique(head.conformal_lambda_map.numpy())
        strata = np.unique(head.conformal_strata_lambdas.numpy())
        how = (f"its group's λ ({lam.min():.3g}-{lam.max():.3g}; K-RCPS)" if len(lam) > 1 else
               f"its image's stratum's λ ({strata.min():.3g}-{strata.max():.3g})" if len(strata) > 1 else
               f"λ = {lam[0] * strata[0]:.3g}")
        return f"part of the pixel range [0, 1] inside each pixel's 90 % interval scaled by {how} (conformal risk control)"
    return head.variance_note


def _scale(uncertainty):
    """The fixed colour range of `interval` maps (a fraction of the pixel range); None: from the data."""
    return (0.0, 1.0) if uncertainty in ("interval", "conformal") else None


def reconstruction_figure(model: ProbabilisticModel, images: np.ndarray, uncertainty: str = "interval") -> Figure:
    """Figures 1/2 for one model: inputs `[N, H, W, C]`, their point estimates and per-pixel
    uncertainty maps (`uncertainty`: `interval`, `conformal`, `std` or `variance`, see
    `tfp_ae.predict.uncertainty_maps`) with a colour bar."""
    return plots.reconstruction_figure(images, point_estimates(model, images),
                                       uncertainty_maps(model, images, uncertainty), title=model_label(model),
                                       note=_uncertainty_note(model.head, uncertainty),
                                       label=plots.UNCERTAINTY_LABELS[uncertainty], scale=_scale(uncertainty))


def heads_figure(models: list[ProbabilisticModel], images: np.ndarray, title: str = "",
                 uncertainty: str = "interval") -> Figure:
    """Figures 1 and 2: one input row, then for each model a point-estimate row and an
    uncertainty row (`uncertainty` as in `reconstruction_figure`). All uncertainty rows share one
    colour scale (0 to 1 for `interval`, else `plots.map_scale` of all maps), so the maps compare
    across heads; each has its colour bar. Rows are named by what differs between the models
    (`model_label_parts`); what they all share is said once, after `title`.

    Args:
      models: trained models (any heads; a `mse` head gets a blank row with its note).
      images: `[N, H, W, C]` in [0, 1], a handful (N ~ 8).
    Returns: a `Figure`.
    """
    maps = [uncertainty_maps(m, images, uncertainty) for m in models]
    scale = _scale(uncertainty) or plots.map_scale(*maps)
    parts = [model_label_parts(m) for m in models]
    shared = [p for p in parts[0] if len(models) > 1 and all(p in q for q in parts)]  # said once, in the title
    rows = [("input", images, None)]
    for m, u, q in zip(models, maps, parts):
        name = " ".join(p for p in q if p not in shared) or model_label(m)
        rows += [(f"{name}\npoint", point_estimates(m, images), None),
                 (f"{name}\n{plots.UNCERTAINTY_LABELS[uncertainty]}", u, _uncertainty_note(m.head, uncertainty), scale)]
    return plots.image_rows(rows, title=f"{title} ({' '.join(shared)})" if shared else title)


LATENT_PRIORS = ("standard", "fitted")


def latent_samples(model: ProbabilisticModel, num_images: int, reference_images: np.ndarray | None = None, seed: int = 0,
                   prior: str = "standard") -> np.ndarray:
    """Point estimates of p(x|z) for sampled codes z, `[num_images, H, W, C]` in [0, 1].

    `prior`: `standard` draws z ~ N(0, I) (the paper's Figure 3, for any model; a VAE's prior).
    `fitted` (autoencoders; a VAE uses its prior): an autoencoder's ReLU codes are not N(0, I),
    so z ~ N(mean, covariance) fitted to the codes of `reference_images` (required then); the
    covariance is diagonal for codes of more than `FULL_COVARIANCE_MAX` numbers (the faithful
    `cnn`'s 4x4x320 feature maps), full otherwise.
    Raises: ValueError for an unknown `prior`, or `fitted` for an autoencoder without reference images.
    """
    if prior not in LATENT_PRIORS:
        raise InputError(f"unknown prior {prior!r}; valid: {', '.join(LATENT_PRIORS)}")
    if prior == "standard" or model.trained_prior:
        return model.sample_images(num_images, seed=(seed, 1)).numpy()
    if reference_images is None or len(reference_images) < 2:
        raise InputError("an autoencoder has no prior: pass reference_images (>= 2) to fit a Gaussian to "
                         "their codes, or use prior='standard'")
    rng = np.random.default_rng(seed)
    codes = latents(model, reference_images)
    if codes.shape[1] <= FULL_COVARIANCE_MAX:
        z = rng.multivariate_normal(codes.mean(0), np.cov(codes, rowvar=False), size=num_images)
    else:
        z = rng.normal(codes.mean(0), codes.std(0), size=(num_images, codes.shape[1]))
    z = z.astype(np.float32).reshape(num_images, *model.code_shape)
    return model.head.point_estimate(model.decode(z)).numpy()


def output_samples(model: ProbabilisticModel, images: np.ndarray, num_samples: int = 5,
                   seed: int = SAMPLE_SEED) -> np.ndarray:
    """Samples of the output distribution p(x | input), clipped to [0, 1] for display,
    `[num_samples, N, H, W, C]` for images `[N, H, W, C]`."""
    images = check_images(images, "images", image_shape=model.image_shape)
    return np.clip(model.head.sample(model(images, training=False), num_samples, seed=seed).numpy(), 0, 1)


def tsne(codes: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """2-D t-SNE embedding `[N, 2]` of codes `[N, L]` (scikit-learn, PCA initialisation; codes
    wider than 50 are first reduced to 50 principal components, the usual practice).

    Returns None where t-SNE is undefined: codes that are all the same (a collapsed encoder, e.g.
    every ReLU latent dead) or not finite. scikit-learn divides by their zero spread and its
    Barnes-Hut step then crashes the whole process (a segmentation fault, not an exception).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    codes = np.asarray(codes)
    if not np.isfinite(codes).all() or not np.ptp(codes, axis=0).any():
        return None
    if codes.shape[1] > 50 and len(codes) > 50:
        codes = PCA(50, random_state=seed).fit_transform(codes)
    perplexity = min(30.0, (len(codes) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(codes)


def latent_figure(model: ProbabilisticModel, data: Dataset, num_samples: int = 16, num_inputs: int = 4,
                  num_output_samples: int = 5, tsne_images: int = 1000, seed: int = 0) -> Figure:
    """Figure 3 for one model: (a) decoded latent samples (see `latent_samples`; an autoencoder's
    first half from N(0, I) as in the paper, the rest from the Gaussian fit), (b) inputs with
    samples of their output distribution, (c) t-SNE of the first `tsne_images` test latents
    coloured by label and named by `data.class_names` (skipped when 0 or when the data has no labels).

    Args: `data`: a `tfp_ae.data.Dataset` (test split used). Returns: a `Figure`.
    """
    x = data.x_test
    if model.trained_prior:
        samples, prior = latent_samples(model, num_samples, seed=seed), "z ~ N(0, I), its prior"
    else:  # the paper's N(0, I) codes, and codes like the encoder's
        half = num_samples // 2
        samples = np.concatenate([latent_samples(model, half, seed=seed),
                                  latent_samples(model, num_samples - half, x[:1000], seed=seed, prior="fitted")])
        prior = f"first {half}: z ~ N(0, I) (the paper); rest: z ~ Gaussian fit to test codes"
    inputs = x[:num_inputs]
    outs = output_samples(model, inputs, num_output_samples)
    emb = labels = None
    note = plots.NO_EMBEDDING
    if tsne_images and data.y_test is not None and len(x) > 5:
        n = min(tsne_images, len(x))
        emb, labels = tsne(latents(model, x[:n]), seed=seed), data.y_test[:n]
        if emb is None:
            note = f"no t-SNE: the {n} test latents are all equal or not finite"
    return plots.latent_panels(samples, inputs, outs, emb, labels, title=model_label(model), prior_note=prior,
                               embedding_note=note, class_names=data.class_names)


def components_figure(model: ProbabilisticModel, images: np.ndarray) -> Figure:
    """Figure 4: for each input `[N, H, W, C]`, its K component means (modes for t heads) sorted
    by the mixture log-density at them (nats, printed above each image)."""
    pts, lps = component_points(model, images)
    order = np.argsort(-lps, axis=1)
    pts = np.take_along_axis(pts, order[..., None, None, None], axis=1)
    lps = np.take_along_axis(lps, order, axis=1)
    return plots.components_grid(images, pts, lps, title=f"{model_label(model)}: components by log p (nats)")


def augment(model: ProbabilisticModel, images: np.ndarray, labels: np.ndarray | None = None,
            min_log_prob: float | None = None, batch_size: int = 200) -> dict[str, np.ndarray]:
    """The paper's augmentation: component images of a mixture head whose mixture log-density
    is at least `min_log_prob` (nats; None keeps all).

    Args:
      images: `[N, H, W, C]` in [0, 1]; labels: `[N]` or None.
    Returns: dict with `images` `[M, H, W, C]`, `labels` `[M]` (the source image's; -1 without
      labels), `log_prob` `[M]`, `source_index` `[M]`, `component` `[M]`, `all_log_prob` `[N, K]`.
    Raises: ValueError for K = 1 or bad images.
    """
    pts, lps = component_points(model, images, batch_size)
    keep = np.ones(lps.shape, bool) if min_log_prob is None else lps >= min_log_prob
    src, comp = np.nonzero(keep)
    lab = np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    return dict(images=pts[src, comp], labels=lab[src], log_prob=lps[src, comp], source_index=src,
                component=comp, all_log_prob=lps)


def save_run_figures(model: ProbabilisticModel, data, out: Path, uncertainty: str, calibration: dict | None,
                     extra: bool = True, tsne_images: int = 1000, seed: int = 0) -> None:
    """The figures of a run folder `out` (`tfp_ae.train.run`): `reconstructions.png` (Figures 1/2:
    input, point estimate, the `uncertainty` map of the first 10 test images of `data`, a
    `tfp_ae.data.Dataset`), `calibration.png` (when `calibration`, `metrics.json`'s, is given) and with
    `extra` `samples.png` (Figure 3: latent samples, output samples, t-SNE of `tsne_images`) and, for
    K > 1, `components.png` (Figure 4)."""
    plots.save(reconstruction_figure(model, data.x_test[:10], uncertainty), out / "reconstructions.png")
    if extra:
        plots.save(latent_figure(model, data, tsne_images=tsne_images, seed=seed), out / "samples.png")
    if calibration:
        plots.save(plots.calibration_figure(calibration, title=model_label(model)), out / "calibration.png")
    if extra and model.head.num_components > 1:
        plots.save(components_figure(model, data.x_test[:6]), out / "components.png")
