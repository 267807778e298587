"""What every chapter script shares: its options, its output folder and its writers.

A chapter script is run two ways: by a reader (``python code/chapters/<slug>.py
--device cuda``) and by ``scripts/build.py``, which executes it as a notebook and passes
the same options through environment variables (``ATTNBOOK_DEVICE``, ``ATTNBOOK_QUICK``,
``ATTNBOOK_SIZE``, ``ATTNBOOK_OUT``). Everything the chapter page shows is written through ``Chapter``:
figures (light and dark), Markdown tables and sentences that the page includes, JSON.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import random
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .device import CHOICES, describe, resolve_device
from .viz import save_themed

REPO = Path(__file__).resolve().parents[2]
# Inside a clone of the book the package lives in code/attnbook; installed from the wheel
# that the site publishes, it lives in site-packages and there is no book around it.
IN_CLONE = (REPO / "mkdocs.yml").is_file() and (REPO / "code" / "chapters").is_dir()
CHAPTERS = REPO / "code" / "chapters"

# Python puts a script's own folder first on sys.path, and the build runs each chapter as a
# notebook whose working folder (the "" entry) is that folder too. It holds the other
# chapters, and one named like a package (kernels.py: the optional `kernels` package that
# transformers looks for) would be imported, and run, in that package's place. Chapters
# never import each other, so importing this module takes that folder off sys.path.
if IN_CLONE:
    sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != CHAPTERS.resolve()]


MEASURED_FIGURES = "measured-figures.txt"  # figures drawn from timings (see Chapter.figure)
PAPERS = "papers.json"  # published numbers beside the book's (see Chapter.paper)
_CITE_KEY = re.compile(r"^[a-z]+[0-9]{4}[a-z0-9]*$")
SIZES = ("auto", "quick", "full", "large")


def choose_size(size: str, device_type: str, quick: bool = False) -> str:
    """The size a chapter runs at: ``quick``, ``full`` or ``large``.

    ``auto`` (the default) is ``large`` on a GPU and ``full`` anywhere else; ``--quick`` is
    ``--size quick``. ``--size large`` runs the GPU sizes on any device (slowly on a CPU),
    and ``--size full`` the CPU sizes on a GPU.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if quick:
        if size not in ("auto", "quick"):
            raise ValueError(f"--quick and --size {size} contradict each other: give one of them")
        return "quick"
    if size == "auto":
        return "large" if device_type == "cuda" else "full"
    return size


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def default_out(slug: str) -> Path:
    """Where a chapter writes when neither ``--out`` nor the build says otherwise.

    In a clone: ``docs/generated/<slug>/`` (the build notices outputs it did not write
    and runs the chapter again before it publishes anything). Anywhere else, e.g. a
    downloaded notebook: ``<slug>-outputs/`` next to the notebook (the current folder).
    """
    if IN_CLONE:
        return REPO / "docs" / "generated" / slug
    return Path.cwd() / f"{slug}-outputs"


def figure_alt_text(slug: str, name: str) -> str:
    """The alt text the chapter's page gives figure ``name`` (a generic one outside a clone)."""
    if IN_CLONE:
        link = re.compile(r"!\[([^\]]+)\]\([^)]*generated/" + re.escape(slug) + "/"
                          + re.escape(name) + r"-light\.")
        for page in sorted((REPO / "docs").rglob(f"{slug}.md")):
            found = link.search(page.read_text(encoding="utf-8"))
            if found:
                return " ".join(found.group(1).split())
    return f"Figure '{name}' of the chapter '{slug}'"


def _show_image(path: Path, alt: str) -> None:
    """Show a saved figure in the notebook as an <img> with alt text (plain text for other front ends)."""
    import base64
    import html

    from IPython.display import display

    mime = {".svg": "image/svg+xml", ".png": "image/png", ".gif": "image/gif"}[path.suffix.lower()]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    tag = (f'<img src="data:{mime};base64,{data}" alt="{html.escape(alt)}" '
           f'style="max-width:100%;height:auto">')
    display({"text/html": tag, "text/plain": f"[figure: {alt}]"}, raw=True)


