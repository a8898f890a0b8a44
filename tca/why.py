""" "Why this patch?": the score a condensing block ranked its tokens by, the cut-offs of its
plan and one patch's place among them.

At a condensing block the trace holds, for every patch, the score of the token holding it (the
head-mean CLS attention for TCA, EViT and ATS; see ``Trace.cls_attention``). The tokens
entering the block are recovered from the trace of the block before, so the ranking here is the
block's own: for a tier plan (TCA ranked by the head-mean, EViT) the top ``t1`` tokens are kept,
the next ``t2`` merged into K coreset tokens and the rest fused, exactly as
``tca.condense.prune_merge_fuse`` ranks them (descending, ties by token position). Other plans
have no cut-off; what happened to each token is read from the trace (:func:`outcomes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import CondenseConfig, plan_layers
from .plans import AtsPlan, LayerPlan, TierPlan
from .trace import DROPPED, PRUNED, Trace

KEEP, MERGE, FUSE, DROP = "kept", "merged", "fused", "dropped"
OUTCOMES = (KEEP, MERGE, FUSE, DROP)


@dataclass(frozen=True)
class Ranking:
    """One condensing block's ranking of the patch tokens entering it.

    scores: (T,) float64, every entering patch token's score in token order (position - prefix).
    order: (T,) the token positions (0-based among patch tokens) by descending score.
    tiers: how many tokens the plan keeps / merges / fuses, in rank order (None: no cut-offs,
    e.g. ATS samples). cuts: the score between the last kept and the first merged token and
    between the last merged and the first fused one (midpoints; only where a tier follows).
    outcome: (T,) what the trace says happened to each token (:data:`OUTCOMES`).
    exact: whether the recorded score is the one the block ranked by (TCA with ``score=rank``
    ranks by the cross-head rank, which the trace does not record).
    """

    layer: int
    score_name: str
    scores: np.ndarray
    order: np.ndarray
    tiers: tuple[int, int, int] | None
    cuts: tuple[float, ...]
    outcome: tuple[str, ...]
    exact: bool

    def rank_of(self, token: int) -> int:
        """1-based rank of patch token ``token`` (position - prefix) by descending score."""
        return int(np.nonzero(self.order == token)[0][0]) + 1

    def planned(self, token: int) -> str | None:
        """The tier the plan puts ``token`` in by its rank (None without cut-offs)."""
        if self.tiers is None:
            return None
        r = self.rank_of(token)
        t1, t2, _ = self.tiers
        return KEEP if r <= t1 else MERGE if r <= t1 + t2 else FUSE


def entering_tokens(trace: Trace, layer: int, image: int = 0) -> np.ndarray:
    """(P,) int64: the patch token (position - prefix) holding each patch as the block
    ``layer`` starts, -1 for patches dropped before it."""
    p = trace.token_index.shape[-1]
    if layer == 0:
        return np.arange(p, dtype=np.int64)
    idx = trace.token_index[image, layer - 1].numpy().astype(np.int64)
    return np.where(idx >= 0, idx - trace.prefix, DROPPED)


def token_scores(trace: Trace, layer: int, image: int = 0) -> np.ndarray:
    """(T,) float64: the recorded score of every patch token entering block ``layer``, in token
    order. Raises ValueError where the block recorded no score (a plain block, or ToMe)."""
    if layer not in trace.cls_attention:
        raise ValueError(f"block {layer} recorded no score (plain block, or a method without one)")
    per_patch = trace.cls_attention[layer][image].numpy().astype(np.float64)
    tok = entering_tokens(trace, layer, image)
    alive = tok >= 0
    n = int(tok[alive].max()) + 1 if alive.any() else 0
    out = np.full(n, np.nan)
    out[tok[alive]] = per_patch[alive]
    return out


def outcomes(trace: Trace, layer: int, image: int = 0) -> tuple[str, ...]:
    """What happened to every patch token entering block ``layer``, from the trace: dropped (no
    token holds its patches), fused (its new token holds patches fused at this block), merged
    (its new token holds other entering tokens too) or kept."""
    tok = entering_tokens(trace, layer, image)
    after = trace.token_index[image, layer].numpy().astype(np.int64)
    newly = trace.fate[image, layer].numpy() == PRUNED
    if layer > 0:
        newly &= trace.fate[image, layer - 1].numpy() != PRUNED
    n = int(tok[tok >= 0].max()) + 1 if (tok >= 0).any() else 0
    dest = np.full(n, DROPPED, dtype=np.int64)
    alive = tok >= 0
    dest[tok[alive]] = after[alive]
    sharing = np.bincount(dest[dest >= 0], minlength=max(1, int(after.max()) + 1))
    fused_dest = set(after[newly & (after >= 0)].tolist())
    out = []
    for d in dest.tolist():
        if d < 0:
            out.append(DROP)
        elif d in fused_dest:
            out.append(FUSE)
        elif sharing[d] > 1:
            out.append(MERGE)
        else:
            out.append(KEEP)
    return tuple(out)


def score_name(plan: LayerPlan | None) -> str:
    """What the recorded score is, in words."""
    if isinstance(plan, AtsPlan):
        return "head-mean CLS attention (ATS samples by it times the value norm)"
    return "head-mean CLS attention"


def ranking(
    trace: Trace, layer: int, plan: LayerPlan | None, image: int = 0, by_rank: bool = False
) -> Ranking:
    """The ranking of block ``layer`` (see :class:`Ranking`). plan: the block's plan (its tier
    sizes give the cut-offs); by_rank: the run ranked by the cross-head rank (TCA score=rank)."""
    scores = token_scores(trace, layer, image)
    # descending, ties by position: the order prune_merge_fuse uses (stable argsort)
    order = np.argsort(-scores, kind="stable")
    tiers = None
    cuts: tuple[float, ...] = ()
    if isinstance(plan, TierPlan):
        if plan.n_in - plan.prefix != scores.shape[0]:
            raise ValueError(
                f"block {layer}: the plan ranks {plan.n_in - plan.prefix} tokens, "
                f"the trace has {scores.shape[0]}"
            )
        tiers = (plan.t1, plan.t2, plan.t3)
        ranked = scores[order]
        bounds = [b for b in (plan.t1, plan.t1 + plan.t2) if 0 < b < ranked.shape[0]]
        cuts = tuple(float((ranked[b - 1] + ranked[b]) / 2) for b in dict.fromkeys(bounds))
    return Ranking(
        layer,
        score_name(plan),
        scores,
        order,
        tiers,
        cuts,
        outcomes(trace, layer, image),
        exact=not (by_rank and isinstance(plan, TierPlan)),
    )


@dataclass(frozen=True)
class PatchPlace:
    """One patch at one condensing block: its token's score, rank and fate there."""

    layer: int
    token: int  # the patch token holding it as the block starts (position - prefix), -1: dropped
    score: float
    rank: int  # 1-based, of ``n``
    n: int
    planned: str | None
    outcome: str


