"""docs/evidence.md and docs/evidence.json: vitprune against its peers at equal measured speed,
with a dense reference given the same fine-tuning, over seeds, with paired intervals.

One resumable command runs the study in phases; each phase's outputs stay under ``--runs`` and a
re-run continues where it stopped:

1. ``plans`` (one process, nothing else on the cores: it times models): per model and target
   fraction of the dense time at batch 64 (0.6 and 0.4), per seed:
   * **vitprune**: GP-EI under a latency budget on the model's batch-64 latency table (built
     first, quiet cores), three dimensions, vitprune's default search settings (ratios to 0.9);
     **vitprune without tokens** (heads and neurons); **tokens only** (EViT-style selection);
     the anchored search (the default) and the anchored search with ``--choice distilled``
     (its 5 best trials and anchors distilled briefly, the best kept: docs/ft_proxy.md), that
     one again with group Taylor choosing the units (``--criterion group-taylor``), all at the
     speed vitprune's plan measures;
     a budget a space cannot reach is recorded as such;
   * every other method is then matched to vitprune's *measured* speed-up (bisection on its own
     knob, each candidate timed in turn with the dense model, :mod:`equal_speed`):
     **Torch-Pruning** in its best configuration (mode and head ratio chosen on the calibration
     split at vitprune's MACs, then its neuron ratio stepped) and **ToMe** (its merge count per
     block stepped). Both are deterministic given their target, so they are matched once, to
     vitprune's first seed, and every seed fine-tunes that plan;
   * **dense reference**: nothing pruned.
2. ``finetune`` (any number of one-thread processes; a file lock per cell): every plan gets the
   same fine-tuning (distillation from the dense model; the reference distils from its own
   copy); per-image test predictions are kept beside each cell's ``result.json``. ToMe is also
   kept training-free.
3. ``time`` (quiet cores): every planned model against the dense one, batch 1 and 64, a
   model, target and seed's models in one pass once all are planned, 21 rounds of each in
   turn (on this shared 2-core machine one model's time varies 5-9% from round to round, and
   medians over ten rounds still move 2-6%: the same ToMe model timed twice in one pass
   measured 1.61x and 1.66x). Speed does not depend on the weights: each model is rebuilt
   from its plan, so a study carried between machines needs only its cells' small files, and
   ``time`` may run before ``finetune``, while the cores are still quiet.
4. ``report``: the page, with each row's paired 95% interval against vitprune and the reference.

    python benchmarks/evidence.py plans --runs runs/evidence                 # quiet cores
    (the settings, e.g. --epochs 2 --seeds 0 1 2, are given to ``plans``; the later phases
    read them from the study's ``study.json``)
    python benchmarks/evidence.py time --runs runs/evidence                  # quiet cores
    nohup python benchmarks/evidence.py finetune --runs runs/evidence &      # x2, one thread each
    python benchmarks/evidence.py report --runs runs/evidence                # docs/evidence.*

``--smoke`` runs the same code on a tiny model and synthetic data in a minute (the test's path).

``--device`` (given to ``plans``, a setting of the study like the others: the later phases run
where the study was planned) puts the whole study on one device: the dense models, the latency
table and every timing, the searches, the peers' pruning, fine-tuning and the test predictions.
The committed study runs on the CPU (the default), and its speeds are CPU speeds. On a GPU
(``--device cuda``; the GPU suite's ``evidence`` part runs it there) every timing is float32
with TF32 matmuls, as the latency table is measured, and ``--data-dir`` names where the
Fashion-MNIST files are when the machine has no Debian package.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402
from equal_speed import counted_speedup, group_speedup, match_speedup, speedup  # noqa: E402
from results import test_predictions  # noqa: E402
from stats import correct, paired_bootstrap, wording  # noqa: E402

from vitprune import devices, fsutil  # noqa: E402
from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.config import SearchSettings  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.data import load_splits, make_loader  # noqa: E402
from vitprune.errors import BudgetError, VitpruneError  # noqa: E402
from vitprune.pipeline import (  # noqa: E402
    MaskedAccuracy,
    calibration_batches,
    finetune,
    load_dense,
    policy_search,
    scored,
    test_metrics,
)
from vitprune.plan import PrunePlan, planned_shape  # noqa: E402
from vitprune.profile import build_table  # noqa: E402
from vitprune.scoring import SCORE_IMAGES  # noqa: E402
from vitprune.surgery import prune  # noqa: E402
from vitprune.train import EVAL_BATCH, FINETUNE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"t197": "vitprune/assets/fmnist_vit_t197", "d12": "vitprune/assets/fmnist_vit_d12"}
TARGETS = (0.6, 0.4)  # fraction of the dense model's measured time at batch 64
BATCH = 64
TIME_ROUNDS = 21  # phase 3's rounds per pass (medians over them)


class Unreachable(Exception):
    """A method cannot reach the cell's time (its search space or knob stops short)."""


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # vitprune | tp | tome | tome-ft | dense
    dims: tuple[str, ...] = ("heads", "neurons", "tokens")
    max_ratio: float | None = None  # None: vitprune's default
    anchors: bool = False  # vitprune: the search's initial population starts with uniform plans
    choice: str = "best"  # vitprune: the final plan, the best trial or the best after distilling
    criterion: str = "hsic"  # vitprune: the ranking that chooses which heads and neurons stay


