"""The translated editions: their message catalogues (book/locales/<language>/LC_MESSAGES/book/*.po), their config and
their place beside the English site.

- every message that has words to translate is translated (not empty, not fuzzy);
- the catalogues hold exactly the messages of the English sources (a fresh extraction into a temporary folder): after
  an edit of the English text, the update commands below must be run and the changed messages translated;
- each translation keeps the markup of its message: roles and their targets, inline math, code spans, `%s`;
- book/_config.zh_CN.yml is _config.yml but for its language;
- after `make book`: every page of each edition links to the same page of the other, display math renders as math
  (never as "\\[::", the literal-block notation Sphinx gives a translated math block), and the Chinese search index
  has Chinese words (Sphinx splits Chinese text with jieba; without it, only Latin words are indexed).

The first three fail while a translation is unfinished; their messages say, per catalogue, what is missing. The
checks themselves are tested on small catalogues made here (the tests named `test_check_...`).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ROOT / "book" / "locales"
LANGUAGES = sorted(p.name for p in LOCALES.iterdir() if (p / "LC_MESSAGES").is_dir())
CONFIGS = {language: ROOT / "book" / f"_config.{language}.yml" for language in LANGUAGES}
HTML = Path(os.environ.get("BOOK_HTML") or ROOT / "_build" / "html")  # BOOK_HTML: check another build
# The editions' folders below the English site (book/_ext/book_i18n.py EDITIONS, the Makefile's `book` target).
EDITION_FOLDERS = {"zh_CN": "zh_CN"}

EXTRACT = "jupyter-book build . --builder custom --custom-builder gettext --path-output _build/gettext"
UPDATE = "sphinx-intl update -p _build/gettext/_build/gettext -l {language} -d book/locales"
HOW_TO_UPDATE = (
    f"after editing the English text, run (repository root)\n    {EXTRACT}\n    {UPDATE.format(language='zh_CN')}\n"
    "then translate the new and the fuzzy messages (python book/locales/stats.py shows the progress)"
)

# Markup inside a message (the raw MyST of a paragraph, heading, list item, table cell, caption, ...).
ROLE = re.compile(r"\{([a-z][\w:-]*)\}`([^`]*)`")
ROLE_TEXT_AND_TARGET = re.compile(r"^(.*?)\s*<([^<>]*)>$", re.S)
CODE = re.compile(r"``.+?``|`[^`]+`", re.S)
INLINE_MATH = re.compile(r"\$\$.+?\$\$|\$[^$]+\$", re.S)
LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
TEXT_IN_MATH = re.compile(r"\\(?:text|textrm|textit|mbox)\{([^{}]*)\}")


def catalogues(language: str) -> dict[str, Path]:
    """The language's catalogues by page: {"book/01_background": .../book/01_background.po, ...}."""
    folder = LOCALES / language / "LC_MESSAGES"
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in sorted(folder.rglob("*.po"))}


def read_messages(path_or_text) -> dict[str, tuple[str, bool]]:
    """msgid -> (msgstr, fuzzy) of a .po or .pot file (or its text), the header and obsolete (#~) entries left out."""
    data = path_or_text.encode() if isinstance(path_or_text, str) else Path(path_or_text).read_bytes()
    catalog = read_po(io.BytesIO(data))
    messages = {}
    for message in catalog:
        if not message.id:
            continue
        msgid = message.id if isinstance(message.id, str) else message.id[0]
        msgstr = message.string if isinstance(message.string, str) else (message.string or ("",))[0]
        messages[msgid] = (msgstr or "", message.fuzzy)
    return messages


def is_display_math(msgid: str) -> bool:
    """A display-math block ($$...$$ or an amsmath environment): no $...$, a LaTeX command outside code spans."""
    return "$" not in msgid and bool(LATEX_COMMAND.search(CODE.sub("", msgid)))


def needs_translation(msgid: str) -> bool:
    """Whether the message has words to translate. Not: display math without \\text{...} words, and messages made
    only of citations, roles without their own text (their text comes from the target), inline math and code."""
    if is_display_math(msgid):
        return any(re.search(r"[A-Za-z]", text) for text in TEXT_IN_MATH.findall(msgid))

    def role_text(match):
        parts = ROLE_TEXT_AND_TARGET.match(match.group(2))
        return parts.group(1) if parts and not match.group(1).startswith("cite") else ""

    rest = INLINE_MATH.sub("", CODE.sub("", ROLE.sub(role_text, msgid)))
    return bool(re.search(r"[A-Za-z]", rest))


