"""The condensation maths: small pure functions on tensors.

Shapes use B = batch, N = tokens (CLS at index 0), P = N - 1 patches, D = width, h = heads.
Every function that changes the token count also returns ``dest`` (B, N_in): the output
index each input token went to (-1: dropped, held by no token, as ATS does). Composing ``dest`` across layers gives every original patch's
fate (see ``tca.trace``) without a B x N x N source matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Condensed(NamedTuple):
    x: torch.Tensor  # (B, N_out, D)
    dest: torch.Tensor  # (B, N_in) long: output index of every input token
    pruned: torch.Tensor | None  # (B, N_in) bool: tokens fused into the "pruned" token
    size: torch.Tensor | None = None  # (B, N_out) token sizes, for ToMe
    valid: torch.Tensor | None = None  # (B, N_out) bool: real tokens (False = padding), for ATS
    score: torch.Tensor | None = None  # (B, P_in) the per-patch score the step ranked by, if any


# --------------------------------------------------------------------------- scores


def cls_attention_row(
    q: torch.Tensor, k: torch.Tensor, cls_index: int = 0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-head attention probabilities of the CLS query over all keys.

    q, k: (B, h, N, d_h); bias: additive logits broadcastable to (B, h, 1, N).
    Returns (B, h, N) float32. Costs N·D MACs instead of the N²·D of full probabilities.
    """
    scale = q.shape[-1] ** -0.5
    # float32 (a no-op for float32 inputs): half-precision models rank like float32 ones
    logits = (
        as_float32(q[:, :, cls_index : cls_index + 1]) @ as_float32(k).transpose(-2, -1)
    ) * scale
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1).squeeze(2)


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """x itself if it is float32, else a contiguous float32 copy: one copy, and products on it
    run on dense rows (q, k are strided views of the fused qkv projection; on those, bf16's
    CLS row at batch 8 took 3x longer). Float32 inputs are untouched, so their results are too."""
    if x.dtype == torch.float32:
        return x
    return x.to(torch.float32, memory_format=torch.contiguous_format)


def head_mean_score(attn: torch.Tensor) -> torch.Tensor:
    """EViT / released-TCA score: CLS attention averaged over heads. attn: (B, h, P) -> (B, P)."""
    return attn.mean(dim=1)


def head_rank_score(attn: torch.Tensor) -> torch.Tensor:
    """Paper-TCA score: cross-head average rank of each patch by CLS attention.

    attn: (B, h, P) -> (B, P) in [0, 1]; 1 means ranked first by every head. A patch that one
    outlier head loves but the others ignore scores low, which is the point of the consensus.
    """
    p = attn.shape[-1]
    ranks = attn.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True).to(attn.dtype)
    return ranks.mean(dim=1) / max(p - 1, 1)


# --------------------------------------------------------------------------- budgets


def _ceil(x: float) -> int:
    # 0.9 * 140 is 126.00000000000001 in floating point; a keep count must not jump by one.
    return math.ceil(x - 1e-9)


def tca_tier_sizes(n_tokens: int, rate: float) -> tuple[int, int, int]:
    """Tier sizes of the released TCA code for N tokens (CLS included) and rate d.

    n_keep = ceil((1 - d)(N - 1)), m = N - n_keep; tier 1 (kept) = n_keep - 2m,
    tier 2 (merged) = 2m, tier 3 (fused) = N - 1 - n_keep. Tier 2 is clipped to n_keep so that
    tier 1 never goes negative. Returns (t1, t2, t3); d = 0 means (P, 0, 0).
    """
    p = n_tokens - 1
    if rate <= 0:
        return p, 0, 0
    n_keep = _ceil((1.0 - rate) * p)
    m = n_tokens - n_keep
    t2 = min(2 * m, n_keep)
    return n_keep - t2, t2, p - n_keep


def evit_tier_sizes(n_tokens: int, keep_rate: float) -> tuple[int, int, int]:
    """EViT: keep ceil(R (N - 1)) patches, fuse the rest. Returns (t1, 0, t3)."""
    p = n_tokens - 1
    n_keep = min(p, _ceil(keep_rate * p))
    return n_keep, 0, p - n_keep


