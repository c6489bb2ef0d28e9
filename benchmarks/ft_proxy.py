"""docs/ft_proxy.md and .json: which quantity, measured before the full fine-tuning, predicts a
plan's fine-tuned accuracy?

The evidence study (docs/evidence.md) found the search's objective, the masked top-1 before any
fine-tuning, a weak guide: at 40% of the dense time on the 197-token model Torch-Pruning's plan
starts 10 points below vitprune's and ends 1 point above it. Here every plan the evidence study
fine-tuned at one model and target (vitprune's three arms over their seeds, Torch-Pruning's best
configuration) is measured three ways on **held-out calibration images**, the images of a
5,000-image calibration carve that the evidence study's 2,000-image carve does not hold (so no
search, configuration choice or fine-tuning of the study saw them):

* **before**: the pruned model's top-1, no training (what the search maximises, on other images);
* **after k steps**: top-1 after a short distillation from the dense model (the study's
  fine-tuning recipe, ``k`` steps at batch 128 on the training images of the 5,000-image carve,
  which exclude the held-out ones);
* **parameters** kept, a capacity count.

``--uniform H:N ...`` adds plans built here that no study fine-tuned: H heads and N neurons kept
in every block (vitprune's criterion chooses which: ``--criterion``, HSIC by default), the token
ratio (three stages) that brings the latency table's prediction to that of Torch-Pruning's plan
at the cell. They have no final accuracy; they show where a uniform width profile lands after k
steps.

Each is set beside the plan's final test top-1 from the evidence study (300 steps, mean over its
fine-tuning seeds) with the rank correlation over plans. The final accuracy is the study's
committed result; nothing here chooses a default.

    python benchmarks/ft_proxy.py run --runs runs/ft_proxy          # resumable, one row a plan
    python benchmarks/ft_proxy.py report --runs runs/ft_proxy       # the page
    python benchmarks/ft_proxy.py restore --runs runs/ft_proxy      # the page's rows, to go on
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune import fsutil  # noqa: E402
from vitprune.data import load_splits, make_loader  # noqa: E402
from vitprune.data.base import carve  # noqa: E402
from vitprune.pipeline import finetune, load_dense  # noqa: E402
from vitprune.plan import PrunePlan  # noqa: E402
from vitprune.scoring import rankings  # noqa: E402
from vitprune.surgery import prune  # noqa: E402
from vitprune.train import EVAL_BATCH, FINETUNE, evaluate  # noqa: E402
from vitprune.train.loop import CKPT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "benchmarks" / "state" / "evidence"
MODELS = {"d12": "vitprune/assets/fmnist_vit_d12", "t197": "vitprune/assets/fmnist_vit_t197"}
STUDY_CALIB, CARVE = 2000, 5000  # the evidence study's calibration carve; this study's
METHODS = ("vitprune", "vitprune__anchored_search", "vitprune_without_tokens",
           "vitprune__distilled_choice", "torch_pruning__best_configuration")


def held_out(splits) -> torch.Tensor:
    """Positions, in the 5,000-image calibration split, of the images the study's carve lacks."""
    big, small = carve(60000, CARVE, 0)[1], set(carve(60000, STUDY_CALIB, 0)[1].tolist())
    return torch.tensor([i for i, g in enumerate(big.tolist()) if g not in small])


def plans(model: str, target: float, methods=METHODS) -> list[tuple[str, Path]]:
    """The study's distinct fine-tuned plans at a cell (``method/sN``), one per plan file."""
    out, seen = [], set()
    for method in methods:
        for cell in sorted((STATE / model / f"t{target}" / method).glob("s*")):
            if (cell / "plan.json").exists() and (cell / "result.json").exists():
                text = (cell / "plan.json").read_text()
                if text not in seen:  # Torch-Pruning's plan is one plan for every seed
                    seen.add(text)
                    out.append((f"{method}/{cell.name}", cell))
    return out


def final(cell: Path) -> list[float]:
    """The study's fine-tuned test top-1 of ``cell``'s plan, over its seeds."""
    text = (cell / "plan.json").read_text()
    return [json.loads((c / "result.json").read_text())["test_top1"]
            for c in sorted(cell.parent.glob("s*"))
            if (c / "result.json").exists() and (c / "plan.json").read_text() == text]


