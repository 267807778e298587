"""The built site: `mkdocs build --strict`, then every page in headless Chromium.

Browser tests are skipped, with the reason, when Chromium is missing on a developer's
machine; with CI set they fail instead, because CI must run them.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
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

    def __init__(self, browser, url, color_scheme="light"):
        self.context = browser.new_context(color_scheme=color_scheme, accept_downloads=True)
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
            ".map(e => e.textContent).filter(t => /\\$[^$\\s][^$]*\\$/.test(t)).slice(0, 3)")
        assert merrors == 0, f"{page_path}: {merrors} MathJax errors"
        assert not raw_dollars, f"{page_path}: TeX left as raw $...$ text: {raw_dollars}"
        assert not raw_tex_in_nav, f"{page_path}: headings with TeX show raw in the navigation: {raw_tex_in_nav}"
        assert untypeset == 0, f"{page_path}: {untypeset} math elements were not typeset"
        assert not broken_images, f"{page_path}: images failed to load: {broken_images}"
        assert not unlabeled, f"{page_path}: images without alt text: {unlabeled}"
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
