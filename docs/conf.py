"""Sphinx configuration of deepinv-glowprior's documentation.

Build with ``make docs`` (or ``sphinx-build -W --keep-going -b html docs docs/_build/html``). The
gallery in ``examples/`` is executed during the build. Everything works offline: intersphinx
inventories are only used when they can be reached within a couple of seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.parsers.rst.directives.images import Image
from docutils.statemachine import StringList
from sphinx.ext import autosummary
from sphinx.util import logging
from sphinx_gallery.sorting import ExplicitOrder

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import deepinv_glowprior  # noqa: E402

logger = logging.getLogger(__name__)

# normflows calls the deprecated torch.lu internally; the warning says nothing to our readers.
warnings.filterwarnings("ignore", message=r"(?s).*torch\.lu is deprecated")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")

# -- Project information ----------------------------------------------------------------------
project = "deepinv-glowprior"
author = "deepinv-glowprior contributors"
copyright = "2025, deepinv-glowprior contributors"
release = deepinv_glowprior.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration --------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "sphinxcontrib.bibtex",
]
for optional in ("sphinx_copybutton", "sphinx-mathjax-offline"):
    # sphinx-mathjax-offline ships MathJax, so formulas render without a network.
    if importlib.util.find_spec(optional) is not None:
        extensions.append(optional)

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"
default_role = "code"
add_module_names = False
nitpicky = False

# deepinv's docstring conventions: |sep| draws a horizontal rule before ``:Example:`` blocks.
rst_prolog = """
.. |sep| raw:: html

   <hr />

