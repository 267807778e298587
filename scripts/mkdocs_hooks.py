"""MkDocs hooks: fresh chapters before a build; downloads, MathJax and a clean search index after.

``mkdocs serve`` and a plain ``mkdocs build`` go through the same content-hash cache as
``scripts/build.py``: a chapter whose script, library or outputs changed is executed again
before the pages are rendered. ``scripts/build.py`` sets ATTNBOOK_CHAPTERS_FRESH=1 because
it has just done so itself.

Under ``mkdocs serve`` a failing chapter is reported and the site is built with its
previous outputs; it is not run again until one of its inputs changes, and a failure
writes nothing into the watched folders, so it cannot trigger a rebuild loop. Edits under
``code/`` (chapter scripts and the library) are watched too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[1]
MATHJAX = REPO / "node_modules" / "mathjax" / "es5"
WHEEL_CACHE = REPO / ".cache" / "wheel"
DOWNLOADS = "downloads"  # site folder of the book's package (the wheel)

_state = {"command": None, "failed": {}}  # failed: slug -> cache key of the failing run


def _build():
    sys.path.insert(0, str(REPO / "scripts"))
    import build

    return build


def _layout():
    return _build().Layout()


def on_startup(command, dirty=False, **kwargs):
    _state["command"] = command


def on_serve(server, config, builder, **kwargs):
    server.watch(str(REPO / "code"))  # chapter scripts and the library
    return server


def on_pre_build(config, **kwargs):
    if os.environ.get("ATTNBOOK_CHAPTERS_FRESH") == "1":
        return
    build = _build()
    layout, device = _layout(), os.environ.get("ATTNBOOK_DEVICE", "auto")
    serving = _state["command"] == "serve"
    slugs = layout.slugs()
    if serving:  # a chapter that failed with these very inputs is not run again
        resolved = build.resolve(device)
        lib = build.library_digest(layout)
        slugs = [s for s in slugs
                 if _state["failed"].get(s) != build.chapter_key(layout, s, resolved, False, lib)]
        if not slugs:
            return
    results = build.build_chapters(layout, slugs, device=device)
    if not build.report_failures(results):
        return
    if not serving:
        raise PluginError("a chapter failed to run (see above); its previous outputs were kept")
    for r in results:  # remembered with the key of the inputs they ran on (computed above)
        if r.status == "failed":
            _state["failed"][r.slug] = build.chapter_key(layout, r.slug, resolved, False, lib)
    # printed, not logged: under `strict: true` a logged error or warning aborts the rebuild,
    # and the point here is to keep serving the previous outputs
    print("\nserving the previous outputs of the failed chapter(s); fix the script and save it to retry",
          file=sys.stderr)


# -- pages -------------------------------------------------------------------------------
def _chapter_slugs() -> set[str]:
    return {p.stem for p in (REPO / "code" / "chapters").glob("*.py") if not p.name.startswith("_")}


def _wheel_name() -> str:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return f"attnbook-{version}-py3-none-any.whl"


def download_buttons(slug: str, to_root: str, notebook_page: str | None) -> str:
    """The HTML of a chapter's download bar; ``to_root`` leads from the page to the site root."""
    notebook = f"{to_root}generated/{slug}/{slug}/{slug}.ipynb"
    wheel = f"{to_root}{DOWNLOADS}/{_wheel_name()}"
    parts = [f'<a class="md-button md-button--primary ab-download-notebook" href="{notebook}" '
             f'download="{slug}.ipynb">Download notebook</a>',
             f'<a class="md-button ab-download-wheel" href="{wheel}" download>Download package (.whl)</a>']
    if notebook_page:
        parts.append(f'<a class="md-button" href="{notebook_page}">View notebook</a>')
    help_link = f"{to_root}contribute/#run-a-chapter-as-a-notebook"
    return ('<div class="ab-downloads" role="group" aria-label="Run this chapter yourself">'
            + "".join(parts)
            + f'<p class="ab-downloads-help">Run it yourself: both files in one folder; the notebook\'s first '
              f'cell installs the package. <a href="{help_link}">More</a></p></div>')


def _to_root(page) -> str:
    depth = page.url.strip("/").count("/") + 1 if page.url.strip("/") else 0
    return "../" * depth


EXPLORER = re.compile(r'(<div class="attn-explorer"[^>]*>)\s*(</div>)')
EXPLORER_FALLBACK = ('<p class="ae-fallback">This interactive view needs JavaScript, which is off or still '
                     'loading. The static figure that follows shows the same attention.</p>')


def on_page_content(html_text, page, config, files, **kwargs):
    """Chapter pages and their notebook pages get a download bar under the title; an empty
    explorer gets a message that stands until its script replaces it."""
    html_text = EXPLORER.sub(lambda m: m.group(1) + EXPLORER_FALLBACK + m.group(2), html_text)
    src = page.file.src_uri
    slug, notebook_page = None, None
    if src.endswith(".ipynb") and src.startswith("generated/"):
        slug = Path(src).stem
    elif src.endswith(".md") and Path(src).stem in _chapter_slugs() and not src.startswith("generated/"):
        slug = Path(src).stem
        notebook_page = f"{_to_root(page)}generated/{slug}/{slug}/"
    if slug is None:
        return html_text
    bar = download_buttons(slug, _to_root(page), notebook_page)
    heading = re.search(r"</h1>", html_text)
    if heading:
        return html_text[:heading.end()] + bar + html_text[heading.end():]
    return bar + html_text


