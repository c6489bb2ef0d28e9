"""How often progress bars redraw: smoothly in a terminal or notebook, rarely in a log file."""

from __future__ import annotations

import sys


def min_interval() -> float:
    """Seconds between progress-bar redraws (tqdm's ``mininterval``).

    Redirected to a file, a bar redrawn ten times a second writes megabytes of carriage-return
    lines in a long run; there it redraws every 30 s.
    """
    interactive = getattr(sys.stderr, "isatty", lambda: False)() or "ipykernel" in sys.modules
    return 0.1 if interactive else 30.0
