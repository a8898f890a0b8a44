"""Where two methods disagree: which patches one keeps as their own token and the other merges
or prunes, at one depth of two traces of the same image (the app's Compare tab shows it at the
last condensing block, where the fates are final).

Fates are the traces' own (``tca.trace``: KEPT, MERGED, PRUNED; ATS's dropped patches are
PRUNED). Counting is set arithmetic on the patch indices, so "kept by A, not by B" is exactly
kept(A) minus kept(B).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import METHOD_COLORS, PRUNED_BASE
from .trace import FATE_NAMES, KEPT, Trace

AGREE_CONDENSED = (40, 40, 40)  # both methods merged or pruned the patch: dark
SHARE = 0.7  # share of the method colour in a patch only that method kept (the rest: its grey)


@dataclass(frozen=True)
class Disagreement:
    """Two methods' fates of the same patches after one block.

    layer: the block. fate_a / fate_b: (P,) uint8 fates of methods a and b. grid: (rows, cols).
    """

    a: str
    b: str
    layer: int
    fate_a: np.ndarray
    fate_b: np.ndarray
    grid: tuple[int, int]

    @property
    def only_a(self) -> np.ndarray:
        """(P,) bool: kept by a as its own token, merged or pruned by b."""
        return (self.fate_a == KEPT) & (self.fate_b != KEPT)

    @property
    def only_b(self) -> np.ndarray:
        """(P,) bool: kept by b, merged or pruned by a."""
        return (self.fate_b == KEPT) & (self.fate_a != KEPT)

    @property
    def both_kept(self) -> np.ndarray:
        return (self.fate_a == KEPT) & (self.fate_b == KEPT)

    @property
    def neither(self) -> np.ndarray:
        """(P,) bool: merged or pruned by both."""
        return (self.fate_a != KEPT) & (self.fate_b != KEPT)

    def counts(self) -> dict[str, int]:
        """Patches per agreement class (they add up to P)."""
        return {
            "only_a": int(self.only_a.sum()),
            "only_b": int(self.only_b.sum()),
            "both_kept": int(self.both_kept.sum()),
            "neither": int(self.neither.sum()),
        }

    def matrix(self) -> dict[tuple[str, str], int]:
        """(a's fate, b's fate) -> patches, for all 3 x 3 fate pairs."""
        return {
            (FATE_NAMES[fa], FATE_NAMES[fb]): int(((self.fate_a == fa) & (self.fate_b == fb)).sum())
            for fa in FATE_NAMES
            for fb in FATE_NAMES
        }


def disagreement(a: str, trace_a: Trace, b: str, trace_b: Trace, layer: int) -> Disagreement:
    """The fates of methods ``a`` and ``b`` after block ``layer`` (image 0 of each trace)."""
    if trace_a.grid != trace_b.grid:
        raise ValueError(f"different patch grids: {trace_a.grid} and {trace_b.grid}")
    for t in (trace_a, trace_b):
        if not 0 <= layer < t.depth:
            raise ValueError(f"layer {layer} is out of range: the trace has {t.depth} layers")
    return Disagreement(
        a,
        b,
        layer,
        trace_a.fate[0, layer].numpy().copy(),
        trace_b.fate[0, layer].numpy().copy(),
        trace_a.grid,
    )


def disagreement_map(image: np.ndarray, d: Disagreement) -> np.ndarray:
    """(H, W, 3) uint8: patches both kept drawn as the image; kept only by a (only by b) in a's
    (b's) method colour over the patch's grey; merged or pruned by both dark.

    image: (H, W, 3) uint8, the picture the model saw (H, W multiples of the grid)."""
    rows, cols = d.grid
    h, w = image.shape[:2]
    if image.ndim != 3 or h % rows or w % cols:
        raise ValueError(f"image {image.shape} does not fit the {cols}x{rows} patch grid")
    ph, pw = h // rows, w // cols

    def pixels(mask: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(mask.reshape(rows, cols), ph, axis=0), pw, axis=1)

    grey = image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    out = image.astype(np.float32)
    for mask, method in ((d.only_a, d.a), (d.only_b, d.b)):
        colour = np.asarray(METHOD_COLORS.get(method, (51, 51, 51)), dtype=np.float32)
        m = pixels(mask)
        out[m] = SHARE * colour + (1 - SHARE) * grey[m][:, None]
    m = pixels(d.neither)
    out[m] = PRUNED_BASE * 0.5 * grey[m][:, None] + np.asarray(AGREE_CONDENSED) * 0.5
    return np.clip(out, 0, 255).astype(np.uint8)


__all__ = ["Disagreement", "disagreement", "disagreement_map"]
