"""The Hugging Face family: shape and cost, slicing, token selection, directories, records."""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vitprune.adapters.base import ArchSpec, head_channels  # noqa: E402
from vitprune.adapters.hf_vit import SUPPORTED, HFAdapter, HFTokenBlock  # noqa: E402
from vitprune.cost import macs, token_counts  # noqa: E402
from vitprune.errors import DependencyError, ModelError  # noqa: E402
from vitprune.plan import TokenStage, kept_tokens  # noqa: E402

ADAPTER = HFAdapter()
# 4x4 = 16 patches of 8x8 from 32x32 RGB; 4 heads of 8, MLP 64
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             image_size=32, patch_size=8, num_channels=3, num_labels=5)
CLASSES = {
    "vit": (transformers.ViTForImageClassification, transformers.ViTConfig),
    "deit": (transformers.DeiTForImageClassification, transformers.DeiTConfig),
    "deit_teacher": (transformers.DeiTForImageClassificationWithTeacher, transformers.DeiTConfig),
}
# (heads, neurons) kept in each of the three layers: uneven, out of order in id terms
KEEP = [([1, 3], [0, 5, 9, 63]), ([0, 1, 2], list(range(0, 64, 2))), ([2], [7])]


def _model(kind: str, attn: str = "sdpa", **over) -> torch.nn.Module:
    model_cls, config_cls = CLASSES[kind]
    torch.manual_seed(0)
    config = config_cls(**{**SMALL, **over})
    config._attn_implementation = attn
    model = model_cls(config).eval()
    with torch.no_grad():  # DeiT starts its tokens and position embedding at zero
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _prune(model: torch.nn.Module) -> None:
    for block, (heads, neurons) in zip(ADAPTER.blocks(model), KEEP):
        ADAPTER.prune_block(block, heads, neurons, head_dim=8)


def _numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_handles_its_classes_and_never_imports_transformers_to_say_no(monkeypatch):
    from timm.models.vision_transformer import VisionTransformer

    vit = _model("vit")
    assert all(ADAPTER.handles(_model(k)) for k in CLASSES)
    assert not ADAPTER.handles(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                 num_heads=4))
    assert not ADAPTER.handles(vit.vit)  # ViTModel: no classifier, not supported
    with pytest.raises(ModelError, match="DeiTForImageClassificationWithTeacher"):
        ADAPTER.check(vit.vit)
    monkeypatch.delitem(sys.modules, "transformers")
    assert not ADAPTER.handles(vit)  # without transformers loaded, nothing can be a HF model
    assert "transformers" not in sys.modules


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_shape_exact_dense_and_pruned(kind, qkv_bias):
    model = _model(kind, qkv_bias=qkv_bias)
    shape = ADAPTER.shape(model)
    assert (shape.embed_dim, shape.num_patches, shape.patch_macs, shape.num_classes) == (
        32, 16, 3 * 8 * 8, 5)
    assert shape.num_prefix == (1 if kind == "vit" else 2)
    assert shape.num_heads_out == (2 if kind == "deit_teacher" else 1)
    assert [(b.heads, b.head_dim, b.mlp_hidden) for b in shape.blocks] == [(4, 8, 64)] * 3

    _prune(model)
    shape = ADAPTER.shape(model)
    assert [(b.heads, b.mlp_hidden) for b in shape.blocks] == [(2, 4), (3, 32), (1, 1)]
    assert ADAPTER.blocks(model)[2].attention.num_attention_heads == 1
    assert model(_images()).logits.shape == (2, 5)  # transformers' own forward, pruned widths


@pytest.mark.parametrize("kind", list(CLASSES))
def test_logits_module_returns_the_models_logits_and_shares_it(kind):
    model = _model(kind)
    net = ADAPTER.logits_module(model)
    x = _images()
    with torch.no_grad():
        assert torch.equal(net(x), model(x).logits)
    if kind == "deit_teacher":
        out = model(x)
        assert torch.allclose(net(x), (out.cls_logits + out.distillation_logits) / 2)
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}
    net.train()
    assert model.training


def test_default_vit_b16_costs_17_6_gmacs():
    with torch.device("meta"):  # ViT-B/16 at 224: shape only, no memory
        model = transformers.ViTForImageClassification(transformers.ViTConfig())
    shape = ADAPTER.shape(model)
    assert (shape.num_patches, len(shape.blocks), shape.blocks[0].heads) == (196, 12, 12)
    assert macs(shape).total == pytest.approx(17.6e9, rel=0.02)


