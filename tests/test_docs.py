"""Docs that run (issue 43): every ```python block of the README and of the user guide is executed,
each page's blocks in order in one namespace (as a reader would paste them), in a temporary folder,
on scikit-learn's digits and with few epochs: the named datasets become `digits` and `epochs=N`
becomes `epochs=2`. And every public name of the package has a docstring."""
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import tfp_ae

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
FAST = [(r'"(fashion_mnist|mnist)"', '"digits"'), (r"\bepochs=\d+", "epochs=2")]


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_and_the_guide_have_examples():
    assert python_blocks((ROOT / "README.md").read_text())
    assert sum(len(python_blocks(p.read_text())) for p in PAGES[1:]) >= 3


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())], ids=lambda p: p.name)
def test_the_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in python_blocks(page.read_text()):
        for pattern, fast in FAST:
            block = re.sub(pattern, fast, block)
        exec(compile(block, f"{page.name} example", "exec"), namespace)  # noqa: S102 (the docs' own code)


def _public_modules():
    yield tfp_ae
    for info in pkgutil.walk_packages(tfp_ae.__path__, "tfp_ae."):
        if not info.name.rsplit(".", 1)[-1].startswith("_") and info.name != "tfp_ae.__main__":
            yield importlib.import_module(info.name)


def test_every_public_name_has_a_docstring():
    """Modules, and the public functions and classes they define (not names they import), and the
    public methods of those classes: a docstring each (the API reference is generated from them)."""
    missing = []
    for module in _public_modules():
        if not inspect.getdoc(module):
            missing.append(module.__name__)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not inspect.isfunction(member):
                        continue
                    if not inspect.getdoc(getattr(obj, attr)):  # an override inherits its base's docstring
                        missing.append(f"{module.__name__}.{name}.{attr}")
    assert not missing, f"{len(missing)} public names without a docstring: {missing}"
