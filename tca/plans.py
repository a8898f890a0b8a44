"""What one condensing block does, as data: a plan type per kind of condensing step.

A plan holds the block's token counts and the sizes its step needs (tiers, r, a budget, ...),
says what the step reads from the block's attention (``tca.block.attend``), and counts the MACs
the step adds (``overhead``; ``tca.flops`` adds them per block). Plans are built per block by the
methods' plan builders (``tca.methods``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from . import beyond


@dataclass(frozen=True)
class LayerPlan:
    """What one condensing block does: ``n_in`` tokens in, ``n_out`` out. The subclass says how
    (``kind`` names it). ``prefix``: the leading tokens that never condense (1 = the CLS token;
    0 for towers without one, such as SigLIP's, where every token is a patch and can be
    selected, merged or fused)."""

    kind: ClassVar[str] = ""
    # What the condensing step reads from the block's attention (``tca.block.attend``): the CLS
    # (or pool-query) row, the head-mean keys, the full probabilities, the value norms.
    needs_row: ClassVar[bool] = False
    needs_keys: ClassVar[bool] = False
    needs_probs: ClassVar[bool] = False
    needs_value_norm: ClassVar[bool] = False
    # ... or the attention residual's update of every token (Representation Shift)
    needs_shift: ClassVar[bool] = False
    # Whether each image keeps its own number of tokens (``n_out`` is then an upper bound).
    adaptive: ClassVar[bool] = False
    n_in: int
    n_out: int
    prefix: int = field(default=1, kw_only=True)

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        """MACs the condensing step adds to a block of width ``d`` with ``h`` heads and ``n_in``
        tokens into attention; ``pool_row``: the signal is a pool query's row (no CLS)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TierPlan(LayerPlan):
    """TCA / EViT: rank the ``n_in - prefix`` patches, keep the top ``t1``, merge the next ``t2``
    into ``k`` coreset tokens, fuse the remaining ``t3`` into one token."""

    kind: ClassVar[str] = "tiers"
    needs_row: ClassVar[bool] = True
    t1: int = 0
    t2: int = 0
    t3: int = 0
    k: int = 0

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        # one CLS query against every key, all heads; for towers without CLS, the pool's query
        # (D²) folded into its key projection (D²), then against every normed token, per head
        cls_row = 2 * d * d + n_in * d * h if pool_row else n_in * d
        coreset = self.t2 * self.t2 * d + self.t2 * d if self.t2 > self.k else 0
        return cls_row + coreset + self.t3 * d


@dataclass(frozen=True)
class TomePlan(LayerPlan):
    """ToMe: merge ``r`` tokens by bipartite soft matching on the head-mean keys."""

    kind: ClassVar[str] = "tome"
    needs_keys: ClassVar[bool] = True
    r: int = 0

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        # cosine matching on head-mean keys (d_h wide), then the weighted merge
        return _matching(n_in, d // h) + n_in * d


@dataclass(frozen=True)
class TomePaperPlan(LayerPlan):
    """The released TCA code's ToMe baseline: merge ``r`` tokens, attention rows as the metric,
    no proportional attention."""

    kind: ClassVar[str] = "tome-paper"
    needs_probs: ClassVar[bool] = True
    r: int = 0

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        # cosine matching on attention rows (n_in wide), then the weighted merge
        return _matching(n_in, n_in) + n_in * d


@dataclass(frozen=True)
class AtsPlan(LayerPlan):
    """ATS: draw ``budget`` = ceil(R (n_in - 1)) samples from the score CDF; duplicates collapse,
    so each image keeps at most ``budget`` patches and ``n_out`` = 1 + budget is an upper bound."""

    kind: ClassVar[str] = "ats"
    needs_row: ClassVar[bool] = True
    needs_value_norm: ClassVar[bool] = True
    adaptive: ClassVar[bool] = True
    budget: int = 0

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        return 2 * n_in * d  # the CLS attention row and the value norms, all heads


@dataclass(frozen=True)
class PitomePlan(LayerPlan):
    """PiToMe: merge ``r`` of the 2r highest-energy patches into the other r (energy with
    ``margin``), protect the rest."""

    kind: ClassVar[str] = "pitome"
    needs_keys: ClassVar[bool] = True
    r: int = 0
    margin: float = 0.0

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        # the patches' cosine matrix on head-mean keys (d_h wide; the energies and the A-B
        # similarities are read from it), then the weighted merge
        p = n_in - self.prefix
        return p * p * (d // h) + n_in * d


@dataclass(frozen=True)
class TofuPlan(LayerPlan):
    """ToFu: ToMe's bipartite matching of ``r`` tokens; ``prune``: drop the matched A tokens
    (early blocks), else merge them by MLERP (later blocks)."""

    kind: ClassVar[str] = "tofu"
    needs_keys: ClassVar[bool] = True
    r: int = 0
    prune: bool = False

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        # cosine matching on head-mean keys; merging adds the weighted sum and the norms of the
        # inputs and of the averages (MLERP's rescaling)
        merge = 0 if self.prune else 2 * n_in * d + self.n_out * d
        return _matching(n_in, d // h) + merge


@dataclass(frozen=True)
class ZeroTPrunePlan(LayerPlan):
    """Zero-TPrune: PageRank importance on every head's attention graph, then ``r`` of the less
    important half dropped (those most similar to the important half)."""

    kind: ClassVar[str] = "zero-tprune"
    needs_keys: ClassVar[bool] = True
    needs_probs: ClassVar[bool] = True
    r: int = 0

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        # ZTP_ITERATIONS vector-matrix products per head on the N x N attention graph, then
        # the unimportant half against the important half on head-mean keys
        p = n_in - self.prefix
        n_imp = p - p // 2
        return beyond.ZTP_ITERATIONS * h * n_in * n_in + (p // 2) * n_imp * (d // h)


@dataclass(frozen=True)
class RepShiftPlan(LayerPlan):
    """Representation Shift: drop the ``n_drop`` patches the attention residual changed least."""

    kind: ClassVar[str] = "repshift"
    needs_shift: ClassVar[bool] = True
    n_drop: int = 0

    def overhead(self, n_in: int, d: int, h: int, pool_row: bool = False) -> int:
        return n_in * d  # the norm of every token's attention update


def _matching(n_in: int, width: int) -> int:
    """MACs of bipartite cosine matching of ``n_in`` tokens on a ``width``-wide metric."""
    return ((n_in + 1) // 2) * (n_in // 2) * width


__all__ = [
    "LayerPlan",
    "TierPlan",
    "TomePlan",
    "TomePaperPlan",
    "AtsPlan",
    "PitomePlan",
    "TofuPlan",
    "ZeroTPrunePlan",
    "RepShiftPlan",
]