def untranslated(messages: dict[str, tuple[str, bool]]) -> list[str]:
    """The msgids with words to translate whose translation is empty or fuzzy (Sphinx shows those in English)."""
    return [msgid for msgid, (msgstr, fuzzy) in messages.items() if needs_translation(msgid) and (fuzzy or not msgstr)]


def _roles(text: str) -> list[tuple[str, str, str | None]]:
    """(role, target, text) of each role: `{numref}`Section %s <sec-x>`` is (numref, sec-x, "Section %s"); a role
    without its own text, e.g. {cite:t}`key` or {ref}`notation`, is (cite:t, key, None)."""
    roles = []
    for name, content in ROLE.findall(text):
        parts = ROLE_TEXT_AND_TARGET.match(content)
        roles.append((name, parts.group(2), parts.group(1)) if parts else (name, content, None))
    return roles


def markup_problems(msgid: str, msgstr: str) -> list[str]:
    """What of the message's markup its translation lost or changed: each role with its target (its text may change,
    but must keep a `%s` it had), each inline $...$ math, each code span, each `%s`; display math must stay the same
    but for the words of \\text{...}."""
    problems = []
    if is_display_math(msgid):
        def blank(text):
            return " ".join(TEXT_IN_MATH.sub(r"\\text{}", text).split())

        if blank(msgid) != blank(msgstr):
            problems.append("the display math changed (only the words of \\text{...} may be translated)")
        return problems
    translated_roles = _roles(msgstr)
    for name, target, text in _roles(msgid):
        same = [t for n, g, t in translated_roles if (n, g) == (name, target)]
        shown = f"{{{name}}}`{text + ' ' if text else ''}<{target}>`" if text is not None else f"{{{name}}}`{target}`"
        if not same:
            problems.append(f"role {shown} is missing (its name and target must be kept)")
        elif text is not None and "%s" in text and not any(t is not None and "%s" in t for t in same):
            problems.append(f"role {shown} lost its %s (Sphinx puts the number there)")
        elif text is None and any(t is not None for t in same):
            problems.append(f"role {shown} got a text of its own")
    bare_id, bare_str = ROLE.sub(" ", msgid), ROLE.sub(" ", msgstr)
    codes_str = set(CODE.findall(bare_str))
    for code in dict.fromkeys(CODE.findall(bare_id)):
        if code not in codes_str:
            problems.append(f"code span {code} is missing or changed")
    maths_str = set(INLINE_MATH.findall(CODE.sub(" ", bare_str)))
    for math in dict.fromkeys(INLINE_MATH.findall(CODE.sub(" ", bare_id))):
        if math not in maths_str:
            problems.append(f"math {math} is missing or changed")
    if msgstr.count("%s") < msgid.count("%s"):
        problems.append(f"{msgid.count('%s')} %s in the message, {msgstr.count('%s')} in the translation")
    return problems


def sync_problems(extracted: dict[str, set[str]], catalogued: dict[str, set[str]]) -> list[str]:
    """Differences between the messages of a fresh extraction (page -> msgids) and of the catalogues."""
    problems = []
    for page in sorted(extracted.keys() | catalogued.keys()):
        if page not in catalogued:
            problems.append(f"{page}: no catalogue ({len(extracted[page])} messages)")
            continue
        if page not in extracted:
            problems.append(f"{page}: a catalogue for a page that has no messages any more (or no longer exists)")
            continue
        new = sorted(extracted[page] - catalogued[page])
        old = sorted(catalogued[page] - extracted[page])
        if new:
            problems.append(f"{page}: {len(new)} messages of the sources missing from the catalogue, first {new[0][:80]!r}")
        if old:
            problems.append(f"{page}: {len(old)} messages no longer in the sources (obsolete), first {old[0][:80]!r}")
    return problems


def config_differences(english: dict, translated: dict, english_dir: Path, translated_dir: Path) -> list[str]:
    """How a translated edition's config differs from the English one, beyond what it may change: its title and
    author, `sphinx.config` language and locale_dirs, and the path of `sphinx.local_extensions` (relative to each
    config's folder, so it differs in spelling, but must name the same folder)."""
    english, translated = yaml.safe_load(yaml.safe_dump(english)), yaml.safe_load(yaml.safe_dump(translated))  # copies
    problems = []
    for config in (english, translated):
        for key in ("title", "author"):
            config.pop(key, None)
        sphinx = config.get("sphinx", {})
        for key in ("language", "locale_dirs"):
            sphinx.get("config", {}).pop(key, None)
    ext_en = english.get("sphinx", {}).pop("local_extensions", {}) or {}
    ext_tr = translated.get("sphinx", {}).pop("local_extensions", {}) or {}
    if ext_en.keys() != ext_tr.keys():
        problems.append(f"local_extensions differ: {sorted(ext_en)} and {sorted(ext_tr)}")
    for name in ext_en.keys() & ext_tr.keys():
        if (english_dir / ext_en[name]).resolve() != (translated_dir / ext_tr[name]).resolve():
            problems.append(f"local_extensions {name}: {ext_en[name]} and {ext_tr[name]} are not the same folder")

    def differ(a, b, where):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(a.keys() | b.keys(), key=str):
                if key not in a or key not in b:
                    problems.append(f"{where}{key}: only in the {'translated' if key in b else 'English'} config")
                else:
                    differ(a[key], b[key], f"{where}{key}.")
        elif a != b:
            problems.append(f"{where.rstrip('.')}: {a!r} in the English config, {b!r} in the translated one")

    differ(english, translated, "")
    return problems


