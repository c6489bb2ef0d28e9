"""timm's Swin Transformer (vitprune/adapters/timm_swin.py): heads (with the relative-position
bias), neurons and depth pruned exactly; the hierarchical cost against torch's FLOP counter and
the published figures; token stages refused with one line."""

from __future__ import annotations

import json

import pytest
import torch

import vitprune
from tests.helpers import (
    masked_and_pruned,
    measured_macs,
    random_plan,
    sharpen,
    synthetic_staged_table,
)
from vitprune.adapters import adapter_for, input_shape, vit_shape
from vitprune.adapters.base import DroppedHalf
from vitprune.cli import main
from vitprune.cost import macs
from vitprune.errors import ModelError, PlanError
from vitprune.models import ArchSpec, build_model
from vitprune.plan import BlockPlan, PrunePlan, TokenStage, planned_shape
from vitprune.surgery import count_params, prune

NAME = "swin_tiny_patch4_window7_224"
# two stages of two blocks; 56 px: 14x14 then 7x7 tokens in 7x7 windows (shifted in every other
# block); 40 px: a 10x10 grid, padded to 14x14 for its windows, then 5x5 (one window of 5x5)
LAYOUTS = {
    "even": dict(img_size=56, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=7,
                 num_classes=10),
    "padded": dict(img_size=40, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=7,
                   num_classes=10),
}


