"""Settings (``vitprune/config.py``): each default written once, shown by ``--help`` as the
dataclasses hold it, recipes applied in construction, unknown settings refused."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import vitprune
from vitprune.cli import build_parser
from vitprune.config import (
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
from vitprune.errors import ConfigError
from vitprune.models import ModelSource
from vitprune.train import FINETUNE, RECIPES, TrainConfig
from vitprune.train.loop import RECIPE_FIELDS

# the settings each command's options come from (the training ones start from these instances)
TRAINING = {"train": TrainConfig(), "finetune": FINETUNE, "compress": FINETUNE}
SETTINGS = (DataConfig(), ScoreConfig(), SearchSettings(), CompressConfig(),
            LatencyTableSettings(), BenchSettings(), ExportSettings(), DeviceSettings(),
            OutputSettings(), ShapeSettings(), InputFiles(), EvalSettings())
# a model's options (--model ..., --teacher ...) are ModelSource's fields, the API's own type
PREFIXES = ("teacher_", "student_")
CLI_OWN = {"func", "json"}  # which command runs, and how the CLI prints its result


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return dict(parser._subparsers._group_actions[0].choices)  # noqa: SLF001


def _expected(cmd: str, dest: str):
    """The default the settings give option ``dest`` of command ``cmd``."""
    if cmd in TRAINING and dest in {f.name for f in dataclasses.fields(TrainConfig)}:
        return None if dest in RECIPE_FIELDS else getattr(TRAINING[cmd], dest)
    owners = [s for s in SETTINGS if dest in {f.name for f in dataclasses.fields(s)}]
    if cmd == "bench" or cmd == "export" or cmd == "latency-table":  # their own classes first
        mine = {"bench": BenchSettings, "export": ExportSettings,
                "latency-table": LatencyTableSettings}[cmd]
        owners = [s for s in owners if isinstance(s, mine)] or owners
    if owners:
        return getattr(owners[0], dest)
    name = next((dest.removeprefix(p) for p in PREFIXES if dest.startswith(p)), dest)
    source = {f.name: f for f in dataclasses.fields(ModelSource)}
    assert name in source, f"{cmd}: option {dest} comes from no settings dataclass"
    f = source[name]
    if "parse" in f.metadata or f.default is dataclasses.MISSING:  # parsed from None; required
        return None
    return f.default


def test_every_commands_help_defaults_are_the_settings_defaults():
    checked = 0
    for cmd, sub in _commands().items():
        for action in sub._actions:  # noqa: SLF001
            if isinstance(action, argparse._HelpAction) or action.dest in CLI_OWN:  # noqa: SLF001
                continue
            want = _expected(cmd, action.dest)
            # an option with a default of its own that no settings field holds would be a second
            # definition in the CLI: store-true flags (False) and unset options (None) hold none
            if want is None and action.nargs == 0:
                assert action.default in (None, False), (cmd, action.dest, action.default)
                continue
            assert action.default == want, (cmd, action.dest, action.default, want)
            checked += want is not None
    assert checked > 60  # every command's valued options were compared, not a handful


def test_help_text_shows_the_one_default():
    subs = _commands()
    text = " ".join(subs["latency-table"].format_help().split())
    assert f"grid points along MLP width (default: {LatencyTableSettings().neuron_points})" in text
    text = " ".join(subs["search"].format_help().split())
    assert f"init included (default: {SearchSettings().trials})" in text
    assert f"(default: {SearchSettings().max_ratio})" in text
    text = " ".join(subs["finetune"].format_help().split())
    assert "(default: False; --recipe deit: True)" in text  # augment: FINETUNE's, or the recipe's


NAMED = {"trials", "init", "max_images", "score_images", "n_images", "neuron_points", "repeats",
         "warmup", "max_ratio", "head_bounds", "neuron_bounds", "token_bounds", "calib_images"}


def _literal(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    return isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts)


def _literal_defaults(path: Path) -> list[tuple[str, str]]:
    """(name, where) of every parameter or dataclass field in ``NAMED`` given a number."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            pos = a.posonlyargs + a.args
            pairs = [*zip(pos[len(pos) - len(a.defaults):], a.defaults),
                     *zip(a.kwonlyargs, a.kw_defaults)]
            found += [(arg.arg, f"{path.name}:{node.lineno} {node.name}") for arg, d in pairs
                      if arg.arg in NAMED and _literal(d)]
        elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
              and node.target.id in NAMED):
            v = node.value
            if isinstance(v, ast.Call) and getattr(v.func, "id", "") == "field":
                v = next((k.value for k in v.keywords if k.arg == "default"), None)
            if _literal(v):
                found.append((node.target.id, f"{path.name}:{node.lineno}"))
    return found


