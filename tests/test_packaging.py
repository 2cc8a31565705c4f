"""Packaging: requirements.txt lists exactly setup.cfg's install_requires (issue 40)."""
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_requirements_txt_equals_install_requires():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    install = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    listed = [r.strip() for r in (ROOT / "requirements.txt").read_text().splitlines()
              if r.strip() and not r.startswith("#")]
    assert listed == install


def test_the_version_is_declared_once():
    import tfp_ae
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: tfp_ae.__version__"
    assert tfp_ae.__version__ in (ROOT / "CHANGELOG.md").read_text().split("\n## ")[1].splitlines()[0]


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Issue 43: `python -m build --wheel`, then the wheel (not editable) in a new virtual environment
    (its dependencies from this environment's site-packages, no download), run from a folder
    outside the repository: `tfp-ae heads` and a one-epoch digits train work, `tfp_ae` is imported from
    the wheel's copy, and the paper's CSV files (package data) are in it."""
    import os
    import subprocess
    import sys
    run = dict(capture_output=True, text=True, timeout=900)
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)], **run)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("tfp_ae-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "env")], check=True, **run)
    python, tfp_ae_cli = tmp_path / "env" / "bin" / "python", tmp_path / "env" / "bin" / "tfp-ae"
    inherit_site_packages(python)
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], **run)
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import tfp_ae, importlib.resources as r; print(tfp_ae.__file__); "
                            "print(sorted(p.name for p in r.files('tfp_ae').joinpath('paper').iterdir()))"],
                           cwd=tmp_path, env=env, **run)
    assert where.returncode == 0, where.stderr[-3000:]
    assert str(tmp_path / "env") in where.stdout.splitlines()[0] and "table1_mlp.csv" in where.stdout
    heads = subprocess.run([str(tfp_ae_cli), "heads"], cwd=tmp_path, env=env, **run)
    assert heads.returncode == 0 and "normal_diag" in heads.stdout, heads.stderr[-3000:]
    train = subprocess.run([str(tfp_ae_cli), "train", "--dataset", "digits", "--epochs", "1", "--no-fid",
                            "--tsne-images", "0", "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, **run)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "calibration.png").exists()


def inherit_site_packages(python):
    """Make the dependencies of the interpreter running the tests importable in the new environment
    `python`: a `.pth` file naming this interpreter's site-packages folders. (`venv
    --system-site-packages` inherits the *base* interpreter's, which inside a virtual environment, as
    the README's test path runs, hold no TensorFlow.) The new environment's own site-packages, where
    the wheel goes, stays first on `sys.path`."""
    import site
    import subprocess
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_tfp_ae_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
