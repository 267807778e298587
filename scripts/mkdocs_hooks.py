"""MkDocs hooks: refresh stale chapters before a build, and self-host MathJax after it.

``mkdocs serve`` and a plain ``mkdocs build`` go through the same content-hash cache as
``scripts/build.py``: a chapter whose script or library changed is executed again before
the pages are rendered. ``scripts/build.py`` sets ATTNBOOK_CHAPTERS_FRESH=1 because it has
just done so itself.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[1]
MATHJAX = REPO / "node_modules" / "mathjax" / "es5"


def on_pre_build(config, **kwargs):
    if os.environ.get("ATTNBOOK_CHAPTERS_FRESH") == "1":
        return
    sys.path.insert(0, str(REPO / "scripts"))
    import build

    results = build.build_chapters(build.Layout(), device=os.environ.get("ATTNBOOK_DEVICE", "auto"))
    if build.report_failures(results):
        raise PluginError("a chapter failed to run (see above); its previous outputs were kept")


def on_post_build(config, **kwargs):
    if not (MATHJAX / "tex-mml-chtml.js").exists():
        raise PluginError("MathJax is not installed: run `npm ci` in the repository root "
                          "(or `make setup`), which installs the pinned mathjax@3 package.")
    target = Path(config["site_dir"]) / "assets" / "mathjax"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(MATHJAX, target)
