"""docs/latency_compare.md and its JSON: on the Fashion-MNIST baseline, plans searched under a
latency budget against plans searched under a MACs budget of the same measured time and
Torch-Pruning's uniform plan of the same measured time, all fine-tuned alike.

Steps (each resumable: its result is kept under ``--runs`` and a re-run skips it):

1. ``latency``: vitprune's search (its defaults: GP-EI, HSIC ranking, ratios to 0.9) under a
   latency budget of ``--budget`` (0.5: half the dense time) on the batch-64 CPU latency table.
2. ``match``: its plan's measured time (batch 64, interleaved with the dense model) is the target.
   MACs-budget searches (same settings) and Torch-Pruning plans are made at a few MACs budgets,
   timed the same way, then at budgets interpolated between plans whose measured times bracket
   the target, until one lands within 1 point of it (at most 5 more); the plan nearest the
   target is kept for each method.
3. ``finetune``: each kept plan is pruned physically and fine-tuned with the same recipe (the
   results study's: one epoch of distillation from the dense model) for each seed; test top-1.
4. ``speed``: every kept model and the dense one timed at batch 64 (throughput) and batch 1
   (latency), interleaved rounds; and whether a latency budget of half the batch-1 time can be
   met at all (the batch-1 table's reach).

    nohup python benchmarks/latency_compare.py run --table runs/latency/fmnist_b64/table.json \\
        --table-b1 runs/latency/fmnist_b1/table.json > runs/latency_compare.log 2>&1 &
    python benchmarks/latency_compare.py report --out docs/latency_compare

The page is :func:`page` of docs/latency_compare.json; its hand-written reading is kept between
the page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import pages  # noqa: E402

from vitprune import fsutil, load  # noqa: E402
from vitprune.config import SearchSettings  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.data import load_splits  # noqa: E402
from vitprune.errors import BudgetError  # noqa: E402
from vitprune.latency import LatencyTable  # noqa: E402
from vitprune.pipeline import (  # noqa: E402
    calibration_batches,
    check_budget,
    finetune,
    policy_search,
    score,
    test_metrics,
)
from vitprune.plan import PrunePlan, planned_shape  # noqa: E402
from vitprune.search.space import SearchSpace  # noqa: E402
from vitprune.speed import Timer  # noqa: E402
from vitprune.surgery import prune  # noqa: E402
from vitprune.train import FINETUNE  # noqa: E402

BASELINE = ROOT / "vitprune" / "assets" / "fmnist_vit_d12"
METHODS = ("vitprune, latency budget", "vitprune, MACs budget", "torch-pruning (uniform)")


TOLERANCE = 0.01  # measured fraction of the dense time counted as equal speed
MAX_STEPS = 5


def next_budget(tried: list[dict], target: float) -> float | None:
    """The next MACs budget to try: interpolated within a pair of budgets adjacent in budget
    whose plans' measured fractions bracket the target (the nearest such pair first), or a step
    beyond the extreme plan when none brackets it; None when every candidate was tried."""
    pts = sorted(tried, key=lambda t: t["budget"])
    cands = []
    for lo, hi in zip(pts, pts[1:]):
        fl, fh = lo["fraction"], hi["fraction"]
        if min(fl, fh) < target <= max(fl, fh):
            w = (target - fl) / (fh - fl)
            cands.append(lo["budget"] + w * (hi["budget"] - lo["budget"]))
    if not cands:  # all too fast or all too slow: scale the nearest plan's budget
        t = min(tried, key=lambda t: abs(t["fraction"] - target))
        cands.append(t["budget"] * target / t["fraction"])
    for b in cands:
        b = round(b, 4)
        if all(abs(b - t["budget"]) >= 1e-3 for t in tried):
            return b
    return None


class Study:
    def __init__(self, args):
        self.args, self.runs = args, args.runs
        self.runs.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(args.threads)
        self.splits = load_splits("fashion-mnist", args.data_dir)
        self.dense = load(BASELINE).eval()
        self.shape = __import__("vitprune.adapters", fromlist=["vit_shape"]).vit_shape(self.dense)
        self.hsic = self._scores()

    def _scores(self):
        path = self.runs / "scores_hsic.json"
        if path.exists():
            from vitprune.scoring import load_scores

            return load_scores(path)[0]
        return score(self.dense, self.splits, "hsic", n_images=256, out=path)

    def settings(self, **kw) -> SearchSettings:
        # anchors off: the recorded runs predate them (docs/search_anchors.md)
        return replace(SearchSettings(), trials=self.args.trials, init=self.args.init,
                       anchors=False, **kw)

    # ---- plans ----------------------------------------------------------------------------
    def search(self, name: str, budget: str, settings: SearchSettings) -> PrunePlan:
        path = self.runs / "plans" / f"{name}.json"
        if path.exists():
            return PrunePlan.load(path)
        out = self.runs / "search" / name
        res = policy_search(self.dense, self.splits, budget, out, scores=self.hsic,
                            settings=settings, seed=0, progress=False,
                            resume=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        res.best_plan.save(path)
        return res.best_plan

    def tp(self, budget: float) -> PrunePlan:
        path = self.runs / "plans" / f"tp_{budget:.4f}.json"
        if path.exists():
            return PrunePlan.load(path)
        from peer_torch_pruning import tp_plan

        torch.manual_seed(0)
        batches = calibration_batches(self.splits, 640, batch_size=64)
        plan, _ = tp_plan(self.dense, budget, batches)
        path.parent.mkdir(parents=True, exist_ok=True)
        plan.save(path)
        return plan

    def fraction(self, plan: PrunePlan, batch: int = 64) -> float:
        """Measured time of the pruned model over the dense one's, interleaved."""
        x = torch.randn(batch, 1, 28, 28)
        d, p = Timer("cpu", 2, 7, "min").interleaved([self.dense, prune(self.dense, plan)], x,
                                                       rounds=5)
        return p / d

    def macs_kept(self, plan: PrunePlan) -> float:
        return macs(planned_shape(self.shape, plan)).total / macs(self.shape).total

    def match(self, make, budgets: list[float], target: float, name: str) -> dict:
        """Plans of ``make(budget)`` at ``budgets``, then one at the budget interpolated to the
        target measured fraction; the nearest one kept."""
        path = self.runs / f"match_{name}.json"
        tried = json.loads(path.read_text())["tried"] if path.exists() else []

        def attempt(b: float) -> bool:
            """Plan, time and record budget ``b``; False if it cannot be reached."""
            try:
                plan = make(b)
            except BudgetError as exc:
                print(f"{name} at {b}: {exc}", flush=True)
                return False
            tried.append({"budget": b, "fraction": self.fraction(plan),
                          "macs_kept": self.macs_kept(plan)})
            fsutil.write_json(path, {"tried": tried})
            return True

        done = {t["budget"] for t in tried}
        for b in budgets:
            if b not in done:
                attempt(b)
        # a searched plan's measured time is not monotone in its MACs budget: step until one
        # lands within TOLERANCE of the target, at most MAX_STEPS more
        for _ in range(MAX_STEPS):
            if min(abs(t["fraction"] - target) for t in tried) <= TOLERANCE:
                break
            b_star = next_budget(tried, target)
            if b_star is None or not attempt(b_star):
                break
        best = min(tried, key=lambda t: abs(t["fraction"] - target))
        res = {"tried": tried, "chosen": best}
        fsutil.write_json(path, res)
        return res

    # ---- fine-tuning ----------------------------------------------------------------------
    def finetune(self, method: str, plan: PrunePlan, seed: int) -> dict:
        slug = "".join(c if c.isalnum() else "_" for c in method)
        cell = self.runs / "finetune" / f"{slug}_s{seed}"
        if (cell / "result.json").exists():
            return json.loads((cell / "result.json").read_text())
        student = prune(self.dense, plan)
        before = test_metrics(student, self.splits)["test_top1"]
        cfg = replace(FINETUNE, epochs=self.args.epochs, augment=False, kd_alpha=0.5, seed=seed,
                      max_steps_per_epoch=self.args.max_steps)
        t0 = time.perf_counter()
        finetune(student, self.dense, self.splits, cfg, cell / "run", resume=True, progress=False)
        after = test_metrics(student, self.splits)
        res = {"method": method, "seed": seed, "test_top1_before": before,
               "test_top1": after["test_top1"], "macs": after["macs"], "params": after["params"],
               "finetune_s": round(time.perf_counter() - t0, 1)}
        fsutil.write_json(cell / "result.json", res)
        print(json.dumps(res), flush=True)
        return res


