""" "Why this patch?": the ranking of each condensing block, its cut-offs from the plan, and what
the trace says happened, on a real (tiny, random) open_clip ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tca
from tca.config import CondenseConfig
from tca.trace import KEPT, MERGED, PRUNED, Trace
from tca.why import (
    FUSE,
    KEEP,
    MERGE,
    entering_tokens,
    outcomes,
    patch_place,
    ranking,
    score_grid,
    token_scores,
)


def _run(clip, cfg: CondenseConfig, seed: int = 0, batch: int = 1):
    model = clip.model
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    tca.patch(model, CondenseConfig(method="none"))
    try:
        with torch.no_grad():
            return tca.encode(model, images, cfg, trace=True)
    finally:
        tca.unpatch(model)


@pytest.mark.parametrize("method", ["tca", "evit"])
@pytest.mark.parametrize("keep_rate", [0.5, 0.7])
def test_plan_tiers_are_what_the_trace_did(tiny_clip, method, keep_rate):
    """Ranked by the recorded score, the top t1 tokens are kept, the next t2 merged, the rest
    fused: exactly the plan, token by token, at every condensing block."""
    enc = _run(tiny_clip, CondenseConfig(method=method, keep_rate=keep_rate, merge_centers=3))
    trace, schedule = enc.trace, enc.schedule
    for layer in trace.condensing_layers:
        plan = schedule.plans[layer]
        r = ranking(trace, layer, plan)
        assert r.exact and r.tiers == (plan.t1, plan.t2, plan.t3)
        assert r.scores.shape == (plan.n_in - plan.prefix,)
        planned = [r.planned(t) for t in range(r.scores.shape[0])]
        assert planned.count(KEEP) == plan.t1 and planned.count(FUSE) == plan.t3
        for t, (want, got) in enumerate(zip(planned, r.outcome)):
            if want == MERGE:  # a coreset centre nobody joined stays a token of its own
                assert got in (MERGE, KEEP), (layer, t)
            elif want == FUSE and plan.t3 == 1:  # one token fused alone is still one token
                assert got in (FUSE, KEEP), (layer, t)
            else:
                assert got == want, (layer, t)
        merged_alone = [
            t for t in range(len(planned)) if planned[t] == MERGE and r.outcome[t] == KEEP
        ]
        assert len(merged_alone) + sum(o == MERGE for o in r.outcome) >= min(plan.t2, 1)
        # the cut-offs separate the tiers' scores
        ranked = r.scores[r.order]
        if plan.t2:
            assert ranked[plan.t1] <= r.cuts[0] <= ranked[plan.t1 - 1]
        assert len(r.cuts) == (plan.t2 > 0) + (plan.t3 > 0)


def test_cut_offs_by_hand():
    """Four patch tokens with scores 0.4, 0.1, 0.3, 0.2 and tiers (1, 2, 1): keep token 0, merge
    2 and 3, fuse 1; the cut-offs are the midpoints 0.35 and 0.15."""
    from tca.plans import TierPlan

    p = 4
    att = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    # after the block: CLS 0, kept token 1 (patch 0), coreset token 2 (patches 2, 3), fused 3
    index = torch.tensor([[[1, 2, 3, 4], [1, 3, 2, 2]]])
    fate = torch.tensor([[[KEPT] * 4, [KEPT, PRUNED, MERGED, MERGED]]], dtype=torch.uint8)
    trace = Trace((5, 4), (2, 2), index, fate, {1: att}, (1,))
    plan = TierPlan(5, 4, 1, 2, 1, 1)
    r = ranking(trace, 1, plan)
    assert r.order.tolist() == [0, 2, 3, 1]
    assert r.cuts == pytest.approx((0.35, 0.15))
    assert r.outcome == (KEEP, FUSE, MERGE, MERGE)
    assert [r.planned(t) for t in range(p)] == [KEEP, FUSE, MERGE, MERGE]
    place = patch_place(r, trace, 3)
    assert (place.token, place.rank, place.n, place.planned, place.outcome) == (
        3,
        3,
        4,
        MERGE,
        MERGE,
    )
    assert place.score == pytest.approx(0.2)
    with pytest.raises(ValueError, match="the plan ranks 5 tokens, the trace has 4"):
        ranking(trace, 1, TierPlan(6, 4, 2, 2, 1, 1))


def test_later_blocks_rank_tokens_not_patches(tiny_clip):
    """At the second condensing block every token (a group or the fused token too) is ranked
    once: the entering tokens are the trace's tokens after the block before."""
    enc = _run(tiny_clip, CondenseConfig(method="tca", keep_rate=0.5, layers=(2, 5)))
    trace = enc.trace
    tok = entering_tokens(trace, 5)
    assert set(tok.tolist()) == set(range(trace.tokens()[4] - trace.prefix))
    scores = token_scores(trace, 5)
    # every patch of a token carries its token's score
    per_patch = trace.cls_attention[5][0].numpy()
    assert np.allclose(per_patch, scores[tok])
    assert score_grid(trace, 5).shape == trace.grid
    with pytest.raises(ValueError, match="block 4 recorded no score"):
        token_scores(trace, 4)