def shaped_plan(dense, runs: Path, model: str, target: float, spec: str,
                criterion: str = "hsic") -> PrunePlan:
    """``spec`` (``method/sN``), a plan of the study at the cell, its widths and token stages
    kept, its heads and neurons re-chosen by ``criterion``: what the criterion alone changes
    in the plan the search chose."""
    from vitprune.plan import BlockPlan

    scores = _scores(dense, runs, model, criterion)
    plan = PrunePlan.load(STATE / model / f"t{target}" / spec / "plan.json")
    blocks = tuple(BlockPlan(tuple(sorted(h[:len(b.heads)])), tuple(sorted(n[:len(b.neurons)])))
                   for b, (h, n) in zip(plan.blocks, rankings(scores)))
    return PrunePlan(blocks, plan.tokens, base=plan.base)


def _scores(dense, runs: Path, model: str, criterion: str):
    """``criterion``'s scores of the dense model on the 256 images the study scored on."""
    from vitprune.pipeline import scored
    from vitprune.scoring.criteria import load_scores, save_scores

    path = runs / model / f"scores_{criterion}_256.json"
    if not path.exists():
        study = load_splits("fashion-mnist", calib_size=STUDY_CALIB)
        save_scores(path, *scored(dense, study, criterion, n_images=256))
    return load_scores(path)[0]


def uniform_plan(dense, splits, runs: Path, model: str, target: float, spec: str,
                 criterion: str = "hsic") -> PrunePlan:
    """H heads and N neurons kept in every block (``criterion``'s choice), tokens pruned until
    the table predicts Torch-Pruning's plan's time at the cell."""
    from vitprune.adapters import vit_shape
    from vitprune.config import SearchSettings
    from vitprune.latency import LatencyTable
    from vitprune.pipeline import search_space
    from vitprune.plan import planned_shape

    table = LatencyTable.load(STATE / model / "table_b64.json")
    shape = vit_shape(dense)
    space = search_space(dense, SearchSettings(max_ratio=0.99),
                         _scores(dense, runs, model, criterion))
    tp = PrunePlan.load(STATE / model / f"t{target}" / METHODS[-1] / "s0" / "plan.json")
    want = table.predict(planned_shape(shape, tp))
    h, n = (int(v) for v in spec.split(":"))
    L, b = len(shape.blocks), shape.blocks[0]

    def plan(tok: float) -> PrunePlan:
        return space.plan([1 - h / b.heads] * L + [1 - n / b.mlp_hidden] * L + [tok])

    lo, hi = 0.0, 0.95
    if table.predict(planned_shape(shape, plan(0.0))) <= want:
        return plan(0.0)
    for _ in range(30):  # the least token pruning that meets Torch-Pruning's predicted time
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if table.predict(planned_shape(shape, plan(mid))) <= want else (mid, hi)
    return plan(hi)


def row_dir(runs: Path, model: str, target: float, name: str, steps: int, seed: int) -> Path:
    return runs / model / f"t{target}" / name / (f"k{steps}" + (f"_s{seed}" if seed else ""))


def row(runs: Path, model: str, target: float, name: str, cell: Path | PrunePlan, dense,
        splits, loader, steps: int, seed: int = 0, test_loader=None) -> dict:
    """One plan distilled for ``steps`` steps, measured on the held-out images (and, given
    ``test_loader``, on the test images: whether the held-out images rank plans as the test
    split does at equal training; nothing is chosen on it). A row measured before the test
    column existed gets it from its fine-tuning's checkpoint."""
    out = row_dir(runs, model, target, name, steps, seed)
    plan = cell if isinstance(cell, PrunePlan) else PrunePlan.load(cell / "plan.json")
    if (out / "row.json").exists():
        r = json.loads((out / "row.json").read_text())
        ckpt = out / "finetune" / CKPT
        if test_loader is not None and "test_after" not in r and ckpt.exists():
            student = prune(dense, plan)
            student.load_state_dict(fsutil.torch_load(ckpt, SystemExit)["model"])
            r["test_after"] = evaluate(student.eval(), test_loader)["top1"]
            fsutil.write_json(out / "row.json", r)
        return r
    student = prune(dense, plan).eval()
    before = evaluate(student, loader)["top1"]
    params = sum(p.numel() for p in student.parameters())
    cfg = replace(FINETUNE, epochs=1, max_steps_per_epoch=steps, seed=seed)
    finetune(student, dense, splits, cfg, out / "finetune", resume=True, progress=False)
    r = {"model": model, "target": target, "plan": name, "steps": steps, "seed": seed,
         "params": params,
         "held_out_before": before, "held_out_after": evaluate(student, loader)["top1"],
         **({} if test_loader is None else
            {"test_after": evaluate(student, test_loader)["top1"]}),
         "final_test_top1": [] if isinstance(cell, PrunePlan) else final(cell),
         **({"tokens_kept": [round(t.keep_rate, 3) for t in plan.tokens]}
            if isinstance(cell, PrunePlan) else {})}
    fsutil.write_json(out / "row.json", r)
    return r


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    splits = load_splits("fashion-mnist", calib_size=CARVE)
    loader = make_loader(splits.calib.subset(held_out(splits)), EVAL_BATCH)
    test_loader = make_loader(splits.test, EVAL_BATCH) if args.test else None
    torch.manual_seed(0)
    dense = load_dense(MODELS[args.model], splits, device="cpu", verb="benchmark")[0].eval()
    tag = "" if args.criterion == "hsic" else f", {args.criterion}"
    extra = [(f"uniform h{h} n{n}{tag}", uniform_plan(dense, splits, args.runs, args.model,
                                                      args.target, f"{h}:{n}", args.criterion))
             for h, n in (u.split(":") for u in args.uniform)]
    extra += [(f"shape of {spec}, {args.criterion}",
               shaped_plan(dense, args.runs, args.model, args.target, spec, args.criterion))
              for spec in args.shape_of]
    for steps in args.steps:
        for seed in args.seeds:
            for name, cell in [*plans(args.model, args.target, args.plans), *extra]:
                print(json.dumps(row(args.runs, args.model, args.target, name, cell, dense,
                                     splits, loader, steps, seed, test_loader)),
                      flush=True)


