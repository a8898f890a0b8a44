"""High-norm ("register-like") tokens: the rule that flags them among a block's input tokens.

CLIP ViTs grow a few patch tokens with norms several times the others' in their middle and late
blocks (Darcet et al., "Vision Transformers Need Registers", ICLR 2024): the model parks global
information there, they draw much of the CLS attention, and so they sway every method that ranks
by it. A token entering a block is flagged *high-norm* when its L2 norm exceeds

    max(HIGH_NORM_RATIO x median, median + HIGH_NORM_MADS x MAD)

of the norms of that block's input patch tokens (the prefix, CLS, left out; MAD = the median
absolute deviation from the median). Both conditions matter: the ratio alone would flag the
upper tail of a wide spread, the MAD alone a token 4% above the rest when they are all alike
(random weights: the largest norm is within 15% of the median at every block, so nothing is
flagged there).
"""

from __future__ import annotations

import torch

HIGH_NORM_RATIO = 2.0  # at least twice the median norm ...
HIGH_NORM_MADS = 6.0  # ... and at least 6 median absolute deviations above the median
RULE = (
    f"norm > max({HIGH_NORM_RATIO:g} \u00d7 median, median + {HIGH_NORM_MADS:g} \u00d7 MAD) of "
    "the block input's patch-token norms"
)


def token_norms(x: torch.Tensor) -> torch.Tensor:
    """(B, N) float32 L2 norm of every token. x: (B, N, D)."""
    return x.float().norm(dim=-1)


def high_norm_threshold(norms: torch.Tensor) -> torch.Tensor:
    """The norm above which a token is high-norm, per image.

    norms: (B, T) float, the patch tokens' norms, NaN for slots that are no token (padding).
    Returns (B,) float: max(ratio x median, median + k x MAD), medians as ``torch.nanmedian``
    takes them (the lower of the two middle values for an even count).
    """
    median = norms.nanmedian(dim=1).values
    mad = (norms - median.unsqueeze(1)).abs().nanmedian(dim=1).values
    return torch.maximum(HIGH_NORM_RATIO * median, median + HIGH_NORM_MADS * mad)


__all__ = ["HIGH_NORM_MADS", "HIGH_NORM_RATIO", "RULE", "high_norm_threshold", "token_norms"]
