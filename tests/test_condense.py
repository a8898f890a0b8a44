"""The tensor functions of tca.condense, on hand-made and hypothesis-generated tensors."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
    full = ((q @ k.transpose(-2, -1)) * 4**-0.5).softmax(-1)
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
@given(
    n=st.integers(4, 60), d=st.floats(0.01, 0.33), k=st.integers(1, 4), seed=st.integers(0, 9999)
)
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
        torch.testing.assert_close(out.x[b, 1 : 1 + t1], x[b, kept])
        if t3:
            i3 = order[b, t1 + t2 :]
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
    torch.testing.assert_close(
        (out.x * out.size[..., None]).sum(1), (x * size[..., None]).sum(1), rtol=1e-4, atol=1e-4
    )
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


# --------------------------------------------------------------------------- exact values


def test_budgets_at_their_edges():
    # tier 2 clipped to n_keep: d close to 1/3 at N=7 keeps ceil(0.7 * 6) = 5, m = 2, 2m = 4
    assert condense.tca_tier_sizes(7, 0.3) == (1, 4, 1)
    assert condense.tca_tier_sizes(5, 0.6) == (0, 2, 2)  # n_keep 2 < 2m = 6: clipped
    assert condense.tca_tier_sizes(197, -0.1) == (196, 0, 0)
    # the smallest positive rate keeps every patch but still pairs m = 1 token into tier 2
    assert condense.tca_tier_sizes(11, 1e-6) == (8, 2, 0)
    assert condense.evit_tier_sizes(11, 0.45) == (5, 0, 5)  # ceil(4.5)
    assert condense.evit_tier_sizes(11, 0.5) == (5, 0, 5)  # 0.5 * 10 is exactly 5: no jump to 6
    # 1 - 0.9 = 0.09999999999999998, so 10 * (1 - R) is just under 1: ToMe still merges one
    assert condense.tome_r(10, 0.9) == 1
    assert condense.tome_r(197, 1.0) == 0
    assert condense.tome_r(9, 0.5) == 4 and condense.tome_r(8, 0.3) == 3  # caps: 4 and 3 A tokens


def test_cls_attention_row_with_additive_bias():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, 6, 4, generator=g), torch.randn(2, 2, 6, 4, generator=g)
    bias = torch.log(torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 0.5])).expand(2, 1, 1, 6)
    full = ((q @ k.transpose(-2, -1)) * 0.5 + bias).softmax(-1)
    torch.testing.assert_close(condense.cls_attention_row(q, k, 1, bias), full[:, :, 1])


def _stable_ranks(values: list[float]) -> list[int]:
    """Rank of each value (0 = smallest); equal values ranked by position."""
    return [
        sum(v < x or (v == x and j < i) for j, v in enumerate(values)) for i, x in enumerate(values)
    ]


def test_head_rank_score_breaks_ties_by_position():
    g = torch.Generator().manual_seed(4)
    attn = torch.randint(0, 3, (2, 3, 40), generator=g).float()  # many ties in every head
    expected = torch.tensor([[_stable_ranks(head) for head in image] for image in attn.tolist()])
    torch.testing.assert_close(condense.head_rank_score(attn), expected.float().mean(1) / 39)
    # two patches: ranks 0 and 1, divided by P - 1 = 1; one patch: rank 0, no division by zero
    two = torch.tensor([[[0.2, 0.8], [0.3, 0.7]]])
    assert condense.head_rank_score(two).tolist() == [[0.0, 1.0]]
    assert condense.head_rank_score(torch.tensor([[[0.5], [0.5]]])).tolist() == [[0.0]]


def test_k_center_greedy_by_hand():
    # on a line: 0 first, then the farthest (9.0 at index 4), then the farthest from both (4.0)
    x = torch.tensor([[[0.0], [1.0], [4.0], [5.0], [9.0], [8.5]]])
    centres, dist = condense.k_center_greedy(x, 3)
    assert centres.tolist() == [[0, 4, 2]]
    assert condense.k_center_greedy(x, 1)[0].tolist() == [[0]]
    torch.testing.assert_close(dist[0, 2], torch.tensor([4.0, 3.0, 0.0, 1.0, 5.0, 4.5]))


def test_coreset_merge_weights_short_distances_up():
    # distances below 1 weigh more than the centre: 0.1 -> 10, 0.4 -> 2.5
    x = torch.tensor([[[0.0], [0.1], [0.4], [1.0]]])
    merged, assign = condense.coreset_merge(x, 2)
    assert assign.tolist() == [[0, 0, 0, 1]]
    torch.testing.assert_close(merged, torch.tensor([[[(10 * 0.1 + 2.5 * 0.4) / 13.5], [1.0]]]))
    # a token equal to a centre but not chosen as one gets weight 1 (not 1/0)
    x = torch.tensor([[[0.0], [0.0], [2.0], [3.0]], [[1.0], [5.0], [1.0], [1.5]]])
    merged, assign = condense.coreset_merge(x, 2)
    assert assign.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    torch.testing.assert_close(
        merged, torch.tensor([[[0.0], [(1 * 3 + 2.0) / 2]], [[(1 + 1 + 2 * 1.5) / 4], [5.0]]])
    )


def test_prune_merge_fuse_by_hand():
    """Score ties broken by patch index; fused with fuse_weight (not select); dest exact."""
    x = torch.arange(1.0, 10.0).view(1, 9, 1)  # token t holds the value t + 1
    select = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5, 0.2, 0.9, 0.0]])  # patch order 1 6 0 2 4 5 3 7
    weight = torch.tensor([[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]])
    out = condense.prune_merge_fuse(x, select, weight, t1=2, t2=3, k=3)
    # tier 1 = patches 1, 6 (tokens 2, 7); tier 2 = patches 0, 2, 4 (tokens 1, 3, 5) kept as they
    # are (t2 = K); tier 3 = patches 5, 3, 7 (tokens 6, 4, 8) fused with their fuse weights
    assert out.dest.tolist() == [[0, 3, 1, 4, 6, 5, 6, 2, 6]]
    assert out.pruned.tolist() == [[False, False, False, False, True, False, True, False, True]]
    fused = 0.06 * 7 + 0.04 * 5 + 0.08 * 9
    torch.testing.assert_close(out.x[0, :, 0], torch.tensor([1.0, 3, 8, 2, 4, 6, fused]))
    assert out.size is None
    # tier 2 larger than K: coreset over tier 2 in score order (2, 4, 6): centres 2 and 6, the
    # equidistant 4 joins the first with weight 1/2
    out = condense.prune_merge_fuse(x, select, weight, t1=2, t2=3, k=2)
    assert out.dest.tolist() == [[0, 3, 1, 3, 5, 4, 5, 2, 5]]
    torch.testing.assert_close(
        out.x[0, :, 0], torch.tensor([1.0, 3, 8, (2 + 4 / 2) / 1.5, 6, fused])
    )
    # nothing in tier 3: no fused token, no pruned mask
    out = condense.prune_merge_fuse(x, select, weight, t1=5, t2=3, k=3)
    assert out.pruned is None and out.x.shape == (1, 9, 1)
    assert out.dest.tolist() == [[0, 3, 1, 4, 7, 5, 6, 2, 8]]  # tier 2 = patches 5, 3, 7 in order


def test_bipartite_matching_by_cosine_not_dot_product():
    # A = tokens 0 (CLS), 2, 4; B = tokens 1, 3. Token 2 points along token 1 (cos 0.995) but
    # has its largest dot product with the long token 3: cosine merges 2 into 1.
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [10.0, 0.0], [5.0, 5.0], [0.0, 1.0]]])
    for scale in (1.0, 0.05):  # norms below 1 too: cosine does not depend on them
        dest, n_out = condense.bipartite_soft_matching(metric * scale, 1)
        assert (dest.tolist(), n_out) == ([[0, 2, 2, 3, 1]], 4)
    dest, n_out = condense.bipartite_soft_matching(metric, 2)  # then 4 into 3
    assert (dest.tolist(), n_out) == ([[0, 1, 1, 2, 2]], 3)


def _reference_matching(metric: torch.Tensor, r: int) -> list[int]:
    """ToMe's rule written out for one image: strongest links first, ties by A position."""
    m = torch.nn.functional.normalize(metric.double(), dim=-1).tolist()
    n = len(m)
    a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
    best = []
    for ai, a in enumerate(a_idx):
        scores = [sum(u * v for u, v in zip(m[a], m[b])) for b in b_idx]
        top = max(scores)
        best.append((-float("inf") if ai == 0 else top, scores.index(top)))
    order = sorted(range(len(a_idx)), key=lambda ai: -best[ai][0])
    src, unm = order[:r], sorted(order[r:])
    dest = [0] * n
    for i, ai in enumerate(unm):
        dest[a_idx[ai]] = i
    for ai in src:
        dest[a_idx[ai]] = len(unm) + best[ai][1]
    for j, b in enumerate(b_idx):
        dest[b] = len(unm) + j
    return dest


