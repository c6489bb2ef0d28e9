"""The commands other than ``compress``, as library functions: each claims its output (a run
directory, or for ``score`` a new file), does its work with the pipeline's stages and returns a
JSON-ready summary. The command line only parses arguments, calls these and prints.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from . import devices, dist, fsutil
from .adapters import data_config, input_shape, vit_shape
from .config import BenchSettings, ExportSettings, LatencyTableSettings, ScoreConfig, SearchSettings
from .cost import macs, token_counts
from .data import Splits
from .devices import DEFAULT as DEFAULT_DEVICE
from .errors import ConfigError, ModelError, OutputError, require, settings_of
from .io import resolve_for_data, resolve_model, save
from .io.export import export_onnx, require_onnx
from .io.model_dir import read_config
from .models import ArchSpec, ModelSource
from .pipeline import (
    check_budget,
    check_pair,
    check_training,
    finetune,
    finetune_for_model,
    fit_data,
    lineage,
    load_dense,
    model_id,
    policy_search,
    score,
    test_metrics,
)
from .plan import PrunePlan, planned_shape
from .rundir import BEST_PLAN, RunDir, check_inputs
from .runtime import check_runtime, runner
from .speed import measure
from .surgery import count_params, prune
from .train import TrainConfig, fit
from .train.loop import check_backbone_training

MACS_CONVENTION = "multiply-accumulates per image, patch embedding and classifier included"


def train(model: str | Path | ModelSource, splits: Splits, cfg: TrainConfig, out: str | Path, *,
          checkpoint: str | Path | None = None, resume: bool = False, device: str = DEFAULT_DEVICE,
          progress: bool = True, command: str = "") -> dict[str, Any]:
    """Train ``model`` (a name: built with seeded random weights; a directory: continued) and
    save it, with the record of how it was made, as the model directory ``out``."""
    device = devices.resolve(device)  # the CLI passes it resolved; the API may pass auto
    src = ModelSource.of(model, checkpoint)
    torch.manual_seed(cfg.seed)  # a model built by name: its initial weights follow the seed
    net, arch, plan = resolve_for_data(src, splits, device=device)
    splits = fit_data(net, splits, source=src.name)  # every check before the claim
    if not vit_shape(net).num_classes:
        check_backbone_training(cfg, has_teacher=False)  # refused: it has nothing to learn from
    check_training(cfg, splits)
    settings = {"model": model_id(src), "data": splits.name, "config": dataclasses.asdict(cfg)}
    defaults = {"config": dataclasses.asdict(TrainConfig())}  # fields added since a run began
    with RunDir.claim(out, "train", settings, inputs=src.inputs(), resume=resume,
                      defaults=defaults) as run:
        t0 = time.perf_counter()
        history = fit(net, splits, cfg, run.path, resume=resume, device=device, progress=progress)
        wall = time.perf_counter() - t0
        test = test_metrics(net, splits, device)
        meta = {"trained": {"command": command, "seed": cfg.seed, "epochs": cfg.epochs,
                            "data": splits.name, "test_top1": test["test_top1"],
                            "test_loss": test["test_loss"], "wall_seconds_this_run": round(wall, 1),
                            "threads": torch.get_num_threads(),
                            "history": [h.to_dict() for h in history]},
                "lineage": lineage(src)}
        if dist.is_main():
            save(run.path, net.cpu(), arch, plan=plan, meta=meta)
    return {"out": str(out), "test_top1": test["test_top1"], "test_loss": test["test_loss"],
            "epochs": len(history), "wall_seconds": round(wall, 1)}


def finetune_model(student: str | Path, teacher: str | Path | ModelSource, splits: Splits, cfg: TrainConfig,
                   out: str | Path, *, teacher_checkpoint: str | Path | None = None,
                   resume: bool = False, device: str = DEFAULT_DEVICE, progress: bool = True,
                   command: str = "") -> dict[str, Any]:
    """Fine-tune the saved model ``student`` by distillation from ``teacher``; save it as the
    model directory ``out``."""
    device = devices.resolve(device)  # the CLI passes it resolved; the API may pass auto
    net, arch, plan = resolve_model(str(student), device=device)
    teacher = ModelSource.of(teacher, teacher_checkpoint)
    dense, _ = load_dense(teacher, splits, device=device, verb="distil from")
    check_pair(net, dense)  # before the output is claimed
    require(cfg.kd_alpha > 0, "kd_alpha", "must be > 0: fine-tuning distils from the teacher")
    splits = fit_data(net, splits, source=str(student))
    cfg = finetune_for_model(cfg, net)  # a backbone: feature distillation
    check_training(cfg, splits)
    settings = {"student": model_id(student), "teacher": model_id(teacher),
                "data": splits.name, "config": dataclasses.asdict(cfg)}
    with RunDir.claim(out, "finetune", settings, inputs=[student, *teacher.inputs()],
                      resume=resume, defaults={"config": dataclasses.asdict(TrainConfig())}
                      ) as run:
        t0 = time.perf_counter()
        history = finetune(net, dense, splits, cfg, run.path, resume=resume, device=device,
                           progress=progress)
        wall = time.perf_counter() - t0
        test = test_metrics(net, splits, device, reference=dense)
        quality = {k: test[k] for k in ("test_top1", "test_fidelity", "test_knn_top1")
                   if k in test}
        if dist.is_main():
            save(run.path, net.cpu(), arch, plan=plan, meta={
                "finetuned": {"command": command, "teacher": teacher.id(),
                              "student": str(student),
                              "history": [h.to_dict() for h in history], **quality,
                              "wall_seconds_this_run": round(wall, 1)}})
    return {"out": str(out), **quality, "epochs": len(history),
            "final_train_loss": history[-1].train_loss, "wall_seconds": round(wall, 1)}


def search_plan(model: str | Path | ModelSource, splits: Splits, budget: str, out: str | Path, *,
                settings: SearchSettings, seed: int = 0, checkpoint: str | Path | None = None,
                scores: str | Path | None = None, score_config: ScoreConfig | None = None,
                resume: bool = False, progress: bool = True,
                device: str = DEFAULT_DEVICE) -> dict[str, Any]:
    """Search a plan for ``model`` under ``budget`` into the run directory ``out``; scoring
    and every evaluation run on ``device``."""
    device = devices.resolve(device)  # the CLI passes it resolved; the API may pass auto
    src = ModelSource.of(model, checkpoint)
    dense, _ = load_dense(src, splits, device=device, verb="search")
    splits = fit_data(dense, splits, source=src.name)
    check_budget(dense, budget, settings)
    if scores is not None:  # a bad file is refused before the run directory is claimed
        from .scoring import check_scores, load_scores

        check_scores(load_scores(scores)[0], vit_shape(dense))
    score_config = score_config or ScoreConfig()
    identity = {"model": model_id(src), "data": splits.name, "budget": str(budget),
                "seed": seed,  # trials may grow: a resumed search with more extends the same one
                **{k: v for k, v in dataclasses.asdict(settings).items() if k != "trials"},
                "scores": _file_id(scores) if scores else dataclasses.asdict(score_config)}
    with RunDir.claim(out, "search", identity, inputs=[*src.inputs(), scores],
                      resume=resume) as run:
        if scores is None:
            scores = score(dense, splits, score_config.criterion,
                           n_images=score_config.score_images)
        res = policy_search(dense, splits, budget, run.path, scores=scores, settings=settings,
                            seed=seed, resume=resume, progress=progress)
        run.mark_done("search")
    return {"out": str(out), "method": settings.method, "trials": len(res.trials),
            "best_value": res.best.value, "best_trial": res.best.trial,
            "macs_kept": res.best.macs_fraction, "best_plan": str(Path(out) / BEST_PLAN)}


def score_model(model: str | Path | ModelSource, splits: Splits, cfg: ScoreConfig, out: str | Path, *,
                checkpoint: str | Path | None = None, device: str = DEFAULT_DEVICE) -> dict[str, Any]:
    """Score every head and neuron of ``model`` on ``device``; write the scores to the new file
    ``out``."""
    device = devices.resolve(device)  # the CLI passes it resolved; the API may pass auto
    src = ModelSource.of(model, checkpoint)
    out = _new_file(out, src.inputs(), "score")
    dense, _ = load_dense(src, splits, device=device, verb="score")
    splits = fit_data(dense, splits, source=src.name)
    scores = score(dense, splits, cfg.criterion, n_images=cfg.score_images, out=out)
    return {"out": str(out), "criterion": cfg.criterion, "images": cfg.score_images,
            "blocks": len(scores), "heads_per_block": [len(s.heads) for s in scores]}


def prune_model(model: str | Path | ModelSource, plan_path: str | Path, out: str | Path, *,
                checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Apply the plan in ``plan_path`` to ``model``; save the smaller model as ``out``."""
    src = ModelSource.of(model, checkpoint)
    net, arch = load_dense(src, None, device="cpu", verb="prune")  # slicing is quick anywhere
    plan = PrunePlan.load(plan_path)
    small = prune(net, plan)  # validates the plan against the model, before anything is written
    identity = {"model": model_id(src), "plan": plan.to_dict()}
    with RunDir.claim(out, "prune", identity, inputs=[*src.inputs(), plan_path]) as run:
        save(run.path, small, arch, plan=plan, meta={"pruned_from": src.name,
                                                     "checkpoint": src.checkpoint,
                                                     "pretrained": src.pretrained})
        run.mark_done("prune")
    dense_macs, small_macs = macs(vit_shape(net)).total, macs(vit_shape(small)).total
    return {"out": str(out), "gmacs_dense": dense_macs / 1e9, "gmacs_pruned": small_macs / 1e9,
            "macs_kept": small_macs / dense_macs, "params_m_pruned": count_params(small) / 1e6}


