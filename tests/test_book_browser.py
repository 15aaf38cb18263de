"""The built book in a real browser: every page of `_build/html` opened in headless Chromium.

For each page: nothing it asks of the local server fails, nothing is fetched from the internet
(CI has none; MathJax, require.js and the ipywidgets embedder are served from `_static`), no
JavaScript error, all math typeset by MathJax, every Markdown table that a notebook displays
rendered as a table (none left as raw text), every image loaded, and the saved ipywidgets rendered. A full-page screenshot of each page goes to `_build/html/_screenshots/<page>.png`.

The Chinese edition (`_build/html/zh_CN`, where `make book` puts it) is checked the same way, page by page, and
more: the language switch leads from a page to the same page in the other edition and back, Chinese text is drawn
with a real CJK font (not as boxes: Debian's fonts-noto-cjk, which .ci/run installs), and no paragraph, heading, list
item, caption or table row of a page's text is left in English (code cells and their outputs stay English by
design, see book/_ext/book_i18n.py; the captions of the figures that code cells make are translated and checked).

Needs `make book` first, Debian's `chromium` (or BOOK_CHROMIUM=/path/to/chromium) and the
`playwright` Python package (no browser download: it drives the system Chromium). Skipped,
with the reason, when one of them is missing.
"""

from __future__ import annotations

import functools
import json
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BOOK_HTML") or ROOT / "_build" / "html")  # BOOK_HTML: check another build
SHOTS = HTML / "_screenshots"
CHROMIUM = os.environ.get("BOOK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SKIP_PARTS = {"_static", "_sources", "_images", "_screenshots"}
SKIP_PAGES = {"genindex.html", "search.html"}
# The chapter whose widget must show its controls, with the slider labels it must show.
WIDGET_PAGE = "book/05_1_mlkit.html"
WIDGET_LABELS = ["shots", "inner steps"]
# The Chinese edition's folder below the English site, and the pages whose language switch and CJK font are checked
# in a browser: the front page, a notebook chapter with math and figures, and a Markdown page with tables and math.
ZH = "zh_CN/"
SWITCH_PAGES = ["book/intro.html", "book/06_1_omniglot.html", "book/notation.html"]
TIMEOUT_MS = 60_000
# Errors the browser reports on every page that come from the toolchain, not from the book: matched
# against the message, listed with why. Anything else fails the test.
KNOWN_ERRORS = {
    # sphinx-thebe 0.3.1 (Jupyter Book 1.x) writes its inline `const THEBE_JS_URL = ...` config script
    # twice into every page (Sphinx registers it on the builder and in its registry); the second copy
    # throws and changes nothing (it only repeats the first). Same for togglebutton's `var`, silently.
    r"Identifier 'THEBE_JS_URL' has already been declared":
        "sphinx-thebe adds its inline config twice",
    # pydata-sphinx-theme logs this with console.error on a first visit (no saved light/dark choice).
    r"Got invalid theme mode: \. Resetting to auto\.": "pydata-sphinx-theme, first visit",
}

if not HTML.is_dir():
    pytest.skip(f"{HTML} does not exist: run `make book` first", allow_module_level=True)
if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BOOK_CHROMIUM)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed (pip install playwright)"
)


