"""A prune plan: which heads, MLP neurons and tokens of a ViT to keep.

A :class:`PrunePlan` holds, for each block, the ids of the attention heads and MLP hidden units
it keeps, plus the token-selection stages. It knows nothing about torch modules: surgery applies
it to a model, :func:`planned_shape` turns it into a :class:`~vitprune.cost.VitShape` for the cost
model, and it round-trips through JSON so a pruned model can be rebuilt from its record.

Token rounding lives in one place, :func:`kept_tokens`, which both the cost model and the token
selection module call, so the cost of a plan is the cost of the model that runs it.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import fsutil
from .cost import VitShape
from .errors import PlanError

# 2: a plan records the shape of the model it was made for ("base"); version-1 plans have none
PLAN_VERSION = 2
BASE_FIELDS = ("embed_dim", "num_prefix", "heads", "head_dim", "mlp_hidden")


def base_of(shape: VitShape) -> dict[str, Any]:
    """What a plan records of the model it is made for: the parts its ids index into.

    The image size (patch count) and the classes are left out: a plan's ids and keep rates mean
    the same on a model fine-tuned at another resolution or for other classes.
    """
    return {"embed_dim": shape.embed_dim, "num_prefix": shape.num_prefix,
            "heads": [b.heads for b in shape.blocks], "head_dim": [b.head_dim for b in shape.blocks],
            "mlp_hidden": [b.mlp_hidden for b in shape.blocks]}


def kept_tokens(n: int, keep_rate: float) -> int:
    """Patch tokens kept out of ``n`` at a token stage: ``ceil(keep_rate * n)``, at least one.

    The ``1e-9`` keeps products that are whole numbers in exact arithmetic (``0.7 * 10``) from
    rounding up to the next token because of floating-point error.
    """
    return max(1, math.ceil(keep_rate * n - 1e-9))


def _ids(values: Any, what: str) -> tuple[int, ...]:
    """Sorted ids from a sequence of non-negative integers, rejecting duplicates."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise PlanError(f"{what} must be a list of integer ids, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool):
            raise PlanError(f"{what} must hold integer ids, got the boolean {v!r}")
        try:
            i = operator.index(v)
        except TypeError:
            raise PlanError(f"{what} must hold integer ids, got {v!r}") from None
        if i < 0:
            raise PlanError(f"{what} holds the negative id {i}; ids count from 0")
        out.append(i)
    dup = sorted({i for i in out if out.count(i) > 1}) if len(set(out)) != len(out) else []
    if dup:
        raise PlanError(f"{what} lists ids {dup} more than once; list each kept id once")
    return tuple(sorted(out))


@dataclass(frozen=True)
class BlockPlan:
    """What one block keeps.

    Attributes:
        heads: ids of the kept attention heads (sorted, unique). None kept drops the block's
            attention: its residual branch becomes the output projection's bias alone (depth
            pruning; a token stage cannot sit in such a block).
        neurons: ids of the kept MLP hidden units (sorted, unique). None kept drops the MLP the
            same way.
    """

    heads: tuple[int, ...]
    neurons: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", _ids(self.heads, "kept heads"))
        object.__setattr__(self, "neurons", _ids(self.neurons, "kept neurons"))


@dataclass(frozen=True)
class TokenStage:
    """A token-selection stage.

    Attributes:
        block: 0-indexed block after whose attention the selection happens (before its MLP).
        keep_rate: fraction of the ``n`` non-prefix tokens entering the block that are kept:
            ``kept_tokens(n, keep_rate)``; 1.0 keeps all (the stage does nothing).
        fuse: fuse the dropped tokens into one extra token (their attention-weighted mean),
            which later stages treat as an ordinary non-prefix token.
    """

    block: int
    keep_rate: float
    fuse: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 0:
            raise PlanError(f"token stage block must be a block index >= 0, got {self.block!r}")
        rate = self.keep_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise PlanError(f"token stage keep_rate must be a number in (0, 1], got {rate!r}")
        if not 0.0 < rate <= 1.0:  # also rejects NaN
            raise PlanError(
                f"token stage at block {self.block} has keep_rate {rate}, which is not in (0, 1]; "
                "use e.g. 0.7 to keep 70% of the tokens"
            )
        if not isinstance(self.fuse, bool):
            raise PlanError(f"token stage fuse must be true or false, got {self.fuse!r}")
        object.__setattr__(self, "keep_rate", float(rate))


