"""Every relative link and anchor in README.md and docs/*.md resolves; the README stays short.

A link ``[text](path)``, ``[text](path#anchor)``, ``[text](#anchor)``, an
image ``![alt](path)`` or a reference definition ``[name]: path`` must name a
file or folder that exists, relative to the linking file, and an anchor must
be the slug of a heading of the target file, by GitHub's rules: the heading's
text lowercased, punctuation other than hyphens, underscores and spaces
dropped, spaces made hyphens, and a repeated slug numbered -1, -2, ...
``http(s)://`` and ``mailto:`` links are not checked. Code blocks and inline
code are skipped. Pure Python: no JAX, no network.
"""

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README_MAX_LINES = 300

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may be <...> and may carry a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
EXTERNAL = ("http://", "https://", "mailto:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's markdown text (before de-duplication)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and underscores
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    """The anchors a markdown file defines: its headings' slugs, numbered on repeats."""
    found, seen = set(), {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, target) of every link, image and reference definition outside code."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        out.extend((number, target.strip("<>")) for target in targets)
    return out


def broken_links(path: pathlib.Path) -> list[str]:
    """Why each of ``path``'s relative links does not resolve; empty if all do."""
    problems = []
    for number, target in links(path):
        if target.lower().startswith(EXTERNAL):
            continue
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{where}: no file {file_part}")
        elif anchor:
            if linked.suffix != ".md" or linked.is_dir():
                problems.append(f"{where}: an anchor into a file that is not markdown")
            elif anchor not in anchors(linked):
                problems.append(f"{where}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    return problems


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve()
              for _, target in links(ROOT / "README.md") if not target.startswith("#")}
    assert [p.name for p in PAGES[1:] if p not in linked] == []


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


@pytest.mark.parametrize("heading, expected", [
    ("Object storage (s3://, gs://)", "object-storage-s3-gs"),
    ("Kaggle + HPAv18: the winners' ingredients", "kaggle--hpav18-the-winners-ingredients"),
    ("3. Split", "3-split"),
    ("Near-duplicates across stores: `experiments/bench_dedupe.py`",
     "near-duplicates-across-stores-experimentsbench_dedupepy"),
    ("predict: probabilities and a submission", "predict-probabilities-and-a-submission"),
])
def test_slugs_follow_githubs_rules(heading, expected):
    assert slug(heading) == expected


def test_a_broken_link_or_anchor_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A\n\n## Same\n\n## Same\n\n```\n[in code](nowhere.md)\n```\n"
        "[ok](#same-1) [ok](b.md#b) `[inline](nowhere.md)` [web](https://x.invalid/y)\n"
        "[gone](missing.md) [bad](b.md#nope) ![img](missing.png) [self](#same-2)\n")
    (tmp_path / "docs" / "b.md").write_text("# B\n")
    problems = broken_links(tmp_path / "docs" / "a.md")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md: no file missing.md",
        "b.md#nope: no heading #nope in docs/b.md",
        "missing.png: no file missing.png",
        "#same-2: no heading #same-2 in docs/a.md",
    ]
