"""The README is an entry point, not a manual, and the docs hold together: README.md stays under
8,000 characters, every relative link in README.md and docs/*.md reaches a file (and a heading,
for a ``#fragment`` into a Markdown page), and every ``make`` command they show is a Makefile
target. Plain text checks: no JAX, no network."""
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_CHARS = 8000  # issue 13: "README at most 8,000 characters"; the rest goes to docs/

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """The text outside code: links in code blocks and spans are code, not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _code(text: str):
    """Each fenced block's lines and each inline code span."""
    for block in FENCE.findall(text):
        yield from block.splitlines()[1:-1]
    yield from (span.strip("`") for span in INLINE_CODE.findall(FENCE.sub("", text)))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()  # GitHub keeps "_"
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set:
    seen, out = {}, set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links():
    for page in PAGES:
        for target in dict.fromkeys(LINK.findall(_prose(page.read_text(encoding="utf-8")))):
            if not EXTERNAL.match(target):
                yield pytest.param(page, target, id=f"{_rel(page)}->{target}")


def _make_targets_shown():
    """(page, target) for every ``make TARGET ...`` in a code block or span of README and docs."""
    for page in PAGES:
        for code in _code(page.read_text(encoding="utf-8")):
            for m in re.finditer(r"(?:^|[\s;&|(])make((?:\s+[^\s#;&|)]+)*)", code):
                args = shlex.split(m.group(1), comments=True)
                for arg in args:
                    if "=" not in arg and not arg.startswith("-"):
                        yield page, arg


def test_readme_is_at_most_8000_characters():
    n = len(README.read_text(encoding="utf-8"))
    assert n <= README_MAX_CHARS, f"README.md has {n} characters, expected at most {README_MAX_CHARS}: move detail to docs/"


def test_every_page_has_links_to_check():
    # the link test below would pass vacuously if the pattern stopped matching
    assert sum(1 for _ in _links()) >= len(PAGES)


@pytest.mark.parametrize("page, target", list(_links()))
def test_relative_link_reaches_a_file(page, target):
    path, _, fragment = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{_rel(page)} links to {target}, but {dest} does not exist"
    if fragment and dest.suffix == ".md":
        anchors = _anchors(dest)
        assert fragment in anchors, (f"{_rel(page)} links to {target}, but {_rel(dest)} has no heading "
                                     f"#{fragment}; its headings: {sorted(anchors)}")


def test_readme_links_every_docs_page():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(_prose(README.read_text(encoding="utf-8")))
              if not EXTERNAL.match(t)}
    missing = [_rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_make_commands_shown_are_makefile_targets():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, re.M))
    shown = list(_make_targets_shown())
    assert {t for p, t in shown if p == README} >= {"demo", "test"}, "the README shows `make demo` and `make test`"
    unknown = [f"{_rel(p)}: make {t}" for p, t in shown if t not in targets]
    assert not unknown, f"not Makefile targets ({sorted(targets)}): {unknown}"
