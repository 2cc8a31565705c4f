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
