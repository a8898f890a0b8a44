""" "Why this patch?": the score a condensing block ranked its tokens by, the cut-offs of its
plan and one patch's place among them.

At a condensing block the trace holds, for every patch, the score of the token holding it: the
score the method ranked by (``Trace.scores``, named by the method's record, ``Method.score``;
traces built by hand may hold only ``Trace.cls_attention``, which is then used). The tokens
entering the block are recovered from the trace of the block before, so the ranking here is the
block's own: for a tier plan (TCA ranked by the head-mean, EViT) the top ``t1`` tokens are kept,
the next ``t2`` merged into K coreset tokens and the rest fused, exactly as
``tca.condense.prune_merge_fuse`` ranks them (descending, ties by token position). Other plans
have no cut-off; what happened to each token is read from the trace (:func:`outcomes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import CondenseConfig, plan_layers
from .methods import METHODS
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
    exact: whether the recorded score is the one the block ranked by (a hand-built trace with
    only CLS attention, for a run that ranked by the cross-head rank, is not).
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


def recorded_score(trace: Trace, layer: int) -> torch.Tensor | None:
    """(B, P) the score block ``layer`` ranked by, per patch (``Trace.scores``; else the CLS
    attention of a trace built by hand), or None where the block recorded none."""
    if layer in trace.scores:
        return trace.scores[layer]
    return trace.cls_attention.get(layer)


def token_scores(trace: Trace, layer: int, image: int = 0) -> np.ndarray:
    """(T,) float64: the recorded score of every patch token entering block ``layer``, in token
    order. Raises ValueError where the block recorded no score (a plain block)."""
    score = recorded_score(trace, layer)
    if score is None:
        raise ValueError(f"block {layer} recorded no score (plain block, or a method without one)")
    per_patch = score[image].numpy().astype(np.float64)
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
    trace: Trace,
    layer: int,
    plan: LayerPlan | None,
    image: int = 0,
    by_rank: bool = False,
    name: str | None = None,
) -> Ranking:
    """The ranking of block ``layer`` (see :class:`Ranking`). plan: the block's plan (its tier
    sizes give the cut-offs); by_rank: the run ranked by the cross-head rank (TCA score=rank);
    name: the score's name (the method's ``Score.name``; default: :func:`score_name`)."""
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
        name or score_name(plan),
        scores,
        order,
        tiers,
        cuts,
        outcomes(trace, layer, image),
        exact=layer in trace.scores or not (by_rank and isinstance(plan, TierPlan)),
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
    score = METHODS[config.method].ranked_by(config)
    rankings = [
        ranking(
            trace,
            l,
            schedule.plans[l],
            image,
            by_rank=config.score == "rank",
            name=None if score is None else score.name,
        )
        for l in trace.condensing_layers
        if recorded_score(trace, l) is not None
    ]
    places = [None if patch is None else patch_place(r, trace, patch, image) for r in rankings]
    return rankings, places


@dataclass(frozen=True)
class HighNorm:
    """The high-norm ("register-like") tokens entering one block (``tca.norms``'s rule) and
    what the block did to each (:data:`OUTCOMES`, from the trace, as :func:`outcomes`).

    tokens: the flagged patch tokens (position - prefix), ascending; outcome: one per token;
    patches: how many patches they hold; threshold: the input's high-norm threshold.
    """

    layer: int
    threshold: float
    tokens: tuple[int, ...]
    outcome: tuple[str, ...]
    patches: int

    def counts(self) -> dict[str, int]:
        """Outcome -> how many of the tokens got it (only outcomes that occur, in
        :data:`OUTCOMES` order)."""
        return {o: self.outcome.count(o) for o in OUTCOMES if o in self.outcome}


def high_norm_tokens(trace: Trace, layer: int, image: int = 0) -> HighNorm | None:
    """The high-norm tokens entering block ``layer`` (None: the trace recorded no norms)."""
    if trace.norm_threshold is None:
        return None
    flagged = trace.high_norm(layer, image).numpy()
    tok = entering_tokens(trace, layer, image)
    tokens = sorted(set(tok[flagged & (tok >= 0)].tolist()))
    done = outcomes(trace, layer, image)
    return HighNorm(
        layer,
        float(trace.norm_threshold[image, layer]),
        tuple(tokens),
        tuple(done[t] for t in tokens),
        int(flagged.sum()),
    )


def score_grid(trace: Trace, layer: int, image: int = 0) -> np.ndarray:
    """(rows, cols) float64: the score block ``layer`` recorded for every patch (NaN: dropped),
    the values the score map draws."""
    score = recorded_score(trace, layer)
    if score is None:
        raise ValueError(f"block {layer} recorded no score (plain block, or a method without one)")
    return score[image].numpy().astype(np.float64).reshape(trace.grid)


def score_layer(trace: Trace, layer: int) -> int | None:
    """The latest condensing block <= ``layer`` that recorded a score (the one whose ranking
    made the fates shown after ``layer``), or None."""
    done = [
        l for l in trace.condensing_layers if l <= layer and recorded_score(trace, l) is not None
    ]
    return max(done) if done else None


__all__ = [
    "OUTCOMES",
    "HighNorm",
    "high_norm_tokens",
    "Ranking",
    "PatchPlace",
    "entering_tokens",
    "token_scores",
    "outcomes",
    "ranking",
    "patch_place",
    "recorded_score",
    "score_grid",
    "score_layer",
    "score_name",
    "why_patch",
]
