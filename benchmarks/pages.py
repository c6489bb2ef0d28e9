"""Docs pages generated from their JSON: the generated text plus hand-written reading kept
between marker lines, so that regenerating a page changes its numbers and never its reading.

    <!-- reading -->
    ... what the numbers mean, written by hand ...
    <!-- /reading -->
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path

from vitprune import fsutil

BEGIN, END = "<!-- reading -->", "<!-- /reading -->"
PLACEHOLDER = "(No reading yet: write it here; regenerating the page keeps it.)"


def reading(path: Path) -> str:
    """The reading block of the page at ``path`` (the placeholder for a new page)."""
    if path.is_file():
        m = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), path.read_text(), re.S)
        if m:
            return m.group(1)
    return PLACEHOLDER


def render(path: Path, generated: str, *, after: str = "") -> str:
    """The page: ``generated`` with the kept reading block inserted after the line ``after``
    (a heading of the generated text; empty: at the end)."""
    block = f"{BEGIN}\n{reading(path)}\n{END}"
    if after and after in generated:
        head, rest = generated.split(after, 1)
        return f"{head}{after}\n\n{block}\n{rest}"
    return f"{generated.rstrip()}\n\n{block}\n"


def write(path: Path, generated: str, *, after: str = "") -> None:
    """Write :func:`render`'s page to ``path`` atomically."""
    fsutil.write_text(path, render(path, generated, after=after))


def publish(base: str | Path, record: dict, page: Callable[[dict], str]) -> str:
    """Write ``record`` to ``<base>.json`` and its page, ``page(record)`` with its kept reading
    after ``## Reading``, to ``<base>.md``, both atomically; returns the generated text."""
    text = page(record)
    fsutil.write_json(Path(f"{base}.json"), record)
    write(Path(f"{base}.md"), text, after="## Reading")
    return text


def mean_range(values: list[float], *, signed: bool = False) -> str:
    """``mean (min-max)`` of ``values`` to two decimals (the mean alone for one value);
    ``signed`` (differences): ``+mean (+min to +max)``, every figure with its sign."""
    f, sep = ("{:+.2f}", " to ") if signed else ("{:.2f}", "-")
    return (f.format(statistics.mean(values))
            + (f" ({f.format(min(values))}{sep}{f.format(max(values))})" if len(values) > 1
               else ""))