def test_bipartite_matching_equals_the_rule_written_out_with_ties():
    # one-hot tokens: every cosine is exactly 0 or 1, so most links tie, in any precision
    g = torch.Generator().manual_seed(5)
    metric = torch.eye(4)[torch.randint(0, 4, (2, 61), generator=g)]
    for r in (0, 7, 20, 30):
        dest, n_out = condense.bipartite_soft_matching(metric, r)
        assert n_out == 61 - r
        assert dest.tolist() == [_reference_matching(metric[i], r) for i in range(2)]


def test_merge_weighted_by_hand():
    x = torch.tensor([[[1.0], [3.0], [10.0]]])
    size = torch.tensor([[1.0, 3.0, 2.0]])
    out, new_size = condense.merge_weighted(x, size, torch.tensor([[0, 0, 1]]), 2)
    torch.testing.assert_close(out, torch.tensor([[[(1 + 9) / 4], [10.0]]]))
    assert new_size.tolist() == [[4.0, 2.0]]


def test_tensor_functions_create_everything_on_the_input_device():
    """Run on the meta device: a tensor made on the default device instead fails or shows."""
    m = torch.device("meta")
    x = torch.empty(2, 9, 4, device=m)
    q = torch.empty(2, 2, 9, 4, device=m)
    outs = [
        condense.cls_attention_row(q, q, 0, torch.empty(2, 1, 1, 9, device=m)),
        condense.head_rank_score(torch.empty(2, 3, 8, device=m)),
        *condense.k_center_greedy(x, 3),
        *condense.coreset_merge(x, 3),
        *condense.prune_merge_fuse(
            x, torch.empty(2, 8, device=m), torch.empty(2, 8, device=m), 3, 3, 2
        )[:3],
        condense.bipartite_soft_matching(x, 3)[0],
        *condense.tome_merge(x, torch.empty(2, 9, device=m), x, 3)[:2],
    ]
    assert [t.device.type for t in outs] == ["meta"] * len(outs)


