"""The jobs (vitprune/jobs.py) through the command line: prune writes a physically smaller model
that loads and matches the masked one, every command takes every family (a T2T-ViT by name and a
Hugging Face ViT saved with ``save_pretrained``), and compress runs end to end on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vitprune
from vitprune.adapters import vit_shape
from vitprune.cli import main
from vitprune.cost import macs
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


transformers = pytest.importorskip("transformers")
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST not installed")
QUICK = dict(trials=3, init=2, calib_images=64, score_images=64, epochs=1, max_steps_per_epoch=2,
             progress=False)


def hf_dir(root: Path, teacher: bool = False) -> Path:
    """A tiny Hugging Face ViT (or DeiT with teacher) for 28x28 grey images, as
    ``save_pretrained`` writes it, with an image processor config beside it."""
    torch.manual_seed(0)
    common = dict(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                  num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, num_labels=10)
    if teacher:
        model = transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**common))
    else:
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**common))
    out = root / ("hf_deit" if teacher else "hf_vit")
    model.save_pretrained(out)
    transformers.ViTImageProcessor(image_mean=[0.5], image_std=[0.25],
                                   size={"height": 28, "width": 28}).save_pretrained(out)
    return out


def _json_out(capsys) -> dict:
    out = capsys.readouterr().out.strip()
    return json.loads(out[out.rindex("\n{") + 1:] if "\n{" in out else out)


@pytest.mark.parametrize("teacher", [False, True])
def test_info_cost_prune_bench_take_a_hugging_face_directory(tmp_path, capsys, teacher):
    d = hf_dir(tmp_path, teacher)
    assert main(["info", "--model", str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == ("DeiTForImageClassificationWithTeacher" if teacher
                             else "ViTForImageClassification")
    assert info["prefix_tokens"] == (2 if teacher else 1) and info["heads"] == [4, 4, 4]
    assert info["data_config"]["mean"] == [0.5] and info["data_config"]["std"] == [0.25]

    plan = {"blocks": [{"heads": [0, 2], "neurons": list(range(0, 64, 2))}] * 3,
            "tokens": [{"block": 1, "keep_rate": 0.5, "fuse": True}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert main(["cost", "--model", str(d), "--plan", str(tmp_path / "plan.json"), "--json"]) == 0
    planned = _json_out(capsys)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(d), "--plan", str(tmp_path / "plan.json"),
                 "--out", str(out)]) == 0
    capsys.readouterr()
    small = vitprune.load(out)
    assert type(small).__name__ == info["class"]  # the same transformers class, narrower
    shape = vit_shape(small)
    assert [b.heads for b in shape.blocks] == [2, 2, 2]
    assert [b.mlp_hidden for b in shape.blocks] == [32, 32, 32]
    assert planned["gmacs"] == pytest.approx(macs(shape).total / 1e9)
    # counted from the tensors of the plan applied on the meta device: the pruned model's
    assert planned["params_m"] * 1e6 == pytest.approx(sum(p.numel() for p in small.parameters()))
    assert main(["bench", "--model", str(out), "--batch", "2", "--repeats", "2", "--warmup", "1",
                 "--json"]) == 0
    assert _json_out(capsys)["latency_ms"] > 0


def test_info_and_cost_take_a_t2t_name(capsys):
    assert main(["info", "--model", "t2t_vit_14", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "T2TViT" and info["depth"] == 14 and info["heads"] == [6] * 14
    assert info["params_m"] == pytest.approx(21.5, abs=0.1)
    assert main(["cost", "--model", "t2t_vit_14", "--json"]) == 0
    assert _json_out(capsys)["gmacs"] == pytest.approx(4.8, rel=0.02)


def test_a_swin_directory_is_refused_naming_what_is_supported(tmp_path, capsys):
    d = tmp_path / "swin"
    d.mkdir()
    cfg = transformers.SwinConfig().to_dict()
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["SwinForImageClassification"]}))
    assert main(["info", "--model", str(d), "--json"]) == 2
    err = capsys.readouterr().err
    assert "SwinForImageClassification" in err and "ViTForImageClassification" in err


@needs_fmnist
@pytest.mark.parametrize("model", ["t2t_vit_tiny", "hf"])
def test_compress_end_to_end_on_fashion_mnist(tmp_path, model):
    from vitprune.data import load_splits

    name = str(hf_dir(tmp_path)) if model == "hf" else model
    torch.manual_seed(0)
    res = vitprune.compress(name, load_splits("fashion-mnist", calib_size=64), 0.6,
                            tmp_path / "run", **QUICK)
    rows = res.metrics.rows
    assert 0.588 <= res.metrics.macs_kept <= 0.6
    small = vitprune.load(res.model_dir)
    assert type(small) is type(res.model)
    assert rows["finetuned"].macs == macs(vit_shape(small)).total
    assert rows["finetuned"].params == sum(p.numel() for p in small.parameters())
    x = torch.randn(3, 1, 28, 28)
    from vitprune.adapters import logits_module

    with torch.no_grad():
        assert torch.equal(logits_module(small)(x), logits_module(res.model)(x))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["done"][-1] == "report"


@pytest.mark.parametrize("model", ["t2t_vit_tiny", "hf"])
def test_score_search_prune_finetune_commands_take_the_family(tmp_path, capsys, model):
    name = str(hf_dir(tmp_path)) if model == "hf" else model
    common = ["--model", name, "--data", "synthetic", "--threads", "1"]
    assert main(["score", *common, "--criterion", "hsic", "--score-images", "64",
                 "--out", str(tmp_path / "s.json")]) == 0
    from vitprune.scoring import load_scores

    scores, _ = load_scores(tmp_path / "s.json")
    assert len(scores) == (4 if model == "t2t_vit_tiny" else 3)
    search = tmp_path / "search"
    assert main(["search", *common, "--budget", "0.6", "--trials", "3", "--init", "2",
                 "--scores", str(tmp_path / "s.json"), "--calib-images", "64",
                 "--out", str(search), "--quiet", "--json"]) == 0
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", name, "--plan", str(search / "best_plan.json"),
                 "--out", str(pruned)]) == 0
    dense_dir = tmp_path / "dense"  # a teacher saved by vitprune, whatever the family
    assert main(["train", *common, "--epochs", "1", "--max-steps-per-epoch", "1",
                 "--out", str(dense_dir), "--quiet"]) == 0
    assert main(["finetune", "--student", str(pruned), "--teacher", str(dense_dir), "--data",
                 "synthetic", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16",
                 "--threads", "1", "--quiet", "--out", str(tmp_path / "ft")]) == 0
    capsys.readouterr()
    small = vitprune.load(tmp_path / "ft")
    assert vit_shape(small) == vit_shape(vitprune.load(pruned))


def test_a_t2t_checkpoint_of_another_size_is_refused_on_the_command_line(tmp_path, capsys):
    from vitprune.adapters.t2t_vit import T2T_PUBLISHED

    with torch.device("meta"):
        sd = vitprune.build_model("t2t_vit_14").state_dict()
    torch.save({"state_dict_ema": {k: torch.zeros(v.shape) for k, v in sd.items()}},
               tmp_path / "81.5_T2T_ViT_14.pth.tar")
    assert main(["info", "--model", "t2t_vit_7", "--checkpoint",
                 str(tmp_path / "81.5_T2T_ViT_14.pth.tar")]) == 2
    err = capsys.readouterr().err
    assert "t2t_vit_14" in err and all(n in err for n in T2T_PUBLISHED)


@pytest.mark.parametrize("model", ["t2t_vit_tiny", "hf_deit"])
def test_a_pruned_model_of_the_family_exports_to_onnx(tmp_path, capsys, model):
    """The export is checked in onnxruntime against PyTorch before the file appears."""
    pytest.importorskip("onnxruntime")
    name = str(hf_dir(tmp_path, teacher=True)) if model == "hf_deit" else model
    plan = {"blocks": [{"heads": [0, 2], "neurons": list(range(0, 24))}] * 3
            + ([{"heads": [1], "neurons": [3, 5]}] if model == "t2t_vit_tiny" else []),
            "tokens": [{"block": 1, "keep_rate": 0.5, "fuse": True}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert main(["prune", "--model", name, "--plan", str(tmp_path / "plan.json"),
                 "--out", str(tmp_path / "pruned")]) == 0
    assert main(["export", "--model", str(tmp_path / "pruned"), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx"), "--dynamic-batch"]) == 0
    capsys.readouterr()
    assert (tmp_path / "m.onnx").stat().st_size > 0
