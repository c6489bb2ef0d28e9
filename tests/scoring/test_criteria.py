"""Criteria: shapes, determinism, the scores they must give, rankings and the scores file."""

from __future__ import annotations

import json

import pytest
import torch

from vitprune.adapters import vit_shape
from vitprune.scoring import (
    BlockScores,
    ScoringError,
    available_criteria,
    check_scores,
    get_criterion,
    load_scores,
    rankings,
    save_scores,
)
from vitprune.scoring.criteria import HSICCriterion
from vitprune.scoring.hsic import linear_gram
from vitprune.search.space import Ratios, ratios_to_plan

ALL = ["hsic", "magnitude", "activation", "taylor", "group-taylor", "random"]
FAST = {"hsic": dict(max_images=32), "activation": dict(max_images=32),
        "taylor": dict(max_images=16), "group-taylor": dict(max_images=16)}


def test_registry_lists_every_criterion():
    assert available_criteria() == sorted(ALL)
    with pytest.raises(ScoringError, match="unknown criterion 'fisher'.*hsic"):
        get_criterion("fisher")
    with pytest.raises(ScoringError, match="takes options"):
        get_criterion("random", sed=1)
    with pytest.raises(ScoringError, match="target"):
        get_criterion("hsic", target="logits")


@pytest.mark.parametrize("name", ALL)
def test_shapes_match_the_model_and_scores_repeat(name, tiny_vit, calib_loader, state):
    snap = state.snapshot(tiny_vit)
    crit = get_criterion(name, **FAST.get(name, {}))
    a, b = crit(tiny_vit, calib_loader), crit(tiny_vit, calib_loader)
    shape = vit_shape(tiny_vit)
    check_scores(a, shape)
    assert [(s.heads.shape, s.neurons.shape) for s in a] == \
        [((bl.heads,), (bl.mlp_hidden,)) for bl in shape.blocks]
    for x, y in zip(a, b):
        assert torch.equal(x.heads, y.heads) and torch.equal(x.neurons, y.neurons)
    assert any(s.neurons.std() > 0 for s in a)  # not a constant
    assert state.hook_count(tiny_vit) == 0 and state.same_state(tiny_vit, snap)
    assert all(p.grad is None for p in tiny_vit.parameters())


def test_random_depends_on_the_seed(tiny_vit):
    a, b = get_criterion("random", seed=1)(tiny_vit), get_criterion("random", seed=2)(tiny_vit)
    assert not torch.equal(a[0].neurons, b[0].neurons)


def test_magnitude_ranks_a_zeroed_head_last(tiny_vit):
    blk, h, d = tiny_vit.blocks[1], 2, tiny_vit.blocks[1].attn.head_dim
    attn_dim = blk.attn.num_heads * d
    with torch.no_grad():
        for part in range(3):  # q, k, v rows of head 2
            blk.attn.qkv.weight[part * attn_dim + h * d: part * attn_dim + (h + 1) * d] = 0
        blk.attn.proj.weight[:, h * d:(h + 1) * d] = 0
    for p in (1, 2):
        scores = get_criterion("magnitude", p=p)(tiny_vit)
        assert scores[1].heads[h] == 0
        assert rankings(scores)[1][0][-1] == h
        assert (scores[1].heads[[0, 1, 3]] > 0).all()


def test_magnitude_l1_by_hand(tiny_vit):
    blk, d = tiny_vit.blocks[0], tiny_vit.blocks[0].attn.head_dim
    a = blk.attn.num_heads * d
    q, k, v = (blk.attn.qkv.weight[i * a + d: i * a + 2 * d] for i in range(3))  # head 1
    want = sum(t.abs().sum() for t in (q, k, v, blk.attn.proj.weight[:, d:2 * d]))
    s = get_criterion("magnitude")(tiny_vit)[0]
    assert s.heads[1].item() == pytest.approx(want.item(), rel=1e-6)
    want_n = blk.mlp.fc1.weight[7].abs().sum() + blk.mlp.fc2.weight[:, 7].abs().sum()
    assert s.neurons[7].item() == pytest.approx(want_n.item(), rel=1e-6)


