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
# # Appendix A. Attention bugs
#
# This notebook runs the book's checker, `python -m attnbook.check`, on every bug in
# `attnbook.bugs` (wrong code kept on purpose) and on the library's own functions, and
# writes what the checker prints into the appendix. It takes a few seconds:
#
# ```
# python code/chapters/attention-bugs.py
# ```

# %%
from attnbook.chapter import Chapter

ch = Chapter("attention-bugs")

# %%
import matplotlib.pyplot as plt
import torch

from attnbook.attention import causal_mask
from attnbook.bugs import BUGS, causal_mask_sliced, merge_heads_without_transpose
from attnbook.check import EXERCISES, run_exercise
from attnbook.viz import colors, heatmap

# %% [markdown]
# ## Two bugs in pictures
#
# Left and middle: which keys four new queries may see after six cached tokens, with the
# library's bottom-right mask and with the top-left one that `is_causal=True` and a sliced
# precomputed mask give. Right: after the merge without a transpose, which token's output
# fills each head's slot of each row (3 heads, 6 tokens); a correct merge puts token t in
# every slot of row t.

# %%
NEW, TOTAL, HEADS, TOKENS = 4, 10, 3, 6
slots = torch.arange(TOKENS, dtype=torch.float64)[None, :, None].expand(1, TOKENS, HEADS)  # token id
source = merge_heads_without_transpose(slots.transpose(1, 2)[..., None].expand(1, HEADS, TOKENS, 1).contiguous())
source = source[0].reshape(TOKENS, HEADS)  # (row, head) -> the token whose output landed there


def draw_masks(theme):
    fig, axes = plt.subplots(1, 3, figsize=(6.8, 2.9), width_ratios=[1.25, 1.25, 0.8])
    keys = [str(j) for j in range(TOTAL)]
    rows = [str(TOTAL - NEW + i) for i in range(NEW)]
    for ax, mask, title in ((axes[0], causal_mask(NEW, TOTAL), "library: bottom-right"),
                            (axes[1], causal_mask_sliced(NEW, TOTAL), "is_causal: top-left")):
        heatmap(ax, mask.float(), keys, rows, theme=theme, title=title, xlabel="key position",
                ylabel="new query at position")
    wrong = (source != torch.arange(TOKENS)[:, None]).float()
    heatmap(axes[2], wrong, [str(h) for h in range(HEADS)], [str(t) for t in range(TOKENS)], theme=theme,
            title="merged rows (bug)", xlabel="head", ylabel="row (token)")
    for (t, h), value in zip(torch.cartesian_prod(torch.arange(TOKENS), torch.arange(HEADS)).tolist(),
                             source.flatten().tolist()):
        axes[2].text(h, t, str(int(value)), ha="center", va="center", fontsize=9,
                     color=colors(theme)["bg"] if wrong[t, h] else colors(theme)["fg"])
    fig.tight_layout()
    return fig


ch.figure("cache-masks", draw_masks)

# %% [markdown]
# ## Every bug fails the check that names it
#
# `run_exercise` runs each check of an exercise on a function and records the failures;
# `report` prints them the way the command line does.

# %%
for bug in BUGS:
    result = run_exercise(bug.exercise, bug.wrong)
    assert bug.failing in result.failed(), f"{bug.slug}: the check {bug.failing!r} did not fail"
    report = result.report(f"my_code.py:{bug.wrong.__name__}")
    print(report, end="\n\n")
    ch.markdown(f"check-{bug.slug}", f"```text\n$ python -m attnbook.check {bug.exercise} "
                f"my_code.py:{bug.wrong.__name__}\n{report}\n```\n")

# %% [markdown]
# ## The library passes every check

# %%
rows = []
for name, exercise in EXERCISES.items():
    result = run_exercise(name, exercise.library)
    assert result.passed, result.report()
    caught = [b.title for b in BUGS if b.exercise == name]
    rows.append([f"`{name}`", f"[{exercise.chapter}](../{exercise.page})", f"`{exercise.signature.split(' -> ')[0]}`",
                 f"{len(exercise.checks)}", "; ".join(caught)])
ch.table("exercises", ["Exercise", "Chapter", "Your function", "Checks", "Bugs it catches"], rows, align="lllrl")
print(f"The library passes all {sum(len(e.checks) for e in EXERCISES.values())} checks "
      f"of {len(EXERCISES)} exercises; {len(BUGS)} bugs each fail theirs.")