def _first(items, n=2):
    return "; ".join(repr(item[:70]) for item in items[:n])


# --- the book's catalogues -------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_of_every_catalogue_is_translated(language):
    rows, missing_total, total = [], 0, 0
    for page, path in catalogues(language).items():
        messages = read_messages(path)
        needed = [msgid for msgid in messages if needs_translation(msgid)]
        missing = untranslated(messages)
        fuzzy = sum(1 for msgid in missing if messages[msgid][1])
        total += len(needed)
        missing_total += len(missing)
        if missing:
            rows.append(
                f"  {page + '.po':38s} {len(needed) - len(missing):4d} of {len(needed):4d} translated, "
                f"{len(missing) - fuzzy} empty, {fuzzy} fuzzy; first: {_first(missing, 1)}"
            )
    assert not rows, (
        f"{language}: {missing_total} of {total} messages with words to translate are untranslated (empty or fuzzy; "
        f"the edition shows them in English):\n" + "\n".join(rows)
    )


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict[str, set[str]]:
    """The messages of the sources now: the gettext builder into a temporary folder (about 10 s)."""
    out = tmp_path_factory.mktemp("gettext")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book) if jupyter_book.exists() else shutil.which("jupyter-book") or "jupyter-book",
               "build", str(ROOT), "--builder", "custom", "--custom-builder", "gettext", "--path-output", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    assert run.returncode == 0, f"the extraction failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    folder = out / "_build" / "gettext"
    pots = sorted(folder.rglob("*.pot"))
    assert pots, f"the extraction wrote no .pot file under {folder}"
    return {p.relative_to(folder).with_suffix("").as_posix(): set(read_messages(p)) for p in pots}


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalogues_hold_exactly_the_messages_of_the_sources(language, extracted):
    catalogued = {page: set(read_messages(path)) for page, path in catalogues(language).items()}
    problems = sync_problems(extracted, catalogued)
    assert not problems, (
        f"the {language} catalogues are out of step with the English sources:\n  " + "\n  ".join(problems)
        + "\n" + HOW_TO_UPDATE.replace("zh_CN", language)
    )


@pytest.mark.parametrize("language", LANGUAGES)
def test_translations_keep_the_markup_of_their_message(language):
    problems = []
    for page, path in catalogues(language).items():
        for msgid, (msgstr, fuzzy) in read_messages(path).items():
            if msgstr and not fuzzy:
                problems += [f"{page}.po: {p}\n      msgid {msgid[:100]!r}" for p in markup_problems(msgid, msgstr)]
    assert not problems, f"{len(problems)} broken translations:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("language", LANGUAGES)
def test_translated_config_is_the_english_one_but_for_its_language(language):
    path = CONFIGS[language]
    assert path.is_file(), f"no {path.relative_to(ROOT)}"
    translated = yaml.safe_load(path.read_text(encoding="utf-8"))
    english = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    config = translated.get("sphinx", {}).get("config", {})
    assert config.get("language") == language and config.get("locale_dirs") == ["book/locales"], config
    problems = config_differences(english, translated, ROOT, path.parent)
    assert not problems, (
        f"{path.relative_to(ROOT)} must be _config.yml but for title, author, language, locale_dirs and the "
        "local_extensions path; copy the change:\n  " + "\n  ".join(problems)
    )


def _language_switches(page: Path) -> list[str]:
    return re.findall(r'<a class="btn btn-sm book-language-switch" href="([^"]+)"', page.read_text(encoding="utf-8"))


