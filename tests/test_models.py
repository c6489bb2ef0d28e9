import pytest
import timm
import torch
from safetensors.torch import save_file

import vitprune
from vitprune.cli import main
from vitprune.errors import ModelError
from vitprune.models import ArchSpec, build_model, load_weights, read_state_dict


def test_registered_and_timm_names_build_vits():
    m = build_model("fmnist_vit_d12")
    assert len(m.blocks) == 12 and m.patch_embed.num_patches == 49
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    d = build_model("deit_tiny_patch16_224", num_classes=7, img_size=32, patch_size=16)
    assert d.num_classes == 7 and d.blocks[0].attn.num_heads == 3


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ModelError) as err:
        build_model("deit_smal_patch16_224")
    assert "deit_small_patch16_224" in str(err.value)


def test_non_vit_timm_model_is_refused():
    with pytest.raises(ModelError, match="timm.s resnet module, which no vitprune family prunes"):
        build_model("resnet18")


def test_arch_spec_round_trip():
    spec = ArchSpec("deit_tiny_patch16_224", {"num_classes": 10})
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ModelError):
        ArchSpec.from_dict({"kwargs": {}})


def _layouts(sd: dict, noise: dict) -> dict[str, object]:
    """The checkpoint layouts users hold; ``noise`` is a different state_dict that must never be
    the one loaded (an optimizer-free stand-in for the other entries of a training file)."""
    ddp = {"module." + k: v for k, v in sd.items()}
    compiled_ddp = {"_orig_mod.module." + k: v for k, v in sd.items()}
    return {
        "bare": sd,
        "deit-release": {"model": sd, "epoch": 300, "args": {"lr": 5e-4}},
        "state_dict": {"state_dict": sd, "epoch": 3, "arch": "vit"},
        # timm / T2T training scripts: EMA weights beside the live ones; the EMA ones are used
        "state_dict_ema": {"state_dict": noise, "state_dict_ema": sd, "epoch": 3},
        "model_ema": {"model": noise, "model_ema": sd},
        "ddp-prefix": {"model": ddp},
        "compiled-ddp-prefix": compiled_ddp,
    }


@pytest.mark.parametrize("layout", ["safetensors", "bare", "deit-release", "state_dict",
                                    "state_dict_ema", "model_ema", "ddp-prefix",
                                    "compiled-ddp-prefix"])
def test_checkpoint_layouts_load(tmp_path, tiny_vit, layout):
    sd = tiny_vit.state_dict()
    torch.manual_seed(7)
    noise = build_model("fmnist_vit_tiny").state_dict()
    f = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth.tar")
    if layout == "safetensors":
        save_file(sd, str(f))
    else:
        torch.save(_layouts(sd, noise)[layout], f)
    torch.manual_seed(1)
    other = build_model("fmnist_vit_tiny").eval()
    load_weights(other, read_state_dict(f), str(f))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(other(x), tiny_vit(x))


def test_a_file_without_a_state_dict_names_what_it_holds(tmp_path):
    f = tmp_path / "w.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, f)
    with pytest.raises(ModelError, match=r"found \['epoch', 'optimizer'\].*state_dict_ema"):
        read_state_dict(f)


def test_checkpoint_from_another_architecture_is_explained(tmp_path, tiny_vit):
    f = tmp_path / "w.safetensors"
    save_file(tiny_vit.state_dict(), str(f))
    big = build_model("fmnist_vit_d12")
    with pytest.raises(ModelError) as err:
        load_weights(big, read_state_dict(f), str(f))
    msg = str(err.value)
    assert "does not match" in msg and "missing" in msg and "other shapes" in msg


