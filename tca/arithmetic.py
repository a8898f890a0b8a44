"""Honest token arithmetic: what the tokens after each block are, counted so they add up.

After a condensing block every token is exactly one of: a summary token (the CLS token, the
``prefix`` of the trace), a kept patch (a token holding one patch that was never fused), a
merged-group token (a token holding at least one merged patch: TCA's coreset tokens, ToMe's
merged tokens) or a fused token (a token holding only fused patches: one per TCA / EViT
condensing block, unless a later block merged it into a group). The four counts sum to the
block's token count; :func:`token_count` checks that from the trace, and the words come from
the method's :class:`tca.methods.Fates`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .methods import Method
from .trace import KEPT, MERGED, PRUNED, Trace


@dataclass(frozen=True)
class TokenCount:
    """The tokens after one block, by what they hold (see the module docstring)."""

    summary: int
    kept: int
    groups: int
    fused: int

    @property
    def total(self) -> int:
        return self.summary + self.kept + self.groups + self.fused

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.summary, self.kept, self.groups, self.fused)


SEGMENTS = ("summary", "kept", "groups", "fused")  # the order of the stacked bars


def token_count(trace: Trace, layer: int, image: int = 0) -> TokenCount:
    """The tokens after block ``layer`` of one image, by kind. Raises ValueError when the kinds
    do not add up to the trace's token count (a token holding no patch: a bug upstream)."""
    idx = trace.token_index[image, layer]
    fate = trace.fate[image, layer]
    held = idx >= 0  # ATS's dropped patches are in no token
    n = trace.tokens(image)[layer]
    holds = torch.zeros((3, n), dtype=torch.long)  # per token: kept / merged / pruned patches
    for row, code in enumerate((KEPT, MERGED, PRUNED)):
        sel = held & (fate == code)
        holds[row].index_add_(0, idx[sel], torch.ones(int(sel.sum()), dtype=torch.long))
    groups = int((holds[1] > 0).sum())
    kept = int(((holds[0] == 1) & (holds[1] == 0) & (holds[2] == 0)).sum())
    fused = int(((holds[2] > 0) & (holds[0] == 0) & (holds[1] == 0)).sum())
    count = TokenCount(trace.prefix, kept, groups, fused)
    if count.total != n:
        raise ValueError(
            f"block {layer}: {count.total} tokens by kind ({count}) but {n} in the trace"
        )
    return count


def token_counts(trace: Trace, image: int = 0) -> list[TokenCount]:
    """:func:`token_count` after every block."""
    return [token_count(trace, l, image) for l in range(trace.depth)]


def segment_names(method: Method, prefix: int = 1) -> dict[str, str]:
    """The words of each segment of the stacked count for ``method`` (only the segments the
    method can have; the summary token only where the tower has one)."""
    fates = method.fates
    names = {"summary": "CLS token"} if prefix else {}
    names["kept"] = "kept patches"
    if fates.group_token:
        names["groups"] = fates.group_token
    if fates.fused_token:
        names["fused"] = fates.fused_token
    return names


def count_sentence(count: TokenCount, method: Method, prefix: int = 1) -> str:
    """'74 tokens = 1 CLS token + 65 kept patches + 5 coreset tokens + 3 fused tokens': every
    segment the method can have, so the sum is visible and exact."""
    names = segment_names(method, prefix)
    values = dict(zip(SEGMENTS, count.as_tuple()))
    parts = [f"{values[k]} {v}" for k, v in names.items()]
    extra = [k for k in SEGMENTS if k not in names and values[k]]
    if extra:  # never for the registry's methods: their words cover what their steps make
        parts += [f"{values[k]} {k}" for k in extra]
    return f"{count.total} tokens = " + " + ".join(parts)


__all__ = [
    "TokenCount",
    "SEGMENTS",
    "token_count",
    "token_counts",
    "segment_names",
    "count_sentence",
]