def _model(layout: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = sharpen(build_model(NAME, **LAYOUTS[layout]).eval())
    with torch.no_grad():
        model.head.fc.weight.normal_(0, 1.0)
        for a in (b.attn for b in adapter_for(model).blocks(model)):  # biases that matter
            a.relative_position_bias_table.normal_(0, 1.0)
    return model


def _x(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    return torch.randn(n, *input_shape(model), generator=torch.Generator().manual_seed(1))


def _check(model: torch.nn.Module, plan: PrunePlan) -> torch.nn.Module:
    dense, masked, small, pruned = masked_and_pruned(model, plan, _x(model))
    assert (masked - pruned).abs().max().item() <= 1e-5 * masked.abs().max().item()
    assert (masked - dense).abs().max().item() > 1e-2  # the plan changed the function
    assert count_params(model, plan) == sum(p.numel() for p in small.parameters())
    assert type(small) is type(model)
    return small


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_masked_equals_pruned_with_heads_and_neurons_cut(layout):
    model = _model(layout)
    shape = vit_shape(model)
    plan = random_plan(shape, seed=3)
    small = _check(model, plan)
    got = vit_shape(small)
    assert got == planned_shape(shape, plan)
    assert [b.heads for b in got.blocks] == [len(b.heads) for b in plan.blocks]
    for blk, bp in zip(adapter_for(small).blocks(small), plan.blocks):
        assert blk.attn.relative_position_bias_table.shape[1] == len(bp.heads)
    # the hierarchy: each stage's width, grid and window
    assert [b.width for b in got.blocks] == [32, 32, 64, 64]
    assert got.blocks[0].grid == ((14, 14) if layout == "even" else (10, 10))


def test_depth_pruning_drops_an_attention_and_an_mlp():
    model = _model("even")
    blocks = list(random_plan(vit_shape(model), seed=5).blocks)
    blocks[1] = BlockPlan((), blocks[1].neurons)
    blocks[2] = BlockPlan(blocks[2].heads, ())
    small = _check(model, PrunePlan(tuple(blocks)))
    b = adapter_for(small).blocks(small)
    assert isinstance(b[1].attn, DroppedHalf) and isinstance(b[2].mlp, DroppedHalf)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_macs_equal_torchs_flop_counter_dense_and_pruned(layout):
    model = _model(layout)
    shape = vit_shape(model)
    x = _x(model, 1)
    assert macs(shape).total == measured_macs(model, x)
    assert macs(shape).between > 0  # the patch merging is counted
    small = prune(model, random_plan(shape, seed=6)).eval()
    assert macs(vit_shape(small)).total == measured_macs(small, x)


# published (parameters in millions, GMACs at 224): the Swin paper, Table 1
PUBLISHED = {"swin_tiny_patch4_window7_224": (28, 4.5), "swin_small_patch4_window7_224": (50, 8.7),
             "swin_base_patch4_window7_224": (88, 15.4)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_dense_cost_matches_the_published_figures(name):
    with torch.device("meta"):
        model = build_model(name)
    params, gmacs = PUBLISHED[name]
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_params(model) / 1e6 == pytest.approx(params, abs=0.5)
    assert macs(vit_shape(model)).total / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_token_stages_are_refused_by_plan_prune_and_search(tmp_path, capsys):
    model = _model("even")
    shape = vit_shape(model)
    plan = random_plan(shape, seed=1, stages=(1,))
    with pytest.raises(PlanError, match="token stages do not apply to windowed attention"):
        prune(model, plan)
    with pytest.raises(ModelError, match="windowed attention"):
        adapter_for(model).token_block(model, 1, TokenStage(1, 0.5))
    model_args = ["--model", NAME, "--model-args", "img_size=28", "patch_size=2", "in_chans=1",
                  "embed_dim=16", "depths=[2,2]", "num_heads=[2,2]", "window_size=7",
                  "num_classes=10"]
    plan_file = tmp_path / "plan.json"
    small = build_model(NAME, img_size=28, patch_size=2, in_chans=1, embed_dim=16, depths=(2, 2),
                        num_heads=(2, 2), window_size=7, num_classes=10)
    random_plan(vit_shape(small), seed=1, stages=(1,)).save(plan_file)
    assert main(["prune", *model_args, "--plan", str(plan_file), "--out",
                 str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "windowed attention" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()
    assert main(["search", *model_args, "--data", "synthetic", "--budget", "0.7",
                 "--token-blocks", "1", "--trials", "3", "--init", "2", "--out",
                 str(tmp_path / "s"), "--quiet"]) == 2
    assert "windowed attention" in capsys.readouterr().err


def test_every_command_runs_on_a_swin_model(tmp_path, capsys):
    """latency-table (a grid per stage), compress under a latency budget (tokens left out by
    default, depth on), info and export."""
    from vitprune.latency import LatencyTable, StagedLatencyTable

    model_args = ["--model", NAME, "--model-args", "img_size=28", "patch_size=2", "in_chans=1",
                  "embed_dim=16", "depths=[2,2]", "num_heads=[2,2]", "window_size=7",
                  "num_classes=10"]
    measured = tmp_path / "measured.json"
    assert main(["latency-table", *model_args, "--batch", "4", "--neuron-points", "3",
                 "--repeats", "1", "--out", str(measured), "--quiet"]) == 0
    got = LatencyTable.load(measured)
    assert isinstance(got, StagedLatencyTable)
    assert [(s.blocks, s.tokens, s.heads) for s in got.stages] == [((0, 1), 196, (1, 2)),
                                                                   ((2, 3), 49, (1, 2))]
    assert [s.neurons[-1] for s in got.stages] == [64, 128]
    # the search runs on a table whose times follow the work (measured times of so small a
    # model are overhead and noise: a latency budget on them may be out of reach)
    dense = build_model(NAME, img_size=28, patch_size=2, in_chans=1, embed_dim=16, depths=(2, 2),
                        num_heads=(2, 2), window_size=7, num_classes=10)
    table = synthetic_staged_table(vit_shape(dense))
    table_file = tmp_path / "t.json"
    table_file.write_text(json.dumps(table.to_dict()))
    out = tmp_path / "c"
    assert main(["compress", *model_args, "--data", "synthetic", "--budget", "0.8",
                 "--budget-metric", "latency", "--latency-table", str(table_file), "--depth",
                 "--trials", "4", "--init", "2", "--calib-images", "64", "--score-images", "64",
                 "--epochs", "1", "--max-steps-per-epoch", "2", "--out", str(out), "--quiet"]) == 0
    from vitprune.compression import read_run

    run = read_run(out)
    assert run.plan.tokens == () and len(run.plan.blocks) == 4
    small = vitprune.load(out / "model")
    assert table.predict(vit_shape(small)) <= 0.8 * table.dense_ms(vit_shape(dense)) * 1.0001
    capsys.readouterr()
    assert main(["info", "--model", str(out / "model"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "SwinTransformer" and info["width"] == [16, 16, 32, 32]
    assert main(["export", "--model", str(out / "model"), "--out", str(tmp_path / "m.onnx")]) == 0


def test_save_load_onnx_and_a_fullgraph_compile_give_the_pruned_model(tmp_path):
    from vitprune.io import save
    from vitprune.io.export import export_onnx

    model = _model("padded")
    plan = random_plan(vit_shape(model), seed=7)
    small = prune(model, plan).eval()
    save(tmp_path / "m", small, ArchSpec(NAME, LAYOUTS["padded"]), plan=plan)
    again = vitprune.load(tmp_path / "m").eval()
    x = _x(model)
    with torch.no_grad():
        ref = small(x)
        assert torch.equal(again(x), ref)
        compiled = torch.compile(again, fullgraph=True, backend="aot_eager")
        assert (compiled(x) - ref).abs().max().item() < 1e-4
    res = export_onnx(again, input_shape(again), tmp_path / "m.onnx", batch=2)
    assert res["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("name, params, gmacs", [("swin_tiny_patch4_window7_224", 28.29, 4.5),
                                                  ("eva02_small_patch14_224", 21.62, 6.1)])
def test_the_cost_command_gives_the_published_figures(name, params, gmacs, capsys):
    assert main(["cost", "--model", name, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["params_m"] == pytest.approx(params, abs=0.005)
    assert got["gmacs"] == pytest.approx(gmacs, rel=0.01)


def test_a_checkpoint_in_timms_key_layout_loads(tmp_path):
    from safetensors.torch import save_file

    from vitprune.io.model_dir import resolve_model
    from vitprune.models import ModelSource

    trained = _model("even")
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(f))
    model, _, _ = resolve_model(ModelSource(NAME, str(f), args=LAYOUTS["even"]))
    x = _x(trained)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
