"""The built site: `mkdocs build --strict`, then every page in headless Chromium.

Browser tests are skipped, with the reason, when Chromium is missing on a developer's
machine; with CI set they fail instead, because CI must run them.
"""
from __future__ import annotations

import functools
import json
import re
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = (os.environ.get("ATTNBOOK_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser") or shutil.which("google-chrome"))
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
EXPLORER_PAGE = "real-models/pretrained-encoder/"
CHAPTER_PAGE, CHAPTER_SLUG = "foundations/qkv-attention/", "qkv-attention"
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"
PHONE = 390


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "ATTNBOOK_DEVICE": "cpu"}  # as `make test` built them
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return site


def test_mkdocs_build_strict_succeeds_with_self_hosted_mathjax(built_site):
    assert (built_site / "index.html").exists()
    assert (built_site / "assets" / "mathjax" / "tex-mml-chtml.js").exists()
    html = (built_site / "index.html").read_text()
    assert "fonts.googleapis" not in html and "cdn.jsdelivr" not in html


@pytest.fixture(scope="session")
def server(built_site):
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but Chromium is missing: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium); browser tests skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


class Visit:
    """A page opened with every request outside 127.0.0.1 aborted and every error recorded."""

    def __init__(self, browser, url, color_scheme="light", width=1280):
        self.context = browser.new_context(color_scheme=color_scheme, accept_downloads=True,
                                           viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.outside = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(url, wait_until="load")
        self.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        self.page.evaluate("() => MathJax.startup.promise")

    def _route(self, route):
        url = route.request.url
        if urlparse(url).hostname not in ("127.0.0.1", "localhost"):
            self.outside.append(url)
            return route.abort()
        return route.continue_()

    def close(self):
        self.context.close()


def pytest_generate_tests(metafunc):
    if "theme" in metafunc.fixturenames:
        metafunc.parametrize("theme", ["light", "dark"])
    if "page_path" in metafunc.fixturenames:
        # the page list comes from the nav, so that it is known before the site is built
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_multi_constructor("", lambda loader, suffix, node: None)
        nav = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)["nav"]
        paths = []

        def walk(item):
            if isinstance(item, str):
                paths.append(item)
            elif isinstance(item, dict):
                for value in item.values():
                    walk(value)
            elif isinstance(item, list):
                for value in item:
                    walk(value)

        walk(nav)
        urls = []
        for path in paths:
            stem = path.rsplit(".", 1)[0]
            urls.append("" if stem == "index" else (stem[:-len("index")] if stem.endswith("/index") else stem + "/"))
        metafunc.parametrize("page_path", urls + ["404.html"])


@pytest.mark.browser
def test_page_renders_cleanly_in_a_real_browser(browser, server, page_path):
    visit = Visit(browser, server + page_path)
    try:
        page = visit.page
        merrors = page.evaluate("() => document.querySelectorAll('mjx-merror').length")
        untypeset = page.evaluate(
            "() => [...document.querySelectorAll('.arithmatex')].filter(e => !e.querySelector('mjx-container')).length")
        broken_images = page.evaluate(
            "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        unlabeled = page.evaluate(
            "() => [...document.querySelectorAll('article img')].filter(i => !i.alt).map(i => i.src)")
        raw_tex_in_nav = page.evaluate(
            "() => [...document.querySelectorAll('.md-nav__link')].map(a => a.textContent).filter(t => /\\\\[(\\[]/.test(t))")
        raw_dollars = page.evaluate(
            "() => [...document.querySelectorAll('article figcaption, article td, article li, article p')]"
            # code listings may hold '$' in strings; only prose counts
            ".map(e => { const c = e.cloneNode(true); c.querySelectorAll('pre, code, mjx-container')"
            ".forEach(x => x.remove()); return c.textContent; })"
            ".filter(t => /\\$[^$\\s][^$]*\\$/.test(t)).slice(0, 3)")
        assert merrors == 0, f"{page_path}: {merrors} MathJax errors"
        assert not raw_dollars, f"{page_path}: TeX left as raw $...$ text: {raw_dollars}"
        assert not raw_tex_in_nav, f"{page_path}: headings with TeX show raw in the navigation: {raw_tex_in_nav}"
        assert untypeset == 0, f"{page_path}: {untypeset} math elements were not typeset"
        assert not broken_images, f"{page_path}: images failed to load: {broken_images}"
        assert not unlabeled, f"{page_path}: images without alt text: {unlabeled}"
        placeholder = page.evaluate("() => [...document.images].filter(i => /No description has been provided/"
                                    ".test(i.alt)).length")
        assert placeholder == 0, f"{page_path}: {placeholder} images with nbconvert's placeholder alt text"
        if page_path != "404.html":
            assert not visit.errors, f"{page_path}: console errors: {visit.errors}"
        assert not visit.outside, f"{page_path}: requests left the machine: {visit.outside}"
    finally:
        visit.close()