def cmd_run(args) -> int:
    st = Study(args)
    table = LatencyTable.load(args.table)
    print(f"[{time.strftime('%H:%M:%S')}] latency search at {args.budget}", flush=True)
    lat_plan = st.search(f"latency_{args.budget}", str(args.budget),
                         st.settings(budget_metric="latency", latency_table=str(args.table)))
    state_path = args.runs / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if "target" not in state:
        state = {"target": st.fraction(lat_plan), "table": table.describe(),
                 "predicted_fraction": table.predict(planned_shape(st.shape, lat_plan))
                 / table.dense_ms(st.shape),
                 "latency_plan_macs_kept": st.macs_kept(lat_plan)}
        fsutil.write_json(state_path, state)
    target = state["target"]
    print(f"[{time.strftime('%H:%M:%S')}] target measured fraction {target:.3f}", flush=True)

    def macs_plan(b: float) -> PrunePlan:
        check_budget(st.dense, b, st.settings())
        return st.search(f"macs_{b:.4f}", str(b), st.settings())

    m = st.match(macs_plan, args.macs_budgets, target, "macs")
    t = st.match(st.tp, args.tp_budgets, target, "tp")
    plans = {METHODS[0]: lat_plan,
             METHODS[1]: macs_plan(m["chosen"]["budget"]),
             METHODS[2]: st.tp(t["chosen"]["budget"])}
    for seed in args.seeds:
        for method, plan in plans.items():
            st.finetune(method, plan, seed)
    speed(st, plans, args)
    return 0


