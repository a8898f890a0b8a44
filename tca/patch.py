"""Patching an open_clip ViT in place (the open_clip plumbing).

``patch(model, config)`` swaps the classes of ``model.visual`` and its residual blocks for
subclasses that condense between the attention residual and the MLP (weights untouched, CLS kept
at index 0); ``unpatch(model)`` swaps them back. All blocks share one :class:`_Shared` object.
Per-call options (another config, domain anchors, tracing, recording CLS tokens) go through
:func:`encode`, which holds the model's lock for the call, so concurrent users never see each
other's anchors or traces. Plain ``model.encode_image`` runs condensed with the patched config.

Only condensing blocks (and, once ToMe has merged, blocks needing proportional attention) take
the explicit path; every other block runs open_clip's own fused forward unchanged.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from . import condense
from .config import CondenseConfig, Schedule, plan_layers
from .errors import ConfigError, UnsupportedModelError
from .trace import Trace, TraceRecorder


@dataclass
class Encoded:
    """Output of :func:`encode`.

    features: (B, E) image embeddings (not normalised, like ``encode_image``).
    tokens_per_layer: token count at every block output (with per-image counts, i.e. ATS in a
    batch: the padded width, the largest count).
    tokens_per_image: (B, L) each image's own token count at every block output; FLOPs per image
    come from these (``Schedule.realised``).
    cls_tokens: (B, L, D) float32 raw residual-stream CLS after every block, if recorded.
    trace: the one-pass trace, if requested. anchors_used: whether domain anchors were prepended.
    """

    features: torch.Tensor
    tokens_per_layer: list[int]
    schedule: Schedule
    cls_tokens: torch.Tensor | None = None
    trace: Trace | None = None
    anchors_used: bool = False
    tokens_per_image: list[list[int]] = field(default_factory=list)


class _Run:
    """State of one vision forward: plan, anchors, ToMe sizes, trace and CLS recorders."""

    def __init__(self, schedule: Schedule, config: CondenseConfig, anchors: torch.Tensor | None,
                 trace: bool, record_cls: bool, explicit: bool) -> None:
        self.schedule = schedule
        self.config = config
        self.anchors = anchors  # (C, L, D): class anchors per layer, or None
        self.want_trace = trace
        self.record_cls = record_cls
        self.explicit = explicit  # full softmax(QK^T)V everywhere (FLOP counting, tests)
        self.size: torch.Tensor | None = None  # ToMe token sizes (proportional attention)
        self.merge_size: torch.Tensor | None = None  # tome-paper sizes (weighted average only)
        # ATS: (B, N) bool, False for padding once images keep different numbers of tokens; every
        # later attention masks the padded keys, so each image computes what it would alone.
        self.valid: torch.Tensor | None = None
        self.recorder: TraceRecorder | None = None
        self.counts: list[int] = []
        self.image_counts: dict[int, torch.Tensor] = {}  # block -> (B,), where counts vary
        self.cls: list[torch.Tensor] = []

    def tokens_per_image(self, batch: int) -> list[list[int]]:
        """(B, L) token counts: the padded width wherever every image has the same count."""
        rows = [self.image_counts[i].tolist() if i in self.image_counts else [n] * batch
                for i, n in enumerate(self.counts)]
        return [list(r) for r in zip(*rows)] if rows else [[] for _ in range(batch)]


class _Shared:
    def __init__(self, config: CondenseConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.call: dict | None = None  # options of the encode() call in progress
        self.run: _Run | None = None
        self.last: _Run | None = None


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
    _schedule(visual, config)  # validate layers / K against this model now
    if is_patched(model):
        visual._tca.config = config
        return model
    shared = _Shared(config)
    visual._tca = shared
    visual._tca_original_class = visual.__class__
    visual.__class__ = _subclass(visual.__class__, CondensingVisionTransformer)
    for i, block in enumerate(visual.transformer.resblocks):
        block._tca = shared
        block._tca_index = i
        block._tca_original_class = block.__class__
        block.__class__ = _subclass(block.__class__, CondensingBlock)
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Restore the original classes; the model then behaves exactly as before patching."""
    visual = getattr(model, "visual", model)
    if not hasattr(visual, "_tca"):
        return model
    for block in visual.transformer.resblocks:
        block.__class__ = block._tca_original_class
        del block._tca, block._tca_index, block._tca_original_class
    visual.__class__ = visual._tca_original_class
    del visual._tca, visual._tca_original_class
    return model


_SUBCLASSES: dict[tuple[type, type], type] = {}


def _subclass(base: type, mixin: type) -> type:
    """A class deriving from both ``mixin`` and ``base`` (cached; works for subclasses of
    open_clip's blocks too)."""
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{mixin.__name__}[{base.__name__}]", (mixin, base), {})
    return _SUBCLASSES[key]


