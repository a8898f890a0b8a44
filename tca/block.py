"""One transformer block computed from its weights, with a condensing step inside.

:func:`condensing_block` runs the block's attention itself (:func:`attend`), adds the attention
residual, condenses the tokens as the block's plan says (with the step of the run's method,
``tca.methods``), then runs the MLP residual. A :class:`RunState` carries everything one
forward reads (it is built by ``tca.patch.encode``, never stored on the model). Towers of
other families plug in through the adapters of ``tca.towers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import beyond, condense
from .config import CondenseConfig, Schedule
from .methods import Attended, Method, method
from .plans import LayerPlan
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

    @property
    def method(self) -> Method:
        return method(self.config.method)


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
    bias = size.log()[:, None, None, :] if size is not None and run.method.proportional else None
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
        need_probs=plan is not None and plan.needs_probs,
        need_value_norm=plan is not None and plan.needs_value_norm,
    )
    out, cls_row = att.out, att.cls_row
    if anchor is not None:
        out = out[:, 1:]  # drop the anchor's row
    before, x = x, tower.attn_residual(block, x, out)
    shift = beyond.representation_shift(before, x) if plan and plan.needs_shift else None
    if needs_row and not by_cls:
        # The pool's query over the condensing tokens (and the anchor, as CLS sees it).
        pooled_seq = x if anchor is None else torch.cat([anchor.unsqueeze(1).to(x.dtype), x], dim=1)
        cls_row = tower.pool_row(visual, pooled_seq)
    if anchor is not None and cls_row is not None:
        cls_row = cls_row[..., 1:]  # drop the anchor's column, not renormalised
    if plan is not None:
        step = run.method.step
        assert step is not None  # a method without a step plans no block
        att = att._replace(out=out, cls_row=cls_row, shift=shift)
        c, attn_mean = step(x, size, plan, att, run, valid)
        if c.x.shape[1] > plan.n_out or (c.valid is None and c.x.shape[1] != plan.n_out):
            raise RuntimeError(f"layer {layer}: {c.x.shape[1]} tokens, planned {plan.n_out}")
        if run.recorder is not None:
            run.recorder.condense(layer, c.dest, c.pruned, attn_mean, c.score)
        x, size = c.x, c.size if c.size is not None else size
        if c.valid is not None:  # padding only while the counts differ
            valid = None if bool(c.valid.all()) else c.valid
    return tower.mlp_residual(block, x), size, valid


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
    "attend",
    "condensing_block",
    "padding_bias",
    "select_anchor",
]