@pytest.mark.skipif(not (HTML / "zh_CN").is_dir(), reason="needs `make book` (both editions in _build/html)")
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_page_links_to_the_same_page_of_the_other_edition(language):
    """Static: each page's switch resolves to the file at the same path below the other edition's folder."""
    folder = EDITION_FOLDERS[language]
    problems, pages = [], 0
    for page in sorted(HTML.rglob("*.html")):
        rel = page.relative_to(HTML)
        in_translation = rel.parts[0] == folder
        inner = Path(*rel.parts[1:]) if in_translation else rel  # the page's path within its edition
        if inner.parts[0].startswith("_") or inner.as_posix() == "index.html":
            continue  # _static, _sources, ...; index.html is Jupyter Book's redirect to the first page
        if not in_translation and rel.parts[0] in EDITION_FOLDERS.values():
            continue  # another translated edition
        pages += 1
        expected = (inner if in_translation else Path(folder, rel)).as_posix()
        links = _language_switches(page)
        if len(links) != 1:
            problems.append(f"{rel.as_posix()}: {len(links)} language switches")
            continue
        target = (page.parent / links[0]).resolve()
        if target != (HTML / expected).resolve() or not target.is_file():
            problems.append(f"{rel.as_posix()}: the switch links to {links[0]}, not to {expected}")
    assert pages > 20, f"only {pages} pages found under {HTML}"
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not (HTML / "zh_CN" / "searchindex.js").is_file(), reason="needs `make book` (the Chinese edition)")
def test_chinese_search_index_has_chinese_words():
    text = (HTML / "zh_CN" / "searchindex.js").read_text(encoding="utf-8")
    terms = json.loads(text[text.index("(") + 1 : text.rindex(")")])["terms"]
    chinese = [term for term in terms if re.search(r"[\u4e00-\u9fff]", term)]
    assert len(chinese) > 100 and "学习" in terms, (
        f"the Chinese search index has {len(chinese)} Chinese words (is jieba installed? requirements.txt)"
    )
    assert max(map(len, chinese)) <= 8, f"unsplit Chinese text in the index: {max(chinese, key=len)[:40]!r}"


BROKEN_MATH = re.compile(r'<div class="math[^"]*">\s*\\\[(?:\\begin\{split\})?\s*::')


@pytest.mark.skipif(not (HTML / "zh_CN").is_dir(), reason="needs `make book` (both editions in _build/html)")
@pytest.mark.parametrize("language", LANGUAGES)
def test_translated_display_math_renders_as_math(language):
    """A display-math block whose translation differs from its message (translated \\text{...} words) must render its
    translated LaTeX, not "\\[:: ...\\]" (Sphinx's literal-block notation, which MyST does not read; book_i18n's
    TranslatedDisplayMath), and every page must have as many display-math blocks as its English page."""
    folder = HTML / EDITION_FOLDERS[language]
    problems, pages = [], 0
    for page in sorted(folder.rglob("*.html")):
        rel = page.relative_to(folder)
        if rel.parts[0].startswith("_"):
            continue
        pages += 1
        html = page.read_text(encoding="utf-8")
        broken = BROKEN_MATH.findall(html)
        if broken:
            problems.append(f"{rel.as_posix()}: {len(broken)} display-math blocks render as '::'")
        english = HTML / rel
        if english.is_file():
            count = html.count('<div class="math')
            expected = english.read_text(encoding="utf-8").count('<div class="math')
            if count != expected:
                problems.append(f"{rel.as_posix()}: {count} display-math blocks, {expected} in English")
    assert pages > 20, f"only {pages} pages found under {folder}"
    assert not problems, "\n".join(problems)


# --- the checks themselves, on small catalogues ----------------------------------------------------------------

_PO = r'''
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

msgid "Background"
msgstr "背景"

msgid "See {numref}`Section %s <sec-maml>` and {cite:t}`finn2017maml`."
msgstr ""

#, fuzzy
msgid "With $\\theta$ fixed, run `fit`."
msgstr "固定 $\\theta$，运行 `fit`。"

msgid ""
"\n"
"\\theta' = \\theta - \\alpha \\nabla_\\theta \\mathcal{L}\n"
msgstr ""

msgid "{numref}`fig-maml-sinusoid`, {cite:p}`nichol2018reptile`"
msgstr ""

#~ msgid "An old paragraph."
#~ msgstr "旧的段落。"
'''


def test_check_completeness_counts_empty_and_fuzzy_messages_with_words_only():
    messages = read_messages(_PO)
    assert len(messages) == 5  # the header and the obsolete entry are not messages
    assert untranslated(messages) == [
        "See {numref}`Section %s <sec-maml>` and {cite:t}`finn2017maml`.",  # empty
        "With $\\theta$ fixed, run `fit`.",  # fuzzy
    ]  # the display math and the message made of a role without text and a citation need no translation
    assert needs_translation("\n\\hat y = \\begin{cases} 1 & \\text{if kept} \\end{cases}\n")
    assert not needs_translation("\n\\hat y = \\begin{cases} 1 & \\text{} \\end{cases}\n")


