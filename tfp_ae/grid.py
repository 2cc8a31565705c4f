"""The paper's grid (Ciobanu, Tables 1 and 2): every head x K x dataset for one architecture,
resumable, written as `results.csv` and a Markdown table with the paper's numbers beside ours.

Layout of the grid folder:
  DATASET/ARCH/MODEL_HEAD_kK/   one run folder per cell (see `tfp_ae.train.run`; an unfinished
                                cell resumes from its last finished epoch, a finished one is read)
  grid_state.json               wall seconds per finished cell (kept across invocations)
  results.csv, table.md         rewritten after every cell (all cells: finished ones with their
                                numbers, the rest `pending`)
  figure1_DATASET_ARCH.png      Figure 1: K = 1 heads side by side (input, point, variance)
  figure2_DATASET_ARCH.png      Figure 2: the same for K > 1
"""
from __future__ import annotations

import csv
import dataclasses
import gc
import io
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from tfp_ae import figures, plots, train
from tfp_ae._tf import tfk
from tfp_ae.architectures import PARAMETER_MAP_ARCHS
from tfp_ae.config import RunConfig
from tfp_ae.data import open_source
from tfp_ae.errors import InputError
from tfp_ae.heads import HEADS
from tfp_ae.rundir import METRICS_FILE, write_json, write_text

