"""PiToMe, ToFu, Zero-TPrune and Representation Shift: the tensor functions of tca.condense on
hand-computed tensors, and rules written out as plain loops on random ones."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tca import beyond, condense


def _elu(v: float) -> float:
    return v if v > 0 else math.exp(v) - 1.0


# ------------------------------------------------------------------------------ shared


def test_half_r_is_tome_r_with_cls_and_floor_half_without():
    assert beyond.half_r(197, 0.7) == condense.tome_r(197, 0.7) == 59
    assert beyond.half_r(197, 0.9) == 19 and beyond.half_r(178, 0.9) == 17
    assert beyond.half_r(197, 0.0) == 98 == condense.tome_r(197, 0.0)  # floor(196 / 2)
    assert beyond.half_r(140, 0.0) == 69 == condense.tome_r(140, 0.0)
    # no CLS, odd P: pairs need floor(P/2); ToMe's set A could give ceil(P/2)
    assert beyond.half_r(5, 0.0, prefix=0) == 2 and condense.tome_r(5, 0.0, prefix=0) == 3
    assert beyond.half_r(196, 0.7, prefix=0) == 58
    assert beyond.half_r(10, 1.0) == 0
    assert beyond.half_r(141, 0.9) == 14  # int(14.1 + 1e-9)


def test_drop_tokens_keeps_prefix_and_order_exactly():
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    drop = torch.tensor([[False, True, False, True], [True, False, False, True]])
    size = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]])
    c = beyond.drop_tokens(x, drop, 1, size)
    assert c.dest.tolist() == [[0, 1, -1, 2, -1], [0, -1, 1, 2, -1]]
    assert c.pruned.tolist() == [
        [False, False, True, False, True],
        [False, True, False, False, True],
    ]
    torch.testing.assert_close(c.x[0], x[0, [0, 1, 3]])
    torch.testing.assert_close(c.x[1], x[1, [0, 2, 3]])
    assert c.size.tolist() == [[1.0, 2.0, 4.0], [6.0, 8.0, 9.0]]
    # no CLS: the first token can go too; no sizes given, none returned
    c = beyond.drop_tokens(x[:1, :4], torch.tensor([[True, False, False, True]]), 0)
    assert c.dest.tolist() == [[-1, 0, 1, -1]] and c.size is None
    torch.testing.assert_close(c.x[0], x[0, [1, 2]])


def test_drop_tokens_dropping_nothing_is_the_identity():
    x = torch.randn(2, 4, 3)
    c = beyond.drop_tokens(x, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(c.x, x) and c.dest.tolist() == [[0, 1, 2, 3]] * 2
    assert not c.pruned.any()


# ------------------------------------------------------------------------------ PiToMe


def test_pitome_margin_falls_linearly_with_depth():
    assert beyond.pitome_margin(0, 12) == pytest.approx(0.9)
    assert beyond.pitome_margin(3, 12) == pytest.approx(0.675)
    assert beyond.pitome_margin(6, 12) == pytest.approx(0.45)
    assert beyond.pitome_margin(9, 12) == pytest.approx(0.225)
    assert beyond.pitome_margin(6, 12, m0=1.0) == pytest.approx(0.5)


def test_cosine_matrix_by_hand():
    m = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]]])
    torch.testing.assert_close(
        beyond.cosine_matrix(m),
        torch.tensor([[[1.0, 0.6, -0.8], [0.6, 1.0, 0.0], [-0.8, 0.0, 1.0]]]),
    )
    zero = beyond.cosine_matrix(torch.zeros(1, 2, 3))  # no division by zero
    assert torch.equal(zero, torch.zeros(1, 2, 2))


# patch keys: p0 = p1 (a cluster of two), p2 orthogonal, p3 opposite to p0/p1
KEYS = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])  # CLS first


def test_energy_score_by_hand():
    sim = beyond.cosine_matrix(KEYS[:, 1:])
    e = beyond.energy_score(sim, 0.5)
    # ELU(1 - .5) = .5; ELU(0 - .5) = e^-.5 - 1; ELU(-1 - .5) = e^-1.5 - 1
    hi, mid, lo = 0.5, _elu(-0.5), _elu(-1.5)
    want = [
        (2 * hi + mid + lo) / 4,
        (2 * hi + mid + lo) / 4,
        (3 * mid + hi) / 4,
        (2 * lo + mid + hi) / 4,
    ]
    torch.testing.assert_close(e, torch.tensor([want]))
    # alpha scales only the part below the margin
    e2 = beyond.energy_score(sim, 0.5, alpha=2.0)
    torch.testing.assert_close(e2[0, 2], torch.tensor((6 * mid + hi) / 4))


def test_pitome_match_by_hand():
    dest, n_out, energy = beyond.pitome_match(KEYS, 1, 0.5)
    # energy order: p0, p1 (cluster), p2, p3 -> A = [p0], B = [p1]; p2, p3 protected
    assert energy.argsort(descending=True, stable=True).tolist() == [[0, 1, 2, 3]]
    assert n_out == 4
    assert dest.tolist() == [[0, 3, 3, 1, 2]]  # [CLS; p2, p3; p1 <- p0]
    c = beyond.pitome_merge(KEYS, torch.ones(1, 5), KEYS, 1, 0.5)
    torch.testing.assert_close(
        c.x, torch.tensor([[[5.0, 5.0], [0.0, 3.0], [-1.0, 0.0], [1.5, 0.0]]])
    )
    assert c.size.tolist() == [[1.0, 1.0, 1.0, 2.0]] and c.pruned is None
    torch.testing.assert_close(c.score, energy)


def test_pitome_match_two_pairs_without_cls_by_hand():
    # no CLS; tokens 0/3 and 1/4 are near pairs, 2 is alone. Energies (margin 0): 3 = 4 > 0 = 1
    # > 2, so A = [3, 0] and B = [4, 1] (alternating by energy), 2 is protected. Both A tokens
    # are nearest to B token 4 (cos .198 and .0995 against .0995 and 0), so 4 takes both and
    # 1 stays alone: the alternating split decides, as in the paper.
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [1.0, 0.1], [0.1, 1.0]]])
    dest, n_out, energy = beyond.pitome_match(m, 2, 0.0, prefix=0)
    assert energy.argsort(descending=True, stable=True).tolist() == [[3, 4, 0, 1, 2]]
    assert n_out == 3 and dest.tolist() == [[1, 2, 0, 1, 1]]  # [2; 4 <- 3, 0; 1]


def _pitome_reference(metric, r, margin, prefix):
    """The rule written out with Python loops."""
    n = metric.shape[0]
    p = n - prefix
    pm = [metric[prefix + i] / metric[prefix + i].norm() for i in range(p)]
    sim = [[float(pm[i] @ pm[j]) for j in range(p)] for i in range(p)]
    energy = [sum(_elu(sim[i][j] - margin) for j in range(p)) / p for i in range(p)]
    order = sorted(range(p), key=lambda i: (-energy[i], i))
    a, b = order[0 : 2 * r : 2], order[1 : 2 * r : 2]
    protected = sorted(order[2 * r :])
    dest = list(range(prefix)) + [0] * p
    for k, i in enumerate(protected):
        dest[prefix + i] = prefix + k
    for k, j in enumerate(b):
        dest[prefix + j] = prefix + len(protected) + k
    for i in a:
        best = max(range(len(b)), key=lambda k: (sim[i][b[k]], -k))
        dest[prefix + i] = prefix + len(protected) + best
    return dest, energy


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 24),
    frac=st.floats(0.0, 1.0),
    prefix=st.integers(0, 1),
    margin=st.floats(-0.5, 0.95),
    seed=st.integers(0, 10_000),
)
def test_pitome_match_equals_the_rule_written_out(n, frac, prefix, margin, seed):
    metric = torch.randn(
        1, n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    r = int(frac * ((n - prefix) // 2))
    dest, n_out, energy = beyond.pitome_match(metric, r, margin, prefix)
    want, want_energy = _pitome_reference(metric[0], r, margin, prefix)
    assert dest[0].tolist() == want and n_out == n - r
    torch.testing.assert_close(
        energy[0].double(), torch.tensor(want_energy, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )


def test_pitome_r_zero_and_r_capped():
    m = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    dest, n_out, energy = beyond.pitome_match(m, 0, 0.5)
    assert n_out == 6 and dest.tolist() == [list(range(6))] * 2 and energy.shape == (2, 5)
    dest, n_out, _ = beyond.pitome_match(m, 9, 0.5)  # capped at floor(5 / 2) = 2
    assert n_out == 4 and dest[:, 0].tolist() == [0, 0]


# ------------------------------------------------------------------------------ ToFu


def test_tofu_prunes_in_the_first_half_of_the_blocks():
    assert [beyond.tofu_prunes(l, 12) for l in (0, 3, 5, 6, 9, 11)] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert [beyond.tofu_prunes(l, 5) for l in range(5)] == [True, True, False, False, False]


# tokens: CLS, t1, t2 (= t1's direction: A's best match), t3, t4 (orthogonal to everything)
TOFU = torch.tensor(
    [[[1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [4.0, 0.1, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0]]]
)


def test_matched_sources_and_tofu_prune_by_hand():
    dest, n_out = condense.bipartite_soft_matching(TOFU, 1)
    assert dest.tolist() == [[0, 2, 2, 3, 1]] and n_out == 4  # t2 -> t1
    assert beyond.matched_sources(dest, n_out).tolist() == [[False, True, False, False]]
    assert beyond.matched_sources(dest, n_out, prefix=0).tolist() == [
        [False, False, True, False, False]
    ]
    c = beyond.tofu_prune(TOFU, torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]), TOFU, 1)
    assert c.dest.tolist() == [[0, 1, -1, 2, 3]]  # t2 dropped, not averaged into t1
    assert c.pruned.tolist() == [[False, False, True, False, False]]
    torch.testing.assert_close(c.x, TOFU[:, [0, 1, 3, 4]])
    assert c.size.tolist() == [[1.0, 2.0, 4.0, 5.0]]


def test_mlerp_merge_by_hand():
    x = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]])
    dest = torch.tensor([[0, 0, 1]])
    out, size = beyond.mlerp_merge(x, torch.ones(1, 3), dest, 2)
    s = 5.0 / math.sqrt(2.0)  # mean (2, 2) rescaled to the larger norm, 5
    torch.testing.assert_close(out, torch.tensor([[[s, s], [0.0, 2.0]]]))
    assert size.tolist() == [[2.0, 1.0]]
    # sizes weight the average; the norm is still the largest one
    out, size = beyond.mlerp_merge(x, torch.tensor([[3.0, 1.0, 2.0]]), dest, 2)
    mean = torch.tensor([2.5, 3.0])
    torch.testing.assert_close(out[0, 0], mean * 5.0 / mean.norm())
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 2.0]))
    assert size.tolist() == [[4.0, 2.0]]
    # a larger second token sets the norm
    out, _ = beyond.mlerp_merge(
        torch.tensor([[[0.0, 1.0], [10.0, 0.0]]]), torch.ones(1, 2), torch.tensor([[0, 0]]), 1
    )
    mean = torch.tensor([5.0, 0.5])
    torch.testing.assert_close(out[0, 0], mean * 10.0 / mean.norm())


def test_mlerp_singletons_are_merge_weighted_copies():
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(3)) * 7
    dest = torch.arange(6).expand(2, 6)
    size = torch.rand(2, 6, generator=torch.Generator().manual_seed(4)) + 0.5
    out, _ = beyond.mlerp_merge(x, size, dest, 6)
    assert torch.equal(out, condense.merge_weighted(x, size, dest, 6)[0])


def test_tofu_merge_is_tome_matching_with_mlerp():
    c = beyond.tofu_merge(TOFU, torch.ones(1, 5), TOFU, 1)
    assert c.dest.tolist() == [[0, 2, 2, 3, 1]] and c.pruned is None
    mean = (TOFU[0, 1] + TOFU[0, 2]) / 2
    torch.testing.assert_close(c.x[0, 2], mean * TOFU[0, 2].norm() / mean.norm())
    torch.testing.assert_close(c.x[0, [0, 1, 3]], TOFU[0, [0, 4, 3]])
    assert c.size.tolist() == [[1.0, 1.0, 2.0, 1.0]]


# ------------------------------------------------------------------------------ Zero-TPrune


def test_weighted_pagerank_by_hand():
    a = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])  # token 1 attends only to itself
    # s^t = [2^-(t+1), 1 - 2^-(t+1)]
    for t in (0, 1, 2, 10):
        want = torch.tensor([[[0.5 ** (t + 1), 1 - 0.5 ** (t + 1)]]])
        torch.testing.assert_close(beyond.weighted_pagerank(a, t), want)
    torch.testing.assert_close(
        beyond.weighted_pagerank(a), torch.tensor([[[2.0**-11, 1 - 2.0**-11]]])
    )
    # the direction matters: importance flows to the attended token (A^T s, not A s)
    b = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]]])
    torch.testing.assert_close(
        beyond.weighted_pagerank(b, 1), torch.tensor([[[1 / 6, 5 / 6, 0.0]]])
    )


def test_head_filtered_mean_by_hand():
    score = torch.tensor(
        [
            [
                [1.0, 1.0, 1.0],  # variance 0: lowest, left out
                [0.0, 0.0, 3.0],  # variance 2 (tie, earlier head ranks lower)
                [0.0, 1.0, 2.0],  # variance 2/3
                [3.0, 0.0, 0.0],
            ]
        ]
    )  # variance 2: highest rank, left out
    torch.testing.assert_close(beyond.head_filtered_mean(score), torch.tensor([[0.0, 0.5, 2.5]]))
    # fewer than four heads: nothing is left out
    torch.testing.assert_close(
        beyond.head_filtered_mean(score[:, :3]), torch.tensor([[1 / 3, 2 / 3, 2.0]])
    )
    # eight heads: two left out at each end
    eight = torch.arange(8.0).view(1, 8, 1) * torch.tensor([0.0, 1.0])  # variance grows with h
    torch.testing.assert_close(beyond.head_filtered_mean(eight), torch.tensor([[0.0, 3.5]]))


def test_zero_tprune_select_by_hand():
    importance = torch.tensor([[0.4, 0.1, 0.3, 0.2]])  # important: p0, p2; unimportant: p3, p1
    metric = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]]])
    # best similarity to {p0, p2}: p1 -> p0 0.994, p3 -> p2 0.8
    assert beyond.zero_tprune_select(importance, metric, 1).tolist() == [
        [False, True, False, False]
    ]
    assert beyond.zero_tprune_select(importance, metric, 2).tolist() == [[False, True, False, True]]
    assert beyond.zero_tprune_select(importance, metric, 5).tolist() == [
        [False, True, False, True]
    ]  # at most the unimportant half
    assert not beyond.zero_tprune_select(importance, metric, 0).any()
    # no CLS: odd P, the important set is the larger half
    drop = beyond.zero_tprune_select(torch.tensor([[0.5, 0.1, 0.2]]), metric[:, 2:], 1, 0)
    assert drop.tolist() == [[False, True, False]]


def test_zero_tprune_prune_by_hand():
    # head 0 and head 1: every token attends to token 2 (patch 1) / token 3 (patch 2)
    probs = torch.zeros(1, 2, 4, 4)
    probs[0, 0, :, 2] = 1.0
    probs[0, 1, :, 3] = 1.0
    x = torch.arange(12.0).view(1, 4, 3)
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    c = beyond.zero_tprune_prune(x, probs, metric, 1)
    torch.testing.assert_close(c.score, torch.tensor([[0.0, 0.5, 0.5]]))
    # importance order p1, p2 | p0; p0 is the unimportant one, pruned
    assert c.dest.tolist() == [[0, -1, 1, 2]]
    torch.testing.assert_close(c.x, x[:, [0, 2, 3]])


def _ztp_reference(importance, metric, r, prefix):
    p = len(importance)
    order = sorted(range(p), key=lambda i: (-importance[i], i))
    n_imp = p - p // 2
    imp, unimp = order[:n_imp], order[n_imp:]
    m = [metric[prefix + i] / metric[prefix + i].norm() for i in range(p)]
    best = [max(float(m[u] @ m[i]) for i in imp) for u in unimp]
    pick = sorted(range(len(unimp)), key=lambda k: (-best[k], k))[:r]
    return sorted(unimp[k] for k in pick)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 24),
    frac=st.floats(0.0, 1.0),
    prefix=st.integers(0, 1),
    seed=st.integers(0, 10_000),
)
def test_zero_tprune_select_equals_the_rule_written_out(n, frac, prefix, seed):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(1, n, 5, generator=g, dtype=torch.float64)
    importance = torch.rand(1, n - prefix, generator=g)
    r = int(frac * ((n - prefix) // 2))
    drop = beyond.zero_tprune_select(importance, metric, r, prefix)
    assert drop[0].nonzero().flatten().tolist() == _ztp_reference(
        importance[0].tolist(), metric[0], r, prefix
    )


# ------------------------------------------------------------------------------ Representation Shift


def test_representation_shift_and_lowest_by_hand():
    before = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]])
    after = torch.tensor([[[3.0, 4.0], [1.0, 1.0], [2.0, -1.0]]])
    torch.testing.assert_close(
        beyond.representation_shift(before, after), torch.tensor([[5.0, 0.0, 1.0]])
    )
    score = torch.tensor([[0.3, 0.1, 0.1, 0.9], [0.5, 0.2, 0.7, 0.1]])
    assert beyond.lowest(score, 1).tolist() == [
        [False, False, True, False],  # later tie first
        [False, False, False, True],
    ]
    assert beyond.lowest(score, 2).tolist() == [
        [False, True, True, False],
        [False, True, False, True],
    ]
    assert not beyond.lowest(score, 0).any()


def test_repshift_prune_by_hand():
    x = torch.arange(15.0).view(1, 5, 3)
    shift = torch.tensor([[100.0, 2.0, 0.5, 3.0, 1.0]])  # CLS never competes
    c = beyond.repshift_prune(x, shift, 2)
    assert c.dest.tolist() == [[0, 1, -1, 2, -1]]
    torch.testing.assert_close(c.x, x[:, [0, 1, 3]])
    torch.testing.assert_close(c.score, torch.tensor([[2.0, 0.5, 3.0, 1.0]]))
    c = beyond.repshift_prune(x, shift, 2, prefix=0)  # no CLS: index 0 is a patch
    assert c.dest.tolist() == [[0, 1, -1, 2, -1]] and c.score.shape == (1, 5)
    c = beyond.repshift_prune(x, torch.tensor([[0.0, 2.0, 0.5, 3.0, 1.0]]), 1, prefix=0)
    assert c.dest.tolist() == [[-1, 0, 1, 2, 3]]


# ------------------------------------------------------------------------------ trace scores


def test_trace_recorder_keeps_each_method_score_per_patch():
    from tca.trace import PRUNED, TraceRecorder

    rec = TraceRecorder(1, 4, torch.device("cpu"))  # CLS + 4 patches
    # block 0: patch 1 dropped (repshift-style), the others keep their order
    rec.condense(
        0,
        torch.tensor([[0, 1, -1, 2, 3]]),
        torch.tensor([[False, False, True, False, False]]),
        None,
        torch.tensor([[0.5, 0.1, 0.7, 0.9]], dtype=torch.float64),
    )
    rec.end_block()
    # block 1: tokens 1 and 3 (patches 0 and 3) merge; a score per token entering the block
    rec.condense(1, torch.tensor([[0, 1, 2, 1]]), None, None, torch.tensor([[2.0, 3.0, 4.0]]))
    rec.end_block()
    t = rec.finish([4, 3], (2, 2), (0, 1))
    assert sorted(t.scores) == [0, 1] and t.cls_attention == {}
    assert t.scores[0].dtype == torch.float32
    torch.testing.assert_close(t.scores[0], torch.tensor([[0.5, 0.1, 0.7, 0.9]]))
    torch.testing.assert_close(
        t.scores[1], torch.tensor([[2.0, float("nan"), 3.0, 4.0]]), equal_nan=True
    )
    assert t.fate[0, 1].tolist() == [1, PRUNED, 0, 1]
    one = t.select(0)
    torch.testing.assert_close(one.scores[1], t.scores[1], equal_nan=True)


# ------------------------------------------------------------------------------ edges (mutation)


def test_beyond_functions_create_everything_on_the_input_device():
    """Run on the meta device: a tensor made on the default device instead fails or shows."""
    m = torch.device("meta")
    x = torch.empty(2, 9, 4, device=m)
    outs = [
        *beyond.pitome_match(x, 3, 0.5)[::2],
        beyond.pitome_match(x, 0, 0.5)[0],
        beyond.matched_sources(torch.zeros(2, 9, dtype=torch.long, device=m), 6),
        *beyond.mlerp_merge(
            x, torch.empty(2, 9, device=m), torch.zeros(2, 9, dtype=torch.long, device=m), 4
        ),
        beyond.weighted_pagerank(torch.empty(2, 3, 9, 9, device=m)),
        beyond.head_filtered_mean(torch.empty(2, 4, 8, device=m)),
        beyond.zero_tprune_select(torch.empty(2, 8, device=m), x, 3),
        beyond.lowest(torch.empty(2, 8, device=m), 3),
        beyond.representation_shift(x, x),
    ]
    assert [t.device.type for t in outs] == ["meta"] * len(outs)


def test_half_r_rounds_a_product_just_below_an_integer_up():
    assert 100 * (1.0 - 0.9) < 10  # 9.999999999999998 in floating point
    assert beyond.half_r(100, 0.9) == 10 and beyond.half_r(101, 0.9, prefix=0) == 10


def test_drop_tokens_default_prefix_and_an_empty_batch():
    x = torch.arange(12.0).view(1, 4, 3)
    c = beyond.drop_tokens(x, torch.tensor([[False, True, False]]))  # CLS by default
    assert c.dest.tolist() == [[0, 1, -1, 2]]
    c = beyond.drop_tokens(torch.empty(0, 4, 3), torch.empty(0, 3, dtype=torch.bool))
    assert c.x.shape == (0, 4, 3) and c.dest.shape == (0, 4)


def test_pitome_merge_tofu_and_zero_tprune_without_cls():
    # no CLS: token 0 is a patch and takes part
    m = torch.tensor([[[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [-1.0, 0.2]]])
    x = torch.arange(8.0).view(1, 4, 2)
    c = beyond.pitome_merge(x, torch.ones(1, 4), m, 1, 0.5, prefix=0)
    assert c.dest.tolist() == [[2, 2, 0, 1]] and c.score.shape == (1, 4)
    c = beyond.tofu_merge(x, torch.ones(1, 4), m, 1, prefix=0)
    # A = 0, 2; B = 1, 3: token 0 joins token 1; [unmerged A (2); B (1, 3)]
    assert c.dest.tolist() == [[1, 1, 0, 2]]
    c = beyond.tofu_prune(x, torch.ones(1, 4), m, 1, prefix=0)
    assert c.dest.tolist() == [[-1, 0, 1, 2]]
    probs = torch.zeros(1, 1, 4, 4)
    probs[..., 1] = 1.0  # everything attends to token 1
    c = beyond.zero_tprune_prune(x, probs, m, 1, prefix=0)
    # importance: token 1 first, then 0, 2, 3 (ties by position); important half {1, 0};
    # best similarity to it: token 2 -> 0.05, token 3 -> -0.97, so token 2 goes
    assert c.dest.tolist() == [[0, 1, -1, 2]] and c.score.tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_head_filter_ranks_heads_per_image():
    # image 0 and image 1 rank their heads differently: each leaves out its own extremes
    score = torch.tensor(
        [
            [[1.0, 1.0], [0.0, 2.0], [0.0, 4.0], [0.0, 8.0]],
            [[0.0, 8.0], [0.0, 4.0], [0.0, 2.0], [1.0, 1.0]],
        ]
    )
    torch.testing.assert_close(
        beyond.head_filtered_mean(score), torch.tensor([[0.0, 3.0], [0.0, 3.0]])
    )
    score[1, 2] = torch.tensor([0.0, 6.0])
    torch.testing.assert_close(beyond.head_filtered_mean(score)[1], torch.tensor([0.0, 5.0]))


def test_small_norms_and_half_precision():
    # MLERP and the cosine metric on tokens with norms far below 1 (no clamping at 1)
    x = torch.tensor([[[0.03, 0.04], [0.01, 0.0]]])
    out, _ = beyond.mlerp_merge(x, torch.ones(1, 2), torch.tensor([[0, 0]]), 1)
    mean = torch.tensor([0.02, 0.02])
    torch.testing.assert_close(out[0, 0], mean * 0.05 / mean.norm())
    half, _ = beyond.mlerp_merge(x.half(), torch.ones(1, 2), torch.tensor([[0, 0]]), 1)
    assert half.dtype == torch.float16
    importance = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    metric = torch.tensor([[[9.0, 9.0], [0.01, 0.0], [0.009, 0.001], [0.0, 0.01], [0.006, 0.008]]])
    assert beyond.zero_tprune_select(importance, metric, 1).tolist() == [
        [False, True, False, False]
    ]


def test_new_plans_count_whole_macs():
    from tca.config import CondenseConfig
    from tca.flops import Geometry, macs_for

    b16 = Geometry.from_name("ViT-B-16-quickgelu")
    for name in ("pitome", "tofu", "zero-tprune", "repshift"):
        report = macs_for(b16, CondenseConfig(method=name, keep_rate=0.7))
        assert all(type(layer.overhead) is int for layer in report.layers), name


def test_zero_tprune_prune_reads_the_patches_keys_not_the_cls_key():
    probs = torch.zeros(1, 1, 5, 5)
    probs[..., 1], probs[..., 2] = 0.6, 0.4  # importance: p0, p1 | p2, p3
    metric = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.1], [0.0, -1.0], [1.0, 0.2]]])
    c = beyond.zero_tprune_prune(torch.zeros(1, 5, 2), probs, metric, 1)
    # p3 (cos .98 to p0) goes, p2 (cos 0 at best) stays
    assert c.dest.tolist() == [[0, 1, 2, 3, -1]]
    torch.testing.assert_close(c.score, torch.tensor([[0.6, 0.4, 0.0, 0.0]]))
