"""ONNX export (vitprune/io/export.py and the export command): checked with onnxruntime, int8,
nothing kept on failure; the feature-map helpers refused on models that select tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import random_plan
from vitprune.adapters import input_shape, vit_shape
from vitprune.cli import main
from vitprune.errors import DependencyError, ModelError, OutputError
from vitprune.io.export import export_onnx, ort_runner
from vitprune.models import build_model
from vitprune.surgery import prune


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_onnx_export_matches_pytorch_at_every_batch_size(pruned, tmp_path):
    shape = input_shape(pruned)
    res = export_onnx(pruned, shape, tmp_path / "m.onnx", dynamic_batch=True, batch=2)
    assert res["max_abs_diff"] < 1e-4 and res["check_batches"] == [2, 3]
    run = ort_runner(tmp_path / "m.onnx")
    for b in (1, 5):  # batch sizes the export's own check did not see
        x = torch.randn(b, *shape)
        with torch.no_grad():
            ref = pruned(x)
        got = torch.from_numpy(run(x))
        assert ref.abs().max() > 0.1  # a meaningful comparison, not of near-zero logits
        assert (got - ref).abs().max() < 1e-4


def test_feature_map_helpers_are_refused_after_token_selection(tiny_vit):
    x = torch.randn(1, 1, 28, 28)
    with_tokens = prune(tiny_vit, random_plan(vit_shape(tiny_vit), 0, stages=(2,)))
    for call in (lambda: with_tokens.forward_intermediates(x),
                 lambda: with_tokens.get_intermediate_layers(x, reshape=True)):
        with pytest.raises(ModelError, match="no longer form the patch grid"):
            call()
    assert with_tokens(x).shape == (1, 10)  # the forward itself is untouched
    # without token stages the grid is intact and timm's helper still works
    narrower = prune(tiny_vit, random_plan(vit_shape(tiny_vit), 0))
    feats = narrower.forward_intermediates(x, intermediates_only=True)
    assert [f.shape for f in feats] == [(1, 32, 4, 4)] * 4
    assert tiny_vit.forward_intermediates(x, intermediates_only=True)[0].shape == (1, 32, 4, 4)


def test_onnx_int8_is_smaller_and_close(tmp_path):
    torch.manual_seed(0)
    model = build_model("fmnist_vit_d12").eval()
    model = prune(model, random_plan(vit_shape(model), 1, stages=(3, 6)))
    shape = input_shape(model)
    fp32 = export_onnx(model, shape, tmp_path / "f.onnx", batch=4)
    int8 = export_onnx(model, shape, tmp_path / "q.onnx", batch=4, int8=True)
    assert int8["bytes"] < 0.6 * fp32["bytes"]
    assert 0 < int8["rel_error"] < 0.1  # quantized (not a copy of float32), and still close


def test_export_command_writes_a_checked_file_and_never_overwrites(saved, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(saved), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["max_abs_diff"] < 1e-4 and out.stat().st_size == res["bytes"]
    before = out.read_bytes()
    assert main(["export", "--model", str(saved), "--out", str(out), "--int8"]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_export_bad_model_or_output_leaves_no_file(saved, tmp_path, capsys):
    d = tmp_path / "exports"
    d.mkdir()
    assert main(["export", "--model", "resnet50", "--out", str(d / "a.onnx")]) == 2
    assert "no vitprune family prunes" in capsys.readouterr().err
    assert main(["export", "--model", str(saved), "--out", str(saved / "a.onnx")]) == 2
    assert "input" in capsys.readouterr().err
    assert _leftovers(d) == [] and "a.onnx" not in _leftovers(saved)
    (tmp_path / "file").write_text("x")
    assert main(["export", "--model", str(saved), "--out", str(tmp_path / "file" / "a.onnx")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_export_to_a_read_only_directory_leaves_nothing(saved, tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        assert main(["export", "--model", str(saved), "--out", str(d / "a.onnx")]) == 2
        assert "permission denied" in capsys.readouterr().err
        assert _leftovers(d) == []
    finally:
        d.chmod(0o700)


def test_a_failed_check_keeps_nothing(tiny_vit, tmp_path, monkeypatch):
    import vitprune.io.export as ex

    monkeypatch.setattr(ex, "FP32_ATOL", -1.0)  # no export can pass: the check must stop it
    with pytest.raises(ModelError, match="does not match PyTorch"):
        export_onnx(tiny_vit, input_shape(tiny_vit), tmp_path / "m.onnx")
    assert _leftovers(tmp_path) == []


def test_export_without_the_extra_says_how_to_install_it(tiny_vit, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(DependencyError, match=r"vitprune\[export\]"):
        export_onnx(tiny_vit, input_shape(tiny_vit), tmp_path / "m.onnx")
    assert _leftovers(tmp_path) == []


def test_export_refuses_a_plan_that_does_not_fit(tmp_path, capsys):
    from vitprune.plan import BlockPlan, PrunePlan

    plan = tmp_path / "p.json"
    PrunePlan(tuple(BlockPlan((0,), (0,)) for _ in range(3)), ()).save(plan)  # tiny has 4 blocks
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "fmnist_vit_tiny", "--plan", str(plan), "--out", str(out)]) \
        == 2
    assert "block" in capsys.readouterr().err and not out.exists()


def test_output_error_is_raised_for_an_existing_file(tiny_vit, tmp_path):
    (tmp_path / "m.onnx").write_text("mine")
    with pytest.raises(OutputError):
        export_onnx(tiny_vit, input_shape(tiny_vit), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_text() == "mine"


def test_export_settings_are_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    # the model does not exist: a settings error must come first, naming the option
    assert main(["export", "--model", "no_such_model", "--out", str(out), "--opset", "12"]) == 2
    assert "--opset must be between 18 and 23" in capsys.readouterr().err
    assert main(["export", "--model", "no_such_model", "--out", str(out), "--batch", "0"]) == 2
    assert "--batch must be an integer >= 1" in capsys.readouterr().err
    assert not out.exists()
