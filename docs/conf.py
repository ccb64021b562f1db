"""Sphinx configuration of the user guide:
`sphinx-build -W --keep-going -b html docs docs/_build/html` from the repository root.

The API pages document the installed engine (`pip install ".[docs]"`): the compiled core is
built into the installed package, not into the source tree, so the tree is not put on sys.path.
"""

import warnings

import engine

# numpydoc drops a docstring's unknown sections with a Python warning, not a Sphinx one: fail the
# build on it too, or whole docstrings vanish from the API page silently.
warnings.filterwarnings("error", category=UserWarning, module=r"numpydoc\.")

project = "photometry-engine"
author = "the engine's authors"
copyright = "the engine's authors"
release = engine.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinxcontrib.autoprogram",  # the CLI reference, from engine.cli.build_parser()
]

exclude_patterns = ["_build"]
html_theme = "pydata_sphinx_theme"
html_title = "photometry-engine"
html_theme_options = {"navigation_with_keys": False}

# Each public name is documented once on the API page, in the order given there.
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc sections carry the types
numpydoc_show_class_members = False  # class pages list no stub tables for every attribute
numpydoc_class_members_toctree = False


# The products page lists each table's columns from the schema the engine writes, with the
# description stored in the Parquet file's field metadata: the page cannot drift from the code.
import importlib  # noqa: E402

from docutils import nodes  # noqa: E402
from docutils.parsers.rst import Directive  # noqa: E402
from docutils.statemachine import StringList  # noqa: E402
from sphinx.util.nodes import nested_parse_with_titles  # noqa: E402


class SchemaColumns(Directive):
    """``.. schema-columns:: module.NAME``: a table of an Arrow schema's columns."""

    required_arguments = 1

    def run(self):
        module, _, name = self.arguments[0].rpartition(".")
        schema = getattr(importlib.import_module(module), name)
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 25 20 55", "",
                 "   * - column", "     - type", "     - meaning"]
        for field in schema:
            meaning = (field.metadata or {}).get(b"description", b"").decode()
            lines += [f"   * - ``{field.name}``", f"     - {field.type}",
                      f"     - {meaning.replace('*', chr(92) + '*')}"]
        holder = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.arguments[0]), holder)
        return holder.children


def setup(app):
    app.add_directive("schema-columns", SchemaColumns)
