"""Three fixes to Sphinx's internationalisation for this book (its translated editions, e.g. book/_config.zh_CN.yml),
and the language switch between its editions.

Outputs of code cells are not messages. myst-nb renders the committed outputs of a notebook's code cells into the
page, and the Markdown that a cell displays (tables of results, sentences with computed numbers) is parsed as MyST
like the page's own text, so the gettext builder would make a message of every cell of those tables ("2.83",
"± 0.25", ...): about 1,300 of the book's 2,560 messages, whose msgids change whenever the notebooks are re-executed.
UntranslatedOutputs marks every text node inside a cell's output as not translatable before Sphinx extracts or
translates messages (sphinx.transforms.i18n.Locale, priority 20): the translated editions show the outputs as
committed. Code and text outputs are literal blocks, never messages (gettext_additional_targets is empty). The
captions of figures that code cells make (myst-nb's `mystnb: figure: caption:` cell metadata, rendered inside the
output) are the exception: they are written by hand, so they stay messages, with the source and line of their cell.

The titles of exercises are messages. sphinx-exercise builds the title of `{exercise} Twenty ways` as a subtitle node
without a source or raw text, which Sphinx skips as a built-in message; ExerciseTitles gives it both, before Locale,
and Locale translates it. TranslatedExerciseTitles then copies the translated title into the copy of the exercise
that sphinx-exercise keeps (made when the directive ran, before Locale) for the solution's title and the links to the
exercise. At write time sphinx-exercise rebuilds the title (a post-transform of priority 20) without the subtitle
node, and only then does the gettext builder extract the page's messages; for that builder ExerciseTitleMessages
first wraps the subtitle's text in an inline node that carries the message, which the rebuilt title keeps, so
"Twenty ways" is extracted in page order.

Display math keeps its LaTeX when translated. Sphinx's Locale transform treats a math_block like a literal block: a
translation that differs from its message (the words of a \\text{...} translated) is parsed as "::" followed by the
indented LaTeX, which MyST (unlike reStructuredText) reads as a paragraph, so the block rendered as \\[::  ...\\] and
nothing warned. TranslatedDisplayMath (just before Locale) makes such a translation the block's text and takes the
block out of Locale's hands.

The captions of the table of contents are translated. sphinx-external-toc inserts the root page's toctrees (with
the parts' captions of _toc.yml) at priority 100, after Locale has translated the page, so the gettext builder
extracts the captions (book/intro.po) but nothing translates them; TranslateTocCaptions does, from the root page's
catalogue.

The translated doctrees are kept small. Sphinx's Locale transform parses each translation as a document of its own,
whose settings hold the whole build environment, and the nodes it puts into the page keep a reference to that
document: every pickled doctree of the Chinese edition then carries copies of the environment (3.5 MB a page instead
of 0.2 MB), and unpickling them, once per {numref} when the pages are written, made the build 6 times slower than the
English one. drop_message_documents points those nodes back at their page (no change to the HTML).

The language switch: every HTML page of every edition links to the same page in the other editions, a small button
("中文" on an English page, "English" on a Chinese one) at the start of the buttons above the article. The editions
are the folders of EDITIONS, relative to the English site: English in _build/html, Chinese in _build/html/zh_CN (where
`make book` puts it), the same page paths below each. The links are relative, so the site works from its folder
(file://) or any web server, offline. add_language_switch gives the page's template the links (book_language_switch)
and puts templates/book-language-switch.html first in the theme's article_header_end, and static/
book-language-switch.css keeps it on the line of the other buttons; the English HTML differs from a build without the
switch only by that button and that stylesheet.
"""

from os import path
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.locale import init as init_locale
from sphinx.transforms import SphinxTransform
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.i18n import docname_to_domain
from sphinx.util.nodes import get_node_line, get_node_source, is_translatable


class UntranslatedOutputs(SphinxTransform):
    default_priority = 10

    def apply(self, **kwargs):
        for output in self.document.findall(nodes.container):
            if "cell_output" in output.get("classes", []):
                # (An image would be a message only with alt text, which no output image has.)
                captions = set()
                for caption in output.findall(nodes.caption):
                    captions.update(caption.findall(nodes.Element))  # the caption and its inline markup
                    caption.source = caption.source or get_node_source(caption)
                    caption.line = caption.line or get_node_line(caption)
                for node in output.findall(nodes.TextElement):
                    if node not in captions:
                        node["translatable"] = False


class ExerciseTitles(SphinxTransform):
    default_priority = 10

    def apply(self, **kwargs):
        from sphinx_exercise.nodes import exercise_subtitle

        for subtitle in self.document.findall(exercise_subtitle):
            if not subtitle.rawsource:
                subtitle.rawsource = subtitle.astext()  # the titles are plain text
            exercise = subtitle.parent.parent
            subtitle.source = subtitle.source or exercise.source
            subtitle.line = subtitle.line or exercise.line


class TranslatedExerciseTitles(SphinxTransform):
    default_priority = 21  # after Locale

    def apply(self, **kwargs):
        from sphinx_exercise.nodes import exercise_enumerable_node, exercise_node

        if not self.config.language:
            return
        registry = getattr(self.env, "sphinx_exercise_registry", {})
        for exercise in self.document.findall(
            lambda node: isinstance(node, (exercise_enumerable_node, exercise_node))
        ):
            copy = registry.get(exercise.get("label"), {}).get("node")
            if copy is not None and exercise.children and copy.children:
                copy.children[0] = exercise.children[0].deepcopy()
                copy.children[0].parent = copy