def test_ats_outcomes_come_from_the_trace(tiny_clip):
    enc = _run(tiny_clip, CondenseConfig(method="ats", keep_rate=0.5))
    trace = enc.trace
    layer = trace.condensing_layers[0]
    r = ranking(trace, layer, enc.schedule.plans[layer])
    assert r.tiers is None and r.cuts == ()
    kept = trace.tokens()[layer] - 1
    assert r.outcome.count(KEEP) == kept and r.outcome.count("dropped") == r.scores.shape[0] - kept
    assert outcomes(trace, layer) == r.outcome


def test_rank_score_is_recorded_and_ranks_exactly(tiny_clip):
    """With score=rank the trace records the cross-head rank TCA ranked by (not the head-mean
    attention), so the plan's tiers over it are exactly what the block did."""
    from tca.why import why_patch

    cfg = CondenseConfig(method="tca", keep_rate=0.7, score="rank", merge_centers=3)
    enc = _run(tiny_clip, cfg)
    trace = enc.trace
    layer = trace.condensing_layers[0]
    plan = enc.schedule.plans[layer]
    r = ranking(trace, layer, plan, by_rank=True)
    assert r.exact
    # the first condensing block: tokens are the patches, so the score is the rank score itself
    assert not torch.equal(trace.scores[layer], trace.cls_attention[layer])
    planned = [r.planned(t) for t in range(r.scores.shape[0])]
    assert [t for t, p in enumerate(planned) if p == KEEP] == [
        t for t, o in enumerate(r.outcome) if o == KEEP
    ]
    assert [t for t, p in enumerate(planned) if p == FUSE] == [
        t for t, o in enumerate(r.outcome) if o == FUSE
    ]
    rankings, _ = why_patch(trace, cfg, 0)
    assert rankings[0].score_name == "cross-head rank of CLS attention (1 = first in every head)"


def test_why_patch_uses_the_plans_the_forward_made(tiny_clip):
    from tca.why import why_patch

    cfg = CondenseConfig(method="tca", keep_rate=0.7)
    enc = _run(tiny_clip, cfg)
    rankings, places = why_patch(enc.trace, cfg, 40)
    assert [r.layer for r in rankings] == [3, 6, 9]
    assert [r.tiers for r in rankings] == [
        (enc.schedule.plans[l].t1, enc.schedule.plans[l].t2, enc.schedule.plans[l].t3)
        for l in (3, 6, 9)
    ]
    assert all(p is not None and p.outcome == r.outcome[p.token] for r, p in zip(rankings, places))
    assert why_patch(enc.trace, cfg, None)[1] == [None, None, None]
    assert {r.score_name for r in rankings} == {"CLS attention (mean over heads)"}
    tome = CondenseConfig(method="tome", keep_rate=0.7)
    rankings, places = why_patch(_run(tiny_clip, tome).trace, tome, 40)
    assert [r.layer for r in rankings] == [3, 6, 9] and all(r.tiers is None for r in rankings)
    assert {r.score_name for r in rankings} == {"best key similarity to the other set (cosine)"}
