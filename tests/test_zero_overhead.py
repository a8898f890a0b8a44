"""The zero-overhead limit (tca.zero_overhead): the tower's own blocks on a schedule's token counts,
tokens sliced at the condensing blocks, no scoring. Its token counts must be exactly the
method's, and its outputs exactly those of the unmodified blocks on sliced tokens, written here
from open_clip's and timm's modules without tca's code."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from timm.models.vision_transformer import Block

import tca
from tca.config import CondenseConfig
from tca.methods import METHODS
from tca.patch import schedule_for
from tca.precision import cast
from tca.towers import tower_for
from tca.zero_overhead import sliced_forward

TINY = "tca-tiny-ViT"
TIMM = "tca-tiny-timm-token"
CONDENSING = [name for name, m in METHODS.items() if m.plan is not None]
CONFIGS = [CondenseConfig(method=m, keep_rate=r) for m in CONDENSING for r in (0.7, 0.5)]
CONFIGS += [CondenseConfig(keep_rate=0.5, layers=(0, 1, 2, 5, 11)), CondenseConfig(method="none")]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def models():
    return {name: tca.load_model(name, pretrained="none", seed=0) for name in (TINY, TIMM)}


def _open_clip_reference(visual, images, plans):
    """open_clip's own modules, called directly: ResidualAttentionBlock.forward for plain blocks;
    at a condensing block its LayerNorm, nn.MultiheadAttention (need_weights=False, the fused
    path), layer scale and MLP, with the tokens sliced to the first n_out in between."""
    x = visual._embeds(images)
    for block, plan in zip(visual.transformer.resblocks, plans):
        if plan is None:
            x = ResidualAttentionBlock.forward(block, x)
            continue
        y = block.ln_1(x)
        x = x + block.ls_1(block.attn(y, y, y, need_weights=False)[0])
        x = x[:, : plan.n_out]
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return visual.ln_post(x[:, 0]) @ visual.proj


def _timm_reference(visual, images, plans):
    trunk = visual.trunk
    x = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(images)))
    for block, plan in zip(trunk.blocks, plans):
        if plan is None:
            x = Block.forward(block, x)
            continue
        x = x + block.ls1(block.attn(block.norm1(x)))
        x = x[:, : plan.n_out]
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return visual.head(trunk.forward_head(trunk.norm(x)))


REFERENCES = {TINY: _open_clip_reference, TIMM: _timm_reference}


@pytest.mark.parametrize("name", [TINY, TIMM])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe())
def test_limit_counts_are_the_schedule_and_outputs_the_unmodified_blocks(models, name, config):
    clip = models[name]
    visual = clip.model.visual
    tower = tower_for(visual)
    schedule = schedule_for(visual, config, tower=tower)
    x = _images(3, seed=1)  # batch > 1: the slice is a strided view
    with torch.inference_mode():
        got, counts = sliced_forward(visual, x, schedule, tower)
        want = REFERENCES[name](visual, x, schedule.plans)
        tca.patch(clip.model)
        method = tca.encode(clip.model, x, config)
        tca.unpatch(clip.model)
    assert counts == list(schedule.tokens)
    if not schedule.adaptive:  # ATS: the schedule's counts are its budget, an upper bound
        assert counts == method.tokens_per_layer
    else:
        assert all(a >= b for a, b in zip(counts, method.tokens_per_layer))
    assert got.shape == method.features.shape
    assert torch.equal(got, want)


def test_limit_without_condensing_is_the_unpatched_tower(models):
    clip = models[TINY]
    visual = clip.model.visual
    schedule = schedule_for(visual, CondenseConfig(method="none"), tower=tower_for(visual))
    x = _images(2, seed=2)
    with torch.inference_mode():
        got, counts = sliced_forward(visual, x, schedule, tower_for(visual))
        assert torch.equal(got, clip.model.encode_image(x))
    assert counts == [197] * 12


@pytest.mark.parametrize("name", [TINY, TIMM])
def test_split_block_is_the_block_itself(models, name):
    """own_attention + attn_residual + mlp_residual is the block's forward, bit for bit."""
    visual = models[name].model.visual
    tower = tower_for(visual)
    x = torch.randn(2, 197, visual.trunk.embed_dim if name == TIMM else visual.transformer.width)
    with torch.inference_mode():
        for block in tower.blocks(visual):
            split = tower.mlp_residual(
                block, tower.attn_residual(block, x, tower.own_attention(block, x))
            )
            assert torch.equal(split, block(x))
            x = block(x)


def test_limit_in_bf16_follows_the_mixed_precision_model(models):
    clip = cast(models[TINY], "bf16")
    visual = clip.model.visual
    config = CondenseConfig(keep_rate=0.7)
    schedule = schedule_for(visual, config, tower=tower_for(visual))
    x = _images(2, seed=3)
    with torch.inference_mode():
        got, counts = sliced_forward(visual, x, schedule, tower_for(visual))
        want = _open_clip_reference(visual, x.to(torch.bfloat16), schedule.plans)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    assert counts == list(schedule.tokens)