def test_check_markup_accepts_a_faithful_translation():
    msgid = ("See {numref}`Section %s <sec-maml>`, {cite:t}`finn2017maml`, {ref}`notation` and $p_{jn} = 1$ "
             "with `mlkit.fit`; 46.2% on Omniglot.")
    msgstr = ("见{numref}`第 %s 节 <sec-maml>`、{cite:t}`finn2017maml`、{ref}`notation`，以及 `mlkit.fit` 与 "
              "$p_{jn} = 1$；Omniglot 上 46.2%。")
    assert markup_problems(msgid, msgstr) == []
    display = "\n\\hat y = \\begin{cases} 1 & \\text{if kept} \\\\ 0 & \\text{otherwise} \\end{cases}\n"
    assert markup_problems(display, display.replace("if kept", "若保留").replace("otherwise", "否则")) == []


@pytest.mark.parametrize(
    "msgstr, problem",
    [
        ("见{numref}`第 %s 节 <sec-mamll>`、{cite:t}`finn2017maml`，$x_i$，`fit`。", "role {numref}`Section %s <sec-maml>`"),
        ("见{numref}`第 节 <sec-maml>`、{cite:t}`finn2017maml`，$x_i$，`fit`。", "lost its %s"),
        ("见{numref}`第 %s 节 <sec-maml>`、{cite:p}`finn2017maml`，$x_i$，`fit`。", "role {cite:t}`finn2017maml`"),
        ("见{numref}`第 %s 节 <sec-maml>`、{cite:t}`finn2017maml`，$x_{i}$，`fit`。", "math $x_i$"),
        ("见{numref}`第 %s 节 <sec-maml>`、{cite:t}`finn2017maml`，$x_i$，fit。", "code span `fit`"),
        ("见{numref}`第 %s 节 <sec-maml>`、{cite:t}`finn2017maml`，$x_i$，‘fit’。", "code span `fit`"),
    ],
    ids=["changed-target", "lost-number", "changed-role", "changed-math", "lost-code", "quoted-code"],
)
def test_check_markup_finds_a_broken_translation(msgstr, problem):
    msgid = "See {numref}`Section %s <sec-maml>` and {cite:t}`finn2017maml`, with $x_i$ and `fit`."
    problems = markup_problems(msgid, msgstr)
    assert any(problem in p for p in problems), problems


def test_check_markup_finds_changed_display_math():
    display = "\n\\theta' = \\theta - \\alpha \\nabla_\\theta \\mathcal{L}\n"
    assert markup_problems(display, display) == []
    assert markup_problems(display, display.replace("\\alpha", "\\beta"))


def test_check_sync_names_new_obsolete_and_missing_catalogues():
    extracted = {"book/a": {"One.", "Two (edited)."}, "book/b": {"Three."}}
    catalogued = {"book/a": {"One.", "Two."}, "book/c": {"Four."}}
    problems = sync_problems(extracted, catalogued)
    assert any("book/a: 1 messages of the sources missing" in p and "Two (edited)." in p for p in problems)
    assert any("book/a: 1 messages no longer in the sources" in p and "'Two.'" in p for p in problems)
    assert any(p.startswith("book/b: no catalogue") for p in problems)
    assert any(p.startswith("book/c: a catalogue for a page") for p in problems)
    assert sync_problems(extracted, extracted) == []


def test_check_config_allows_only_the_language_keys_to_differ(tmp_path):
    english = {"title": "Learning", "execute": {"execute_notebooks": "off"},
               "sphinx": {"local_extensions": {"book_i18n": "book/_ext"}, "config": {"gettext_compact": False}}}
    translated = {"title": "学习", "execute": {"execute_notebooks": "off"},
                  "sphinx": {"local_extensions": {"book_i18n": "_ext"},
                             "config": {"gettext_compact": False, "language": "zh_CN", "locale_dirs": ["book/locales"]}}}
    (tmp_path / "book" / "_ext").mkdir(parents=True)
    assert config_differences(english, translated, tmp_path, tmp_path / "book") == []
    translated["execute"]["execute_notebooks"] = "auto"
    translated["sphinx"]["config"]["html_show_copyright"] = True
    problems = config_differences(english, translated, tmp_path, tmp_path / "book")
    assert problems == [
        "execute.execute_notebooks: 'off' in the English config, 'auto' in the translated one",
        "sphinx.config.html_show_copyright: only in the translated config",
    ]
    assert config_differences(english, translated, tmp_path, tmp_path)[0].startswith("local_extensions book_i18n")
