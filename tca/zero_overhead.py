"""The zero-overhead limit of a token schedule: the speed condensation would have if choosing
the tokens cost nothing.

:func:`sliced_forward` runs the tower's own, unmodified blocks on exactly the token counts of a
schedule: a plain block is called as it is; at a condensing block the block's own attention
sublayer (its fused kernel) sees all its input tokens, the tokens are then simply sliced to the
planned count (the first ``n_out``: no scores, no ranking, no merging), and the block's own MLP
sublayer runs on those. The same FLOPs as the method, minus its overhead, so the time of this
forward is the best any method with that schedule can do on the machine; ``tca.bench`` times
it beside every method. Domain anchors are not modelled (the bench times ``tca`` without them);
for ATS the schedule's counts are its budget, an upper bound.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import Schedule
from .towers import Tower


def sliced_forward(
    visual: Any, images: torch.Tensor, schedule: Schedule, tower: type[Tower]
) -> tuple[Any, list[int]]:
    """One vision forward of ``images`` (B, 3, H, W) on ``schedule``'s token counts.

    visual: the vision tower (patched or not: its own modules are called, never its forward);
    tower: its adapter (``tca.towers.tower_for``). Returns (the tower's output as its forward
    gives it, e.g. (B, E) features; the token count at every block output)."""
    weight = tower.patch_embed_weight(visual)
    x = tower.embed(visual, images.to(weight.device, weight.dtype))
    counts: list[int] = []
    for layer, block in enumerate(tower.blocks(visual)):
        plan = schedule.plans[layer]
        if plan is None:
            x = block(x)
        else:
            x = tower.attn_residual(block, x, tower.own_attention(block, x))
            x = tower.mlp_residual(block, x[:, : plan.n_out])
        counts.append(x.shape[1])
    return tower.head(visual, x, None), counts


__all__ = ["sliced_forward"]
