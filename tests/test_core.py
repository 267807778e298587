"""The library's shared pieces: device choice, the plotting style, the chapter helper."""
from __future__ import annotations

import hashlib

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from attnbook.chapter import Chapter, choose_size
from attnbook.device import resolve_device
from attnbook.viz import THEMES, animate_heatmaps, head_grid, heatmap, save_themed, token_links


def test_auto_device_is_cpu_or_cuda():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")


def test_cuda_without_cuda_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--device cpu"):
        resolve_device("cuda")


def _draw(theme):
    weights = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    heatmap(axes[0], weights, ["a", "b", "c"], ["a", "b", "c"], theme=theme, title="weights")
    token_links(axes[1], weights, ["a", "b", "c"], theme=theme)
    return fig


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_figures_are_saved_in_both_themes_and_byte_identical_when_redrawn(tmp_path, fmt):
    first = save_themed(_draw, tmp_path / "one", "fig", fmt)
    second = save_themed(_draw, tmp_path / "two", "fig", fmt)
    assert [p.name for p in first] == [f"fig-{t}.{fmt}" for t in THEMES]
    for a, b in zip(first, second):
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert first[0].read_bytes() != first[1].read_bytes(), "light and dark variants must differ"


def test_gif_animation_is_byte_identical_when_redrawn(tmp_path):
    frames = [np.eye(4) * (i + 1) / 4 for i in range(4)]
    a = animate_heatmaps(frames, tmp_path / "a.gif", titles=[f"step {i}" for i in range(4)])
    b = animate_heatmaps(frames, tmp_path / "b.gif", titles=[f"step {i}" for i in range(4)])
    assert a.read_bytes() == b.read_bytes()


def test_heatmap_rejects_labels_of_the_wrong_length():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="got 2 labels for an axis of length 3"):
        heatmap(ax, np.eye(3), ["a", "b"])
    plt.close(fig)


def test_head_grid_accepts_layers_by_heads():
    fig = head_grid(np.random.default_rng(0).dirichlet(np.ones(5), size=(2, 3, 5)))
    assert len(fig.axes) == 6
    plt.close(fig)


def test_chapter_reads_its_options_from_the_command_line(tmp_path):
    ch = Chapter("demo", ["--device", "cpu", "--quick", "--out", str(tmp_path)])
    assert ch.device.type == "cpu" and ch.quick and ch.out == tmp_path
    assert ch.pick(100, 10) == 10


@pytest.mark.parametrize("size, device, quick, chosen", [
    ("auto", "cpu", False, "full"), ("auto", "cuda", False, "large"), ("auto", "cuda", True, "quick"),
    ("quick", "cuda", False, "quick"), ("full", "cuda", False, "full"), ("large", "cpu", False, "large"),
])
def test_the_size_is_large_on_a_gpu_unless_asked_otherwise(size, device, quick, chosen):
    assert choose_size(size, device, quick) == chosen


def test_a_size_that_contradicts_quick_or_is_unknown_is_refused():
    with pytest.raises(ValueError, match="--quick and --size large contradict"):
        choose_size("large", "cpu", quick=True)
    with pytest.raises(ValueError, match=r"size must be one of .*got 'huge'"):
        choose_size("huge", "cpu")


def test_pick_takes_the_large_value_only_at_the_large_size(tmp_path):
    large = Chapter("demo", ["--device", "cpu", "--size", "large", "--out", str(tmp_path)])
    full = Chapter("demo", ["--device", "cpu", "--out", str(tmp_path)])
    assert large.large and not large.quick and not full.large
    assert large.pick(100, 10, large=1000) == 1000 and large.pick(100, 10) == 100
    assert full.pick(100, 10, large=1000) == 100


def test_a_bad_size_on_the_command_line_names_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        Chapter("demo", ["--device", "cpu", "--quick", "--size", "large", "--out", str(tmp_path)])
    assert "--quick and --size large" in capsys.readouterr().err


def test_chapter_reads_its_options_from_the_build_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNBOOK_OUT", str(tmp_path / "built"))
    monkeypatch.setenv("ATTNBOOK_QUICK", "1")
    ch = Chapter("demo", [])
    assert ch.out == tmp_path / "built" and ch.quick


def test_chapter_tables_are_markdown(tmp_path):
    ch = Chapter("demo", ["--out", str(tmp_path)])
    path = ch.table("t", ["n", "ratio"], [[128, "1.20×"], [256, "1.31×"]])
    assert path.read_text() == "| n | ratio |\n| :-- | --: |\n| 128 | 1.20× |\n| 256 | 1.31× |\n"


# -- figures are drawn for the column -----------------------------------------------------------
def test_a_figure_wider_than_the_column_is_refused(tmp_path):
    from attnbook.viz import COLUMN_INCHES, save_figure

    fig, axes = plt.subplots(1, 5, figsize=(COLUMN_INCHES + 3, 2))
    with pytest.raises(ValueError, match="wider than the text column"):
        save_figure(fig, tmp_path / "wide.svg")
    assert not (tmp_path / "wide.svg").exists(), "a refused figure leaves no file behind"


