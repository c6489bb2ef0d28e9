"""The Markdown report of a compression run, with its PNG plots (all written atomically)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from . import fsutil
from .cost import VitShape, token_counts
from .plan import PrunePlan, planned_shape
from .records import EvalRow, Evaluation
from .search.report import SearchSummary

# the report and its plots, as a compression run directory holds them
REPORT, PLAN_PLOT, FINETUNE_PLOT = "report.md", "plan.png", "finetune.png"

NAMES = {"dense": "dense", "pruned": "pruned, before fine-tuning", "finetuned": "pruned + fine-tuned"}


def write_report(out: Path, metrics: Evaluation, plan: PrunePlan, dense: VitShape,
                 search: SearchSummary, config: dict[str, Any]) -> Path:
    """Write ``report.md``, ``plan.png`` and ``finetune.png`` into ``out``.

    Args:
        metrics: the evaluation (``eval.json``): ``rows`` of dense / pruned / finetuned.
        plan: the searched plan.
        dense: the dense model's shape.
        search: the search summary (``search/search.json``).
        config: the run's settings.
    """
    plots = []
    try:
        _plot_plan(out / PLAN_PLOT, plan, dense)
        _plot_finetune(out / FINETUNE_PLOT, metrics)
        plots = [PLAN_PLOT, FINETUNE_PLOT]
    except ImportError:
        warnings.warn("matplotlib is not installed: the report has no plots", stacklevel=2)
    text = "\n".join(_summary(metrics, config) + _plan_table(plan, dense)
                     + _search(search, plots, config.get("objective", "top1")))
    fsutil.write_text(out / REPORT, text + "\n")
    return out / REPORT


def _summary(metrics: Evaluation, config: dict[str, Any]) -> list[str]:
    rows, d = metrics.rows, metrics.rows["dense"]
    batches = config["bench_batches"]
    lat, thr = f"batch{batches[0]}", f"batch{batches[-1]}"
    lines = ["# Compression report", "",
             f"Budget {config['budget']} ({config['criterion']} criterion, {config['method']} search, "
             f"{config['trials']} evaluations), then {config['epochs']} epochs of fine-tuning with "
             f"distillation from the dense model (alpha {config['kd_alpha']}, T "
             f"{config['kd_temperature']}). Test split: {metrics.test_images} images. "
             + (f"CPU speed with {metrics.threads} threads" if metrics.device_type == "cpu"
                else f"Speed on {metrics.device_name or 'the GPU'} (bf16 autocast)")
             + " (median of repeats after warm-up).", "",
             f"| model | MMACs | MACs kept | params (M) | {_quality_head(d)} | latency "
             f"b{batches[0]} (ms) | throughput b{batches[-1]} (img/s) | speed-up b{batches[0]} / "
             f"b{batches[-1]} |",
             "|---|---|---|---|---|---|---|---|"]
    kind = metrics.device_type  # where the speed was measured
    for key, r in rows.items():
        cpu = r.speed.get(kind)  # measured for dense and fine-tuned (pruned has the same structure)
        speed = ["-", "-", "-"]
        if cpu:
            dk = d.speed[kind]
            speed = [f"{cpu[lat]['latency_ms']:.2f}", f"{cpu[thr]['throughput']:.0f}",
                     f"{dk[lat]['latency_ms'] / cpu[lat]['latency_ms']:.2f}x / "
                     f"{cpu[thr]['throughput'] / dk[thr]['throughput']:.2f}x"]
        lines.append(f"| {NAMES[key]} | {r.macs / 1e6:.1f} | {r.macs / d.macs:.1%} | "
                     f"{r.params / 1e6:.3f} | {_quality(r)} | " + " | ".join(speed) + " |")
    drop = rows["finetuned"].quality - d.quality
    what = ("Feature fidelity to the dense model (100 x mean cosine similarity of the output "
            "features, test split)" if d.backbone else "Accuracy")
    lines += ["", f"{what} change after fine-tuning: {drop:+.2f} points; before fine-tuning: "
                  f"{rows['pruned'].quality - d.quality:+.2f}.", ""]
    lat = metrics.latency
    if lat:
        lines += [f"Latency budget on the table of {lat['table']}: predicted "
                  f"{lat['predicted_ms']:.2f} ms per batch of {lat['batch']} "
                  f"({lat['predicted_fraction']:.1%} of the dense {lat['dense_ms_reference']:.2f} "
                  f"ms), measured here {lat['measured_ms']:.2f} ms ({lat['measured_fraction']:.1%} "
                  f"of the dense {lat['dense_measured_ms']:.2f} ms).", ""]
    return lines


def _plan_table(plan: PrunePlan, dense: VitShape) -> list[str]:
    small = planned_shape(dense, plan)
    tokens = token_counts(small)
    stages = {t.block: t for t in plan.tokens}
    lines = ["## Searched plan", "",
             "| block | heads kept | MLP neurons kept | tokens in | token stage |", "|---|---|---|---|---|"]
    for i, (b, p) in enumerate(zip(dense.blocks, plan.blocks)):
        st = stages.get(i)
        stage = f"keep {st.keep_rate:.2f}{' + fused' if st.fuse else ''}" if st else ""
        lines.append(f"| {i} | {len(p.heads)} / {b.heads} | {len(p.neurons)} / {b.mlp_hidden} | "
                     f"{tokens[i][0]} | {stage} |")
    return lines + [""]


#: what the search's objective value is, by objective
OBJECTIVE_TEXT = {"top1": "masked calibration top-1",
                  "kl": "objective (minus the KL divergence from the dense model)",
                  "features": "masked calibration feature fidelity"}


def _search(search: SearchSummary, plots: list[str], objective: str) -> list[str]:
    best = search.best
    lo, hi = search.band_fraction
    lines = ["## Search", "",
             f"{search.n_evaluations} evaluations inside the band {lo:.1%}-{hi:.1%} of the dense "
             f"MACs; best {OBJECTIVE_TEXT.get(objective, objective)} {best.value:.2f} at evaluation "
             f"{best.trial + 1} ({best.macs_fraction:.1%} of the dense MACs).", "",
             "![search](search/search.png)", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    return lines


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)  # its own canvas: no global backend switch
    return fig


def _plot_plan(dest: Path, plan: PrunePlan, dense: VitShape) -> None:
    """Per block: fraction of heads and neurons kept (bars) and of tokens entering (line)."""
    fig = _figure((8, 3.5))
    ax = fig.subplots()
    blocks = range(len(plan.blocks))
    heads = [len(p.heads) / b.heads for p, b in zip(plan.blocks, dense.blocks)]
    neurons = [len(p.neurons) / b.mlp_hidden for p, b in zip(plan.blocks, dense.blocks)]
    n0 = token_counts(dense)[0][0]
    tokens = [n / n0 for n, _ in token_counts(planned_shape(dense, plan))]
    ax.bar([i - 0.2 for i in blocks], heads, width=0.4, label="heads kept")
    ax.bar([i + 0.2 for i in blocks], neurons, width=0.4, label="MLP neurons kept")
    ax.plot(list(blocks), tokens, "k.-", label="tokens entering")
    ax.set(xlabel="block", ylabel="fraction of dense", ylim=(0, 1.05), xticks=list(blocks),
           title="searched plan")
    # below the axes: inside them the legend hides the first blocks' bars
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fsutil.atomic_write(dest, lambda p: fig.savefig(p, format="png", dpi=100))


def _quality_head(dense: EvalRow) -> str:
    if not dense.backbone:
        return "test top-1"
    return "test fidelity" + (" / k-NN top-1" if dense.test_knn_top1 is not None else "")


def _quality(r: EvalRow) -> str:
    """The row's test top-1, or a backbone's test fidelity (and k-NN top-1 on labelled data)."""
    if not r.backbone:
        return f"{r.test_top1:.2f}"
    return f"{r.test_fidelity:.2f}" + (f" / {r.test_knn_top1:.2f}" if r.test_knn_top1 is not None
                                       else "")


def _plot_finetune(dest: Path, metrics: Evaluation) -> None:
    """Calibration top-1 after each fine-tuning epoch, against the dense and pruned models'
    calibration top-1: like with like (the test split is never seen during fine-tuning)."""
    hist = metrics.finetune_history
    rows = metrics.rows
    fig = _figure((6, 3.5))
    ax = fig.subplots()
    backbone = rows["dense"].backbone
    ax.plot([h.epoch for h in hist], [h.quality for h in hist], "o-",
            label="pruned, fine-tuning")
    for key, style, label in (("dense", dict(color="0.3", ls="--"), "dense"),
                              ("pruned", dict(color="C3", ls=":"), "pruned before fine-tuning")):
        level = rows[key].calib_fidelity if backbone else rows[key].calib_top1
        if level is not None:  # older runs measured only test top-1
            ax.axhline(level, label=label, **style)
    ax.set(xlabel="epoch", title="fine-tuning",
           ylabel="calibration feature fidelity" if backbone else "calibration top-1 (%)")
    ax.legend(loc="lower right")
    fsutil.atomic_write(dest, lambda p: fig.savefig(p, format="png", dpi=100))
