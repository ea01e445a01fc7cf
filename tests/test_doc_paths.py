"""Every module path README.md and docs/*.md cite exists (issue 18, item 6).

Paths are cited as files (``sklearn_beta/core/_grid.py``, a folder such as
``sklearn_beta/datasets/``), as dotted names (``sklearn_beta.core._nnls``,
possibly followed by an attribute: ``sklearn_beta.core._nnls.nnls_fit``), or
as a bare file name (```_grid.py```) on a line that names its folder.
"""

from __future__ import annotations

import importlib
import re

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FILE = re.compile(r"(?<![\w/])sklearn_beta/[\w/.-]*[\w/]")
DOTTED = re.compile(r"(?<![\w.])sklearn_beta(?:\.[A-Za-z_]\w*)+")


def _cited(pattern):
    return sorted(
        {
            (page.name, match.rstrip("."))
            for page in PAGES
            for match in pattern.findall(page.read_text())
        }
    )


FILES = _cited(FILE)
DOTTED_NAMES = _cited(DOTTED)
FOLDER = re.compile(r"(?<![\w/])sklearn_beta/\w+/")
BARE = re.compile(r"`(_\w+\.py)`")
BARE_NAMES = sorted(
    {
        (page.name, name, tuple(FOLDER.findall(line)))
        for page in PAGES
        for line in page.read_text().splitlines()
        if FOLDER.search(line)
        for name in BARE.findall(line)
    }
)


def test_the_pages_cite_modules():
    assert len(FILES) > 15
    assert len(DOTTED_NAMES) > 10
    assert len(BARE_NAMES) > 20


@pytest.mark.parametrize(("page", "name", "folders"), BARE_NAMES)
def test_bare_file_name_is_in_a_folder_its_line_names(page, name, folders):
    assert any((REPO / folder / name).exists() for folder in folders), (
        f"{page} cites {name} beside {', '.join(folders)}, where it is not"
    )


@pytest.mark.parametrize(("page", "path"), FILES)
def test_cited_file_exists(page, path):
    assert (REPO / path).exists(), f"{page} cites {path}, which does not exist"


@pytest.mark.parametrize(("page", "name"), DOTTED_NAMES)
def test_cited_module_exists(page, name):
    parts = name.split(".")
    # The longest importable prefix is the module; the rest are its attributes.
    for end in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            assert hasattr(target, attribute), f"{page} cites {name}: no {attribute}"
            target = getattr(target, attribute)
        return
    pytest.fail(f"{page} cites {name}, which is no module")


FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but - and _ dropped."""
    headings = re.findall(r"^#+\s+(.*)$", FENCE.sub("", page.read_text()), re.M)
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings
    }


LINKS = sorted(
    {
        (page, link)
        for page in PAGES
        for link in LINK.findall(FENCE.sub("", page.read_text()))
        if not link.startswith(("http://", "https://", "mailto:"))
    },
    key=str,
)


def test_the_pages_link_each_other():
    assert len(LINKS) > 100


@pytest.mark.parametrize(("page", "link"), LINKS, ids=lambda v: getattr(v, "name", v))
def test_relative_link_and_anchor_resolve(page, link):
    target, _, anchor = link.partition("#")
    path = (page.parent / target) if target else page
    assert path.exists(), f"{page.name} links {link}: no {target}"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{page.name} links {link}: no such heading"


def test_readme_and_index_list_every_page():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Documentation") : readme.index("## Examples")]
    index = (REPO / "docs" / "index.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in section, f"README's list lacks {page.name}"
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md lacks {page.name}"
