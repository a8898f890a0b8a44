"""tome-paper, the released TCA code's ToMe baseline: the paper's GMACs, and an independent
re-computation of its forward (open_clip's own attention weights as the metric, no proportional
attention)."""

from __future__ import annotations

import pytest
import torch

import tca
from tca import condense
from tca.config import CondenseConfig, plan_layers
from tca.flops import Geometry, macs_for

B16 = Geometry.from_name("ViT-B-16-quickgelu")


@pytest.mark.parametrize("keep_rate, paper", [(0.9, 15.31), (0.7, 11.45)])
def test_gmacs_match_the_paper(keep_rate, paper):
    report = macs_for(B16, CondenseConfig(method="tome-paper", keep_rate=keep_rate))
    assert abs(report.gmacs / paper - 1) < 0.005
    # the same r = int(N (1 - R)) schedule as tome, only at the condensing blocks
    s = plan_layers(CondenseConfig(method="tome-paper", keep_rate=keep_rate), 197, 12)
    t = plan_layers(CondenseConfig(method="tome", keep_rate=keep_rate), 197, 12)
    assert s.tokens == t.tokens
    assert [i for i, p in enumerate(s.plans) if p] == [3, 6, 9]


def test_gmacs_exact_figures():
    assert macs_for(B16, CondenseConfig(method="tome-paper", keep_rate=0.9)).gmacs == pytest.approx(
        15.272058592, abs=1e-9
    )
    assert macs_for(B16, CondenseConfig(method="tome-paper", keep_rate=0.7)).gmacs == pytest.approx(
        11.424066984, abs=1e-9
    )


def test_attention_rows_metric():
    probs = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[0.1, 0.9], [0.6, 0.4]]]])  # (1, 2, 2, 2)
    torch.testing.assert_close(
        condense.attention_rows_metric(probs), torch.tensor([[[0.3, 0.7], [0.4, 0.6]]])
    )


def _block_input(model, x, index):
    seen = {}
    block = model.visual.transformer.resblocks[index]
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    try:
        tca.encode(model, x, CondenseConfig(method="none"))
    finally:
        handle.remove()
    return seen["x"]


def _merge_block(block, x, size, r):
    """One released-ToMe block by hand: open_clip's attention (its head-averaged weights are the
    metric), bipartite matching, size-weighted average, MLP."""
    y = block.ln_1(x)
    out, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
    x = x + block.ls_1(out)
    dest, n_out = condense.bipartite_soft_matching(weights, r)
    x, size = condense.merge_weighted(x, size, dest, n_out)
    return x + block.ls_2(block.mlp(block.ln_2(x))), size


def test_forward_equals_a_hand_computation(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    visual = model.visual
    blocks = visual.transformer.resblocks
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    config = CondenseConfig(method="tome-paper", keep_rate=0.7, layers=(9, 11))
    with torch.inference_mode():
        got = tca.encode(model, x, config)
        h = _block_input(model, x, 9)
        size = h.new_ones(h.shape[:2])
        h, size = _merge_block(blocks[9], h, size, condense.tome_r(197, 0.7))
        h = blocks[10](h)  # open_clip's own block: no proportional attention after merging
        h, size = _merge_block(blocks[11], h, size, condense.tome_r(h.shape[1], 0.7))
        want = visual.ln_post(h[:, 0]) @ visual.proj
        tome = tca.encode(model, x, config.with_(method="tome")).features
    assert got.tokens_per_layer[9:] == [138, 138, 97]
    torch.testing.assert_close(got.features, want, atol=1e-5, rtol=1e-5)
    assert (tome - want).abs().max() > 1e-3  # the real ToMe (keys, proportional attention) differs
    assert torch.allclose(size.sum(1), torch.full((2,), 197.0))


def test_trace_shows_merges(tiny_clip):
    model = tiny_clip.model
    tca.patch(model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        enc = tca.encode(model, x, CondenseConfig(method="tome-paper", keep_rate=0.7), trace=True)
    counts = enc.trace.fate_counts(3)
    r = condense.tome_r(197, 0.7)
    # r A-tokens merge into at least one and at most r B-tokens; nothing is pruned
    assert counts["pruned"] == 0 and r + 1 <= counts["merged"] <= 2 * r
    assert enc.trace.tokens_per_layer[3] == 197 - condense.tome_r(197, 0.7)
