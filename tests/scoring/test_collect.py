"""Feature collection: what the hooks record, and that they leave the model as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitprune.adapters import vit_shape
from vitprune.scoring import ScoringError, get_criterion
from vitprune.scoring.collect import collect, collect_taylor, feature_groups


def test_hooks_removed_and_outputs_unchanged(tiny_vit, calib_loader, state):
    x = next(iter(calib_loader))[0]
    before, snap = tiny_vit(x), state.snapshot(tiny_vit)
    tiny_vit.train()
    tiny_vit.blocks[1].training = False  # a mixed mode must come back as it was
    collect(tiny_vit, calib_loader, vit_shape(tiny_vit), blocks=(0, 2))
    collect_taylor(tiny_vit, calib_loader, vit_shape(tiny_vit), max_images=16)
    assert state.hook_count(tiny_vit) == 0
    assert tiny_vit.training and not tiny_vit.blocks[1].training and tiny_vit.blocks[2].training
    assert all(p.grad is None for p in tiny_vit.parameters())
    assert state.same_state(tiny_vit, snap)
    tiny_vit.eval()
    torch.testing.assert_close(tiny_vit(x), before, rtol=0, atol=0)


def test_hooks_removed_when_the_loader_fails(tiny_vit, state):
    def bad_loader():
        yield torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        collect(tiny_vit, bad_loader(), vit_shape(tiny_vit), blocks=(1,))
    assert state.hook_count(tiny_vit) == 0


def test_shapes_dtype_and_image_cap(tiny_vit, calib_loader):
    shape = vit_shape(tiny_vit)
    got = collect(tiny_vit, calib_loader, shape, blocks=(1, 3), max_images=40)  # cuts a batch
    n, tokens = 40, shape.num_prefix + shape.num_patches
    assert got.n == n and set(got.features) == {1, 3}
    for i in (1, 3):
        b = shape.blocks[i]
        assert got.features[i].heads.shape == (b.heads, n, tokens)
        assert got.features[i].neurons.shape == (b.mlp_hidden, n, tokens)
        assert got.features[i].neurons.dtype == torch.float16
    assert got.probs.shape == (n, shape.num_classes)
    torch.testing.assert_close(got.probs.sum(dim=1), torch.ones(n))
    assert got.labels.shape == (n,)
    assert [t.shape for t in got.head_abs] == [(b.heads,) for b in shape.blocks]
    assert [t.shape for t in got.neuron_abs] == [(b.mlp_hidden,) for b in shape.blocks]


def test_features_match_a_manual_computation(tiny_vit, calib_loader):
    """Head features from attention computed by hand; neuron features from fc1 + GELU."""
    shape = vit_shape(tiny_vit)
    i = 2
    blk, attn = tiny_vit.blocks[i], tiny_vit.blocks[i].attn
    x_in, fc1_out = [], []
    handles = [blk.register_forward_pre_hook(lambda m, a: x_in.append(a[0])),
               blk.mlp.fc1.register_forward_hook(lambda m, a, o: fc1_out.append(o))]
    with torch.no_grad():
        got = collect(tiny_vit, calib_loader, shape, blocks=(i,), feature_dtype=torch.float32)
    for h in handles:
        h.remove()
    x = torch.cat(x_in)  # (n, N, C)
    n, N, _ = x.shape
    h, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(blk.norm1(x)).reshape(n, N, 3, h, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], attn.k_norm(qkv[1]), qkv[2]
    a = (attn.q_norm(q) * attn.scale @ k.transpose(-2, -1)).softmax(-1)
    heads = (a @ v).mean(dim=-1)  # (n, h, N)
    torch.testing.assert_close(got.features[i].heads, heads.permute(1, 0, 2), atol=1e-5, rtol=1e-4)
    neurons = blk.mlp.act(torch.cat(fc1_out)).permute(2, 0, 1)  # (D, n, N)
    torch.testing.assert_close(got.features[i].neurons, neurons, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.neuron_abs[i], neurons.abs().mean(dim=(1, 2)))
    with torch.no_grad():
        probs = tiny_vit(torch.cat([b[0] for b in calib_loader])).softmax(-1)
    torch.testing.assert_close(got.probs, probs)


def test_pass_without_statistics_stops_after_its_last_block(tiny_vit, calib_loader):
    calls = []
    h = tiny_vit.blocks[2].register_forward_pre_hook(lambda m, a: calls.append(1))
    got = collect(tiny_vit, calib_loader, vit_shape(tiny_vit), blocks=(0, 1), statistics=False)
    h.remove()
    assert calls == [] and got.probs is None and set(got.features) == {0, 1}


def test_feature_groups_respect_the_budget(tiny_vit):
    shape = vit_shape(tiny_vit)
    assert feature_groups(shape, 64, torch.float16, 1 << 40) == [(0, 1, 2, 3)]
    assert feature_groups(shape, 64, torch.float16, 1) == [(0,), (1,), (2,), (3,)]
    one = 64 * 17 * (4 + 64) * 2  # n * tokens * (heads + neurons) * bytes
    assert feature_groups(shape, 64, torch.float16, 2 * one) == [(0, 1), (2, 3)]


def test_multi_pass_scores_equal_single_pass(tiny_vit, calib_loader):
    one = get_criterion("hsic")(tiny_vit, calib_loader)
    many = get_criterion("hsic", max_feature_bytes=1)(tiny_vit, calib_loader)
    for a, b in zip(one, many):
        assert torch.equal(a.heads, b.heads) and torch.equal(a.neurons, b.neurons)


def test_a_loader_that_changes_between_passes_is_refused(tiny_vit):
    class Fresh:  # new random images every time it is iterated
        def __init__(self):
            self.calls = 0

        def __iter__(self):
            self.calls += 1
            g = torch.Generator().manual_seed(self.calls)
            yield torch.randn(16, 1, 28, 28, generator=g), torch.zeros(16, dtype=torch.long)

    with pytest.raises(ScoringError, match="other images"):
        get_criterion("hsic", max_feature_bytes=1)(tiny_vit, Fresh())


def test_taylor_matches_per_image_autograd(tiny_vit, calib_loader):
    """|sum_t a * dCE/da| for one neuron and one head, each image on its own, by hand."""
    shape = vit_shape(tiny_vit)
    heads, neurons = collect_taylor(tiny_vit, calib_loader, shape, max_images=6)
    images, labels = next(iter(calib_loader))
    blk, d = tiny_vit.blocks[1], shape.blocks[1].head_dim
    want_h, want_n = 0.0, 0.0
    for img, y in zip(images[:6], labels[:6]):
        acts = {}
        hs = [blk.attn.proj.register_forward_pre_hook(lambda m, a: acts.__setitem__("h", a[0])),
              blk.mlp.fc2.register_forward_pre_hook(lambda m, a: acts.__setitem__("n", a[0]))]
        loss = F.cross_entropy(tiny_vit(img[None].requires_grad_(True)), y[None])
        gh, gn = torch.autograd.grad(loss, [acts["h"], acts["n"]])
        for hk in hs:
            hk.remove()
        want_h += (acts["h"] * gh)[..., 2 * d:3 * d].sum().abs().item()  # head 2
        want_n += (acts["n"] * gn)[..., 5].sum().abs().item()  # neuron 5
    assert heads[1][2].item() == pytest.approx(want_h / 6, rel=1e-4)
    assert neurons[1][5].item() == pytest.approx(want_n / 6, rel=1e-4)


def test_empty_loader_is_an_error(tiny_vit):
    from vitprune.errors import DataError

    with pytest.raises(DataError, match="no images"):
        collect(tiny_vit, [], vit_shape(tiny_vit))
    with pytest.raises(DataError, match="labels"):
        collect_taylor(tiny_vit, [torch.randn(4, 1, 28, 28)], vit_shape(tiny_vit))



def test_bf16_features_rank_heads_and_neurons_as_float32_does():
    """On CUDA the scoring forward runs in bf16 autocast (forced here on the CPU); the Gram
    matrices stay float32, so the rankings the search keeps components by do not change."""
    from scipy.stats import spearmanr

    from tests.helpers import sharpen
    from vitprune.data import load_splits
    from vitprune.models import build_model
    from vitprune.pipeline import scored

    splits = load_splits("synthetic", calib_size=128)
    for seed in range(2):
        torch.manual_seed(seed)
        model = sharpen(build_model("fmnist_vit_tiny").eval())
        full, _ = scored(model, splits, "hsic", n_images=128)
        half, _ = scored(model, splits, "hsic", n_images=128, amp=True)
        for f, h in zip(full, half):
            assert not torch.equal(f.neurons, h.neurons)  # bf16 did run
            assert f.heads.argsort().tolist() == h.heads.argsort().tolist()
            assert spearmanr(f.neurons, h.neurons).statistic > 0.99


def test_scoring_arithmetic_is_never_autocast_by_a_caller(tiny_vit, synth_splits):
    from vitprune.pipeline import scored

    plain, _ = scored(tiny_vit, synth_splits, "hsic", n_images=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, _ = scored(tiny_vit, synth_splits, "hsic", n_images=32)
    for a, b in zip(plain, inside):
        assert torch.equal(a.heads, b.heads) and torch.equal(a.neurons, b.neurons)
