"""The README and the docs pages stay short, current and true to the code.

README: at most 150 lines, no words that only make sense in the project's history, every linked page
exists, every ``curvfast <command>`` it names is a real command, and its method table names exactly the
registered estimators. Pipeline pages: one template, the same six sections in the same order.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from curvfast.cli import CORE_COMMANDS
from curvfast.curvature import METHODS
from curvfast.pipelines import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 150
PIPELINE_SECTIONS = ("What it does", "How to run", "Results", "Deviations from the published code", "Paper scale",
                     "Limits")
LIBRARY_PAGES = ("estimators", "native-ops", "architecture", "scale-out", "results", "compat", "flatness")
# Words that describe when or in which work item something was done, not what the project is.
JOURNAL_PATTERNS = (
    r"\bthis round\b", r"\bround \d", r"\bnext round\b", r"\bprevious round\b", r"\bissue \d+[a-z]?\b",
    r"\bthe previous run\b", r"\bthe last run\b", r"\bthis run\b", r"\bnew `auto`", r"\bsession\b",
    r"\blast stop\b", r"\bstop \d+\b", r"\bnow (?:turns|runs|refuses)\b",
)


def journal_words(text: str) -> list[str]:
    """The journal phrases found in ``text`` (case-insensitive)."""
    return [m.group(0) for pattern in JOURNAL_PATTERNS for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def readme_problems(text: str) -> list[str]:
    """Everything wrong with a README text, as messages (empty: it passes)."""
    problems = []
    lines = text.splitlines()
    if len(lines) > README_MAX_LINES:
        problems.append(f"README has {len(lines)} lines, more than {README_MAX_LINES}")
    found = journal_words(text)
    if found:
        problems.append(f"README has journal words: {sorted(set(found))}")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+://", target) and not (ROOT / target).exists():
            problems.append(f"README links to {target}, which does not exist")
    known = set(CORE_COMMANDS) | set(COMMANDS)
    for command in re.findall(r"(?:^|`|-m )curvfast ([a-z][a-z_-]*)", text, flags=re.MULTILINE):
        if command not in known:
            problems.append(f"README names `curvfast {command}`, which is not a command")
    table = method_table(text)
    expected = set(METHODS) | {"auto"}
    if table != expected:
        problems.append(f"README's method table names {sorted(table)}, the registered estimators are {sorted(expected)}")
    return problems


def method_table(text: str) -> set[str]:
    """The methods named in the first column of the README table whose header starts with ``| method |``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"\|\s*method\s*\|", line)), None)
    if start is None:
        return set()
    names = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names.add(line.split("|")[1].strip().strip("`"))
    return names


def level2_sections(text: str) -> list[str]:
    """The level-2 headings of a Markdown page, outside fenced code blocks."""
    sections, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            sections.append(line[3:].strip())
    return sections


def test_readme_is_short_current_and_true_to_the_code():
    assert readme_problems(README.read_text()) == []


@pytest.mark.parametrize("problem, text", [
    ("too long", "# curvfast\n" + "line\n" * README_MAX_LINES),
    ("journal words", "# curvfast\nThis round adds the new `auto` (issue 18a).\n"),
    ("a missing page", "# curvfast\nSee [the page](docs/no-such-page.md).\n"),
    ("an unknown command", "# curvfast\n`curvfast frobnicate --out x`\n"),
    ("a method table that misses an estimator", "# curvfast\n| method | returns |\n|---|---|\n| `exact` | tr(H) |\n"),
])
def test_readme_checks_can_fail(problem, text):
    assert readme_problems(text), problem


def test_readme_method_table_follows_the_registry():
    text = README.read_text()
    table = method_table(text)
    assert table == set(METHODS) | {"auto"}
    dropped = sorted(table - {"auto"})[0]
    without = "\n".join(line for line in text.splitlines() if not line.startswith(f"| `{dropped}` |"))
    assert any("method table" in problem for problem in readme_problems(without))


@pytest.mark.parametrize("command", COMMANDS)
def test_pipeline_page_follows_the_template(command):
    page = DOCS / f"{command}.md"
    assert page.exists(), f"{page} is missing"
    assert level2_sections(page.read_text()) == list(PIPELINE_SECTIONS)


@pytest.mark.parametrize("name", LIBRARY_PAGES)
def test_library_page_starts_with_a_summary(name):
    text = (DOCS / f"{name}.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# "), f"docs/{name}.md must start with its title"
    body = next(line for line in lines[1:] if line.strip())
    assert not body.startswith(("#", "|", "```", "-")), f"docs/{name}.md must open with a one-paragraph summary"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_pages_have_no_journal_words(page):
    assert journal_words((DOCS / page).read_text()) == []


DEVIATIONS_HEADER = ("point", "published code", "curvfast", "why", "option that restores the published behaviour")


def section(text: str, title: str) -> str:
    """The body of the level-2 section ``title`` of a Markdown page ('' if absent)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def deviations_problems(text: str) -> list[str]:
    """What is wrong with a page's Deviations section: it must hold one table with the five columns."""
    lines = section(text, "Deviations from the published code").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
    if len(starts) != 1:
        return [f"the Deviations section has {len(starts)} tables, not one"]
    rows = [line for line in lines if line.startswith("|") and not re.match(r"\|[\s:|-]+\|$", line)]
    header = tuple(cell.strip() for cell in rows[0].strip("|").split("|"))
    if header != DEVIATIONS_HEADER:
        return [f"the Deviations table's header is {header}, not {DEVIATIONS_HEADER}"]
    return [f"a Deviations row has fewer than five cells: {row[:60]}" for row in rows[1:]
            if len(row.strip("|").split("|")) < len(DEVIATIONS_HEADER)]


@pytest.mark.parametrize("command", COMMANDS)
def test_pipeline_page_has_one_five_column_deviations_table(command):
    assert deviations_problems((DOCS / f"{command}.md").read_text()) == []


@pytest.mark.parametrize("problem, text", [
    ("no table", "## Deviations from the published code\n\nnone\n"),
    ("four columns", "## Deviations from the published code\n\n| point | published code | curvfast | why |\n|---|---|---|---|\n"),
    ("two tables", "## Deviations from the published code\n\n| point | published code | curvfast | why | option that "
                   "restores the published behaviour |\n|---|---|---|---|---|\n\ntext\n\n| a |\n|---|\n"),
])
def test_deviations_check_can_fail(problem, text):
    assert deviations_problems(text), problem


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_figures_exist(page):
    text = (DOCS / page).read_text()
    missing = [target for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text) if not (DOCS / target).exists()]
    assert missing == []