"""

# -- autodoc / autosummary: the API reference is generated from each module's __all__ --------
autosummary_generate = True
autosummary_ignore_module_all = False  # members = __all__
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = False  # True trips Sphinx 9 on some signatures
autodoc_inherit_docstrings = False
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "forward, extra_repr"}
napoleon_google_docstring = False
napoleon_numpy_docstring = False
napoleon_use_param = True

# -- References ---------------------------------------------------------------------------------
bibtex_bibfiles = ["refs.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"
bibtex_foot_reference_style = "foot"

# -- Math -----------------------------------------------------------------------------------------
mathjax3_config = {"tex": {"macros": {"R": r"\mathbb{R}", "E": r"\mathbb{E}"}}}


# -- intersphinx: only inventories that answer within 2 s (this may be an offline machine) ----
def _reachable(url: str, timeout: float = 2.0) -> bool:
    if os.environ.get("GLOWPRIOR_DOCS_OFFLINE"):
        return False
    try:
        with urllib.request.urlopen(url + "objects.inv", timeout=timeout) as response:
            return response.status == 200
    except Exception:  # no network, DNS failure, timeout, HTTP error: skip that inventory
        return False


_INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "deepinv": "https://deepinv.github.io/deepinv/",
    "normflows": "https://vincentstimper.github.io/normalizing-flows/",
    "numpy": "https://numpy.org/doc/stable/",
    "matplotlib": "https://matplotlib.org/stable/",
}
with ThreadPoolExecutor(len(_INVENTORIES)) as pool:  # probe all at once: 2 s at most in total
    _answers = dict(zip(_INVENTORIES, pool.map(_reachable, _INVENTORIES.values()), strict=True))
intersphinx_mapping = {name: (url, None) for name, url in _INVENTORIES.items() if _answers[name]}
intersphinx_timeout = 5
if len(intersphinx_mapping) < len(_INVENTORIES):
    missing = sorted(set(_INVENTORIES) - set(intersphinx_mapping))
    print(f"intersphinx: not reachable, links to them left as text: {', '.join(missing)}")

# -- sphinx-gallery ---------------------------------------------------------------------------
GALLERY_ORDER = ["basics", "generalisation", "beyond_the_paper", "training", "theory"]

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/demo_",
    "ignore_pattern": r"__init__\.py",
    "subsection_order": ExplicitOrder([f"../examples/{name}" for name in GALLERY_ORDER]),
    "within_subsection_order": "FileNameSortKey",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("deepinv_glowprior",),
    "min_reported_time": 0,
    "show_memory": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "default_thumb_file": None,
    "nested_sections": True,
}

# -- HTML -------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"deepinv-glowprior {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": {
        "**": ["page-toc", "sourcelink", "sg_download_links", "sg_launcher_links"],
    },
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "installation": [], "quickstart": []}
html_show_sourcelink = True


# -- Hooks ----------------------------------------------------------------------------------
def append_references(app, what, name, obj, options, lines) -> None:
    """As in deepinv: a docstring citing with :footcite: gets its own reference list."""
    if any(":footcite:" in line for line in lines) and not any(
        "footbibliography" in line for line in lines
    ):
        lines.extend(["", "|sep|", "", ":References:", "", ".. footbibliography::", ""])


def drop_inherited_value_docstrings(app, what, name, obj, options, lines) -> None:
    """A constant without a doc comment would show its type's docstring (``dict``'s, a path's):
    show nothing instead."""
    if what not in ("data", "attribute") or isinstance(obj, type) or callable(obj):
        return
    inherited = getattr(type(obj), "__doc__", None)
    if inherited and "\n".join(lines).strip() == inspect.cleandoc(inherited).strip():
        lines.clear()


_FOOTCITE = re.compile(r"\s*:footcite:[a-z]*:`[^`]*`")
_extract_summary = autosummary.extract_summary


def _summary_without_footcites(doc: list[str], document) -> str:
    """Autosummary tables show each docstring's first sentence, where a footnote citation has no
    reference list to point to: drop the citation there (it stays on the object's own page)."""
    return _extract_summary([_FOOTCITE.sub("", line) for line in doc], document)


autosummary.extract_summary = _summary_without_footcites


def _canonical_name(name: str) -> str:
    obj = getattr(deepinv_glowprior, name)
    module = getattr(obj, "__module__", deepinv_glowprior.__name__)
    return f"{module}.{name}"


class PackageExports(Directive):
    """``.. package-exports::``: an autosummary table of ``deepinv_glowprior.__all__``, linked to
    the page of the module that defines each name."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        names = sorted(deepinv_glowprior.__all__, key=str.lower)
        text = [".. autosummary::", ""] + [f"   ~{_canonical_name(n)}" for n in names]
        container = nodes.container()
        self.state.nested_parse(StringList(text, source="package-exports"), 0, container)
        return container.children


class GalleryImage(Image):
    """An image produced by the gallery; skipped with a note when the gallery was not run
    (``-D plot_gallery=0``), so a quick build without examples still succeeds."""

    def run(self) -> list[nodes.Node]:
        source_dir = Path(self.state.document.current_source).parent
        if not (source_dir / self.arguments[0]).is_file():
            logger.info(f"gallery image {self.arguments[0]} not built; skipped")
            return []
        return super().run()


def check_api_lists_every_module(app) -> None:
    """Warn (an error under -W) when a public module is missing from api.rst."""
    api = (DOCS / "api.rst").read_text()
    listed = set(re.findall(r"^\s+(deepinv_glowprior\.\w+)\s*$", api, re.M))
    public = {
        f"deepinv_glowprior.{info.name}"
        for info in pkgutil.iter_modules(deepinv_glowprior.__path__)
        if not info.name.startswith("_")
    }
    for module in sorted(public - listed):
        logger.warning(f"{module} is a public module but docs/api.rst does not list it")
    for module in sorted(public):
        if not hasattr(importlib.import_module(module), "__all__"):
            logger.warning(f"{module} has no __all__; its API page would be empty")


def setup(app) -> None:
    app.connect("autodoc-process-docstring", append_references, priority=10)
    app.connect("autodoc-process-docstring", drop_inherited_value_docstrings)
    app.connect("builder-inited", check_api_lists_every_module)
    app.add_directive("package-exports", PackageExports)
    app.add_directive("gallery-image", GalleryImage)
