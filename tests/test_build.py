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


# -- outputs the build did not write --------------------------------------------------------
def test_outputs_written_by_hand_make_the_chapter_stale(tree):
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    assert build.stale_chapters(tree, ["alpha"], "cpu", False) == []
    # a reader runs the script by hand (say with --quick) into the published folder
    (tree.generated / "alpha" / "answer.md").write_text("The answer is 41 (quick mode).\n")
    assert build.stale_chapters(tree, ["alpha"], "cpu", False) == ["alpha"]
    assert statuses(build.build_chapters(tree, device="cpu", log=lambda *_: None)) == {"alpha": "ran"}
    assert (tree.generated / "alpha" / "answer.md").read_text() == "The answer is 42.\n"


def test_an_extra_or_missing_output_file_makes_the_chapter_stale(tree):
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    (tree.generated / "alpha" / "stray.svg").write_text("<svg/>")
    assert build.stale_chapters(tree, ["alpha"], "cpu", False) == ["alpha"]
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    (tree.generated / "alpha" / "answer.md").unlink()
    assert build.stale_chapters(tree, ["alpha"], "cpu", False) == ["alpha"]


# -- failures: the script's own line, no rebuild loop under `mkdocs serve` ------------------------
def test_a_failure_names_the_script_line_in_plain_text(tree):
    (tree.chapters / "alpha.py").write_text(BAD.format(slug="alpha"))
    [result] = build.build_chapters(tree, device="cpu", log=lambda *_: None)
    assert result.status == "failed"
    raise_line = BAD.format(slug="alpha").splitlines().index('raise RuntimeError("this chapter is broken on purpose")') + 1
    assert f"alpha.py, line {raise_line}" in result.tail, result.tail
    assert "\x1b[" not in result.tail and "Cell In[" not in result.tail


def test_a_failed_build_writes_nothing_into_the_watched_folder(tree):
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    (tree.chapters / "alpha.py").write_text(BAD.format(slug="alpha"))
    before = {p: p.stat().st_mtime_ns for p in tree.generated.rglob("*")}
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    after = {p: p.stat().st_mtime_ns for p in tree.generated.rglob("*")}
    assert after == before, "a failure touched docs/generated/, which `mkdocs serve` watches"


def test_serve_reports_a_failing_chapter_once_and_keeps_serving(tree, monkeypatch):
    import mkdocs_hooks

    counter = tree.root / "runs.txt"
    failing = textwrap.dedent(f'''
        # %%
        from pathlib import Path
        with open({str(counter)!r}, "a") as f:
            f.write("run\\n")
        raise RuntimeError("broken on purpose")
    ''')
    (tree.chapters / "alpha.py").write_text(failing)
    monkeypatch.setattr(mkdocs_hooks, "_layout", lambda: tree)
    monkeypatch.setenv("ATTNBOOK_DEVICE", "cpu")
    monkeypatch.delenv("ATTNBOOK_CHAPTERS_FRESH", raising=False)
    mkdocs_hooks.on_startup(command="serve")
    try:
        mkdocs_hooks.on_pre_build(config={})  # reports, does not raise: the site is served
        mkdocs_hooks.on_pre_build(config={})  # same inputs: not run again
        assert counter.read_text().count("run") == 1
        (tree.chapters / "alpha.py").write_text(failing + "\n# edited\n")
        mkdocs_hooks.on_pre_build(config={})  # an edit: tried again
        assert counter.read_text().count("run") == 2
        mkdocs_hooks.on_startup(command="build")
        with pytest.raises(Exception, match="chapter failed"):
            mkdocs_hooks.on_pre_build(config={})  # a plain build still fails
    finally:
        mkdocs_hooks.on_startup(command=None)
        mkdocs_hooks._state["failed"].clear()


def test_serve_watches_the_code_folder():
    import mkdocs_hooks

    watched = []

    class Server:
        def watch(self, path):
            watched.append(path)

    mkdocs_hooks.on_serve(Server(), config={}, builder=None)
    assert str(build.REPO / "code") in watched


# -- the notebook readers download ------------------------------------------------------------
FIGURE = textwrap.dedent('''
    # %%
    from attnbook.chapter import Chapter
    ch = Chapter("{slug}")

    # %%
    import matplotlib.pyplot as plt
    # --8<-- [start:draw]
    def draw(theme):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        return fig
    # --8<-- [end:draw]
    ch.figure("line", draw)
''')