@pytest.mark.browser
def test_the_palette_toggle_switches_to_dark_figures(browser, server):
    visit = Visit(browser, server + "foundations/qkv-attention/")
    try:
        page = visit.page
        assert page.evaluate("() => document.body.getAttribute('data-md-color-scheme')") == "default"
        page.click("label[for='__palette_1']")
        page.wait_for_function("() => document.body.getAttribute('data-md-color-scheme') === 'slate'")
        shown = page.evaluate("() => [...document.querySelectorAll('article img')]"
                              ".filter(i => i.offsetParent !== null).map(i => i.getAttribute('src'))")
        assert shown and all(src.endswith("#only-dark") for src in shown), shown
        assert not visit.errors and not visit.outside
    finally:
        visit.close()


@pytest.mark.browser
def test_search_finds_a_chapter_offline(browser, server):
    visit = Visit(browser, server)
    try:
        page = visit.page
        page.click("input.md-search__input")
        # The index loads in a web worker; a query typed before it is ready finds nothing,
        # so type it again until results appear (up to about 40 s on a loaded machine).
        for _ in range(8):
            page.fill("input.md-search__input", "")
            page.type("input.md-search__input", "softmax")
            try:
                page.wait_for_selector(".md-search-result__item", timeout=5000)
                break
            except Exception:  # playwright's TimeoutError: try the query again
                continue
        assert page.locator(".md-search-result__item").count() > 0
        assert not visit.errors and not visit.outside
    finally:
        visit.close()


@pytest.fixture
def explorer(browser, server, built_site):
    visit = Visit(browser, server + EXPLORER_PAGE)
    visit.page.wait_for_selector(".attn-explorer[data-ready='true']", timeout=20000)
    data = json.loads((built_site / "generated" / "pretrained-encoder" / "explorer.json").read_text())
    yield visit, data
    visit.close()


def token_weights(page):
    return page.eval_on_selector_all(".attn-explorer .ae-token", "bs => bs.map(b => b.dataset.weight)")


@pytest.mark.browser
def test_explorer_follows_layer_and_head_choices(explorer):
    visit, data = explorer
    page = visit.page
    before = page.eval_on_selector(".ae-matrix", "c => c.toDataURL()")
    page.select_option(".attn-explorer .ae-layer", "3")
    page.select_option(".attn-explorer .ae-head", "5")
    root = page.locator(".attn-explorer")
    assert (root.get_attribute("data-layer"), root.get_attribute("data-head")) == ("3", "5")
    assert page.eval_on_selector(".ae-matrix", "c => c.toDataURL()") != before
    page.click(".ae-cell[data-layer='1'][data-head='7']")
    assert (root.get_attribute("data-layer"), root.get_attribute("data-head")) == ("1", "7")
    assert page.locator(".ae-cell.ae-current").count() == 1
    assert not visit.errors and not visit.outside


@pytest.mark.browser
def test_explorer_shows_what_a_hovered_token_attends_to(explorer):
    visit, data = explorer
    page = visit.page
    page.select_option(".attn-explorer .ae-layer", "2")
    page.select_option(".attn-explorer .ae-head", "4")
    page.hover(".ae-token[data-index='3']")
    assert page.locator(".attn-explorer").get_attribute("data-token") == "3"
    expected = [f"{w:.3f}" for w in data["sentences"][0]["attention"][2][4][3]]
    assert token_weights(page) == expected
    # another sentence: the tokens and the weights follow
    page.select_option(".attn-explorer .ae-sentence", "1")
    page.hover(".ae-token[data-index='1']")
    expected = [f"{w:.3f}" for w in data["sentences"][1]["attention"][2][4][1]]
    assert token_weights(page) == expected
    assert not visit.errors and not visit.outside