def _new_file(out: str | Path, inputs: list, verb: str) -> Path:
    """``out`` as a file this command may create: new, not one of its ``inputs`` nor inside one,
    and writable; checked before any work (the final write is exclusive too)."""
    out = Path(out)
    if out.exists():
        raise OutputError(f"{out} exists; {verb} never writes over a file: choose a new --out")
    check_inputs(out, [Path(p) for p in inputs if p is not None])
    fsutil.check_writable(out)
    return out


def _file_id(path: str | Path) -> str:
    return "sha256:" + fsutil.sha256_file(path)


def eval_model(model: str | Path | ModelSource, splits: Splits, *,
               reference: str | Path | ModelSource | None = None,
               device: str = DEFAULT_DEVICE) -> dict[str, Any]:
    """Test top-1 and loss of ``model`` on ``splits`` (fitted to the model first), with its MACs
    and parameters.

    A model without a classifier (``num_classes=0``) has no top-1: its k-NN top-1 where the
    images have labels and, given a ``reference`` (the dense model it was pruned from), its
    feature fidelity to it on the test and calibration splits.
    """
    src = ModelSource.of(model)
    device = devices.resolve(device)
    net, _, _ = resolve_for_data(src, splits, device=device)
    splits = fit_data(net, splits, source=src.name)
    ref = None
    if reference is not None:
        ref_src = ModelSource.of(reference)
        ref, _, _ = resolve_for_data(ref_src, splits, device=device)
        check_pair(net, ref)
        if vit_shape(net).num_classes:
            raise ConfigError("reference", "measures a model without a classifier against its "
                              "dense model's features; a classifier is measured by its top-1: "
                              "leave --reference out")
    res = test_metrics(net, splits, device, reference=ref)
    cost = macs(vit_shape(net))
    quality = ({"top1": res["test_top1"], "loss": res["test_loss"]} if "test_top1" in res else
               {k.removeprefix("test_"): res[k] for k in ("test_knn_top1", "test_fidelity",
                                                          "calib_fidelity") if k in res})
    return {"model": src.name, "data": splits.name, "split": "test", **quality,
            "images": res["test_images"], "gmacs": cost.total / 1e9,
            "gmacs_blocks_only": cost.blocks / 1e9, "params_m": res["params"] / 1e6,
            "macs_convention": MACS_CONVENTION}


