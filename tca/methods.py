"""The method registry: one :class:`Method` record per condensation method.

A method is a plan builder (how many tokens a condensing block keeps, from the settings and the
token count), a condensing step (what the block does to its tokens, from the functions of
``tca.condense`` and ``tca.beyond``), a few flags and the words its fates are shown with. The config, the forward,
FLOP counts, the bench, eval, the CLI and the app all read :data:`METHODS`; none switches on a
method's name.

Adding a method: its functions on tensors in ``tca/condense.py`` (or ``tca/beyond.py``), a plan
type in ``tca/plans.py`` if none fits (what the step reads from the block's attention, and its
own cost in MACs), a plan builder, a step, and one record in :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol

import torch

from . import beyond, condense
from .errors import ConfigError
from .plans import (
    AtsPlan,
    LayerPlan,
    PitomePlan,
    RepShiftPlan,
    TierPlan,
    TofuPlan,
    TomePaperPlan,
    TomePlan,
    ZeroTPrunePlan,
)


class Settings(Protocol):
    """What plan builders and steps read of the settings (``tca.config.CondenseConfig``)."""

    @property
    def keep_rate(self) -> float: ...
    @property
    def tca_rate(self) -> float: ...
    @property
    def merge_centers(self) -> int: ...
    @property
    def score(self) -> str: ...


class Run(Protocol):
    """What a condensing step reads of the forward's run (``tca.block.RunState``)."""

    @property
    def config(self) -> Settings: ...
    @property
    def generator(self) -> torch.Generator | None: ...


class Attended(NamedTuple):
    """The block's attention as a condensing step reads it (``tca.block.attend`` makes it).

    out: (B, N, D) attention output after the output projection, before layer scale.
    cls_row: (B, h, N) per-head attention probabilities of the CLS query, if asked for.
    keys: (B, N, d_h) head-mean keys (ToMe's similarity metric), if asked for.
    """

    out: torch.Tensor
    cls_row: torch.Tensor | None
    keys: torch.Tensor | None
    probs: torch.Tensor | None = None  # (B, h, N, N) attention probabilities (tome-paper)
    value_norm: torch.Tensor | None = None  # (B, h, N) per-head value norms (ATS)
    shift: torch.Tensor | None = None  # (B, N) norm of each token's attention update (repshift)


# ------------------------------------------------------------------------ plan builders

# (config, tokens into the block, block index, prefix, blocks in the tower) -> the block's plan,
# or None when the block would remove nothing.
PlanBuilder = Callable[[Settings, int, int, int, int], "LayerPlan | None"]


def _tiers(t1: int, t2: int, t3: int, k: int, n: int, prefix: int) -> TierPlan | None:
    if t2 == 0 and t3 == 0:
        return None
    return TierPlan(n, prefix + t1 + k + (1 if t3 > 0 else 0), t1, t2, t3, k, prefix=prefix)


def plan_tca(config: Settings, n: int, layer: int, prefix: int, depth: int) -> TierPlan | None:
    """The released code's tiers at rate d, with K coreset centres (ConfigError if K > t2)."""
    # The tier budgets are defined on N = patches + 1 (the released code counts the CLS token).
    t1, t2, t3 = condense.tca_tier_sizes(n - prefix + 1, config.tca_rate)
    k = config.merge_centers
    if 0 < t2 < k:
        raise ConfigError(
            f"merge centres K={k} is larger than tier 2 at layer {layer} ({t2} class-ambiguous "
            f"tokens of {n}); use K <= {t2} or a lower keep rate"
        )
    return _tiers(t1, t2, t3, min(k, t2), n, prefix)


def plan_evit(config: Settings, n: int, layer: int, prefix: int, depth: int) -> TierPlan | None:
    """EViT: keep ceil(R P) patches, fuse the rest (no tier 2)."""
    t1, t2, t3 = condense.evit_tier_sizes(n - prefix + 1, config.keep_rate)
    return _tiers(t1, t2, t3, 0, n, prefix)


def plan_tome(config: Settings, n: int, layer: int, prefix: int, depth: int) -> TomePlan | None:
    r = condense.tome_r(n, config.keep_rate, prefix)
    return TomePlan(n, n - r, r=r, prefix=prefix) if r > 0 else None


