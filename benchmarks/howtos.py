"""Runs the how-to pages (docs/howto/*.md) as a reader would: every ```python and ```bash block of a page in
order, in one folder (python blocks in one namespace, each `tfp-ae ...` line of a bash block as a command).

- At full settings (this script): the output of each block goes into the ```text block that follows it in
  the page (the package's own lines; Keras' per-epoch lines left out), and the figures the pages show are
  copied to docs/howto/figures/ (`FIGURES`), so every output and figure on a page is the page's own.
- Fast (`fast=True`, tests/test_howtos.py): few images and one epoch (`FAST_PYTHON`, `FAST_COMMAND`), to
  check that every block runs.

    python benchmarks/howtos.py --work runs/howto [--pages own-images trust-intervals ...]
"""
import argparse
import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "howto"
BLOCK = re.compile(r"```(python|bash|text)\n(.*?)```", re.S)
FIGURES = {  # page -> {figure on the page: file the page's commands write}
    "own-images": {"own_images_reconstructions.png": "runs/mine/reconstructions.png"},
    "trust-intervals": {"trust_calibration.png": "runs/fashion_faithful/calibration.png",
                        "trust_reconstructions.png": "runs/fashion_faithful/reconstructions.png"},
    "find-defects": {"defects_anomaly_maps.png": "runs/parts_score/anomaly_maps.png"},
    "novel-images": {"novelty_examples.png": "runs/mnist_5_novelty/novelty_examples.png"},
}
FAST_PYTHON = [(r'"(fashion_mnist|mnist)"', '"digits"'), (r"\bepochs=\d+", "epochs=2"), (r"\btrain=\d+", "train=100"),
               (r"range\(1000\)", "range(60)")]
FAST_COMMAND = {"train": ["--train-limit", "1000", "--no-fid", "--no-extra-figures", "--eval-images", "50"],
                "score": ["--limit", "200"]}
KEPT_LINES = 12  # the last lines of a block's output written into the page
SHOWN = {  # page -> the lines of long outputs shown (the headline rows; the rest is in the run's metrics.json)
    "find-defects": re.compile(r"^(detection|  (nll|complexity|min_p|neg_log_marginal_smooth_max) |map |wrote)"),
    "novel-images": re.compile(r"^(scored|(  )?(nll|complexity|min_p|fisher|fisher_complexity_error|"
                               r"abs_error_smooth_top1) |wrote)"),
}
NOISE = re.compile(r"^(Epoch \d+/\d+|\d+/\d+ - |\d+/\d+ \[)")  # Keras' per-epoch progress


def blocks(page):
    """[(kind, code)] of a page's ```python, ```bash and ```text blocks, in order."""
    return BLOCK.findall(Path(page).read_text())


def commands(code, fast=False):
    """The argument lists of the `tfp-ae` lines of a bash block (fast: one epoch, few images)."""
    out = []
    for line in code.splitlines():
        if not line.startswith("tfp-ae "):
            continue
        argv = shlex.split(line)[1:]
        if fast:
            argv = [re.sub(r"^\d+$", "1", a) if i and argv[i - 1] == "--epochs" else a for i, a in enumerate(argv)]
            argv += FAST_COMMAND.get(argv[0], [])
        out.append(argv)
    return out


def run_page(page, cwd, fast=False, env=None):
    """Run every block of `page` in `cwd`; returns [(kind, code, output, errors)] of its python and bash
    blocks (`errors`: what the commands wrote to stderr; "" for python blocks). `env`: the commands'
    environment (None: this process's).

    Raises:
      RuntimeError: a command failed (its stderr's end in the message); a python block's exception propagates.
    """
    namespace, results = {}, []
    for kind, code in blocks(page):
        if kind == "python":
            if fast:
                for pattern, repl in FAST_PYTHON:
                    code = re.sub(pattern, repl, code)
            buffer = io.StringIO()
            with contextlib.chdir(cwd), contextlib.redirect_stdout(buffer):
                exec(compile(code, f"{Path(page).name} example", "exec"), namespace)  # noqa: S102 (the page's code)
            results.append((kind, code, buffer.getvalue(), ""))
        elif kind == "bash":
            printed, errors = [], []
            for argv in commands(code, fast):
                done = subprocess.run([sys.executable, "-m", "tfp_ae", *argv], cwd=cwd, capture_output=True, text=True,
                                      env=env)
                if done.returncode:
                    raise RuntimeError(f"tfp-ae {' '.join(argv)} failed: {done.stderr[-3000:]}")
                printed.append(done.stdout)
                errors.append(done.stderr)
            results.append((kind, code, "".join(printed), "".join(errors)))
    return results


def _shown(output, keep=None):
    lines = [ln for ln in output.splitlines() if ln.strip() and not NOISE.match(ln)]
    if keep is not None:
        lines = [ln for ln in lines if keep.match(ln)]
    return "\n".join(lines[-KEPT_LINES:])


def write_outputs(page, results):
    """Put each block's output into the ```text block that follows it on the page (its last `KEPT_LINES`
    lines, or those `SHOWN` names)."""
    keep = SHOWN.get(Path(page).stem)
    text, outputs, kinds = Path(page).read_text(), iter([r[2] for r in results]), [k for k, _ in blocks(page)]
    pieces, pos, last = [], 0, None
    for m, kind in zip(BLOCK.finditer(text), kinds):
        if kind in ("python", "bash"):
            last = next(outputs)
        elif last is not None:
            pieces += [text[pos:m.start(2)], _shown(last, keep) + "\n"]
            pos, last = m.end(2), None
    Path(page).write_text("".join(pieces) + text[pos:])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/howto")
    p.add_argument("--pages", nargs="+", default=sorted(f.stem for f in PAGES.glob("*.md")))
    args = p.parse_args()
    import tfp_ae  # noqa: F401  (Keras 2 before TensorFlow, for the python blocks)
    for name in args.pages:
        work = Path(args.work) / name
        shutil.rmtree(work, ignore_errors=True)  # every page from scratch, as a reader starts
        work.mkdir(parents=True)
        print(f"running docs/howto/{name}.md in {work}", flush=True)
        page = PAGES / f"{name}.md"
        write_outputs(page, run_page(page, work))
        for figure, made in FIGURES.get(name, {}).items():
            shutil.copyfile(work / made, PAGES / "figures" / figure)
    print(f"wrote the outputs into {len(args.pages)} page(s) and their figures into {PAGES / 'figures'}")


if __name__ == "__main__":
    main()