def speed(st: Study, plans: dict, args) -> None:
    path = args.runs / "speed.json"
    if path.exists():
        return
    from vitprune.speed import THOROUGH, compare, timing

    models = {"dense": st.dense, **{k: prune(st.dense, p) for k, p in plans.items()}}
    out = {f"b{b}": compare(models, (1, 28, 28), b, **timing(b, THOROUGH)) for b in (64, 1)}
    reach = None
    if args.table_b1:
        t1 = LatencyTable.load(args.table_b1)
        space = SearchSpace(st.shape, head_bounds=(0, 0.9), neuron_bounds=(0, 0.9),
                            token_bounds=(0, 0.9), latency=t1)
        reach = {"cheapest_fraction": float(space.batch_cost(space.upper[None])[0])
                 / space.dense_cost, "table": t1.describe()}
        try:
            check_budget(st.dense, "0.5", st.settings(budget_metric="latency",
                                                       latency_table=str(args.table_b1)))
            reach["half_reachable"] = True
        except BudgetError as exc:
            reach["half_reachable"], reach["why"] = False, str(exc)
    fsutil.write_json(path, {"speed": out, "threads": args.threads, "batch1_reach": reach,
                             "macs_kept": {k: st.macs_kept(p) for k, p in plans.items()}})


def cmd_report(args) -> int:
    runs = args.runs
    state = json.loads((runs / "state.json").read_text())
    sp = json.loads((runs / "speed.json").read_text())
    res = [json.loads(p.read_text()) for p in sorted(runs.glob("finetune/*/result.json"))]
    m, t = (json.loads((runs / f"match_{n}.json").read_text()) for n in ("macs", "tp"))
    b64, b1 = sp["speed"]["b64"], sp["speed"]["b1"]
    rows = []
    for method in METHODS:
        accs = [r["test_top1"] for r in res if r["method"] == method]
        before = [r["test_top1_before"] for r in res if r["method"] == method]
        rows.append({"method": method, "test_top1": accs, "test_top1_before": before,
                     "mean": statistics.mean(accs) if accs else None,
                     "macs_kept": sp["macs_kept"][method],
                     "throughput_b64": b64[method]["throughput"],
                     "speedup_b64": b64[method]["throughput"] / b64["dense"]["throughput"],
                     "latency_b1_ms": b1[method]["latency_ms"],
                     "speedup_b1": b1["dense"]["latency_ms"] / b1[method]["latency_ms"]})
    record = {"state": state, "rows": rows, "match": {"macs": m, "tp": t}, "speed": sp,
              "budget": args.budget, "seeds": sorted({r["seed"] for r in res})}
    print(pages.publish(args.out, record, page))
    return 0


