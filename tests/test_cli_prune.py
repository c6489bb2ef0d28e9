import json

import pytest
import torch
from safetensors.torch import save_file

import vitprune
from vitprune.cli import main
from vitprune.plan import BlockPlan, PrunePlan, TokenStage
from vitprune.surgery import prune


def _plan(depth=4):
    # fmnist_vit_tiny: 4 blocks, 4 heads, 64 MLP units, 16 patches
    blocks = [BlockPlan((0, 2, 3), tuple(range(0, 64, 2))) for _ in range(depth)]
    return PrunePlan(tuple(blocks), (TokenStage(1, 0.5), TokenStage(3, 0.5)))


@pytest.fixture
def ckpt(tmp_path, tiny_vit):
    f = tmp_path / "w.safetensors"
    save_file(tiny_vit.state_dict(), str(f))
    return f


def test_prune_cost_bench_round_trip(tmp_path, tiny_vit, ckpt, capsys):
    plan_file = tmp_path / "plan.json"
    _plan().save(plan_file)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "fmnist_vit_tiny", "--checkpoint", str(ckpt),
                 "--plan", str(plan_file), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["macs_kept"] < 0.6

    loaded = vitprune.load(out)
    assert loaded.blocks[0].attn.num_heads == 3 and loaded.blocks[0].mlp.fc1.out_features == 32
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), prune(tiny_vit, _plan())(x), rtol=0, atol=1e-6)

    assert main(["cost", "--model", "fmnist_vit_tiny", "--plan", str(plan_file), "--json"]) == 0
    by_plan = json.loads(capsys.readouterr().out)
    assert main(["cost", "--model", str(out), "--json"]) == 0
    by_dir = json.loads(capsys.readouterr().out)
    assert by_plan["gmacs"] == pytest.approx(by_dir["gmacs"]) == pytest.approx(res["gmacs_pruned"])
    assert by_dir["params_m"] == pytest.approx(sum(p.numel() for p in loaded.parameters()) / 1e6)

    assert main(["bench", "--model", str(out), "--batch", "4", "--repeats", "2", "--warmup", "1",
                 "--threads", "1", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert b["batch"] == 4 and b["throughput"] > 0 and b["gmacs"] == pytest.approx(by_dir["gmacs"])


def test_plan_for_another_model_is_refused_and_nothing_written(tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    _plan(depth=12).save(plan_file)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "fmnist_vit_tiny", "--plan", str(plan_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "12 blocks" in err or "12" in err and "4" in err
    assert not out.exists() or not any(out.iterdir())


def test_plan_ids_out_of_range_and_malformed_json(tmp_path, capsys):
    bad = _plan().to_dict()
    bad["blocks"][1]["heads"] = [0, 7]
    (tmp_path / "p1.json").write_text(json.dumps(bad))
    assert main(["cost", "--model", "fmnist_vit_tiny", "--plan", str(tmp_path / "p1.json")]) == 2
    assert "7" in capsys.readouterr().err
    (tmp_path / "p2.json").write_text('{"blocks": [')
    assert main(["prune", "--model", "fmnist_vit_tiny", "--plan", str(tmp_path / "p2.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_non_empty_out_is_not_overwritten(tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    _plan().save(plan_file)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", "--model", "fmnist_vit_tiny", "--plan", str(plan_file), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cost_of_a_plan_made_for_another_model_exits_2(tmp_path, capsys):
    from vitprune.adapters import vit_shape
    from vitprune.models import build_model
    from vitprune.search import Ratios, ratios_to_plan

    tiny = vit_shape(build_model("deit_tiny_patch16_224"))
    plan_file = tmp_path / "plan.json"
    ratios_to_plan(tiny, Ratios.uniform(12, heads=0.34, neurons=0.5)).save(plan_file)
    assert main(["cost", "--model", "deit_small_patch16_224", "--plan", str(plan_file)]) == 2
    err = capsys.readouterr().err
    assert "made for another model: its embed_dim is 192, this model's is 384" in err
    out = tmp_path / "p"
    assert main(["prune", "--model", "deit_small_patch16_224", "--plan", str(plan_file),
                 "--out", str(out)]) == 2
    assert not out.exists()