class Chapter:
    """Options and output writers of one chapter script.

    ``Chapter("multi-head")`` reads ``--device {auto,cpu,cuda}``, ``--size
    {auto,quick,full,large}`` (``--quick`` for short) and ``--out`` from the command line (or the ``ATTNBOOK_*`` variables set by the build) and creates
    the output folder, ``docs/generated/<slug>/`` by default.
    """

    def __init__(self, slug: str, argv: Sequence[str] | None = None):
        parser = argparse.ArgumentParser(description=f"Chapter '{slug}' of The Attention Book")
        parser.add_argument("--device", choices=CHOICES, default=os.environ.get("ATTNBOOK_DEVICE", "auto"))
        parser.add_argument("--quick", action="store_true",
                            default=os.environ.get("ATTNBOOK_QUICK", "") not in ("", "0"),
                            help="smaller sizes, for tests: same outputs, less work (= --size quick)")
        parser.add_argument("--size", default=os.environ.get("ATTNBOOK_SIZE") or "auto", choices=SIZES,
                            help="auto: large on a GPU, full otherwise; large runs the GPU sizes on any device")
        parser.add_argument("--out", default=os.environ.get("ATTNBOOK_OUT"),
                            help="output folder (default: docs/generated/<slug>)")
        in_notebook = argv is None and _in_notebook()
        # a notebook kernel has its own command line: ignore it; a script rejects unknown options
        args = parser.parse_args([] if in_notebook else argv)
        self.slug = slug
        try:
            self.device = resolve_device(args.device)
        except RuntimeError as exc:  # CUDA asked for and absent: the message, not a traceback
            if in_notebook:
                raise
            parser.exit(2, f"error: {exc}\n")
        try:
            self.size = choose_size(args.size, self.device.type, bool(args.quick))
        except ValueError as exc:
            if in_notebook:
                raise
            parser.exit(2, f"error: {exc}\n")
        self.quick = self.size == "quick"
        self.large = self.size == "large"
        by_build = os.environ.get("ATTNBOOK_BUILD") == "1"
        self._out_given = bool(args.out) and not by_build   # a reader's own --out, not the build's folder
        self.out = Path(args.out) if args.out else default_out(slug)
        self.out.mkdir(parents=True, exist_ok=True)
        self.written: list[str] = []
        self._papers: list[dict] = []
        self._write_papers()  # every chapter has the file, so the papers index can rely on it
        # the build writes into a temporary folder that then replaces docs/generated/<slug>
        shown = f"docs/generated/{slug}" if by_build else self.out
        print(f"[{slug}] device: {describe(self.device)}; size: {self.size}; out: {shown}")
        if not by_build and IN_CLONE and self.out.resolve() == default_out(slug).resolve():
            print(f"[{slug}] note: this run writes into the book's docs/generated/{slug}/; the site does not "
                  "publish outputs the build did not write: `python scripts/build.py` runs the chapter again.")

    # -- randomness ---------------------------------------------------------------------
    @staticmethod
    def seed(value: int) -> torch.Generator:
        """Seed Python, NumPy and torch; return a torch generator seeded with ``value``."""
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)
        return torch.Generator().manual_seed(value)

    def one_thread_on_cpu(self) -> None:
        """Run torch on one CPU thread, for chapters whose models are small.

        Splitting tiny matrix products across threads costs more than it saves, and threads
        that wait on each other stall when other programs share the cores. No effect on a GPU.
        """
        if self.device.type == "cpu":
            torch.set_num_threads(1)

    def needs(self, chapter: str, filename: str) -> Path:
        """The path of ``filename`` written by another chapter (e.g. chapter 8's trained model).

        Looked for, when this chapter was given ``--out``, in the folder beside it first
        (``--out runs/inference`` finds ``runs/gpt/``), then in that chapter's default output
        folder (``docs/generated/<chapter>/`` in a clone, ``<chapter>-outputs/`` next to a
        downloaded notebook). The build runs ``chapter`` first: it finds
        the ``ch.needs("<chapter>", ...)`` calls in the script.
        """
        built = os.environ.get("ATTNBOOK_GENERATED")  # set by the build: where it keeps outputs
        candidates = [Path(built) / chapter / filename] if built else [default_out(chapter) / filename]
        if self._out_given and self.out.parent / chapter / filename not in candidates:
            candidates.insert(0, self.out.parent / chapter / filename)   # a run of one's own first
        for path in candidates:
            if path.is_file():
                return path
        where = IN_CLONE and f"python code/chapters/{chapter}.py" or f"the notebook {chapter}.ipynb in this folder"
        raise FileNotFoundError(
            f"chapter '{self.slug}' uses {filename!r} written by chapter '{chapter}', and it is not there yet: "
            f"run {where} first (looked in: {', '.join(str(p) for p in candidates)})")

    def spare_core(self) -> bool:
        """Whether a second process may run beside this one: on a CPU, with at least two cores
        for this chapter (the build sets ``ATTNBOOK_CORES`` to each parallel job's share)."""
        cores = int(os.environ.get("ATTNBOOK_CORES") or os.cpu_count() or 1)
        return self.device.type == "cpu" and cores >= 2 and "fork" in multiprocessing.get_all_start_methods()

    def in_background(self, work: Callable[[], object]) -> Callable[[], object]:
        """Start ``work()`` and return a function that waits for its result.

        With a spare core (``spare_core``) ``work`` runs in a forked process while this one
        goes on; its result travels back pickled, so return plain data (numbers, lists,
        NumPy arrays: a model as ``{name: tensor.numpy()}``). Otherwise it runs here, at once.
        The result is the same either way when ``work`` seeds its own randomness.
        """
        if not self.spare_core():
            result = work()
            return lambda: result
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)

        def child():
            send.send(work())
            send.close()

        process = context.Process(target=child)
        process.start()
        send.close()

        def wait():
            try:
                result = receive.recv()
            except EOFError:
                raise RuntimeError(f"the background work of chapter '{self.slug}' failed "
                                   f"(exit code {process.exitcode}); its error is printed above") from None
            process.join()
            return result
        return wait

    def pick(self, full, quick, large=None):
        """``quick`` in quick mode (tests), ``large`` at the large size (a GPU's default) when
        given, ``full`` otherwise."""
        if self.quick:
            return quick
        if self.large and large is not None:
            return large
        return full

    # -- writers ------------------------------------------------------------------------
    def _record(self, path: Path) -> Path:
        self.written.append(path.name)
        return path

    # --8<-- [start:figure]
    def figure(self, name: str, draw: Callable[[str], object], fmt: str = "svg", *,
               measured: bool = False) -> list[Path]:
        """Save ``draw(theme)`` as ``<name>-light.<fmt>`` and ``<name>-dark.<fmt>``.

        ``measured=True`` marks a figure drawn from timings, which differ from run to run: it
        is listed in ``measured-figures.txt`` and exempt from the byte-identical-rerun test."""
        paths = [self._record(p) for p in save_themed(draw, self.out, name, fmt)]
        if measured:
            listing = self.out / MEASURED_FIGURES
            names = set(listing.read_text(encoding="utf-8").split()) if listing.exists() else set()
            listing.write_text("".join(f"{n}\n" for n in sorted(names | {p.name for p in paths})),
                               encoding="utf-8")
            self._record(listing)
        if _in_notebook():
            _show_image(paths[0], figure_alt_text(self.slug, name))
        return paths
    # --8<-- [end:figure]

    def markdown(self, name: str, text: str) -> Path:
        """Write ``<name>.md`` for the page to include with ``--8<--``."""
        path = self.out / f"{name}.md"
        path.write_text(text.rstrip() + "\n", encoding="utf-8")
        if _in_notebook():
            from IPython.display import Markdown, display
            display(Markdown(text))
        return self._record(path)

    def table(self, name: str, headers: Sequence[str], rows: Sequence[Sequence[object]],
              align: str | None = None) -> Path:
        """Write a Markdown table; ``align`` is one of l/c/r per column (default: l then r)."""
        align = align or ("l" + "r" * (len(headers) - 1))
        marks = {"l": ":--", "c": ":-:", "r": "--:"}
        lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        return self.markdown(name, "\n".join(lines))

    def json(self, name: str, data) -> Path:
        path = self.out / f"{name}.json"
        path.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True), encoding="utf-8")
        return self._record(path)

    def paper(self, key: str, claim: str, *, theirs: str, ours: str, section: str) -> None:
        """Record a published number beside the book's, for the "Papers explained" index.

        ``key`` is the bibliography key (``vaswani2017``); ``claim`` says what the paper
        reports; ``theirs`` quotes it with its table or figure (``"27.3 BLEU (Table 2)"``);
        ``ours`` is this run's number, formatted by the script; ``section`` is the heading
        anchor on the chapter page where the comparison is shown (``"the-paper-reproduced"``).
        """
        if not _CITE_KEY.match(key):
            raise ValueError(f"key must be a bibliography key like 'vaswani2017', got {key!r}")
        for name, value in (("claim", claim), ("theirs", theirs), ("ours", ours), ("section", section)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if "#" in section or " " in section:
            raise ValueError(f"section must be a heading anchor such as 'the-paper-reproduced', got {section!r}")
        self._papers.append({"key": key, "claim": claim.strip(), "theirs": theirs.strip(),
                             "ours": ours.strip(), "section": section})
        self._write_papers()

    def _write_papers(self) -> None:
        path = self.out / PAPERS
        path.write_text(json.dumps(self._papers, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if PAPERS not in self.written:
            self._record(path)

    def path(self, filename: str) -> Path:
        """A path in the output folder for a writer of one's own (e.g. a GIF)."""
        return self._record(self.out / filename)