def cost_model(model: str | Path | ModelSource, *, plan: str | Path | None = None,
               img_size: int | tuple[int, int] | None = None,
               latency_table: str | Path | None = None) -> dict[str, Any]:
    """MACs by part and parameters of ``model``, or of ``plan`` applied to it (counted on the
    meta device, nothing pruned); with ``latency_table``, the time it predicts too."""
    net, extra = planned_model(model, plan=plan, img_size=img_size, apply=False)
    dense = vit_shape(net)
    shape = dense if extra is None else planned_shape(dense, extra)  # validated against it
    c = macs(shape)
    res = {"model": ModelSource.of(model).name, "plan": plan and str(plan),
           "gmacs": c.total / 1e9, "gmacs_blocks_only": c.blocks / 1e9,
           "gmacs_attention": c.attention / 1e9, "gmacs_mlp": c.mlp / 1e9,
           "gmacs_attention_pool": c.pool / 1e9, "params_m": count_params(net, extra) / 1e6,
           "macs_convention": MACS_CONVENTION}
    if latency_table:
        from .latency import LatencyTable

        table = LatencyTable.load(latency_table)
        table.check_model(dense)
        res.update({"predicted_ms": table.predict(shape),
                    "dense_ms": table.dense_ms(dense) if extra is not None else None,
                    "latency_table": table.describe()})
    return res