def tome_r(n_tokens: int, keep_rate: float, prefix: int = 1) -> int:
    """Tokens ToMe merges at a condensing layer: int(N (1 - R)) as in the paper's baseline,
    capped so that set A (even indices, the ``prefix`` CLS token excluded) can supply them."""
    r = int(n_tokens * (1.0 - keep_rate) + 1e-9)
    return max(0, min(r, (n_tokens + 1) // 2 - prefix))


# --------------------------------------------------------------------------- TCA / EViT


def take_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The tokens of x (B, N, D) at idx (B, T) long: (B, T, D), x[b, idx[b, t]].

    One ``index_select`` of whole rows of the flattened batch instead of ``gather`` with an
    index expanded over D: the same values (a copy), but gather reads an index per element and
    is several times slower on CPU (7x for bfloat16 tokens of ViT-B at batch 8).
    """
    b, n, d = x.shape
    rows = idx + torch.arange(0, b * n, n, device=idx.device).unsqueeze(1)
    return x.reshape(b * n, d).index_select(0, rows.reshape(-1)).view(b, idx.shape[1], d)


def add_rows(out: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """out[b, index[b, t]] += src[b, t], in place; out: (B, K, D), index: (B, T) long, src:
    (B, T, D). Returns out. One ``index_add_`` of whole rows of the flattened batch: the same
    sums, added in the same order, as ``scatter_add_`` with an index expanded over D, which
    reads an index per element and is several times slower on CPU."""
    b, k, d = out.shape
    rows = index + torch.arange(0, b * k, k, device=index.device).unsqueeze(1)
    out.view(b * k, d).index_add_(0, rows.reshape(-1), src.reshape(-1, d))
    return out


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, T, T) between the tokens of x (B, T, D), through one batched
    matmul (|a|² + |b|² - 2ab): several times faster than the direct difference on CPU. The
    diagonal is exactly 0."""
    sq = (x * x).sum(dim=-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (x @ x.transpose(-1, -2))
    dist = d2.clamp_min_(0.0).sqrt_()
    dist.diagonal(dim1=-2, dim2=-1).zero_()
    return dist


def k_center_greedy(
    x: torch.Tensor, k: int, first: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy farthest-point selection of k centres among T tokens, batched.

    x: (B, T, D). The first centre is token 0 (callers pass tokens sorted by descending score,
    so it is the most-attended ambiguous token): a rule, not a random draw, so the same input
    always gives the same output. ``first`` (B,) long overrides it per image (the released
    code draws it at random). Returns (centres (B, k) long, dist (B, T, T)).
    """
    b, t, _ = x.shape
    dist = pairwise_distance(x)
    centres = x.new_zeros((b, k), dtype=torch.long)
    if first is None:
        min_dist = dist[:, 0].clone()
        min_dist[:, 0] = -1.0  # never pick a centre twice, even among duplicate tokens
    else:
        centres[:, 0] = first
        min_dist = dist.gather(1, first.view(b, 1, 1).expand(b, 1, t)).squeeze(1)
        min_dist.scatter_(1, first.view(b, 1), -1.0)
    for j in range(1, k):
        nxt = min_dist.argmax(dim=-1)
        centres[:, j] = nxt
        row = dist.gather(1, nxt.view(b, 1, 1).expand(b, 1, t)).squeeze(1)
        min_dist = torch.minimum(min_dist, row)
        min_dist.scatter_(1, centres[:, : j + 1], -1.0)
    return centres, dist


def coreset_merge(
    x: torch.Tensor, k: int, first: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """TCA's coreset averaging: k-center greedy, nearest-centre assignment, then an
    inverse-distance weighted mean per cluster (the centre itself gets weight 1).

    x: (B, T, D) with T >= k; first: (B,) first centres, or None for token 0 (see
    :func:`k_center_greedy`). Returns (merged (B, k, D), assign (B, T) in [0, k)).
    """
    b, t, d = x.shape
    centres, dist = k_center_greedy(x, k, first)
    to_centres = dist.gather(1, centres.unsqueeze(-1).expand(b, k, t))  # (B, k, T)
    assign = to_centres.argmin(dim=1)
    # A centre belongs to its own cluster even when a duplicate centre ties with it.
    assign.scatter_(1, centres, torch.arange(k, device=x.device).expand(b, k))
    own = to_centres.gather(1, assign.unsqueeze(1)).squeeze(1)  # (B, T)
    weight = torch.where(own > 0, own.reciprocal(), torch.ones_like(own))
    weight.scatter_(1, centres, 1.0)
    num = add_rows(x.new_zeros((b, k, d)), assign, x * weight.unsqueeze(-1))
    den = x.new_zeros((b, k)).scatter_add_(1, assign, weight)
    return num / den.unsqueeze(-1), assign


def prune_merge_fuse(
    x: torch.Tensor,
    select: torch.Tensor,
    fuse_weight: torch.Tensor,
    t1: int,
    t2: int,
    k: int,
    prefix: int = 1,
    generator: torch.Generator | None = None,
) -> Condensed:
    """Three-tier condensation (TCA §1.6; EViT when t2 = 0).

    x: (B, N, D) tokens after the attention residual, CLS at 0; ``prefix=0`` for towers without
    a CLS token (then P = N and every token is a patch; the output starts with tier 1).
    select: (B, P) score that ranks patches; fuse_weight: (B, P) head-mean CLS attention.
    Tier 1 = top t1 patches (kept as is, in descending score), tier 2 = next t2 (merged into
    min(k, t2) coreset tokens), tier 3 = the rest (fused into one token, Σ s_j x_j with the raw
    attention weights). Output: [CLS; tier 1; merged; fused] with the fused token only if tier 3
    is non-empty. generator: draw each image's first coreset centre uniformly among tier 2 from
    it (the released code's random start); None = the most-attended tier-2 token.
    Distances, the coreset means and the fused sum are computed in float32 and cast back to
    x's dtype (no-ops for float32), so half-precision models condense soundly.
    """
    b, n, d = x.shape
    p = n - prefix
    t3 = p - t1 - t2
    order = select.argsort(dim=-1, descending=True, stable=True)  # (B, P) patch indices
    tok = order + prefix  # token indices
    # [prefix; tier 1; tier 2] in one copy: tier 2 is a view of it, merged below
    head = torch.arange(prefix, device=x.device).expand(b, prefix)
    kept = take_tokens(x, torch.cat([head, tok[:, : t1 + t2]], dim=1))
    parts = [kept[:, : prefix + t1]]
    dest = torch.empty((b, n), dtype=torch.long, device=x.device)
    dest[:, :prefix] = torch.arange(prefix, device=x.device)
    ar = torch.arange(prefix, prefix + t1, device=x.device).expand(b, t1)
    dest.scatter_(1, tok[:, :t1], ar)
    nxt = prefix + t1
    if t2 > 0:
        x2 = kept[:, prefix + t1 :]
        if t2 > k:
            first = None
            if generator is not None:
                first = torch.randint(t2, (b,), generator=generator).to(x.device)
            merged, assign = coreset_merge(as_float32(x2), k, first)
            merged = merged.to(x.dtype)
        else:
            merged, assign = x2, torch.arange(t2, device=x.device).expand(b, t2)
        parts.append(merged)
        dest.scatter_(1, tok[:, t1 : t1 + t2], nxt + assign)
        nxt += merged.shape[1]
    pruned = None
    if t3 > 0:
        i3 = tok[:, t1 + t2 :]
        w3 = fuse_weight.gather(1, order[:, t1 + t2 :])
        fused = (take_tokens(x, i3).float() * w3.float().unsqueeze(-1)).sum(dim=1, keepdim=True)
        parts.append(fused.to(x.dtype))
        dest.scatter_(1, i3, nxt)
        pruned = torch.zeros((b, n), dtype=torch.bool, device=x.device)
        pruned.scatter_(1, i3, True)
    return Condensed(torch.cat(parts, dim=1), dest, pruned)


# --------------------------------------------------------------------------- ToMe


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, prefix: int = 1
) -> tuple[torch.Tensor, int]:
    """ToMe's matching: alternate tokens into sets A (even) and B (odd), link each A token to
    its most similar B token (cosine), and merge the r strongest links. CLS (index 0, in A) is
    never merged; unmerged A tokens keep their original order so CLS stays at index 0.
    ``prefix=0``: no CLS token, every token can merge.

    metric: (B, N, C), e.g. the head-mean attention keys. Returns (dest (B, N), N_out).
    """
    dest, n_out, _ = bipartite_match(metric, r, prefix)
    return dest, n_out


def bipartite_match(
    metric: torch.Tensor, r: int, prefix: int = 1
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """:func:`bipartite_soft_matching`, also returning the score it ranks by: every patch
    token's best cosine similarity to the other set, (B, N - prefix). The r A tokens with the
    highest are the ones merged; a B token's value (its best similarity to an A token other
    than the prefix) ranks nothing, B tokens are never removed, and is there for the score map.
    """
    b, n, _ = metric.shape
    metric = metric.float()  # cosine similarities in float32 (a no-op for float32 keys)
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, bb = metric[:, ::2], metric[:, 1::2]
    na, nb = a.shape[1], bb.shape[1]
    r = min(r, na - prefix)
    scores = a @ bb.transpose(-1, -2)  # (B, Na, Nb)
    scores[:, :prefix] = -math.inf
    best, best_b = scores.max(dim=-1)
    edge = best.argsort(dim=-1, descending=True, stable=True)
    src, unm = edge[:, :r], edge[:, r:].sort(dim=-1).values
    n_unm = na - r
    dest_a = torch.empty((b, na), dtype=torch.long, device=metric.device)
    dest_a.scatter_(1, unm, torch.arange(n_unm, device=metric.device).expand(b, n_unm))
    dest_a.scatter_(1, src, n_unm + best_b.gather(1, src))
    dest = torch.empty((b, n), dtype=torch.long, device=metric.device)
    dest[:, ::2] = dest_a
    dest[:, 1::2] = n_unm + torch.arange(nb, device=metric.device)
    similarity = torch.empty((b, n), dtype=best.dtype, device=metric.device)
    similarity[:, ::2] = best
    similarity[:, 1::2] = scores.amax(dim=1)  # the prefix rows are -inf: left out
    return dest, n - r, similarity[:, prefix:]


def merge_weighted(
    x: torch.Tensor, size: torch.Tensor, dest: torch.Tensor, n_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of the tokens sharing a destination.

    x: (B, N, D); size: (B, N) patches per token; dest: (B, N). Returns (x (B, n_out, D),
    size (B, n_out)).
    """
    b, n, d = x.shape
    size = size.float()  # sums in float32 (no-ops for float32 inputs), results in x's dtype
    new_size = size.new_zeros((b, n_out)).scatter_add_(1, dest, size)
    num = size.new_zeros((b, n_out, d)).scatter_add_(
        1, dest.unsqueeze(-1).expand(b, n, d), x.float() * size.unsqueeze(-1)
    )
    return (num / new_size.unsqueeze(-1)).to(x.dtype), new_size


def tome_merge(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int = 1
) -> Condensed:
    """One ToMe step: bipartite soft matching on ``metric`` then size-weighted merging."""
    dest, n_out, similarity = bipartite_match(metric, r, prefix)
    x, size = merge_weighted(x, size, dest, n_out)
    return Condensed(x, dest, None, size, score=similarity)


def attention_rows_metric(probs: torch.Tensor) -> torch.Tensor:
    """The released TCA code's ToMe metric: every token's attention-probability row, averaged
    over heads (instead of ToMe's head-mean keys). probs: (B, h, N, N) -> (B, N, N)."""
    return probs.mean(dim=1)


# --------------------------------------------------------------------------- ATS
# Adaptive Token Sampling (Fayyaz et al., ECCV 2022), re-implemented from the paper: score every
# patch by its CLS attention times its value norm, and sample patches at evenly spaced quantiles
# of the scores' CDF. A patch whose score spans several quantiles is sampled several times but
# kept once, so the number of kept tokens adapts to each image (at most the budget).


def ats_score(
    cls_attn: torch.Tensor, value_norm: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """ATS significance score of every patch, normalised to sum to 1 per image.

    cls_attn: (B, h, N) per-head CLS attention probabilities; value_norm: (B, h, N) per-head
    value norms ||V_j^h||; valid: (B, N) bool, False for padding tokens (scored 0).
    S_j = sum_h A^h_{0,j} ||V^h_j|| / sum_{i >= 1} sum_h A^h_{0,i} ||V^h_i|| (heads summed, as the
    paper does for multi-head attention). Returns (B, P), P = N - 1 (CLS excluded).
    """
    raw = (cls_attn[..., 1:] * value_norm[..., 1:]).sum(dim=1)
    if valid is not None:
        raw = raw.masked_fill(~valid[:, 1:], 0.0)
    return raw / raw.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(raw.dtype).tiny)


def ats_budget(n_patches: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """Samples drawn per image: ceil(R * P_b), the keep-rate convention of EViT and of the
    paper's baselines at the same blocks, applied to each image's own patch count.

    n_patches: (B,) long -> (B,) long, between 0 and P_b."""
    budget = torch.ceil(n_patches.double() * keep_rate - 1e-9).long()
    return torch.minimum(budget, n_patches).clamp_min(0)


def inverse_cdf_sample(score: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Deterministic inverse-transform sampling of the score distribution.

    score: (B, P) non-negative, summing to 1 per image (padding 0); budget: (B,) long, K_b.
    Scores are sorted ascending and accumulated into a CDF; sample k < K_b is the first patch
    whose CDF reaches the quantile y_k = (k + 1/2) / K_b (the centres of K_b equal-probability
    strata: a patch holding more than 1/K_b of the mass is always sampled, and no sample is spent
    at y = 0 on the least significant patch). Returns (B, max K_b) long patch indices, -1 where
    k >= K_b; indices repeat where a patch spans several quantiles.
    """
    b, p = score.shape
    k_max = int(budget.max()) if b else 0
    order = score.argsort(dim=-1, stable=True)
    cdf = score.gather(1, order).double().cumsum(dim=-1).contiguous()
    k = torch.arange(k_max, device=score.device, dtype=torch.float64).expand(b, k_max)
    kb = budget.to(torch.float64).unsqueeze(1)
    y = ((k + 0.5) / kb.clamp_min(1.0)).contiguous()
    pos = torch.searchsorted(cdf, y).clamp_max(p - 1)  # rounding can leave cdf[-1] just below 1
    picked = order.gather(1, pos)
    return picked.masked_fill(k >= kb, -1)


def unique_indices(samples: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Duplicates collapse: which patches were sampled at least once.

    samples: (B, K) long patch indices, -1 = no sample. Returns keep (B, P) bool.
    """
    keep = torch.zeros((samples.shape[0], n_patches + 1), dtype=torch.bool, device=samples.device)
    keep.scatter_(1, samples + 1, True)  # -1 lands in the extra column 0, dropped below
    return keep[:, 1:]


def keep_patches(
    x: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor | None = None
) -> Condensed:
    """Keep CLS and the patches marked in ``keep`` (original order), drop the rest, and pack the
    batch to the largest per-image count with padding.

    x: (B, N, D), CLS at 0; keep: (B, P) bool; valid: (B, N) bool input padding mask or None.
    Returns Condensed with x (B, N_out, D), N_out = 1 + max_b kept_b (padding rows zero),
    dest (B, N) (-1 for dropped tokens and input padding), pruned (B, N) bool (dropped real
    patches) and valid (B, N_out) bool.
    """
    b, n, d = x.shape
    if valid is not None:
        keep = keep & valid[:, 1:]
    counts = keep.sum(dim=1)
    n_out = 1 + int(counts.max()) if b else 1
    slot = keep.long().cumsum(dim=1)  # 1-based output slot of each kept patch
    dest = torch.full((b, n), -1, dtype=torch.long, device=x.device)
    dest[:, 0] = 0
    dest[:, 1:] = torch.where(keep, slot, torch.full_like(slot, -1))
    out = x.new_zeros((b, n_out + 1, d))  # one spare row receives every dropped token
    out.scatter_(1, dest.where(dest >= 0, n_out).unsqueeze(-1).expand(b, n, d), x)
    out_valid = torch.arange(n_out, device=x.device).unsqueeze(0) <= counts.unsqueeze(1)
    pruned = torch.zeros((b, n), dtype=torch.bool, device=x.device)
    real = valid[:, 1:] if valid is not None else torch.ones_like(keep)
    pruned[:, 1:] = real & ~keep
    return Condensed(out[:, :n_out], dest, pruned, valid=out_valid)
