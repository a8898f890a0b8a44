"""The maths of four training-free methods beyond the paper's baselines, as small pure functions
on tensors: PiToMe, ToFu, Zero-TPrune and Representation Shift, each re-implemented from its
paper (no code copied). Shapes as in ``tca.condense``: B = batch, N = tokens, P = N - prefix
patches, D = width, h = heads; every step returns a :class:`~tca.condense.Condensed` with its
``dest`` map (-1 for a dropped token) and, where the method ranks by a score of its own, that
score per patch (for the trace's score maps).
"""

from __future__ import annotations

import torch

from .condense import Condensed, bipartite_match, merge_weighted

# --------------------------------------------------------------------------- shared by the four
# methods below (PiToMe, ToFu, Zero-TPrune, Representation Shift), re-implemented from their
# papers; no code copied. Every budget here is a token count per condensing block.


def half_r(n_tokens: int, keep_rate: float, prefix: int = 1) -> int:
    """Tokens removed at a condensing block by PiToMe and Zero-TPrune: ToMe's int(N (1 - R)),
    capped at floor(P / 2) (P = N - prefix patches) because both pair r tokens against r others
    (PiToMe) or against the more important half (Zero-TPrune). With a CLS token this is exactly
    :func:`tome_r`, so the three share one token schedule."""
    r = int(n_tokens * (1.0 - keep_rate) + 1e-9)
    return max(0, min(r, (n_tokens - prefix) // 2))


def drop_tokens(
    x: torch.Tensor, drop: torch.Tensor, prefix: int = 1, size: torch.Tensor | None = None
) -> Condensed:
    """Drop the patches marked in ``drop`` outright; the prefix and the other patches stay, in
    their original order.

    x: (B, N, D); drop: (B, P) bool, P = N - prefix, the same count in every image; size: (B, N)
    token sizes or None. Returns Condensed with x (B, N - n_drop, D), dest (B, N) (-1 for the
    dropped tokens), pruned (B, N) bool (the dropped ones) and the kept tokens' sizes.
    """
    b, n, d = x.shape
    n_drop = int(drop[0].sum()) if b else 0
    mask = torch.cat([drop.new_zeros((b, prefix)), drop], dim=1)  # (B, N), prefix never dropped
    # False sorts before True and a stable sort keeps positions: kept tokens first, in order
    kept = mask.long().argsort(dim=1, stable=True)[:, : n - n_drop]
    dest = torch.full((b, n), -1, dtype=torch.long, device=x.device)
    dest.scatter_(1, kept, torch.arange(n - n_drop, device=x.device).expand(b, n - n_drop))
    out = x.gather(1, kept.unsqueeze(-1).expand(b, n - n_drop, d))
    return Condensed(out, dest, mask, None if size is None else size.gather(1, kept))


# --------------------------------------------------------------------------- PiToMe
# Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging" (NeurIPS 2024).

PITOME_MARGIN = 0.9  # m_0: the margin at block l of L is m_0 (1 - l / L), lower in deeper blocks
PITOME_ALPHA = 1.0  # the ELU's slope below the margin


def pitome_margin(layer: int, depth: int, m0: float = PITOME_MARGIN) -> float:
    """The energy margin of 0-based block ``layer`` of ``depth``: m_0 (1 - layer / depth)."""
    return m0 * (1.0 - layer / depth)


def cosine_matrix(metric: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B, T, T) between the rows of metric (B, T, C), in float32."""
    m = metric.float()
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return m @ m.transpose(-1, -2)


def energy_score(sim: torch.Tensor, margin: float, alpha: float = PITOME_ALPHA) -> torch.Tensor:
    """PiToMe's energy of every token: E_i = mean_j ELU_alpha(S_ij - margin).

    sim: (B, T, T) cosine similarities (the token itself included: it adds the same 1 - margin
    to every token). Returns (B, T). High energy = many near neighbours = a large cluster of
    redundant tokens, merged first; low energy = an isolated, informative token, protected.
    """
    return torch.nn.functional.elu(sim - margin, alpha=alpha).mean(dim=-1)


def pitome_match(
    metric: torch.Tensor, r: int, margin: float, prefix: int = 1
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """PiToMe's matching: rank the patches by energy, split the 2r highest alternately into A
    (ranks 0, 2, ...) and B (ranks 1, 3, ...), send each A token to its most cosine-similar B
    token; every other patch is protected (kept as is).

    metric: (B, N, C), e.g. the head-mean attention keys; the ``prefix`` leading tokens (CLS)
    take no part. Output order: [prefix; protected patches in their original order; B tokens
    in energy order]. Returns (dest (B, N), N_out = N - r, energy (B, P)).
    """
    b, n, _ = metric.shape
    p = n - prefix
    r = max(0, min(r, p // 2))
    sim = cosine_matrix(metric[:, prefix:])  # (B, P, P)
    energy = energy_score(sim, margin)
    if r == 0:
        return torch.arange(n, device=metric.device).expand(b, n), n, energy
    order = energy.argsort(dim=-1, descending=True, stable=True)
    a, bb = order[:, 0 : 2 * r : 2], order[:, 1 : 2 * r : 2]  # (B, r) patch indices each
    protected = order[:, 2 * r :].sort(dim=-1).values
    n_prot = p - 2 * r
    ab = sim.gather(1, a.unsqueeze(-1).expand(b, r, p)).gather(2, bb.unsqueeze(1).expand(b, r, r))
    best = ab.argmax(dim=-1)  # (B, r): which B token each A token joins (first on ties)
    dest = torch.empty((b, n), dtype=torch.long, device=metric.device)
    dest[:, :prefix] = torch.arange(prefix, device=metric.device)
    dest_p = torch.empty((b, p), dtype=torch.long, device=metric.device)
    dest_p.scatter_(1, protected, prefix + torch.arange(n_prot, device=metric.device).expand(b, -1))
    b_slot = prefix + n_prot + torch.arange(r, device=metric.device).expand(b, r)
    dest_p.scatter_(1, bb, b_slot)
    dest_p.scatter_(1, a, b_slot.gather(1, best))
    dest[:, prefix:] = dest_p
    return dest, n - r, energy


def pitome_merge(
    x: torch.Tensor,
    size: torch.Tensor,
    metric: torch.Tensor,
    r: int,
    margin: float,
    prefix: int = 1,
) -> Condensed:
    """One PiToMe step: :func:`pitome_match` then size-weighted merging (as ToMe).

    x: (B, N, D); size: (B, N); metric: (B, N, C). Returns Condensed with the energy (B, P) as
    its score."""
    dest, n_out, energy = pitome_match(metric, r, margin, prefix)
    out, new_size = merge_weighted(x, size, dest, n_out)
    return Condensed(out, dest, None, new_size, score=energy)


# --------------------------------------------------------------------------- ToFu
# Kim et al., "Token Fusion: Bridging the Gap between Token Pruning and Token Merging"
# (WACV 2024): ToMe's bipartite matching; in early blocks the matched A token is pruned, in later
# blocks the matched tokens are merged by MLERP (their average rescaled to the largest norm).


def tofu_prunes(layer: int, depth: int) -> bool:
    """Whether ToFu prunes (True) or merges (False) at 0-based block ``layer`` of ``depth``:
    it prunes in the first half of the blocks (layer < depth // 2)."""
    return layer < depth // 2


def matched_sources(dest: torch.Tensor, n_out: int, prefix: int = 1) -> torch.Tensor:
    """Which tokens :func:`~tca.condense.bipartite_soft_matching` sent into a B token: the A tokens (even
    indices) whose destination lies among the B slots. dest: (B, N) -> (B, N - prefix) bool."""
    n = dest.shape[1]
    n_b = n // 2
    is_a = torch.arange(n, device=dest.device) % 2 == 0
    return (is_a & (dest >= n_out - n_b))[:, prefix:]


def tofu_prune(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int = 1
) -> Condensed:
    """ToFu's prune-by-matching: ToMe's matching picks r A tokens, each nearly duplicated by a B
    token; they are dropped (not averaged in), the rest kept in their original order.

    x: (B, N, D); size: (B, N); metric: (B, N, C). Returns Condensed (dest -1 and pruned for the
    dropped tokens; the kept tokens keep their sizes) and ToMe's score (each patch token's best
    similarity to the other set, :func:`~tca.condense.bipartite_match`)."""
    dest, n_out, similarity = bipartite_match(metric, r, prefix)
    dropped = drop_tokens(x, matched_sources(dest, n_out, prefix), prefix, size)
    return dropped._replace(score=similarity)


def mlerp_merge(
    x: torch.Tensor, size: torch.Tensor, dest: torch.Tensor, n_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToFu's norm-preserving merge (MLERP): the size-weighted average of the tokens sharing a
    destination, rescaled to the largest norm among them. A token merged with nothing is
    copied as :func:`merge_weighted` copies it (no rescaling).

    x: (B, N, D); size: (B, N); dest: (B, N). Returns (x (B, n_out, D), size (B, n_out)).
    """
    b, n, d = x.shape
    mean, new_size = merge_weighted(x, size, dest, n_out)
    xf = x.float()
    norm = xf.norm(dim=-1)  # (B, N)
    top = norm.new_zeros((b, n_out)).scatter_reduce_(1, dest, norm, "amax", include_self=False)
    count = torch.zeros((b, n_out), dtype=torch.long, device=x.device)
    count.scatter_add_(1, dest, torch.ones_like(dest))
    m = mean.float()
    scale = top / m.norm(dim=-1).clamp_min(1e-12)
    scaled = (m * scale.unsqueeze(-1)).to(x.dtype)
    return torch.where((count > 1).unsqueeze(-1), scaled, mean), new_size


def tofu_merge(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int = 1
) -> Condensed:
    """ToFu's merging step: ToMe's bipartite matching, then :func:`mlerp_merge` (the score as
    :func:`tofu_prune`'s)."""
    dest, n_out, similarity = bipartite_match(metric, r, prefix)
    out, new_size = mlerp_merge(x, size, dest, n_out)
    return Condensed(out, dest, None, new_size, score=similarity)


# --------------------------------------------------------------------------- Zero-TPrune
# Wang et al., "Zero-TPrune: Zero-Shot Token Pruning through Leveraging of the Attention Graph in
# Pre-Trained Transformers" (CVPR 2024): importance by weighted PageRank on each head's attention
# graph (I-stage), then the unimportant tokens most similar to the important ones are pruned
# (S-stage).

ZTP_ITERATIONS = 10  # PageRank power iterations


def weighted_pagerank(probs: torch.Tensor, iterations: int = ZTP_ITERATIONS) -> torch.Tensor:
    """Weighted PageRank on each head's attention graph: s^0 = 1/N, s^{t+1}_j = sum_i s^t_i
    A_ij (a token is important when important tokens attend to it).

    probs: (B, h, N, N) attention probabilities (rows sum to 1, so every s^t sums to 1).
    Returns (B, h, N) float32.
    """
    b, h, n, _ = probs.shape
    a = probs.float()
    s = a.new_full((b, h, 1, n), 1.0 / n)
    for _ in range(iterations):
        s = s @ a
    return s.squeeze(2)


def head_filtered_mean(score: torch.Tensor) -> torch.Tensor:
    """Zero-TPrune's head filter, then the mean over the heads that pass it.

    score: (B, h, P) per-head importance. Heads whose importance variance over the P tokens is
    among the floor(h / 4) lowest (nearly uniform: no preference) or the floor(h / 4) highest
    (one token takes everything, e.g. an attention sink) are left out; ties by head index.
    Returns (B, P).
    """
    b, h, p = score.shape
    cut = h // 4
    var = score.var(dim=-1, unbiased=False)  # (B, h)
    rank = var.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)
    keep = (rank >= cut) & (rank < h - cut)
    w = keep.to(score.dtype).unsqueeze(-1)
    return (score * w).sum(dim=1) / w.sum(dim=1)


def zero_tprune_select(
    importance: torch.Tensor, metric: torch.Tensor, r: int, prefix: int = 1
) -> torch.Tensor:
    """Zero-TPrune's S-stage: the ceil(P/2) most important patches form the important set, the
    rest the unimportant set; each unimportant patch scores its highest cosine similarity to the
    important set, and the r highest-scoring ones are pruned (each is nearly duplicated by an
    important token). Ties by rank order.

    importance: (B, P); metric: (B, N, C). Returns drop (B, P) bool with r True per image.
    """
    b, p = importance.shape
    r = max(0, min(r, p // 2))
    order = importance.argsort(dim=-1, descending=True, stable=True)
    n_imp = p - p // 2
    imp, unimp = order[:, :n_imp], order[:, n_imp:]
    m = metric[:, prefix:].float()
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    c = m.shape[-1]
    mu = m.gather(1, unimp.unsqueeze(-1).expand(b, p - n_imp, c))
    mi = m.gather(1, imp.unsqueeze(-1).expand(b, n_imp, c))
    best = (mu @ mi.transpose(-1, -2)).max(dim=-1).values  # (B, P - n_imp)
    pick = best.argsort(dim=-1, descending=True, stable=True)[:, :r]
    drop = torch.zeros((b, p), dtype=torch.bool, device=importance.device)
    drop.scatter_(1, unimp.gather(1, pick), True)
    return drop


def zero_tprune_prune(
    x: torch.Tensor, probs: torch.Tensor, metric: torch.Tensor, r: int, prefix: int = 1
) -> Condensed:
    """One Zero-TPrune step: PageRank importance per head (:func:`weighted_pagerank`) over all
    N tokens, the head-filtered mean over the patches, then :func:`zero_tprune_select`'s r
    patches dropped.

    x: (B, N, D); probs: (B, h, N, N); metric: (B, N, C). Returns Condensed with the patches'
    importance (B, P) as its score."""
    importance = head_filtered_mean(weighted_pagerank(probs)[..., prefix:])
    drop = zero_tprune_select(importance, metric, r, prefix)
    return drop_tokens(x, drop, prefix)._replace(score=importance)


# --------------------------------------------------------------------------- Representation Shift
# Choi et al., "Representation Shift: Unifying Token Compression with FlashAttention" (ICCV
# 2025): a token's importance is how much a block's sub-layer changed it, ||F(x) - x||; no
# attention map is needed.


def representation_shift(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """||after_i - before_i||_2 per token, in float32. before, after: (B, N, D) -> (B, N)."""
    return (after.float() - before.float()).norm(dim=-1)


def lowest(score: torch.Tensor, n_drop: int) -> torch.Tensor:
    """The n_drop lowest-scoring entries of every row; among equal scores the later positions
    go first. score: (B, P) -> (B, P) bool."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    drop = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    drop.scatter_(1, order[:, score.shape[1] - n_drop :], True)
    return drop


def repshift_prune(x: torch.Tensor, shift: torch.Tensor, n_drop: int, prefix: int = 1) -> Condensed:
    """One Representation Shift step: drop the n_drop patches the block changed least.

    x: (B, N, D); shift: (B, N) from :func:`representation_shift`. Returns Condensed with the
    patches' shift (B, P) as its score."""
    score = shift[:, prefix:]
    return drop_tokens(x, lowest(score, n_drop), prefix)._replace(score=score)