@pytest.mark.browser
def test_explorer_works_from_the_keyboard_and_saves_png(explorer):
    visit, _ = explorer
    page = visit.page
    page.focus(".ae-token[data-index='0']")
    page.keyboard.press("ArrowRight")
    assert page.locator(".attn-explorer").get_attribute("data-token") == "1"
    page.focus(".ae-cell[data-layer='0'][data-head='0']")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    root = page.locator(".attn-explorer")
    assert (root.get_attribute("data-layer"), root.get_attribute("data-head")) == ("1", "1")
    with page.expect_download() as info:
        page.click(".attn-explorer .ae-save")
    assert info.value.suggested_filename.endswith(".png")
    assert not visit.errors and not visit.outside


# -- every page on a phone, and accessibility in both themes ---------------------------------------
OVERFLOW_JS = """() => {
  const W = document.documentElement.clientWidth, found = [];
  for (const e of document.querySelectorAll('body *')) {
    const r = e.getBoundingClientRect();
    if (r.right <= W + 1 || r.width === 0 || getComputedStyle(e).position === 'fixed') continue;
    if (e.closest('mjx-assistive-mml')) continue;  // MathJax's copy for screen readers, clipped
    let contained = false;  // inside a box that scrolls or clips, itself within the page
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (['auto', 'scroll', 'hidden', 'clip'].includes(s.overflowX) && a.getBoundingClientRect().right <= W + 1) {
        contained = true; break;
      }
    }
    if (!contained) found.push(e.tagName.toLowerCase() + '.' + String(e.className).slice(0, 30) + ' ' + (e.textContent || '').slice(0, 40));
  }
  return [document.documentElement.scrollWidth, found.slice(0, 5)];
}"""


@pytest.mark.browser
def test_no_page_scrolls_sideways_on_a_phone(browser, server, page_path):
    visit = Visit(browser, server + page_path, width=PHONE)
    try:
        visit.page.wait_for_timeout(300)  # book.js marks wide formulas after typesetting
        width, culprits = visit.page.evaluate(OVERFLOW_JS)
        assert width <= PHONE, f"{page_path} is {width} px wide at {PHONE} px; too wide: {culprits}"
    finally:
        visit.close()


@pytest.mark.browser
def test_axe_finds_no_serious_accessibility_violations(browser, server, page_path, theme):
    if not AXE.exists():
        pytest.fail("axe-core is missing: run `npm ci` (make setup does)")
    visit = Visit(browser, server + page_path, color_scheme=theme)
    try:
        page = visit.page
        page.wait_for_timeout(300)
        page.add_script_tag(path=str(AXE))
        violations = page.evaluate("""async () => {
          const result = await axe.run(document, {resultTypes: ['violations']});
          return result.violations.filter(v => ['serious', 'critical'].includes(v.impact))
            .map(v => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | ')}`);
        }""")
        assert not violations, f"{page_path} ({theme}): {violations}"
    finally:
        visit.close()


# -- run it yourself: the download bar ------------------------------------------------------------
@pytest.mark.browser
@pytest.mark.parametrize("where", [CHAPTER_PAGE, f"generated/{CHAPTER_SLUG}/{CHAPTER_SLUG}/"])
def test_the_download_button_gives_a_valid_notebook(browser, server, where):
    visit = Visit(browser, server + where)
    try:
        page = visit.page
        button = page.locator(".ab-downloads .ab-download-notebook")
        assert button.is_visible()
        with page.expect_download() as info:
            button.click()
        assert info.value.suggested_filename == f"{CHAPTER_SLUG}.ipynb"
        notebook = json.loads(Path(info.value.path()).read_text())
        assert notebook["nbformat"] == 4 and len(notebook["cells"]) > 5
        with page.expect_download() as info:
            page.locator(".ab-downloads .ab-download-wheel").click()
        assert info.value.suggested_filename.startswith("attnbook-") and info.value.suggested_filename.endswith(".whl")
        assert zipfile.ZipFile(info.value.path()).namelist()
        assert not visit.errors and not visit.outside
    finally:
        visit.close()


