"""What every chapter script shares: its options, its output folder and its writers.

A chapter script is run two ways: by a reader (``python code/chapters/<slug>.py
--device cuda``) and by ``scripts/build.py``, which executes it as a notebook and passes
the same options through environment variables (``ATTNBOOK_DEVICE``, ``ATTNBOOK_QUICK``,
``ATTNBOOK_OUT``). Everything the chapter page shows is written through ``Chapter``:
figures (light and dark), Markdown tables and sentences that the page includes, JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .device import CHOICES, describe, resolve_device
from .viz import save_themed

REPO = Path(__file__).resolve().parents[2]


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


class Chapter:
    """Options and output writers of one chapter script.

    ``Chapter("multi-head")`` reads ``--device {auto,cpu,cuda}``, ``--quick`` and ``--out``
    from the command line (or the ``ATTNBOOK_*`` variables set by the build) and creates
    the output folder, ``docs/generated/<slug>/`` by default.
    """

    def __init__(self, slug: str, argv: Sequence[str] | None = None):
        parser = argparse.ArgumentParser(description=f"Chapter '{slug}' of The Attention Book")
        parser.add_argument("--device", choices=CHOICES, default=os.environ.get("ATTNBOOK_DEVICE", "auto"))
        parser.add_argument("--quick", action="store_true",
                            default=os.environ.get("ATTNBOOK_QUICK", "") not in ("", "0"),
                            help="smaller sizes, for tests: same outputs, less work")
        parser.add_argument("--out", default=os.environ.get("ATTNBOOK_OUT"),
                            help="output folder (default: docs/generated/<slug>)")
        argv = [] if argv is None and _in_notebook() else argv
        args, _ = parser.parse_known_args(argv)
        self.slug = slug
        self.device = resolve_device(args.device)
        self.quick = bool(args.quick)
        self.out = Path(args.out) if args.out else REPO / "docs" / "generated" / slug
        self.out.mkdir(parents=True, exist_ok=True)
        self.written: list[str] = []
        # the build writes into a temporary folder that then replaces docs/generated/<slug>
        shown = f"docs/generated/{slug}" if os.environ.get("ATTNBOOK_BUILD") == "1" else self.out
        print(f"[{slug}] device: {describe(self.device)}; quick: {self.quick}; out: {shown}")

    # -- randomness ---------------------------------------------------------------------
    @staticmethod
    def seed(value: int) -> torch.Generator:
        """Seed Python, NumPy and torch; return a torch generator seeded with ``value``."""
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)
        return torch.Generator().manual_seed(value)

    def pick(self, full, quick):
        """``quick`` in quick mode (tests), ``full`` otherwise."""
        return quick if self.quick else full

    # -- writers ------------------------------------------------------------------------
    def _record(self, path: Path) -> Path:
        self.written.append(path.name)
        return path

    def figure(self, name: str, draw: Callable[[str], object], fmt: str = "svg") -> list[Path]:
        """Save ``draw(theme)`` as ``<name>-light.<fmt>`` and ``<name>-dark.<fmt>``."""
        paths = [self._record(p) for p in save_themed(draw, self.out, name, fmt)]
        if _in_notebook():
            from IPython.display import SVG, Image, display
            display(SVG(filename=str(paths[0])) if fmt == "svg" else Image(filename=str(paths[0])))
        return paths

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

    def path(self, filename: str) -> Path:
        """A path in the output folder for a writer of one's own (e.g. a GIF)."""
        return self._record(self.out / filename)
