"""The patched forward against an explicit re-computation, block by block.

The reference below never calls tca's attention code: it runs open_clip's own blocks, takes the
full per-head attention probabilities from torch's ``nn.MultiheadAttention`` (need_weights) over
the sequence the block sees ([anchor; tokens] where a domain anchor is prepended), reads the CLS
row by hand and hands the scores to the (separately tested) tier function. Any slip in which row
or column is read, which score ranks and which weights fuse, shows up as different features and
different token indices.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

import tca
from tca import condense
from tca.config import CondenseConfig, plan_layers
from tca.plans import TierPlan


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _anchor_for(class_anchors: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Per image, the class anchor (C, D) with the highest cosine similarity to its CLS (B, D)."""
    sim = F.cosine_similarity(cls[:, None, :], class_anchors[None, :, :], dim=-1)  # (B, C)
    return class_anchors[sim.argmax(dim=1)]


def reference_encode(
    model, images: torch.Tensor, config: CondenseConfig, anchors: torch.Tensor | None = None
):
    """Features (B, E) and, per block, the token each original patch sits in (B, L, P)."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    x = visual._embeds(images)
    b, n, _ = x.shape
    plans = plan_layers(config, n, len(blocks), anchors is not None).plans
    token_of = torch.arange(1, n, device=x.device).expand(b, n - 1)
    per_layer = []
    for i, block in enumerate(blocks):
        plan = plans[i]
        if plan is None:
            x = ResidualAttentionBlock.forward(block, x)  # open_clip's own block
        else:
            assert isinstance(plan, TierPlan) and plan.kind == "tiers"
            anchor = None
            if anchors is not None and config.method == "tca" and i > 0:
                anchor = _anchor_for(anchors[:, i - 1], x[:, 0])
            seq = x if anchor is None else torch.cat([anchor[:, None, :], x], dim=1)
            c = 0 if anchor is None else 1  # where CLS sits in seq
            y = block.ln_1(seq)
            out, probs = block.attn(y, y, y, need_weights=True, average_attn_weights=False)
            x = x + block.ls_1(out[:, c:])  # the anchor's own output row is dropped
            patch_attn = probs[
                :, :, c, c + 1 :
            ]  # CLS query -> patch keys; anchor and CLS columns out
            mean = patch_attn.mean(dim=1)
            rank = config.method == "tca" and config.score == "rank"
            select = condense.head_rank_score(patch_attn) if rank else mean
            cond = condense.prune_merge_fuse(x, select, mean, plan.t1, plan.t2, plan.k)
            x = cond.x
            token_of = cond.dest.gather(1, token_of)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        per_layer.append(token_of)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj, torch.stack(per_layer, dim=1)


def _check_against_reference(model, x, config, anchors=None):
    with torch.inference_mode():
        enc = tca.encode(model, x, config, anchors=anchors, trace=True)
        ref_features, ref_tokens = reference_encode(model, x, config, anchors)
    assert torch.equal(enc.trace.token_index, ref_tokens)
    torch.testing.assert_close(enc.features, ref_features, rtol=0, atol=2e-5)
    return ref_tokens


@pytest.mark.parametrize(
    "config",
    [
        CondenseConfig(keep_rate=0.7),
        CondenseConfig(keep_rate=0.5, merge_centers=3, layers=(0, 4, 8)),
        CondenseConfig(method="evit", keep_rate=0.7),
        CondenseConfig(method="evit", keep_rate=0.6, score="rank"),  # EViT ignores the rank score
    ],
)
def test_condensed_forward_equals_reference(tiny_clip, config):
    tca.patch(tiny_clip.model)
    _check_against_reference(tiny_clip.model, _images(2, seed=21), config)


def test_rank_score_ranks_but_head_mean_attention_fuses(tiny_clip):
    """score=rank: patches are *ranked* by cross-head rank, and the tier-3 token is still
    Σ s_j x_j with the head-mean attention s_j (fusing with rank scores fails this)."""
    model = tiny_clip.model
    tca.patch(model)
    x = _images(2, seed=22)
    config = CondenseConfig(keep_rate=0.6, score="rank")
    ranked = _check_against_reference(model, x, config)
    # the rank score really chose differently from the mean score here
    with torch.inference_mode():
        _, by_mean = reference_encode(model, x, config.with_(score="mean"))
    assert not torch.equal(ranked[:, 3], by_mean[:, 3])


def test_anchor_guided_condensation_equals_reference(tiny_clip):
    """Domain anchors: attention over [anchor; tokens], the CLS row read at index 1 with the
    anchor's column dropped (not renormalised), anchors of the previous block's output, none at
    block 0."""
    model = tiny_clip.model
    tca.patch(model)
    x = _images(2, seed=23)
    with torch.inference_mode():
        cls = tca.encode(
            model, _images(3, seed=24), CondenseConfig(method="none"), record_cls=True
        ).cls_tokens  # (3, L, D)
    anchors = torch.stack([cls[0], cls[1], -cls[2]])  # (C=3, L, D)
    for config in [
        CondenseConfig(keep_rate=0.7, layers=(0, 3, 6, 9)),
        CondenseConfig(keep_rate=0.6, score="rank"),
    ]:
        guided = _check_against_reference(model, x, config, anchors)
        with torch.inference_mode():
            _, unguided = reference_encode(model, x, config)
        # the anchors changed which patches went where (the check above is not vacuous)
        assert not torch.equal(guided, unguided)
        if 0 in config.layers:  # block 0 has no previous output, hence no anchor
            assert torch.equal(guided[:, 0], unguided[:, 0])