def built_pages() -> list[str]:
    pages = []
    for path in sorted(HTML.rglob("*.html")):
        rel = path.relative_to(HTML)
        if rel.name in SKIP_PAGES or SKIP_PARTS.intersection(rel.parts):
            continue
        pages.append(rel.as_posix())
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def base_url():
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# The text nodes outside the elements matched by `skip` whose text matches `pattern`: what a page shows as
# plain text although it should have been rendered.
_TEXT_NODES_JS = r"""
({pattern, skip}) => {
  const re = new RegExp(pattern);
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.nodeValue;
    if (!re.test(t)) continue;
    if (n.parentElement && n.parentElement.closest(skip)) continue;
    found.push(t.trim().slice(0, 120));
  }
  return found;
}
"""
_NOT_PROSE = "pre, code, script, style, textarea, mjx-container, .highlight"
# TeX delimiters left untypeset.
_RAW_TEX = {"pattern": r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{", "skip": _NOT_PROSE}
# A Markdown table row left as text ("| a | b |", or "| — | — |" once Sphinx's smart quotes have turned the "---"
# of a delimiter row into a dash).
_RAW_TABLE = {"pattern": r"\|[^|\n]*\|[^|\n]*\|", "skip": _NOT_PROSE + ", table"}
_DELIMITER_ROW = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.M)


def markdown_tables_in_outputs(page_path: str) -> int:
    """How many Markdown tables the code cells of the page's notebook display (0 for a Markdown page)."""
    source = (ROOT / page_path.removeprefix(ZH)).with_suffix(".ipynb")
    if not source.is_file():
        return 0
    notebook = json.loads(source.read_text(encoding="utf-8"))
    count = 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown", "")
            count += len(_DELIMITER_ROW.findall("".join(text) if isinstance(text, list) else text))
    return count


_WAIT_MATHJAX_JS = """
async () => {
  const mj = window.MathJax;
  if (!mj || !mj.startup || !mj.startup.promise) return false;
  await mj.startup.promise;
  if (mj.typesetPromise) await mj.typesetPromise();
  return true;
}
"""

_WAIT_IMAGES_JS = """
async () => {
  const imgs = [...document.images];
  imgs.forEach(img => { img.loading = 'eager'; });
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); })));
  return imgs.filter(img => !(img.complete && img.naturalWidth > 0))
             .map(img => img.getAttribute('src'));
}
"""


@pytest.mark.parametrize("page_path", built_pages())
def test_page_renders(page_path, base_url, browser):
    html = (HTML / page_path).read_text(encoding="utf-8")
    redirect = re.search(r'<meta http-equiv="refresh" content="\d+;\s*url=([^"]+)"', html, re.I)
    if redirect:  # e.g. the index.html that Jupyter Book writes: only check that its target exists
        target = (HTML / page_path).parent / redirect.group(1).split("#")[0]
        assert target.is_file(), f"{page_path} redirects to a missing page {redirect.group(1)}"
        return

    problems: list[str] = []

    def report(message: str) -> None:
        if not any(re.search(pattern, message) for pattern in KNOWN_ERRORS):
            problems.append(message)
    external: list[str] = []
    local = urlsplit(base_url).netloc

    def is_local(url: str) -> bool:
        return urlsplit(url).netloc == local

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)

    # The CI machine is offline: refuse every request that does not go to the local server.
    def route(route):
        if is_local(route.request.url):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on(
        "requestfailed",
        lambda r: is_local(r.url) and problems.append(f"request failed: {r.url} ({r.failure})"),
    )
    page.on(
        "response",
        lambda r: is_local(r.url) and r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"),
    )
    page.on("pageerror", lambda e: report(f"JavaScript error: {e}"))

    def on_console(msg):
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        if not where or is_local(where):
            report(f"console error ({where or 'inline'}): {msg.text}")

    page.on("console", on_console)

    try:
        response = page.goto(base_url + page_path, wait_until="load")
        assert response is not None and response.ok, f"could not load {page_path}"

        # Math: MathJax finished, nothing left as raw TeX, every math element typeset, no TeX errors.
        n_math = page.locator("span.math, div.math").count()
        mathjax = page.evaluate(_WAIT_MATHJAX_JS)
        if n_math:
            if not mathjax:
                problems.append(f"{n_math} math elements but MathJax did not start")
            else:
                untypeset = page.locator("span.math:not(:has(mjx-container)), div.math:not(:has(mjx-container))")
                if untypeset.count():
                    problems.append(
                        f"{untypeset.count()} of {n_math} math elements not typeset, "
                        f"first: {untypeset.first.inner_text()[:120]!r}"
                    )
                if page.locator("mjx-container").count() == 0:
                    problems.append("no mjx-container on a page with math")
            merrors = page.locator("mjx-merror")
            if merrors.count():
                problems.append(f"{merrors.count()} TeX errors, first: {merrors.first.get_attribute('data-mjx-error')}")
        raw = page.evaluate(_TEXT_NODES_JS, _RAW_TEX)
        if raw:
            problems.append(f"raw TeX left in the text: {raw[:3]}")

        # Tables: every Markdown table that a code cell displays is rendered as a <table>, none is left as text.
        raw_tables = page.evaluate(_TEXT_NODES_JS, _RAW_TABLE)
        if raw_tables:
            problems.append(f"{len(raw_tables)} Markdown table rows left as text, first: {raw_tables[:2]}")
        n_tables, n_rendered = markdown_tables_in_outputs(page_path), page.locator(".cell_output table").count()
        if n_rendered < n_tables:
            problems.append(f"the notebook displays {n_tables} Markdown tables, the page renders {n_rendered}")

        # Images.
        broken = page.evaluate(_WAIT_IMAGES_JS)
        if broken:
            problems.append(f"images not loaded: {broken}")

        # Widgets: every page with saved widget state renders its views.
        n_views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
        if n_views:
            try:
                page.locator(".jupyter-widgets").first.wait_for(state="visible", timeout=TIMEOUT_MS)
            except sync_api.TimeoutError:
                problems.append(f"{n_views} widget views but no .jupyter-widgets element became visible")
        if page_path in (WIDGET_PAGE, ZH + WIDGET_PAGE):  # the widgets' labels are outputs: English in both
            assert n_views, f"{page_path} has no widget-view output: was the widget state saved?"
            for label in WIDGET_LABELS:
                slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=label))
                try:
                    slider.first.wait_for(state="visible", timeout=TIMEOUT_MS)
                except sync_api.TimeoutError:
                    problems.append(f"slider {label!r} not visible")

        page.wait_for_load_state("networkidle")
        shot = SHOTS / Path(page_path).with_suffix(".png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()

    if external:
        problems.append(f"requests to the internet (refused; CI is offline): {sorted(set(external))}")
    assert not problems, f"{page_path}:\n  " + "\n  ".join(problems)


# --- the Chinese edition ------------------------------------------------------------------------------------------

def chinese_pages() -> list[str]:
    pages = [p for p in built_pages() if p.startswith(ZH) and p != ZH + "index.html"]
    return pages or [pytest.param(None, marks=pytest.mark.skip(reason=f"no Chinese edition in {HTML / ZH}"))]


def _open(browser, url: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    local = urlsplit(url).netloc  # offline, as in test_page_renders
    context.route("**/*", lambda route: route.continue_() if urlsplit(route.request.url).netloc == local
                  else route.abort())
    page = context.new_page()
    response = page.goto(url, wait_until="domcontentloaded")
    assert response is not None and response.ok, f"could not load {url}"
    return context, page


@pytest.mark.parametrize("page_path", SWITCH_PAGES)
def test_language_switch_leads_to_the_same_page_in_the_other_edition_and_back(page_path, base_url, browser):
    if not (HTML / ZH / page_path).is_file():
        pytest.fail(f"no {ZH + page_path}: `make book` builds the Chinese edition into {HTML / ZH}")
    context, page = _open(browser, base_url + page_path)
    try:
        for here, there, lang, label in [(page_path, ZH + page_path, "zh-CN", "中文"),
                                         (ZH + page_path, page_path, "en", "English")]:
            switch = page.locator("a.book-language-switch")
            assert switch.count() == 1, f"{here}: {switch.count()} language switches"
            assert switch.inner_text().strip() == label, f"{here}: the switch reads {switch.inner_text()!r}"
            assert switch.is_visible(), f"{here}: the language switch is not visible"
            switch.click()
            page.wait_for_url(base_url + there)
            assert page.evaluate("document.documentElement.lang") == lang, f"{there}: <html lang> is not {lang}"
    finally:
        context.close()


# Draws three Chinese characters in the font of the page's text: with no CJK font, each is the same box (or nothing).
_CJK_GLYPHS_JS = r"""
() => {
  const el = document.querySelector("article.bd-article h1") || document.body;
  const style = getComputedStyle(el);
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 48;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.font = `32px ${style.fontFamily}`;
  const draw = ch => {
    ctx.clearRect(0, 0, 48, 48);
    ctx.fillText(ch, 4, 38);
    return Array.from(ctx.getImageData(0, 0, 48, 48).data.filter((_, i) => i % 4 === 3)).join(",");
  };
  const chars = ["中", "学", "习"];
  const images = chars.map(draw);
  const inked = images.map(img => img.split(",").some(v => v !== "0"));
  return {family: style.fontFamily, inked, distinct: new Set(images).size, chars: chars.length,
          heading: el.innerText.slice(0, 80)};
}
"""


@pytest.mark.parametrize("page_path", SWITCH_PAGES)
def test_chinese_text_is_drawn_with_a_cjk_font(page_path, base_url, browser):
    context, page = _open(browser, base_url + ZH + page_path)
    try:
        page.evaluate("document.fonts.ready.then(() => true)")
        glyphs = page.evaluate(_CJK_GLYPHS_JS)
    finally:
        context.close()
    assert all(glyphs["inked"]) and glyphs["distinct"] == glyphs["chars"], (
        f"{ZH + page_path}: Chinese characters in the page's font ({glyphs['family']}) are drawn as "
        f"{glyphs['distinct']} distinct glyphs for {glyphs['chars']} characters (inked: {glyphs['inked']}): no CJK "
        "font. Install one (Debian: apt-get install fonts-noto-cjk; .ci/run does)."
    )


# The text of the page's article that is in English: each paragraph, heading, list item, term, caption or admonition
# title (without its nested blocks), and each table row, with code, math, outputs of code cells (but for the captions of
# the figures they make), citations and the bibliography left out, that has three Latin words and no Chinese
# character, or a run of eight Latin words.
_ENGLISH_PROSE_JS = r"""
() => {
  const blocks = "p, li, dt, dd, h1, h2, h3, h4, h5, h6, figcaption, caption, .admonition-title, tr";
  const skipAround = "pre, code, kbd, .highlight, mjx-container, .math, script, style, .headerlink, "
             + ".citation, .toggle-details, summary, .cell_input, a[href*='bibliography.html#']";
  const skip = skipAround + ", .cell_output, .output";
  const cjk = /[\u3400-\u9fff\uf900-\ufaff]/;
  const run = /(?:[A-Za-z][A-Za-z'’-]*[\s,;:()]+){7,}[A-Za-z]/;
  const article = document.querySelector("article.bd-article") || document.body;
  const found = [];
  for (const el of article.querySelectorAll(blocks)) {
    // A figure's caption is checked inside a cell's output too (myst-nb puts the caption of a figure made by a code
    // cell, from the cell's metadata, into the output; it is a message of the page's catalogue).
    const outside = el.closest("figcaption") ? skipAround : skip;  // the caption and its paragraph
    if (el.closest(outside) || (el.tagName !== "TR" && el.closest("tr"))) continue;  // a table is checked by rows
    const copy = el.cloneNode(true);
    copy.querySelectorAll(skip).forEach(n => n.remove());
    if (el.tagName !== "TR") copy.querySelectorAll(blocks).forEach(n => n.remove());
    const text = copy.textContent.replace(/\s+/g, " ").trim();
    const words = (text.match(/[A-Za-z]{2,}/g) || []).length;
    if ((words >= 3 && !cjk.test(text)) || run.test(text)) found.push(text.slice(0, 100));
  }
  return found;
}
"""


@pytest.mark.parametrize("page_path", chinese_pages())
def test_chinese_page_has_no_english_prose(page_path, base_url, browser):
    context, page = _open(browser, base_url + page_path)
    try:
        english = page.evaluate(_ENGLISH_PROSE_JS)
    finally:
        context.close()
    assert not english, (
        f"{page_path}: {len(english)} paragraphs, headings, items or rows in English (an untranslated message in "
        f"book/locales/zh_CN/LC_MESSAGES/{page_path.removeprefix(ZH).removesuffix('.html')}.po?):\n  "
        + "\n  ".join(map(repr, english[:8]))
    )