# vitprune's default search (anchors on, chosen on calibration: docs/search_anchors.md);
# the row "vitprune" is the plain search (--no-anchors), searched first
ANCHORED = "vitprune, anchored search"
# the anchored search choosing its plan by a short distillation (--choice distilled)
DISTILLED = "vitprune, distilled choice"
# the distilled choice with group Taylor choosing the heads and neurons (the criterion that
# recovered within noise of the best at both the peer's shape and vitprune's: docs/ft_proxy.md)
GROUP = "vitprune, group Taylor"
OURS = ("vitprune", ANCHORED, DISTILLED, GROUP)  # the rows the goal is judged for
METHODS = (
    Method("vitprune", "vitprune"),
    # searched at the speed vitprune's plan measures (so at equal speed with every row)
    Method(ANCHORED, "vitprune", anchors=True),
    Method(DISTILLED, "vitprune", anchors=True, choice="distilled"),
    Method(GROUP, "vitprune", anchors=True, choice="distilled", criterion="group-taylor"),
    Method("vitprune without tokens", "vitprune", dims=("heads", "neurons")),
    Method("tokens only", "vitprune", dims=("tokens",), max_ratio=0.9),
    Method("Torch-Pruning (best configuration)", "tp", dims=("heads", "neurons")),
    Method("ToMe, training-free", "tome", dims=("tokens",)),
    Method("ToMe, fine-tuned", "tome-ft", dims=("tokens",)),
    Method("dense reference", "dense", dims=()),
)
BY_NAME = {m.name: m for m in METHODS}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