def patch_place(r: Ranking, trace: Trace, patch: int, image: int = 0) -> PatchPlace | None:
    """Where ``patch`` stood in ranking ``r`` (None when an earlier block dropped it)."""
    tok = int(entering_tokens(trace, r.layer, image)[patch])
    if tok < 0:
        return None
    return PatchPlace(
        r.layer,
        tok,
        float(r.scores[tok]),
        r.rank_of(tok),
        int(r.scores.shape[0]),
        r.planned(tok),
        r.outcome[tok],
    )


def why_patch(
    trace: Trace, config: CondenseConfig, patch: int | None, image: int = 0
) -> tuple[list[Ranking], list[PatchPlace | None]]:
    """Every condensing block's :class:`Ranking` that recorded a score, and ``patch``'s place
    in each (None where it was dropped before, or for ``patch=None``). The plans come from the
    settings and the trace's geometry (``plan_layers``), as the forward made them."""
    p = trace.token_index.shape[-1]
    schedule = plan_layers(config, p + trace.prefix, trace.depth, prefix=trace.prefix)
    rankings = [
        ranking(trace, l, schedule.plans[l], image, by_rank=config.score == "rank")
        for l in trace.condensing_layers
        if l in trace.cls_attention
    ]
    places = [None if patch is None else patch_place(r, trace, patch, image) for r in rankings]
    return rankings, places


def score_grid(trace: Trace, layer: int, image: int = 0) -> np.ndarray:
    """(rows, cols) float64: the score block ``layer`` recorded for every patch (NaN: dropped)."""
    if layer not in trace.cls_attention:
        raise ValueError(f"block {layer} recorded no score (plain block, or a method without one)")
    return trace.cls_attention[layer][image].numpy().astype(np.float64).reshape(trace.grid)


__all__ = [
    "OUTCOMES",
    "Ranking",
    "PatchPlace",
    "entering_tokens",
    "token_scores",
    "outcomes",
    "ranking",
    "patch_place",
    "score_grid",
    "score_name",
    "why_patch",
]