def plan_tome_paper(
    config: Settings, n: int, layer: int, prefix: int, depth: int
) -> TomePaperPlan | None:
    r = condense.tome_r(n, config.keep_rate, prefix)
    return TomePaperPlan(n, n - r, r=r, prefix=prefix) if r > 0 else None


def plan_ats(config: Settings, n: int, layer: int, prefix: int, depth: int) -> AtsPlan | None:
    if prefix != 1:
        others = [m.name for m in METHODS.values() if m.plan and not m.needs_cls]
        raise ConfigError(
            "ats scores patches by their CLS attention and this tower has no CLS token; use "
            f"{', '.join(others[:-1])} or {others[-1]}"
        )
    # Even a budget of every patch drops some: duplicates collapse.
    budget = int(condense.ats_budget(torch.tensor([n - 1]), config.keep_rate)[0])
    return AtsPlan(n, 1 + budget, budget=budget) if n > 1 else None


def plan_pitome(config: Settings, n: int, layer: int, prefix: int, depth: int) -> PitomePlan | None:
    """PiToMe: r = min(int(N (1 - R)), floor(P / 2)) merged; the margin falls with depth."""
    r = beyond.half_r(n, config.keep_rate, prefix)
    margin = beyond.pitome_margin(layer, depth)
    return PitomePlan(n, n - r, r=r, margin=margin, prefix=prefix) if r > 0 else None


def plan_tofu(config: Settings, n: int, layer: int, prefix: int, depth: int) -> TofuPlan | None:
    """ToFu: ToMe's r = int(N (1 - R)); pruned in the first half of the blocks, merged after."""
    r = condense.tome_r(n, config.keep_rate, prefix)
    prune = beyond.tofu_prunes(layer, depth)
    return TofuPlan(n, n - r, r=r, prune=prune, prefix=prefix) if r > 0 else None


def plan_zero_tprune(
    config: Settings, n: int, layer: int, prefix: int, depth: int
) -> ZeroTPrunePlan | None:
    """Zero-TPrune: r = min(int(N (1 - R)), floor(P / 2)) dropped."""
    r = beyond.half_r(n, config.keep_rate, prefix)
    return ZeroTPrunePlan(n, n - r, r=r, prefix=prefix) if r > 0 else None


def plan_repshift(
    config: Settings, n: int, layer: int, prefix: int, depth: int
) -> RepShiftPlan | None:
    """Representation Shift: keep ceil(R P) patches (EViT's count), drop the rest outright."""
    t1, _, t3 = condense.evit_tier_sizes(n - prefix + 1, config.keep_rate)
    return RepShiftPlan(n, prefix + t1, n_drop=t3, prefix=prefix) if t3 > 0 else None


# ------------------------------------------------------------------------------- steps

# A condensing step: (x after the attention residual (B, N, D), ToMe sizes (B, N) or None, the
# plan, the block's attention, the run, the ATS padding mask (B, N) or None) -> (Condensed,
# head-mean CLS attention over patches (B, P) for the trace, or None). Each step takes the plan
# type its method's builder makes.
Step = Callable[..., "tuple[condense.Condensed, torch.Tensor | None]"]


def _tiers_step(x, plan: TierPlan, att: Attended, run: Run, rank: bool):
    assert att.cls_row is not None  # a CLS or pool-query row for every TierPlan
    patch_attn = att.cls_row[..., plan.prefix :]  # (B, h, P): CLS -> patches, not renormalised
    attn_mean = condense.head_mean_score(patch_attn)
    select = condense.head_rank_score(patch_attn) if rank else attn_mean
    c = condense.prune_merge_fuse(
        x, select, attn_mean, plan.t1, plan.t2, plan.k, plan.prefix, run.generator
    )
    return c._replace(score=select), attn_mean


def step_tca(x, size, plan: TierPlan, att: Attended, run: Run, valid=None):
    """TCA: tiers ranked by head-mean CLS attention, or by cross-head rank (``score="rank"``)."""
    return _tiers_step(x, plan, att, run, rank=run.config.score == "rank")