def test_group_taylor_by_hand(tiny_vit, calib_loader):
    """sum |w * dCE/dw| over a head's q, k, v rows and proj columns and a neuron's fc1 row and
    fc2 column, the gradient of the CE summed over the 16 images (two batches of 8 here, one
    of 16 there: the same gradient)."""
    import copy

    import torch.nn.functional as F

    images, labels = next(iter(calib_loader))
    twin = copy.deepcopy(tiny_vit)
    F.cross_entropy(twin(images), labels, reduction="sum").backward()
    blk, d = twin.blocks[1], twin.blocks[1].attn.head_dim
    a = blk.attn.num_heads * d

    def wg(w, rows=slice(None), cols=slice(None)):
        return (w[rows, cols] * w.grad[rows, cols]).abs().sum().item()

    want_h = sum(wg(blk.attn.qkv.weight, slice(i * a + 2 * d, i * a + 3 * d)) for i in range(3)) \
        + wg(blk.attn.proj.weight, cols=slice(2 * d, 3 * d))  # head 2
    want_n = wg(blk.mlp.fc1.weight, rows=slice(9, 10)) + wg(blk.mlp.fc2.weight, cols=slice(9, 10))
    halves = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    s = get_criterion("group-taylor", max_images=16)(tiny_vit, halves)[1]
    assert s.heads[2].item() == pytest.approx(want_h, rel=1e-4)
    assert s.neurons[9].item() == pytest.approx(want_n, rel=1e-4)
    assert all(p.grad is None for p in tiny_vit.parameters())
    with pytest.raises(Exception, match="needs labels"):
        get_criterion("group-taylor")(tiny_vit, [images])


@pytest.mark.parametrize("name", ["activation", "taylor", "group-taylor", "hsic"])
def test_a_silenced_neuron_scores_zero(name, tiny_vit, calib_loader):
    j = 5
    with torch.no_grad():
        tiny_vit.blocks[2].mlp.fc1.weight[j] = 0
        tiny_vit.blocks[2].mlp.fc1.bias[j] = 0
    s = get_criterion(name, **FAST[name])(tiny_vit, calib_loader)[2]
    assert s.neurons[j] == 0
    others = torch.cat([s.neurons[:j], s.neurons[j + 1:]])
    assert (others > 0).all()  # hsic: j is the minimum of both min-maxed terms, alone
    assert rankings([s])[0][1][-1] == j


def test_hsic_block_score_prefers_informative_components():
    """Head 0 / neuron 0 carry the target; the others are noise. They must rank first."""
    gen = torch.Generator().manual_seed(0)
    n, N, classes = 64, 9, 4
    y = torch.randint(0, classes, (n,), generator=gen)
    probs = torch.nn.functional.one_hot(y, classes).float() * 0.9 + 0.025
    signal = y.float()[:, None] + 0.1 * torch.randn(n, N, generator=gen)
    heads = torch.randn(4, n, N, generator=gen)
    heads[0] = signal
    neurons = torch.randn(6, n, N, generator=gen)
    neurons[0] = signal
    neuron_abs = torch.ones(6)
    crit = HSICCriterion()
    s = crit.score_block(heads, neurons, linear_gram(probs), neuron_abs)
    assert rankings([s])[0][0][0] == 0 and rankings([s])[0][1][0] == 0
    assert s.neurons[0] == pytest.approx(0.1 + 0.0)  # minmax(hsic) = 1, activation all equal -> 0
    # head score = relevance - 0.1 * mean HSIC with the other heads
    no_red = HSICCriterion(redundancy_weight=0.0).score_block(heads, neurons, linear_gram(probs),
                                                             neuron_abs)
    assert (no_red.heads >= s.heads).all() and (no_red.heads - s.heads).max() > 0
    # a copy of head 0 is redundant with it: both lose score to redundancy
    heads[1] = signal
    dup = crit.score_block(heads, neurons, linear_gram(probs), neuron_abs)
    # redundancy of head 0 gains (1 - old HSIC(0, 1)) / 3 of the 3 others' mean: ~0.03 of score
    assert dup.heads[0] < s.heads[0] - 0.02
    assert dup.heads[1] == pytest.approx(dup.heads[0].item(), rel=1e-4)


@pytest.mark.parametrize("opts", [dict(target="labels"), dict(unbiased=True),
                                  dict(bandwidth="fixed"), dict(normalized=False),
                                  dict(feature_dtype="float32")])
def test_hsic_options_give_finite_scores(opts, tiny_vit, calib_loader):
    s = get_criterion("hsic", max_images=24, **opts)(tiny_vit, calib_loader)
    check_scores(s, vit_shape(tiny_vit))
    assert all(torch.isfinite(b.heads).all() and torch.isfinite(b.neurons).all() for b in s)
    assert all(b.neurons.min() >= 0 and b.neurons.max() <= 1 for b in s)


def test_normalized_hsic_head_scores_are_bounded(tiny_vit, calib_loader):
    s = get_criterion("hsic", max_images=32)(tiny_vit, calib_loader)
    for b in s:  # relevance in [0, 1], minus 0.1 * redundancy in [0, 1]
        assert (b.heads >= -0.1).all() and (b.heads <= 1).all()