def test_prune_merge_fuse_ties_and_a_single_tier_two_token():
    # 40 patches with 3 distinct scores: the order within a score is the patch order
    g = torch.Generator().manual_seed(6)
    select = torch.randint(0, 3, (1, 40), generator=g).float()
    x = torch.arange(41.0).view(1, 41, 1)
    out = condense.prune_merge_fuse(x, select, torch.ones(1, 40), t1=40, t2=0, k=0)
    order = sorted(range(40), key=lambda i: (-select[0, i].item(), i))
    assert out.x[0, 1:, 0].tolist() == [float(i + 1) for i in order]
    # one tier-2 token (K = 1) is kept as it is, then one fused token
    x = torch.arange(1.0, 6.0).view(1, 5, 1)
    out = condense.prune_merge_fuse(
        x, torch.tensor([[0.4, 0.3, 0.2, 0.1]]), torch.ones(1, 4), 2, 1, 1
    )
    assert out.dest.tolist() == [[0, 1, 2, 3, 4]] and out.x[0, :, 0].tolist() == [1.0, 2, 3, 4, 5]


# --------------------------------------------------------------------------- mutation-score tests


def test_k_center_greedy_from_a_given_first_centre_per_image():
    # image 0 on a line 0, 1, 6, 10 from token 2 (6): farthest is 0, then 10 (4 from 6) over 1
    # image 1 on a line 5, 0, 3, 9 from token 3 (9): farthest is 0 (token 1), then 5 (4 from the
    # nearer centre) over 3 (3 from 0)
    x = torch.tensor([[[0.0], [1.0], [6.0], [10.0]], [[5.0], [0.0], [3.0], [9.0]]])
    centres, dist = condense.k_center_greedy(x, 3, first=torch.tensor([2, 3]))
    assert centres.tolist() == [[2, 0, 3], [3, 1, 0]]
    torch.testing.assert_close(dist[1, 3], torch.tensor([4.0, 9.0, 6.0, 0.0]))
    assert condense.k_center_greedy(x, 1, first=torch.tensor([2, 3]))[0].tolist() == [[2], [3]]
    assert condense.k_center_greedy(x, 2, first=torch.tensor([1, 0]))[0].tolist() == [
        [1, 3],
        [0, 1],
    ]