def step_evit(x, size, plan: TierPlan, att: Attended, run: Run, valid=None):
    """EViT: tiers ranked by head-mean CLS attention."""
    return _tiers_step(x, plan, att, run, rank=False)


def step_tome(x, size, plan: TomePlan, att: Attended, run: Run, valid=None):
    size = size if size is not None else x.new_ones(x.shape[:2])
    assert att.keys is not None  # attend(need_keys=True) for every TomePlan
    return condense.tome_merge(x, size, att.keys, plan.r, plan.prefix), None


def step_tome_paper(x, size, plan: TomePaperPlan, att: Attended, run: Run, valid=None):
    """The released baseline: head-mean attention rows as the metric; the sizes weight the
    average but never the attention."""
    size = size if size is not None else x.new_ones(x.shape[:2])
    assert att.probs is not None  # attend(need_probs=True) for every TomePaperPlan
    metric = condense.attention_rows_metric(att.probs.float())
    return condense.tome_merge(x, size, metric, plan.r, plan.prefix), None


def step_ats(x, size, plan: AtsPlan, att: Attended, run: Run, valid=None):
    """ATS: keep at most ceil(R P_b) patches of each image, sampled from its score CDF."""
    assert att.cls_row is not None and att.value_norm is not None  # AtsPlan's needs
    score = condense.ats_score(att.cls_row.float(), att.value_norm.float(), valid)
    n_patches = (
        (valid.sum(dim=1) - 1)
        if valid is not None
        else torch.full((x.shape[0],), x.shape[1] - 1, device=x.device)
    )
    budget = condense.ats_budget(n_patches, run.config.keep_rate)
    keep = condense.unique_indices(condense.inverse_cdf_sample(score, budget), x.shape[1] - 1)
    kept = condense.keep_patches(x, keep, valid)._replace(score=score)
    return kept, condense.head_mean_score(att.cls_row[..., 1:])


def step_pitome(x, size, plan: PitomePlan, att: Attended, run: Run, valid=None):
    """PiToMe: energy on the head-mean keys, the 2r most redundant patches paired and merged."""
    size = size if size is not None else x.new_ones(x.shape[:2])
    assert att.keys is not None  # PitomePlan needs the keys
    return beyond.pitome_merge(x, size, att.keys, plan.r, plan.margin, plan.prefix), None


def step_tofu(x, size, plan: TofuPlan, att: Attended, run: Run, valid=None):
    """ToFu: prune-by-matching in early blocks, MLERP merging in later ones."""
    size = size if size is not None else x.new_ones(x.shape[:2])
    assert att.keys is not None  # TofuPlan needs the keys
    fuse = beyond.tofu_prune if plan.prune else beyond.tofu_merge
    return fuse(x, size, att.keys, plan.r, plan.prefix), None


def step_zero_tprune(x, size, plan: ZeroTPrunePlan, att: Attended, run: Run, valid=None):
    """Zero-TPrune: PageRank importance, then the unimportant near-duplicates dropped."""
    assert att.probs is not None and att.keys is not None  # ZeroTPrunePlan's needs
    return beyond.zero_tprune_prune(x, att.probs, att.keys, plan.r, plan.prefix), None


def step_repshift(x, size, plan: RepShiftPlan, att: Attended, run: Run, valid=None):
    """Representation Shift: the patches the attention residual moved least are dropped."""
    assert att.shift is not None  # RepShiftPlan needs the shift
    return beyond.repshift_prune(x, att.shift, plan.n_drop, plan.prefix), None


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class Fates:
    """How the legend and the explanations word each fate for one method (None: the method
    never gives a patch that fate). group_token / fused_token: what the token count calls a
    token holding a merged group / only fused patches (None: the method makes no such token;
    ATS's dropped patches leave no token at all)."""

    kept: str
    merged: str | None
    pruned: str | None
    group_token: str | None = None
    fused_token: str | None = None


@dataclass(frozen=True)
class Score:
    """The score a method ranks tokens by, as the score map's colour bar and "why this patch?"
    name it (the trace records it per patch: ``Trace.scores``).

    name: the colour bar's label. meaning: one sentence, what it measures and how the method
    uses it. removes: which end of the ranking loses tokens, "low" or "high" (what the map's
    cut-off reads); None where no cut-off separates kept from removed (ATS samples the score's
    CDF, so a low-scoring patch can be drawn and a higher one missed).
    """

    name: str
    meaning: str
    removes: str | None


