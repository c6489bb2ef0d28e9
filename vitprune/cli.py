"""The ``vitprune`` command: parse arguments, call the library, print results. No logic here."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from .errors import VitpruneError


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a registered name (fmnist_vit_d12), a timm ViT name, or a saved model directory")
    p.add_argument("--checkpoint", help="weights for a model given by name (.safetensors or a state_dict)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "imagefolder", "synthetic"])
    p.add_argument("--data-dir", help="dataset directory (default for fashion-mnist: the Debian package's)")
    p.add_argument("--calib-size", type=int, help="images carved from train for scoring and search")
    p.add_argument("--img-size", type=int, default=224, help="image size for imagefolder data")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/calibration carve")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")


def _setup(args) -> str:
    """Threads and device; under torchrun also joins the process group (this rank's device)."""
    from . import dist

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return dist.init(device)


def _splits(args):
    from .data import load_splits

    return load_splits(args.data, args.data_dir, calib_size=args.calib_size,
                       img_size=args.img_size, seed=args.split_seed)


def cmd_train(args) -> dict:
    from .data import make_loader
    from .io import save
    from .train import TrainConfig, evaluate, fit

    device = _setup(args)
    splits = _splits(args)
    torch.manual_seed(args.seed)  # a model built by name: its initial weights follow the seed
    model, arch, plan = _model_for_data(args, splits)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, seed=args.seed,
                      augment=not args.no_augment, max_steps_per_epoch=args.max_steps_per_epoch)
    t0 = time.perf_counter()
    history = fit(model, splits, cfg, args.out, resume=args.resume, device=device,
                  progress=not args.quiet)
    wall = time.perf_counter() - t0
    test = evaluate(model, make_loader(splits.test, 256), device)
    meta = {"trained": {"command": "vitprune " + shlex.join(args.argv), "seed": args.seed,
                        "epochs": args.epochs, "data": splits.name, "test_top1": test["top1"],
                        "test_loss": test["loss"], "wall_seconds_this_run": round(wall, 1),
                        "threads": torch.get_num_threads(), "history": history}}
    if Path(args.model).is_dir():  # continued training: keep the record of how the input was made
        from .io.model_dir import read_config

        prior = read_config(args.model).get("meta", {})
        meta["lineage"] = prior.get("lineage", []) + ([prior["trained"]] if "trained" in prior else [])
    save(args.out, model, arch, plan=plan, meta=meta)
    return {"out": str(args.out), "test_top1": test["top1"], "test_loss": test["loss"],
            "epochs": len(history), "wall_seconds": round(wall, 1)}


def cmd_eval(args) -> dict:
    from .adapters import vit_shape
    from .cost import macs
    from .data import make_loader
    from .train import evaluate

    device = _setup(args)
    splits = _splits(args)
    model, _, _ = _model_for_data(args, splits, device)
    res = evaluate(model, make_loader(splits.test, args.batch_size), device)
    cost = macs(vit_shape(model))
    return {"model": args.model, "data": splits.name, "split": "test", "top1": res["top1"],
            "loss": res["loss"], "images": res["n"], "gmacs": cost.total / 1e9,
            "gmacs_blocks_only": cost.blocks / 1e9,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "macs_convention": "multiply-accumulates per image, patch embedding and classifier included"}


def _model_and_plan(args, device: str = "cpu"):
    """The model named by --model (+ --checkpoint, --img-size overrides) and the --plan, if any."""
    from .io import resolve_model
    from .plan import PrunePlan

    over = {}
    if getattr(args, "img_size", None) and not Path(args.model).is_dir():
        over["img_size"] = args.img_size
    model, arch, saved_plan = resolve_model(args.model, args.checkpoint, device=device, **over)
    plan = PrunePlan.load(args.plan) if getattr(args, "plan", None) else None
    return model, arch, saved_plan, plan


def _model_for_data(args, splits, device: str = "cpu"):
    """--model (+ --checkpoint) built to fit the data's classes, channels and image size."""
    from .io import resolve_for_data

    return resolve_for_data(args.model, splits, args.checkpoint, device=device)


def _dense_for_data(args, verb: str):
    """(dense model, splits) for commands that work on an unpruned model."""
    _setup(args)
    splits = _splits(args)
    model, _, plan = _model_for_data(args, splits)
    if plan is not None:
        from .errors import PlanError

        raise PlanError(f"{args.model} is already pruned; {verb} its dense base model instead")
    return model, splits


def cmd_score(args) -> dict:
    from .pipeline import score

    model, splits = _dense_for_data(args, "score")
    scores = score(model, splits, args.criterion, n_images=args.images, out=args.out)
    return {"out": args.out, "criterion": args.criterion, "images": args.images,
            "blocks": len(scores), "heads_per_block": [len(s.heads) for s in scores]}