class ExerciseTitleMessages(SphinxPostTransform):
    default_priority = 19  # before sphinx_exercise.post_transforms.ResolveTitlesInExercises
    builders = ("gettext",)

    def run(self, **kwargs):
        from sphinx_exercise.nodes import exercise_subtitle

        for subtitle in self.document.findall(exercise_subtitle):
            if not subtitle.source:
                continue
            message = nodes.inline(subtitle.rawsource, "", *subtitle.children, translatable=True)
            message.source, message.line = subtitle.source, subtitle.line
            message.uid = getattr(subtitle, "uid", "")
            subtitle.children = []
            subtitle += message


def page_catalog(transform: SphinxTransform):
    """The message catalogue of the transform's page in a translated build; None when the build is not translated,
    extracts messages (gettext builder), or the page has no catalogue."""
    from sphinx.builders.gettext import MessageCatalogBuilder

    if not transform.config.language or isinstance(transform.app.builder, MessageCatalogBuilder):
        return None
    domain = docname_to_domain(transform.env.docname, transform.config.gettext_compact)
    dirs = [path.join(transform.env.srcdir, d) for d in transform.config.locale_dirs]
    catalog, has_catalog = init_locale(dirs, transform.config.language, domain)
    return catalog if has_catalog else None


class TranslatedDisplayMath(SphinxTransform):
    default_priority = 19  # just before Locale

    def apply(self, **kwargs):
        blocks = [node for node in self.document.findall(nodes.math_block) if is_translatable(node)]
        catalog = page_catalog(self) if blocks else None
        if catalog is None:
            return
        for node in blocks:
            msg = node.rawsource or node.astext()
            msgstr = catalog.gettext(msg)
            if msgstr and msgstr != msg:  # LaTeX with translated \text{...} words: it is the block's new text
                node.rawsource = msgstr
                node.children = []
                node += nodes.Text(msgstr)
                node["translatable"] = False  # Locale would make it a paragraph "::" + the LaTeX
                node["translated"] = True


class TranslateTocCaptions(SphinxTransform):
    default_priority = 101  # after sphinx_external_toc.events.InsertToctrees

    def apply(self, **kwargs):
        toctrees = [node for node in self.document.findall(addnodes.toctree) if node.get("caption")]
        catalog = page_catalog(self) if toctrees else None
        if catalog is None:
            return
        for node in toctrees:
            msgstr = catalog.gettext(node["caption"])
            if msgstr and msgstr != node["caption"]:
                node.apply_translated_message(node["caption"], msgstr)
                node["translated"] = True


def drop_message_documents(app, doctree):
    for node in doctree.findall():
        if node.__dict__.get("_document") not in (None, doctree):
            node._document = None  # Node.document is then its parent's, the page


# The editions: language -> (folder relative to the English site, the language's own name, the link's tooltip).
EDITIONS = {
    "en": ("", "English", "Read this page in English"),
    "zh_CN": ("zh_CN/", "中文", "阅读本页的中文版"),
}
TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
SWITCH_TEMPLATE = "book-language-switch.html"


def edition_of(language):
    return language if language in EDITIONS else "en"  # the English config sets no language (Sphinx's "en")


def language_switch(language, pagename, target_uri):
    """The links from `pagename` of the `language` edition to the same page in the others: [{href, label, ...}]."""
    here = EDITIONS[edition_of(language)][0]
    root = "../" * (pagename.count("/") + here.count("/"))  # from the page to the English site's folder
    return [
        {"href": root + folder + target_uri, "label": label, "title": title, "hreflang": other.replace("_", "-")}
        for other, (folder, label, title) in EDITIONS.items()
        if other != edition_of(language)
    ]


def add_templates(app, config):
    config.templates_path = [*config.templates_path, str(TEMPLATES)]
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def add_language_switch(app, pagename, templatename, context, doctree):
    if app.builder.format != "html" or not hasattr(app.builder, "get_target_uri"):
        return
    context["book_language_switch"] = language_switch(
        app.config.language, pagename, app.builder.get_target_uri(pagename)
    )
    items = context.get("theme_article_header_end") or []
    if isinstance(items, str):
        items = [item.strip() for item in items.split(",") if item.strip()]
    if SWITCH_TEMPLATE not in items:
        context["theme_article_header_end"] = [SWITCH_TEMPLATE, *items]


def setup(app):
    app.connect("config-inited", add_templates)
    # Before the themes' handlers (priority 500), which check the article header's templates.
    app.connect("html-page-context", add_language_switch, priority=400)
    app.add_css_file("book-language-switch.css")
    app.connect("doctree-read", drop_message_documents)
    app.add_transform(UntranslatedOutputs)
    app.add_transform(ExerciseTitles)
    app.add_transform(TranslatedExerciseTitles)
    app.add_post_transform(ExerciseTitleMessages)
    app.add_transform(TranslatedDisplayMath)
    app.add_transform(TranslateTocCaptions)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
