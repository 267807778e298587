"""Every chapter script runs in --quick mode, as a reader would run it, and writes every
file its page references; two runs with the same inputs write byte-identical figures."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnbook.chapter import MEASURED_FIGURES
from helpers import chapter_numbers

REPO = Path(__file__).resolve().parents[1]
SLUGS = sorted(p.stem for p in (REPO / "code" / "chapters").glob("*.py") if not p.name.startswith("_"))
FIGURE_SUFFIXES = {".svg", ".png", ".gif"}

pytestmark = pytest.mark.slow


def referenced_files(slug: str) -> set[str]:
    """Files under generated/<slug>/ named by any page (the notebook is the build's, not the script's)."""
    pattern = re.compile(rf"generated/{re.escape(slug)}/([A-Za-z0-9_.\-]+)")
    names = set()
    for page in (REPO / "docs").rglob("*.md"):
        if "generated" in page.relative_to(REPO / "docs").parts:
            continue
        names.update(pattern.findall(page.read_text(encoding="utf-8")))
    return {n.split("#")[0] for n in names if not n.endswith(".ipynb")}


def run_quick(slug: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0",
           "OMP_NUM_THREADS": "1", "ATTNBOOK_CORES": "1"}   # two runs share the two cores
    for name in ("ATTNBOOK_OUT", "ATTNBOOK_GENERATED", "ATTNBOOK_BUILD"):
        env.pop(name, None)
    return subprocess.run([sys.executable, str(REPO / "code" / "chapters" / f"{slug}.py"),
                           "--quick", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.suffix in FIGURE_SUFFIXES}


def in_dependency_order(slugs) -> list[str]:
    """Chapters after the chapters whose outputs they use (``ch.needs``), else by name."""
    import build

    layout, done, order = build.Layout(), set(), []

    def visit(slug):
        if slug not in done:
            done.add(slug)
            for needed in build.chapter_needs(layout, slug):
                visit(needed)
            order.append(slug)
    for slug in slugs:
        visit(slug)
    return order


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Two complete quick runs of the book, side by side (one per core): each writes every
    chapter into its own folder, in dependency order, so a chapter finds the outputs of the
    chapters it needs beside its own (``--out <run>/<slug>``)."""
    from concurrent.futures import ThreadPoolExecutor

    def one_run(attempt):
        root = tmp_path_factory.mktemp(attempt)
        return {slug: (root / slug, run_quick(slug, root / slug)) for slug in in_dependency_order(SLUGS)}

    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(one_run, ("first", "second"))
    return {slug: [first[slug], second[slug]] for slug in SLUGS}


def test_there_are_chapters():
    assert SLUGS, "no chapter scripts under code/chapters"


@pytest.mark.parametrize("slug", SLUGS)
def test_chapter_runs_in_quick_mode(slug, quick_runs):
    for _, proc in quick_runs[slug]:
        assert proc.returncode == 0, f"{slug} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("slug", SLUGS)
def test_chapter_writes_every_file_its_page_references(slug, quick_runs):
    wanted = referenced_files(slug)
    assert wanted, f"no page references docs/generated/{slug}/"
    out, _ = quick_runs[slug][0]
    missing = sorted(name for name in wanted if not (out / name).exists())
    assert not missing, f"{slug} --quick did not write {missing}"


@pytest.mark.parametrize("slug", SLUGS)
def test_figures_are_byte_identical_across_runs(slug, quick_runs):
    (first, _), (second, _) = quick_runs[slug]
    a, b = digest(first), digest(second)
    if not a:  # an appendix that only writes tables (the papers index) may draw nothing
        page = next(p for p in (REPO / "docs").rglob(f"{slug}.md") if "generated" not in p.parts)
        assert page.read_text(encoding="utf-8").startswith("# Appendix"), f"{slug} wrote no figures"
        return
    # figures drawn from timings are declared with ch.figure(..., measured=True)
    listing = first / MEASURED_FIGURES
    measured = set(listing.read_text().split()) if listing.exists() else set()
    assert measured <= set(a), f"{slug}: {MEASURED_FIGURES} names figures it did not write"
    assert len(measured) < len(a), f"{slug}: every figure is declared measured; at least one must be reproducible"
    changed = sorted(name for name in a if a[name] != b.get(name) and name not in measured)
    assert not changed, f"{slug}: these figures differ between two runs with the same inputs: {changed}"