@dataclass(frozen=True)
class Method:
    """One condensation method.

    name: the CLI / API name. title: the short display name. label: the settings' choice.
    summary: one sentence on what it does. plan / step: the plan builder and the condensing
    step (None for ``none``). anchors: uses TCA's domain anchors (the reservoir's stream mode).
    proportional: ToMe's proportional attention (token sizes bias the attention).
    adaptive: token counts depend on the image (the schedule holds upper bounds).
    needs_cls: refuses towers without a CLS token.
    limit: what caps the method's saving, where it has a cap (shown beside a sweep whose cost
    stops falling).
    score: the score it ranks tokens by (None: ranks nothing); rank_score: the one it ranks by
    with the settings' ``score="rank"`` (TCA's cross-head rank), if it has that choice.
    """

    name: str
    title: str
    label: str
    summary: str
    fates: Fates
    plan: PlanBuilder | None = None
    step: Step | None = None
    anchors: bool = False
    proportional: bool = False
    adaptive: bool = False
    needs_cls: bool = False
    limit: str | None = None
    score: Score | None = None
    rank_score: Score | None = None

    def ranked_by(self, settings: Settings) -> Score | None:
        """The score this method ranks by under ``settings``."""
        if settings.score == "rank" and self.rank_score is not None:
            return self.rank_score
        return self.score


_HALF = (
    "bipartite matching merges at most half of a block's tokens, so below R=0.5 nothing more goes"
)
_KEPT = "kept as itself"

_CLS = "CLS attention (mean over heads)"
_SIMILARITY = (
    "ToMe splits the tokens alternately into sets A and B and the r A tokens whose best match in "
    "B is most similar go; a B token shows its best match in A, though B tokens are never removed"
)