def test_search_index_has_no_raw_tex_or_widget_labels(built_site):
    index = json.loads((built_site / "search" / "search_index.json").read_text())
    texts = [d.get("title", "") + " " + d.get("text", "") for d in index["docs"]]
    # a notebook page is code, shown as written (TeX in its strings included); the book's
    # pages are prose, where TeX would be a rendering leak
    prose = [re.sub(r"<(pre|code)>.*?</\1>", " ", t, flags=re.S)
             for d, t in zip(index["docs"], texts) if not d["location"].startswith("generated/")]
    for marker, where in [(m, prose) for m in ("\\[", "\\(", "\\frac", "$$")] + \
                         [(m, texts) for m in ("¶", "Copied!")]:
        leaked = [t[:80] for t in where if marker in t]
        assert not leaked, f"search snippets show {marker!r}: {leaked[:3]}"


@pytest.mark.browser
def test_a_figure_opens_enlarged_in_a_lightbox(browser, server):
    visit = Visit(browser, server + CHAPTER_PAGE)
    try:
        page = visit.page
        link = page.locator("article a.glightbox:visible").first
        link.click()
        page.wait_for_selector(".glightbox-container .gslide-image img", state="visible", timeout=10000)
        page.keyboard.press("Escape")
        assert not visit.errors and not visit.outside
    finally:
        visit.close()


# -- the explorer: keyboard, screen readers, no JavaScript ---------------------------------------------
@pytest.mark.browser
def test_explorer_is_one_tab_stop_per_widget(explorer):
    visit, _ = explorer
    page = visit.page
    stops = page.evaluate("""() => [...document.querySelectorAll('.attn-explorer *')]
        .filter(e => e.tabIndex >= 0 && !e.disabled && e.offsetParent !== null)
        .map(e => e.className || e.tagName)""")
    # sentence, layer and head menus, the save button, the token toolbar, the layer x head grid
    assert len(stops) == 6, stops
    page.focus(".ae-token[data-index='0']")
    page.keyboard.press("End")
    last = page.evaluate("() => document.activeElement.dataset.index")
    assert int(last) == page.locator(".ae-token").count() - 1
    page.keyboard.press("Tab")  # leaves the token toolbar for the next widget
    assert page.evaluate("() => document.activeElement.classList.contains('ae-token')") is False
    assert not visit.errors and not visit.outside


@pytest.mark.browser
def test_explorer_gives_screen_readers_the_weights(explorer):
    visit, data = explorer
    page = visit.page
    page.focus(".ae-token[data-index='2']")
    row = data["sentences"][0]["attention"][0][0][2]
    label = page.get_attribute(".ae-token[data-index='4']", "aria-label")
    assert f"{row[4]:.3f}" in label, label
    assert "strongest" in page.text_content(".attn-explorer .ae-role")
    cells = page.locator(".attn-explorer .ae-sr table tbody tr").count()
    assert cells == len(data["sentences"][0]["tokens"])


@pytest.mark.browser
def test_explorer_saves_a_png_with_the_colour_scale(explorer):
    visit, data = explorer
    page = visit.page
    page.focus(".ae-token[data-index='1']")
    with page.expect_download() as info:
        page.click(".attn-explorer .ae-save")
    png = Path(info.value.path()).read_bytes()
    width = int.from_bytes(png[16:20], "big")
    n = len(data["sentences"][0]["tokens"])
    assert width == 110 + 24 * n + 20 + 70, "the PNG has room for the colour scale"


@pytest.mark.browser
def test_explorer_without_javascript_points_to_the_static_figure(browser, server):
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.route("**/*", lambda route: route.continue_() if urlparse(route.request.url).hostname == "127.0.0.1"
                   else route.abort())
        page.goto(server + EXPLORER_PAGE)
        assert "needs JavaScript" in page.text_content(".attn-explorer")
        assert "static figure" in page.text_content(".attn-explorer")
    finally:
        context.close()


# -- the explorer as a general component: a causal model (chapter 8) -----------------------------------
GPT_EXPLORER_PAGE = "position/gpt/"


