"""The build's cache and failure behaviour, on a throw-away tree of fake chapters."""
from __future__ import annotations

import json
import textwrap

import pytest

import build

pytestmark = pytest.mark.slow

GOOD = textwrap.dedent('''
    # %%
    from attnbook.chapter import Chapter
    ch = Chapter("{slug}")
    ch.markdown("answer", "The answer is {answer}.")
''')
BAD = textwrap.dedent('''
    # %%
    from attnbook.chapter import Chapter
    ch = Chapter("{slug}")
    raise RuntimeError("this chapter is broken on purpose")
''')


@pytest.fixture
def tree(tmp_path):
    chapters, library = tmp_path / "chapters", tmp_path / "lib"
    chapters.mkdir()
    library.mkdir()
    (library / "mechanism.py").write_text("WEIGHT = 1\n")
    (chapters / "alpha.py").write_text(GOOD.format(slug="alpha", answer=42))
    layout = build.Layout(root=tmp_path, chapters=chapters, library=library,
                          generated=tmp_path / "generated", work=tmp_path / "work")
    return layout


def statuses(results):
    return {r.slug: r.status for r in results}


def test_a_fresh_build_runs_every_chapter_and_saves_its_notebook(tree):
    results = build.build_chapters(tree, device="cpu", log=lambda *_: None)
    assert statuses(results) == {"alpha": "ran"}
    out = tree.generated / "alpha"
    assert (out / "answer.md").read_text() == "The answer is 42.\n"
    assert (out / "alpha.ipynb").exists()
    manifest = json.loads(tree.manifest.read_text())
    assert manifest["alpha"]["device"] == "cpu" and "torch" in manifest["alpha"]


def test_a_second_build_with_nothing_changed_executes_nothing(tree):
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    assert statuses(build.build_chapters(tree, device="cpu", log=lambda *_: None)) == {"alpha": "cached"}


def test_a_change_to_the_library_runs_the_chapter_again(tree):
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    (tree.library / "mechanism.py").write_text("WEIGHT = 2\n")
    assert build.stale_chapters(tree, ["alpha"], "cpu", False) == ["alpha"]
    assert statuses(build.build_chapters(tree, device="cpu", log=lambda *_: None)) == {"alpha": "ran"}


def test_the_cache_key_covers_script_device_and_mode(tree):
    key = build.chapter_key(tree, "alpha", "cpu", False)
    assert key != build.chapter_key(tree, "alpha", "cuda", False)
    assert key != build.chapter_key(tree, "alpha", "cpu", True)
    (tree.chapters / "alpha.py").write_text(GOOD.format(slug="alpha", answer=43))
    assert key != build.chapter_key(tree, "alpha", "cpu", False)


def test_a_failing_chapter_is_named_and_keeps_its_previous_outputs(tree):
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    (tree.chapters / "alpha.py").write_text(BAD.format(slug="alpha"))
    (tree.chapters / "beta.py").write_text(GOOD.format(slug="beta", answer=7))
    results = build.build_chapters(tree, device="cpu", jobs=2, log=lambda *_: None)
    assert statuses(results) == {"alpha": "failed", "beta": "ran"}
    assert (tree.generated / "alpha" / "answer.md").read_text() == "The answer is 42.\n"
    lines = []
    assert build.report_failures(results, log=lines.append)
    assert "chapter 'alpha' FAILED" in lines[0] and "broken on purpose" in lines[0]
    # the failed chapter stays stale, so the next build tries it again
    assert build.stale_chapters(tree, ["alpha", "beta"], "cpu", False) == ["alpha"]
    assert not list(tree.work.glob("alpha-*")), "the failed run's temporary folder was removed"


def test_unknown_chapters_are_rejected_with_the_list_of_chapters(tree):
    with pytest.raises(SystemExit, match="unknown chapter.*gamma.*alpha"):
        build.build_chapters(tree, ["gamma"], device="cpu", log=lambda *_: None)


def test_asking_for_cuda_without_it_says_what_to_do(tree, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--device cpu"):
        build.build_chapters(tree, device="cuda", log=lambda *_: None)