def cmd_search(args) -> dict:
    from .pipeline import parse_budget, policy_search

    model, splits = _dense_for_data(args, "search")
    res = policy_search(model, splits, parse_budget(args.budget), args.out, method=args.method,
                        n_trials=args.trials, n_init=args.init, seed=args.seed,
                        scores=args.scores, criterion=args.criterion,
                        calib_images=args.calib_images, bounds=(0.0, args.max_ratio),
                        resume=args.resume, progress=not args.quiet, metric=args.objective,
                        token_blocks=args.token_blocks, dims=args.dims)
    return {"out": str(args.out), "method": args.method, "trials": len(res.trials),
            "best_calib_top1": res.best.value, "best_trial": res.best.trial,
            "best_plan": str(Path(args.out) / "best_plan.json")}


def _add_dims(p: argparse.ArgumentParser) -> None:
    from .search.config import DIMS

    p.add_argument("--dims", nargs="+", default=list(DIMS), choices=DIMS,
                   help="dimensions to prune (default: all three; e.g. --dims heads neurons)")


def _recipe(p: argparse.ArgumentParser, epochs: int) -> None:
    """Fine-tuning options shared by finetune and compress (defaults: CompressConfig's)."""
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (all processes)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of distillation vs labels")
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--kd-hard", action="store_true", help="hard distillation (teacher's arg-max)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                   help="random shifts / flips while fine-tuning (default: off; see docs/compress.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke tests)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


def cmd_finetune(args) -> dict:
    from . import dist
    from .data import make_loader
    from .io import resolve_model, save
    from .pipeline import finetune
    from .train import TrainConfig, evaluate

    device = _setup(args)
    splits = _splits(args)
    student, arch, plan = resolve_model(args.student)
    teacher_args = argparse.Namespace(model=args.teacher, checkpoint=args.teacher_checkpoint)
    teacher, _, _ = _model_for_data(teacher_args, splits)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      warmup_epochs=args.warmup_epochs, seed=args.seed, augment=args.augment,
                      kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
                      kd_hard=args.kd_hard, max_steps_per_epoch=args.max_steps_per_epoch)
    t0 = time.perf_counter()
    history = finetune(student, teacher, splits, cfg, args.out, resume=args.resume, device=device,
                       progress=not args.quiet)
    wall = time.perf_counter() - t0
    test = evaluate(student, make_loader(splits.test, 256, rank=dist.rank(), world=dist.world()),
                    device)
    if dist.is_main():
        save(args.out, student.cpu(), arch, plan=plan, meta={"finetuned": {
            "command": "vitprune " + shlex.join(args.argv), "teacher": args.teacher,
            "student": args.student, "history": history, "test_top1": test["top1"],
            "wall_seconds_this_run": round(wall, 1)}})
    return {"out": str(args.out), "test_top1": test["top1"], "epochs": len(history),
            "final_train_loss": history[-1]["train_loss"], "wall_seconds": round(wall, 1)}


def cmd_compress(args) -> dict:
    from .compression import compress

    device = _setup(args)
    res = compress(args.model, _splits(args), args.budget, args.out, checkpoint=args.checkpoint,
                   device=device, progress=not args.quiet,
                   criterion=args.criterion, method=args.method, trials=args.trials,
                   init=args.init, calib_images=args.calib_images, max_ratio=args.max_ratio,
                   dims=tuple(args.dims),
                   seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   warmup_epochs=args.warmup_epochs, augment=args.augment,
                   kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
                   kd_hard=args.kd_hard, max_steps_per_epoch=args.max_steps_per_epoch)
    rows = res.metrics["rows"]
    return {"out": str(res.out), "model": str(res.model_dir), "report": str(res.report),
            "macs_kept": rows["finetuned"]["macs"] / rows["dense"]["macs"],
            "test_top1_dense": rows["dense"]["test_top1"],
            "test_top1_pruned": rows["pruned"]["test_top1"],
            "test_top1_finetuned": rows["finetuned"]["test_top1"]}


def cmd_prune(args) -> dict:
    from .adapters import vit_shape
    from .cost import macs
    from .io import save
    from .surgery import prune

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        from .errors import OutputError

        raise OutputError(f"{out} is not empty; choose another --out or pass --overwrite")
    model, arch, saved_plan, plan = _model_and_plan(args)
    if saved_plan is not None:
        from .errors import PlanError

        raise PlanError(f"{args.model} is already pruned; prune its dense base model instead")
    pruned = prune(model, plan)  # validates the plan against the model
    save(out, pruned, arch, plan=plan.to_dict(), meta={"pruned_from": args.model,
                                                       "checkpoint": args.checkpoint})
    dense, small = macs(vit_shape(model)).total, macs(vit_shape(pruned)).total
    return {"out": str(out), "gmacs_dense": dense / 1e9, "gmacs_pruned": small / 1e9,
            "macs_kept": small / dense,
            "params_m_pruned": sum(p.numel() for p in pruned.parameters()) / 1e6}