def open_explorer(browser, server, path, **how):
    visit = Visit(browser, server + path, **how)
    visit.page.wait_for_selector(".attn-explorer[data-ready='true']", timeout=20000)
    return visit


def softmax(values, temperature=1.0):
    import math
    finite = [v for v in values if v is not None]
    top = max(finite)
    e = [0.0 if v is None else math.exp((v - top) / temperature) for v in values]
    return [x / sum(e) for x in e]


@pytest.fixture
def gpt_explorer(browser, server, built_site):
    visit = open_explorer(browser, server, GPT_EXPLORER_PAGE)
    data = json.loads((built_site / "generated" / "gpt" / "explorer.json").read_text())
    yield visit, data
    visit.close()


@pytest.mark.browser
def test_explorer_of_a_causal_model_masks_later_keys(gpt_explorer):
    visit, data = gpt_explorer
    page = visit.page
    assert data["causal"] is True
    page.select_option(".attn-explorer .ae-layer", "1")
    page.hover(".ae-token[data-index='3']")
    future = page.eval_on_selector_all(".attn-explorer .ae-token", "bs => bs.map(b => b.classList.contains('ae-future'))")
    assert future == [j > 3 for j in range(len(data["sentences"][0]["tokens"]))]
    assert "masked" in page.get_attribute(".ae-token[data-index='5']", "aria-label")
    expected = [f"{w:.3f}" for w in data["sentences"][0]["attention"][1][0][3]]
    assert token_weights(page) == expected
    assert not visit.errors and not visit.outside


@pytest.mark.browser
def test_explorer_stage_view_goes_from_scores_to_the_stored_weights(gpt_explorer):
    visit, data = gpt_explorer
    page = visit.page
    page.select_option(".attn-explorer .ae-head", "2")
    page.focus(".ae-token[data-index='6']")
    stages = page.locator(".attn-explorer .ae-stages")
    assert stages.get_attribute("data-available") == "true" and stages.get_attribute("data-query") == "6"
    # the softmax of the stored (rounded) scores matches the stored weights up to rounding (1e-3 steps)
    assert float(stages.get_attribute("data-max-diff")) < 3e-3
    scores = data["sentences"][0]["scores"][0][2][6]
    masked = [None if j > 6 else v for j, v in enumerate(scores)]
    shown = page.eval_on_selector_all(".ae-stage-table tr[data-stage='softmax'] td", "ts => ts.map(t => t.textContent)")
    assert shown == [f"{p:.3f}" for p in softmax(masked)]
    masked_row = page.eval_on_selector_all(".ae-stage-table tr[data-stage='masked'] td", "ts => ts.map(t => t.textContent)")
    assert masked_row[7:] == ["−∞"] * (len(scores) - 7)
    raw = page.eval_on_selector_all(".ae-stage-table tr[data-stage='raw'] td", "ts => ts.map(t => t.textContent)")
    assert raw[0] == f"{scores[0] / data['scale']:.2f}".replace("-", "−")
    assert not visit.errors and not visit.outside


@pytest.mark.browser
def test_explorer_next_token_follows_temperature_and_top_k(gpt_explorer):
    visit, data = gpt_explorer
    page = visit.page
    root = page.locator(".attn-explorer")
    last = len(data["sentences"][0]["tokens"]) - 1
    logits = data["sentences"][0]["next_token"]["logits"][last]   # no token chosen: the last position

    def probs():
        return [float(p) for p in page.eval_on_selector_all(".ae-cand", "cs => cs.map(c => c.dataset.prob)")]

    assert probs() == pytest.approx(softmax(logits[:10]), abs=1e-4)   # shown to 4 decimals
    page.focus(".attn-explorer .ae-temp")
    for _ in range(5):
        page.keyboard.press("ArrowLeft")  # 1.0 -> 0.5, from the keyboard
    assert root.get_attribute("data-temperature") == "0.5"
    page.select_option(".attn-explorer .ae-topk", "3")
    assert root.get_attribute("data-topk") == "3"
    assert probs() == pytest.approx(softmax(logits[:3], 0.5), abs=1e-4)
    # another position: the distribution after it, with the character that actually follows marked
    page.focus(".ae-token[data-index='2']")
    tokens = data["sentences"][0]["next_token"]["tokens"][2][:3]
    shown = page.eval_on_selector_all(".ae-cand-token", "cs => cs.map(c => c.textContent)")
    assert len(shown) == 3 and shown == [{" ": "␣", "\n": "⏎"}.get(t, t) for t in tokens]
    actual = data["sentences"][0]["tokens"][3]
    assert page.locator(".ae-cand.ae-actual").count() == (1 if actual in tokens else 0)
    assert not visit.errors and not visit.outside