def page(record: dict) -> str:
    """The page's generated text, from ``docs/latency_compare.json`` alone."""
    state, sp, rows = record["state"], record["speed"], record["rows"]
    m, t = record["match"]["macs"], record["match"]["tp"]
    lines = [
        "# Latency budget against MACs budget and Torch-Pruning, at equal measured speed",
        "",
        "Made by `python benchmarks/latency_compare.py run ...` then `report` (figures in "
        f"`latency_compare.json`). Fashion-MNIST baseline (test top-1 90.02), CPU, "
        f"{sp['threads']} threads. vitprune's plan is searched under a latency budget of "
        f"{record['budget']} of the dense time on the batch-64 latency table ({state['table']}); "
        f"its measured time is {state['target']:.1%} of the dense model's (predicted "
        f"{state['predicted_fraction']:.1%}). The MACs-budget search (same settings) and "
        "Torch-Pruning's uniform plan are taken at the MACs budget whose plan's measured time "
        "is nearest that (budgets tried below). Each plan is fine-tuned alike (one epoch of "
        f"distillation, seeds {', '.join(map(str, record['seeds']))}; the plans are searched "
        "once, seed 0).",
        "",
        "| method | MACs kept | throughput b64 (speed-up) | latency b1 ms (speed-up) "
        "| test top-1 before FT | test top-1 after FT (mean [range]) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        accs = r["test_top1"]
        rng = f"{r['mean']:.2f} [{min(accs):.2f}-{max(accs):.2f}]" if accs else "-"
        bef = f"{statistics.mean(r['test_top1_before']):.2f}" if r["test_top1_before"] else "-"
        lines.append(f"| {r['method']} | {r['macs_kept']:.1%} | {r['throughput_b64']:.0f} img/s "
                     f"({r['speedup_b64']:.2f}x) | {r['latency_b1_ms']:.2f} "
                     f"({r['speedup_b1']:.2f}x) | {bef} | {rng} |")
    lines += ["", "Budgets tried to match the measured time (fraction of the dense time, b64):", ""]
    for name, mm in (("MACs search", m), ("Torch-Pruning", t)):
        tried = ", ".join(f"{x['budget']:.3f} -> {x['fraction']:.1%}" for x in
                          sorted(mm["tried"], key=lambda x: x["budget"]))
        lines.append(f"- {name}: {tried}; kept {mm['chosen']['budget']:.3f} "
                     f"({mm['chosen']['fraction']:.1%}).")
    reach = sp.get("batch1_reach")
    if reach:
        lines += ["", f"Batch 1: the cheapest plan of the search space (ratios to 0.9) is "
                      f"predicted at {reach['cheapest_fraction']:.1%} of the dense batch-1 time "
                      f"({reach['table']}); half the dense time is "
                      f"{'reachable' if reach['half_reachable'] else 'not reachable'}."]
    return "\n".join([*lines, "", "## Reading"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--runs", type=Path, default=Path("runs/latency_compare"))
        p.add_argument("--budget", type=float, default=0.5)
    run = sub.choices["run"]
    run.add_argument("--table", type=Path, required=True, help="batch-64 CPU latency table")
    run.add_argument("--table-b1", type=Path, help="batch-1 CPU latency table")
    run.add_argument("--data-dir", default=None)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--trials", type=int, default=50)
    run.add_argument("--init", type=int, default=20)
    run.add_argument("--epochs", type=int, default=1)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    run.add_argument("--max-steps", type=int, default=None, help="steps per epoch (smoke runs)")
    run.add_argument("--macs-budgets", type=float, nargs="+", default=[0.35, 0.45])
    run.add_argument("--tp-budgets", type=float, nargs="+", default=[0.5, 0.65])
    run.set_defaults(func=cmd_run)
    rep = sub.choices["report"]
    rep.add_argument("--out", type=Path, default=ROOT / "docs" / "latency_compare")
    rep.set_defaults(func=cmd_report)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
