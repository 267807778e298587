"""A reader downloads a chapter's notebook and the book's package from the site, puts both
in an empty folder, and runs the notebook there: it must run to the end, install the
package from the wheel the build published, and write its outputs next to itself."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import mkdocs_hooks

REPO = Path(__file__).resolve().parents[1]
CHAPTER = "qkv-attention"  # the quickest chapter
pytestmark = pytest.mark.slow


def test_the_site_publishes_the_package_as_a_wheel():
    wheel = mkdocs_hooks.book_wheel()
    assert wheel.name == mkdocs_hooks._wheel_name()
    names = zipfile.ZipFile(wheel).namelist()
    assert "attnbook/chapter.py" in names and "attnbook/attention/dot_product.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch" in metadata
    assert mkdocs_hooks.book_wheel() == wheel, "an unchanged library reuses the cached wheel"


def environment_without_the_book(root: Path) -> Path:
    """A fresh venv that sees this venv's third-party packages but not attnbook itself
    (standing in for a reader's machine with torch installed, and no network)."""
    env = root / "env"
    # no pip of its own: pip, like torch, comes from the packages it is given below
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    deps = root / "deps"
    deps.mkdir()
    for entry in ours.iterdir():
        if entry.name.startswith(("attnbook", "__editable__", "_virtualenv")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "book-deps.pth").write_text(str(deps) + "\n")
    return env


def test_a_downloaded_notebook_runs_in_an_empty_folder(tmp_path):
    notebook = REPO / "docs" / "generated" / CHAPTER / f"{CHAPTER}.ipynb"
    if not notebook.exists():
        if os.environ.get("CI"):
            pytest.fail("the build did not produce the notebook (make test builds before it tests)")
        pytest.skip("build the book first (make test does): no notebook under docs/generated/")
    before = {p: p.stat().st_mtime_ns for p in (REPO / "docs" / "generated").rglob("*")}
    folder = tmp_path / "reader"
    folder.mkdir()
    shutil.copy2(notebook, folder)
    shutil.copy2(mkdocs_hooks.book_wheel(), folder)
    env = environment_without_the_book(tmp_path)
    python = env / "bin" / "python"
    assert subprocess.run([python, "-c", "import attnbook"], capture_output=True).returncode != 0
    run_env = {**os.environ, "ATTNBOOK_QUICK": "1", "ATTNBOOK_DEVICE": "cpu", "MPLBACKEND": "Agg",
               "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    for name in ("ATTNBOOK_OUT", "ATTNBOOK_BUILD", "PYTHONPATH", "VIRTUAL_ENV"):
        run_env.pop(name, None)
    proc = subprocess.run([python, "-m", "nbconvert", "--to", "notebook", "--execute", "--output", "ran.ipynb",
                           "--ExecutePreprocessor.timeout=600", f"{CHAPTER}.ipynb"],
                          cwd=folder, env=run_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the notebook failed outside the repository:\n{proc.stderr[-4000:]}"
    ran = json.loads((folder / "ran.ipynb").read_text())
    assert not [o for c in ran["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    outputs = folder / f"{CHAPTER}-outputs"
    assert any(outputs.glob("*.svg")), "the figures were not written next to the notebook"
    installed = subprocess.run([python, "-c", "import attnbook, sys; print(attnbook.__file__)"],
                               capture_output=True, text=True)
    assert str(env) in installed.stdout, "attnbook was not installed from the wheel into the reader's env"
    after = {p: p.stat().st_mtime_ns for p in (REPO / "docs" / "generated").rglob("*")}
    assert after == before, "the notebook wrote into the clone's docs/generated/"
