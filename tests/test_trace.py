"""Invariants of the one-pass trace, over many settings on a real (tiny) open_clip ViT."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import tca
from tca import condense
from tca.config import CondenseConfig
from tca.trace import KEPT, MERGED, PRUNED

configs = st.builds(
    CondenseConfig,
    method=st.sampled_from(["tca", "evit", "tome"]),
    keep_rate=st.sampled_from([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
    layers=st.sampled_from([(3, 6, 9), (1, 2, 3), (0, 5, 10, 11), (4,)]),
    merge_centers=st.sampled_from([1, 2, 3]),
    score=st.sampled_from(["mean", "rank"]),
)


def _check(trace: tca.Trace, config: CondenseConfig, image: int) -> None:
    depth, p = trace.token_index.shape[1:]
    assert trace.grid == (14, 14) and p == 196 and depth == 12
    assert (trace.fate <= PRUNED).all()  # exactly one fate per patch per layer, by construction
    first = min(config.layers)
    for l in range(depth):
        idx, fate = trace.token_index[image, l], trace.fate[image, l]
        n = trace.tokens_per_layer[l]
        # every non-CLS token holds at least one patch, and no patch sits in CLS
        assert idx.min() >= 1 and idx.max() <= n - 1
        assert len(set(idx.tolist())) == n - 1
        # the source matrix is a partition of the patches
        assert (trace.source(l, image).sum(0) == 1).all()
        # groups partition the merged patches
        groups = trace.groups(l, image)
        merged = sorted(i for g in groups.values() for i in g)
        assert merged == sorted(torch.nonzero(fate == MERGED).flatten().tolist())
        # every group's token holds several patches; its visible (non-pruned) members can be a
        # single patch when the token also absorbed earlier-fused patches (e.g. merged into the
        # previous layer's fused token)
        holds = torch.bincount(idx, minlength=n)
        assert all(holds[tok] >= 2 for tok in groups)
        assert all(len(g) >= 2 or (fate[idx == tok] == PRUNED).any() for tok, g in groups.items())
        # kept patches sit alone in their token
        kept = torch.nonzero(fate == KEPT).flatten()
        assert len(set(idx[kept].tolist())) == len(kept)
        if l < first:
            assert (fate == KEPT).all()
        if l > 0:  # pruned is final
            assert not ((trace.fate[image, l - 1] == PRUNED) & (fate != PRUNED)).any()
    if config.method == "evit":
        assert not (trace.fate == MERGED).any()
    if config.method == "tome":
        assert not (trace.fate == PRUNED).any()
    for layer, att in trace.cls_attention.items():
        assert layer in config.layers and att.shape[-1] == p
        assert torch.isfinite(att).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs)
def test_trace_invariants(tiny_clip, config):
    model = tiny_clip.model
    tca.patch(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    try:
        with torch.inference_mode():
            enc = tca.encode(model, x, config, trace=True)
    except tca.ConfigError:
        return  # e.g. K larger than tier 2: refused before running
    assert list(enc.trace.tokens_per_layer) == enc.tokens_per_layer
    for image in range(2):
        _check(enc.trace, config, image)


def test_tca_tier_counts_at_first_condensing_layer(b16_clip):
    tca.patch(b16_clip.model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        enc = tca.encode(b16_clip.model, x, CondenseConfig(keep_rate=0.7), trace=True)
    t1, t2, t3 = condense.tca_tier_sizes(197, 0.1)  # 137 / 40 / 19
    counts = enc.trace.fate_counts(3)
    assert counts["pruned"] == t3
    # tier 2 goes into K=2 groups; a singleton cluster would stay "kept"
    assert counts["merged"] + counts["kept"] == t1 + t2
    assert t2 - 1 <= counts["merged"] <= t2
    assert len(enc.trace.groups(3)) in (1, 2)
    assert [enc.trace.fate_counts(l)["kept"] for l in range(3)] == [196] * 3
    d = enc.trace.to_dict()
    assert len(d["layers"]) == 12 and d["layers"][3]["condensing"]
    assert d["layers"][3]["fates"] == counts


def test_trace_cls_attention_is_the_score_that_ranked_tier_one(b16_clip):
    tca.patch(b16_clip.model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        enc = tca.encode(b16_clip.model, x, CondenseConfig(method="evit", keep_rate=0.7), trace=True)
    att = enc.trace.cls_attention[3][0]
    kept = enc.trace.fate[0, 3] == KEPT
    # EViT keeps exactly the top-attended patches
    assert att[kept].min() >= att[~kept].max()
    assert 0 < att.sum() <= 1.0 + 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_trace_select_keeps_one_image(tiny_clip, batch):
    tca.patch(tiny_clip.model)
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        enc = tca.encode(tiny_clip.model, x, CondenseConfig(keep_rate=0.7), trace=True)
    one = enc.trace.select(batch - 1)
    assert one.fate.shape[0] == 1
    assert torch.equal(one.fate[0], enc.trace.fate[batch - 1])