@pytest.mark.parametrize("slug", SLUGS)
def test_every_chapter_has_a_page_and_a_notebook_in_the_nav(slug):
    nav = (REPO / "mkdocs.yml").read_text()
    assert f"generated/{slug}/{slug}.ipynb" in nav
    pages = [p for p in (REPO / "docs").rglob(f"{slug}.md") if "generated" not in p.parts]
    assert len(pages) == 1, f"expected one page docs/<part>/{slug}.md, found {pages}"
    assert str(pages[0].relative_to(REPO / "docs")) in nav


def test_asking_for_cuda_on_a_machine_without_it_fails_with_advice(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    slug = SLUGS[0]
    proc = subprocess.run([sys.executable, str(REPO / "code" / "chapters" / f"{slug}.py"),
                           "--device", "cuda", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--device cpu" in proc.stderr
    assert "Traceback" not in proc.stderr, "the message, not a traceback around it"


LIGHT_ONLY = re.compile(r"\b(darker|darkest|lighter|lightest|pale|paler|white|black)\b", re.I)
CAPTION = re.compile(r"<figcaption[^>]*>(.*?)</figcaption>|!\[([^\]]*)\]\(", re.S)


def test_captions_and_alt_text_hold_in_both_themes():
    """In the dark variant a stronger weight is brighter: 'darker = more weight' is wrong there."""
    found = []
    for page in sorted((REPO / "docs").rglob("*.md")):
        if "generated" in page.relative_to(REPO / "docs").parts or page.name == "style.md":
            continue
        for match in CAPTION.finditer(page.read_text(encoding="utf-8")):
            text = match.group(1) or match.group(2) or ""
            if LIGHT_ONLY.search(text):
                found.append(f"{page.relative_to(REPO)}: ...{text[:90]}...")
    script = (REPO / "docs" / "javascripts" / "explorer.js").read_text()
    found += [f"explorer.js: {m.group(0)}" for m in re.finditer(r"darker[^\"`]*", script)]
    assert not found, "captions that only hold in one theme:\n" + "\n".join(found)


def test_every_mention_of_an_existing_chapter_is_a_link_to_it():
    pages = chapter_numbers()
    # a mention inside link text: [ ... chapter 3 ... ](target)
    linked = re.compile(r"(?<!!)\[[^\]]*?\b[Cc]hapters? (\d+)[^\]]*\]\(([^)]+)\)")
    image = re.compile(r"!\[[^\]]*\]\([^)]*\)")  # alt text is not a place for links
    mention = re.compile(r"\b[Cc]hapter (\d+)\b")
    problems = []
    for page in sorted(pages.values()) + [REPO / "docs" / "index.md"]:
        text = image.sub("", page.read_text(encoding="utf-8"))
        for match in linked.finditer(text):
            number, target = int(match.group(1)), match.group(2).split("#")[0]
            if number in pages and target and not (page.parent / target).resolve() == pages[number].resolve():
                problems.append(f"{page.relative_to(REPO)}: '{match.group(0)[:60]}' links to {target}")
        plain = linked.sub("", text)
        plain = re.sub(r"^#.*$|`[^`]*`", "", plain, flags=re.M)  # headings and code
        for match in mention.finditer(plain):
            number = int(match.group(1))
            if number in pages and pages[number] != page:
                problems.append(f"{page.relative_to(REPO)}: '{plain[max(0, match.start() - 20):match.end() + 10]}'"
                                f" is not a link")
    assert not problems, "\n".join(problems)