@dataclass(frozen=True)
class PrunePlan:
    """Heads, neurons and tokens a whole ViT keeps.

    Attributes:
        blocks: one :class:`BlockPlan` per transformer block, in order.
        tokens: token-selection stages, sorted by block, at most one per block.
        base: the shape of the model the plan was made for (:func:`base_of`), or None for a plan
            that does not say (written by hand, or by vitprune before plan version 2): such a plan
            is checked only for its depth and id ranges.
    """

    blocks: tuple[BlockPlan, ...]
    tokens: tuple[TokenStage, ...] = ()
    base: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        blocks, tokens = tuple(self.blocks), tuple(self.tokens)
        if not blocks:
            raise PlanError("a prune plan needs one entry per transformer block; it has none")
        if not all(isinstance(b, BlockPlan) for b in blocks):
            raise PlanError("PrunePlan.blocks must hold BlockPlan entries")
        if not all(isinstance(t, TokenStage) for t in tokens):
            raise PlanError("PrunePlan.tokens must hold TokenStage entries")
        seen = [t.block for t in tokens]
        if len(set(seen)) != len(seen):
            dup = sorted({b for b in seen if seen.count(b) > 1})
            raise PlanError(f"token stages repeat block(s) {dup}; use at most one stage per block")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "tokens", tuple(sorted(tokens, key=lambda t: t.block)))
        if self.base is not None:
            _check_base(self.base)

    def made_for(self, shape: VitShape) -> PrunePlan:
        """This plan, recording ``shape`` as the model it is made for."""
        return replace(self, base=base_of(shape))

    @classmethod
    def dense(cls, shape: VitShape) -> PrunePlan:
        """The plan that keeps everything of ``shape``."""
        return cls(tuple(BlockPlan(tuple(range(b.heads)), tuple(range(b.mlp_hidden)))
                         for b in shape.blocks), base=base_of(shape))

    def validate(self, shape: VitShape) -> None:
        """Check that this plan fits a model of ``shape``.

        Raises:
            PlanError: the plan was made for a model of another shape, wrong number of blocks,
                ids out of range, a token stage past the last block, or token stages on a shape
                that already selects tokens.
        """
        if self.base is not None:
            have = base_of(shape)
            diff = [k for k in BASE_FIELDS if self.base[k] != have[k]]
            if diff:
                k = diff[0]
                raise PlanError(
                    f"the plan was made for another model: its {k} is {_brief(self.base[k])}, "
                    f"this model's is {_brief(have[k])} (differing: {', '.join(diff)}). Make the "
                    "plan for this model, or prune the model it was made for.")
        if len(self.blocks) != len(shape.blocks):
            raise PlanError(
                f"the plan has {len(self.blocks)} blocks but the model has {len(shape.blocks)}; "
                "make the plan for this model (PrunePlan.dense(shape) is a starting point)"
            )
        for i, (bp, bs) in enumerate(zip(self.blocks, shape.blocks)):
            _check_range(bp.heads, bs.heads, f"block {i} head", "heads")
            _check_range(bp.neurons, bs.mlp_hidden, f"block {i} neuron", "MLP neurons")
        if self.tokens and shape.windowed:
            raise PlanError(
                "token stages do not apply to windowed attention (Swin, SAM's encoder): its "
                "windows need the whole token grid; prune heads, neurons and depth (search with --dims heads "
                "neurons, or --token-blocks with no value)")
        for t in self.tokens:
            if t.block >= len(shape.blocks):
                raise PlanError(
                    f"token stage at block {t.block} is out of range: the model has "
                    f"{len(shape.blocks)} blocks (0..{len(shape.blocks) - 1})"
                )
            if not self.blocks[t.block].heads:
                raise PlanError(
                    f"block {t.block} drops its attention, so it cannot select tokens (they are "
                    "scored by that attention); keep a head there or move the stage")
        if self.tokens and any(b.keep_patches is not None for b in shape.blocks):
            raise PlanError(
                "the model already selects tokens; apply token stages to the dense model instead "
                "(put all stages in one plan)"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :meth:`from_dict`)."""
        d = {
            "version": PLAN_VERSION,
            "blocks": [{"heads": list(b.heads), "neurons": list(b.neurons)} for b in self.blocks],
            "tokens": [{"block": t.block, "keep_rate": t.keep_rate, "fuse": t.fuse}
                       for t in self.tokens],
        }
        if self.base is not None:
            d["base"] = self.base
        return d

    @classmethod
    def from_dict(cls, d: Any) -> PrunePlan:
        """Parse :meth:`to_dict`'s output.

        Raises:
            PlanError: ``d`` is not such a record (missing or unknown keys, wrong types).
        """
        _check_keys(d, "prune plan", required={"blocks"}, optional={"version", "tokens", "base"})
        version = d.get("version", PLAN_VERSION)
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise PlanError(f"prune plan version {version!r} is not supported; upgrade vitprune")
        blocks = _list(d["blocks"], "prune plan 'blocks'")
        tokens = _list(d.get("tokens", []), "prune plan 'tokens'")
        return cls(tuple(_block_from(b, i) for i, b in enumerate(blocks)),
                   tuple(_stage_from(t, i) for i, t in enumerate(tokens)), base=d.get("base"))

    def to_json(self) -> str:
        """The plan as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        """Parse :meth:`to_json`'s output; raises :class:`PlanError` on malformed text."""
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise PlanError(
                f"prune plan is not valid JSON ({exc}); re-create the plan file"
            ) from exc
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON to ``path`` atomically."""
        fsutil.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        """Read a plan written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        try:
            return cls.from_json(path.read_text())
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from exc