def test_text_below_the_floor_is_refused(tmp_path):
    from attnbook.viz import MIN_FONT_PT, save_figure

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["tiny", "labels"], fontsize=MIN_FONT_PT - 3)
    with pytest.raises(ValueError, match="smaller than"):
        save_figure(fig, tmp_path / "tiny.svg")


def test_a_head_grid_of_many_heads_fits_the_column(tmp_path):
    from attnbook.viz import COLUMN_INCHES, save_figure

    weights = torch.softmax(torch.randn(2, 12, 6, 6, generator=torch.Generator().manual_seed(0)), -1)
    fig = head_grid(weights)
    assert fig.get_size_inches()[0] <= COLUMN_INCHES + 1e-9
    save_figure(fig, tmp_path / "grid.png")  # passes the legibility check


def test_length_panels_label_the_bins_and_shade_unseen_lengths():
    from attnbook.viz import length_panels

    fig, axes = plt.subplots(1, 2)
    length_panels(axes, [(3, 10), (11, 20), (21, 30)], 15)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["3–10", "11–20", "21–30"]
    assert axes[1].get_title() == "exact match (%)" and axes[0].get_ylim() == (0, 100)
    [shade] = axes[0].patches
    assert shade.get_x() == 15.5 and shade.get_x() + shade.get_width() == 30
    plt.close(fig)


def test_in_background_forks_only_with_a_spare_core(monkeypatch, tmp_path):
    import os

    from attnbook.chapter import Chapter

    ch = Chapter("demo", ["--device", "cpu", "--out", str(tmp_path)])
    monkeypatch.setenv("ATTNBOOK_CORES", "1")              # the build's share with 2 jobs on 2 cores
    assert not ch.spare_core()
    assert ch.in_background(os.getpid)() == os.getpid()    # ran here, at once
    monkeypatch.setenv("ATTNBOOK_CORES", "2")
    assert ch.spare_core()
    wait = ch.in_background(lambda: (os.getpid(), [1.5, 2.5]))
    child_pid, data = wait()
    assert child_pid != os.getpid() and data == [1.5, 2.5]

    def broken():
        raise ValueError("on purpose")
    with pytest.raises(RuntimeError, match="background work of chapter 'demo' failed"):
        ch.in_background(broken)()


def test_a_chapter_script_cannot_import_another_chapter_by_accident():
    """Chapter 13's script is kernels.py, and transformers probes for an optional package
    named `kernels`: with the chapters folder on sys.path (as Python puts it for a script),
    the probe would find, import and run chapter 13 inside another chapter."""
    import subprocess
    import sys

    from attnbook.chapter import CHAPTERS

    probe = ("import sys; names = sys.argv[2:]; sys.argv = [sys.argv[1]]; "
             "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0]); sys.path.insert(0, ''); "  # script, notebook
             "import attnbook.chapter, importlib.util; print([importlib.util.find_spec(n) for n in names])")
    names = sorted(p.stem for p in CHAPTERS.glob("*.py") if p.stem.isidentifier())   # importable names
    assert names, "every chapter name has a hyphen: nothing to check"
    out = subprocess.run([sys.executable, "-c", probe, str(CHAPTERS / "low-rank.py"), *names],
                         capture_output=True, text=True, check=True, cwd=CHAPTERS)   # as the build runs them
    assert out.stdout.strip() == str([None] * len(names)), out.stdout


def test_search_snippets_turn_tex_into_plain_text_without_backslashes():
    """Escaped braces, spaced commands and unknown macros leave no `\\(`-like residue behind."""
    from mkdocs_hooks import clean_text, plain_math

    assert plain_math(r"k = \min\{\Theta(9d\log(d)/\epsilon^2),\ 5\Theta(\log n)\}") == \
        "k = minΘ(9dlog(d)/ε^2), 5Θ(log n)"
    text = clean_text(r"If \(k = \min\{a\}\) and \(a \\ b \mathcal{Q}\), then \[x\] holds.¶")
    assert "\\" not in text and "¶" not in text


def test_paper_records_a_comparison_and_refuses_bad_input(tmp_path):
    import json

    from attnbook.chapter import PAPERS, Chapter

    ch = Chapter("alpha", ["--out", str(tmp_path)])
    assert json.loads((tmp_path / PAPERS).read_text()) == []   # every chapter has the file
    ch.paper("vaswani2017", "the base model's BLEU on EN-DE", theirs="27.3 (Table 2)", ours="31.0 on our task",
             section="the-paper-reproduced")
    assert json.loads((tmp_path / PAPERS).read_text())[0]["theirs"] == "27.3 (Table 2)"
    assert ch.written.count(PAPERS) == 1
    with pytest.raises(ValueError, match="bibliography key"):
        ch.paper("Vaswani et al.", "x", theirs="1", ours="2", section="s")
    with pytest.raises(ValueError, match="ours must be a non-empty string"):
        ch.paper("vaswani2017", "x", theirs="1", ours="", section="s")
    with pytest.raises(ValueError, match="heading anchor"):
        ch.paper("vaswani2017", "x", theirs="1", ours="2", section="#the-paper")
