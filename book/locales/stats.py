"""Translation progress of the book's catalogues: per .po file, its messages, how many are translated (and fuzzy),
and the size of its English text.

    python book/locales/stats.py            # zh_CN
    python book/locales/stats.py ja         # another language under book/locales/

Columns: msgs, the messages (the header entry not counted); done, those with a translation that is not fuzzy (Sphinx
ignores fuzzy ones, gettext_allow_fuzzy_translations being off); fuzzy; math, the display-math blocks among the
messages (Sphinx makes each $$...$$ or amsmath block a message; most stay untranslated, a few have \\text{} words);
words, the whitespace-separated words of every msgid; prose, the words a translator reads: display math left out,
inline math $...$ counted as one word, a role's name and target left out ({numref}`Section %s <sec-x>` counts as
"Section %s", {cite:p}`key` as nothing), and only words with a letter or digit. Needs babel (installed with Sphinx).
"""

import re
import sys
from pathlib import Path

from babel.messages.pofile import read_po

HERE = Path(__file__).resolve().parent

INLINE_MATH = re.compile(r"\$\$?[^$]+\$\$?")
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`[^`]*`")
ROLE = re.compile(r"\{[a-z:-]+\}`([^`<]*?)\s*(?:<[^>]*>)?`")
LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
CODE = re.compile(r"`[^`]*`")


def is_display_math(msgid):
    """A display-math block: no $...$ and a LaTeX command outside code spans (true of every message of the book)."""
    return "$" not in msgid and bool(LATEX_COMMAND.search(CODE.sub("", msgid)))


def prose_words(msgid):
    if is_display_math(msgid):
        return 0
    text = CITE.sub("", msgid)
    text = ROLE.sub(lambda m: m.group(1), text)
    text = INLINE_MATH.sub("X", text)
    return sum(1 for word in text.split() if re.search(r"\w", word))


def stats(po_path):
    with open(po_path, "rb") as f:
        catalog = read_po(f)
    row = dict(msgs=0, done=0, fuzzy=0, math=0, words=0, prose=0)
    for message in catalog:
        if not message.id:
            continue  # the header
        msgid = message.id if isinstance(message.id, str) else message.id[0]
        msgstr = message.string if isinstance(message.string, str) else message.string[0]
        row["msgs"] += 1
        if message.fuzzy:
            row["fuzzy"] += 1
        elif msgstr:
            row["done"] += 1
        row["math"] += is_display_math(msgid)
        row["words"] += len(msgid.split())
        row["prose"] += prose_words(msgid)
    return row


def main(argv):
    language = argv[1] if len(argv) > 1 else "zh_CN"
    folder = HERE / language / "LC_MESSAGES"
    files = sorted(folder.rglob("*.po"))
    if not files:
        sys.exit(f"no .po files under {folder}")
    columns = ["msgs", "done", "fuzzy", "math", "words", "prose"]
    print(f"{'catalogue':36s}" + "".join(f"{c:>7s}" for c in columns))
    total = dict.fromkeys(columns, 0)
    for po in files:
        row = stats(po)
        for c in columns:
            total[c] += row[c]
        print(f"{str(po.relative_to(folder)):36s}" + "".join(f"{row[c]:7d}" for c in columns))
    print(f"{'total (' + str(len(files)) + ' files)':36s}" + "".join(f"{total[c]:7d}" for c in columns))
    share = 100 * total["done"] / total["msgs"] if total["msgs"] else 0.0
    print(f"{language}: {total['done']} of {total['msgs']} messages translated ({share:.1f}%)")


if __name__ == "__main__":
    main(sys.argv)