def apply_token_stages(shape: VitShape, stages: Sequence[TokenStage]) -> VitShape:
    """``shape`` with the token stages set, kept counts computed block by block.

    Each stage keeps ``kept_tokens(n, keep_rate)`` of the ``n`` non-prefix tokens entering its
    block; with ``fuse`` the dropped ones leave one extra token behind, counted in the next
    stage's ``n``. Blocks without a stage get ``keep_patches=None``.
    """
    by_block = {t.block: t for t in stages}
    n, blocks = shape.num_patches, []
    for i, b in enumerate(shape.blocks):
        t = by_block.get(i)
        if t is None:
            blocks.append(replace(b, keep_patches=None, fuse=True))
            continue
        keep = kept_tokens(n, t.keep_rate)
        blocks.append(replace(b, keep_patches=keep, fuse=t.fuse))
        if keep < n:  # as cost.token_counts: a stage that keeps all adds no fused token
            n = keep + (1 if t.fuse else 0)
    return replace(shape, blocks=tuple(blocks))


def planned_shape(shape: VitShape, plan: PrunePlan) -> VitShape:
    """The shape of the model ``plan`` makes from a model of ``shape``.

    ``cost.macs(planned_shape(shape, plan))`` is the plan's compute cost. Token stages already in
    ``shape`` are kept when the plan has none (re-pruning heads/neurons of a pruned model).

    Raises:
        PlanError: the plan does not fit ``shape`` (see :meth:`PrunePlan.validate`).
    """
    plan.validate(shape)
    blocks = tuple(
        replace(bs, heads=len(bp.heads), mlp_hidden=len(bp.neurons))  # the rest as built
        for bp, bs in zip(plan.blocks, shape.blocks)
    )
    out = replace(shape, blocks=blocks)
    return apply_token_stages(out, plan.tokens) if plan.tokens else out


def _check_base(base: Any) -> None:
    _check_keys(base, "prune plan 'base'", required=set(BASE_FIELDS), optional=set())
    ints = [base["embed_dim"], base["num_prefix"]]
    lists = [base[k] for k in ("heads", "head_dim", "mlp_hidden")]
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in ints) and all(
        isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
        for v in lists) and len({len(v) for v in lists}) == 1
    if not ok:
        raise PlanError(f"prune plan 'base' is malformed ({base!r:.120}); it should describe the "
                        "model the plan was made for, or be left out")


def _brief(v: Any) -> str:
    if isinstance(v, list) and len(set(v)) == 1:
        return f"{v[0]} in each of {len(v)} blocks"
    return str(v)


def _check_range(ids: tuple[int, ...], limit: int, what: str, noun: str) -> None:
    bad = [i for i in ids if i >= limit]
    if bad:
        raise PlanError(
            f"{what} ids {bad[:5]} are out of range: the block has {limit} {noun} "
            f"(ids 0..{limit - 1}); was the plan made for another model?"
        )


def _check_keys(d: Any, what: str, required: set[str], optional: set[str]) -> None:
    if not isinstance(d, dict):
        raise PlanError(f"{what} must be a JSON object, got {type(d).__name__}: {d!r:.80}")
    missing = sorted(required - set(d))
    if missing:
        raise PlanError(f"{what} is missing key(s) {missing}; the plan record is incomplete")
    unknown = sorted(set(d) - required - optional)
    if unknown:
        raise PlanError(
            f"{what} has unknown key(s) {unknown} (known: {sorted(required | optional)}); "
            "check the spelling"
        )


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise PlanError(f"{what} must be a JSON list, got {type(v).__name__}")
    return v


def _block_from(d: Any, i: int) -> BlockPlan:
    _check_keys(d, f"plan block {i}", required={"heads", "neurons"}, optional=set())
    try:
        return BlockPlan(_list(d["heads"], f"block {i} 'heads'"),
                         _list(d["neurons"], f"block {i} 'neurons'"))
    except PlanError as exc:
        raise PlanError(f"block {i}: {exc}") from None


def _stage_from(d: Any, i: int) -> TokenStage:
    _check_keys(d, f"token stage {i}", required={"block", "keep_rate"}, optional={"fuse"})
    return TokenStage(d["block"], d["keep_rate"], d.get("fuse", True))
