"""`make new-chapter` writes a script that runs, a page with every section of the
template, and the navigation entries; it refuses bad names and never overwrites."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import new_chapter

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["Intuition", "The math", "Implementation", "Experiment", "The paper, reproduced",
            "Cost and pitfalls", "Exercises", "References"]


@pytest.fixture
def root(tmp_path):
    shutil.copy2(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "code" / "chapters").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    return tmp_path


def test_the_scaffold_writes_script_page_and_navigation(root):
    new_chapter.new_chapter("toy-lookup", "A toy lookup", 24, "interpret", root=root)
    page = (root / "docs" / "interpret" / "toy-lookup.md").read_text()
    assert page.startswith("# 24. A toy lookup\n")
    headings = re.findall(r"^## (.+)$", page, re.M)
    assert headings == SECTIONS
    assert '??? success "Solution"' in page
    config = (root / "mkdocs.yml").read_text()
    assert "      - interpret/toy-lookup.md" in config
    assert '"24. A toy lookup": generated/toy-lookup/toy-lookup.ipynb' in config
    # the notebook lands in the 'Run it yourself' section, the page in its part's section
    nav = config[config.index("\nnav:"):]
    assert nav.index("Seeing and explaining attention") < nav.index("interpret/toy-lookup.md")
    assert nav.index("Run it yourself") < nav.index("generated/toy-lookup/toy-lookup.ipynb")


@pytest.mark.slow
def test_the_scaffolded_script_runs_and_writes_what_its_page_shows(root, tmp_path_factory):
    new_chapter.new_chapter("toy-lookup", "A toy lookup", 24, "interpret", root=root)
    out = tmp_path_factory.mktemp("out")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("ATTNBOOK_OUT", None)
    proc = subprocess.run([sys.executable, str(root / "code" / "chapters" / "toy-lookup.py"), "--quick",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (root / "docs" / "interpret" / "toy-lookup.md").read_text()
    wanted = {name.split("#")[0] for name in re.findall(r"generated/toy-lookup/([\w.\-#]+)", page)
              if not name.endswith(".ipynb")}
    assert wanted and all((out / name).exists() for name in wanted), (wanted, sorted(os.listdir(out)))


def test_bad_names_are_refused_and_nothing_is_overwritten(root):
    with pytest.raises(ValueError, match="slug='Bad Name'"):
        new_chapter.new_chapter("Bad Name", "T", 3, "foundations", root=root)
    with pytest.raises(ValueError, match="part='nowhere'"):
        new_chapter.new_chapter("fine", "T", 3, "nowhere", root=root)
    new_chapter.new_chapter("fine", "T", 3, "foundations", root=root)
    config = (root / "mkdocs.yml").read_text()
    with pytest.raises(FileExistsError, match="exists already"):
        new_chapter.new_chapter("fine", "T", 3, "foundations", root=root)
    assert (root / "mkdocs.yml").read_text() == config
