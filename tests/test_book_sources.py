"""The book's sources: numbering, cross-references and hidden scaffolding, checked without building it.

- The table of contents numbers every page as its file name says (`03_2_family` is Section 3.2), so prose and
  sidebar agree.
- No prose names a chapter, section or exercise by a literal number or label: references are `{numref}`/`{ref}`
  roles, which Sphinx resolves (and `-W -n` fails on when they point nowhere).
- Scaffolding is hidden from the rendered page but still executed and tested: a code cell with an `assert` is
  tagged `remove-input` or `remove-cell`, and a notebook's first code cell (imports, seed, device) `hide-input`.
- Every section page ends with exercises.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PAGES = sorted(BOOK.glob("*.md"))
HIDDEN = {"remove-input", "remove-cell"}
# "Section 4.1", "Chapter 6", "chapters 3 and 4", "ch. 6", "§3": a number that the toc may change.
LITERAL_NUMBER = re.compile(r"\b(?:[Ss]ections?|[Cc]hapters?|[Cc]h\.)\s+\d|§\s*\d")
# A raw exercise label such as "exercise ch5-ex3" shown as text.
LITERAL_LABEL = re.compile(r"\b[Ee]xercises?\s+ch\d[\w-]*-ex\d")
# What a role or directive line may legitimately hold: `{numref}`...``, `{ref}`...``, `:label: ...`.
ROLE = re.compile(r"\{(?:numref|ref|doc|cite:[pt]|cite)\}`[^`]*`")


def numbered_pages() -> dict[str, str]:
    """Page stem -> the number Sphinx gives it ("3", "3.2"), from the numbered parts of _toc.yml."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    numbers, chapter = {}, 0
    for part in toc["parts"]:
        if not part.get("numbered"):
            continue
        for entry in part["chapters"]:
            chapter += 1
            numbers[Path(entry["file"]).name] = str(chapter)
            for section, sub in enumerate(entry.get("sections", []), start=1):
                numbers[Path(sub["file"]).name] = f"{chapter}.{section}"
    return numbers


def prose(path: Path) -> str:
    """The Markdown a reader sees: a page's text, or a notebook's Markdown cells."""
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def has_assert(source: str) -> bool:
    """Whether the cell's code holds an assert statement (IPython magics are dropped before parsing)."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse("\n".join(lines))))


def test_the_toc_numbers_each_page_as_its_file_name_says():
    numbers = numbered_pages()
    assert len(numbers) >= 25
    for stem, number in numbers.items():
        digits = re.match(r"(\d+)(?:_(\d+))?_", stem)
        if digits is None:  # the bibliography: numbered by position, no number in its name
            continue
        expected = str(int(digits[1])) + (f".{int(digits[2])}" if digits[2] else "")
        assert number == expected, f"{stem} is shown as {number}; its file name says {expected}"


@pytest.mark.parametrize("path", PAGES + NOTEBOOKS, ids=lambda p: p.name)
def test_prose_names_no_chapter_section_or_exercise_by_number(path):
    found = []
    for line in prose(path).splitlines():
        text = ROLE.sub("", line)
        if text.lstrip().startswith((":label:", "```{solution", "````{solution")):
            continue
        found += [m.group(0) for m in LITERAL_NUMBER.finditer(text)] + [m.group(0) for m in LITERAL_LABEL.finditer(text)]
    assert not found, f"{path.name}: write these as {{numref}}/{{ref}} roles: {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_scaffolding_is_hidden_but_kept(path):
    cells = code_cells(path)
    first_tags = set(cells[0].get("metadata", {}).get("tags", []))
    assert "hide-input" in first_tags, f"{path.name}: the first code cell (imports, seed, device) needs hide-input"
    shown = [
        "".join(c["source"]).strip().splitlines()[0]
        for c in cells
        if has_assert("".join(c["source"])) and not HIDDEN & set(c.get("metadata", {}).get("tags", []))
    ]
    assert not shown, f"{path.name}: cells with asserts shown on the page (tag remove-input/remove-cell): {shown}"


@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if "." in numbered_pages().get(p.stem, "")], ids=lambda p: p.name
)
def test_every_section_ends_with_exercises(path):
    headings = re.findall(r"^## (.+)$", prose(path), flags=re.M)
    assert headings and headings[-1].strip() == "Exercises", f"{path.name}: last heading is {headings[-1:]}"
    assert re.search(r"^`{3,}\{exercise\}", prose(path), flags=re.M), f"{path.name}: no exercise directive"
