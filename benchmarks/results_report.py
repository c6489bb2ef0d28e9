"""docs/results.md, its JSON and its accuracy-vs-MACs plot, from the cells of benchmarks/results.py.

The page is :func:`page` of docs/results.json; its hand-written reading is kept between the
page's reading markers when the page is regenerated."""

from __future__ import annotations

import re
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune import fsutil  # noqa: E402

GROUPS = (("dimensions", "1. Which dimensions are pruned (same HSIC ranking, GP-EI search)"),
          ("criterion", "2. Which criterion ranks heads and neurons (same search)"),
          ("search", "3. How much each block keeps (same HSIC ranking)"),
          ("peer", "4. A pruning peer: Torch-Pruning"))


def _summary(rows: list[dict]) -> dict:
    """Mean and range over seeds of one (method, budget)."""
    done = [r for r in rows if "test_top1" in r]
    if not done:
        return {"unreachable": rows[0].get("unreachable", "not finished")}
    top = [r["test_top1"] for r in done]
    before = [r["test_top1_before"] for r in done]
    return {"n": len(done), "test_top1": statistics.mean(top), "lo": min(top), "hi": max(top),
            "before": statistics.mean(before), "macs_kept": statistics.mean(r["macs_kept"] for r in done),
            "params": statistics.mean(r["params"] for r in done),
            "seconds": sum(r.get("plan_seconds", 0) + r["finetune_seconds"] for r in done)}


def _speed(speed: dict | None, budget: float, method: str) -> str:
    if not speed or str(budget) not in speed or method not in speed[str(budget)]["b1"]:
        return "| - | - "
    s = speed[str(budget)]
    return (f"| {s['b1']['dense'] / s['b1'][method]:.2f}x "
            f"| {s['b64']['dense'] / s['b64'][method]:.2f}x ")


def write(args, rows: list[dict], dense, speed: dict | None, order: list[str]) -> None:
    """Write the report; ``order``: the method names in the order of the benchmark's list."""
    from vitprune.adapters import vit_shape
    from vitprune.cost import macs
    from vitprune.data import load_splits
    from vitprune.pipeline import test_metrics
    from vitprune.surgery import count_params

    splits = load_splits("fashion-mnist", args.data_dir)
    record = {"command": "python " + " ".join(sys.argv),
              "dense_top1": test_metrics(dense, splits)["test_top1"],
              "dense_macs": macs(vit_shape(dense)).total, "dense_params": count_params(dense),
              "methods": _in_order(rows, order), "rows": rows, "speed": speed}
    pages.publish(args.out, record, page)
    _plot(Path(args.out).with_suffix(".png"), rows, record["dense_top1"], order)
    print(page(record))


def page(record: dict) -> str:
    """The page's generated text, from ``docs/results.json`` alone (``methods``: the methods in
    the order of the benchmark's list)."""
    rows, speed, methods = record["rows"], record["speed"], record["methods"]
    argv = shlex.split(record["command"])
    out = argv[argv.index("--out") + 1]
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["budget"])].append(r)
    summary = {k: _summary(v) for k, v in by.items()}
    budgets = sorted({b for _, b in by}, reverse=True)
    first = rows[0]
    lines = [
        "# Results: ablations and a pruning peer on Fashion-MNIST", "",
        f"Made by `python benchmarks/results.py run --threads 1{_run_flags(rows)}` (two such "
        "processes at once; resumable; each takes the next free cell; a row with fewer seeds "
        "did not reach its later seeds in the time the run was given) and "
        f"`python benchmarks/results.py report{' --speed' if speed else ''} --out {out}`.",
        "",
        f"Baseline: the shipped ViT (depth 12, width 64, 4 heads of 16, 256 MLP units, 50 tokens), "
        f"{record['dense_macs'] / 1e6:.1f} MMACs, {record['dense_params'] / 1e6:.3f} M "
        f"params, test top-1 **{record['dense_top1']:.2f}**. Every method's plan is pruned "
        f"physically and fine-tuned with the same recipe: {first['epochs']} epoch(s) of "
        f"distillation from the dense model (AdamW 5e-4, cosine with warm-up, KD alpha "
        f"{first['kd_alpha']}, T = 2, "
        f"{'shift/flip augmentation' if first['augment'] else 'no augmentation'}). Test top-1 is "
        "the mean over seeds (range in brackets); 'before' is the pruned model before "
        "fine-tuning. Search methods: 50 evaluations (20 random first) on 2,000 held-out training "
        "images; the budget band is [budget - 2%, budget] of the dense MACs.", ""]
    if speed:
        lines += [f"Speed-ups: CPU, {speed['threads']} thread(s), each model timed in turn with "
                  "the dense one in one process (median of rounds); latency at batch 1, "
                  "throughput at batch 64; first seed's model. How loaded the cores were when "
                  "they were timed: see the reading.", ""]
    lines += ["## Reading", "## All methods", "", _table(methods, budgets, summary, speed), ""]
    for group, title in GROUPS:
        members = ["ours"] + [m for m in methods if by_group(rows, m) == group]
        lines += [f"## {title}", "", _table(members, budgets, summary, speed), ""]
    total = sum(s.get("seconds", 0) for s in summary.values())
    lines += [f"Compute: {total / 3600:.1f} h of plan search and fine-tuning over all cells "
              "(per-process seconds; two processes shared the two cores).", "",
              "![accuracy vs MACs](results.png)", ""]
    return "\n".join(lines)