def test_the_saved_notebook_is_clean_for_readers(tree):
    (tree.chapters / "alpha.py").write_text(FIGURE.format(slug="alpha"))
    build.build_chapters(tree, device="cpu", log=lambda *_: None)
    notebook = json.loads((tree.generated / "alpha" / "alpha.ipynb").read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "pip" in "".join(code[0]["source"]) and "attnbook-*.whl" in "".join(code[0]["source"])
    text = json.dumps(notebook)
    assert "--8<--" not in text, "snippet markers leaked into the notebook"
    assert "PosixPath" not in text and str(tree.work) not in text, "the builder's paths leaked"
    images = [o for c in code for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert images and 'alt="' in "".join(images[0]["data"]["text/html"])


def test_chapter_scripts_reject_unknown_options(tmp_path):
    import subprocess
    import sys

    script = build.REPO / "code" / "chapters" / f"{build.Layout().slugs()[0]}.py"
    proc = subprocess.run([sys.executable, str(script), "--devcie", "cpu", "--quikc", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "unrecognized arguments: --devcie" in proc.stderr
    assert not list(tmp_path.iterdir()), "nothing ran"


NEEDY = textwrap.dedent('''
    # %%
    from attnbook.chapter import Chapter
    ch = Chapter("{slug}")
    answer = ch.needs("{needs}", "answer.md").read_text().split()[-1].rstrip(".")
    ch.markdown("answer", f"Twice the answer is {{2 * int(answer)}}.")
''')


def test_a_chapter_runs_after_the_chapter_it_needs_and_with_its_outputs(tree):
    (tree.chapters / "alpha.py").write_text(NEEDY.format(slug="alpha", needs="zeta"))
    (tree.chapters / "zeta.py").write_text(GOOD.format(slug="zeta", answer=21))
    assert build.chapter_needs(tree, "alpha") == ["zeta"]
    # alpha sorts first and has no recorded time, yet zeta must run first
    results = build.build_chapters(tree, device="cpu", jobs=2, log=lambda *_: None)
    assert statuses(results) == {"alpha": "ran", "zeta": "ran"}
    assert (tree.generated / "alpha" / "answer.md").read_text() == "Twice the answer is 42.\n"
    # asking for alpha alone after zeta changed rebuilds zeta too, then alpha
    (tree.chapters / "zeta.py").write_text(GOOD.format(slug="zeta", answer=5))
    results = build.build_chapters(tree, ["alpha"], device="cpu", log=lambda *_: None)
    assert statuses(results) == {"alpha": "ran", "zeta": "ran"}
    assert (tree.generated / "alpha" / "answer.md").read_text() == "Twice the answer is 10.\n"


def test_a_chapter_whose_dependency_fails_is_not_run(tree):
    (tree.chapters / "alpha.py").write_text(NEEDY.format(slug="alpha", needs="zeta"))
    (tree.chapters / "zeta.py").write_text(BAD.format(slug="zeta"))
    results = build.build_chapters(tree, device="cpu", jobs=2, log=lambda *_: None)
    assert statuses(results) == {"alpha": "failed", "zeta": "failed"}
    assert "zeta" in next(r.tail for r in results if r.slug == "alpha")


def test_needs_in_a_circle_or_on_a_missing_chapter_are_named(tree):
    (tree.chapters / "alpha.py").write_text(NEEDY.format(slug="alpha", needs="zeta"))
    (tree.chapters / "zeta.py").write_text(NEEDY.format(slug="zeta", needs="alpha"))
    with pytest.raises(SystemExit, match="circle: alpha -> zeta -> alpha"):
        build.build_chapters(tree, device="cpu", log=lambda *_: None)
    (tree.chapters / "zeta.py").write_text(NEEDY.format(slug="zeta", needs="omega"))
    with pytest.raises(SystemExit, match="'zeta' needs chapter.*omega"):
        build.build_chapters(tree, device="cpu", log=lambda *_: None)


def test_a_missing_dependency_output_tells_the_reader_what_to_run(tmp_path, monkeypatch):
    from attnbook.chapter import Chapter

    monkeypatch.delenv("ATTNBOOK_BUILD", raising=False)
    monkeypatch.setenv("ATTNBOOK_GENERATED", str(tmp_path))
    ch = Chapter("inference", ["--out", str(tmp_path / "inference"), "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match=r"'model.pt' written by chapter 'gpt'.*run python code/chapters/gpt.py first"):
        ch.needs("gpt", "model.pt")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "model.pt").write_bytes(b"x")
    assert ch.needs("gpt", "model.pt") == tmp_path / "gpt" / "model.pt"