def test_k_center_greedy_given_first_centre_is_never_picked_again():
    # every token identical: every distance is 0, so only the mark on the first centre keeps
    # argmax (first maximum) from choosing token 0 a second time
    x = torch.zeros(2, 4, 2)
    centres, _ = condense.k_center_greedy(x, 3, first=torch.tensor([0, 2]))
    assert centres.tolist() == [[0, 1, 2], [2, 0, 1]]


def test_coreset_merge_from_a_given_first_centre():
    # from token 2 (6): centres 6 and 0; 10 joins 6 at distance 4 (w 1/4), 1 joins 0 (w 1)
    x = torch.tensor([[[0.0], [1.0], [6.0], [10.0]]])
    merged, assign = condense.coreset_merge(x, 2, first=torch.tensor([2]))
    assert assign.tolist() == [[1, 1, 0, 0]]
    torch.testing.assert_close(merged, torch.tensor([[[(6 + 10 / 4) / 1.25], [(0 + 1) / 2]]]))


def test_prune_merge_fuse_random_first_centre_comes_from_the_generator():
    x = _tokens(4, 16, 3, 11)
    select = torch.linspace(1.0, 0.0, 15).expand(4, 15)  # patch order 0, 1, ..., 14
    weight = torch.full((4, 15), 0.5)
    out = condense.prune_merge_fuse(
        x, select, weight, t1=2, t2=10, k=3, generator=torch.Generator().manual_seed(7)
    )
    first = torch.randint(10, (4,), generator=torch.Generator().manual_seed(7))
    assert (first > 0).all()  # no image starts at token 0, the rule's centre
    merged, assign = condense.coreset_merge(x[:, 3:13], 3, first)
    torch.testing.assert_close(out.x[:, 3:6], merged)
    assert out.dest[:, 3:13].tolist() == (3 + assign).tolist()
    rule, _ = condense.coreset_merge(x[:, 3:13], 3)
    assert not torch.allclose(rule, merged)
    torch.testing.assert_close(out.x[:, :3], x[:, :3])
    torch.testing.assert_close(out.x[:, 6], 0.5 * x[:, 13:].sum(1))
    assert out.dest[:, 13:].tolist() == [[6, 6, 6]] * 4


def test_half_precision_outputs_keep_the_input_dtype():
    x = _tokens(2, 9, 4, 12)
    select = torch.tensor([[0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]]).expand(2, 8)
    full = condense.prune_merge_fuse(x, select, select, t1=2, t2=4, k=2)
    half = condense.prune_merge_fuse(x.half(), select, select, t1=2, t2=4, k=2)
    assert half.x.dtype == torch.float16 and half.x.shape == (2, 6, 4)
    torch.testing.assert_close(half.x, full.x.half(), rtol=2e-3, atol=2e-3)
    size = torch.tensor([[1.0, 3.0, 2.0]])
    out, new_size = condense.merge_weighted(
        torch.tensor([[[1.0], [3.0], [10.0]]]).half(), size, torch.tensor([[0, 0, 1]]), 2
    )
    assert out.dtype == torch.float16 and out.tolist() == [[[2.5], [10.0]]]
    assert new_size.dtype == torch.float32 and new_size.tolist() == [[4.0, 2.0]]


def test_tome_merge_without_a_cls_token():
    # prefix 0: token 0 (set A) may merge; it duplicates token 1, so with r = 1 they merge
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    x = torch.tensor([[[2.0], [4.0], [8.0], [16.0]]])
    out = condense.tome_merge(x, torch.ones(1, 4), metric, 1, prefix=0)
    assert out.dest.tolist() == [[1, 1, 0, 2]]
    assert out.x[0, :, 0].tolist() == [8.0, 3.0, 16.0] and out.size.tolist() == [[1.0, 2.0, 1.0]]
    out = condense.tome_merge(x, torch.ones(1, 4), metric, 1)  # with CLS: token 2 merges into 3
    assert out.dest.tolist() == [[0, 1, 2, 2]]


