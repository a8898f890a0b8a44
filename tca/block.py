"""One transformer block computed from its weights, with a condensing step inside.

:func:`condensing_block` runs the block's attention itself (:func:`attend`), adds the attention
residual, condenses the tokens as the block's plan says (the step for each plan kind is in
:data:`CONDENSERS`), then runs the MLP residual. A :class:`RunState` carries everything one
forward reads (it is built by ``tca.patch.encode``, never stored on the model). Towers of
other families plug in through the adapters of ``tca.towers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

from . import condense
from .config import AtsPlan, CondenseConfig, LayerPlan, Schedule, TierPlan, TomePaperPlan, TomePlan
from .towers import OpenClipViT, Tower
from .trace import TraceRecorder


@dataclass(frozen=True)
class RunState:
    """Everything one vision forward reads; built by the caller, never stored on the model.

    tower: the adapter of the tower family (``tca.towers``).
    anchors: (C, L, D) class anchors per layer (TCA's domain anchors), or None.
    recorder: the trace recorder of this forward (it accumulates the trace), or None.
    record_cls: also return the CLS token after every block (the reservoir's keys).
    explicit: full softmax(QK^T)V in every block (FLOP counters, tests).
    """

    tower: type[Tower]
    config: CondenseConfig
    schedule: Schedule
    anchors: torch.Tensor | None = None
    recorder: TraceRecorder | None = None
    record_cls: bool = False
    explicit: bool = False
    generator: torch.Generator | None = None  # TCA's random first coreset centres, if seeded


class Attended(NamedTuple):
    """Result of :func:`attend`.

    out: (B, N, D) attention output after the output projection, before layer scale.
    cls_row: (B, h, N) per-head attention probabilities of the CLS query, if asked for.
    keys: (B, N, d_h) head-mean keys (ToMe's similarity metric), if asked for.
    """

    out: torch.Tensor
    cls_row: torch.Tensor | None
    keys: torch.Tensor | None
    probs: torch.Tensor | None = None  # (B, h, N, N) attention probabilities (tome-paper)
    value_norm: torch.Tensor | None = None  # (B, h, N) per-head value norms (ATS)


def condensing_block(
    visual: Any,
    block: Any,
    layer: int,
    x: torch.Tensor,
    size: torch.Tensor | None,
    plan: LayerPlan | None,
    run: RunState,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The block computed from its weights, with ``plan``'s condensing step between the
    attention residual and the MLP. x: (B, N, D); size: (B, N) ToMe token sizes or None (they
    bias the attention for ``tome`` only); valid: (B, N) bool ATS padding mask or None (padding
    keys are masked, so each image computes what it would alone).
    Returns (x (B, n_out, D), size, valid); n_out is ``plan.n_out``, or at most that for ATS."""
    tower = run.tower
    by_cls = tower.signal(visual) == "cls"
    needs_row = plan is not None and plan.needs_row
    anchor = None
    if run.anchors is not None and needs_row and layer > 0:
        anchor = select_anchor(run.anchors[:, layer - 1], tower.pooled_token(visual, x))
    bias = (
        size.log()[:, None, None, :] if size is not None and run.config.method == "tome" else None
    )
    if valid is not None:  # never with sizes or anchors: ATS only
        bias = padding_bias(valid, x.dtype)
    seq = x if anchor is None else torch.cat([anchor.unsqueeze(1).to(x.dtype), x], dim=1)
    if bias is not None and anchor is not None:  # never both: anchors are TCA, sizes ToMe
        bias = F.pad(bias, (1, 0))
    att = attend(
        block,
        seq,
        bias,
        cls_index=1 if anchor is not None else 0,
        need_cls_row=needs_row and by_cls,
        need_keys=plan is not None and plan.needs_keys,
        explicit=run.explicit,
        tower=tower,
        need_probs=isinstance(plan, TomePaperPlan),
        need_value_norm=isinstance(plan, AtsPlan),
    )
    out, cls_row = att.out, att.cls_row
    if anchor is not None:
        out = out[:, 1:]  # drop the anchor's row
    x = tower.attn_residual(block, x, out)
    if needs_row and not by_cls:
        # The pool's query over the condensing tokens (and the anchor, as CLS sees it).
        pooled_seq = x if anchor is None else torch.cat([anchor.unsqueeze(1).to(x.dtype), x], dim=1)
        cls_row = tower.pool_row(visual, pooled_seq)
    if anchor is not None and cls_row is not None:
        cls_row = cls_row[..., 1:]  # drop the anchor's column, not renormalised
    if plan is not None:
        c, attn_mean = CONDENSERS[plan.kind](
            x, size, plan, att._replace(out=out, cls_row=cls_row), run, valid
        )
        if c.x.shape[1] > plan.n_out or (c.valid is None and c.x.shape[1] != plan.n_out):
            raise RuntimeError(f"layer {layer}: {c.x.shape[1]} tokens, planned {plan.n_out}")
        if run.recorder is not None:
            run.recorder.condense(layer, c.dest, c.pruned, attn_mean)
        x, size = c.x, c.size if c.size is not None else size
        if c.valid is not None:  # padding only while the counts differ
            valid = None if bool(c.valid.all()) else c.valid
    return tower.mlp_residual(block, x), size, valid


# A condensing step: (x after the attention residual (B, N, D), ToMe sizes or None, the plan,
# the block's attention, the run, the ATS padding mask or None) -> (Condensed, head-mean CLS
# attention over patches (B, P) for the trace, or None).
# Typed with `...`: each step takes its own plan type (TierPlan, TomePlan, ...), chosen by plan.kind.
Condenser = Callable[..., "tuple[condense.Condensed, torch.Tensor | None]"]


def _condense_tiers(x, size, plan: TierPlan, att: Attended, run: RunState, valid=None):
    assert att.cls_row is not None  # a CLS or pool-query row for every TierPlan
    patch_attn = att.cls_row[..., plan.prefix :]  # (B, h, P): CLS -> patches, not renormalised
    attn_mean = condense.head_mean_score(patch_attn)
    rank = run.config.method == "tca" and run.config.score == "rank"  # EViT: always mean
    select = condense.head_rank_score(patch_attn) if rank else attn_mean
    c = condense.prune_merge_fuse(
        x, select, attn_mean, plan.t1, plan.t2, plan.k, plan.prefix, run.generator
    )
    return c, attn_mean


def _condense_tome(x, size, plan: TomePlan, att: Attended, run: RunState, valid=None):
    size = size if size is not None else x.new_ones(x.shape[:2])
    assert att.keys is not None  # attend(need_keys=True) for every TomePlan
    return condense.tome_merge(x, size, att.keys, plan.r, plan.prefix), None


def _condense_tome_paper(x, size, plan: TomePaperPlan, att: Attended, run: RunState, valid=None):
    """The released baseline: head-mean attention rows as the metric; the sizes weight the
    average but never the attention."""
    size = size if size is not None else x.new_ones(x.shape[:2])
    assert att.probs is not None  # attend(need_probs=True) for every TomePaperPlan
    metric = condense.attention_rows_metric(att.probs.float())
    return condense.tome_merge(x, size, metric, plan.r, plan.prefix), None


def _condense_ats(x, size, plan: AtsPlan, att: Attended, run: RunState, valid=None):
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
    return condense.keep_patches(x, keep, valid), condense.head_mean_score(att.cls_row[..., 1:])


# Plan kind -> condensing step. A new method adds its plan type in config.py (kind, and what it
# needs from the attention: needs_row / needs_keys) and its step here.
CONDENSERS: dict[str, Condenser] = {
    TierPlan.kind: _condense_tiers,
    TomePlan.kind: _condense_tome,
    TomePaperPlan.kind: _condense_tome_paper,
    AtsPlan.kind: _condense_ats,
}


def select_anchor(class_anchors: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """The domain anchor of the class whose anchor is most cosine-similar to each image's CLS.

    class_anchors: (C, D) at the previous block's output; cls: (B, D). Returns (B, D).
    """
    class_anchors = class_anchors.to(device=cls.device, dtype=torch.float32)
    best = (F.normalize(cls.float(), dim=-1) @ F.normalize(class_anchors, dim=-1).T).argmax(dim=-1)
    return class_anchors[best].to(cls.dtype)


def padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention logits (B, 1, 1, N) that hide padding keys: 0 for real tokens, -inf
    for padding. valid: (B, N) bool (CLS, always real, keeps every softmax row finite)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(
        ~valid, float("-inf")
    )[:, None, None, :]


def attend(
    block: Any,
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    cls_index: int = 0,
    need_cls_row: bool = False,
    need_keys: bool = False,
    explicit: bool = False,
    tower: type[Tower] = OpenClipViT,
    need_probs: bool = False,
    need_value_norm: bool = False,
) -> Attended:
    """The block's attention on ``x`` (B, N, D) with its own weights, before layer scale.

    bias: additive logits (B, 1, 1, N), e.g. log token sizes (ToMe's proportional attention) or
    the padding mask (ATS). Uses the fused scaled_dot_product_attention unless ``explicit`` or
    ``need_probs`` (the full probabilities, for tome-paper's metric); the CLS row then costs one
    extra (1 x N) product per head instead of materialising N x N probabilities.
    """
    q, k, v = tower.qkv(block, x)
    cls_row = probs = None
    if explicit or need_probs:
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=-1)
        o = probs @ v
        if need_cls_row:
            cls_row = probs[:, :, cls_index].float()
    else:
        if bias is not None:
            bias = bias.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        if need_cls_row:
            cls_row = condense.cls_attention_row(q, k, cls_index, bias)
    return Attended(
        tower.attn_out(block, o),
        cls_row,
        k.mean(dim=1) if need_keys else None,
        probs if need_probs else None,
        v.norm(dim=-1) if need_value_norm else None,
    )


__all__ = [
    "RunState",
    "Attended",
    "CONDENSERS",
    "Condenser",
    "attend",
    "condensing_block",
    "padding_bias",
    "select_anchor",
]
