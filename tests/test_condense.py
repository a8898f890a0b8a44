"""The tensor functions of tca.condense, on hand-made and hypothesis-generated tensors."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from tca import condense


def _tokens(b: int, n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g)


@given(n=st.integers(3, 400), d=st.floats(0.0, 0.333))
def test_tca_tier_sizes_partition_patches(n, d):
    t1, t2, t3 = condense.tca_tier_sizes(n, d)
    assert min(t1, t2, t3) >= 0
    assert t1 + t2 + t3 == n - 1


def test_tca_tier_sizes_match_released_code():
    # ViT-B/16: the released `Ours-0.1` at N=197 keeps 177, m=20 -> tiers 137/40/19
    assert condense.tca_tier_sizes(197, 0.1) == (137, 40, 19)
    assert condense.tca_tier_sizes(197, 0.035) == (176, 14, 6)
    # 0.9 * 140 = 126.00000000000001 must not round up to 127
    assert condense.tca_tier_sizes(141, 0.1) == (96, 30, 14)
    assert condense.tca_tier_sizes(197, 0.0) == (196, 0, 0)


def test_evit_and_tome_budgets():
    assert condense.evit_tier_sizes(197, 0.7) == (138, 0, 58)
    assert condense.evit_tier_sizes(197, 1.0) == (196, 0, 0)
    assert condense.tome_r(197, 0.9) == 19
    assert condense.tome_r(178, 0.9) == 17
    assert condense.tome_r(5, 0.0) == 2  # capped: set A holds 3 tokens, CLS excluded


def test_head_scores():
    attn = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]])  # (1, h=2, P=3)
    torch.testing.assert_close(condense.head_mean_score(attn), torch.tensor([[0.3, 0.25, 0.45]]))
    # ranks: head0 -> [2, 1, 0], head1 -> [0, 1, 2]; mean [1, 1, 1] / 2
    torch.testing.assert_close(condense.head_rank_score(attn), torch.tensor([[0.5, 0.5, 0.5]]))
    # an outlier head cannot lift a patch the other heads rank last
    attn = torch.tensor([[[0.97, 0.01, 0.01, 0.01], [0.1, 0.3, 0.3, 0.3], [0.1, 0.3, 0.3, 0.3]]])
    assert condense.head_mean_score(attn)[0].argmax() == 0
    rank = condense.head_rank_score(attn)[0]
    assert rank[0] < rank[2] and rank[0] < rank[3]


def test_cls_attention_row_matches_full_softmax():
    q, k = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    full = ((q @ k.transpose(-2, -1)) * 4 ** -0.5).softmax(-1)
    torch.testing.assert_close(condense.cls_attention_row(q, k), full[:, :, 0])
    torch.testing.assert_close(condense.cls_attention_row(q, k, cls_index=2), full[:, :, 2])


@settings(max_examples=40, deadline=None)
@given(t=st.integers(2, 30), k=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_k_center_greedy_picks_distinct_farthest_points(t, k, seed):
    k = min(k, t)
    x = _tokens(3, t, 5, seed)
    centres, dist = condense.k_center_greedy(x, k)
    assert centres.shape == (3, k)
    assert (centres[:, 0] == 0).all()  # deterministic first centre: the top-ranked token
    for b in range(3):
        assert len(set(centres[b].tolist())) == k
        if k >= 2:  # the second centre is the token farthest from the first
            assert dist[b, 0, centres[b, 1]] == dist[b, 0].max()


def test_k_center_greedy_with_duplicate_tokens_never_repeats_a_centre():
    x = torch.zeros(1, 6, 4)
    centres, _ = condense.k_center_greedy(x, 3)
    assert len(set(centres[0].tolist())) == 3
    merged, assign = condense.coreset_merge(x, 3)
    assert torch.isfinite(merged).all()
    assert sorted(set(assign[0].tolist())) == [0, 1, 2]


def test_coreset_merge_inverse_distance_weights_by_hand():
    # tokens on a line: centres are 0 (first rule) and 3 (farthest)
    x = torch.tensor([[[0.0], [1.0], [4.0], [10.0]]])
    merged, assign = condense.coreset_merge(x, 2)
    assert assign.tolist() == [[0, 0, 0, 1]]  # 4 is nearer to 0 than to 10
    # cluster 0: centre 0 (w=1), 1 at distance 1 (w=1), 4 at distance 4 (w=1/4)
    torch.testing.assert_close(merged, torch.tensor([[[(0 + 1 + 4 / 4) / 2.25], [10.0]]]))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 60), d=st.floats(0.01, 0.33), k=st.integers(1, 4), seed=st.integers(0, 9999))
def test_prune_merge_fuse_structure(n, d, k, seed):
    t1, t2, t3 = condense.tca_tier_sizes(n, d)
    k = min(k, t2) if t2 else 0
    x = _tokens(2, n, 8, seed)
    score = torch.rand(2, n - 1, generator=torch.Generator().manual_seed(seed))
    out = condense.prune_merge_fuse(x, score, score, t1, t2, k)
    n_out = 1 + t1 + (k if t2 > k else t2) + (1 if t3 else 0)
    assert out.x.shape == (2, n_out, 8)
    torch.testing.assert_close(out.x[:, 0], x[:, 0])  # CLS untouched at index 0
    assert (out.dest[:, 0] == 0).all()
    assert out.dest.min() >= 0 and out.dest.max() == n_out - 1
    order = score.argsort(dim=-1, descending=True, stable=True)
    for b in range(2):
        # every output token receives at least one input token
        assert set(out.dest[b].tolist()) == set(range(n_out))
        # tier 1 is copied verbatim in descending score order
        kept = order[b, :t1] + 1
        torch.testing.assert_close(out.x[b, 1:1 + t1], x[b, kept])
        if t3:
            i3 = order[b, t1 + t2:]
            fused = (x[b, i3 + 1] * score[b, i3, None]).sum(0)
            torch.testing.assert_close(out.x[b, -1], fused)
            assert out.pruned[b].sum() == t3
            assert (out.dest[b][out.pruned[b]] == n_out - 1).all()


def test_evit_is_prune_merge_fuse_without_tier_two():
    x = _tokens(1, 9, 4, 0)
    score = torch.tensor([[0.1, 0.8, 0.05, 0.3, 0.2, 0.0, 0.4, 0.6]])
    out = condense.prune_merge_fuse(x, score, score, 3, 0, 0)
    assert out.x.shape == (1, 5, 4)  # CLS + 3 kept + 1 fused
    torch.testing.assert_close(out.x[0, 1:4], x[0, [2, 8, 7]])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 80), r=st.integers(0, 50), seed=st.integers(0, 9999))
def test_bipartite_matching_and_weighted_merge(n, r, seed):
    x = _tokens(2, n, 6, seed)
    size = torch.rand(2, n, generator=torch.Generator().manual_seed(seed)) + 0.5
    out = condense.tome_merge(x, size, x, r)
    r_eff = min(r, (n + 1) // 2 - 1)
    assert out.x.shape == (2, n - r_eff, 6)
    assert (out.dest[:, 0] == 0).all()  # CLS never merged, stays first
    assert (out.dest == 0).sum(dim=1).tolist() == [1, 1]
    # mass is conserved: sizes add up, and the size-weighted sum of features too
    torch.testing.assert_close(out.size.sum(1), size.sum(1))
    torch.testing.assert_close((out.x * out.size[..., None]).sum(1), (x * size[..., None]).sum(1),
                               rtol=1e-4, atol=1e-4)
    # B tokens (odd indices) are never sources: each keeps its own destination
    assert len(set(out.dest[0, 1::2].tolist())) == n // 2


def test_bipartite_matching_merges_most_similar_pair():
    # token 2 (set A) duplicates token 3 (set B): with r=1 exactly that pair merges
    metric = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0.1, 1.0], [1.0, 1.0, 0]]])
    dest, n_out = condense.bipartite_soft_matching(metric, 1)
    assert n_out == 4
    assert dest[0, 2] == dest[0, 3]
    assert len(set(dest[0].tolist())) == 4


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 50), seed=st.integers(0, 9999), scale=st.sampled_from([0.01, 1.0, 100.0]))
def test_pairwise_distance_matches_cdist(t, seed, scale):
    x = _tokens(2, t, 16, seed) * scale
    d = condense.pairwise_distance(x)
    ref = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(d.double(), ref, rtol=1e-4, atol=1e-3 * scale)
    assert (d.diagonal(dim1=-2, dim2=-1) == 0).all()