def cmd_restore(args: argparse.Namespace) -> None:
    """The page's rows back into ``--runs`` (a new machine continues the study from the
    committed JSON instead of measuring its rows again); rows already there are kept."""
    rows = json.loads(Path(args.out).with_suffix(".json").read_text())["rows"]
    for r in rows:
        out = row_dir(args.runs, r["model"], r["target"], r["plan"], r["steps"], r.get("seed", 0))
        if not (out / "row.json").exists():
            fsutil.write_json(out / "row.json", r)
    print(f"{len(rows)} rows in {args.runs}")


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties share their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def cmd_report(args: argparse.Namespace) -> None:
    rows = sorted((json.loads(p.read_text()) for p in args.runs.rglob("row.json")),
                  key=lambda r: (r["model"], -r["target"], r["steps"], r["plan"]))
    record = {"command": "python benchmarks/ft_proxy.py run --runs RUNS --model MODEL "
                         "--target TARGET --steps K",
              "settings": {"held_out": f"the {CARVE}-image calibration carve less the study's "
                                       f"{STUDY_CALIB}-image one", "batch": FINETUNE.batch_size,
                           "recipe": "FINETUNE (the evidence study's), one epoch of k steps"},
              "rows": rows}
    print(pages.publish(args.out, record, page))


def page(record: dict) -> str:
    """The page's generated text, from ``docs/ft_proxy.json`` alone."""
    rows = record["rows"]
    lines = ["# What predicts a plan's fine-tuned accuracy", "",
             f"Generated by `benchmarks/ft_proxy.py report` from docs/ft_proxy.json. Command: "
             f"`{record['command']}`. Every plan the evidence study fine-tuned, measured on "
             f"held-out calibration images ({record['settings']['held_out']}): top-1 with no "
             "training (what the search maximises), top-1 after k steps of distillation "
             f"(batch {record['settings']['batch']}, {record['settings']['recipe']}), and "
             "parameters kept; final: the evidence study's test top-1 after its fine-tuning "
             "(mean over its seeds). Rank correlation (Spearman) of each with the final, over "
             "plans.", ""]
    for key in sorted({(r["model"], r["target"], r["steps"]) for r in rows},
                      key=lambda k: (k[0], -k[1], k[2])):
        model, target, k = key
        cell = [r for r in rows if (r["model"], r["target"], r["steps"]) == key]
        rs = [r for r in cell if r["final_test_top1"] and not r.get("seed")]
        fin = [float(np.mean(r["final_test_top1"])) for r in rs]
        tested = bool(rs) and all("test_after" in r for r in rs)
        lines += [f"## {model}, {target:.0%} of the dense time, k = {k} steps", "",
                  "| plan | parameters | before | after k steps |"
                  + (" test after k steps |" if tested else "") + " final (test, mean) |",
                  "|---|---|---|---|" + ("---|" if tested else "") + "---|"]
        for r, f in sorted(zip(rs, fin), key=lambda x: -x[1]):
            lines.append(f"| {r['plan']} | {r['params']:,} | {r['held_out_before']:.2f} | "
                         f"{r['held_out_after']:.2f} | "
                         + (f"{r['test_after']:.2f} | " if tested else "") + f"{f:.2f} |")
        fields = [("before", "held_out_before"), (f"after {k} steps", "held_out_after"),
                  ("parameters", "params")]
        if tested:
            fields.append((f"test after {k} steps", "test_after"))
        corr = {what: spearman([r[field] for r in rs], fin) for what, field in fields}
        lines += ["", "Rank correlation with the final accuracy over "
                  f"{len(rs)} plans: " + "; ".join(f"{w} {c:+.2f}" for w, c in corr.items())
                  + "."]
        if tested:  # do the held-out images rank the plans as the test images do, at k steps?
            same = spearman([r["held_out_after"] for r in rs], [r["test_after"] for r in rs])
            gap = [r["held_out_after"] - r["test_after"] for r in rs]
            lines += [f"Held-out after {k} steps against test after {k} steps (the same "
                      f"models): rank correlation {same:+.2f}; held-out minus test "
                      f"{min(gap):+.2f} to {max(gap):+.2f} points by plan."]
        lines.append("")
        lines += _built_plans(cell)
    return "\n".join([*lines, "## Reading"])


