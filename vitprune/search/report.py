"""What a finished search leaves on disk: the best plan, a summary and a plot, each atomic."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import fsutil
from ..plan import PrunePlan
from .result import SearchResult
from .trials import Trial

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
    fsutil.write_json(out / SUMMARY, summary(result).to_dict())
    try:
        plot_search(result, out / PLOT)
    except ImportError:
        warnings.warn("matplotlib is not installed: search.png not written "
                      "(pip install 'vitprune[search]')", stacklevel=2)


def read_outputs(out_dir: str | Path) -> tuple[PrunePlan, SearchSummary]:
    """The best plan and the summary :func:`write_outputs` wrote into ``out_dir``."""
    import json

    out = Path(out_dir)
    return (PrunePlan.load(out / BEST_PLAN),
            SearchSummary.from_dict(json.loads((out / SUMMARY).read_text())))


@dataclass(frozen=True)
class SearchSummary:
    """A finished search, as ``search.json`` holds it.

    Attributes:
        config: the search's settings (:class:`~vitprune.search.config.SearchConfig` fields).
        space: :meth:`~vitprune.search.space.SearchSpace.describe`.
        metric: ``macs`` or ``latency``: what the band is in.
        band: (low, high) MACs per image, or ms per batch under a latency table.
        dense: the dense model's value of the metric; ``dense_macs`` its MACs either way.
        latency_table: the table's description (a latency search), else None.
        n_evaluations: trials evaluated.
        best: the best trial; ``best_ratios`` its prune ratios by dimension.
        best_so_far: the best value after each trial.
    """

    config: dict[str, Any]
    space: dict[str, Any]
    metric: str
    band: tuple[float, float]
    dense: float
    dense_macs: int
    n_evaluations: int
    best: Trial
    best_ratios: dict[str, Any]
    best_so_far: tuple[float, ...]
    latency_table: dict[str, Any] | None = None

    @property
    def band_fraction(self) -> tuple[float, float]:
        """The band over the dense model's value."""
        return self.band[0] / self.dense, self.band[1] / self.dense

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout ``search.json`` has always had."""
        unit = "macs" if self.metric == "macs" else "ms"
        return {
            "config": self.config, "space": self.space, "metric": self.metric,
            f"band_{unit}": list(self.band), f"dense_{unit}": self.dense,
            **({} if self.metric == "macs" else {"dense_macs": self.dense_macs,
                                                  "latency_table": self.latency_table}),
            "band_fraction": list(self.band_fraction),
            "n_evaluations": self.n_evaluations, "best": self.best.to_record(),
            "best_ratios": self.best_ratios, "best_so_far": list(self.best_so_far),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSummary:
        """Parse :meth:`to_dict`'s output."""
        unit = "macs" if d["metric"] == "macs" else "ms"
        return cls(config=d["config"], space=d["space"], metric=d["metric"],
                   band=tuple(d[f"band_{unit}"]), dense=d[f"dense_{unit}"],
                   dense_macs=d["dense_macs"], n_evaluations=d["n_evaluations"],
                   best=Trial.from_record(d["best"]), best_ratios=d["best_ratios"],
                   best_so_far=tuple(d["best_so_far"]), latency_table=d.get("latency_table"))


def summary(result: SearchResult) -> SearchSummary:
    """The account of a finished search: settings, band, best trial, best-so-far curve."""
    latency = result.space.metric != "macs"
    return SearchSummary(
        config=asdict(result.config), space=result.space.describe(), metric=result.space.metric,
        band=(result.band.low, result.band.high), dense=result.band.dense,
        dense_macs=result.space.dense_macs if latency else result.band.dense,
        n_evaluations=len(result.trials), best=result.best,
        best_ratios={"heads": list(result.best_ratios.heads),
                     "neurons": list(result.best_ratios.neurons),
                     "tokens": result.best_ratios.tokens},
        best_so_far=tuple(result.best_so_far()),
        latency_table=result.space.latency.describe() if latency else None)


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