@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
def test_masking_channels_equals_slicing_them(kind):
    dense = _model(kind)
    masked, pruned = copy.deepcopy(dense), copy.deepcopy(dense)
    for block, (heads, neurons) in zip(ADAPTER.blocks(masked), KEEP):
        p = ADAPTER.parts(block)
        for lin, keep, size in ((p.proj, head_channels(heads, 8), 32),
                                (p.mlp_out, torch.as_tensor(neurons), 64)):
            mask = torch.zeros(size)
            mask[keep] = 1.0
            lin.register_forward_pre_hook(lambda _m, args, mask=mask: (args[0] * mask,))
    _prune(pruned)
    x = _images()
    with torch.no_grad():
        want, got, full = masked(x).logits, pruned(x).logits, dense(x).logits
    assert (got - want).abs().max() < 1e-4
    assert (full - want).abs().max() > 1e-3  # the masks did change the output


@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_token_block_keeping_all_tokens_is_the_layer(kind, attn):
    model = _model(kind, attn=attn)
    _prune(model)  # uneven head counts: the block reads its own widths
    x = torch.randn(2, 16 + ADAPTER.num_prefix(model), 32, generator=torch.Generator().manual_seed(2))
    for i, layer in enumerate(ADAPTER.blocks(model)):
        block = ADAPTER.token_block(model, i, TokenStage(i, 1.0))
        with torch.no_grad():
            want, got = layer(x), block(x)
        assert isinstance(got, torch.Tensor) and got.shape == x.shape
        assert (got - want).abs().max() < 1e-5
    keys = {k: v.shape for k, v in model.state_dict().items()}
    ADAPTER.set_block(model, 1, ADAPTER.token_block(model, 1, TokenStage(1, 1.0)))
    assert {k: v.shape for k, v in model.state_dict().items()} == keys


@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
@pytest.mark.parametrize("fuse", [True, False])
def test_token_stage_shortens_the_sequence_and_keeps_prefix_tokens(kind, fuse):
    model = _model(kind, attn="eager")  # eager: the attention also returns its weights
    _prune(model)
    prefix = ADAPTER.num_prefix(model)
    layer = ADAPTER.blocks(model)[1]
    block = ADAPTER.token_block(model, 1, TokenStage(1, 0.5, fuse))
    x = torch.randn(2, 16 + prefix, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, out = layer(x), block(x)
        _, weights = layer.attention(layer.layernorm_before(x))  # (B, heads, N, N)
    keep = kept_tokens(16, 0.5)
    # EViT: the patches the class token attends to most (mean over heads), in their order
    chosen = weights[:, :, 0, prefix:].mean(dim=1).topk(keep, dim=1).indices.sort(dim=1).values
    assert out.shape == (2, prefix + keep + int(fuse), 32)
    # attention saw every token and the MLP is per token: prefix and kept rows are the layer's own
    assert torch.allclose(out[:, :prefix], full[:, :prefix], atol=1e-5)
    for b in range(2):
        dist = torch.cdist(out[b, prefix:prefix + keep], full[b, prefix:])  # (keep, 16)
        assert dist.min(dim=1).values.max() < 1e-4
        assert torch.equal(dist.argmin(dim=1), chosen[b])

    ADAPTER.set_block(model, 1, block)
    shape = ADAPTER.shape(model)
    assert isinstance(ADAPTER.blocks(model)[1], HFTokenBlock)
    assert shape.blocks[1].keep_patches == keep and shape.blocks[1].fuse == fuse
    seen = []
    model.base_model.layernorm.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1]))
    with torch.no_grad():
        out = model(_images())
    assert seen == [token_counts(shape)[-1][1]] == [prefix + keep + int(fuse)]
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_model_with_token_stages_exports(attn):
    """torch.export (under ONNX export) makes transformers build a full-length attention mask
    unless the model runs the mask-free twin of its attention that after_token_stages sets."""
    model = _model("deit_teacher", attn=attn)
    _prune(model)
    x = _images()
    with torch.no_grad():
        before = model(x).logits
    ADAPTER.after_token_stages(model, [])
    assert model.config._attn_implementation == "vitprune_" + attn
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)  # the same attention function
    ADAPTER.set_block(model, 1, ADAPTER.token_block(model, 1, TokenStage(1, 0.5)))
    ADAPTER.after_token_stages(model, [1])  # idempotent
    assert model.config._attn_implementation == "vitprune_" + attn
    assert "vitprune" not in json.dumps(ADAPTER.arch(model).to_dict())  # not in the record
    net = ADAPTER.logits_module(model).eval()
    with torch.no_grad():
        program = torch.export.export(net, (x,))
        assert (program.module()(x) - net(x)).abs().max() < 1e-5


