"""The project documents itself: the README is a front page (at most 12 KB), every docs/ page
covers its own topic without repeating another's paragraphs, local links resolve, and no file
points at design material outside the repository or tells the history of a change."""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.join("docs", p) for p in os.listdir(os.path.join(ROOT, "docs"))
                               if p.endswith(".md"))


def _tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:   # not a git checkout (an sdist): walk the folders instead
        return [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT)
                if ".venv" not in d and ".git" not in d for f in fs]
    return out.stdout.split()


def _paragraphs(page):
    text = open(os.path.join(ROOT, page)).read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)           # code blocks may repeat a command
    for block in re.split(r"\n\s*\n", text):
        words = " ".join(block.split())
        if len(words) >= 160 and not words.startswith(("|", "#", "<!--")):
            yield words


def test_the_readme_is_a_front_page():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 12 * 1024
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "make test" in readme and "python -m adautomix_fast.train" in readme


def test_no_paragraph_appears_in_two_pages():
    seen: dict[str, str] = {}
    repeated = []
    for page in PAGES:
        for paragraph in _paragraphs(page):
            if paragraph in seen and seen[paragraph] != page:
                repeated.append(f"{seen[paragraph]} and {page}: {paragraph[:90]}...")
            seen.setdefault(paragraph, page)
    assert not repeated, "\n".join(repeated)


def test_local_links_resolve():
    broken = []
    for page in PAGES:
        text = open(os.path.join(ROOT, page)).read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))):
                broken.append(f"{page}: {target}")
    assert not broken, "\n".join(broken)


def test_no_file_points_outside_the_repository_or_at_a_change():
    outside = re.compile(r"(?<![\w./-])(?:spec/[A-Z]+\.md|\.\./shared)")
    history = re.compile(r"\b(?:issue|Issue) #?\d+\b")
    found = []
    for rel in _tracked_files():
        if not rel.endswith((".py", ".md", ".cpp", ".cu", ".h", ".toml", ".yaml", ".cfg", "Makefile")) \
                or rel == "tests/test_docs.py":
            continue
        text = open(os.path.join(ROOT, rel), errors="replace").read()
        for pattern in (outside, history):
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{rel}:{line}: {match.group(0)}")
    assert not found, "\n".join(found)