def _run_flags(rows: list[dict]) -> str:
    """The run's non-default settings, read back from its cells."""
    seeds = sorted({r["seed"] for r in rows})
    first = rows[0]
    flags = "" if seeds == [0] else " --seeds " + " ".join(map(str, seeds))
    flags += "" if first["epochs"] == 1 else f" --epochs {first['epochs']}"
    flags += "" if first["kd_alpha"] == 0.5 else f" --kd-alpha {first['kd_alpha']}"
    return flags + (" --augment" if first["augment"] else "")


def by_group(rows: list[dict], method: str) -> str:
    return next(r["group"] for r in rows if r["method"] == method)


def _in_order(rows: list[dict], order: list[str]) -> list[str]:
    """The methods of ``rows`` in the order of ``order`` (the benchmark's list), others last."""
    rank = {name: i for i, name in enumerate(order)}
    return list(dict.fromkeys(r["method"] for r in sorted(
        rows, key=lambda r: rank.get(r["method"], len(order)))))


def _table(methods: list[str], budgets: list[float], summary: dict, speed: dict | None) -> str:
    out = ["| method | budget | MACs kept | params (M) | test top-1 | before fine-tuning | seeds "
           "| latency b1 | throughput b64 |", "|---|---|---|---|---|---|---|---|---|"]
    for b in budgets:
        for m in methods:
            s = summary.get((m, b))
            if s is None:
                continue
            if "unreachable" in s:
                floor = re.search(r"reaches ([\d.]+%)", s["unreachable"])
                out.append(f"| {m} | {b} | cannot reach (floor {floor[1] if floor else '?'}) "
                           "| | | | | | |")
                continue
            spread = f" [{s['lo']:.2f}-{s['hi']:.2f}]" if s["n"] > 1 else ""
            out.append(f"| {m} | {b} | {s['macs_kept']:.1%} | {s['params'] / 1e6:.3f} | "
                       f"**{s['test_top1']:.2f}**{spread} | {s['before']:.2f} | {s['n']} "
                       + _speed(speed, b, m) + "|")
    return "\n".join(out)


def _plot(path: Path, rows: list[dict], dense_top1: float, order: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = _in_order(rows, order)
    for i, m in enumerate(methods):
        pts = [(r["macs_kept"], r["test_top1"]) for r in rows if r["method"] == m and "test_top1" in r]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, label=m, marker="*" if m == "ours" else "o",
                       s=120 if m == "ours" else 30, color=plt.cm.tab20(i % 20),
                       zorder=3 if m == "ours" else 2)
    ax.axhline(dense_top1, color="grey", ls="--", lw=1, label="dense")
    ax.set_xlabel("fraction of the dense MACs kept")
    ax.set_ylabel("test top-1 after fine-tuning (%)")
    ax.set_title("Fashion-MNIST: accuracy vs MACs, every method and seed")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fsutil.atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