TCA = Method(
    "tca",
    "TCA",
    "TCA (prune + merge)",
    "keeps the patches the CLS token attends to most, merges the class-ambiguous middle tier "
    "into K coreset tokens and fuses the class-irrelevant rest into one token; domain anchors "
    "from past test images can guide it",
    Fates(
        _KEPT,
        "class-ambiguous: merged into one of K coreset tokens",
        "class-irrelevant: fused into one token",
        "coreset tokens",
        "fused tokens",
    ),
    plan_tca,
    step_tca,
    anchors=True,
    score=Score(
        _CLS,
        "how much the CLS token attends to the patch: the most attended are kept, the middle tier "
        "merged into K coreset tokens, the least attended fused",
        "low",
    ),
    rank_score=Score(
        "cross-head rank of CLS attention (1 = first in every head)",
        "each head ranks the patches by its CLS attention and the ranks are averaged: the best "
        "ranked are kept, the middle tier merged, the worst fused",
        "low",
    ),
)
EVIT = Method(
    "evit",
    "EViT",
    "EViT (prune + fuse)",
    "keeps the patches the CLS token attends to most and fuses the inattentive rest into one token",
    Fates(_KEPT, None, "inattentive: fused into one token", fused_token="fused tokens"),
    plan_evit,
    step_evit,
    score=Score(
        _CLS, "how much the CLS token attends to the patch: the least attended are fused", "low"
    ),
)
TOME = Method(
    "tome",
    "ToMe",
    "ToMe (merge pairs)",
    "merges the r most similar token pairs (bipartite matching on the attention keys) and "
    "weights attention by token size",
    Fates(_KEPT, "merged with its most similar tokens", None, "merged tokens"),
    plan_tome,
    step_tome,
    proportional=True,
    limit=_HALF,
    score=Score("best key similarity to the other set (cosine)", _SIMILARITY, "high"),
)
TOME_PAPER = Method(
    "tome-paper",
    "ToMe (paper)",
    "ToMe, paper's variant",
    "the TCA paper's ToMe baseline: pairs matched on attention rows, no proportional attention",
    Fates(_KEPT, "merged with its most similar tokens", None, "merged tokens"),
    plan_tome_paper,
    step_tome_paper,
    limit=_HALF,
    score=Score(
        "best attention-row similarity to the other set (cosine)",
        _SIMILARITY + "; tokens compared by their head-mean attention rows, not their keys",
        "high",
    ),
)
ATS = Method(
    "ats",
    "ATS",
    "ATS (adaptive sampling)",
    "samples at most ceil(R P) patches from the CDF of CLS attention times value norm; "
    "duplicate samples collapse, so each image keeps its own number",
    Fates(_KEPT, None, "not sampled: dropped"),
    plan_ats,
    step_ats,
    adaptive=True,
    needs_cls=True,
    score=Score(
        "significance (CLS attention x value norm, share of the image)",
        "each patch's share of the summed CLS attention times value norm; patches are sampled "
        "at evenly spaced quantiles of its CDF, so high scores are likely kept, with no sharp "
        "cut-off",
        None,
    ),
)
PITOME = Method(
    "pitome",
    "PiToMe",
    "PiToMe (energy + merge)",
    "scores every patch by its energy (how many near-duplicates it has among the keys), pairs "
    "the 2r most redundant and merges each pair, and protects the isolated, informative rest",
    Fates(
        _KEPT,
        "redundant (high energy): merged with its most similar partner",
        None,
        "merged tokens",
    ),
    plan_pitome,
    step_pitome,
    proportional=True,
    score=Score(
        "energy (mean ELU of key similarity minus margin)",
        "how many near-duplicates the patch has among the keys: the 2r highest are paired and "
        "merged, the low-energy (isolated, informative) rest protected",
        "high",
    ),
)
TOFU = Method(
    "tofu",
    "ToFu",
    "ToFu (prune early, merge late)",
    "matches token pairs as ToMe does; in the first half of the blocks drops the matched token, "
    "later merges the pair by MLERP (the average rescaled to the larger norm)",
    Fates(
        _KEPT,
        "merged with its most similar tokens (norm kept)",
        "matched in an early block: dropped",
        "merged tokens",
    ),
    plan_tofu,
    step_tofu,
    proportional=True,
    score=Score(
        "best key similarity to the other set (cosine)",
        _SIMILARITY + " (dropped in early blocks, merged by MLERP later)",
        "high",
    ),
)
ZERO_TPRUNE = Method(
    "zero-tprune",
    "Zero-TPrune",
    "Zero-TPrune (PageRank + prune)",
    "ranks tokens by PageRank on every head's attention graph (outlier heads filtered out) and "
    "drops the unimportant tokens most similar to an important one",
    Fates(_KEPT, None, "unimportant near-duplicate: dropped"),
    plan_zero_tprune,
    step_zero_tprune,
    score=Score(
        "PageRank importance (mean over the kept heads)",
        "weighted PageRank on each head's attention graph: only the less important half can be "
        "dropped, and of it the tokens most similar to an important one go",
        "low",
    ),
)
REPSHIFT = Method(
    "repshift",
    "Representation Shift",
    "Representation Shift (prune)",
    "scores every patch by how much the block's attention changed it, ||F(x) - x||, and drops "
    "the least changed; needs no attention map, so attention stays fused",
    Fates(_KEPT, None, "barely changed by attention: dropped"),
    plan_repshift,
    step_repshift,
    score=Score(
        "representation shift ||F(x) - x|| of the attention",
        "how far the block's attention moved the token: the least moved are dropped",
        "low",
    ),
)
NONE = Method(
    "none",
    "none (plain CLIP)",
    "none (plain CLIP)",
    "the unmodified model: every token through every block",
    Fates(_KEPT, None, None),
)

# In display order; the unmodified model last.
METHODS: dict[str, Method] = {
    m.name: m for m in (TCA, EVIT, TOME, TOME_PAPER, ATS, PITOME, TOFU, ZERO_TPRUNE, REPSHIFT, NONE)
}
# The paper's baselines beside TCA: what bench, eval and Compare run unless told otherwise.
COMPARED: tuple[str, ...] = ("tca", "evit", "tome")


def method(name: str) -> Method:
    """The record of ``name``, or ConfigError naming the choices."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


__all__ = [
    "METHODS",
    "COMPARED",
    "Method",
    "Fates",
    "Score",
    "method",
    "PlanBuilder",
    "Step",
    "Settings",
    "Run",
    "Attended",
]
