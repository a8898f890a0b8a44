"""Invariants of the one-pass trace, over many settings on a real (tiny) open_clip ViT."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tca
from tca import condense
from tca.config import CondenseConfig, plan_layers
from tca.trace import KEPT, MERGED, PRUNED, TraceRecorder
from tests.test_reference import reference_encode

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


def _plannable(config: CondenseConfig) -> bool:
    try:
        plan_layers(config, 197, 12)
    except tca.ConfigError:
        return False
    return True


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=configs)
def test_trace_invariants(tiny_clip, config):
    model = tiny_clip.model
    tca.patch(model)
    assume(_plannable(config))  # e.g. K larger than tier 2 is refused before running
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        enc = tca.encode(model, x, config, trace=True)
    assert list(enc.trace.tokens_per_layer) == enc.tokens_per_layer
    for image in range(2):
        _check(enc.trace, config, image)


def test_tca_tier_counts_at_first_condensing_layer(b16_clip):
    tca.patch(b16_clip.model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        enc = tca.encode(b16_clip.model, x, CondenseConfig(keep_rate=0.7), trace=True)
        _, ref_tokens = reference_encode(b16_clip.model, x, CondenseConfig(keep_rate=0.7))
    t1, t2, t3 = condense.tca_tier_sizes(197, 0.1)  # 137 / 40 / 19
    assert (t1, t2, t3) == (137, 40, 19)
    counts = enc.trace.fate_counts(3)
    assert counts["pruned"] == t3
    # the whole trace equals the independent re-computation, patch by patch, layer by layer
    assert torch.equal(enc.trace.token_index, ref_tokens)
    # tier 2 goes into K=2 clusters (a singleton cluster would stay "kept"); for this seed both
    # hold several patches: tokens 138 and 139 right after CLS + 137 kept
    assert counts == {"kept": t1, "merged": t2, "pruned": t3}
    tokens = ref_tokens[0, 3]
    sizes = {tok: int((tokens == tok).sum()) for tok in (138, 139)}
    assert sum(sizes.values()) == t2 and min(sizes.values()) >= 2
    assert {tok: len(g) for tok, g in enc.trace.groups(3).items()} == sizes
    assert [enc.trace.fate_counts(l)["kept"] for l in range(3)] == [196] * 3
    d = enc.trace.to_dict()
    assert len(d["layers"]) == 12 and d["layers"][3]["condensing"]
    assert d["layers"][3]["fates"] == counts


def test_trace_cls_attention_is_the_score_that_ranked_tier_one(b16_clip):
    tca.patch(b16_clip.model)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        enc = tca.encode(
            b16_clip.model, x, CondenseConfig(method="evit", keep_rate=0.7), trace=True
        )
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


def _hand_trace() -> tca.Trace:
    """Two images, 6 patches (grid 2 x 3), 4 blocks; blocks 1 and 3 condense.

    Block 1, image 0: patches 0 and 3 kept (tokens 1, 2), patches 1, 2 merged (token 3),
    patches 4, 5 fused (token 4). Image 1: patches 1, 2 kept, 3, 4 merged, 0 and 5 fused.
    Block 3 merges tokens 1 and 2 of image 0 and tokens 1 and 3 of image 1 (no pruning), so
    image 1's fused token moves on with its patches still PRUNED.
    """
    rec = TraceRecorder(2, 6, torch.device("cpu"))
    rec.end_block()  # block 0: plain
    dest1 = torch.tensor([[0, 1, 3, 3, 2, 4, 4], [0, 4, 1, 2, 3, 3, 4]])
    pruned1 = torch.tensor([[0, 0, 0, 0, 0, 1, 1], [0, 1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    att1 = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    rec.condense(1, dest1, pruned1, att1)
    rec.end_block()
    rec.end_block()  # block 2: plain
    dest3 = torch.tensor([[0, 1, 1, 2, 3], [0, 1, 2, 1, 3]])
    att3 = torch.tensor([[0.7, 0.8, 0.9, 1.0], [0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    rec.condense(3, dest3, None, att3)
    rec.end_block()
    return rec.finish([7, 5, 5, 4], (2, 3), (1, 3))


def test_trace_recorder_composes_dest_maps_exactly():
    t = _hand_trace()
    assert t.depth == 4 and t.grid == (2, 3) and t.condensing_layers == (1, 3)
    assert t.token_index.tolist() == [
        [[1, 2, 3, 4, 5, 6], [1, 3, 3, 2, 4, 4], [1, 3, 3, 2, 4, 4], [1, 2, 2, 1, 3, 3]],
        [[1, 2, 3, 4, 5, 6], [4, 1, 2, 3, 3, 4], [4, 1, 2, 3, 3, 4], [3, 1, 2, 1, 1, 3]],
    ]
    K, M, P = KEPT, MERGED, PRUNED
    assert t.fate.dtype == torch.uint8
    assert t.fate.tolist() == [
        [[K] * 6, [K, M, M, K, P, P], [K, M, M, K, P, P], [M, M, M, M, P, P]],
        [[K] * 6, [P, K, K, M, M, P], [P, K, K, M, M, P], [P, M, K, M, M, P]],
    ]
    # each patch gets the CLS attention of the token holding it when the layer decided
    assert t.cls_attention[1].dtype == torch.float32
    torch.testing.assert_close(
        t.cls_attention[1],
        torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]]),
    )
    torch.testing.assert_close(
        t.cls_attention[3],
        torch.tensor([[0.7, 0.9, 0.9, 0.8, 1.0, 1.0], [0.1, 0.4, 0.3, 0.2, 0.2, 0.1]]),
    )
    assert sorted(t.cls_attention) == [1, 3]


def test_trace_views_groups_source_counts_and_dict():
    t = _hand_trace()
    assert t.groups(0) == {} and t.groups(1) == {3: [1, 2]}
    assert t.groups(3) == {1: [0, 3], 2: [1, 2]} and t.groups(3, image=1) == {1: [1, 3, 4]}
    assert t.source(1).int().tolist() == [
        [0] * 6,
        [1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    assert t.source(3, image=1).int().tolist() == [
        [0] * 6,
        [0, 1, 0, 1, 1, 0],
        [0, 0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 1],
    ]
    assert t.fate_counts(1) == {"kept": 2, "merged": 2, "pruned": 2}
    assert t.fate_counts(3, image=1) == {"kept": 1, "merged": 3, "pruned": 2}
    one = t.select(1)
    assert one.token_index.shape == (1, 4, 6) and one.fate_counts(1) == t.fate_counts(1, image=1)
    assert torch.equal(one.cls_attention[3], t.cls_attention[3][1:])
    assert (one.grid, one.tokens_per_layer, one.condensing_layers) == ((2, 3), (7, 5, 5, 4), (1, 3))
    d = t.to_dict(image=1)
    assert d["grid"] == [2, 3] and d["fate_codes"] == {"kept": 0, "merged": 1, "pruned": 2}
    assert [layer["condensing"] for layer in d["layers"]] == [False, True, False, True]
    assert d["layers"][1] == {
        "layer": 1,
        "tokens": 5,
        "fates": {"kept": 2, "merged": 2, "pruned": 2},
        "fate": [2, 0, 0, 1, 1, 2],
        "token_index": [4, 1, 2, 3, 3, 4],
        "condensing": True,
    }


def test_trace_select_first_image_and_dict_of_second():
    t = _hand_trace()
    assert t.source(1).dtype == torch.bool
    first = t.select(0)
    assert first.fate.shape == (1, 4, 6) and torch.equal(first.token_index[0], t.token_index[0])
    assert first.cls_attention[1].shape == (1, 6)
    assert t.to_dict(image=1)["layers"][3]["fates"] == {"kept": 1, "merged": 3, "pruned": 2}


def _ats_trace_without_cls() -> tca.Trace:
    """Two images, 4 patches (grid 2 x 2), no CLS token (prefix 0), 2 blocks, both condensing,
    with per-image token counts and a dropped patch (ATS-style, dest -1).

    Block 0, image 0: patches 0, 1 -> token 0, patch 2 -> token 1, patch 3 dropped (pruned);
    image 1: patches 0, 1 alone (tokens 0, 1), patches 2, 3 -> token 2. Block 1 (widths padded to
    3): image 0 swaps its two tokens, image 1 merges tokens 0, 1 -> 0 and moves token 2 -> 1.
    """
    rec = TraceRecorder(2, 4, torch.device("cpu"), prefix=0)
    dest0 = torch.tensor([[0, 0, 1, -1], [0, 1, 2, 2]])
    pruned0 = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    rec.condense(0, dest0, pruned0, torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]))
    rec.end_block()
    dest1 = torch.tensor([[1, 0, -1], [0, 0, 1]])
    rec.condense(1, dest1, None, torch.tensor([[0.9, 0.8, float("nan")], [0.3, 0.2, 0.1]]))
    rec.end_block()
    return rec.finish([3, 2], (2, 2), (0, 1), tokens_per_image=[[2, 2], [3, 2]])


def test_trace_without_cls_token_and_with_dropped_patches_exactly():
    t = _ats_trace_without_cls()
    assert t.prefix == 0 and t.tokens_per_layer == (3, 2)
    assert t.tokens_per_image == ((2, 2), (3, 2))
    assert t.tokens() == (2, 2) and t.tokens(1) == (3, 2)  # image 0 by default
    # token 0 holds patches (no CLS): an index of 0 is a real token, -1 a dropped patch
    assert t.token_index.tolist() == [[[0, 0, 1, -1], [1, 1, 0, -1]], [[0, 1, 2, 2], [0, 0, 1, 1]]]
    K, M, P = KEPT, MERGED, PRUNED
    assert t.fate.tolist() == [[[M, M, K, P], [M, M, K, P]], [[K, K, M, M], [M, M, M, M]]]
    torch.testing.assert_close(
        t.cls_attention[0], torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    )
    # block 1: each live patch gets its token's value; the dropped patch gets NaN
    torch.testing.assert_close(
        t.cls_attention[1],
        torch.tensor([[0.9, 0.9, 0.8, float("nan")], [0.3, 0.2, 0.1, 0.1]]),
        equal_nan=True,
    )
    assert t.source(0).int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]  # patch 3: no token
    assert t.source(1, image=1).int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert t.groups(1) == {1: [0, 1]} and t.groups(0, image=1) == {2: [2, 3]}


def test_select_keeps_prefix_and_per_image_counts():
    t = _ats_trace_without_cls()
    one = t.select(1)
    assert one.prefix == 0 and one.tokens_per_layer == (3, 2)
    assert one.tokens_per_image == ((3, 2),) and one.tokens() == (3, 2)
    assert one.token_index.tolist() == [[[0, 1, 2, 2], [0, 0, 1, 1]]]
    assert t.select(0).tokens_per_image == ((2, 2),)
    # a trace with equal counts stays without per-image counts
    plain = _hand_trace().select(1)
    assert plain.tokens_per_image is None and plain.prefix == 1


def test_recorder_state_lives_on_the_given_device():
    rec = TraceRecorder(2, 3, torch.device("meta"))
    assert rec.token_of.device.type == "meta" and rec.pruned.device.type == "meta"
    assert rec.token_of.shape == rec.pruned.shape == (2, 3) and rec.pruned.dtype == torch.bool
