"""The ``vitprune`` command: parse arguments into the library's configurations, call the job,
print its summary. Options of settings are generated from the configuration dataclasses
(``vitprune.config``, ``vitprune.train.TrainConfig``), so their defaults and help live there."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from .config import (
    BenchSettings,
    CompressConfig,
    DataConfig,
    DeviceSettings,
    EvalSettings,
    ExportSettings,
    InputFiles,
    LatencyTableSettings,
    OutputSettings,
    ScoreConfig,
    SearchSettings,
    ShapeSettings,
)
from .devices import HELP as DEVICE_HELP
from .errors import ConfigError, VitpruneError
from .models import ModelSource
from .train import FINETUNE, RECIPES, TrainConfig
from .version import __version__

DESCRIPTION = """\
Make a Vision Transformer smaller and faster: prune attention heads, MLP neurons and tokens,
chosen by a dependence criterion (HSIC) and a Gaussian-process search under a compute budget,
then fine-tune the smaller model by distillation from the original.

Start with `vitprune compress --model M --data D --budget 0.6 --out DIR` (the whole job); the
other commands are its parts. Every command that writes refuses an --out it did not create,
never writes over its input, and lets one process write a directory at a time."""

EPILOG = "Errors exit with status 2 and one line saying what to do."
KD_FIELDS = ("kd_alpha", "kd_temperature", "kd_hard", "kd_loss", "kd_features")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.default is None or action.default is False or "default" in text
                or action.default == argparse.SUPPRESS):
            return text
        d = action.default
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        return f"{text} (default: {shown.replace('%', '%%')})"


# -- options generated from the configurations ------------------------------------------------
def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(type without ``| None``, whether ``None`` was allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def add_fields(p: argparse.ArgumentParser, cls: type, defaults: Any = None,
               skip: tuple[str, ...] = (), *, prefix: str = "",
               help: dict[str, str] | None = None, required: tuple[str, ...] = ()) -> None:  # noqa: A002
    """An option per field of the dataclass ``cls`` (``max_ratio`` -> ``--max-ratio``), with the
    field's help and choices and the default of ``defaults`` (an instance; default: the
    fields' own).

    A field's metadata may name its option (``flag``), make it ``required``, give argparse's
    ``nargs``/``type``/``metavar``/``choices``, a ``parse`` of the raw value (see
    :func:`values`) and a callable ``help``. ``prefix`` makes a second set of the same
    options (``--teacher``, ``--teacher-checkpoint``); ``help`` replaces some fields' help for
    one command, ``required`` makes more options required there.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        tp, optional = _unwrap(hints[f.name])
        text = (help or {}).get(f.name, f.metadata["help"])
        text = text() if callable(text) else text
        kw: dict[str, Any] = {"dest": _dest(f, prefix), "default": _default(f, defaults),
                              "help": text.replace("%", "%%")}
        if f.metadata.get("required") or f.name in required:
            kw.update(required=True, default=None)
        if f.metadata.get("recipe"):  # left to --recipe unless given
            base = kw["default"] if f.name not in RECIPES["small"] else RECIPES["small"][f.name]
            other = "".join(f"; --recipe {name}: {_shown(r[f.name])}" for name, r in RECIPES.items()
                            if r.get(f.name, base) != base)
            kw["help"] += f" (default: {_shown(base)}{other})"
            kw["default"] = None
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            kw.update(type=typing.get_args(tp)[0], nargs="*" if optional else "+")
        elif "parse" not in f.metadata:
            kw["type"] = tp
        for key in ("choices", "metavar", "nargs", "type"):
            if key in f.metadata:
                kw[key] = f.metadata[key]
        p.add_argument(_flag(f, prefix), **kw)


def _flag(f: dataclasses.Field, prefix: str) -> str:
    name = f.metadata.get("flag", f.name.replace("_", "-"))
    if prefix:  # --model becomes --teacher, --checkpoint --teacher-checkpoint
        name = prefix if name == "model" else f"{prefix}-{name}"
    return "--" + name


def _dest(f: dataclasses.Field, prefix: str) -> str:
    return f"{prefix}_{f.name}" if prefix else f.name


def _default(f: dataclasses.Field, defaults: Any) -> Any:
    if "parse" in f.metadata:  # the raw option is unset; parse(None) is the field's default
        return None
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return None if f.default_factory is dataclasses.MISSING else f.default_factory()


