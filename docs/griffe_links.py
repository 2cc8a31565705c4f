"""A griffe extension for the API reference (mkdocstrings): a docstring's references become links.

- `` `tfp_ae.x.y` `` (a backticked dotted name of this package) -> a cross-reference to that object
  (mkdocs-autorefs), when the name is one the reference documents;
- `docs/results/NAME` and `docs/guide/NAME.md` -> links to those pages of the site.
"""
import re

import griffe

DOTTED = re.compile(r"(?<!\[)`(tfp_ae(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`(?!\])")
RESULTS = re.compile(r"(?<![\w/(\[])docs/results/([a-z0-9_]+)/?(?![\w/])")
GUIDE = re.compile(r"(?<![\w/(\[])docs/guide/([a-z0-9_]+)\.md")


class DocstringLinks(griffe.Extension):
    """Rewrites the docstrings of every object once the package is loaded."""

    def on_package(self, *, pkg, **kwargs):
        for obj in _walk(pkg):
            if obj.docstring:
                obj.docstring.value = link(obj.docstring.value, pkg)


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _resolves(pkg, path):
    try:
        pkg.modules_collection[path]
        return True
    except KeyError:
        return False


def link(text, pkg):
    """`text` with its references as Markdown links (see the module docstring)."""
    text = DOTTED.sub(lambda m: f"[`{m[1]}`][{m[1]}]" if _resolves(pkg, m[1]) else m[0], text)
    text = RESULTS.sub(lambda m: f"[docs/results/{m[1]}](../results/{m[1]}/README.md)", text)
    return GUIDE.sub(lambda m: f"[docs/guide/{m[1]}.md](../guide/{m[1]}.md)", text)