# `cnn_dense` is our variant of the paper's CNN (Table 2): its rows are compared with Table 2
PAPER_TABLES = {"mlp": "table1_mlp.csv", "cnn": "table2_cnn.csv", "cnn_dense": "table2_cnn.csv"}
PAPER_PREFIX = {"mnist": "mnist", "fashion_mnist": "fmnist"}
PENDING = "pending"  # status of a cell not run yet
VAE_ROW = "vae"  # the paper's VAE row: model vae, head normal_diag, K = 1, mlp only
COLUMNS = ["dataset", "arch", "model", "head", "components", "label", "status", "epochs", "l2_percent",
           "paper_l2_percent", "fid_lenet", "fid_lenet_vs_noise", "paper_fid_vs_noise", "psnr", "ssim",
           "fid_lenet_real_vs_noise", "test_nll_nats", "bits_per_dim", "bits_per_dim_median", "calibration_error",
           "crps", "num_params", "paper_params", "seconds_per_epoch", "paper_seconds_per_epoch", "cell_wall_seconds",
           "run_dir"]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One experiment of the grid."""
    dataset: str
    arch: str
    model: str
    head: str
    components: int
    skip: str = ""  # reason the cell is not run, or "" to run it

    @property
    def key(self):
        return f"{self.dataset}/{self.arch}/{self.model}_{self.head}_k{self.components}"


def paper_table(arch: str) -> list[dict]:
    """The paper's rows for `arch` (`mlp`: Table 1, `cnn` and `cnn_dense`: Table 2) as dicts keyed
    by CSV column (transcribed numbers shipped with the package); [] for other architectures."""
    if arch not in PAPER_TABLES:
        return []
    text = resources.files("tfp_ae").joinpath("paper", PAPER_TABLES[arch]).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _paper_key(row):
    head = row["head"]
    return (VAE_ROW if head.startswith("vae") else head), int(row["components"] or 0)


def grid_cells(datasets: Sequence[str], arch: str, heads: Sequence[str] = ("all",),
               components: Sequence[int] = (1, 10)) -> list[Cell]:
    """The cells of a grid, in order (dataset, then the paper's row order).

    Args:
      heads: head names, `vae` (the paper's VAE row), `all` (every registered head and the VAE
        row) or `paper` (the heads of the paper's table for `arch`).
      components: the K values; K > 1 only for mixable heads.
    Returns: a list of `Cell`. Combinations that do not exist are left out (K > 1 for `mse` and
      `maf`; the VAE row other than mlp with K = 1); the full-scale heads with K > 1 carry a
      `skip` reason unless named explicitly (the paper left them out; they need ~22 GiB and
      ~77 min per epoch on a 2-core CPU); on `conv` every full-scale head carries one (its decoder outputs
      per-pixel parameter maps).
    Raises: ValueError for an unknown head name, K < 1, or a selection with no cell.
    """
    if any(int(k) < 1 for k in components):
        raise InputError(f"components must be >= 1, got {list(components)}")
    named = [h for h in heads if h not in ("all", "paper")]
    unknown = [h for h in named if h not in HEADS and h != VAE_ROW]
    if unknown:
        raise InputError(f"unknown head(s) {unknown}; valid: all, paper, {VAE_ROW}, {', '.join(HEADS)}")
    chosen = list(named)
    if "all" in heads:
        chosen += list(HEADS) + [VAE_ROW]
    if "paper" in heads:
        chosen += [_paper_key(r)[0] for r in paper_table(arch) if r["head"]]
    chosen = list(dict.fromkeys(chosen))
    cells = []
    for dataset in datasets:
        for k in components:
            for h in chosen:
                if h == VAE_ROW:
                    if arch == "mlp" and k == 1:
                        cells.append(Cell(dataset, arch, "vae", "normal_diag", 1))
                elif k == 1 or HEADS[h].mixable:
                    skip = ""
                    if k > 1 and HEADS[h].full_covariance and h not in named:
                        skip = "full scale with K > 1: not in the paper, ~22 GiB and ~77 min/epoch on a 2-core CPU"
                    if arch in PARAMETER_MAP_ARCHS and HEADS[h].full_covariance:
                        skip = f"D x D parameters: {arch} decodes per-pixel parameter maps (tfp_ae.architectures.check_arch)"
                    cells.append(Cell(dataset, arch, "ae", h, int(k), skip))
    if not cells:
        raise InputError(f"no grid cells for heads {list(heads)} with arch {arch!r} and components {list(components)}")
    return cells


def _row(cell, metrics, wall, paper, run_dir):
    label = HEADS[cell.head].label if cell.model == "ae" else "VAE"
    row = dict(dataset=cell.dataset, arch=cell.arch, model=cell.model, head=cell.head, components=cell.components,
               label=label, status=f"skipped: {cell.skip}" if cell.skip else PENDING, run_dir=str(run_dir))
    p = paper.get((VAE_ROW if cell.model == "vae" else cell.head, cell.components))
    prefix = PAPER_PREFIX.get(cell.dataset)
    if p and prefix:
        row.update(paper_l2_percent=p[f"{prefix}_l2_percent"], paper_fid_vs_noise=p[f"{prefix}_fid_vs_noise"],
                   paper_params=p[f"{prefix}_params"], paper_seconds_per_epoch=p[f"{prefix}_seconds_per_epoch"])
    if isinstance(metrics, str):
        row["status"] = metrics
    elif metrics:
        cal = metrics.get("calibration") or {}
        row.update(status="done", epochs=metrics["epochs"], l2_percent=metrics["l2_percent"],
                   fid_lenet=metrics.get("fid_lenet"), fid_lenet_vs_noise=metrics.get("fid_lenet_vs_noise"),
                   fid_lenet_real_vs_noise=metrics.get("fid_lenet_real_vs_noise"),
                   psnr=metrics["psnr"], ssim=metrics["ssim"], test_nll_nats=metrics["test_nll_nats"],
                   bits_per_dim=metrics["bits_per_dim"], bits_per_dim_median=metrics.get("bits_per_dim_median"),
                   calibration_error=cal.get("calibration_error"), crps=metrics.get("crps"),
                   num_params=metrics["num_params"], seconds_per_epoch=statistics.median(metrics["seconds_per_epoch"]),
                   cell_wall_seconds=wall)
    return row


def _fmt(v, digits=3):
    if v in (None, ""):
        return "-"
    if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
        return str(v)
    try:
        return f"{float(v):.{digits}f}"
    except ValueError:
        return str(v)


def markdown_table(rows: list[dict], epochs: int | None = None) -> str:
    """Markdown tables, one per (architecture, dataset), laid out like the paper's Tables 1/2:
    ours beside the paper's for L2 (%), FID, parameters and seconds per epoch. `fid_lenet`
    compares reconstructions with real test images; `fid_lenet_vs_noise` is the paper's kind of
    number (vs U[0, 1] noise) with another feature extractor, so only its ordering compares."""
    out = []
    for arch, dataset in dict.fromkeys((r["arch"], r["dataset"]) for r in rows):
        part = [r for r in rows if (r["arch"], r["dataset"]) == (arch, dataset)]
        table = {"mlp": "Table 1", "cnn": "Table 2"}.get(arch, "grid")
        out += [f"### {table} ({arch}), {dataset}" + (f", {epochs} epochs" if epochs else ""), "",
                "| distribution | head | K | L2 % | paper L2 % | FID lenet | FID lenet vs noise | paper FID vs noise "
                "| bits/dim | calibration error | params | paper params | s/epoch | paper s/epoch | status |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in part:
            worse = (r.get("l2_percent") not in (None, "") and r.get("paper_l2_percent") not in (None, "")
                     and float(r["l2_percent"]) > float(r["paper_l2_percent"]))
            l2 = _fmt(r.get("l2_percent")) + (" (worse)" if worse else "")
            out.append(f"| {r['label']} | {r['head'] if r['model'] == 'ae' else 'vae/' + r['head']} | {r['components']} "
                       f"| {l2} | {_fmt(r.get('paper_l2_percent'))} | {_fmt(r.get('fid_lenet'))} "
                       f"| {_fmt(r.get('fid_lenet_vs_noise'))} | {_fmt(r.get('paper_fid_vs_noise'))} "
                       f"| {_fmt(r.get('bits_per_dim'))} | {_fmt(r.get('calibration_error'))} | {_fmt(r.get('num_params'))} "
                       f"| {_fmt(r.get('paper_params'))} | {_fmt(r.get('seconds_per_epoch'), 2)} "
                       f"| {_fmt(r.get('paper_seconds_per_epoch'), 2)} | {r['status']} |")
        real = next((r.get("fid_lenet_real_vs_noise") for r in part if r.get("fid_lenet_real_vs_noise")), None)
        test_row = next((r for r in paper_table(arch) if not r["head"]), None)
        prefix = PAPER_PREFIX.get(dataset)
        paper_real = test_row[f"{prefix}_fid_vs_noise"] if test_row and prefix else None
        out.append(f"| test images | | | | | | {_fmt(real)} | {_fmt(paper_real)} | | | | | | | |")
        out.append("")
    return "\n".join(out)


def write_results(rows: list[dict], out: str | os.PathLike, epochs: int | None = None) -> None:
    """Write `results.csv` (columns `COLUMNS`) and `table.md` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), Path(out) / "results.csv")
    write_text(markdown_table(rows, epochs), Path(out) / "table.md")


