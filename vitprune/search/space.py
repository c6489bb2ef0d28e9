"""The search space: per-block prune ratios <-> integer prune plans, and their cost.

Ratios are *prune* fractions (0 keeps everything). The integer architecture a ratio produces is
decided here and only here (:func:`keep_count`), so the cost the search checks against the budget
is the cost of the model that is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..cost import VitShape, batch_macs, macs
from ..errors import BudgetError
from ..latency import LatencyTable
from ..plan import BlockPlan, PrunePlan, TokenStage, base_of, planned_shape
from .config import SearchError

# a uniform token ratio never drops more than 95% of the tokens: a stage keeps at least 5%
MAX_TOKEN_RATIO = 0.95

# the largest prune ratio the search explores in any block and dimension by default: 0.9, not
# the method's 0.5 (never worse after fine-tuning on two models, better before it and after
# short fine-tuning: docs/max_ratio.md)
MAX_RATIO = 0.9


# With depth pruning, a head or neuron ratio at or above this drops the block's attention or MLP
DROP_AT = 0.95
# ... and the ratios of droppable coordinates reach up to this
DROP_MAX = 0.999


def keep_count(total: int, prune_ratio: float, multiple_of: int = 1, drop: bool = False) -> int:
    """Units kept out of ``total`` when pruning ``prune_ratio`` of them.

    ``round((1 - prune_ratio) * total)``, then rounded to the nearest multiple of ``multiple_of``
    (wide matrix multiplies run faster at multiples of 8), never below one unit (or one multiple)
    and never above ``total``. With ``drop``, a ratio of :data:`DROP_AT` or more keeps none (the
    attention or MLP is dropped: depth pruning).
    """
    if drop and prune_ratio >= DROP_AT:
        return 0
    keep = round((1.0 - prune_ratio) * total)
    if multiple_of > 1:
        keep = multiple_of * round(keep / multiple_of)
        keep = max(keep, min(multiple_of, total))
    return int(min(total, max(1, keep)))


def default_token_blocks(depth: int) -> tuple[int, ...]:
    """Token-selection blocks (0-indexed): a quarter, half and three quarters of the way.

    For DeiT's 12 blocks this is 3, 6, 9 (blocks 4, 7, 10 counted from one, as in EViT and the
    method's authors); other depths scale the same positions.
    """
    blocks = sorted({min(depth - 1, max(1, round(depth * f))) for f in (0.25, 0.5, 0.75)})
    return tuple(blocks)


@dataclass(frozen=True)
class Ratios:
    """A point of the search space.

    Attributes:
        heads: head prune ratio of each block.
        neurons: MLP-neuron prune ratio of each block.
        tokens: token prune ratio ``1 - keep_rate``, applied at each token stage.
    """

    heads: tuple[float, ...]
    neurons: tuple[float, ...]
    tokens: float = 0.0

    @classmethod
    def uniform(cls, depth: int, heads: float = 0.0, neurons: float = 0.0,
                tokens: float = 0.0) -> Ratios:
        return cls((heads,) * depth, (neurons,) * depth, tokens)

    def to_vector(self) -> list[float]:
        """``[heads..., neurons..., tokens]``: 2L + 1 numbers."""
        return [*self.heads, *self.neurons, self.tokens]

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> Ratios:
        depth = (len(v) - 1) // 2
        return cls(tuple(map(float, v[:depth])), tuple(map(float, v[depth:2 * depth])), float(v[-1]))


def ratios_to_plan(shape: VitShape, ratios: Ratios, *,
                   token_blocks: Iterable[int] | None = None,
                   rankings: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
                   neuron_multiple: int = 1, fuse: bool = True, drop: bool = False) -> PrunePlan:
    """The integer plan for ``ratios``.

    Args:
        shape: the dense model's shape.
        ratios: prune ratios.
        token_blocks: blocks with a token stage (default :func:`default_token_blocks`); no stage
            is added when ``ratios.tokens`` is 0.
        rankings: per block, (head ids, neuron ids) ordered most important first (from a
            criterion); default keeps the lowest ids.
        neuron_multiple: round kept neurons to this multiple.
        fuse: fuse dropped tokens into one.
        drop: a ratio of :data:`DROP_AT` or more drops that attention or MLP (depth pruning).
    """
    depth = len(shape.blocks)
    if len(ratios.heads) != depth or len(ratios.neurons) != depth:
        raise SearchError(f"ratios for {len(ratios.heads)} blocks, the model has {depth}; make the "
                          "ratios for this model (Ratios.uniform(depth, ...))")
    blocks = []
    for i, b in enumerate(shape.blocks):
        h = keep_count(b.heads, ratios.heads[i], drop=drop)
        d = keep_count(b.mlp_hidden, ratios.neurons[i], neuron_multiple, drop=drop)
        head_order, neuron_order = rankings[i] if rankings else (range(b.heads), range(b.mlp_hidden))
        blocks.append(BlockPlan(tuple(list(head_order)[:h]), tuple(list(neuron_order)[:d])))
    stages: tuple[TokenStage, ...] = ()
    if ratios.tokens > 0:
        tb = default_token_blocks(depth) if token_blocks is None else tuple(token_blocks)
        stages = tuple(TokenStage(t, 1.0 - ratios.tokens, fuse) for t in tb)
    return PrunePlan(tuple(blocks), stages, base=base_of(shape))


def plan_macs(shape: VitShape, plan: PrunePlan) -> int:
    """Total MACs per image of ``shape`` pruned by ``plan``."""
    return macs(planned_shape(shape, plan)).total


def solve_uniform(shape: VitShape, target: float, *, heads: bool = True, neurons: bool = True,
                  tokens: bool = True, max_ratio: float = 1.0, iters: int = 40,
                  **plan_kwargs) -> tuple[float, PrunePlan]:
    """The smallest uniform ratio ``r`` on the chosen dimensions whose plan costs <= ``target``.

    Args:
        target: MACs budget as a fraction of the dense model's (0.6 = keep 60%).
        heads, neurons, tokens: which dimensions the ratio applies to.
        max_ratio: largest ratio tried (tokens are capped at
            :data:`MAX_TOKEN_RATIO`).
    Returns:
        (r, plan).
    Raises:
        BudgetError: even ``max_ratio`` does not reach the target on these dimensions.
    """
    depth, dense = len(shape.blocks), macs(shape).total

    def plan_at(r: float) -> PrunePlan:
        rat = Ratios.uniform(depth, r if heads else 0.0, r if neurons else 0.0,
                             min(r, MAX_TOKEN_RATIO) if tokens else 0.0)
        return ratios_to_plan(shape, rat, **plan_kwargs)

    if plan_macs(shape, plan_at(max_ratio)) > target * dense:
        reach = plan_macs(shape, plan_at(max_ratio)) / dense
        dims = [d for d, on in (("heads", heads), ("neurons", neurons), ("tokens", tokens)) if on]
        raise BudgetError(
            f"pruning {'+'.join(dims)} alone cannot reach {target:.0%} of the dense MACs: the "
            f"smallest such model keeps {reach:.1%}. Raise the budget or prune more dimensions."
        )
    lo, hi = 0.0, max_ratio
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if plan_macs(shape, plan_at(mid)) <= target * dense else (mid, hi)
    return hi, plan_at(hi)


def _check_bounds(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise SearchError(f"{name} must be a pair (low, high), got {bounds!r}") from None
    if not 0.0 <= lo <= hi < 1.0:
        raise SearchError(
            f"{name} {bounds!r} must satisfy 0 <= low <= high < 1 (prune ratios; 1 would remove "
            "everything); e.g. (0.0, 0.5)"
        )
    return lo, hi


@dataclass(frozen=True)
class SearchSpace:
    """The box of prune ratios a search explores, and the integer plan and cost of each point.

    A point is the vector ``[heads..., neurons..., tokens]`` of :meth:`Ratios.to_vector` (2L + 1
    numbers for L blocks). Raising any ratio never raises the cost, which the feasible sampler
    relies on.

    Attributes:
        shape: the dense model's shape (without token stages).
        head_bounds, neuron_bounds, token_bounds: (low, high) of each kind of ratio, in [0, 1).
            Equal low and high fix that kind.
        token_blocks: blocks with a token stage (``None``: :func:`default_token_blocks`; empty:
            no token pruning, the token ratio is then fixed).
        neuron_multiple: round kept neurons to this multiple (see :func:`keep_count`).
        fuse: token stages fuse the dropped tokens into one.
        rankings: per block, (head ids, neuron ids) most important first, so that the plans
            handed to the objective keep the criterion's best components (default: lowest ids).
        latency: a :class:`~vitprune.latency.LatencyTable` of this model: the cost the budget
            bounds is then its predicted time (ms per batch), not MACs.
        drop: depth pruning: head and neuron ratios reach up to :data:`DROP_MAX`, and from
            :data:`DROP_AT` on they drop the block's attention or MLP (never the attention of a
            token block, which scores the tokens).
    """

    shape: VitShape
    head_bounds: tuple[float, float] = (0.0, MAX_RATIO)
    neuron_bounds: tuple[float, float] = (0.0, MAX_RATIO)
    token_bounds: tuple[float, float] = (0.0, MAX_RATIO)
    token_blocks: tuple[int, ...] | None = None
    neuron_multiple: int = 1
    fuse: bool = True
    rankings: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] | None = None
    latency: LatencyTable | None = None
    drop: bool = False

    def __post_init__(self) -> None:
        depth = len(self.shape.blocks)
        if any(b.keep_patches is not None for b in self.shape.blocks):
            raise SearchError("the search space needs the dense model's shape; this one already "
                              "selects tokens")
        for name in ("head_bounds", "neuron_bounds", "token_bounds"):
            object.__setattr__(self, name, _check_bounds(name, getattr(self, name)))
        tb = default_token_blocks(depth) if self.token_blocks is None else tuple(self.token_blocks)
        if len(set(tb)) != len(tb) or not all(isinstance(b, int) and 0 <= b < depth for b in tb):
            raise SearchError(f"token_blocks {tb!r} must be distinct block indices in "
                              f"0..{depth - 1}")
        object.__setattr__(self, "token_blocks", tuple(sorted(tb)))
        if not (isinstance(self.neuron_multiple, int) and self.neuron_multiple >= 1):
            raise SearchError(f"neuron_multiple must be an integer >= 1, got "
                              f"{self.neuron_multiple!r}")
        if self.rankings is not None:
            if len(self.rankings) != depth:
                raise SearchError(f"rankings cover {len(self.rankings)} blocks, the model has "
                                  f"{depth}")
            object.__setattr__(self, "rankings", tuple(
                (tuple(h), tuple(n)) for h, n in self.rankings))
        if self.latency is not None:
            self.latency.check_model(self.shape)

    @property
    def metric(self) -> str:
        """What the budget bounds: ``macs`` (per image) or ``latency`` (predicted ms)."""
        return "macs" if self.latency is None else "latency"

    @cached_property
    def dense_cost(self) -> float:
        """The dense model's cost in the budget's metric."""
        return float(self.dense_macs if self.latency is None else self.latency.dense_ms(self.shape))

    def cost(self, x: Sequence[float]) -> float:
        """The cost of point ``x``'s integer architecture in the budget's metric (the
        authoritative count)."""
        if self.latency is None:
            return float(self.macs(x))
        return self.latency.predict(planned_shape(self.shape, self.plan(x)))

    def batch_cost(self, X: np.ndarray) -> np.ndarray:
        """:meth:`cost` of many points at once (MACs: :meth:`batch_macs`; latency: the table's
        vectorised prediction from the same integer counts)."""
        if self.latency is None:
            return self.batch_macs(X)
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        h, d, n_in, n_out = self._counts(X)
        stage = np.zeros(h.shape, dtype=bool)  # ratios_to_plan puts a stage at each token block
        stage[:, list(self.token_blocks)] = (X[:, -1] > 0)[:, None]  # unless the ratio is 0
        return self.latency.predict_counts(h, d, n_in, n_out, stage)

    @property
    def depth(self) -> int:
        """Number of transformer blocks L."""
        return len(self.shape.blocks)

    @property
    def dim(self) -> int:
        """Length of a point: 2L + 1."""
        return 2 * self.depth + 1

    @cached_property
    def lower(self) -> np.ndarray:
        """Lowest ratio of each coordinate (the least pruned, most expensive corner)."""
        return self._per_coordinate(0)

    @cached_property
    def upper(self) -> np.ndarray:
        """Highest ratio of each coordinate (the most pruned, cheapest corner)."""
        return self._per_coordinate(1)

    @cached_property
    def free(self) -> np.ndarray:
        """Mask of the coordinates the search may move (a positive range that changes the plan)."""
        free = self.upper > self.lower
        if not self.token_blocks:
            free[-1] = False  # no token stage: the token ratio changes nothing
        free.flags.writeable = False
        return free

    @cached_property
    def dense_macs(self) -> int:
        """MACs per image of the dense model."""
        return macs(self.shape).total

    def _per_coordinate(self, side: int) -> np.ndarray:
        L = self.depth
        v = np.array([self.head_bounds[side]] * L + [self.neuron_bounds[side]] * L
                     + [self.token_bounds[side]], dtype=np.float64)
        if self.drop and side == 1:  # droppable: up to DROP_MAX where the bound lets it move
            heads = [i for i in range(L) if i not in self.token_blocks or self.token_bounds[1] == 0]
            for i in heads + [L + i for i in range(L)]:
                if v[i] > 0:
                    v[i] = DROP_MAX
        v.flags.writeable = False
        return v

    def ratios(self, x: Sequence[float]) -> Ratios:
        """The :class:`Ratios` of point ``x``."""
        return Ratios.from_vector(list(map(float, x)))

    def plan(self, x: Sequence[float]) -> PrunePlan:
        """The integer prune plan of point ``x``."""
        return ratios_to_plan(self.shape, self.ratios(x), token_blocks=self.token_blocks,
                              rankings=self.rankings, neuron_multiple=self.neuron_multiple,
                              fuse=self.fuse, drop=self.drop)

    def macs(self, x: Sequence[float]) -> int:
        """MACs per image of point ``x``'s integer architecture (the authoritative count)."""
        return plan_macs(self.shape, self.plan(x))

    def batch_macs(self, X: np.ndarray) -> np.ndarray:
        """:meth:`macs` of many points at once, without building plans.

        The integer counts mirror :func:`keep_count` and :func:`~vitprune.plan.kept_tokens`
        operation for operation (same float expressions, same round-half-to-even), and the MACs
        are :func:`~vitprune.cost.batch_macs`, the formula :func:`~vitprune.cost.macs` uses, so
        this agrees with :meth:`macs` exactly; a test checks it. The feasible sampler needs tens
        of thousands of costs per step, too many for plan objects.

        Args:
            X: points, shape (M, 2L + 1).
        Returns:
            MACs per image, shape (M,), int64.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        parts = batch_macs(self.shape, *self._counts(X))
        return sum(parts.values())  # the parts that vary are (M,) arrays, the rest ints

    def _counts(self, X: np.ndarray) -> tuple[np.ndarray, ...]:
        """(heads, neurons, tokens in, tokens out), each (M, L), of points ``X`` (M, 2L + 1)."""
        L, s = self.depth, self.shape
        total_h = np.array([b.heads for b in s.blocks], dtype=np.int64)
        total_d = np.array([b.mlp_hidden for b in s.blocks], dtype=np.int64)
        h = _keep_counts(total_h, X[:, :L], 1, self.drop)  # (M, L)
        d = _keep_counts(total_d, X[:, L:2 * L], self.neuron_multiple, self.drop)  # (M, L)
        n_in, n_out = self._token_counts(X[:, -1])  # (M, L) each, prefix included
        return h, d, n_in, n_out

    def _token_counts(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens entering and leaving each block, shape (M, L) each, for token ratios (M,)."""
        s = self.shape
        patches = np.full(tokens.shape, s.num_patches, dtype=np.int64)
        stage = tokens > 0  # ratios_to_plan adds no stage for a zero token ratio
        n_in, n_out = [], []
        for i in range(self.depth):
            grid = s.blocks[i].grid
            if grid is not None:  # a hierarchical stage's own grid (no token stages)
                n_in.append(np.full(tokens.shape, grid[0] * grid[1], dtype=np.int64))
                n_out.append(n_in[-1])
                continue
            n_in.append(s.num_prefix + patches)
            if i in self.token_blocks:
                keep = np.maximum(1, np.ceil((1.0 - tokens) * patches - 1e-9)).astype(np.int64)
                cut = stage & (keep < patches)
                patches = np.where(cut, keep + (1 if self.fuse else 0), patches)
            n_out.append(s.num_prefix + patches)
        return np.stack(n_in, axis=1), np.stack(n_out, axis=1)

    def to_unit(self, X: np.ndarray) -> np.ndarray:
        """The free coordinates of points ``X`` (M, 2L + 1) scaled to the unit cube (M, F)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        lo, hi = self.lower[self.free], self.upper[self.free]
        return (X[:, self.free] - lo) / (hi - lo)

    def describe(self) -> dict:
        """A JSON-ready description, used to tell one search's trials file from another's."""
        return {
            "shape": repr(self.shape) + (f" pool={self.shape.pool!r}" if self.shape.pool else "")
            + (f" stem={self.shape.stem!r}" if self.shape.stem else "") + _gated(self.shape),
            "head_bounds": list(self.head_bounds),
            "neuron_bounds": list(self.neuron_bounds), "token_bounds": list(self.token_bounds),
            "token_blocks": list(self.token_blocks), "neuron_multiple": self.neuron_multiple,
            **({"drop": True} if self.drop else {}),
            "fuse": self.fuse,
            "rankings": None if self.rankings is None else repr(self.rankings),
            **({} if self.latency is None else {"latency_table": self.latency.fingerprint()}),
        }


def _keep_counts(total: np.ndarray, ratios: np.ndarray, multiple_of: int,
                 drop: bool = False) -> np.ndarray:
    """:func:`keep_count` for a (M, L) array of ratios and per-block totals (L,)."""
    keep = np.round((1.0 - ratios) * total)  # np.round halves to even, as Python's round
    if multiple_of > 1:
        keep = multiple_of * np.round(keep / multiple_of)
        keep = np.maximum(keep, np.minimum(multiple_of, total))
    keep = np.minimum(total, np.maximum(1, keep)).astype(np.int64)
    return np.where(ratios >= DROP_AT, 0, keep) if drop else keep


def _gated(shape: VitShape) -> str:
    """The MLP matrices of each block where a block is gated ('' for plain MLPs, so that the
    fingerprints of searches made before gated MLPs were described stay the same)."""
    m = [b.mlp_matrices for b in shape.blocks]
    return f" mlp_matrices={m}" if any(x != 2 for x in m) else ""