def _reference_inverse_cdf(score: list[float], budget: int) -> list[int]:
    """The sampling rule written out: stable ascending order, first CDF step reaching y_k."""
    order = sorted(range(len(score)), key=lambda i: (score[i], i))
    cdf, acc = [], 0.0
    for i in order:
        acc += score[i]
        cdf.append(acc)
    out = []
    for k in range(budget):
        y = (k + 0.5) / budget
        pos = next((j for j, c in enumerate(cdf) if c >= y), len(cdf) - 1)
        out.append(order[pos])
    return out


def test_inverse_cdf_sample_breaks_score_ties_by_position():
    # 60 patches with 3 distinct scores (powers of two: exact sums): which of the tied patches a
    # quantile lands on is set by the stable order
    g = torch.Generator().manual_seed(8)
    raw = 2.0 ** torch.randint(0, 3, (2, 60), generator=g).double()
    score = raw / raw.sum(-1, keepdim=True)
    budget = torch.tensor([60, 23])
    got = condense.inverse_cdf_sample(score, budget)
    assert got.shape == (2, 60)
    assert got[0].tolist() == _reference_inverse_cdf(score[0].tolist(), 60)
    assert got[1, :23].tolist() == _reference_inverse_cdf(score[1].tolist(), 23)
    assert (got[1, 23:] == -1).all()


def test_ats_functions_on_an_empty_batch():
    got = condense.inverse_cdf_sample(torch.empty(0, 5), torch.empty(0, dtype=torch.long))
    assert got.shape == (0, 0)
    c = condense.keep_patches(torch.empty(0, 6, 3), torch.empty(0, 5, dtype=torch.bool))
    assert c.x.shape == (0, 1, 3) and c.dest.shape == (0, 6) and c.valid.shape == (0, 1)


def test_ats_functions_create_everything_on_the_input_device():
    """Meta device, as above; an empty batch, since the ATS functions read counts back."""
    m = torch.device("meta")
    outs = [
        condense.inverse_cdf_sample(
            torch.empty(0, 5, device=m), torch.empty(0, dtype=torch.long, device=m)
        ),
        condense.unique_indices(torch.empty(2, 3, dtype=torch.long, device=m), 5),
        *[
            t
            for t in condense.keep_patches(
                torch.empty(0, 6, 3, device=m),
                torch.empty(0, 5, dtype=torch.bool, device=m),
                torch.empty(0, 6, dtype=torch.bool, device=m),
            )
            if t is not None
        ],
    ]
    assert [t.device.type for t in outs] == ["meta"] * 6


def test_row_helpers_equal_gather_and_scatter_add_bit_for_bit():
    """take_tokens / add_rows (index_select / index_add_ of whole rows) give exactly what gather
    / scatter_add_ with an index expanded over D give, in float32 and bfloat16."""
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 11, 7, generator=gen).to(dtype)
        idx = torch.stack([torch.randperm(11, generator=gen)[:6] for _ in range(3)])
        want = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, 7))
        got = condense.take_tokens(x, idx)
        assert got.dtype == dtype and torch.equal(got, want)
        assert condense.take_tokens(x, idx[:, :0]).shape == (3, 0, 7)
        dest = torch.randint(0, 4, (3, 11), generator=gen)  # many rows share a destination
        src = torch.randn(3, 11, 7, generator=gen).to(dtype)
        want = torch.zeros(3, 4, 7, dtype=dtype).scatter_add_(
            1, dest.unsqueeze(-1).expand(3, 11, 7), src
        )
        out = torch.zeros(3, 4, 7, dtype=dtype)
        assert condense.add_rows(out, dest, src) is out and torch.equal(out, want)


def test_as_float32_leaves_float32_alone_and_densifies_half_views():
    x = torch.randn(2, 5, 3, 4).permute(0, 2, 1, 3)  # a strided view, like q / k of the qkv
    assert condense.as_float32(x) is x
    half = x.bfloat16()
    got = condense.as_float32(half)
    assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, half.float())