def merge_results(paths: Sequence[str | os.PathLike], out: str | os.PathLike, epochs: int | None = None) -> list[dict]:
    """Merge grid `results.csv` files (cells run in different folders, sessions or machines) into
    one `results.csv` + `table.md` in `out`.

    A cell (dataset, arch, model, head, K) found in several files takes its row from the last file
    that finished it (a `done` row beats a failed or skipped one). Rows are ordered by dataset
    (first seen) and the paper's row order.
    Returns: the merged rows (dicts with `COLUMNS`).
    Raises: FileNotFoundError for a missing file; ValueError for a file that is not a grid's
      results.csv (columns missing).
    """
    def cell(row):
        return Cell(row["dataset"], row["arch"], row["model"], row["head"], int(row["components"]))

    found = {}
    for path in map(Path, paths):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(COLUMNS[:7]) - set(reader.fieldnames or ())
            if missing:
                raise InputError(f"{path}: not a grid results.csv (no column(s) {sorted(missing)})")
            for row in reader:
                if row["status"] == "done" or found.get(cell(row), {}).get("status") != "done":
                    found[cell(row)] = row
    datasets = list(dict.fromkeys(c.dataset for c in found))
    ks = sorted({c.components for c in found})
    order = {}  # position in the paper's row order
    for dataset, arch in dict.fromkeys((c.dataset, c.arch) for c in found):
        order.update({dataclasses.replace(c, skip=""): i for i, c in enumerate(grid_cells([dataset], arch, ["all"], ks))})
    rows = [found[c] for c in sorted(found, key=lambda c: (datasets.index(c.dataset), c.arch, order.get(c, len(order))))]
    Path(out).mkdir(parents=True, exist_ok=True)
    write_results(rows, out, epochs)
    return rows


