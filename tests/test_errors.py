"""A careless user's mistakes, class by class, through the command line: each one exits 2 with
one line that says what to do, before any work, with nothing written (or, for the full disk, a
run that resumes once space is freed).

Every case runs ``vitprune.cli.main`` in-process on tiny models and tiny folders; a case passes
only if the exit status is 2, stderr is exactly one line starting ``vitprune: error:`` with the expected
words, no traceback is printed, and ``--out`` does not exist afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import image_folder
from vitprune.cli import main
from vitprune.io import save
from vitprune.models import ArchSpec, build_model

TINY = ["--model", "fmnist_vit_tiny"]
SYNTH = ["--data", "synthetic"]


def latency_search(table: str) -> list[str]:
    """A search of the tiny model under a latency budget with the fixture's table ``table``."""
    return ["search", *TINY, *SYNTH, "--budget", "0.6", "--budget-metric", "latency",
            "--latency-table", f"{{root}}/{table}.json", "--out", "{out}"]


# -- fixtures: a saved model, image folders good and bad, latency tables ---------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Everything the cases read; never written by them."""
    r = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save(r / "saved", build_model("fmnist_vit_tiny").eval(), ArchSpec("fmnist_vit_tiny"))
    torch.save(build_model("fmnist_vit_tiny").state_dict(), r / "tiny.pt")
    rgb = ArchSpec("fmnist_vit_tiny", {"in_chans": 3, "img_size": 32})
    save(r / "rgb32", build_model(rgb).eval(), rgb)
    image_folder(r / "folder")
    image_folder(r / "grey_folder", channels=1, size=(28, 28))
    image_folder(r / "many_classes", channels=1, size=(28, 28), classes=tuple("abcdefghijkl"), n=(2, 1))
    empty_class = image_folder(r / "empty_class")
    shutil.rmtree(empty_class / "train" / "b")
    (empty_class / "train" / "b").mkdir()
    no_val = image_folder(r / "empty_split")
    for d in (no_val / "val").iterdir():
        shutil.rmtree(d)
    truncated = image_folder(r / "truncated")
    png = truncated / "train" / "a" / "0.png"
    png.write_bytes(png.read_bytes()[:60])
    not_image = image_folder(r / "not_image")
    (not_image / "train" / "a" / "notes.png").write_text("this is not an image\n")

    from vitprune.profile import build_table

    table = build_table(build_model("fmnist_vit_tiny").eval(), batch=2, threads=1, repeats=1,
                        warmup=1, passes=1, neuron_points=4, calibration_plans=4,
                        progress=False).to_dict()
    (r / "table.json").write_text(json.dumps(table))
    for name, edit in {
        "table_str_batch": lambda t: t["meta"].update(batch="two"),
        "table_str_model": lambda t: t["meta"].update(model="tiny"),
        "table_bf16": lambda t: t["meta"].update(dtype="bfloat16"),
        "table_batch8": lambda t: t["meta"].update(batch=8),
        "table_negative": lambda t: t.update(offset_ms=-1e6),
        "table_short": lambda t: t.update(tokens=t["tokens"][:-2],
                                          attn_ms=[row[:-2] for row in t["attn_ms"]],
                                          mlp_ms=[row[:-2] for row in t["mlp_ms"]],
                                          select_ms=t["select_ms"][:-2],
                                          drop_ms=(t["drop_ms"][:-2] if t.get("drop_ms")
                                                   else t.get("drop_ms"))),
    }.items():
        t = json.loads(json.dumps(table))
        edit(t)
        (r / f"{name}.json").write_text(json.dumps(t))
    return r