def cmd_cost(args) -> dict:
    from .adapters import vit_shape
    from .cost import macs, params
    from .plan import planned_shape

    model, _, _, plan = _model_and_plan(args)
    shape = vit_shape(model)
    if plan is not None:
        plan.validate(shape)
        shape = planned_shape(shape, plan)
    c = macs(shape)
    return {"model": args.model, "plan": args.plan, "gmacs": c.total / 1e9,
            "gmacs_blocks_only": c.blocks / 1e9, "gmacs_attention": c.attention / 1e9,
            "gmacs_mlp": c.mlp / 1e9, "params_m": params(shape) / 1e6,
            "macs_convention": "multiply-accumulates per image, patch embedding and classifier included"}


def cmd_bench(args) -> dict:
    from .adapters import vit_shape
    from .cost import macs
    from .speed import measure
    from .surgery import prune

    device = _setup(args)
    model, _, _, plan = _model_and_plan(args)
    if plan is not None:
        model = prune(model, plan)  # validates the plan against the model
    pe = model.patch_embed
    shape = (pe.proj.in_channels, *pe.img_size)
    res = measure(model, shape, args.batch, warmup=args.warmup, repeats=args.repeats,
                  threads=args.threads or torch.get_num_threads(), device=device)
    return {"model": args.model, "plan": args.plan, "device": device,
            "gmacs": macs(vit_shape(model)).total / 1e9, **res}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vitprune", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train a baseline ViT")
    _add_model(p), _add_data(p), _add_common(p)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="no random shifts / flips")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (smoke tests)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test top-1, loss, MACs and parameters of a model")
    _add_model(p), _add_data(p), _add_common(p)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="score every head and MLP neuron with a criterion")
    _add_model(p), _add_data(p), _add_common(p)
    p.add_argument("--criterion", default="hsic",
                   choices=["hsic", "magnitude", "activation", "taylor", "random"])
    p.add_argument("--images", type=int, default=256, help="calibration images used")
    p.add_argument("--out", required=True, help="scores JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("search", help="search per-block prune ratios under a MACs budget")
    _add_model(p), _add_data(p), _add_common(p)
    p.add_argument("--budget", required=True, help="0.6 keeps 60%% of the dense MACs; 2.7G = 2.7 GMACs")
    p.add_argument("--method", default="gp-ei", choices=["gp-ei", "random", "uniform"])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--init", type=int, default=20, help="random feasible policies before the GP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--criterion", default="hsic", help="ranks components when --scores is not given")
    p.add_argument("--scores", help="scores JSON from `vitprune score`")
    p.add_argument("--calib-images", type=int, default=2000, help="calibration images per evaluation")
    p.add_argument("--max-ratio", type=float, default=0.5, help="upper bound of every prune ratio")
    p.add_argument("--token-blocks", type=int, nargs="*", metavar="B",
                   help="0-indexed blocks with a token-selection stage (default: spread over the "
                        "depth, e.g. 3 6 9 of 12); give none to search heads and neurons only")
    _add_dims(p)
    p.add_argument("--objective", default="top1", choices=["top1", "kl"],
                   help="masked calibration top-1, or minus the KL divergence from the dense model")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue the trials in --out")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("finetune", help="fine-tune a pruned model by distillation from a teacher")
    p.add_argument("--student", required=True, help="a pruned model directory")
    p.add_argument("--teacher", required=True, help="the dense model: a saved directory or a name")
    p.add_argument("--teacher-checkpoint", help="weights for a teacher given by name")
    _add_data(p), _add_common(p), _recipe(p, epochs=8)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning in --out")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("compress", help="score, search, prune, fine-tune, evaluate and report")
    _add_model(p), _add_data(p), _add_common(p)
    p.add_argument("--budget", required=True, help="0.6 keeps 60%% of the dense MACs; 2.7G = 2.7 GMACs")
    p.add_argument("--criterion", default="hsic",
                   choices=["hsic", "magnitude", "activation", "taylor", "random"])
    p.add_argument("--method", default="gp-ei", choices=["gp-ei", "random", "uniform"])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--init", type=int, default=20)
    p.add_argument("--calib-images", type=int, default=2000)
    p.add_argument("--max-ratio", type=float, default=0.5)
    _add_dims(p)
    _recipe(p, epochs=8)
    p.add_argument("--out", required=True, type=Path,
                   help="run directory; the same command again resumes an interrupted run")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("prune", help="apply a plan: write a physically smaller model directory")
    _add_model(p)
    p.add_argument("--plan", required=True, help="plan JSON (kept heads/neurons per block, token stages)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("cost", help="MACs and parameters of a model, or of a plan applied to it")
    _add_model(p)
    p.add_argument("--plan")
    p.add_argument("--img-size", type=int, help="input size for a model given by name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("bench", help="measured latency and throughput (warm-up, median of repeats)")
    _add_model(p), _add_common(p)
    p.add_argument("--plan")
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return ap


def _print(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:>20}: {v:.4g}" if isinstance(v, float) else f"{k:>20}: {v}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        res = args.func(args)
    except VitpruneError as exc:
        print(f"vitprune: error: {exc}", file=sys.stderr)
        return 2
    from . import dist

    if dist.is_main():  # under torchrun, one process speaks
        _print(res, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
