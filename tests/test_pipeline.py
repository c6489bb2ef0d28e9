import json

import pytest
import torch

from tests.helpers import image_folder
from vitprune.adapters import vit_shape
from vitprune.cli import main
from vitprune.config import parse_budget
from vitprune.cost import macs
from vitprune.pipeline import MaskedAccuracy, calibration_batches
from vitprune.plan import PrunePlan, planned_shape
from vitprune.scoring import load_scores
from vitprune.search import Ratios, ratios_to_plan
from vitprune.surgery import prune


def test_masked_objective_equals_the_pruned_model(tiny_vit, synth_splits):
    batches = calibration_batches(synth_splits, 64, batch_size=32)
    assert sum(len(y) for _, y in batches) == 64
    shape = vit_shape(tiny_vit)
    plan = ratios_to_plan(shape, Ratios((0.5, 0.25, 0.5, 0.25), (0.5, 0.0, 0.3, 0.5), 0.4))
    pruned = prune(tiny_vit, plan)
    with torch.no_grad():
        correct = sum((pruned(x).argmax(-1) == y).sum().item() for x, y in batches)
    obj = MaskedAccuracy(tiny_vit, batches)
    assert obj(plan) == pytest.approx(100.0 * correct / 64)
    obj.close()
    assert not tiny_vit.blocks[0].attn.proj._forward_pre_hooks  # masks removed


def test_parse_budget():
    assert parse_budget("0.6").value == 0.6 and parse_budget("0.6").unit == "fraction"
    b = parse_budget("2.5G")
    assert (b.value, b.unit) == (2.5, "gmacs")
    b = parse_budget("12ms")
    assert (b.value, b.unit) == (12.0, "ms") and b.target(30.0) == 12.0
    assert parse_budget("0.5").target(30.0) == 15.0


