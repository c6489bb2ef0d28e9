import json

import pytest

from vitprune.cli import main


def test_train_then_eval_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--epochs", "1",
                 "--batch-size", "64", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert (out / "model.safetensors").exists() and (out / "model.json").exists()
    meta = json.loads((out / "model.json").read_text())["meta"]["trained"]
    assert meta["command"].startswith("vitprune train --model fmnist_vit_tiny")
    assert main(["eval", "--model", str(out), "--data", "synthetic", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["top1"] == pytest.approx(meta["test_top1"])
    assert res["images"] == 256
    # patch 7 on 28x28: 16 patches + class token, width 32, 4 blocks, MLP 64
    n, c, blocks = 17, 32, 4
    per_block = 4 * n * c * c + 2 * n * n * c + 2 * n * c * 64
    expected = 16 * 49 * c + blocks * per_block + c * 10
    assert res["gmacs"] * 1e9 == pytest.approx(expected)


def test_continued_training_keeps_the_lineage(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--data", "synthetic", "--epochs", "1", "--batch-size", "64", "--quiet",
              "--max-steps-per-epoch", "2"]
    assert main(["train", "--model", "fmnist_vit_tiny", "--out", str(first)] + common) == 0
    assert main(["train", "--model", str(first), "--out", str(second), "--no-augment"] + common) == 0
    meta = json.loads((second / "model.json").read_text())["meta"]
    assert meta["lineage"][0]["command"].startswith("vitprune train --model fmnist_vit_tiny")
    assert "--no-augment" in meta["trained"]["command"]


def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys):
    assert main(["eval", "--model", "no_such_vit", "--data", "synthetic"]) == 2
    assert "unknown model 'no_such_vit'" in capsys.readouterr().err
    assert main(["eval", "--model", "fmnist_vit_tiny", "--data", "fashion-mnist",
                 "--data-dir", str(tmp_path)]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