@pytest.mark.browser
def test_explorer_of_a_causal_model_is_one_tab_stop_per_control(gpt_explorer):
    visit, _ = gpt_explorer
    stops = visit.page.evaluate("""() => [...document.querySelectorAll('.attn-explorer *')]
        .filter(e => e.tabIndex >= 0 && !e.disabled && e.offsetParent !== null)
        .map(e => e.className || e.tagName)""")
    # input, layer and head menus, save, tokens, temperature, top-k, the layer x head grid
    assert len(stops) == 8, stops
    assert not visit.errors and not visit.outside


@pytest.mark.browser
@pytest.mark.parametrize("path", [EXPLORER_PAGE, GPT_EXPLORER_PAGE])
def test_explorer_fits_a_phone_in_both_themes(browser, server, path, theme):
    visit = open_explorer(browser, server, path, color_scheme=theme, width=PHONE)
    try:
        page = visit.page
        page.focus(".ae-token[data-index='1']")
        page.wait_for_timeout(200)
        right = page.evaluate("""() => Math.max(...[...document.querySelectorAll('.attn-explorer *')]
            .filter(e => !e.closest('.ae-sr')).map(e => e.getBoundingClientRect().right))""")
        assert right <= PHONE, f"the explorer reaches {right} px on a {PHONE} px screen"
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE
        assert not visit.errors and not visit.outside
    finally:
        visit.close()


@pytest.mark.browser
def test_two_explorers_on_one_page_are_independent(browser, server):
    visit = open_explorer(browser, server, GPT_EXPLORER_PAGE)
    try:
        page = visit.page
        page.evaluate("""() => {
          const first = document.querySelector('.attn-explorer');
          const second = document.createElement('div');
          second.className = 'attn-explorer';
          second.dataset.src = first.dataset.src;
          first.after(second);
          window.attnbookExplorer.init();
        }""")
        page.wait_for_function("() => document.querySelectorAll(\".attn-explorer[data-ready='true']\").length === 2")
        first, second = page.locator(".attn-explorer").nth(0), page.locator(".attn-explorer").nth(1)
        second.locator(".ae-layer").select_option("1")
        second.locator(".ae-token[data-index='2']").focus()
        assert (second.get_attribute("data-layer"), second.get_attribute("data-token")) == ("1", "2")
        assert (first.get_attribute("data-layer"), first.get_attribute("data-token")) == ("0", "")
        ids = page.eval_on_selector_all(".attn-explorer [id]", "es => es.map(e => e.id)")
        assert len(ids) == len(set(ids)), "ids are unique per widget"
        assert not visit.errors and not visit.outside
    finally:
        visit.close()


VIT_EXPLORER_PAGE = "real-models/vision-transformer/"


@pytest.mark.browser
def test_explorer_shades_the_image_of_a_vision_transformer(browser, server, built_site, theme):
    """Image mode: the ViT's explorer draws the digit under its patch grid, follows the chosen
    query, and fits a phone without errors."""
    data = json.loads((built_site / "generated" / "vision-transformer" / "explorer.json").read_text())
    assert data["sentences"][0]["image"]["patch_grid"] == [4, 4]
    visit = open_explorer(browser, server, VIT_EXPLORER_PAGE, color_scheme=theme, width=PHONE)
    try:
        page = visit.page
        canvas = page.locator(".attn-explorer .ae-image")
        assert canvas.is_visible()
        page.focus(".ae-token[data-index='0']")
        before = canvas.get_attribute("aria-label")
        page.focus(".ae-token[data-index='5']")
        page.wait_for_timeout(100)
        assert canvas.get_attribute("aria-label") != before, "the image did not follow the chosen query"
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE
        assert not visit.errors and not visit.outside
    finally:
        visit.close()