def test_score_search_prune_commands(tmp_path, capsys):
    common = ["--model", "fmnist_vit_tiny", "--data", "synthetic", "--threads", "1"]
    assert main(["score", *common, "--criterion", "magnitude", "--out", str(tmp_path / "s.json")]) == 0
    scores, meta = load_scores(tmp_path / "s.json")
    assert len(scores) == 4 and all(len(s.heads) == 4 and len(s.neurons) == 64 for s in scores)
    assert meta["criterion"] == "magnitude"

    out = tmp_path / "search"
    args = ["search", *common, "--budget", "0.6", "--method", "gp-ei", "--init", "3",
            "--scores", str(tmp_path / "s.json"), "--calib-images", "64", "--out", str(out),
            "--quiet", "--json"]
    assert main(args + ["--trials", "5"]) == 0
    res = json.loads(_last_json(capsys))
    assert res["trials"] == 5
    lines = (out / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 5
    # resuming with more trials extends the same search
    assert main(args + ["--trials", "7", "--resume"]) == 0
    assert len((out / "trials.jsonl").read_text().splitlines()) == 7
    assert (out / "trials.jsonl").read_text().splitlines()[:5] == lines

    plan = PrunePlan.load(out / "best_plan.json")
    from vitprune.models import build_model

    shape = vit_shape(build_model("fmnist_vit_tiny"))
    kept = macs(planned_shape(shape, plan)).total / macs(shape).total
    assert 0.6 * 0.98 - 1e-9 <= kept <= 0.6 + 1e-9
    assert main(["prune", "--model", "fmnist_vit_tiny", "--plan", str(out / "best_plan.json"),
                 "--out", str(tmp_path / "pruned")]) == 0


def _last_json(capsys):
    text = capsys.readouterr().out
    return text[text.index("{"):]


def test_unreachable_budget_is_a_clear_error(tmp_path, capsys):
    assert main(["search", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--budget", "0.05",
                 "--criterion", "random", "--calib-images", "32", "--trials", "3", "--init", "2",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "budget" in err.lower() and "%" in err
    assert not (tmp_path / "s" / "trials.jsonl").exists()


def test_masked_objective_leaves_the_model_usable_for_autograd(tiny_vit, synth_splits):
    batches = calibration_batches(synth_splits, 32, batch_size=32)
    shape = vit_shape(tiny_vit)
    obj = MaskedAccuracy(tiny_vit, batches)
    obj(ratios_to_plan(shape, Ratios.uniform(4, heads=0.25, neurons=0.5)))
    x, y = batches[0]
    loss = torch.nn.functional.cross_entropy(tiny_vit(x), y)
    loss.backward()  # failed when the masks were inference tensors
    assert tiny_vit.blocks[0].mlp.fc1.weight.grad is not None
    obj.close()


def test_kl_objective_is_minus_the_kl_from_the_dense_model(tiny_vit, synth_splits):
    batches = calibration_batches(synth_splits, 64, batch_size=32)
    shape = vit_shape(tiny_vit)
    with torch.no_grad():
        dense_logp = [tiny_vit(x).log_softmax(-1) for x, _ in batches]
    plan = ratios_to_plan(shape, Ratios((0.5,) * 4, (0.5,) * 4, 0.4))
    pruned = prune(tiny_vit, plan)
    obj = MaskedAccuracy(tiny_vit, batches, objective="kl")
    assert obj(PrunePlan.dense(shape)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        kl = sum(torch.nn.functional.kl_div(pruned(x).log_softmax(-1), d, reduction="sum",
                                            log_target=True).item()
                 for (x, _), d in zip(batches, dense_logp)) / 64
    assert kl > 1e-3
    assert obj(plan) == pytest.approx(-kl, rel=1e-4)
    obj.close()


def test_a_search_does_not_resume_under_another_objective(tmp_path, capsys):
    common = ["search", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--threads", "1",
              "--budget", "0.6", "--method", "random", "--criterion", "magnitude",
              "--calib-images", "64", "--out", str(tmp_path), "--quiet", "--trials"]
    assert main(common + ["2"]) == 0
    assert main(common + ["3", "--resume", "--objective", "kl"]) == 2
    assert "another" in capsys.readouterr().err.lower()
    assert len((tmp_path / "trials.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("blocks, expected", [(["2"], [2]), ([], [])])
def test_search_token_stage_positions_are_configurable(tmp_path, blocks, expected):
    out = tmp_path / "s"
    assert main(["search", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--threads", "1",
                 "--budget", "0.7", "--method", "random", "--trials", "3", "--criterion",
                 "magnitude", "--calib-images", "64", "--token-blocks", *blocks, "--out", str(out),
                 "--quiet"]) == 0
    plan = PrunePlan.load(out / "best_plan.json")
    assert [t.block for t in plan.tokens] == expected
    if not expected:  # heads and neurons alone meet the budget
        assert all(len(b.neurons) < 64 or len(b.heads) < 4 for b in plan.blocks)


@pytest.mark.parametrize("dims", [["neurons"], ["tokens"], ["heads", "neurons"]])
def test_search_prunes_only_the_chosen_dimensions(tmp_path, dims):
    out = tmp_path / "s"
    assert main(["search", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--threads", "1",
                 "--budget", "0.75", "--method", "random", "--trials", "3", "--criterion",
                 "magnitude", "--calib-images", "64", "--max-ratio", "0.9", "--dims", *dims,
                 "--out", str(out), "--quiet"]) == 0
    plan = PrunePlan.load(out / "best_plan.json")
    pruned = {"heads": any(len(b.heads) < 4 for b in plan.blocks),
              "neurons": any(len(b.neurons) < 64 for b in plan.blocks),
              "tokens": bool(plan.tokens)}
    assert pruned == {d: d in dims for d in pruned}


def test_a_budget_one_dimension_cannot_meet_is_refused(tiny_vit):
    from vitprune.errors import BudgetError
    from vitprune.pipeline import check_budget

    check_budget(tiny_vit, 0.4, max_ratio=0.9)  # all three dimensions reach it
    with pytest.raises(BudgetError):
        check_budget(tiny_vit, 0.4, max_ratio=0.9, dims=("heads",))  # attention is not 60% of the MACs


def test_scoring_uses_every_image_it_is_asked_for(monkeypatch):
    """score_images above the criteria's own default (256) must reach them, not be capped."""
    import vitprune.scoring.criteria as criteria
    from vitprune.data import load_splits
    from vitprune.models import build_model
    from vitprune.pipeline import scored

    splits = load_splits("synthetic", calib_size=400)
    seen = []
    real = criteria.collect

    def spy(model, loader, shape, **kw):
        got = real(model, loader, shape, **kw)
        seen.append(got.n)
        return got

    monkeypatch.setattr(criteria, "collect", spy)
    torch.manual_seed(0)
    _, meta = scored(build_model("fmnist_vit_tiny").eval(), splits, "hsic", n_images=300)
    assert seen and set(seen) == {300}
    assert meta["options"]["max_images"] == 300




def test_api_and_cli_feed_an_image_folder_the_same_tensors(tmp_path, monkeypatch):
    """Both read through pipeline.load_data with the model's own preprocessing: a
    vit_tiny_patch16_224 normalises with mean 0.5, not ImageNet's."""
    import vitprune
    import vitprune.compression as compression
    from vitprune.cli import main
    from vitprune.models import ModelSource

    class Seen(Exception):
        pass

    seen = []

    def capture(src, splits, *a, **k):
        seen.append((splits, torch.stack([splits.calib[i][0] for i in range(len(splits.calib))])))
        raise Seen

    monkeypatch.setattr(compression, "load_dense", capture)
    monkeypatch.setenv("VITPRUNE_DEBUG", "1")  # the command line lets Seen through
    image_folder(tmp_path / "data")
    settings = dict(calib_size=3, img_size=(32,), split_seed=5, workers=0)
    with pytest.raises(Seen):
        vitprune.compress(ModelSource("vit_tiny_patch16_224", args={"depth": 1}), "imagefolder",
                          out=tmp_path / "api", data_dir=tmp_path / "data", progress=False,
                          device="cpu", **settings)
    with pytest.raises(Seen):
        main(["compress", "--model", "vit_tiny_patch16_224", "--model-args", "depth=1",
              "--data", "imagefolder", "--data-dir", str(tmp_path / "data"), "--calib-size", "3",
              "--img-size", "32", "--split-seed", "5", "--workers", "0", "--device", "cpu",
              "--out", str(tmp_path / "cli")])
    (api, x_api), (cli, x_cli) = seen
    assert api.data_config["mean"] == [0.5, 0.5, 0.5] == cli.data_config["mean"]
    assert x_api.shape[1:] == (3, 32, 32) and torch.equal(x_api, x_cli)
    assert api.train.indices == cli.train.indices  # the same carve (split seed 5)


@pytest.mark.parametrize("name, kwargs", [
    # a DINOv2-style backbone without a classifier: its pooled embedding
    ("vit_small_patch14_dinov2", dict(img_size=28, patch_size=7, in_chans=1, depth=3,
                                      embed_dim=32, num_heads=4, num_classes=0, init_values=1.0)),
    # SAM's encoder: the neck's per-token feature map
    ("samvit_base_patch16", dict(img_size=28, patch_size=7, in_chans=1, depth=2, embed_dim=32,
                                 num_heads=4, window_size=2, global_attn_indexes=(1,),
                                 neck_chans=16, num_classes=0)),
])
def test_the_feature_objective_ranks_a_plan_that_prunes_more_below_one_that_prunes_less(
        synth_splits, name, kwargs):
    """100 x the mean cosine similarity of the features to the dense model's: 100 for the
    dense plan, lower the more is pruned; no labels are read."""
    from vitprune.models import build_model

    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    batches = [(x, torch.full_like(y, -1)) for x, y in calibration_batches(synth_splits, 64)]
    objective = MaskedAccuracy(model, batches, objective="features")
    shape = vit_shape(model)
    depth = len(shape.blocks)
    values = [objective(ratios_to_plan(shape, Ratios.uniform(depth, r, r), token_blocks=()))
              for r in (0.0, 0.25, 0.6)]
    objective.close()
    assert values[0] == pytest.approx(100.0, abs=1e-3)
    assert 100.0 > values[1] > values[2]
    with torch.no_grad():  # the model is restored
        x = batches[0][0]
        feats = objective.run(x)
        assert feats.shape[0] == len(x) and feats.shape[-1] in (32, 16)


def test_a_backbone_without_classifier_searches_on_its_features_by_default(synth_splits,
                                                                           tmp_path):
    from vitprune.config import SearchSettings
    from vitprune.errors import ConfigError
    from vitprune.models import build_model
    from vitprune.pipeline import for_model, policy_search

    torch.manual_seed(0)
    backbone = build_model("vit_small_patch14_dinov2", img_size=28, patch_size=7, in_chans=1,
                           depth=2, embed_dim=32, num_heads=4, num_classes=0,
                           init_values=1.0).eval()
    assert for_model(SearchSettings(), backbone).objective == "features"
    assert for_model(SearchSettings(), build_model("fmnist_vit_tiny")).objective == "top1"
    with pytest.raises(ConfigError, match="no classifier"):
        for_model(SearchSettings(objective="kl"), backbone)
    res = policy_search(backbone, synth_splits, 0.7, tmp_path / "s", trials=3, init=2,
                        calib_images=32, progress=False)
    assert 0 < res.best.value <= 100.0 and res.config.objective == "features"