# -- after the build -------------------------------------------------------------------------
def on_post_build(config, **kwargs):
    site = Path(config["site_dir"])
    if not (MATHJAX / "tex-mml-chtml.js").exists():
        raise PluginError("MathJax is not installed: run `npm ci` in the repository root "
                          "(or `make setup`), which installs the pinned mathjax@3 package.")
    target = site / "assets" / "mathjax"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(MATHJAX, target)
    (site / DOWNLOADS).mkdir(exist_ok=True)
    shutil.copy2(book_wheel(), site / DOWNLOADS / _wheel_name())
    clean_search_index(site / "search" / "search_index.json")


def book_wheel() -> Path:
    """The book's package as a wheel (cached by the hash of its sources), for the site to publish.

    Built from a copy of ``pyproject.toml`` and ``code/attnbook`` so that nothing is written
    into the checkout (``mkdocs serve`` watches ``code/``), with a fixed timestamp so that
    unchanged sources give an identical file.
    """
    sources = [REPO / "pyproject.toml"] + sorted(
        p for p in (REPO / "code" / "attnbook").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    folder = WHEEL_CACHE / digest.hexdigest()[:16]
    wheel = folder / _wheel_name()
    if wheel.exists():
        return wheel
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        (src / "code").mkdir(parents=True)
        shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
        shutil.copytree(REPO / "code" / "attnbook", src / "code" / "attnbook",
                        ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PIP_NO_INDEX": "1"}
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                               "--no-build-isolation", "-w", str(Path(tmp) / "out"), str(src)],
                              capture_output=True, text=True, env=env)
        built = list((Path(tmp) / "out").glob("attnbook-*.whl"))
        if proc.returncode != 0 or not built:
            raise PluginError(f"could not build the book's wheel:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        shutil.rmtree(WHEEL_CACHE, ignore_errors=True)  # keep only the current wheel
        folder.mkdir(parents=True)
        shutil.copy2(built[0], wheel)
    return wheel


# -- search ----------------------------------------------------------------------------------
DISPLAY_MATH = re.compile(r"\\\[.*?\\\]|\$\$.*?\$\$|\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S)
INLINE_MATH = re.compile(r"\\\((.*?)\\\)", re.S)
TEX_WORDS = {r"\sqrt": "√", r"\sum": "Σ", r"\prod": "∏", r"\max": "max", r"\min": "min",
             r"\lambda": "λ", r"\mu": "μ", r"\pi": "π", r"\odot": "⊙", r"\otimes": "⊗",
             r"\cdots": "…", r"\ldots": "…", r"\dots": "…", r"\neq": "≠", r"\leq": "≤", r"\geq": "≥",
             r"\sim": "~", r"\propto": "∝", r"\partial": "∂", r"\nabla": "∇", r"\mathbb{E}": "E", r"\top": "ᵀ", r"\times": "×", r"\in": "∈", r"\mathbb{R}": "ℝ",
             r"\alpha": "α", r"\beta": "β", r"\sigma": "σ", r"\theta": "θ", r"\ell": "ℓ", r"\cdot": "·",
             r"\le": "≤", r"\ge": "≥", r"\approx": "≈", r"\to": "→", r"\infty": "∞", r"\log": "log",
             r"\exp": "exp", r"\operatorname": "", r"\text": "", r"\mathrm": "", r"\mathbf": "",
             r"\frac": "", r"\left": "", r"\right": "", r"\,": " ", r"\;": " ", r"\!": "", r"\ ": " ",
             r"\{": "{", r"\}": "}", r"\epsilon": "ε", r"\varepsilon": "ε", r"\Theta": "Θ", r"\delta": "δ",
             r"\gamma": "γ", r"\omega": "ω", r"\phi": "φ", r"\tilde": ""}


def plain_math(tex: str) -> str:
    """A readable plain-text version of a short TeX formula, for search snippets."""
    for word in sorted(TEX_WORDS, key=len, reverse=True):
        tex = tex.replace(word, TEX_WORDS[word])
    tex = re.sub(r"\\[A-Za-z]+", "", tex)        # any other command
    tex = re.sub(r"[{}]", "", tex)
    tex = tex.replace("\\", " ")                # a stray backslash (\\, \|) would read as TeX
    return " ".join(tex.split())


def clean_text(text: str) -> str:
    """Search text (HTML) without TeX source, permalink signs or the copy button's label."""
    text = DISPLAY_MATH.sub(" ", text)
    text = INLINE_MATH.sub(lambda m: plain_math(m.group(1)), text)
    text = text.replace("¶", "").replace("Copied!", "")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def clean_search_index(path: Path) -> None:
    if not path.exists():
        return
    index = json.loads(path.read_text(encoding="utf-8"))
    for doc in index.get("docs", []):
        for key in ("title", "text"):
            if key in doc:
                doc[key] = clean_text(doc[key])
    path.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