def values(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = (), *,
           prefix: str = "") -> dict[str, Any]:
    """The parsed values of ``cls``'s fields (those :func:`add_fields` added), each through its
    field's ``parse`` where it has one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not hasattr(args, _dest(f, prefix)):
            continue
        v = getattr(args, _dest(f, prefix))
        out[f.name] = f.metadata["parse"](v) if "parse" in f.metadata else v
    return out


def _shown(value: Any) -> str:
    return repr(value) if value == "" else str(value)


def train_settings(args: argparse.Namespace, base: TrainConfig,
                   skip: tuple[str, ...] = ()) -> TrainConfig:
    """``base`` with the parsed --recipe, then the options given, applied (an option some
    recipe sets, not given, is the recipe's)."""
    given = values(args, TrainConfig, skip=(*skip, "recipe"))
    return base.with_recipe(args.recipe, **given)


def _source(args: argparse.Namespace, prefix: str = "") -> ModelSource:
    """A model's options (``--model``, ``--checkpoint`` ...; ``--teacher`` ... with
    ``prefix``) as a checked ModelSource."""
    src = ModelSource(**values(args, ModelSource, prefix=prefix))
    src.check()
    return src


def _shape(args: argparse.Namespace) -> ShapeSettings:
    return ShapeSettings(**values(args, ShapeSettings))


def _common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    if data:
        add_fields(p, DataConfig)
    add_fields(p, DeviceSettings)


def _out(p: argparse.ArgumentParser, what: str, *, resume: str | None = None,
         quiet: bool = True) -> None:
    skip = (() if resume else ("resume",)) + (() if quiet else ("quiet",))
    add_fields(p, OutputSettings, skip=skip, help={"out": what, "resume": resume or ""})


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


# -- commands ---------------------------------------------------------------------------------
def _setup(args: argparse.Namespace) -> str:
    """Threads and device, checked and resolved once (under torchrun this rank's GPU, and the
    process group joined); every command calls it before any other work."""
    from .devices import setup

    run = DeviceSettings(**values(args, DeviceSettings))
    return setup(run.device, run.threads)


def _splits(cfg: DataConfig, model=None):
    """The dataset's splits; ImageFolder images prepared as ``model`` (a source) expects."""
    from .pipeline import load_data

    return load_data(cfg, model)


def _data(args: argparse.Namespace) -> DataConfig:
    return DataConfig(**values(args, DataConfig))


def _command(args: argparse.Namespace) -> str:
    return "vitprune " + shlex.join(args.argv)


def cmd_train(args: argparse.Namespace) -> dict:
    from .jobs import train

    cfg, data = train_settings(args, TrainConfig(), KD_FIELDS), _data(args)
    device = _setup(args)
    src = _source(args)
    return train(src, _splits(data, src), cfg, args.out,
                 resume=args.resume, device=device, progress=not args.quiet,
                 command=_command(args))


def cmd_finetune(args: argparse.Namespace) -> dict:
    from .jobs import finetune_model

    cfg, data = train_settings(args, FINETUNE), _data(args)
    device = _setup(args)
    teacher = _source(args, "teacher")
    return finetune_model(args.student_name, teacher, _splits(data, args.student_name), cfg,
                          args.out, resume=args.resume, device=device, progress=not args.quiet,
                          command=_command(args))


def cmd_compress(args: argparse.Namespace) -> dict:
    from .compression import compress

    cfg = CompressConfig.from_flat(**{k: v for k, v in vars(args).items()
                                      if k in CompressConfig.names()})
    device = _setup(args)
    return compress(_source(args), cfg.data.data, cfg.budget, args.out, device=device,
                    progress=not args.quiet, config=cfg).summary()


def cmd_search(args: argparse.Namespace) -> dict:
    from .config import parse_budget
    from .jobs import search_plan

    settings = SearchSettings(**values(args, SearchSettings))
    scoring = ScoreConfig(**values(args, ScoreConfig))
    parse_budget(args.budget)
    data = _data(args)
    device = _setup(args)
    src = _source(args)
    return search_plan(src, _splits(data, src), args.budget, args.out, settings=settings,
                       seed=args.seed, scores=args.scores,
                       score_config=scoring, resume=args.resume, progress=not args.quiet,
                       device=device)


def cmd_score(args: argparse.Namespace) -> dict:
    from .jobs import score_model

    cfg, data = ScoreConfig(**values(args, ScoreConfig)), _data(args)
    device = _setup(args)
    src = _source(args)
    return score_model(src, _splits(data, src), cfg, args.out, device=device)


def cmd_eval(args: argparse.Namespace) -> dict:
    from .jobs import eval_model

    data = _data(args)
    device = _setup(args)
    src = _source(args)
    return eval_model(src, _splits(data, src), device=device, **values(args, EvalSettings))


def cmd_prune(args: argparse.Namespace) -> dict:
    from .jobs import prune_model

    return prune_model(_source(args), args.plan, args.out)


def cmd_cost(args: argparse.Namespace) -> dict:
    from .jobs import cost_model

    shape = _shape(args)
    return cost_model(_source(args), plan=shape.plan, img_size=shape.size,
                      latency_table=args.latency_table)


def cmd_latency_table(args: argparse.Namespace) -> dict:
    from .jobs import latency_table_model

    shape, device = _shape(args), _setup(args)
    return latency_table_model(_source(args), args.out, device=device, threads=args.threads,
                               img_size=shape.size, progress=not args.quiet,
                               **values(args, LatencyTableSettings))


def cmd_bench(args: argparse.Namespace) -> dict:
    from .jobs import bench_model

    shape, device = _shape(args), _setup(args)
    return bench_model(_source(args), threads=args.threads, device=device, plan=shape.plan,
                       img_size=shape.size, **values(args, BenchSettings))


def cmd_info(args: argparse.Namespace) -> dict:
    from .jobs import info_model

    return info_model(_source(args), img_size=_shape(args).size)


def cmd_export(args: argparse.Namespace) -> dict:
    from .jobs import export_model

    shape = _shape(args)
    return export_model(_source(args), args.out, plan=shape.plan, img_size=shape.size,
                        **values(args, ExportSettings))


def _options_compress(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("compress", "the whole job: score, search, prune, fine-tune, evaluate, report",
                cmd_compress)
    add_fields(p, ModelSource), _common(p)
    add_fields(p, CompressConfig)
    add_fields(p, ScoreConfig), add_fields(p, SearchSettings)
    add_fields(p, TrainConfig, FINETUNE, skip=("seed",))
    _out(p, "run directory; the same command again resumes an interrupted run"), _json(p)


def _options_train(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("train", "train a baseline ViT", cmd_train)
    add_fields(p, ModelSource), _common(p)
    add_fields(p, TrainConfig, skip=KD_FIELDS)
    _out(p, "model directory to create (with the run's checkpoint)",
         resume="continue the interrupted run in --out exactly"), _json(p)


def _options_eval(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("eval", "test top-1, loss, MACs and parameters of a model (a model without a "
                "classifier: k-NN top-1 and feature fidelity to --reference)", cmd_eval)
    add_fields(p, ModelSource), _common(p), add_fields(p, EvalSettings), _json(p)


def _options_score(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("score", "score every head and MLP neuron with a criterion", cmd_score)
    add_fields(p, ModelSource), _common(p)
    add_fields(p, ScoreConfig)
    _out(p, "the scores JSON file to create", quiet=False), _json(p)


def _options_search(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("search", "search per-block prune ratios under a MACs or latency budget",
                cmd_search)
    add_fields(p, ModelSource), _common(p)
    add_fields(p, CompressConfig, skip=("bench_batches",))
    add_fields(p, SearchSettings)
    add_fields(p, ScoreConfig)
    add_fields(p, InputFiles, skip=("latency_table",))
    _out(p, "run directory of the search (trials, best plan, summary, plot)",
         resume="continue the trials in --out"), _json(p)


def _options_finetune(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("finetune", "fine-tune a pruned model by distillation from a teacher",
                cmd_finetune)
    add_fields(p, ModelSource, prefix="student", skip=("checkpoint", "pretrained", "args"),
               help={"name": "a pruned model directory"})
    add_fields(p, ModelSource, prefix="teacher", help={
        "name": "the dense model: a saved directory or a name",
        "checkpoint": "weights for a teacher given by name",
        "pretrained": "timm's published weights for a teacher given by name",
        "args": "constructor arguments for a teacher given by name (KEY=VALUE, values as JSON)"})
    _common(p)
    add_fields(p, TrainConfig, FINETUNE)
    _out(p, "model directory to create (with the run's checkpoint)",
         resume="continue the interrupted fine-tuning in --out"), _json(p)


def _options_prune(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("prune", "apply a plan: write a physically smaller model directory", cmd_prune)
    add_fields(p, ModelSource)
    add_fields(p, ShapeSettings, skip=("img_size",), required=("plan",), help={
        "plan": "plan JSON (kept heads/neurons per block, token stages)"})
    _out(p, "model directory to create", quiet=False), _json(p)


def _options_cost(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("cost", "MACs and parameters of a model, or of a plan applied to it", cmd_cost)
    add_fields(p, ModelSource), add_fields(p, ShapeSettings)
    add_fields(p, InputFiles, skip=("scores",))
    _json(p)


def _options_latency_table(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("latency-table", "measure, on this device, the time of the parts a plan "
                                 "changes (attention by heads and tokens, MLP by width and "
                                 "tokens, token stages, the rest) for latency budgets",
                cmd_latency_table)
    add_fields(p, ModelSource)
    add_fields(p, DeviceSettings, help={
        "device": DEVICE_HELP + " (the table holds for that device only)",
        "threads": "CPU threads (recorded; time at the same count)"})
    add_fields(p, LatencyTableSettings)
    add_fields(p, ShapeSettings, skip=("plan",))
    _out(p, "the table JSON file to create"), _json(p)


def _options_info(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("info", "what a model is: architecture, shape, MACs, parameters and the "
                        "preprocessing it expects", cmd_info)
    add_fields(p, ModelSource), add_fields(p, ShapeSettings, skip=("plan",))
    _json(p)


def _options_bench(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("bench", "measured latency and throughput (warm-up, median of repeats) in a "
                         "runtime", cmd_bench)
    add_fields(p, ModelSource), _common(p, data=False)
    add_fields(p, ShapeSettings)
    add_fields(p, BenchSettings)
    _json(p)


def _options_export(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("export", "export a model to ONNX, checked against PyTorch with onnxruntime "
                          "(needs vitprune[export])", cmd_export)
    add_fields(p, ModelSource), add_fields(p, ShapeSettings)
    add_fields(p, ExportSettings)
    _out(p, "the file to create (never replaced)", quiet=False), _json(p)


# each command's options, in the order --help lists them
COMMANDS = (
    _options_compress,
    _options_train,
    _options_eval,
    _options_score,
    _options_search,
    _options_finetune,
    _options_prune,
    _options_cost,
    _options_latency_table,
    _options_info,
    _options_bench,
    _options_export,
)


def build_parser() -> argparse.ArgumentParser:
    fmt = _Help
    ap = argparse.ArgumentParser(prog="vitprune", description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"vitprune {__version__}")
    ap.add_argument("--debug", action="store_true",
                    help="show the traceback of an unexpected error (or set VITPRUNE_DEBUG=1)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, formatter_class=fmt)
        p.set_defaults(func=func)
        return p

    for options in COMMANDS:
        options(command)
    return ap


def _print(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:>20}: {v:.4g}" if isinstance(v, float) else f"{k:>20}: {v}")


def _message(exc: VitpruneError, parser: argparse.ArgumentParser, cmd: str) -> str:
    """The error in the command line's words: a setting by its option name."""
    if isinstance(exc, ConfigError):
        sub = parser._subparsers._group_actions[0].choices[cmd]  # noqa: SLF001
        option = "--" + exc.field.replace("_", "-")
        if any(option in a.option_strings for a in sub._actions):  # noqa: SLF001
            return exc.render(option)
    return str(exc)


def _failure(exc: BaseException, parser: argparse.ArgumentParser, cmd: str) -> tuple[int, str]:
    """(exit status, one line) for an exception that ended a command: 2 for the user's mistake
    or the machine's limits (with what to do), 130 for an interrupt, 1 for a bug."""
    from .fsutil import first_line

    if isinstance(exc, VitpruneError):
        text = _message(exc, parser, cmd)
        if "Original Traceback" in text:  # raised in a loader worker: the worker's own line
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if last.startswith("vitprune.errors.") else last
        return 2, f"error: {text}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, ("interrupted. Files already written are complete (writes are atomic); the "
                     "same command resumes an interrupted run")
    import torch

    oom = isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc)
                                           or "out of memory" in str(exc)))
    if oom:
        return 2, (f"error: out of memory ({first_line(exc)}). Lower --batch-size, --img-size, "
                   "--score-images or --calib-images, or use a machine with more memory")
    return 1, (f"internal error: {type(exc).__name__}: {first_line(exc)}. This is a bug in "
               "vitprune: please report it with the command line (rerun with --debug or "
               "VITPRUNE_DEBUG=1 for the traceback)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from . import dist

    try:
        res = args.func(args)
    except BaseException as exc:  # noqa: BLE001 (every way out says one line, and what to do)
        dist.close(wait=False)
        if isinstance(exc, SystemExit):
            raise
        code, line = _failure(exc, parser, args.cmd)
        if code == 1 and (args.debug or os.environ.get("VITPRUNE_DEBUG") == "1"):
            raise
        print(f"vitprune: {line}", file=sys.stderr)
        return code
    if dist.is_main():  # under torchrun, one process speaks
        _print(res, getattr(args, "json", False))
    dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