def test_rankings_most_important_first_ties_by_id():
    s = BlockScores(torch.tensor([0.5, 2.0, 0.5, 3.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert rankings([s]) == [((3, 1, 0, 2), (0, 1, 2))]


def test_rankings_drive_the_search_space(tiny_vit, calib_loader):
    scores = get_criterion("activation", max_images=32)(tiny_vit, calib_loader)
    shape = vit_shape(tiny_vit)
    plan = ratios_to_plan(shape, Ratios.uniform(len(shape.blocks), heads=0.5, neurons=0.5),
                          rankings=rankings(scores))
    for bp, s in zip(plan.blocks, scores):
        top_h = set(torch.topk(s.heads, len(bp.heads)).indices.tolist())
        top_n = set(torch.topk(s.neurons, len(bp.neurons)).indices.tolist())
        assert set(bp.heads) == top_h and set(bp.neurons) == top_n


def test_scores_file_round_trip(tmp_path, tiny_vit, calib_loader):
    crit = get_criterion("hsic", max_images=24)
    scores = crit(tiny_vit, calib_loader)
    path = tmp_path / "scores.json"
    save_scores(path, scores, crit.meta())
    back, meta = load_scores(path)
    assert meta["criterion"] == "hsic" and meta["options"]["max_images"] == 24
    for a, b in zip(scores, back):
        assert torch.equal(a.heads, b.heads) and torch.equal(a.neurons, b.neurons)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers


def test_scores_file_errors(tmp_path, tiny_vit):
    with pytest.raises(ScoringError, match="does not exist"):
        load_scores(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "blocks": [{"heads": [1.0]}]}))
    with pytest.raises(ScoringError, match="not a valid scores file"):
        load_scores(bad)
    scores = get_criterion("random")(tiny_vit)
    with pytest.raises(ScoringError, match="blocks"):
        check_scores(scores[:2], vit_shape(tiny_vit))


def test_block_scores_refuse_nan():
    with pytest.raises(ScoringError, match="NaN"):
        BlockScores(torch.tensor([1.0, float("nan")]), torch.ones(3))


@pytest.mark.parametrize("name", ALL)
def test_pruned_model_with_token_stage_is_scored_per_its_own_shape(name, tiny_vit, calib_loader):
    """Blocks with different head / neuron counts, and a block that drops tokens mid-way."""
    from vitprune.plan import BlockPlan, PrunePlan, TokenStage
    from vitprune.surgery import prune

    plan = PrunePlan((BlockPlan((0, 2), range(10)), BlockPlan((1,), range(0, 64, 2)),
                      BlockPlan((0, 1, 3), range(40)), BlockPlan((0, 1, 2, 3), range(64))),
                     (TokenStage(1, 0.5),))
    pruned = prune(tiny_vit, plan).eval()
    shape = vit_shape(pruned)
    scores = get_criterion(name, **FAST.get(name, {}))(pruned, calib_loader)
    check_scores(scores, shape)
    assert [len(s.heads) for s in scores] == [2, 1, 3, 4]
    assert [len(s.neurons) for s in scores] == [10, 32, 40, 64]


def test_hsic_scores_a_backbone_without_classifier_against_its_features(synth_splits):
    """num_classes=0 (a DINOv2-style encoder): no prediction to depend on, so HSIC's target is
    the dense model's output features; for a classifier, target='features' asks for the same."""
    from vitprune.adapters import adapter_for
    from vitprune.data import make_loader
    from vitprune.models import build_model
    from vitprune.scoring.collect import collect

    torch.manual_seed(0)
    backbone = build_model("vit_small_patch14_dinov2", img_size=28, patch_size=7, in_chans=1,
                           depth=2, embed_dim=32, num_heads=4, num_classes=0,
                           init_values=1.0).eval()
    loader = make_loader(synth_splits.calib, 32)
    shape = vit_shape(backbone)
    got = collect(backbone, loader, shape, max_images=64, output="features")
    x = torch.cat([b[0] for b in loader])[:64]
    with torch.no_grad():
        want = adapter_for(backbone).features(backbone, x).flatten(1)
    assert torch.allclose(got.probs, want, atol=1e-5)  # the target holds the features
    scores = get_criterion("hsic", max_images=64)(backbone, loader)
    assert [len(s.heads) for s in scores] == [4, 4]
    assert all(torch.isfinite(torch.as_tensor(s.heads)).all() for s in scores)
    classifier = build_model("fmnist_vit_tiny").eval()
    soft = get_criterion("hsic", max_images=64)(classifier, loader)
    feat = get_criterion("hsic", max_images=64, target="features")(classifier, loader)
    assert any(not torch.allclose(torch.as_tensor(a.heads), torch.as_tensor(b.heads))
               for a, b in zip(soft, feat))