def _cell_config(cell, base):
    return dataclasses.replace(base, dataset=cell.dataset, arch=cell.arch, model=cell.model, head=cell.head,
                               components=cell.components)


def run_grid(out: str | os.PathLike, cells: Sequence[Cell], base: RunConfig | None = None, on_cell: Callable | None = None,
             figures: bool = True) -> list[dict]:
    """Run (or resume) every cell; finished cells are read from their `metrics.json`, not re-run.

    Args:
      out: grid folder. cells: from `grid_cells`. base: the RunConfig every cell starts from
        (epochs, batch size, seed, train_limit, ...); its `out`, `dataset`, `arch`, `model`,
        `head`, `components` are set per cell.
      on_cell: optional callback(cell, row) after each cell (e.g. printing progress).
    Returns: the result rows (dicts with `COLUMNS`). A cell that fails (bad settings, memory,
      NaN in every retry) is recorded with its error and the grid goes on.
    """
    base = base or RunConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "grid_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    papers = {arch: {_paper_key(r): r for r in paper_table(arch) if r["head"]} for arch in {c.arch for c in cells}}

    def finished(cell):
        path = out / cell.key / METRICS_FILE
        return json.loads(path.read_text()) if path.exists() else None

    # every cell has a row from the start: finished cells (this or an earlier invocation, any
    # position in the order) read, the others `pending`, so each rewrite lists all that is known
    rows = [_row(c, finished(c) if not c.skip else None, state.get(c.key), papers[c.arch], out / c.key)
            for c in cells]
    todo = [c for c in cells if not c.skip]
    for i, cell in enumerate(cells):
        run_dir = out / cell.key
        if rows[i]["status"] == PENDING:
            left = sum(r["status"] == PENDING for r in rows[i:])
            print(f"cell {todo.index(cell) + 1}/{len(todo)}: {cell.key}{_eta(state, left)}", flush=True)
            start = time.perf_counter()
            try:
                _, metrics = train.run(dataclasses.replace(_cell_config(cell, base), out=str(run_dir)))
                state[cell.key] = state.get(cell.key, 0.0) + time.perf_counter() - start
                write_json(state, state_path)
            except (ValueError, MemoryError, train.DivergedError) as e:
                metrics = f"failed: {type(e).__name__}: {e}"
            finally:
                tfk.backend.clear_session()
                gc.collect()
            rows[i] = _row(cell, metrics, state.get(cell.key), papers[cell.arch], run_dir)
        write_results(rows, out, base.epochs)
        if on_cell:
            on_cell(cell, rows[i])
    if figures:
        write_head_figures(out, rows, base)
    return rows


def _eta(state, left):
    """`, about N min left` for `left` cells still to run, from the mean wall time of the cells this
    grid folder has finished (`state`: cell key -> seconds)."""
    if not state:
        return ""
    mean = statistics.mean(state.values())
    return f", about {left * mean / 60:.0f} min left (mean {mean / 60:.1f} min per cell)"


def write_head_figures(out: str | os.PathLike, rows: list[dict], base: RunConfig | None = None, num_images: int = 8) -> None:
    """Figures 1 (K = 1) and 2 (K > 1) of each (dataset, arch) from the finished cells
    (`base`: data_dir and rescale of the grid)."""
    base = base or RunConfig()
    for dataset, arch in dict.fromkeys((r["dataset"], r["arch"]) for r in rows):
        x = open_source(dataset, **base.source_options).splits["test"].take(num_images)[0]
        for number, many in ((1, False), (2, True)):
            done = [r for r in rows if (r["dataset"], r["arch"], r["status"]) == (dataset, arch, "done")
                    and (int(r["components"]) > 1) == many]
            if done:
                models = [train.load_model(r["run_dir"])[0] for r in done]
                title = f"Figure {number}: {dataset}, {arch}, {'K > 1' if many else 'K = 1'}"
                plots.save(figures.heads_figure(models, x, title), Path(out) / f"figure{number}_{dataset}_{arch}.png")
