"""Figures: functions return a matplotlib `Figure` built without pyplot (no global state, no
backend switch: a notebook shows the returned figure, `save` writes it)."""
from __future__ import annotations

import os
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

UNCERTAINTY_CMAP = "viridis"  # perceptually uniform, readable in grey and by colour-blind readers
HISTOGRAM_COLUMNS = 3  # score_histograms: panels a row (a grid, readable at page scale)
UNCERTAINTY_LABELS = {"interval": "90 % interval width", "conformal": "risk-controlled interval width",
                      "std": "standard deviation", "variance": "variance"}


def subplots(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A matplotlib `Figure` (constrained layout, no pyplot state) and its `[rows, cols]` axes."""
    fig = Figure(figsize=figsize, layout="constrained")  # leaves room for titles and colour bars
    return fig, fig.subplots(rows, cols, squeeze=False)


def map_scale(*maps) -> tuple[float, float]:
    """(0, vmax) shared by uncertainty maps: vmax is the 99th percentile of their finite values
    (one extreme pixel does not flatten the rest; larger values show in the top colour), 1 when
    none is finite."""
    finite = np.concatenate([np.asarray(m, np.float64)[np.isfinite(m)].ravel() for m in maps])
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    return 0.0, vmax if vmax > 0 else 1.0


def reconstruction_figure(images: np.ndarray, point: np.ndarray, uncertainty: np.ndarray | None = None, title: str = "",
                          note: str | None = None, label: str = UNCERTAINTY_LABELS["interval"],
                          scale: float | None = None) -> Figure:
    """Rows: inputs, point estimates and (if given) per-pixel uncertainty maps with a colour bar.

    Args:
      images: `[N, H, W, C]` in [0, 1] (grey for C = 1, colour for C = 3).
      point: their point estimates, the same shape.
      uncertainty: `[N, H, W, C]` (pixel units, e.g. `tfp_ae.predict.uncertainty_maps`) or None;
        drawn in `UNCERTAINTY_CMAP` (mean over channels for colour images); NaN pixels are blank.
      note: caveat printed under the uncertainty row.
      label: the uncertainty row's name.
      scale: its colour range (vmin, vmax), default `map_scale(uncertainty)`.
    """
    rows = [("input", images, None), ("point estimate", point, None)]
    if uncertainty is not None:
        rows.append((label, uncertainty, note, scale or map_scale(uncertainty)))
    return image_rows(rows, title)


def _show(ax, img, title=None, scale=None):
    """Draw one image `[H, W, C]`: pixels in [0, 1] (grey for C = 1, colour for C = 3, the
    channel mean otherwise) or, with `scale` = (vmin, vmax), an uncertainty map (channel mean) in
    `UNCERTAINTY_CMAP`. All-NaN maps read "none". Returns the `AxesImage`."""
    img = np.asarray(img, np.float32)
    if scale is not None:
        img = img.mean(-1)
        shown = ax.imshow(img, cmap=UNCERTAINTY_CMAP, vmin=scale[0], vmax=scale[1])
        if np.all(np.isnan(img)):
            ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    elif img.shape[-1] == 3:
        shown = ax.imshow(np.clip(img, 0, 1))
    else:
        shown = ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=7)
    return shown


ROW_LABEL_CHARS = 18  # a row label (left of its row, written across) wraps to this many characters a line


def _fit_row_label(name):
    """Each line of a row label wrapped to `ROW_LABEL_CHARS`, so that the label, written across to the left
    of its row, stays a narrow column."""
    return "\n".join(textwrap.fill(line, ROW_LABEL_CHARS) for line in str(name).split("\n"))


def image_rows(rows: list[tuple], title: str = "") -> Figure:
    """Rows of images: `rows` is a list of `(name, images [N, H, W, C], note or None)` for images
    in [0, 1], or `(name, maps [N, H, W, C], note or None, (vmin, vmax))` for uncertainty maps,
    which get a colour bar at the row's end (give rows the same scale to compare them); a row's
    note is printed under it."""
    n = len(rows[0][1])
    fig, axes = subplots(len(rows), n, (1.1 * n + 2.4, 1.3 * len(rows) + 0.6))
    for r, (name, batch, note, *scale) in enumerate(rows):
        scale = scale[0] if scale else None
        for i in range(n):
            shown = _show(axes[r, i], batch[i], scale=scale)
        if scale is not None:
            fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01).ax.tick_params(labelsize=6)
        axes[r, 0].set_ylabel(_fit_row_label(name), fontsize=8, rotation=0, ha="right", va="center")
        if note:
            axes[r, n // 2].set_xlabel(note, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def components_grid(images: np.ndarray, points: np.ndarray, log_probs: np.ndarray, title: str = "") -> Figure:
    """Figure 4 layout: per row an input `[H, W, C]` then its K component images `points`
    `[N, K, H, W, C]` titled with `log_probs` `[N, K]` (nats)."""
    n, k = log_probs.shape
    fig, axes = subplots(n, k + 1, (1.1 * (k + 1) + 0.3, 1.25 * n + 0.6))
    for r in range(n):
        _show(axes[r, 0], images[r], "input")
        for j in range(k):
            _show(axes[r, j + 1], points[r, j], f"{log_probs[r, j]:.0f}")
    fig.suptitle(textwrap.fill(title, 25 * (k + 1) // 2), fontsize=9)
    return fig


NO_EMBEDDING = "no t-SNE (no labels or disabled)"


def latent_panels(samples: np.ndarray, inputs: np.ndarray, outputs: np.ndarray, embedding: np.ndarray | None = None,
                  labels: np.ndarray | None = None, title: str = "", prior_note: str = "",
                  embedding_note: str = NO_EMBEDDING, class_names: list[str] | None = None) -> Figure:
    """Figure 3 layout: (a) decoded latent samples `[S, H, W, C]`, (b) inputs `[N, H, W, C]` with
    output samples `[M, N, H, W, C]` beside each, (c) a t-SNE scatter `[P, 2]` coloured by `labels`
    `[P]` (int), its legend naming each label by `class_names[label]` when given (`embedding_note`
    in its place when `embedding` is None)."""
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    left, mid, right = fig.subfigures(1, 3, width_ratios=[1, 1.2, 1.1])
    cols = int(np.ceil(np.sqrt(len(samples))))
    ax = left.subplots(cols, cols, squeeze=False)
    for i, a in enumerate(ax.flat):
        _show(a, samples[i]) if i < len(samples) else a.axis("off")
    left.suptitle(textwrap.fill(f"{title}: (a) decoded samples, {prior_note}", 60), fontsize=8)
    ax = mid.subplots(len(inputs), outputs.shape[0] + 1, squeeze=False)
    for r in range(len(inputs)):
        _show(ax[r, 0], inputs[r], "input" if r == 0 else None)
        for j in range(outputs.shape[0]):
            _show(ax[r, j + 1], outputs[j, r], "sample" if r == 0 else None)
    mid.suptitle("(b) samples of p(x | input)", fontsize=8)
    a = right.subplots()
    if embedding is not None:
        classes = np.unique(labels)
        colours = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, k in enumerate(classes):
            at = labels == k
            name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
            a.scatter(embedding[at, 0], embedding[at, 1], color=colours(i % colours.N), s=4, label=name)
        a.legend(fontsize=6, loc="best", markerscale=2)
    else:
        a.text(0.5, 0.5, textwrap.fill(embedding_note, 40), ha="center", transform=a.transAxes)
    a.set_xticks([]), a.set_yticks([])
    right.suptitle("(c) t-SNE of test latents", fontsize=8)
    return fig


def image_grid(images: np.ndarray, title: str = "", columns: int = 8) -> Figure:
    """A grid of images `[N, H, W, C]` in [0, 1] (e.g. decoded samples)."""
    n = len(images)
    rows = -(-n // columns)
    fig, axes = subplots(rows, columns, (columns, rows + 0.4))
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show(ax, images[i])
        ax.axis("off")
    fig.suptitle(textwrap.fill(title, 12 * columns), fontsize=9)
    return fig


def save(fig: Figure, path: str | os.PathLike) -> None:
    """Write `fig` as PNG (or the format of `path`'s suffix)."""
    fig.savefig(path, dpi=100)


def calibration_figure(calibration: dict, title: str = "") -> Figure:
    """The `calibration` dict of `tfp_ae.calibration.calibration` as two panels: a reliability diagram
    (coverage of each central interval against its level, the diagonal = calibrated; above it
    under-confident, below over-confident; thin lines: the same within the quartiles of the predicted
    std, `by_std`) and the PIT histogram (density of u = F(x) in 20 bins;
    flat at 1 = calibrated, U-shaped = over-confident, peaked = under-confident)."""
    fig, axes = subplots(1, 2, (8, 3.4))
    left, right = axes[0]
    levels, coverage = np.array(calibration["levels"]), np.array(calibration["coverage"])
    left.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    left.plot(levels, coverage, "o-", label=f"model (error {calibration['calibration_error']:.3f})")
    before = calibration.get("before_recalibration")
    if before:
        left.plot(levels, before["coverage"], "s:", label=f"before recalibration ({before['calibration_error']:.3f})")
    by = calibration.get("by_std")
    groups = list(zip(by["coverage"], by["calibration_error"], strict=True)) if by else []
    for i, (cov, err) in enumerate(groups):
        left.plot(levels, cov, lw=0.8, alpha=0.6, color=colormaps["viridis"](i / max(1, len(groups) - 1)),
                  label=f"{by.get('spread', 'std')} group {i + 1} of {len(groups)} ({err:.3f})")
    left.set(xlim=(0.4, 1), ylim=(0.4, 1), xlabel="central interval level", ylabel="fraction of pixels inside",
             title="reliability")
    left.legend(fontsize=7, loc="upper left")
    hist = np.array(calibration["pit_histogram"])
    bins = len(hist)
    right.bar((np.arange(bins) + 0.5) / bins, hist * bins, width=1 / bins, edgecolor="white")
    right.axhline(1, color="grey", lw=1, ls="--")
    right.set(xlim=(0, 1), xlabel="PIT u = F(x)", ylabel="density", title=f"PIT histogram, {calibration['images']} images")
    fig.suptitle(title, fontsize=9)
    return fig


def roc_figure(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """ROC curves of OOD scores: `scores` {name: (in-distribution `[N]`, OOD `[M]`)}, OOD positive;
    AUROC in the legend (scikit-learn's `roc_curve` / `roc_auc_score`)."""
    from sklearn.metrics import roc_auc_score, roc_curve
    fig, ax = subplots(1, 1, (5, 4.5))
    ax = ax[0, 0]
    for name, (a, b) in scores.items():
        labels, s = np.r_[np.zeros(len(a)), np.ones(len(b))], np.nan_to_num(np.r_[a, b], nan=np.inf)
        fpr, tpr, _ = roc_curve(labels, s)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (OOD detected)", title="ROC, OOD = positive")
    ax.legend(fontsize=8, loc="lower right")
    return fig


HISTOGRAM_QUANTILES = (0.01, 0.99)  # score_histograms: the axis spans these quantiles of each set
LOG_SPAN = 1e3  # score_histograms: a signed log axis when the axis spans this many interquartile ranges


def _signed_log(v):
    return np.sign(v) * np.log10(1 + np.abs(v))


def score_histograms(scores: dict[str, tuple[np.ndarray, np.ndarray]], bins: int = 50,
                     labels: tuple[str, str] = ("in", "OOD"), columns: int = HISTOGRAM_COLUMNS) -> Figure:
    """One panel per score, `columns` panels a row: histograms of the in-distribution and OOD scores
    (higher = more anomalous), `scores` {name: (in `[N]`, OOD `[M]`)}; bar heights are fractions of each
    set; `labels` name the two sets (e.g. normal / novel).

    The axis spans the lowest `HISTOGRAM_QUANTILES[0]` and the highest `[1]` quantile of the two sets,
    so that a few extreme images (likelihoods of 1e10+ bits/dim) do not squash the rest; images outside
    (and NaN) are counted in the end bins and their number is written on the panel. When that range is
    wider than `LOG_SPAN` interquartile ranges of the in-distribution scores, the panel shows
    sign(s) log10(1 + |s|) (heavy tails of either sign stay readable).
    """
    cols = min(columns, len(scores))
    rows = -(-len(scores) // cols)
    fig, axes = subplots(rows, cols, (4.2 * cols, 3.4 * rows))
    for ax in axes.ravel()[len(scores):]:
        ax.set_visible(False)
    for ax, (name, (a, b)) in zip(axes.ravel(), scores.items()):
        sets = [np.asarray(v, np.float64) for v in (a, b)]
        finite = [v[np.isfinite(v)] for v in sets]
        if not any(f.size for f in finite):
            ax.set_title(f"{name} (no finite score)", fontsize=9)
            continue
        lo = min(np.quantile(f, HISTOGRAM_QUANTILES[0]) for f in finite if f.size)
        hi = max(np.quantile(f, HISTOGRAM_QUANTILES[1]) for f in finite if f.size)
        hi = hi if hi > lo else lo + 1
        ref = finite[0] if finite[0].size else finite[1]
        iqr = np.subtract(*np.quantile(ref, [0.75, 0.25]))
        log = hi - lo > LOG_SPAN * max(iqr, 1e-12)
        shown = _signed_log if log else (lambda v: v)
        edges = np.linspace(shown(lo), shown(hi), bins)
        clipped = []
        for v, label in zip(sets, labels):
            v = np.nan_to_num(v, nan=np.inf)
            clipped.append(int(((v < lo) | (v > hi)).sum()))
            ax.hist(shown(np.clip(v, lo, hi)), edges, weights=np.full(len(v), 1 / max(len(v), 1)), alpha=0.6,
                    label=label)
        ax.set_xlabel("sign(s) log10(1 + |s|)" if log else "score s", fontsize=9)
        ax.set_ylabel("fraction of the set", fontsize=9)
        ax.set_title(name, fontsize=11)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=9)
        ax.text(0.02, 0.97, f"outside the axis (in end bins):\n{labels[0]} {clipped[0]}, {labels[1]} {clipped[1]}",
                fontsize=8, va="top", transform=ax.transAxes)
    return fig


def anomaly_figure(images: np.ndarray, point: np.ndarray, amap: np.ndarray, masks: np.ndarray | None, names: list[str],
                   map_name: str, top: int) -> Figure:
    """`anomaly_maps.png` of `tfp-ae score`: columns are test images; rows their input, point estimate,
    anomaly map (`UNCERTAINTY_CMAP`, one colour scale, `map_scale`) and, when known, defect mask.

    Args:
      images: `[N, H, W, C]` in [0, 1].
      point: their point estimates, the same shape.
      amap: `[N, H, W, C]`.
      masks: `[N, H, W, 1]` or None.
      names: a title per column; map_name: the map's name; top: how many leading columns are the
        highest-scored images (the rest are random; 0: no such note).
    """
    rows = [("input", images, None), ("point estimate", point, None),
            ("anomaly map", amap, f"first {top}: the highest {map_name}_max; then random test images" if top else None,
             map_scale(amap))]
    if masks is not None:
        rows.append(("defect mask", masks, None))
    fig = image_rows(rows, f"anomaly maps ({map_name})")
    for ax, name in zip(fig.axes, names):
        ax.set_title(name, fontsize=7)
    return fig
