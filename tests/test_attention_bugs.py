"""Every bug in attnbook.bugs fails its check in attnbook.check, and the library passes
every check: the appendix "Attention bugs" is a list of failing tests, kept failing."""
import subprocess
import sys

import pytest

from attnbook.bugs import BUGS
from attnbook.check import EXERCISES, main, run_exercise


@pytest.mark.parametrize("bug", BUGS, ids=[b.slug for b in BUGS])
def test_the_wrong_code_fails_the_check_that_names_it(bug):
    result = run_exercise(bug.exercise, bug.wrong)
    assert not result.passed
    assert bug.failing in result.failed(), result.report()


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_library_passes_every_check(name):
    result = run_exercise(name, EXERCISES[name].library)
    assert result.passed, result.report()


def test_every_exercise_catches_at_least_one_bug_or_is_checked_elsewhere():
    caught = {b.exercise for b in BUGS}
    assert caught == set(EXERCISES), f"exercises without a bug that shows they can fail: {set(EXERCISES) - caught}"


def test_a_crashing_candidate_is_reported_with_its_line():
    def broken(q, k, v, mask=None):
        return q @ k  # wrong shapes for a matmul
    result = run_exercise("sdpa", broken)
    assert not result.passed
    assert "raised RuntimeError" in result.report() and "line" in result.report()


def test_the_command_line_checks_a_readers_file(tmp_path, capsys):
    good = tmp_path / "mine.py"
    good.write_text("from attnbook.attention import repeat_kv\n")
    assert main(["repeat-kv", str(good)]) == 0
    assert "1 of 1 checks passed" in capsys.readouterr().out
    bad = tmp_path / "bad.py"
    bad.write_text("def tiles(x, num_heads):\n    return x.repeat(1, num_heads // x.shape[1], 1, 1)\n")
    assert main(["repeat-kv", f"{bad}:tiles"]) == 1
    assert "FAIL" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="defines no function 'repeat_kv'"):
        main(["repeat-kv", str(bad)])


def test_unknown_exercises_are_named():
    with pytest.raises(ValueError, match="exercise must be one of"):
        run_exercise("nope", print)
    proc = subprocess.run([sys.executable, "-m", "attnbook.check", "nope", "x.py"], capture_output=True, text=True)
    assert proc.returncode == 2 and "exercise must be one of" in proc.stderr


def test_the_list_names_every_exercise(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXERCISES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_each_exercise_is_offered_on_its_chapter_page(name, repo):
    exercise = EXERCISES[name]
    page = (repo / "docs" / exercise.page).read_text(encoding="utf-8")
    assert f"python -m attnbook.check {name} " in page, f"docs/{exercise.page} does not offer exercise {name!r}"
    number = exercise.chapter.split(".")[0]
    assert page.startswith(f"# {number}. "), f"exercise {name!r} names chapter {number}, but docs/{exercise.page} is not it"


def test_every_bug_has_its_section_in_appendix_a(repo):
    page = (repo / "docs" / "appendix" / "attention-bugs.md").read_text(encoding="utf-8")
    for bug in BUGS:
        assert f'code/attnbook/bugs.py:{bug.slug}"' in page, f"Appendix A does not show the code of {bug.slug}"
        assert f"check-{bug.slug}.md" in page, f"Appendix A does not show the checker's output for {bug.slug}"


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_float32_answer_passes_when_the_formula_is_right(name):
    """The library's function, its inputs and outputs cast to float32, passes every check."""
    import torch

    library = EXERCISES[name].library

    def in_float32(*args):
        def to32(a):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return a.float()
            return [to32(x) for x in a] if isinstance(a, list) else a
        cast = [to32(a) for a in args]
        return library(*cast)
    result = run_exercise(name, in_float32)
    assert result.passed, result.report()


def test_a_crash_in_the_readers_code_names_its_line_and_gives_no_hint():
    def broken(q, k, v, mask=None):
        return undefined_name  # noqa: F821
    report = run_exercise("sdpa", broken).report()
    assert "raised NameError" in report and "hint:" not in report


def test_every_chapter_has_an_exercise_a_reader_can_check():
    from helpers import chapter_numbers

    numbered = set(chapter_numbers())
    covered = {int(e.chapter.split(".")[0]) for e in EXERCISES.values()}
    assert numbered and numbered <= covered, f"chapters without a checkable exercise: {sorted(numbered - covered)}"
