"""Patching a CLIP vision tower in place (the open_clip plumbing).

``patch(model, config)`` swaps the class of ``model.visual`` for a subclass whose forward runs
the tower block by block, condensing between the attention residual and the MLP of the planned
blocks (weights untouched); ``unpatch(model)`` swaps it back. The blocks themselves are not
touched: plain blocks are called as they are, condensing blocks are computed from their weights.

State flows one way. :func:`encode` builds a :class:`RunState` for one forward (config, token
schedule with its typed plans, domain anchors, trace recorder, whether to record CLS tokens and
whether to use explicit attention), passes it to :func:`forward`, and gets a :class:`Forward`
back (features, token counts, CLS tokens). Nothing is parked on the model between or during
calls, so concurrent callers never see each other's anchors or traces. Plain
``model.encode_image`` builds a default RunState from the patched config.

Only condensing blocks (and, once ToMe has merged, blocks needing proportional attention) take
the explicit path; every other block runs the tower's own fused forward unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from . import condense
from .config import CondenseConfig, LayerPlan, Schedule, TierPlan, TomePlan, plan_layers
from .errors import ConfigError, UnsupportedModelError
from .trace import Trace, TraceRecorder


@dataclass
class Encoded:
    """Output of :func:`encode`.

    features: (B, E) image embeddings (not normalised, like ``encode_image``).
    tokens_per_layer: token count at every block output.
    cls_tokens: (B, L, D) float32 raw residual-stream CLS after every block, if recorded.
    trace: the one-pass trace, if requested. anchors_used: whether domain anchors were prepended.
    """

    features: torch.Tensor
    tokens_per_layer: list[int]
    schedule: Schedule
    cls_tokens: torch.Tensor | None = None
    trace: Trace | None = None
    anchors_used: bool = False


@dataclass(frozen=True)
class RunState:
    """Everything one vision forward reads; built by the caller, never stored on the model.

    anchors: (C, L, D) class anchors per layer (TCA's domain anchors), or None.
    recorder: the trace recorder of this forward (it accumulates the trace), or None.
    record_cls: also return the CLS token after every block (the reservoir's keys).
    explicit: full softmax(QK^T)V in every block (FLOP counters, tests).
    """

    config: CondenseConfig
    schedule: Schedule
    anchors: torch.Tensor | None = None
    recorder: TraceRecorder | None = None
    record_cls: bool = False
    explicit: bool = False


@dataclass
class Forward:
    """What one vision forward returns. cls_tokens: per block (B, D) float32, if recorded."""

    features: Any  # (B, E); (pooled, tokens) when the tower has output_tokens
    tokens_per_layer: list[int]
    cls_tokens: list[torch.Tensor] = field(default_factory=list)


class Attended(NamedTuple):
    """Result of :func:`attend`.

    out: (B, N, D) attention output after the output projection, before layer scale.
    cls_row: (B, h, N) per-head attention probabilities of the CLS query, if asked for.
    keys: (B, N, d_h) head-mean keys (ToMe's similarity metric), if asked for.
    """

    out: torch.Tensor
    cls_row: torch.Tensor | None
    keys: torch.Tensor | None


class _Patched:
    """What ``patch`` leaves on the tower: the config plain ``encode_image`` uses."""

    def __init__(self, config: CondenseConfig) -> None:
        self.config = config


def check_supported(model: torch.nn.Module) -> VisionTransformer:
    """The model's ViT, or UnsupportedModelError naming what is missing."""
    visual = getattr(model, "visual", model)
    if not isinstance(visual, VisionTransformer):
        kind = type(visual).__name__
        raise UnsupportedModelError(
            f"{kind} vision tower is not supported: condensation needs an open_clip "
            f"VisionTransformer with a CLS token (SigLIP/timm towers and ResNets have none)")
    if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError(
            f"this ViT pools with {visual.pool_type!r}/attention pooling instead of its CLS token; "
            f"condensation ranks patches by CLS attention and needs pool_type='tok'")
    blocks = visual.transformer.resblocks
    if not all(isinstance(b, ResidualAttentionBlock) for b in blocks):
        raise UnsupportedModelError("only open_clip ResidualAttentionBlock towers are supported "
                                    "(qk-norm / custom-attention blocks are not)")
    if not getattr(visual.transformer, "batch_first", True):
        raise UnsupportedModelError("open_clip >= 2.26 (batch-first transformer) is required")
    return visual


def is_patched(model: torch.nn.Module) -> bool:
    return hasattr(getattr(model, "visual", model), "_tca")


def patch(model: torch.nn.Module, config: CondenseConfig | None = None, **settings) -> torch.nn.Module:
    """Make ``model.encode_image`` run condensed. Settings as in :class:`CondenseConfig`
    (``method``, ``keep_rate``, ``rate``, ``layers``, ``merge_centers``, ``score``).
    Patching an already patched model only replaces its config. Returns the model."""
    config = config.with_(**settings) if config is not None else CondenseConfig(**settings)
    visual = check_supported(model)
    schedule_for(visual, config)  # validate layers / K against this model now
    if is_patched(model):
        visual._tca.config = config
        return model
    visual._tca = _Patched(config)
    visual._tca_original_class = visual.__class__
    visual.__class__ = _subclass(visual.__class__, CondensingVisionTransformer)
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Restore the original class; the model then behaves exactly as before patching."""
    visual = getattr(model, "visual", model)
    if not hasattr(visual, "_tca"):
        return model
    visual.__class__ = visual._tca_original_class
    del visual._tca, visual._tca_original_class
    return model


_SUBCLASSES: dict[tuple[type, type], type] = {}


def _subclass(base: type, mixin: type) -> type:
    """A class deriving from both ``mixin`` and ``base`` (cached; works for subclasses of
    open_clip's classes too)."""
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{mixin.__name__}[{base.__name__}]", (mixin, base), {})
    return _SUBCLASSES[key]


def schedule_for(visual: VisionTransformer, config: CondenseConfig, anchors: bool = False) -> Schedule:
    """The token schedule of ``config`` on this tower (ConfigError if it does not fit)."""
    grid = visual.grid_size
    return plan_layers(config, grid[0] * grid[1] + 1, len(visual.transformer.resblocks), anchors)


def run_state(visual: VisionTransformer, images: torch.Tensor, config: CondenseConfig,
              anchors: torch.Tensor | None = None, trace: bool = False, record_cls: bool = False,
              explicit: bool = False) -> RunState:
    """The :class:`RunState` of one forward of ``images`` (B, 3, H, W). Anchors only guide
    ``tca``; other methods run without them."""
    anchors = anchors if config.method == "tca" else None
    recorder = None
    if trace:
        grid = visual.grid_size
        recorder = TraceRecorder(images.shape[0], grid[0] * grid[1], images.device)
    return RunState(config, schedule_for(visual, config, anchors is not None), anchors, recorder,
                    record_cls, explicit)


def encode(model: torch.nn.Module, images: torch.Tensor, config: CondenseConfig | None = None,
           anchors: torch.Tensor | None = None, trace: bool = False, record_cls: bool = False,
           explicit_attention: bool = False) -> Encoded:
    """Encode ``images`` (B, 3, H, W) with a patched model, in one forward pass.

    config: overrides the patched config for this call only.
    anchors: (C, L, D) class anchors (TCA's domain anchors, see ``tca.reservoir``); used by
    ``tca`` at condensing layers > 0.
    trace: also return the per-layer :class:`Trace`. record_cls: also return the CLS token after
    every block (the reservoir's keys). explicit_attention: compute softmax(QK^T)V with plain
    matmuls in condensing paths (for FLOP counters).
    """
    visual: Any = getattr(model, "visual", model)  # a patched VisionTransformer
    if not hasattr(visual, "_tca"):
        raise ValueError("model is not patched: call tca.patch(model) first")
    run = run_state(visual, images, config or visual._tca.config, anchors, trace, record_cls,
                    explicit_attention)
    result = forward(visual, images, run)
    out = Encoded(result.features, result.tokens_per_layer, run.schedule,
                  anchors_used=run.anchors is not None)
    if record_cls:
        out.cls_tokens = torch.stack(result.cls_tokens, dim=1)
    if run.recorder is not None:
        out.trace = run.recorder.finish(result.tokens_per_layer, tuple(visual.grid_size),
                                        tuple(i for i, p in enumerate(run.schedule.plans) if p))
    return out


def forward(visual: VisionTransformer, images: torch.Tensor, run: RunState) -> Forward:
    """One vision forward of ``images`` following ``run``: open_clip's ``VisionTransformer.forward``
    (embed, blocks, pool, project) with the planned blocks condensing."""
    x = visual._embeds(images)
    size: torch.Tensor | None = None  # (B, N) patches per token, once ToMe has merged
    counts: list[int] = []
    cls_tokens: list[torch.Tensor] = []
    for layer, block in enumerate(visual.transformer.resblocks):
        plan = run.schedule.plans[layer]
        if plan is None and size is None and not run.explicit:
            x = block(x)
        else:
            x, size = condensing_block(block, layer, x, size, plan, run)
        counts.append(x.shape[1])
        if run.record_cls:
            cls_tokens.append(x[:, 0].float())
        if run.recorder is not None:
            run.recorder.end_block()
    pooled, tokens = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    features = (pooled, tokens) if visual.output_tokens else pooled
    return Forward(features, counts, cls_tokens)


class CondensingVisionTransformer(VisionTransformer):
    """open_clip's ViT whose plain forward condenses with the patched config."""

    def forward(self, x: torch.Tensor):
        return forward(self, x, run_state(self, x, self._tca.config)).features


def condensing_block(block: ResidualAttentionBlock, layer: int, x: torch.Tensor,
                     size: torch.Tensor | None, plan: LayerPlan | None,
                     run: RunState) -> tuple[torch.Tensor, torch.Tensor | None]:
    """open_clip's block computed from its weights, with ``plan``'s condensing step between the
    attention residual and the MLP. x: (B, N, D); size: (B, N) ToMe token sizes or None.
    Returns (x (B, plan.n_out, D), size)."""
    anchor = None
    if run.anchors is not None and isinstance(plan, TierPlan) and layer > 0:
        anchor = select_anchor(run.anchors[:, layer - 1], x[:, 0])
    bias = size.log()[:, None, None, :] if size is not None else None
    seq = x if anchor is None else torch.cat([anchor.unsqueeze(1).to(x.dtype), x], dim=1)
    if bias is not None and anchor is not None:  # never both: anchors are TCA, sizes ToMe
        bias = F.pad(bias, (1, 0))
    att = attend(block, seq, bias, cls_index=1 if anchor is not None else 0,
                 need_cls_row=isinstance(plan, TierPlan), need_keys=isinstance(plan, TomePlan),
                 explicit=run.explicit)
    out, cls_row = att.out, att.cls_row
    if anchor is not None and cls_row is not None:  # (always: anchors go with TierPlan)
        out, cls_row = out[:, 1:], cls_row[..., 1:]  # drop the anchor's row and column
    x = x + block.ls_1(out)
    if plan is not None:
        c, attn_mean = CONDENSERS[plan.kind](x, size, plan, Attended(out, cls_row, att.keys), run)
        if c.x.shape[1] != plan.n_out:
            raise RuntimeError(f"layer {layer}: {c.x.shape[1]} tokens, planned {plan.n_out}")
        if run.recorder is not None:
            run.recorder.condense(layer, c.dest, c.pruned, attn_mean)
        x, size = c.x, c.size if c.size is not None else size
    return x + block.ls_2(block.mlp(block.ln_2(x))), size


# A condensing step: (x after the attention residual (B, N, D), ToMe sizes or None, the plan,
# the block's attention, the run) -> (Condensed, head-mean CLS attention over patches (B, P) for
# the trace, or None).
# Typed with `...`: each step takes its own plan type (TierPlan, TomePlan), chosen by plan.kind.
Condenser = Callable[..., "tuple[condense.Condensed, torch.Tensor | None]"]


def _condense_tiers(x, size, plan: TierPlan, att: Attended, run: RunState):
    assert att.cls_row is not None  # attend(need_cls_row=True) for every TierPlan
    patch_attn = att.cls_row[..., 1:]  # (B, h, P): CLS -> patches, not renormalised
    attn_mean = condense.head_mean_score(patch_attn)
    rank = run.config.method == "tca" and run.config.score == "rank"  # EViT: always mean
    select = condense.head_rank_score(patch_attn) if rank else attn_mean
    return condense.prune_merge_fuse(x, select, attn_mean, plan.t1, plan.t2, plan.k), attn_mean


def _condense_tome(x, size, plan: TomePlan, att: Attended, run: RunState):
    size = size if size is not None else x.new_ones(x.shape[:2])
    assert att.keys is not None  # attend(need_keys=True) for every TomePlan
    return condense.tome_merge(x, size, att.keys, plan.r), None


# Plan kind -> condensing step. A new method adds its plan type in config.py and a step here.
CONDENSERS: dict[str, Condenser] = {TierPlan.kind: _condense_tiers, TomePlan.kind: _condense_tome}


def select_anchor(class_anchors: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """The domain anchor of the class whose anchor is most cosine-similar to each image's CLS.

    class_anchors: (C, D) at the previous block's output; cls: (B, D). Returns (B, D).
    """
    class_anchors = class_anchors.to(device=cls.device, dtype=cls.dtype)
    best = (F.normalize(cls, dim=-1) @ F.normalize(class_anchors, dim=-1).T).argmax(dim=-1)
    return class_anchors[best]


def attend(block: ResidualAttentionBlock, x: torch.Tensor, bias: torch.Tensor | None = None,
           cls_index: int = 0, need_cls_row: bool = False, need_keys: bool = False,
           explicit: bool = False) -> Attended:
    """The block's attention on ``x`` (B, N, D) with its own weights, before ``ls_1``.

    bias: additive logits (B, 1, 1, N), e.g. log token sizes (ToMe's proportional attention).
    Uses the fused scaled_dot_product_attention unless ``explicit``; the CLS row then costs one
    extra (1 x N) product per head instead of materialising N x N probabilities.
    """
    attn = block.attn
    b, n, d = x.shape
    h = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
    cls_row = None
    if explicit:
        logits = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=-1)
        o = probs @ v
        if need_cls_row:
            cls_row = probs[:, :, cls_index]
    else:
        if bias is not None:
            bias = bias.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        if need_cls_row:
            cls_row = condense.cls_attention_row(q, k, cls_index, bias)
    o = attn.out_proj(o.transpose(1, 2).reshape(b, n, d))
    return Attended(o, cls_row, k.mean(dim=1) if need_keys else None)


__all__ = ["patch", "unpatch", "encode", "forward", "is_patched", "check_supported", "Encoded",
           "RunState", "Forward", "Attended", "CONDENSERS", "UnsupportedModelError",
           "ConfigError", "attend", "select_anchor"]