def planned_model(model: str | Path | ModelSource, *, checkpoint: str | Path | None = None,
                  plan: str | Path | None = None, img_size: int | tuple[int, int] | None = None,
                  apply: bool = True) -> tuple[torch.nn.Module, PrunePlan | None]:
    """The model named or saved at ``model`` (``img_size`` for a name), with the plan file
    ``plan`` applied when ``apply`` (else returned beside it, validated against the model)."""
    src = ModelSource.of(model, checkpoint)
    if img_size and src.is_dir:
        raise ConfigError("img_size", f"applies to a model given by name; {src.name} is saved "
                                      "at its own input size")
    over = {"img_size": img_size} if img_size else {}
    net, _, _ = resolve_model(src, **over)
    extra = PrunePlan.load(plan) if plan else None
    if extra is not None:
        if apply:
            net = prune(net, extra)  # validates the plan against the model
        else:
            extra.validate(vit_shape(net))
    return net, extra


def export_model(model: str | Path | ModelSource, out: str | Path, *,
                 checkpoint: str | Path | None = None, plan: str | Path | None = None,
                 img_size: int | tuple[int, int] | None = None, **settings: Any) -> dict[str, Any]:
    """Export ``model`` (optionally with ``plan`` applied) to the new file ``out``, checked
    against PyTorch with onnxruntime before it is kept (see :func:`vitprune.io.export_onnx`).

    ``settings``: :class:`~vitprune.config.ExportSettings`' fields (``format``, ``opset``,
    ``dynamic_batch``, ``batch``, ``int8``)."""
    s = settings_of(ExportSettings, settings)
    require_onnx()
    src = ModelSource.of(model, checkpoint)
    src.check()
    out = _new_file(out, [*src.inputs(), plan], "export")
    net, _ = planned_model(src, plan=plan, img_size=img_size)
    res = export_onnx(net, input_shape(net), out, opset=s.opset, dynamic_batch=s.dynamic_batch,
                      batch=s.batch, int8=s.int8)
    return {"model": src.name, "plan": plan and str(plan), "format": s.format,
            "gmacs": macs(vit_shape(net)).total / 1e9, **res}


