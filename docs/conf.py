"""Sphinx configuration of image-match's documentation.

Built by .ci/run with warnings as errors, and its examples run as doctests::

    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The --db option's help names the default store under the user's data directory, computed when the
# command line is imported: show it as a reader's path, not the path of whoever built the docs.
os.environ["XDG_DATA_HOME"] = "~/.local/share"
os.environ.pop("IMAGE_MATCH_DATABASE", None)

import image_match  # noqa: E402

project = "image-match"
author = "the image-match developers"
copyright = "image-match developers; Apache-2.0"
release = image_match.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_click",
]

exclude_patterns = ["_build"]
root_doc = "index"
nitpicky = False
default_role = "py:obj"  # `name` in a docstring links to it where it is documented (numpydoc's habit)

# numpydoc renders the docstrings' Parameters/Returns sections; members are listed by autodoc.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"

html_theme = "alabaster"
html_title = f"image-match {release}"
html_static_path = []
html_theme_options = {
    "description": "Find the copies of a picture among millions",
    "fixed_sidebar": True,
}

# Every example in these pages runs (sphinx-build -b doctest): in a fresh folder that holds the
# repository's test photographs at tests/data, with no store configured in the environment, so the
# examples read like a session at the root of a checkout and leave nothing behind in it.
doctest_global_setup = f"""
import os, tempfile
_docs_previous_cwd = os.getcwd()
_docs_folder = tempfile.mkdtemp(prefix="image-match-docs-")
os.makedirs(os.path.join(_docs_folder, "tests"))
os.symlink({str(ROOT / "tests" / "data")!r}, os.path.join(_docs_folder, "tests", "data"))
os.chdir(_docs_folder)
os.environ.pop("IMAGE_MATCH_DATABASE", None)
os.environ["XDG_DATA_HOME"] = os.path.join(_docs_folder, "data")
"""
doctest_global_cleanup = """
import shutil
os.chdir(_docs_previous_cwd)
shutil.rmtree(_docs_folder, ignore_errors=True)
"""


# The commands' help is plain text written for a terminal (``image-match add --help``), which
# sphinx-click reads as reStructuredText: keep a glob's ``*`` or a backquote from starting markup.
def _help_as_text(app, ctx, lines):
    for number, line in enumerate(lines):
        if not line.lstrip().startswith(".. "):
            lines[number] = line.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")




# README.rst is the front page and the docs include parts of it (the two commands, the support
# table). Its links to its own sections (`Bulk ingestion`_) name targets this site does not have
# under that name: point them at the page that holds that content now, or keep their text.
README_SECTIONS = {
    "Command line reference": ":doc:`/cli`",
    "Stores": ":doc:`/guide/stores`",
    "Bulk ingestion": ":doc:`/guide/ingestion`",
    "The service": ":doc:`/guide/service`",
    "Compatibility with image-match 1.x": ":doc:`/guide/compat`",
    "Which engines are tested where": ":ref:`support`",
    "Crops, bars, rotations and insets": ":ref:`crops`",
    "Accuracy": ":ref:`accuracy`",
    "Speed": ":ref:`speed`",
    "Operations": ":ref:`cluster`",
    "Fuzzing": ":ref:`fuzzing`",
}


def _readme_links(app, relative_path, parent_docname, content):
    if relative_path.name != "README.rst":
        return
    import re

    def link(match):
        title = " ".join(match.group(1).split())
        return README_SECTIONS.get(title, f"*{title}*")

    content[0] = re.sub(r"(?<![\w`])`([^`<>]+)`_(?!_)", link, content[0])


# The command line reference documents each command by its object (cli.rst): a command added to
# the group and not to that page fails the build instead of going undocumented.
def _every_command_documented(app, docname, source):
    if docname != "cli":
        return
    import importlib
    import re

    from image_match.cli import main

    documented = set()
    for module, name in re.findall(r"^\.\. click:: ([\w.]+):(\w+)$", source[0], re.M):
        documented.add(getattr(importlib.import_module(module), name).name)
    missing = sorted(set(main.list_commands(None)) - documented - {main.name})
    if missing:
        from sphinx.util import logging

        logging.getLogger(__name__).warning(
            "cli.rst does not document these commands: %s", ", ".join(missing),
            location=docname)


def setup(app):
    for event in ("description", "options", "arguments", "epilog"):
        app.connect(f"sphinx-click-process-{event}", _help_as_text)
    app.connect("include-read", _readme_links)
    app.connect("source-read", _every_command_documented)
