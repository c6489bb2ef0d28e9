"""What a finished search leaves on disk: the best plan, a summary and a plot, each atomic."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

from .. import fsutil
from ..plan import PrunePlan
from .result import SearchResult

BEST_PLAN = "best_plan.json"
SUMMARY = "search.json"
PLOT = "search.png"


def write_outputs(result: SearchResult, out_dir: str | Path) -> None:
    """Write ``best_plan.json``, ``search.json`` and ``search.png`` into ``out_dir``.

    The trials themselves are already in the trials file, appended as they completed. Without
    matplotlib the plot is skipped with a warning: the plan and summary matter more.
    """
    out = Path(out_dir)
    result.best_plan.save(out / BEST_PLAN)
    fsutil.write_json(out / SUMMARY, summary(result))
    try:
        plot_search(result, out / PLOT)
    except ImportError:
        warnings.warn("matplotlib is not installed: search.png not written "
                      "(pip install 'vitprune[search]')", stacklevel=2)


def read_outputs(out_dir: str | Path) -> tuple[PrunePlan, dict]:
    """The best plan and the summary :func:`write_outputs` wrote into ``out_dir``."""
    import json

    out = Path(out_dir)
    return PrunePlan.load(out / BEST_PLAN), json.loads((out / SUMMARY).read_text())


def summary(result: SearchResult) -> dict:
    """A JSON-ready account of the search: settings, band, best trial, best-so-far curve."""
    b = result.best
    return {
        "config": asdict(result.config),
        "space": result.space.describe(),
        "metric": result.space.metric,
        **({"band_macs": [result.band.low, result.band.high], "dense_macs": result.band.dense}
           if result.space.metric == "macs" else
           {"band_ms": [result.band.low, result.band.high], "dense_ms": result.band.dense,
            "dense_macs": result.space.dense_macs,
            "latency_table": result.space.latency.describe()}),
        "band_fraction": [result.band.low / result.band.dense,
                          result.band.high / result.band.dense],
        "n_evaluations": len(result.trials),
        "best": b.to_record(),
        "best_ratios": {"heads": list(result.best_ratios.heads),
                        "neurons": list(result.best_ratios.neurons),
                        "tokens": result.best_ratios.tokens},
        "best_so_far": result.best_so_far(),
    }


def plot_search(result: SearchResult, dest: str | Path) -> None:
    """Best value so far against evaluations, and the best policy's per-block prune fractions.

    Draws on an Agg canvas owned by this figure: no global backend switch (``matplotlib.use``),
    so importing vitprune or calling this never changes a notebook's or GUI's backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    n = range(1, len(result.trials) + 1)
    ax1.scatter(n, [t.value for t in result.trials], s=10, color="0.6", label="trial")
    ax1.plot(n, result.best_so_far(), color="C0", label="best so far")
    if result.config.method == "gp-ei" and result.config.init < len(result.trials):
        ax1.axvline(result.config.init + 0.5, color="0.3", ls=":", label="GP starts")
    ax1.set(xlabel="evaluation", ylabel="objective", title=f"{result.config.method}")
    ax1.legend(loc="lower right")
    _plot_ratios(ax2, result)
    fsutil.atomic_write(dest, lambda p: fig.savefig(p, format="png", dpi=100))


def _plot_ratios(ax, result: SearchResult) -> None:
    """Bars: fraction of heads / neurons the best plan removes per block; ticks: the searched
    ratio it came from (rounding to whole heads can make the two differ a lot)."""
    r, plan, shape = result.best_ratios, result.best_plan, result.space.shape
    blocks = range(len(r.heads))
    cut_h = [1 - len(p.heads) / b.heads for p, b in zip(plan.blocks, shape.blocks)]
    cut_d = [1 - len(p.neurons) / b.mlp_hidden for p, b in zip(plan.blocks, shape.blocks)]
    for off, cut, ratio, label in ((-0.2, cut_h, r.heads, "heads"),
                                   (0.2, cut_d, r.neurons, "neurons")):
        x = [i + off for i in blocks]
        ax.bar(x, cut, width=0.4, label=f"{label} removed")
        ax.scatter(x, ratio, marker="_", s=200, color="k", zorder=3)
    ax.scatter([], [], marker="_", color="k", label="searched ratio")
    ax.set(xlabel="block", ylabel="prune fraction", xticks=list(blocks),
           title=f"best: tokens {r.tokens:.2f}, {result.best.macs_fraction:.1%} MACs, "
                 f"value {result.best.value:.4g}")
    ax.legend(loc="upper left")
