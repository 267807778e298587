# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Appendix C. Papers explained
#
# This script builds the index of papers at the back of *The Attention Book*: every work in
# the bibliography, the chapters that cite it, and, where a chapter reproduces a published
# number, the paper's claim, its number (with the table or figure it comes from) beside the
# book's, and a link to the section. The numbers come from the chapters' own runs: each
# chapter records them with `ch.paper(...)` in its `papers.json`. It reads the book's pages,
# so it runs inside a clone of the repository, after the chapters:
#
# ```
# python code/chapters/papers.py
# ```

# %%
import json
import re

from attnbook.chapter import IN_CLONE, REPO, Chapter

ch = Chapter("papers")
if not IN_CLONE:
    raise SystemExit("the papers index reads the book's pages: run it inside a clone of the repository")

# %% [markdown]
# ## What each chapter reproduced
#
# One `ch.needs` per chapter: the build runs this script after all of them.

# %%
recorded = {
    "why-attention": ch.needs("why-attention", "papers.json"),
    "qkv-attention": ch.needs("qkv-attention", "papers.json"),
    "bahdanau-luong": ch.needs("bahdanau-luong", "papers.json"),
    "self-attention-masks": ch.needs("self-attention-masks", "papers.json"),
    "multi-head": ch.needs("multi-head", "papers.json"),
    "positional-encoding": ch.needs("positional-encoding", "papers.json"),
    "transformer": ch.needs("transformer", "papers.json"),
    "gpt": ch.needs("gpt", "papers.json"),
    "inference": ch.needs("inference", "papers.json"),
    "quadratic-wall": ch.needs("quadratic-wall", "papers.json"),
    "sparse-patterns": ch.needs("sparse-patterns", "papers.json"),
    "low-rank": ch.needs("low-rank", "papers.json"),
    "kernels": ch.needs("kernels", "papers.json"),
    "hashing": ch.needs("hashing", "papers.json"),
    "io-aware": ch.needs("io-aware", "papers.json"),
    "benchmarks": ch.needs("benchmarks", "papers.json"),
    "pretrained-encoder": ch.needs("pretrained-encoder", "papers.json"),
    "pretrained-gpt": ch.needs("pretrained-gpt", "papers.json"),
    "vision-transformer": ch.needs("vision-transformer", "papers.json"),
    "audio-multimodal": ch.needs("audio-multimodal", "papers.json"),
    "machine-translation": ch.needs("machine-translation", "papers.json"),
    "visualising": ch.needs("visualising", "papers.json"),
    "attention-explanation": ch.needs("attention-explanation", "papers.json"),
}

# %% [markdown]
# ## The pages, their titles and what they cite

# %%
DOCS = REPO / "docs"
HERE = DOCS / "appendix" / "papers.md"
CITE = re.compile(r"bibliography\.md#([a-z]+[0-9]{4}[a-z0-9]*)")
pages = sorted(p for p in DOCS.rglob("*.md") if "generated" not in p.relative_to(DOCS).parts
               and p.name != "bibliography.md" and p != HERE)


def chapter_order(page):
    """Numbered chapters first, in book order, then appendices and other pages by title."""
    number = re.match(r"(\d+)\. ", title_of(page))
    return (0, int(number.group(1)), "") if number else (1, 0, title_of(page))


def title_of(page):
    first = page.read_text(encoding="utf-8").split("\n", 1)[0]
    return first.lstrip("# ").strip() if first.startswith("# ") else page.stem


def link_from_here(page, anchor=""):
    return "../" + page.relative_to(DOCS).as_posix() + (f"#{anchor}" if anchor else "")


cited_in = {}
for page in pages:
    for key in sorted(set(CITE.findall(page.read_text(encoding="utf-8")))):
        cited_in.setdefault(key, []).append(page)
cited_in = {key: sorted(where, key=chapter_order) for key, where in cited_in.items()}

entries = {}  # key -> the entry's text in the bibliography
for key, text in re.findall(r"^\*\*([a-z0-9]+)\*\* \{ #\1 \}\n: (.+)$", (DOCS / "bibliography.md").read_text(encoding="utf-8"),
                            flags=re.M):
    entries[key] = text


def short_title(text):
    """'Authors. Title. Venue year. [link]' -> 'Title': the authors end at the first full stop
    that does not close an initial ('Geoffrey E. Hinton')."""
    authors_end = re.search(r"[^\s.]{2,}\. ", text)
    rest = text[authors_end.end():] if authors_end else text
    title = re.match(r"(.+?[.?!])(\s|$)", rest)
    return (title.group(1) if title else rest).rstrip(".")


unknown = sorted(set(cited_in) - set(entries))
assert not unknown, f"pages cite keys that are not in the bibliography: {unknown}"
print(f"{len(entries)} works in the bibliography, {len(cited_in)} cited from {len(pages)} pages")

# %% [markdown]
# ## Published numbers beside the book's

# %%
rows, reproduced = [], set()
for slug, path in recorded.items():
    page = next(p for p in pages if p.stem == slug and p.parent != DOCS)
    for item in json.loads(path.read_text(encoding="utf-8")):
        if item["key"] not in entries:
            raise ValueError(f"chapter {slug} records a number from {item['key']!r}, which is not in the bibliography")
        reproduced.add(item["key"])
        rows.append([f"[{short_title(entries[item['key']])}](../bibliography.md#{item['key']})", item["claim"],
                     item["theirs"], item["ours"], f"[{title_of(page)}]({link_from_here(page, item['section'])})"])
ch.table("reproduced", ["Paper", "Claim", "Theirs", "Ours", "Where"], rows, align="lllll")
print(f"{len(rows)} published numbers reproduced, from {len(reproduced)} papers")

# %%
rows = []
for key in sorted(entries):
    where = ", ".join(f"[{title_of(p)}]({link_from_here(p)})" for p in cited_in.get(key, []))
    rows.append([f"[{short_title(entries[key])}](../bibliography.md#{key})", where or "the bibliography only",
                 "yes" if key in reproduced else ""])
ch.table("cited", ["Paper", "Cited in", "Numbers reproduced above"], rows, align="lll")
comparisons = sum(len(json.loads(path.read_text(encoding="utf-8"))) for path in recorded.values())
ch.markdown("counts", f"The bibliography holds {len(entries)} works and the book's pages cite {len(cited_in)} of "
                      f"them. For {len(reproduced)} of these the chapters set their own measurements beside the "
                      f"published ones: {comparisons} comparisons in all.")