def test_corrupt_checkpoint_is_explained(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="corrupt"):
        read_state_dict(f)
    with pytest.raises(ModelError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny"])
def test_non_vits_given_vit_options_are_refused_as_non_vits(name):
    # the options every data set adds (img_size ...) used to end in a TypeError from timm
    with pytest.raises(ModelError, match=f"{name} is defined in timm.s .* module, which no vitprune family"):
        build_model(name, num_classes=10, img_size=28, in_chans=1)


def test_a_vit_given_an_option_it_lacks_names_the_option():
    with pytest.raises(ModelError, match="does not accept the options.*no_such_option"):
        build_model("deit_tiny_patch16_224", no_such_option=1)


class _Payload:  # any class: unpickling it would call code of the file's choosing
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_pickled_program_is_refused_without_suggesting_to_unpickle_it(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(ModelError, match="never unpickles") as err:
        read_state_dict(path)
    assert "weights_only=False" not in str(err.value) and "weights_only" not in str(err.value)
    assert "unpickled!" not in capsys.readouterr().out


def _hub_cache(tmp_path, monkeypatch, reachable: bool = False):
    from huggingface_hub import constants

    from vitprune.adapters import timm_vit

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(timm_vit, "hub_reachable", lambda *a, **k: reachable)
    return cache


def test_pretrained_without_network_fails_fast_naming_the_offline_way(tmp_path, monkeypatch,
                                                                        capsys):
    from huggingface_hub import constants

    _hub_cache(tmp_path, monkeypatch)
    out = tmp_path / "run"
    argv = ["eval", "--model", "deit_tiny_patch16_224", "--pretrained", "--data", "synthetic"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "published weights" in err and "--checkpoint FILE" in err and "Traceback" not in err
    assert constants.HF_HUB_OFFLINE is False  # the hub's offline switch is restored
    assert not out.exists()


@pytest.mark.parametrize("name, tag, keys", [
    ("deit_tiny_patch16_224", "fb_in1k", ("blocks.3.attn.qkv.weight", "pos_embed", "norm.bias")),
    ("swin_tiny_patch4_window7_224", "ms_in1k",
     ("layers.2.blocks.1.attn.relative_position_bias_table", "layers.1.downsample.reduction.weight")),
    ("eva02_tiny_patch14_224", "mim_in22k", ("blocks.3.attn.q_bias", "blocks.0.mlp.fc1.weight")),
])
def test_pretrained_reads_timms_weights_from_the_hub_cache_offline(tmp_path, monkeypatch, name,
                                                                     tag, keys):
    """The published weights as timm would find them in the cache, with the classifier reset
    for other classes (as timm does) and everything else loaded: ViT, Swin and EVA-02."""
    cache = _hub_cache(tmp_path, monkeypatch)
    torch.manual_seed(3)
    published = timm.create_model(name).state_dict()
    repo = cache / f"models--timm--{name}.{tag}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in published.items()}, str(snap / "model.safetensors"))
    model = build_model(name, pretrained=True, num_classes=10)
    got = model.state_dict()
    head = "head.fc.weight" if "swin" in name else "head.weight"
    assert got[head].shape[0] == 10
    for k in (*keys, "patch_embed.proj.weight"):
        assert torch.equal(got[k], published[k]), k


def test_pretrained_and_model_args_are_checked_before_any_work(capsys, tmp_path):
    cases = [
        (["--model", "fmnist_vit_tiny", "--pretrained"], "no published weights"),
        (["--model", "deit_tiny_patch16_224", "--pretrained", "--checkpoint", "w.pt"],
         "pass one"),
        (["--model", "fmnist_vit_tiny", "--model-args", "qk_norm"], "KEY=VALUE"),
    ]
    for extra, msg in cases:
        assert main(["cost", *extra]) == 2
        assert msg in capsys.readouterr().err


def test_model_args_reach_the_model_and_its_saved_record(tmp_path, capsys):
    from vitprune.io.model_dir import read_config

    out = tmp_path / "m"
    argv = ["train", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--epochs", "1",
            "--max-steps-per-epoch", "1", "--quiet", "--out", str(out),
            "--model-args", "qk_norm=true", "drop_path_rate=0.1", "global_pool=avg"]
    assert main(argv) == 0
    arch = read_config(out)["arch"]["kwargs"]
    assert arch == {"qk_norm": True, "drop_path_rate": 0.1, "global_pool": "avg"}
    loaded = vitprune.load(out)
    assert loaded.global_pool == "avg" and not isinstance(loaded.blocks[0].attn.q_norm,
                                                          torch.nn.Identity)


def test_parse_model_args_reads_json_values():
    from vitprune.models import parse_model_args

    got = parse_model_args(["a=true", "b=0.1", "c=[224,160]", "d=None", "e=avg", "f=3"])
    assert got == {"a": True, "b": 0.1, "c": [224, 160], "d": None, "e": "avg", "f": 3}