def _schedule(visual: VisionTransformer, config: CondenseConfig, anchors: bool = False) -> Schedule:
    grid = visual.grid_size
    return plan_layers(config, grid[0] * grid[1] + 1, len(visual.transformer.resblocks), anchors)


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
    visual = getattr(model, "visual", model)
    if not hasattr(visual, "_tca"):
        raise ValueError("model is not patched: call tca.patch(model) first")
    shared: _Shared = visual._tca
    with shared.lock:
        shared.call = dict(config=config or shared.config, anchors=anchors, trace=trace,
                           record_cls=record_cls, explicit=explicit_attention)
        try:
            features = model.encode_image(images) if hasattr(model, "encode_image") else model(images)
            run = shared.last
        finally:
            shared.call = None
            shared.last = None
    out = Encoded(features, run.counts, run.schedule, anchors_used=run.anchors is not None,
                  tokens_per_image=run.tokens_per_image(images.shape[0]))
    if record_cls:
        out.cls_tokens = torch.stack(run.cls, dim=1)
    if trace:
        out.trace = run.recorder.finish(run.counts, tuple(visual.grid_size),
                                        tuple(i for i, p in enumerate(run.schedule.plans) if p),
                                        out.tokens_per_image if run.image_counts else None)
    return out


class CondensingVisionTransformer(VisionTransformer):
    """Sets up the per-forward :class:`_Run` around open_clip's own forward."""

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        shared: _Shared = self._tca
        with shared.lock:
            call = shared.call or dict(config=shared.config, anchors=None, trace=False,
                                       record_cls=False, explicit=False)
            config = call["config"]
            anchors = call["anchors"] if config.method == "tca" else None
            run = _Run(_schedule(self, config, anchors is not None), config, anchors,
                       call["trace"], call["record_cls"], call["explicit"])
            if run.want_trace:
                grid = self.grid_size
                run.recorder = TraceRecorder(x.shape[0], grid[0] * grid[1], x.device)
            shared.run = run
            try:
                return super().forward(x)
            finally:
                shared.run = None
                shared.last = run


class CondensingBlock(ResidualAttentionBlock):
    """open_clip's block with an optional condensation step between attention and MLP."""

    def forward(self, q_x: torch.Tensor, k_x=None, v_x=None, attn_mask=None):  # type: ignore[override]
        run: _Run | None = self._tca.run
        if run is None:  # e.g. a text tower block or a direct call outside encode
            return super().forward(q_x, k_x, v_x, attn_mask)
        plan = run.schedule.plans[self._tca_index]
        if plan is None and run.size is None and run.valid is None and not run.explicit:
            x = super().forward(q_x, k_x, v_x, attn_mask)
        else:
            x = self._condensing_forward(q_x, run, plan)
        if run.valid is not None:
            run.image_counts[len(run.counts)] = run.valid.sum(dim=1).cpu()
        run.counts.append(x.shape[1])
        if run.record_cls:
            run.cls.append(x[:, 0].float())
        if run.recorder is not None:
            run.recorder.end_block()
        return x

    def _condensing_forward(self, x: torch.Tensor, run: _Run, plan) -> torch.Tensor:
        layer = self._tca_index
        anchor = None
        if run.anchors is not None and plan is not None and plan.kind == "tiers" and layer > 0:
            anchor = select_anchor(run.anchors[:, layer - 1], x[:, 0])
        bias = run.size.log()[:, None, None, :] if run.size is not None else None
        if run.valid is not None:  # never with sizes or anchors: ATS only
            bias = padding_bias(run.valid, x.dtype)
        seq = x if anchor is None else torch.cat([anchor.unsqueeze(1).to(x.dtype), x], dim=1)
        if bias is not None and anchor is not None:  # never both: anchors are TCA, sizes ToMe
            bias = F.pad(bias, (1, 0))
        kind = plan.kind if plan is not None else None
        att = attend(self, seq, bias, cls_index=1 if anchor is not None else 0,
                     need_cls_row=kind in ("tiers", "ats"), need_keys=kind == "tome",
                     explicit=run.explicit, need_probs=kind == "tome-paper",
                     need_value_norm=kind == "ats")
        out, cls_row = att.out, att.cls_row
        if anchor is not None:
            out, cls_row = out[:, 1:], cls_row[..., 1:]  # drop the anchor's row and column
        x = x + self.ls_1(out)
        if plan is not None:
            x = self._condense(x, run, plan, layer, cls_row, att)
        return x + self.ls_2(self.mlp(self.ln_2(x)))

    def _condense(self, x, run: _Run, plan, layer, cls_row, att: "Attended") -> torch.Tensor:
        if plan.kind == "ats":
            return self._sample(x, run, plan, layer, cls_row, att.value_norm)
        keys = att.keys
        if plan.kind == "tome-paper":
            # The released baseline: attention-row metric, sizes only weight the average.
            size = run.merge_size if run.merge_size is not None else x.new_ones(x.shape[:2])
            c = condense.tome_merge(x, size, condense.attention_rows_metric(att.probs), plan.r)
            run.merge_size = c.size
            attn_mean = None
        elif plan.kind == "tome":
            size = run.size if run.size is not None else x.new_ones(x.shape[:2])
            c = condense.tome_merge(x, size, keys, plan.r)
            run.size = c.size
            attn_mean = None
        else:
            patch_attn = cls_row[..., 1:]  # (B, h, P): CLS -> patches, not renormalised
            attn_mean = condense.head_mean_score(patch_attn)
            rank = run.config.method == "tca" and run.config.score == "rank"  # EViT: always mean
            select = condense.head_rank_score(patch_attn) if rank else attn_mean
            c = condense.prune_merge_fuse(x, select, attn_mean, plan.t1, plan.t2, plan.k)
        if c.x.shape[1] != plan.n_out:
            raise RuntimeError(f"layer {layer}: {c.x.shape[1]} tokens, planned {plan.n_out}")
        if run.recorder is not None:
            run.recorder.condense(layer, c.dest, c.pruned, attn_mean)
        return c.x

    def _sample(self, x, run: _Run, plan, layer, cls_row, value_norm) -> torch.Tensor:
        """ATS: keep at most ceil(R P_b) patches of each image, sampled from its score CDF."""
        valid = run.valid
        score = condense.ats_score(cls_row, value_norm, valid)
        n_patches = (valid.sum(dim=1) - 1) if valid is not None else \
            torch.full((x.shape[0],), x.shape[1] - 1, device=x.device)
        budget = condense.ats_budget(n_patches, run.config.keep_rate)
        keep = condense.unique_indices(condense.inverse_cdf_sample(score, budget), x.shape[1] - 1)
        c = condense.keep_patches(x, keep, valid)
        if c.x.shape[1] > plan.n_out:
            raise RuntimeError(f"layer {layer}: {c.x.shape[1]} tokens, budget {plan.n_out}")
        # Padding only where counts differ; a batch of equal counts stays on the fused path.
        run.valid = None if bool(c.valid.all()) else c.valid
        if run.recorder is not None:
            attn_mean = condense.head_mean_score(cls_row[..., 1:])
            run.recorder.condense(layer, c.dest, c.pruned, attn_mean)
        return c.x


