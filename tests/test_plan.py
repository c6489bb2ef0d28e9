"""PrunePlan: construction, validation with helpful messages, JSON round-trip, planned shape."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vitprune import cost
from vitprune.cost import BlockShape, VitShape
from vitprune.errors import PlanError
from vitprune.plan import BlockPlan, PrunePlan, TokenStage, kept_tokens, planned_shape


def _shape(depth: int = 12, heads: int = 6, mlp: int = 1536, patches: int = 196) -> VitShape:
    """DeiT-S-like shape without building a model."""
    return VitShape(embed_dim=heads * 64, num_patches=patches, num_prefix=1, patch_macs=768,
                    num_classes=1000, num_heads_out=1,
                    blocks=tuple(BlockShape(heads, 64, mlp) for _ in range(depth)))


def _plan(**token_kw) -> PrunePlan:
    blocks = tuple(BlockPlan((0, 2, 5), tuple(range(0, 1536, 3))) for _ in range(12))
    return PrunePlan(blocks, tuple(TokenStage(**kw) for kw in token_kw.get("stages", [])))


def test_kept_tokens_rounds_up_without_float_noise():
    assert kept_tokens(10, 0.7) == 7  # 0.7 * 10 = 7.000000000000001 in floats
    assert kept_tokens(196, 0.7) == 138  # ceil(137.2)
    assert kept_tokens(196, 1.0) == 196
    assert kept_tokens(5, 0.01) == 1  # never zero


def test_ids_are_sorted_and_plans_are_frozen():
    bp = BlockPlan([3, 0, 1], [5, 2])
    assert bp.heads == (0, 1, 3) and bp.neurons == (2, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bp.heads = (0,)
    plan = PrunePlan([bp], [TokenStage(0, 0.5)])
    assert isinstance(plan.blocks, tuple)
    assert hash(plan) == hash(PrunePlan((bp,), (TokenStage(0, 0.5),)))


def test_dense_plan_leaves_the_shape_unchanged():
    shape = _shape()
    assert planned_shape(shape, PrunePlan.dense(shape)) == shape


def test_planned_shape_counts_kept_heads_neurons_and_tokens_sequentially():
    plan = _plan(stages=[dict(block=3, keep_rate=0.7), dict(block=6, keep_rate=0.7),
                         dict(block=9, keep_rate=0.7, fuse=False)])
    shape = planned_shape(_shape(), plan)
    assert {(b.heads, b.mlp_hidden) for b in shape.blocks} == {(3, 512)}
    # 196 -> 138 kept + 1 fused = 139 -> 98 + 1 = 99 -> 70 (no fusing)
    assert [b.keep_patches for b in shape.blocks if b.keep_patches] == [138, 98, 70]
    counts = cost.token_counts(shape)
    assert counts[3] == (197, 140) and counts[6] == (140, 100) and counts[9] == (100, 71)
    assert counts[-1] == (71, 71)
    assert cost.macs(shape).total < cost.macs(planned_shape(_shape(), _plan())).total


def test_round_trip_through_dict_json_and_file(tmp_path):
    plan = _plan(stages=[dict(block=9, keep_rate=0.7, fuse=False), dict(block=3, keep_rate=0.5)])
    assert [t.block for t in plan.tokens] == [3, 9]  # sorted
    assert PrunePlan.from_dict(plan.to_dict()) == plan
    assert PrunePlan.from_json(plan.to_json()) == plan
    plan.save(tmp_path / "sub" / "plan.json")
    assert PrunePlan.load(tmp_path / "sub" / "plan.json") == plan
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "plan.json"]  # no temp files
    assert json.loads(plan.to_json())["tokens"][0] == {"block": 3, "keep_rate": 0.5, "fuse": True}


def _blocks(n: int = 12) -> list[dict]:
    return [{"heads": [0, 1], "neurons": [0, 1, 2]} for _ in range(n)]


@pytest.mark.parametrize("record,message", [
    ({"blocks": _blocks(11)}, "11 blocks but the model has 12"),
    ({"blocks": [{"heads": [0, 6], "neurons": [0]}] * 12}, "head ids [6] are out of range"),
    ({"blocks": [{"heads": [0], "neurons": [1536]}] * 12}, "neuron ids [1536] are out of range"),
    ({"blocks": [{"heads": [1, 1], "neurons": [0]}] * 12}, "ids [1] more than once"),
    ({"blocks": [{"heads": [], "neurons": [0]}] * 12,
      "tokens": [{"block": 3, "keep_rate": 0.5}]}, "drops its attention, so it cannot select"),
    ({"blocks": [{"heads": [-1], "neurons": [0]}] * 12}, "negative id"),
    ({"blocks": _blocks(), "tokens": [{"block": 12, "keep_rate": 0.5}]},
     "block 12 is out of range"),
    ({"blocks": _blocks(), "tokens": [{"block": 3, "keep_rate": 0.5}] * 2}, "repeat block(s) [3]"),
    ({"blocks": _blocks(), "tokens": [{"block": 3, "keep_rate": 0.0}]}, "not in (0, 1]"),
    ({"blocks": _blocks(), "tokens": [{"block": 3, "keep_rate": 1.5}]}, "not in (0, 1]"),
    ({"blocks": _blocks(), "tokens": [{"block": 3, "keep_rate": float("nan")}]}, "not in (0, 1]"),
    ({"blocks": _blocks(), "tokens": [{"block": 3, "keep_rate": "0.5"}]}, "must be a number"),
    ({"blocks": _blocks(), "tokens": [{"block": 3, "keep_rate": 0.5, "fuse": "yes"}]},
     "true or false"),
    ({"blocks": _blocks(), "tokens": [{"block": 2.0, "keep_rate": 0.5}]}, "block index"),
    ({"blocks": _blocks(), "tokens": [{"keep_rate": 0.5}]}, "missing key(s) ['block']"),
    ({"blocks": [{"heads": [0]}] * 12}, "missing key(s) ['neurons']"),
    ({"blocks": [{"heads": [0.5], "neurons": [0]}] * 12}, "integer ids"),
    ({"blocks": [{"heads": [True], "neurons": [0]}] * 12}, "integer ids"),
    ({"blocks": [{"heads": "01", "neurons": [0]}] * 12}, "must be a JSON list"),
    ({"blocks": {"0": {}}}, "must be a JSON list"),
    ({"blocks": [[0, 1]] * 12}, "must be a JSON object"),
    ({"tokens": []}, "missing key(s) ['blocks']"),
    ({"blocks": _blocks(), "token": []}, "unknown key(s) ['token']"),
    ({"blocks": _blocks(), "version": 99}, "version 99"),
    ([1, 2], "must be a JSON object"),
    ({"blocks": []}, "it has none"),
])
def test_bad_plans_raise_plan_error_saying_what_is_wrong(record, message):
    with pytest.raises(PlanError) as err:
        PrunePlan.from_dict(record).validate(_shape())
    assert message in str(err.value)


def test_block_errors_name_the_block():
    record = {"blocks": _blocks()}
    record["blocks"][4] = {"heads": [2, 2], "neurons": [0]}
    with pytest.raises(PlanError, match="block 4"):
        PrunePlan.from_dict(record)


@pytest.mark.parametrize("text", ["{", "", "not json", None])
def test_malformed_json_raises_plan_error(text):
    with pytest.raises(PlanError, match="not valid JSON"):
        PrunePlan.from_json(text)


def test_load_names_the_file(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        PrunePlan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"blocks": 3}')
    with pytest.raises(PlanError, match="bad.json"):
        PrunePlan.load(bad)


def test_token_stages_on_a_shape_that_already_selects_tokens_are_refused():
    staged = planned_shape(_shape(), _plan(stages=[dict(block=3, keep_rate=0.5)]))
    more = PrunePlan(PrunePlan.dense(staged).blocks, (TokenStage(5, 0.5),))
    with pytest.raises(PlanError, match="already selects tokens"):
        planned_shape(staged, more)
    # heads/neurons only: the existing stages stay
    again = planned_shape(staged, PrunePlan.dense(staged))
    assert again == staged


def test_a_plan_records_the_model_it_was_made_for():
    from vitprune.adapters import vit_shape
    from vitprune.models import build_model
    from vitprune.search import Ratios, ratios_to_plan

    tiny = vit_shape(build_model("deit_tiny_patch16_224", img_size=32, patch_size=16))
    small = vit_shape(build_model("deit_small_patch16_224", img_size=32, patch_size=16))
    plan = ratios_to_plan(tiny, Ratios.uniform(12, heads=0.34, neurons=0.5))
    again = PrunePlan.from_json(plan.to_json())
    assert again.base == plan.base and again.base["heads"] == [3] * 12
    again.validate(tiny)
    with pytest.raises(PlanError, match="made for another model: its embed_dim is 192, this "
                                        "model's is 384.*heads, mlp_hidden"):
        again.validate(small)


def test_a_plan_without_a_base_is_read_and_checked_by_ranges_only():
    from vitprune.adapters import vit_shape
    from vitprune.models import build_model

    small = vit_shape(build_model("deit_small_patch16_224", img_size=32, patch_size=16))
    v1 = {"version": 1, "blocks": [{"heads": [0, 1], "neurons": [0, 5]}] * 12, "tokens": []}
    plan = PrunePlan.from_dict(v1)
    assert plan.base is None
    plan.validate(small)
    assert "base" not in plan.to_dict()


def test_a_malformed_base_is_refused():
    with pytest.raises(PlanError, match="'base' is malformed"):
        PrunePlan.from_dict({"blocks": [{"heads": [0], "neurons": [0]}],
                             "base": {"embed_dim": 8, "num_prefix": 1, "heads": [1],
                                      "head_dim": "x", "mlp_hidden": [4]}})