def test_token_block_refuses_an_attention_mask():
    model = _model("vit")
    block = ADAPTER.token_block(model, 0, TokenStage(0, 0.5))
    with pytest.raises(ModelError, match="attention mask"):
        block(torch.randn(1, 17, 32), torch.zeros(1, 1, 17, 17))


def _save(model, path, processor=None):
    model.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return path


def test_save_pretrained_directory_loads_with_its_preprocessing(tmp_path):
    model = _model("vit")
    proc = transformers.ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6],
                                          size={"height": 32, "width": 32}, resample=3)
    loaded, arch = ADAPTER.from_directory(_save(model, tmp_path / "vit", proc))
    assert type(loaded) is type(model) and not loaded.training
    x = _images()
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() == 0
    assert arch.name == "transformers"
    assert arch.kwargs["config"]["architectures"] == ["ViTForImageClassification"]
    assert ADAPTER.data_config(loaded) == {
        "input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6], "crop_pct": 1.0, "crop_mode": "squash"}
    assert ADAPTER.data_config(model) is None


def test_deit_directory_center_crop_becomes_crop_pct(tmp_path):
    proc = transformers.DeiTImageProcessor(size={"height": 36, "width": 36},
                                           crop_size={"height": 32, "width": 32})
    loaded, arch = ADAPTER.from_directory(_save(_model("deit_teacher"), tmp_path / "d", proc))
    cfg = ADAPTER.data_config(loaded)
    assert cfg["crop_pct"] == pytest.approx(32 / 36) and cfg["crop_mode"] == "squash"
    assert cfg["interpolation"] == "bicubic"
    assert arch.kwargs["config"]["architectures"] == ["DeiTForImageClassificationWithTeacher"]


@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_data_config_reproduces_the_image_processor(kind):
    """timm's transform from the data config prepares an image as transformers' processor does."""
    from PIL import Image
    from timm.data import create_transform

    from vitprune.adapters.hf_vit import data_config_of

    cls = transformers.ViTImageProcessorPil if kind == "vit" else transformers.DeiTImageProcessorPil
    proc = cls(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    pre = json.loads(proc.to_json_string())
    cfg = data_config_of(pre, (3, 224, 224))
    tf = create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    pixels = torch.randint(0, 256, (300, 410, 3), generator=torch.Generator().manual_seed(4))
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    want = torch.as_tensor(proc(image, return_tensors="np")["pixel_values"][0])
    got = tf(image)
    assert got.shape == want.shape == (3, 224, 224)
    assert (got - want).abs().max() < 1e-4


def test_unsupported_directories(tmp_path):
    swin = tmp_path / "swin"
    swin.mkdir()
    (swin / "config.json").write_text(json.dumps(
        {**transformers.SwinConfig().to_dict(), "architectures": ["SwinForImageClassification"]}))
    with pytest.raises(ModelError) as err:
        ADAPTER.from_directory(swin)
    assert "SwinForImageClassification" in str(err.value)
    assert all(name in str(err.value) for name in SUPPORTED)

    assert ADAPTER.from_directory(tmp_path) is None  # no config.json
    timm_hub = tmp_path / "timm"
    timm_hub.mkdir()
    (timm_hub / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224"}))
    assert ADAPTER.from_directory(timm_hub) is None  # a config.json, but not transformers'

    no_weights = _save(_model("vit"), tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        ADAPTER.from_directory(no_weights)


def test_directory_weights_that_do_not_fit_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _save(_model("vit"), tmp_path / "vit")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    with pytest.raises(ModelError, match="fits its weights"):  # shapes differ
        ADAPTER.from_directory(d)
    (d / "config.json").write_text(json.dumps(cfg))
    weights = load_file(d / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")},
              d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="classifier.weight"):  # transformers would init it
        ADAPTER.from_directory(d)


def _v4_key(key: str) -> str:
    """A transformers 5 ViT/DeiT state_dict key as transformers 4 (and published Hub
    checkpoints) name it."""
    key = re.sub(r"\.layers\.(\d+)\.", r".encoder.layer.\1.", key)
    for new, old in (("attention.q_proj", "attention.attention.query"),
                     ("attention.k_proj", "attention.attention.key"),
                     ("attention.v_proj", "attention.attention.value"),
                     ("attention.o_proj", "attention.output.dense"),
                     ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
        key = key.replace(new, old)
    return key


@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
def test_directory_with_transformers_4_key_names_loads(tmp_path, kind):
    from safetensors.torch import save_file

    model = _model(kind)
    d = _save(model, tmp_path / kind)
    old = {_v4_key(k): v.contiguous() for k, v in model.state_dict().items()}
    assert any(".encoder.layer.0.attention.attention.query." in k for k in old)
    save_file(old, d / "model.safetensors", metadata={"format": "pt"})
    loaded, _ = ADAPTER.from_directory(d)
    x = _images()
    with torch.no_grad():
        assert (loaded(x).logits - model(x).logits).abs().max() < 1e-6


def test_check_refuses_layers_it_cannot_slice():
    model = _model("vit")
    model.vit.layers[1].mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 32))
    with pytest.raises(ModelError, match="layer 1 has MLP type Sequential"):
        ADAPTER.shape(model)


def test_without_transformers_a_directory_asks_for_the_extra(tmp_path, monkeypatch):
    d = _save(_model("vit"), tmp_path / "vit")
    swin = tmp_path / "swin"
    swin.mkdir()
    (swin / "config.json").write_text(json.dumps({"model_type": "swin",
                                                  "architectures": ["SwinForImageClassification"]}))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(DependencyError, match=r"vitprune\[hf\]"):
        ADAPTER.from_directory(d)
    with pytest.raises(ModelError, match="SwinForImageClassification"):  # read from JSON alone
        ADAPTER.from_directory(swin)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_arch_record_rebuilds_the_model_and_a_pruned_one_reloads(kind):
    model = _model(kind)
    record = json.loads(json.dumps(ADAPTER.arch(model).to_dict()))  # as model.json stores it
    arch = ArchSpec.from_dict(record)
    assert ADAPTER.knows(arch.name) and not ADAPTER.knows("vit_base_patch16_224")
    rebuilt = ADAPTER.build(arch)
    assert type(rebuilt) is type(model)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes

    # what loading a vitprune-saved pruned model does: dense from the record, the plan's
    # structure, then the weights
    _prune(model)
    ADAPTER.set_block(model, 1, ADAPTER.token_block(model, 1, TokenStage(1, 0.5)))
    _prune(rebuilt)
    ADAPTER.set_block(rebuilt, 1, ADAPTER.token_block(rebuilt, 1, TokenStage(1, 0.5)))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(rebuilt(x).logits, model(x).logits)


def test_build_overrides_and_refusals():
    arch = ADAPTER.arch(_model("deit"))
    model = ADAPTER.build(ArchSpec(arch.name, {**arch.kwargs, "num_classes": 7, "in_chans": 1,
                                               "img_size": 24}))
    assert ADAPTER.shape(model).num_classes == 7
    assert ADAPTER.input_shape(model) == (1, 24, 24)
    assert ADAPTER.shape(model).num_patches == 9
    with pytest.raises(ModelError, match="--model DIR"):
        ADAPTER.build(arch, pretrained=True)
    with pytest.raises(ModelError, match="--model DIR"):
        ADAPTER.build(ArchSpec("transformers"))
    with pytest.raises(ModelError, match="no field"):
        ADAPTER.build(ArchSpec(arch.name, {**arch.kwargs, "qk_norm": True}))
    with pytest.raises(ModelError, match="no field"):
        ADAPTER.build(ArchSpec(arch.name, {**arch.kwargs, "to_dict": 1}))
    swin = {**transformers.SwinConfig().to_dict(), "architectures": ["SwinForImageClassification"]}
    with pytest.raises(ModelError, match="ViTForImageClassification"):
        ADAPTER.build(ArchSpec("transformers", {"config": swin}))
    hf_pruned = {**arch.kwargs["config"], "pruned_heads": {"0": [1]}}
    with pytest.raises(ModelError, match="pruned_heads"):
        ADAPTER.build(ArchSpec("transformers", {"config": hf_pruned}))
