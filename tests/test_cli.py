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


def test_info_describes_a_timm_model_without_fetching_weights(capsys):
    from timm.data import IMAGENET_DEFAULT_MEAN

    from vitprune.cli import main

    # --pretrained: the shape is that of the published model, and nothing is downloaded
    assert main(["info", "--model", "deit_tiny_patch16_224", "--pretrained", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["depth"] == 12 and res["heads"] == [3] * 12 and res["tokens_per_block"][0] == 197
    assert abs(res["gmacs"] - 1.26) < 0.02  # DeiT-T: 1.3 G in its paper
    assert res["data_config"]["mean"] == list(IMAGENET_DEFAULT_MEAN)
    assert main(["info", "--model", "deit_tiny_patch16_224", "--img-size", "224", "160",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["input_size"] == [3, 224, 160] and res["patches"] == 14 * 10


def test_a_models_options_are_model_source_fields_also_under_a_prefix():
    from vitprune.cli import _source, build_parser
    from vitprune.errors import ModelError
    from vitprune.models import ModelSource

    args = build_parser().parse_args([
        "finetune", "--student", "s", "--teacher", "vit_tiny_patch16_224", "--teacher-model-args",
        "depth=2", "qk_norm=true", "--out", "o"])
    assert _source(args, "teacher") == ModelSource("vit_tiny_patch16_224",
                                                   args={"depth": 2, "qk_norm": True})
    assert args.student_name == "s"
    args = build_parser().parse_args(["info", "--model", "vit_tiny_patch16_224", "--pretrained",
                                      "--checkpoint", "w.pt"])
    with pytest.raises(ModelError, match="--pretrained and --checkpoint"):
        _source(args)


def test_an_input_size_out_of_range_is_refused_by_its_option_name(capsys):
    assert main(["cost", "--model", "vit_tiny_patch16_224", "--img-size", "0"]) == 2
    assert "--img-size takes one size or two" in capsys.readouterr().err


def test_search_starts_with_anchors_by_default_and_no_anchors_turns_them_off():
    from vitprune.cli import build_parser, values
    from vitprune.config import SearchSettings

    def parsed(*extra):
        args = build_parser().parse_args(["search", "--model", "m", "--budget", "0.6", "--out",
                                          "o", *extra])
        return SearchSettings(**values(args, SearchSettings))

    assert parsed().anchors and parsed().loop_config(0).anchors
    assert not parsed("--no-anchors").anchors and not parsed("--no-anchors").loop_config(0).anchors
