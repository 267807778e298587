#!/usr/bin/env python3
"""Start a new chapter from the book's template.

    python scripts/new_chapter.py SLUG --title "Additive and multiplicative attention" \
                                       --number 3 --part foundations
    make new-chapter SLUG=bahdanau-luong TITLE="Additive and multiplicative attention" NUMBER=3 PART=foundations

Writes ``code/chapters/<slug>.py`` (the script, which runs as it is and writes one figure
and one table), ``docs/<part>/<slug>.md`` (the page, with every section of the template in
docs/style.md), and adds the page and its notebook to the navigation in ``mkdocs.yml``.
Nothing is overwritten.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "templates"
PARTS = {  # folder under docs/ -> its section in the navigation
    "foundations": "Foundations",
    "position": "Position and the Transformer",
    "efficient": "Efficient attention",
    "real-models": "Real models",
    "applications": "Applications",
    "interpret": "Seeing and explaining attention",
}
NOTEBOOKS = "Run it yourself"
SLUG = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def section_end(lines: list[str], header: int) -> int:
    """Index just after the last line of the YAML block that starts at ``lines[header]``."""
    indent = len(lines[header]) - len(lines[header].lstrip())
    end = header + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > header + 1 and not lines[end - 1].strip():
        end -= 1
    return end


def add_to_nav(config: str, part: str, page: str, notebook_title: str, notebook: str) -> str:
    """Add the page at the end of its part and the notebook at the end of 'Run it yourself'."""
    lines = config.splitlines()
    nav = lines.index("nav:")

    def header_of(name: str) -> int | None:
        for i in range(nav + 1, len(lines)):
            if lines[i].strip() == f"- {name}:":
                return i
        return None

    part_header = header_of(PARTS[part])
    if part_header is None:  # a new part goes just before the notebooks
        at = header_of(NOTEBOOKS)
        lines[at:at] = [f"  - {PARTS[part]}:"]
        part_header = at
    end = section_end(lines, part_header)
    lines[end:end] = [f"      - {page}"]
    notebooks = header_of(NOTEBOOKS)
    end = section_end(lines, notebooks)
    lines[end:end] = [f"      - \"{notebook_title}\": {notebook}"]
    return "\n".join(lines) + "\n"


def new_chapter(slug: str, title: str, number: int, part: str, root: Path = REPO) -> list[Path]:
    if not SLUG.match(slug):
        raise ValueError(f"slug={slug!r} must be lowercase words joined by hyphens, e.g. 'bahdanau-luong'")
    if part not in PARTS:
        raise ValueError(f"part={part!r} must be one of {sorted(PARTS)}")
    if not title.strip():
        raise ValueError("title must not be empty")
    if number < 1:
        raise ValueError(f"number must be >= 1, got {number}")
    script = root / "code" / "chapters" / f"{slug}.py"
    page = root / "docs" / part / f"{slug}.md"
    for path in (script, page):
        if path.exists():
            raise FileExistsError(f"{path.relative_to(root)} exists already: nothing was written")
    values = {"slug": slug, "title": title.strip(), "number": str(number)}
    config_path = root / "mkdocs.yml"
    config = add_to_nav(config_path.read_text(), part, f"{part}/{slug}.md", f"{number}. {title.strip()}",
                        f"generated/{slug}/{slug}.ipynb")
    page.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(fill((TEMPLATES / "chapter.py").read_text(), **values))
    page.write_text(fill((TEMPLATES / "chapter.md").read_text(), **values))
    config_path.write_text(config)
    return [script, page, config_path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slug", help="the chapter's file name, e.g. bahdanau-luong")
    parser.add_argument("--title", required=True)
    parser.add_argument("--number", type=int, required=True, help="the chapter's number in the book")
    parser.add_argument("--part", required=True, choices=sorted(PARTS))
    args = parser.parse_args(argv)
    try:
        written = new_chapter(args.slug, args.title, args.number, args.part)
    except (ValueError, FileExistsError) as exc:
        parser.exit(2, f"error: {exc}\n")
    for path in written:
        print(f"wrote {path.relative_to(REPO)}")
    print(f"next: run `python code/chapters/{args.slug}.py --quick`, then write the page (docs/style.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