def latency_table_model(model: str | Path | ModelSource, out: str | Path, *,
                        device: str = DEFAULT_DEVICE, threads: int | None = None,
                        checkpoint: str | Path | None = None,
                        img_size: int | tuple[int, int] | None = None,
                        progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Measure ``model``'s latency table on ``device`` (see :mod:`vitprune.profile`) into the
    new JSON file ``out``.

    ``settings``: :class:`~vitprune.config.LatencyTableSettings`' fields (``batch``,
    ``dtype``, ``token_points``, ``neuron_points``, ``neuron_multiple``, ``repeats``)."""
    s = settings_of(LatencyTableSettings, settings)
    device = devices.resolve(device)  # the CLI passes it resolved; the API may pass auto
    from .profile import build_table, check_table_settings

    check_table_settings(s.batch, s.dtype, device)
    src = ModelSource.of(model, checkpoint)
    src.check()
    out = _new_file(out, src.inputs(), "latency-table")
    net, plan = planned_model(src, img_size=img_size)
    if src.is_vitprune_dir and read_config(src.name).get("plan") is not None:
        raise ModelError(f"{src.name} is a pruned model: build the latency table on its dense "
                         "base model (the plans the search tries are cut from the dense one)")
    table = build_table(net, device=device, threads=threads, progress=progress,
                        **dataclasses.asdict(s))
    fsutil.write_json(out, table.to_dict(), exclusive=True)
    m = table.meta
    return {"out": str(out), "device": m["device_name"], "batch": s.batch, "dtype": s.dtype,
            "threads": m["threads"], "cells": table.cells, "dense_ms_measured": m["dense_ms_measured"],
            "dense_ms_predicted": table.predict(vit_shape(net)), "scale": table.scale,
            "build_s": m["build_s"]}


def bench_model(model: str | Path | ModelSource, *, threads: int | None = None,
                device: str = DEFAULT_DEVICE, checkpoint: str | Path | None = None,
                plan: str | Path | None = None,
                img_size: int | tuple[int, int] | None = None, **settings: Any) -> dict[str, Any]:
    """Latency and throughput of ``model`` (optionally with ``plan`` applied) in a runtime
    (see :mod:`vitprune.runtime`), median of ``repeats`` forwards after ``warmup``.

    ``settings``: :class:`~vitprune.config.BenchSettings`' fields (``runtime``, ``int8``,
    ``batch``, ``warmup``, ``repeats``)."""
    s = settings_of(BenchSettings, settings)
    device = devices.resolve(device)  # the CLI passes it resolved; the API may pass auto
    check_runtime(s.runtime, s.int8, device)
    src = ModelSource.of(model, checkpoint)
    src.check()
    net, _ = planned_model(src, plan=plan, img_size=img_size)
    threads = threads or torch.get_num_threads()
    shape = input_shape(net)
    with runner(net, s.runtime, shape, s.batch, int8=s.int8, threads=threads,
                device=device) as run:
        res = measure(run, shape, s.batch, warmup=s.warmup, repeats=s.repeats, threads=threads,
                      device=device)
    return {"model": src.name, "plan": plan and str(plan), "runtime": s.runtime, "int8": s.int8,
            "device": device, "gmacs": macs(vit_shape(net)).total / 1e9, **res}


def info_model(model: str | Path | ModelSource, *,
               img_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """What a model is: its architecture record, shape per block, token stages, MACs,
    parameters and the preprocessing it expects (data config). Never downloads weights."""
    src = dataclasses.replace(ModelSource.of(model), pretrained=False)  # the shape is the same
    src.check()
    net, _ = planned_model(src, img_size=img_size)
    if src.is_vitprune_dir:
        record = read_config(src.name)
        arch, plan = ArchSpec.from_dict(record["arch"]), record.get("plan")
    elif src.is_dir:
        arch, plan = resolve_model(src)[1], None
    else:
        arch = ArchSpec(src.name, {**src.args, **({"img_size": img_size} if img_size else {})})
        plan = None
    shape = vit_shape(net)
    cost = macs(shape)
    return {
        "model": src.name, "architecture": arch.to_dict(), "class": type(net).__name__,
        "pruned": plan is not None, "input_size": list(input_shape(net)),
        "num_classes": shape.num_classes, "embed_dim": shape.embed_dim, "depth": len(shape.blocks),
        "prefix_tokens": shape.num_prefix, "patches": shape.num_patches,
        "heads": [b.heads for b in shape.blocks], "head_dim": [b.head_dim for b in shape.blocks],
        "mlp_hidden": [b.mlp_hidden for b in shape.blocks],
        "tokens_per_block": [n for n, _ in token_counts(shape)],
        **({"width": [b.width or shape.embed_dim for b in shape.blocks],
            "window": [list(b.window) for b in shape.blocks]} if shape.windowed else {}),
        "gmacs": cost.total / 1e9, "params_m": count_params(net) / 1e6,
        "macs_convention": MACS_CONVENTION, "data_config": data_config(net),
    }