def select_anchor(class_anchors: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """The domain anchor of the class whose anchor is most cosine-similar to each image's CLS.

    class_anchors: (C, D) at the previous block's output; cls: (B, D). Returns (B, D).
    """
    class_anchors = class_anchors.to(device=cls.device, dtype=cls.dtype)
    best = (F.normalize(cls, dim=-1) @ F.normalize(class_anchors, dim=-1).T).argmax(dim=-1)
    return class_anchors[best]


def padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention logits (B, 1, 1, N) that hide padding keys: 0 for real tokens, -inf
    for padding. valid: (B, N) bool (CLS, always real, keeps every softmax row finite)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(
        ~valid, float("-inf"))[:, None, None, :]


class Attended(NamedTuple):
    """What :func:`attend` returns; the optional parts only when asked for."""

    out: torch.Tensor  # (B, N, D) before ls_1
    cls_row: torch.Tensor | None  # (B, h, N) CLS attention probabilities
    keys: torch.Tensor | None  # (B, N, d_h) head-mean keys (ToMe's metric)
    probs: torch.Tensor | None = None  # (B, h, N, N) attention probabilities (tome-paper)
    value_norm: torch.Tensor | None = None  # (B, h, N) per-head value norms (ATS)


def attend(block: ResidualAttentionBlock, x: torch.Tensor, bias: torch.Tensor | None = None,
           cls_index: int = 0, need_cls_row: bool = False, need_keys: bool = False,
           explicit: bool = False, need_probs: bool = False,
           need_value_norm: bool = False) -> Attended:
    """The block's attention on ``x`` (B, N, D) with its own weights, before ``ls_1``.

    bias: additive logits (B, 1, 1, N), e.g. log token sizes (ToMe's proportional attention) or
    the padding mask (ATS). Returns :class:`Attended` (it unpacks as out, cls_row, keys, ...).
    Uses the fused scaled_dot_product_attention unless ``explicit`` or ``need_probs``; the CLS
    row then costs one extra (1 x N) product per head instead of materialising N x N
    probabilities.
    """
    attn = block.attn
    b, n, d = x.shape
    h = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
    cls_row = probs = None
    if explicit or need_probs:
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
    return Attended(o, cls_row, k.mean(dim=1) if need_keys else None,
                    probs if need_probs else None,
                    v.norm(dim=-1) if need_value_norm else None)


__all__ = ["patch", "unpatch", "encode", "is_patched", "check_supported", "Encoded",
           "UnsupportedModelError", "ConfigError", "attend", "select_anchor"]
