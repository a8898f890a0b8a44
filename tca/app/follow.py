"""Follow a patch through depth, from the one-pass trace (no re-run): at every block, whether
it is kept as itself, merged into a group (and which), or fused into the pruned token, and its
token's CLS-attention rank at the condensing blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tca import render
from tca.trace import FATE_NAMES, MERGED, Trace

# ------------------------------------------------------------------------------ follow a patch


@dataclass(frozen=True)
class FollowStep:
    """Where one patch is after one block."""

    layer: int
    fate: str  # kept / merged / pruned
    token: int  # its token's index in that block's output
    group_size: int  # patches sharing its token
    group_rank: int | None  # colour index of its merged group (as on the map), else None
    attention_rank: int | None  # its token's rank by CLS attention (1 = most), condensing only
    ranked_tokens: int | None  # how many tokens were ranked there


def follow_patch(trace: Trace, patch: int, image: int = 0) -> list[FollowStep]:
    """Where ``patch`` went at every block, from the one-pass trace (no re-run).

    The CLS-attention rank at a condensing block ranks the tokens entering that block (each
    patch carries its token's value in ``trace.cls_attention``), 1 = most attended.
    """
    rows, cols = trace.grid
    if not 0 <= patch < rows * cols:
        raise ValueError(f"patch {patch} is outside the {rows}x{cols} grid")
    steps = []
    for l in range(trace.depth):
        lv = render.layer_view(trace, l, image)
        tok = lv.token.ravel()
        t = int(tok[patch])
        fate = int(lv.fate.ravel()[patch])
        size = int((tok == t).sum())
        grank = int(render.group_ranks(lv)[t]) if fate == MERGED else None
        arank = ranked = None
        if l in trace.cls_attention:
            att = trace.cls_attention[l][image].numpy().astype(np.float64)
            prev = (
                trace.token_index[image, l - 1].numpy() if l > 0 else np.arange(1, rows * cols + 1)
            )
            _, first = np.unique(prev, return_index=True)  # one value per entering token
            vals = att[first]
            vals = vals[np.isfinite(vals)]
            mine = att[patch]
            if np.isfinite(mine) and vals.size:
                arank, ranked = int((vals > mine).sum()) + 1, int(vals.size)
        steps.append(FollowStep(l, FATE_NAMES[fate], t, size, grank, arank, ranked))
    return steps


__all__ = [
    "FollowStep",
    "follow_patch",
]