def _built_plans(cell: list[dict]) -> list[str]:
    """The table of the plans built here (uniform ones, a study plan's shape with another
    criterion's units), each over its distillation seeds, beside the study plans measured over
    more than one seed."""
    groups: dict[str, list[dict]] = {}
    for r in cell:
        if not r["final_test_top1"] or any(x["plan"] == r["plan"] and x.get("seed")
                                           for x in cell):
            groups.setdefault(r["plan"], []).append(r)
    if not groups:
        return []
    lines = ["Plans built here (H heads and N neurons kept in every block, or a study plan's "
             "widths and token stages; the heads and neurons chosen by vitprune's HSIC ranking "
             "or the criterion named; uniform plans prune tokens to Torch-Pruning's predicted "
             "time), and study plans measured over several distillation seeds: after k steps, "
             "mean (range) over seeds:", "",
             "| plan | token keep rate (3 stages) | parameters | before | after k steps | seeds |",
             "|---|---|---|---|---|---|"]
    for name, rs in sorted(groups.items(), key=lambda g: -np.mean([r["held_out_after"]
                                                                   for r in g[1]])):
        after = [r["held_out_after"] for r in rs]
        spread = f" ({min(after):.2f}-{max(after):.2f})" if len(after) > 1 else ""
        kept = ", ".join(map(str, rs[0].get("tokens_kept", []))) or (
            "1" if "tokens_kept" in rs[0] else "as the study's plan")
        lines.append(f"| {name} | {kept} | {rs[0]['params']:,} | "
                     f"{rs[0]['held_out_before']:.2f} | {np.mean(after):.2f}{spread} | "
                     f"{len(rs)} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("run", "report", "restore"))
    ap.add_argument("--runs", type=Path, default=Path("runs/ft_proxy"))
    ap.add_argument("--model", default="t197", choices=list(MODELS))
    ap.add_argument("--target", type=float, default=0.4)
    ap.add_argument("--steps", type=int, nargs="+", default=[40])
    ap.add_argument("--uniform", nargs="*", default=[], metavar="H:N",
                    help="also uniform plans: H heads and N neurons kept in every block")
    ap.add_argument("--criterion", default="hsic",
                    help="ranks the uniform plans' heads and neurons (vitprune's criteria)")
    ap.add_argument("--shape-of", nargs="*", default=[], metavar="METHOD/sN",
                    help="also a study plan's widths and token stages, its units re-chosen by "
                         "--criterion")
    ap.add_argument("--plans", nargs="*", default=list(METHODS), choices=METHODS,
                    help="the study's plans measured (by method; none: only the extra plans)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="distillation seeds (each a row)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test", action="store_true",
                    help="also measure each plan on the test images after its k steps (rows "
                         "already measured get it from their checkpoint): whether the held-out "
                         "images rank plans as the test split does; nothing is chosen on it")
    ap.add_argument("--out", default=str(ROOT / "docs" / "ft_proxy"))
    args = ap.parse_args(argv)
    {"run": cmd_run, "report": cmd_report, "restore": cmd_restore}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