class Study:
    """One study directory: its settings (``study.json``, written once), the dense models and
    the cells ``<model>/<target>/<method>/s<seed>/``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.runs = args, args.runs
        self.runs.mkdir(parents=True, exist_ok=True)
        settings = {k: getattr(args, k) for k in ("models", "targets", "seeds", "epochs",
                                                  "max_steps", "trials", "init", "calib_images",
                                                  "smoke")}
        if args.kd_features:  # the main study's settings stay as they were
            settings["kd_features"] = args.kd_features
        # checked (a device this machine lacks is refused) before anything is written
        asked = None if args.device is None else devices.resolve(args.device)
        if asked not in (None, "cpu"):  # a CPU study's settings stay as they were
            settings["device"] = asked
        path = self.runs / "study.json"
        if path.exists() and args.phase != "plans":  # the later phases run the study's settings
            settings = json.loads(path.read_text())
            args.smoke = settings["smoke"]
            if asked is not None and asked != settings.get("device", "cpu"):
                raise SystemExit(f"{self.runs} is a study planned on "
                                 f"{settings.get('device', 'cpu')}: its phases run there (leave "
                                 "--device out, or plan another --runs on this device)")
        self.device = devices.setup(settings.get("device", "cpu"), args.threads)
        if path.exists():
            mine = json.loads(path.read_text())
            if mine != settings:
                raise SystemExit(f"{self.runs} holds a study with other settings ({mine}); use "
                                 "another --runs or the same settings")
        else:
            fsutil.write_json(path, settings)
        self.settings = settings
        self._splits, self._dense = None, {}

    @property
    def splits(self):
        if self._splits is None:
            self._splits = (load_splits("synthetic", calib_size=64) if self.args.smoke
                            else load_splits("fashion-mnist", self.args.data_dir,
                                             calib_size=2000))
        return self._splits

    def dense(self, model: str) -> torch.nn.Module:
        if model not in self._dense:
            path = "fmnist_vit_tiny" if self.args.smoke else MODELS[model]
            torch.manual_seed(0)
            self._dense[model] = load_dense(path, self.splits, device=self.device,
                                            verb="benchmark")[0].eval()
        return self._dense[model]

    def cell(self, model: str, target: float, method: Method, seed: int) -> Path:
        t = "dense" if method.kind == "dense" else f"t{target}"
        return self.runs / model / t / slug(method.name) / f"s{seed}"

    def plan_source(self, model: str, target: float, method: Method, seed: int) -> Path:
        """The cell whose plan files ``method``'s cell uses: its own, except fine-tuned ToMe,
        which reuses the training-free cell's r."""
        if method.kind == "tome-ft":
            return self.cell(model, target, BY_NAME["ToMe, training-free"],
                             self.settings["seeds"][0])
        return self.cell(model, target, method, seed)

    def cells(self) -> list[tuple[str, float, Method, int]]:
        """The study's cells, or those ``--only`` and ``--rows`` name (a part of the study a
        sitting runs)."""
        only = [tuple(o.split(":")) for o in (self.args.only or [])]
        out = []
        for model in self.settings["models"]:
            for seed in self.settings["seeds"]:
                for target in self.settings["targets"]:
                    if only and not any(o[0] == model and (len(o) == 1 or float(o[1]) == target)
                                        for o in only):
                        continue
                    for m in METHODS:
                        if self.args.rows and slug(m.name) not in self.args.rows:
                            continue
                        if m.kind == "dense" and target != self.settings["targets"][0]:
                            continue  # the reference has no target: once a seed
                        if m.kind == "tome" and seed != self.settings["seeds"][0]:
                            continue  # training-free: no seed
                        out.append((model, target, m, seed))
        return out

    # ---- phase 1: plans matched to a measured speed ------------------------------------------
    def table(self, model: str) -> Path:
        path = self.runs / model / "table_b64.json"
        if not path.exists():
            if self.args.smoke:  # a table whose times follow the work: timing a tiny model
                sys.path.insert(0, str(ROOT))  # at a tiny batch is all overhead
                from tests.helpers import synthetic_table

                t = synthetic_table(vit_shape(self.dense(model)))
            else:
                t = build_table(self.dense(model), batch=BATCH, threads=self.args.threads,
                                device=self.device, progress=False)
            fsutil.write_json(path, t.to_dict())
        return path

    def timed(self, a: torch.nn.Module, b: torch.nn.Module) -> float:
        """Measured speed-up of ``b`` over ``a`` at the study's batch."""
        if self.args.smoke:  # counted, not timed: the smoke's logic must not hang on noise
            return counted_speedup(a, b)
        return speedup(a, b, batch=BATCH, rounds=5, reps=3, device=self.device)

    def plan_cell(self, model: str, target: float, m: Method, seed: int) -> None:
        cell = self.cell(model, target, m, seed)
        if (cell / "plan_info.json").exists() or m.kind == "tome-ft":
            return  # done (fine-tuned ToMe reuses the training-free cell's r)
        first = self.settings["seeds"][0]
        if m.kind == "tp" and seed != first:  # deterministic given the target: planned once
            return _copy_plan(self.cell(model, target, m, first), cell)
        cell.mkdir(parents=True, exist_ok=True)
        dense, t0 = self.dense(model), time.perf_counter()
        info: dict = {"method": m.name, "model": model, "target": target, "seed": seed}
        try:
            if m.kind == "dense":
                plan = PrunePlan.dense(vit_shape(dense))
            elif m.kind == "vitprune":
                plan = self._search(model, target, m, seed, cell, info)
            else:  # matched to vitprune's measured speed-up at this target and seed
                plan = self._peer(model, target, m, seed, info)
        except Unreachable as exc:  # the method cannot reach that time: a result too
            info["unreachable"] = str(exc)
            plan = None
        else:
            if plan is not None:
                plan.save(cell / "plan.json")
            if m.kind != "dense":
                info["speedup_b64_at_plan"] = self.timed(
                    dense, self._model(m, dense, cell, info, plan))
        info["plan_seconds"] = round(time.perf_counter() - t0, 1)
        fsutil.write_json(cell / "plan_info.json", info)
        print(json.dumps(info), flush=True)

    def _search(self, model: str, target: float, m: Method, seed: int, cell: Path,
                info: dict) -> PrunePlan:
        """vitprune's plan: GP-EI under the latency budget, its default settings (the anchored
        search at the fraction of the dense time vitprune's plan measured at this seed)."""
        budget = target
        if m.anchors:
            ref = self.cell(model, target, METHODS[0], seed) / "plan_info.json"
            done = json.loads(ref.read_text()) if ref.exists() else {}
            if "speedup_b64_at_plan" not in done:
                raise Unreachable("vitprune's plan, the speed to match, is missing (unreachable "
                                  "at this target)")
            budget = min(1.0, 1 / done["speedup_b64_at_plan"])  # a noisy timing can exceed 1
            info["budget_fraction"] = budget
        settings = replace(SearchSettings(), budget_metric="latency", anchors=m.anchors,
                           latency_table=str(self.table(model)), dims=m.dims,
                           trials=self.settings["trials"], init=self.settings["init"],
                           calib_images=self.settings["calib_images"], choice=m.choice,
                           choice_steps=2 if self.args.smoke else SearchSettings.choice_steps,
                           **({} if m.max_ratio is None else {"max_ratio": m.max_ratio}))
        # the method's criterion on the images the search scores on by default (for HSIC, the
        # very scores policy_search would compute itself)
        scores = scored(self.dense(model), self.splits, m.criterion,
                        n_images=min(SCORE_IMAGES, settings.calib_images))[0]
        info["criterion"] = m.criterion
        try:
            res = policy_search(self.dense(model), self.splits, budget, cell / "search",
                                scores=scores, settings=settings, seed=seed, progress=False,
                                resume=True)
        except BudgetError as exc:
            raise Unreachable(str(exc)) from None
        info["calib_top1_before"] = res.best.value
        return res.best_plan

    def _peer(self, model: str, target: float, m: Method, seed: int,
              info: dict) -> PrunePlan | None:
        """A peer's plan matched to vitprune's measured speed-up (None: ToMe, its r in info)."""
        dense = self.dense(model)
        ref = self.cell(model, target, METHODS[0], seed)
        if not (ref / "plan.json").exists():
            raise Unreachable("vitprune's plan, the speed to match, is missing (unreachable "
                              "at this target)")
        want = self.timed(dense, prune(dense, PrunePlan.load(ref / "plan.json")).eval())
        try:
            return self._match(m, dense, want, ref, info)
        except ValueError as exc:
            raise Unreachable(str(exc)) from None

    def _model(self, m: Method, dense, cell: Path, info: dict, plan: PrunePlan | None):
        if m.kind in ("tome", "tome-ft"):
            from peer_tome import apply_tome

            return apply_tome(dense, info["r"]).eval()
        return prune(dense, plan).eval()

    def _match(self, m: Method, dense, want: float, ref: Path, info: dict) -> PrunePlan | None:
        info["target_speedup_b64"] = want
        if m.kind == "tome":
            from peer_tome import apply_tome, r_schedule, tome_shape

            shape = vit_shape(dense)
            most = tome_shape(shape, [shape.num_patches] * len(shape.blocks))  # every pair merged
            floor = macs(most).total / macs(shape).total
            knob, got, _ = match_speedup(lambda x: apply_tome(dense, r_schedule(shape, 1 - x)),
                                         dense, want, batch=BATCH, lo=0.0,
                                         hi=1.0 - floor - 1e-6, measure=self.timed)
            info.update(r=r_schedule(shape, 1 - knob), knob=knob, matched_speedup=got)
            return None
        from peer_torch_pruning import best_configuration, plan_of, tp_prune

        vp = PrunePlan.load(ref / "plan.json")
        shape = vit_shape(dense)
        kept = macs(planned_shape(shape, vp)).total / macs(shape).total
        batches = calibration_batches(self.splits, 640 if not self.args.smoke else 32,
                                      batch_size=64 if not self.args.smoke else 16,
                                      device=self.device)
        calib = MaskedAccuracy(dense, calibration_batches(self.splits,
                                                          self.settings["calib_images"],
                                                          device=self.device))
        try:
            grid = {"modes": ("local", "global"), "head_ratios": (0.0,)} if self.args.smoke else {}
            _, best, tried = best_configuration(dense, kept, batches, calib, **grid)
        finally:
            calib.close()
        info.update(configuration=best, tried=tried, chosen_at_macs=kept)

        def build(r: float) -> torch.nn.Module:
            return prune(dense, plan_of(dense, tp_prune(dense, r, best["head_ratio"], batches,
                                                        mode=best["mode"]))).eval()

        knob, got, model = match_speedup(build, dense, want, batch=BATCH, lo=0.0, hi=0.95,
                                         measure=self.timed)
        info.update(neuron_ratio=knob, matched_speedup=got)
        return plan_of(dense, tp_prune(dense, knob, best["head_ratio"], batches,
                                       mode=best["mode"]))

    # ---- phase 2: the same fine-tuning for every cell ------------------------------------------
    def finetune_cell(self, model: str, target: float, m: Method, seed: int) -> None:
        cell = self.cell(model, target, m, seed)
        if (cell / "result.json").exists():
            return
        source = self.plan_source(model, target, m, seed)
        if not (source / "plan_info.json").exists():
            return  # its plan is not made yet (phase 1)
        cell.mkdir(parents=True, exist_ok=True)
        with open(cell / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process has it
            if (cell / "result.json").exists():
                return
            info = json.loads((source / "plan_info.json").read_text())
            if "unreachable" in info:
                fsutil.write_json(cell / "result.json", {"method": m.name, "model": model,
                                                         "target": target, "seed": seed,
                                                         "unreachable": info["unreachable"]})
                return
            plan = PrunePlan.load(source / "plan.json") if (source / "plan.json").exists() else None
            dense = self.dense(model)
            student = self._model(m, dense, cell, info, plan)
            before = test_metrics(student, self.splits)["test_top1"]
            history = []
            if m.kind != "tome":
                cfg = replace(FINETUNE, epochs=self.settings["epochs"], seed=seed,
                              max_steps_per_epoch=self.settings["max_steps"],
                              kd_features=self.settings.get("kd_features", 0.0))
                history = finetune(student, dense, self.splits, cfg, cell / "finetune",
                                   resume=True, device=self.device, progress=False)
            after = test_metrics(student, self.splits)
            np.save(cell / "test_pred.npy", test_predictions(student, self.splits))
            fsutil.write_json(cell / "result.json", {
                "method": m.name, "model": model, "target": target, "seed": seed,
                "macs": after["macs"], "macs_kept": after["macs"] / macs(vit_shape(dense)).total,
                "params": after["params"], "test_top1_before": before,
                "test_top1": after["test_top1"],
                "calib_top1_per_epoch": [h.calib_top1 for h in history],
                "finetune_seconds": round(sum(h.seconds for h in history), 1)})

    # ---- phase 3: measured speed of every finished model ---------------------------------------
    def time_group(self, model: str, target: float, seed: int, ms: list[Method]) -> None:
        """The untimed cells of one model, target and seed timed in one pass with the
        dense model (rounds of every model in turn: a drift in load hits them alike, so their
        speed-ups compare within the pass; timed one by one against dense, the same ToMe model
        measured 1.62-1.69x), once every one of them is planned. Speed does not depend on the
        weights: a planned cell is timed whether or not it is fine-tuned yet (so the
        quiet-cores phase can run before fine-tuning loads them)."""
        waiting = [m.name for m in ms
                   if not (self.plan_source(model, target, m, seed) / "plan_info.json").exists()]
        if waiting:  # timed later, all in one pass (or name the rows that exist with --rows)
            print(f"{model} at {target:.0%}, seed {seed}: not timed yet, not planned: "
                  f"{', '.join(waiting)}", file=sys.stderr)
            return
        dense, nets = self.dense(model), {}
        for m in ms:
            cell, source = self.cell(model, target, m, seed), self.plan_source(model, target, m, seed)
            if (cell / "speed.json").exists():
                continue
            info = json.loads((source / "plan_info.json").read_text())  # planned: checked above
            if "unreachable" in info:
                continue
            plan = PrunePlan.load(source / "plan.json") if (source / "plan.json").exists() else None
            nets[cell] = self._model(m, dense, cell, info, plan)
        if not nets:
            return
        out: dict[Path, dict] = {cell: {} for cell in nets}
        for batch in (1, BATCH):
            if self.args.smoke:
                got = {cell: counted_speedup(dense, net) for cell, net in nets.items()}
            else:
                got = group_speedup(dense, nets, batch=batch, rounds=TIME_ROUNDS,
                                    reps=3 if batch > 1 else 15, device=self.device)
            for cell, x in got.items():
                out[cell][f"speedup_b{batch}"] = x
        for cell, speeds in out.items():
            cell.mkdir(parents=True, exist_ok=True)
            fsutil.write_json(cell / "speed.json", {
                **speeds, "threads": torch.get_num_threads(), "timed_with": len(nets),
                **({} if self.device == "cpu" else {"device": self.device})})


def _copy_plan(src: Path, cell: Path) -> None:
    """``src``'s plan files into ``cell`` (nothing where ``src`` is not planned yet)."""
    if (src / "plan_info.json").exists():
        cell.mkdir(parents=True, exist_ok=True)
        for name in ("plan.json", "plan_info.json"):
            if (src / name).exists():
                fsutil.write_text(cell / name, (src / name).read_text())


def labels(splits) -> np.ndarray:
    return torch.cat([torch.as_tensor(y) for _, y in make_loader(splits.test, EVAL_BATCH)]).numpy()


# ---- phase 4: the page -----------------------------------------------------------------------
def _summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def _row(study: Study, model: str, target: float, m: Method, y: np.ndarray) -> dict | None:
    """One method's finished cells at one target: means and ranges over seeds, and its
    per-seed correctness (``_correct``) for the intervals; None where none has finished."""
    seeds = [s for s in study.settings["seeds"]
             if (study.cell(model, target, m, s) / "result.json").exists()]
    if not seeds:
        return None
    cells = [study.cell(model, target, m, s) for s in seeds]
    res = [json.loads((c / "result.json").read_text()) for c in cells]
    if any("unreachable" in r for r in res):
        return {"seeds": seeds, "unreachable": res[0]["unreachable"]}
    speed = [json.loads((c / "speed.json").read_text()) for c in cells
             if (c / "speed.json").exists()]
    return {"seeds": seeds, "macs_kept": _summary([r["macs_kept"] for r in res]),
            "test_top1_before": _summary([r["test_top1_before"] for r in res]),
            "test_top1": _summary([r["test_top1"] for r in res]),
            # the calibration images' top-1 after fine-tuning: what a recipe is chosen on
            **({"calib_top1": _summary([r["calib_top1_per_epoch"][-1] for r in res])}
               if all(r.get("calib_top1_per_epoch") for r in res) else {}),
            **({f"speedup_b{b}": _summary([sp[f"speedup_b{b}"] for sp in speed])
                for b in (1, BATCH)} if len(speed) == len(cells) else {}),
            "_correct": {s: correct(np.load(c / "test_pred.npy"), y)
                         for s, c in zip(seeds, cells)}}


def _paired(row: dict, ref: dict | None) -> dict | None:
    """The paired interval of ``row`` minus ``ref`` over the seeds both have."""
    if not ref or "_correct" not in row:
        return None
    both = [s for s in row["_correct"] if s in ref]
    if not both:
        return None
    return paired_bootstrap(np.stack([row["_correct"][s] for s in both]),
                            np.stack([ref[s] for s in both]))


def _intervals(rows: dict, ref: dict | None) -> None:
    """Each row's paired intervals against each of :data:`OURS` (``vs_vitprune``,
    ``vs_anchored``, ``vs_distilled``) and against the dense reference (``vs_dense``)."""
    for me in OURS:
        mine = rows.get(me, {}).get("_correct")
        for name, row in rows.items():
            if name != me and (iv := _paired(row, mine)):
                row[_vs(me)] = iv
    for name, row in rows.items():
        if name != "dense reference" and (iv := _paired(row, ref)):
            row["vs_dense"] = iv


def collect(study: Study) -> dict:
    """Every finished row, by model and target, with its paired intervals."""
    y = labels(study.splits)
    out = {"settings": study.settings, "models": {}}
    first = study.settings["targets"][0]
    for model in study.settings["models"]:
        ref = _row(study, model, first, BY_NAME["dense reference"], y) or {}
        per_target = {}
        for target in study.settings["targets"]:
            # the reference's row is copied per target: its intervals are that target's own
            rows = {m.name: r for m in METHODS
                    if (r := dict(ref) if m.kind == "dense" else _row(study, model, target, m, y))}
            if set(rows) <= {"dense reference"}:  # nothing at this target has finished yet
                continue
            _intervals(rows, ref.get("_correct"))
            per_target[str(target)] = rows
        for rows in per_target.values():
            for row in rows.values():
                row.pop("_correct", None)
        out["models"][model] = per_target
    return out


def _vs(me: str) -> str:
    """The key of a row's interval against one of :data:`OURS`."""
    return "vs_vitprune" if me == "vitprune" else "vs_" + me.split(", ")[1].split()[0]


GOAL_DENSE = 0.3  # points: vitprune's goal against the dense reference ...
GOAL_DENSE_AT = 0.6  # ... at this fraction of the dense time


def goal(rows: dict, target: float) -> list[str]:
    """The goal the page is measured against, per target, in words from the intervals:
    vitprune ahead of every peer by more than the paired interval, at every target, and
    within :data:`GOAL_DENSE` points of the dense reference at :data:`GOAL_DENSE_AT` of its
    time (at other targets the gap is stated, not judged)."""
    out = []
    for me in OURS:
        key, vp = _vs(me), rows.get(me, {})
        if not vp.get("vs_dense"):
            continue
        iv = vp["vs_dense"]
        met = iv["low"] >= -GOAL_DENSE
        if target != GOAL_DENSE_AT:
            verdict = (f" (no goal against the dense reference at this target; it is set at "
                       f"{GOAL_DENSE_AT:.0%})")
        else:
            verdict = (f": the goal (within {GOAL_DENSE} points) is "
                       + ("met" if met else f"not met, by {-GOAL_DENSE - iv['low']:.2f} points"))
        out.append(f"- {me} is {wording(iv, 'the dense reference')}{verdict}.")
        for name, row in rows.items():
            iv = row.get(key)
            if not iv or name == "dense reference" or name in OURS:
                continue
            verdict = (f"{me} ahead (goal met)" if iv["high"] < 0 else
                       f"{me} behind (goal not met)" if iv["low"] > 0 else
                       "tied: the interval holds zero (goal not met)")
            out.append(f"- {name} minus {me}: {iv['diff']:+.2f} points [{iv['low']:+.2f}, "
                       f"{iv['high']:+.2f}]: {verdict}.")
    for me in OURS[1:]:
        if (iv := rows.get(me, {}).get("vs_vitprune")):
            out.append(f"- {me} minus vitprune: {iv['diff']:+.2f} points [{iv['low']:+.2f}, "
                       f"{iv['high']:+.2f}].")
    for me, other in ((DISTILLED, ANCHORED), (GROUP, DISTILLED)):  # one setting changed
        if (iv := rows.get(me, {}).get(_vs(other))):
            out.append(f"- {me} minus {other}: {iv['diff']:+.2f} points "
                       f"[{iv['low']:+.2f}, {iv['high']:+.2f}].")
    return out


def page(r: dict) -> str:
    s = r["settings"]
    variant = f" ({r['variant']})" if r.get("variant") else ""
    lines = [f"# Evidence: vitprune against its peers at equal measured speed{variant}", "",
             "Generated by `benchmarks/evidence.py report` from "
             f"`{r.get('json', 'docs/evidence.json')}` (commands in "
             "the script's docstring). Per model and target (a fraction of the dense model's "
             f"measured time at batch 64, {s.get('device', 'cpu').upper()}), every method's "
             "model is matched to the speed-up "
             "vitprune's latency-budget plan measures; each is fine-tuned alike "
             f"({s['epochs']} epoch(s) of distillation from the dense model"
             + (f", {s['max_steps']} steps each" if s["max_steps"] else "")
             + (f", a feature term of weight {s['kd_features']} (the pooled features' cosine)"
                if s.get("kd_features") else "")
             + f"; seeds {', '.join(map(str, s['seeds']))}). Top-1 on the {r['test_images']:,} "
             "test images: "
             "mean (range over seeds); calibration top-1 after: on the calibration images "
             "(carved from the training images, never the test split), what a recipe is chosen "
             "on. Intervals: paired bootstrap over the test images, 95%, "
             "seeds averaged; difference in points.", ""]
    for model, targets in r["models"].items():
        for target, rows in targets.items():
            vp = rows.get("vitprune", {})
            sp = vp.get(f"speedup_b{BATCH}")
            anchored = ANCHORED in rows
            measured = (f" (asked; vitprune's plans measure {1 / sp['mean']:.0%} of it)"
                        if sp else "")
            lines += [f"## {model}, {float(target):.0%} of the dense time{measured}", "",
                      "| method | MACs kept | speed-up b1 | speed-up b64 | top-1 before | top-1 "
                      "after | calibration top-1 after | vs vitprune | vs dense reference |"
                      + (" vs anchored |" if anchored else ""),
                      "|---|---|---|---|---|---|---|---|---|" + ("---|" if anchored else "")]
            for name, row in rows.items():
                if "unreachable" in row:
                    lines.append(f"| {name} | cannot reach this speed ({row['unreachable']}) "
                                 "| | | | | | | |" + (" |" if anchored else ""))
                    continue

                def fmt(v: dict | None, pct: bool = False, x: bool = False) -> str:
                    if not v:
                        return "-"
                    f = ((lambda a: f"{100 * a:.1f}%") if pct else
                         (lambda a: f"{a:.2f}x") if x else (lambda a: f"{a:.2f}"))
                    return f(v["mean"]) + ("" if v["n"] == 1 else f" ({f(v['min'])}-{f(v['max'])})")

                def iv(d: dict | None) -> str:
                    return "-" if not d else f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"

                # a row whose seeds did not all finish says which did (training-free ToMe
                # has no seed)
                unseeded = name in BY_NAME and BY_NAME[name].kind == "tome"
                part = ("" if row["seeds"] == s["seeds"] or unseeded else
                        f" (seed{'s' * (len(row['seeds']) > 1)} "
                        f"{', '.join(map(str, row['seeds']))})")
                lines.append(f"| {name}{part} | {fmt(row['macs_kept'], pct=True)} | "
                             f"{fmt(row.get('speedup_b1'), x=True)} | "
                             f"{fmt(row.get(f'speedup_b{BATCH}'), x=True)} | "
                             f"{fmt(row['test_top1_before'])} | {fmt(row['test_top1'])} | "
                             f"{fmt(row.get('calib_top1'))} | "
                             f"{iv(row.get('vs_vitprune'))} | {iv(row.get('vs_dense'))} |"
                             + (f" {iv(row.get('vs_anchored'))} |" if anchored else ""))
            lines += ["", *goal(rows, float(target)), ""]
    lines += ["## Reading", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=("plans", "finetune", "time", "report"))
    ap.add_argument("--runs", type=Path, default=Path("runs/evidence"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--init", type=int, default=12)
    ap.add_argument("--calib-images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="default: 2 to time, 1 to train")
    ap.add_argument("--device", default=None,
                    help="plans: where the study runs, cpu (default) or cuda[:N]; the later "
                         "phases run where it was planned")
    ap.add_argument("--kd-features", type=float, default=0.0,
                    help="plans: the fine-tuning's feature-distillation weight (vitprune "
                         "finetune --kd-features; 0, the default: logits alone)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where the four Fashion-MNIST files are (default: the Debian "
                         "package's location)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model on synthetic data")
    ap.add_argument("--only", nargs="+", metavar="MODEL[:TARGET]",
                    help="plans|finetune|time: only these models (and targets) of the study")
    ap.add_argument("--rows", nargs="+", metavar="ROW", choices=[slug(m.name) for m in METHODS],
                    help="plans|finetune|time: only these rows (e.g. vitprune__group_taylor)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "evidence",
                    help="report: the page and JSON (without suffix)")
    ap.add_argument("--variant", help="report: what sets this study apart from the main one "
                                      "(in its page's title), e.g. '600 fine-tuning steps'")
    args = ap.parse_args(argv)
    args.threads = args.threads or (1 if args.phase == "finetune" else 2)
    for o in args.only or []:
        model, _, target = o.partition(":")
        if model not in MODELS or (target and float(target) not in args.targets):
            ap.error(f"--only {o}: not a model (and target) of the study")
    try:
        study = Study(args)  # checks the device and sets the threads
    except VitpruneError as exc:  # e.g. a device this machine lacks
        raise SystemExit(f"error: {exc}") from None
    if args.phase == "report":
        record = {"command": "python benchmarks/evidence.py plans|finetune|time|report --runs "
                             "RUNS", "test_images": len(study.splits.test), **collect(study)}
        if args.variant:  # a study beside the main one: its page says how it differs
            record.update(variant=args.variant, json=f"docs/{args.out.name}.json")
        pages.publish(args.out, record, page)
        return 0
    if args.phase == "time":  # a model, target and seed's cells in one pass
        groups: dict[tuple, list[Method]] = {}
        for model, target, m, seed in study.cells():
            groups.setdefault((model, target, seed), []).append(m)
        for (model, target, seed), ms in groups.items():
            study.time_group(model, target, seed, ms)
        return 0
    step = {"plans": study.plan_cell, "finetune": study.finetune_cell}[args.phase]
    for cell in study.cells():
        step(*cell)
    return 0


if __name__ == "__main__":
    sys.exit(main())