def test_no_default_named_here_is_written_twice_in_the_package():
    seen: dict[str, list[str]] = {}
    for path in Path(vitprune.__file__).parent.rglob("*.py"):
        for name, where in _literal_defaults(path):
            seen.setdefault(name, []).append(where)
    twice = {k: v for k, v in seen.items() if len(v) > 1 and k != "max_ratio"}
    assert not twice, f"defaults written in more than one place: {twice}"
    # max_ratio's one literal is the search's; solve_uniform's 1.0 is its own search bound
    assert all("solve_uniform" in w for w in seen.get("max_ratio", []))
    assert {"trials", "init", "calib_images"} <= set(seen)  # the scan does find definitions


def test_the_search_layers_defaults_are_the_commands():
    from vitprune.search import SearchSpace
    from vitprune.search.config import SearchConfig
    from vitprune.search.space import MAX_RATIO

    s = SearchSettings()
    assert (s.trials, s.init) == (SearchConfig().trials, SearchConfig().init)
    assert s.max_ratio == MAX_RATIO
    fields = {f.name: f.default for f in dataclasses.fields(SearchSpace)}
    assert fields["head_bounds"] == fields["neuron_bounds"] == (0.0, MAX_RATIO)


def test_a_recipe_is_applied_when_the_settings_are_built():
    deit = TrainConfig(recipe="deit")
    for name, value in RECIPES["deit"].items():
        assert getattr(deit, name) == value, name
    assert TrainConfig(recipe="deit", mixup=0.0).mixup == 0.0  # a given value wins
    assert TrainConfig().mixup == 0.0 and TrainConfig().rand_augment == ""
    assert dataclasses.replace(TrainConfig(), epochs=3).mixup == 0.0
    # a recipe applied to another base keeps the base's other settings
    ft = FINETUNE.with_recipe("deit", mixup=None, epochs=2)
    assert (ft.mixup, ft.augment, ft.epochs, ft.lr) == (0.8, True, 2, FINETUNE.lr)
    flagged = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("recipe")}
    assert flagged == set(RECIPE_FIELDS)  # the CLI leaves exactly these to --recipe


def test_a_recipe_given_on_the_command_line_reaches_the_settings():
    from vitprune.cli import train_settings

    parser = build_parser()
    args = parser.parse_args(["finetune", "--student", "s", "--teacher", "t", "--out", "o",
                              "--recipe", "deit", "--cutmix", "0"])
    cfg = train_settings(args, FINETUNE)
    assert (cfg.mixup, cfg.cutmix, cfg.augment, cfg.epochs) == (0.8, 0.0, True, FINETUNE.epochs)
    cfg = CompressConfig.from_flat(recipe="deit", mixup=None).finetune
    assert cfg.mixup == 0.8 and cfg.recipe == "deit"


@pytest.mark.parametrize("cls, kw, field", [
    (LatencyTableSettings, {"neuron_points": 1}, "neuron_points"),
    (LatencyTableSettings, {"dtype": "float16"}, "dtype"),
    (BenchSettings, {"warmup": 0}, "warmup"),
    (BenchSettings, {"runtime": "tensorrt"}, "runtime"),
    (ExportSettings, {"opset": 3}, "opset"),
    (ExportSettings, {"format": "tflite"}, "format"),
])
def test_command_settings_check_themselves(cls, kw, field):
    with pytest.raises(ConfigError) as err:
        cls(**kw)
    assert err.value.field == field


def test_unknown_or_doubled_keyword_settings_are_errors(tmp_path):
    from vitprune.jobs import bench_model, export_model, latency_table_model
    from vitprune.search import search
    from vitprune.search.config import SearchConfig

    for job, args in ((bench_model, ()), (export_model, (tmp_path / "m.onnx",)),
                      (latency_table_model, (tmp_path / "t.json",))):
        with pytest.raises(ConfigError, match="repeatz is not a setting of .*known: .*repeats"
                                              "|repeatz is not a setting"):
            job("fmnist_vit_tiny", *args, repeatz=3)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="n_candidatez is not a setting of SearchConfig"):
        SearchConfig.of(n_candidatez=5)
    with pytest.raises(ValueError, match="trials given beside config="):
        search(lambda plan: 0.0, None, 0.5, config=SearchConfig(), trials=3)


def test_the_api_and_the_cli_give_the_same_results(tmp_path, capsys):
    import json

    from tests.helpers import random_plan
    from vitprune.adapters import vit_shape
    from vitprune.cli import main
    from vitprune.jobs import cost_model, info_model
    from vitprune.models import build_model

    plan = random_plan(vit_shape(build_model("fmnist_vit_tiny")), 1, stages=(2,))
    plan.save(tmp_path / "plan.json")
    for argv, api in ((["cost", "--plan", str(tmp_path / "plan.json")],
                       cost_model("fmnist_vit_tiny", plan=tmp_path / "plan.json")),
                      (["info"], info_model("fmnist_vit_tiny"))):
        assert main([argv[0], "--model", "fmnist_vit_tiny", *argv[1:], "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(api))
