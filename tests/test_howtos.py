"""The how-to pages (issue 48): every ```python and ```bash block of each page in docs/howto runs, in order,
in a fresh folder, on few images and one epoch (`benchmarks/howtos.py`, which also writes each page's
outputs and figures at full settings); each page is short, starts with its goal and links on."""
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import FOREIGN_LINE, require_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import howtos  # noqa: E402

PAGES = sorted(howtos.PAGES.glob("*.md"))


def test_there_are_five_how_tos_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert len(PAGES) == 5
    for page in PAGES:
        assert f"howto/{page.name}" in nav


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_a_how_to_is_short_and_task_first(page):
    text = page.read_text()
    lines = text.splitlines()
    assert lines[2].startswith("**Goal:**"), lines[:3]
    first_code = next(i for i, line in enumerate(lines) if line.startswith("```"))
    assert first_code < 25, f"{page.name}: the first runnable block is on line {first_code + 1}"
    assert "OUTPUT" not in text, f"{page.name}: an output was never filled in (python benchmarks/howtos.py)"
    for figure in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (page.parent / figure).exists(), figure
    assert "**Next:**" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_every_block_of_a_how_to_runs(page, tmp_path):
    code = page.read_text()
    for name in ("fashion_mnist", "mnist"):
        if re.search(rf"--(data|dataset|ood) {name}\b", code):
            require_dataset(name)
    # a user's environment: TensorFlow's log level unset (CI sets TF_CPP_MIN_LOG_LEVEL=2, which shows its
    # cuInit error line on a machine without a GPU)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFP_AE_TF_LOGS")}
    results = howtos.run_page(page, tmp_path, fast=True, env=env)
    assert [r[0] for r in results] == [k for k, _ in howtos.blocks(page) if k != "text"]
    for kind, block, output, errors in results:
        if kind == "bash" and "tfp-ae train" in block:
            assert "wrote runs/" in output, output[-2000:]
        for stream in (output, errors):  # the package's own lines only: no TensorFlow, TFLite or absl line
            assert not FOREIGN_LINE.search(stream), stream[-3000:]