CASES: dict[str, tuple[list[str], str]] = {
    # model arguments, checked against the family's constructor and its own constraints
    "unknown model arg": (["eval", *TINY, *SYNTH, "--model-args", "bogus_kw=3"], "bogus_kw"),
    "model arg wrong type": (["eval", *TINY, *SYNTH, "--model-args", "depth=abc"], "depth"),
    "negative depth": (["eval", *TINY, *SYNTH, "--model-args", "depth=-1"], "depth"),
    "heads do not divide": (["eval", *TINY, *SYNTH, "--model-args", "num_heads=5"], "num_heads"),
    "bad global pool": (["eval", *TINY, *SYNTH, "--model-args", "global_pool=bogus"],
                        "global_pool"),
    "zero classes": (["train", *TINY, *SYNTH, "--model-args", "num_classes=0", "--out", "{out}"],
                     "num_classes"),
    "negative classes": (["train", *TINY, *SYNTH, "--model-args", "num_classes=-3",
                          "--out", "{out}"], "num_classes"),
    "model dir missing": (["eval", "--model", "{root}/nowhere", *SYNTH], "does not exist"),
    "model is a file": (["eval", "--model", "{root}/tiny.pt", *SYNTH], "--checkpoint"),
    # devices and threads
    "device banana": (["score", *TINY, *SYNTH, "--device", "banana", "--out", "{out}"], "device"),
    "device mps": (["score", *TINY, *SYNTH, "--device", "mps", "--out", "{out}"], "mps"),
    "cuda without CUDA": (["compress", *TINY, *SYNTH, "--budget", "0.6", "--device", "cuda",
                           "--out", "{out}"], "cuda"),
    "cuda:9": (["score", *TINY, *SYNTH, "--device", "cuda:9", "--out", "{out}"], "cuda"),
    "threads -1": (["train", *TINY, *SYNTH, "--threads", "-1", "--out", "{out}"], "threads"),
    # the data does not fit the model
    "img-size a model cannot take": (["eval", "--model", "{root}/rgb32", "--data", "imagefolder",
                                      "--data-dir", "{root}/folder", "--img-size", "224"],
                                     "224"),
    "img-size with a fixed-size dataset": (["eval", *TINY, *SYNTH, "--img-size", "32"],
                                           "img-size"),
    "img-size absurd": (["train", "--model", "fmnist_vit_tiny", "--data", "imagefolder",
                         "--data-dir", "{root}/folder", "--img-size", "100000",
                         "--out", "{out}"], "img-size"),
    "more classes than the classifier": (["train", "--model", "{root}/saved", "--data",
                                          "imagefolder", "--data-dir", "{root}/many_classes",
                                          "--out", "{out}"], "12"),
    "more classes, model by name": (["compress", "--model", "fmnist_vit_tiny", "--data",
                                     "imagefolder", "--data-dir", "{root}/many_classes",
                                     "--budget", "0.6", "--out", "{out}"], "num_classes=12"),
    # image folders with bad contents
    "empty class folder": (["eval", "--model", "{root}/rgb32", "--data", "imagefolder",
                            "--data-dir", "{root}/empty_class"], "empty"),
    "empty split": (["eval", "--model", "{root}/rgb32", "--data", "imagefolder",
                     "--data-dir", "{root}/empty_split"], "val"),
    "truncated image": (["train", "--model", "{root}/rgb32", "--data", "imagefolder",
                         "--data-dir", "{root}/truncated", "--out", "{out}"], "0.png"),
    "not an image": (["train", "--model", "{root}/rgb32", "--data", "imagefolder",
                      "--data-dir", "{root}/not_image", "--out", "{out}"], "notes.png"),
    # sizes that cannot work
    "batch above the split": (["train", *TINY, *SYNTH, "--batch-size", "100000",
                               "--out", "{out}"], "batch"),
    "odd batch with mixup": (["train", *TINY, *SYNTH, "--batch-size", "63", "--mixup", "0.8",
                              "--out", "{out}"], "even"),
    "bench batch absurd": (["bench", *TINY, "--batch", "100000000"], "batch"),
    "neuron multiple above the MLP": (["search", *TINY, *SYNTH, "--budget", "0.6",
                                       "--neuron-multiple", "4096", "--out", "{out}"],
                                      "neuron-multiple"),
    # settings refused, not recorded
    "unknown RandAugment policy": (["train", *TINY, *SYNTH, "--rand-augment", "rand-zzz-qqq",
                                    "--out", "{out}"], "rand-augment"),
    "RandAugment on in-memory data": (["train", *TINY, *SYNTH, "--rand-augment",
                                       "rand-m9-mstd0.5", "--out", "{out}"], "rand-augment"),
    "random erasing on in-memory data": (["train", *TINY, *SYNTH, "--random-erasing", "0.25",
                                          "--out", "{out}"], "random-erasing"),
    "depth on a family that cannot": (["search", "--model", "{root}/hf_vit", *SYNTH, "--budget",
                                       "0.6", "--depth", "--out", "{out}"], "--depth"),
    # malformed latency tables
    "table batch is a string": (latency_search("table_str_batch"), "meta.batch"),
    "table model is a string": (latency_search("table_str_model"), "meta.model"),
    "bf16 table, float32 search": (latency_search("table_bf16"), "bfloat16"),
    "negative offset": (latency_search("table_negative"), "offset"),
    "grid short of the model": (latency_search("table_short"), "cover"),
    "table for cost": (["cost", *TINY, "--latency-table", "{root}/table_str_batch.json"],
                       "meta.batch"),
    # checkpoints
    "checkpoint is a directory": (["eval", *TINY, *SYNTH, "--checkpoint", "{root}/folder"],
                                  "directory"),
    "checkpoint of another head": (["eval", *TINY, "--model-args", "num_classes=3", *SYNTH,
                                    "--checkpoint", "{root}/tiny.pt"], "num_classes=10"),
    "budget nothing meets": (["search", *TINY, *SYNTH, "--budget", "0.001", "--out", "{out}"],
                             "budget"),
    "deit recipe, label count": (["train", "--model", "{root}/saved", "--data", "imagefolder",
                                  "--data-dir", "{root}/many_classes", "--recipe", "deit",
                                  "--out", "{out}"], "12"),
}

