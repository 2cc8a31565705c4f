"""Execute the tutorial notebooks at their full settings and stamp them with the package version.

Each notebook runs top to bottom in a fresh kernel (nbclient), in place, from the repository root (its runs
go to `runs/` there, ignored by git and outside the docs site); its metadata then records `tfp_ae.version`,
the date and the seconds it took.
`tests/test_notebooks.py` checks that every committed notebook was executed, in order, by the version
of the package it ships with: after a version bump, run this script before committing.

    python notebooks/execute.py [NAME ...]      # default: every notebook in this folder
"""
import argparse
import datetime
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import tfp_ae

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the notebooks' working directory


def execute(path: Path) -> None:
    """Run notebook `path` in place and stamp `metadata["tfp_ae"]` (version, date, seconds)."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    nb.metadata["tfp_ae"] = dict(version=tfp_ae.__version__, executed=datetime.date.today().isoformat(),
                                 seconds=round(time.perf_counter() - start))
    nbformat.write(nb, path)
    print(f"{path.name}: executed in {nb.metadata['tfp_ae']['seconds']} s with tfp_ae {tfp_ae.__version__}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    names = p.parse_args().names or sorted(q.stem for q in HERE.glob("*.ipynb"))
    for name in names:
        execute(HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