# cases that need an environment variable set (the distributed launch's)
ENV: dict[str, dict[str, str]] = {
    "WORLD_SIZE without a rendezvous": {"WORLD_SIZE": "2", "RANK": "0"},
    "WORLD_SIZE not a number": {"WORLD_SIZE": "abc"},
}
CASES.update({
    "WORLD_SIZE without a rendezvous": (["score", *TINY, *SYNTH, "--out", "{out}"],
                                        "MASTER_ADDR"),
    "WORLD_SIZE not a number": (["score", *TINY, *SYNTH, "--out", "{out}"], "WORLD_SIZE"),
    "truncated HF safetensors": (["eval", "--model", "{root}/hf_truncated", *SYNTH],
                                 "model.safetensors"),
    "HF bin holding code": (["eval", "--model", "{root}/hf_pickled", *SYNTH], "pytorch_model.bin"),
})
NEEDS_HF = {"depth on a family that cannot", "truncated HF safetensors", "HF bin holding code"}


class _Code:
    """Pickles as a call: loading it with weights_only=False would run it."""

    def __reduce__(self):
        return (print, ("this ran",))


def _hf_inputs(root: Path, transformers) -> None:
    if (root / "hf_vit").exists():
        return
    _hf_dir(root / "hf_vit", transformers)
    shutil.copytree(root / "hf_vit", root / "hf_truncated")
    weights = root / "hf_truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(root / "hf_vit", root / "hf_pickled")
    (root / "hf_pickled" / "model.safetensors").unlink()
    torch.save({"weights": _Code()}, root / "hf_pickled" / "pytorch_model.bin")


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line(rc: int, err: str, expected: str) -> None:
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("vitprune: error:"), err
    assert expected.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_user_error_is_one_line_and_writes_nothing(name, root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VITPRUNE_DEBUG", raising=False)
    if name in NEEDS_HF:
        _hf_inputs(root, pytest.importorskip("transformers"))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in ENV.get(name, {}).items():
        monkeypatch.setenv(key, value)
    argv, expected = CASES[name]
    out = tmp_path / "out"
    argv = [a.format(root=root, out=out) for a in argv]
    if argv[0] in ("train", "finetune", "compress"):  # short, should a case not be refused
        argv += ["--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"]
    if argv[0] in ("search", "compress"):
        argv += ["--trials", "3", "--init", "2", "--calib-images", "16", "--score-images", "16"]
    rc, err = _run(argv, capsys)
    _assert_one_line(rc, err, expected)
    assert not out.exists(), "the refused command wrote its --out"
    assert "this ran" not in capsys.readouterr().out


# -- conversions and records instead of refusals ----------------------------------------------
def test_a_colour_folder_is_read_grey_for_a_grey_model(root, capsys):
    """The obvious conversion (Pillow's "L"), at the model's own size, with a 1-value mean."""
    from PIL import Image

    from vitprune.data.imagefolder import load
    from vitprune.pipeline import source_data_config

    splits = load(root / "folder", 28, calib_size=2,
                  data_config=source_data_config(root / "saved"))
    assert splits.in_chans == 1 and splits.data_config["mean"] == (pytest.approx(0.449),)
    x, _ = splits.test[0]
    path = splits.test.samples[0][0]
    grey = np.asarray(Image.open(path).convert("L").resize((28, 28), Image.BICUBIC)) / 255.0
    assert x.shape == (1, 28, 28)
    assert x.mean().item() == pytest.approx((grey.mean() - 0.449) / 0.226, abs=0.05)
    capsys.readouterr()
    assert main(["eval", "--model", str(root / "saved"), "--data", "imagefolder",
                 "--data-dir", str(root / "folder"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4


def test_score_images_beyond_the_split_are_recorded_as_used(root, tmp_path, capsys):
    out = tmp_path / "scores"
    assert main(["score", *TINY, *SYNTH, "--calib-size", "32", "--score-images", "1000",
                 "--out", str(out)]) == 0
    from vitprune.scoring import load_scores

    _, meta = load_scores(out if out.is_file() else next(out.glob("*.json")))
    assert meta["images"] == 32 and meta["images_requested"] == 1000


def test_a_full_disk_is_one_line_leaves_nothing_half_written_and_resumes(tmp_path, capsys,
                                                                         monkeypatch):
    """torch's zip writer fails with its own error on a full disk; the command says the disk
    is full, leaves no temporary file, and the same command finishes once space is freed."""
    import vitprune.fsutil as fsutil

    real_save, real_usage = torch.save, shutil.disk_usage
    full = {"on": True}

    def save(obj, f, *a, **k):
        if full["on"]:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")
        return real_save(obj, f, *a, **k)

    def usage(path):
        u = real_usage(path)
        return type(u)(u.total, u.total - 1024, 1024) if full["on"] else u

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(fsutil.shutil, "disk_usage", usage)
    monkeypatch.delenv("VITPRUNE_DEBUG", raising=False)
    out = tmp_path / "run"
    argv = ["compress", *TINY, *SYNTH, "--budget", "0.6", "--trials", "3", "--init", "2",
            "--calib-images", "32", "--score-images", "32", "--epochs", "1",
            "--max-steps-per-epoch", "2", "--batch-size", "32", "--quiet", "--out", str(out)]
    capsys.readouterr()
    rc, err = main(argv), capsys.readouterr().err
    _assert_one_line(rc, err, "space")
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp*"))
    full["on"] = False
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "model.safetensors").exists() or any(out.rglob("model.safetensors"))


def _hf_dir(out: Path, transformers) -> Path:
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, num_labels=10)
    transformers.ViTForImageClassification(config).save_pretrained(out)
    return out


# -- the two real bugs: the DeiT recipe on other families, int8 at every opset ----------------
@pytest.mark.parametrize("family", ["hf", "t2t"])
def test_the_deit_recipe_runs_end_to_end_on_an_image_folder(family, root, tmp_path, capsys):
    """Soft Mixup/CutMix targets reach every family's loss (an HF ViT and a T2T-ViT), with
    RandAugment and random erasing on colour (HF) and grey (T2T) images."""
    if family == "hf":
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        model = tmp_path / "hf"
        transformers.ViTForImageClassification(transformers.ViTConfig(
            image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, num_labels=2)).save_pretrained(model)
        args, folder = ["--model", str(model), "--img-size", "32"], root / "folder"
    else:
        args = ["--model", "t2t_vit_tiny", "--model-args", "num_classes=2"]
        folder = root / "grey_folder"
    out = tmp_path / "run"
    assert main(["compress", *args, "--data", "imagefolder", "--data-dir", str(folder),
                 "--recipe", "deit", "--budget", "0.7", "--trials", "3", "--init", "2",
                 "--calib-images", "8", "--score-images", "8", "--epochs", "1",
                 "--max-steps-per-epoch", "2", "--batch-size", "4", "--bench-batches", "1",
                 "--quiet", "--json", "--out", str(out)]) == 0, capsys.readouterr().err
    cfg = json.loads((out / "run.json").read_text())
    assert "finetune" in cfg["done"] and cfg["done"][-1] == "report"
    settings = json.dumps(cfg)
    assert "rand-m9-mstd0.5-inc1" in settings and '"mixup": 0.8' in settings


@pytest.mark.parametrize("opset", range(18, 24))
def test_int8_export_runs_at_every_opset_it_accepts(opset, root, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "q.onnx"
    assert main(["export", "--model", str(root / "saved"), "--int8", "--opset", str(opset),
                 "--out", str(out), "--json"]) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["int8"] and res["opset"] == opset and 0 < res["rel_error"] < 0.2
